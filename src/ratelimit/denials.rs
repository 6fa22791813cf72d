//! The keys a limit denies most, for the status page: a Space-Saving tally
//! (Metwally et al.) of fixed size per limit, so a flood of distinct keys
//! costs bounded memory. Keys denied more often than 1/CAPACITY of all
//! denials are always listed; a listed count may overstate by at most the
//! `error` it carries (what the slot had when the key took it over).
//!
//! It sits on the denial path of every shard, so it never makes a decision
//! wait: a denial that finds the tally busy (another core counting) is not
//! tallied. Under a flood the counts are then a sample — the keys that deny
//! most still rise to the top — and `gantry_ratelimit_decisions_total` stays
//! the exact count.

use std::hash::BuildHasher;

use parking_lot::Mutex;

/// Keys tracked per limit.
pub const CAPACITY: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedKey {
    pub key: String,
    /// Denials counted (at most `error` more than the key's own).
    pub denied: u64,
    pub error: u64,
}

/// One tracked key; its hash is compared first, so a denial of an untracked
/// key (a flood of distinct keys) costs a scan of 64 integers, not 64
/// string comparisons.
#[derive(Debug, Clone)]
struct Slot {
    hash: u64,
    key: DeniedKey,
}

#[derive(Debug, Default)]
pub struct DeniedKeys {
    hasher: foldhash::fast::RandomState,
    slots: Mutex<Vec<Slot>>,
}

impl DeniedKeys {
    /// Counts one denial of `key`, unless another core is counting now.
    pub fn record(&self, key: &str) {
        let hash = self.hasher.hash_one(key);
        let Some(mut slots) = self.slots.try_lock() else {
            return;
        };
        if let Some(slot) = slots
            .iter_mut()
            .find(|s| s.hash == hash && s.key.key == key)
        {
            slot.key.denied += 1;
            return;
        }
        if slots.len() < CAPACITY {
            slots.push(Slot {
                hash,
                key: DeniedKey {
                    key: key.to_string(),
                    denied: 1,
                    error: 0,
                },
            });
            return;
        }
        // Full: the key takes over the least counted slot, inheriting its
        // count as the bound of its error.
        if let Some(least) = slots.iter_mut().min_by_key(|s| s.key.denied) {
            least.hash = hash;
            let k = &mut least.key;
            k.error = k.denied;
            k.denied += 1;
            k.key.clear();
            k.key.push_str(key);
        }
    }

    /// The `n` most denied keys, most first (ties by key).
    pub fn top(&self, n: usize) -> Vec<DeniedKey> {
        let mut all: Vec<DeniedKey> = self.slots.lock().iter().map(|s| s.key.clone()).collect();
        all.sort_by(|a, b| b.denied.cmp(&a.denied).then_with(|| a.key.cmp(&b.key)));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_while_the_keys_fit() {
        let tally = DeniedKeys::default();
        for (key, times) in [("a", 3), ("b", 7), ("c", 1)] {
            for _ in 0..times {
                tally.record(key);
            }
        }
        let top = tally.top(2);
        assert_eq!(
            top,
            vec![
                DeniedKey {
                    key: "b".into(),
                    denied: 7,
                    error: 0
                },
                DeniedKey {
                    key: "a".into(),
                    denied: 3,
                    error: 0
                },
            ]
        );
    }

    #[test]
    fn a_busy_tally_skips_the_denial_instead_of_waiting() {
        let tally = DeniedKeys::default();
        let held = tally.slots.lock();
        tally.record("while-busy");
        drop(held);
        tally.record("after");
        let keys: Vec<String> = tally.top(10).into_iter().map(|k| k.key).collect();
        assert_eq!(keys, vec!["after".to_string()]);
    }

    #[test]
    fn a_heavy_key_stays_on_top_of_a_flood_of_distinct_ones_in_bounded_memory() {
        let tally = DeniedKeys::default();
        for i in 0..10_000 {
            tally.record(&format!("scanner-{i}"));
            if i % 10 == 0 {
                tally.record("abuser");
            }
        }
        let top = tally.top(1);
        assert_eq!(top[0].key, "abuser");
        // Its count overstates by at most its error, never understates.
        assert!(top[0].denied >= 1000 && top[0].denied - top[0].error <= 1000);
        assert_eq!(tally.top(usize::MAX).len(), CAPACITY);
    }
}
