//! Key choice: uniform or Zipf over N keys, each a fixed 16 bytes.

use rand::Rng;
use rand_distr::{Distribution as _, Zipf};

use super::args::Distribution;

#[derive(Debug, Clone)]
pub enum KeyPicker {
    Uniform(u64),
    Zipf(Zipf<f64>),
}

impl KeyPicker {
    pub fn new(keys: u64, distribution: Distribution, exponent: f64) -> Result<Self, String> {
        let keys = keys.max(1);
        match distribution {
            Distribution::Uniform => Ok(Self::Uniform(keys)),
            Distribution::Zipf => Zipf::new(keys as f64, exponent)
                .map(Self::Zipf)
                .map_err(|e| format!("bad zipf parameters: {e}")),
        }
    }

    /// A key index in `0..keys`.
    pub fn index(&self, rng: &mut impl Rng) -> u64 {
        match self {
            Self::Uniform(n) => rng.random_range(0..*n),
            // Zipf yields 1..=n, most often 1.
            Self::Zipf(z) => (z.sample(rng) as u64).saturating_sub(1),
        }
    }

    /// A 16-byte key such as `k-00000000000042`.
    pub fn key(&self, rng: &mut impl Rng) -> String {
        Self::nth(self.index(rng))
    }

    /// The key of index `i` (what `key` draws from).
    pub fn nth(i: u64) -> String {
        format!("k-{i:014}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn keys_are_sixteen_bytes_and_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let picker = KeyPicker::new(100, Distribution::Uniform, 1.0).unwrap();
        for _ in 0..1000 {
            let key = picker.key(&mut rng);
            assert_eq!(key.len(), 16);
            assert!(picker.index(&mut rng) < 100);
        }
    }

    #[test]
    fn zipf_favours_the_first_keys() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let picker = KeyPicker::new(1000, Distribution::Zipf, 1.1).unwrap();
        let hot = (0..10_000).filter(|_| picker.index(&mut rng) < 10).count();
        assert!(hot > 4_000, "{hot} of 10000 draws hit the 10 hottest keys");
        assert!((0..10_000).all(|_| picker.index(&mut rng) < 1000));
    }
}
