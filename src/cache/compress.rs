//! gzip for large values, only when it saves space; the reader never sees
//! the difference. Values that cannot compress (random, encrypted or
//! already-compressed bytes) are recognised from a 1 KiB sample before any
//! gzip is tried: for a 10 KiB value that is about 1 µs instead of the
//! ~40 µs a deflate pass costs to find out.

use std::io::Read;
use std::sync::LazyLock;

use flate2::read::GzDecoder;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// A gzip member header (RFC 1952): deflate, no flags, no mtime, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// gzip framing written here around one raw deflate stream, so the output
/// buffer is sized once. A fresh deflate state per value: reusing one with
/// `reset()` is faster still, but zlib-rs 0.6.8 panics on the value after an
/// incompressible one (see the test below), and a value must never panic the server.
fn gzip(raw: &[u8], level: u32) -> Option<Vec<u8>> {
    let mut deflate = Compress::new(Compression::new(level), false);
    // Room for the worst case (stored blocks), so the stream always ends.
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 64 + 64);
    out.extend_from_slice(&GZIP_HEADER);
    let status = deflate
        .compress_vec(raw, &mut out, FlushCompress::Finish)
        .ok()?;
    if status != Status::StreamEnd || out.len() + 8 >= raw.len() {
        return None;
    }
    let mut crc = Crc::new();
    crc.update(raw);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    Some(out)
}

/// Windows sampled from a value to judge it: spread over its length, so a
/// compressible header before an incompressible body (or the reverse) is
/// judged by both.
const SAMPLE_WINDOWS: usize = 4;
const SAMPLE_WINDOW: usize = 256;

/// Above this many bits per byte (of 8) in the sample, gzip is not tried.
/// Random, encrypted and compressed bytes measure 7.7–7.9 in 1 KiB (the
/// estimate runs a little low on small samples); base64 stays under 6.1,
/// JSON and text under 5.5, so there is a wide gap between the two.
const MAX_SAMPLE_BITS_PER_BYTE: f64 = 7.2;

/// `c · log2(c)` for every count a sample can hold, so the entropy of a
/// sample costs table lookups, not logarithms.
static C_LOG2_C: LazyLock<Vec<f64>> = LazyLock::new(|| {
    (0..=SAMPLE_WINDOWS * SAMPLE_WINDOW)
        .map(|c| {
            if c == 0 {
                0.0
            } else {
                c as f64 * (c as f64).log2()
            }
        })
        .collect()
});

/// The order-0 entropy of a sample of `raw`, in bits per byte.
fn sample_bits_per_byte(raw: &[u8]) -> f64 {
    let mut counts = [0u16; 256];
    let mut n = 0usize;
    let mut count = |window: &[u8]| {
        for &b in window {
            counts[usize::from(b)] += 1;
        }
        n += window.len();
    };
    if raw.len() <= SAMPLE_WINDOWS * SAMPLE_WINDOW {
        count(raw);
    } else {
        let stride = (raw.len() - SAMPLE_WINDOW) / (SAMPLE_WINDOWS - 1);
        for i in 0..SAMPLE_WINDOWS {
            let start = i * stride;
            count(&raw[start..start + SAMPLE_WINDOW]);
        }
    }
    if n == 0 {
        return 0.0;
    }
    let table = &*C_LOG2_C;
    let sum: f64 = counts.iter().map(|&c| table[usize::from(c)]).sum();
    table[n] / n as f64 - sum / n as f64
}

/// Whether gzip is worth trying on `raw` (judged from a sample).
pub fn worth_trying(raw: &[u8]) -> bool {
    sample_bits_per_byte(raw) <= MAX_SAMPLE_BITS_PER_BYTE
}

/// What became of a value on its way into the store (counted per namespace
/// as `gantry_cache_packed_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// Under `cache.compress_min_bytes`: stored raw, nothing tried.
    Small,
    /// Its sample looked incompressible: stored raw, gzip not tried.
    Skipped,
    /// gzip was tried and did not make it smaller: stored raw.
    NotSmaller,
    /// Stored gzipped.
    Gzip,
}

impl Packing {
    pub fn compressed(self) -> bool {
        self == Self::Gzip
    }
}

/// The value as it will be stored: gzip when `raw` has at least `min_bytes`,
/// its sample says it may compress, and it does compress to fewer bytes;
/// else raw.
pub fn pack_judged(raw: &[u8], min_bytes: usize, level: u32) -> (Packing, Vec<u8>) {
    if raw.len() < min_bytes || raw.is_empty() {
        return (Packing::Small, raw.to_vec());
    }
    if !worth_trying(raw) {
        return (Packing::Skipped, raw.to_vec());
    }
    match gzip(raw, level) {
        Some(packed) => (Packing::Gzip, packed),
        None => (Packing::NotSmaller, raw.to_vec()),
    }
}

/// [`pack_judged`] as (compressed, bytes).
pub fn pack(raw: &[u8], min_bytes: usize, level: u32) -> (bool, Vec<u8>) {
    let (packing, data) = pack_judged(raw, min_bytes, level);
    (packing.compressed(), data)
}

/// The value as it was put. `raw_len` (from the entry's header) bounds the
/// output, so damaged data cannot inflate without limit.
pub fn unpack(compressed: bool, data: &[u8], raw_len: u64) -> Result<Vec<u8>, String> {
    if !compressed {
        return Ok(data.to_vec());
    }
    let capacity = usize::try_from(raw_len).map_err(|_| "raw length too large".to_string())?;
    let mut out = Vec::with_capacity(capacity);
    GzDecoder::new(data)
        .take(raw_len.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| format!("gzip: {e}"))?;
    if out.len() as u64 != raw_len {
        return Err(format!(
            "gzip: {} bytes decompressed, the header says {raw_len}",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_like(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n {
            v.extend_from_slice(
                format!(
                    "{{\"id\":{i},\"name\":\"user-{i}\",\"active\":true,\"tags\":[\"a\",\"b\"]}},"
                )
                .as_bytes(),
            );
        }
        v
    }

    /// Bytes from a simple generator: gzip cannot shrink them.
    fn noise(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn compressible_values_are_gzipped_and_come_back() {
        let raw = json_like(200);
        let (compressed, packed) = pack(&raw, 1024, 1);
        assert!(compressed);
        assert!(
            packed.len() * 4 < raw.len(),
            "{} -> {}",
            raw.len(),
            packed.len()
        );
        assert_eq!(unpack(true, &packed, raw.len() as u64).unwrap(), raw);
    }

    #[test]
    fn incompressible_small_and_empty_values_are_stored_raw() {
        let raw = noise(4096);
        assert_eq!(pack(&raw, 1024, 6), (false, raw.clone()));
        let small = json_like(2);
        assert!(!pack(&small, 1024, 6).0, "under min_bytes");
        assert_eq!(pack(&[], 0, 6), (false, Vec::new()));
        assert_eq!(unpack(false, &raw, raw.len() as u64).unwrap(), raw);
    }

    #[test]
    fn a_reused_deflate_state_handles_every_kind_of_value() {
        // Incompressible values stop the deflate stream early (the output
        // would not be smaller); the state must be usable again after that.
        for round in 0..3 {
            for size in [1024, 60_000, 200_000] {
                let raw = noise(size + round);
                assert!(!pack(&raw, 1, 1).0, "noise of {size} stays raw");
                let json = json_like(size / 50 + 1);
                let (compressed, packed) = pack(&json, 1, 1);
                assert!(compressed);
                assert_eq!(unpack(true, &packed, json.len() as u64).unwrap(), json);
            }
        }
    }

    fn base64_of(raw: &[u8]) -> Vec<u8> {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        raw.iter().map(|&b| ALPHABET[usize::from(b & 63)]).collect()
    }

    #[test]
    fn the_sample_tells_noise_from_what_compresses() {
        for size in [1024, 10 * 1024, 1 << 20] {
            let bits = sample_bits_per_byte(&noise(size));
            assert!(bits > 7.5, "noise of {size}: {bits}");
            assert!(!worth_trying(&noise(size)));
        }
        for (what, value) in [
            ("json", json_like(300)),
            ("base64", base64_of(&noise(8192))),
            (
                "text",
                b"the quick brown fox jumps over the lazy dog. ".repeat(200),
            ),
            ("one byte", vec![b'v'; 10_240]),
        ] {
            let bits = sample_bits_per_byte(&value);
            assert!(bits < 6.2, "{what}: {bits}");
            assert!(worth_trying(&value), "{what}");
        }
        // A small compressible header before a large random body: judged by
        // windows over the whole value, mostly noise, so not tried (gzip
        // would save a few percent for a full deflate pass).
        let mut mixed = json_like(20);
        mixed.extend(noise(20_000));
        assert!(!worth_trying(&mixed), "{}", sample_bits_per_byte(&mixed));
        assert_eq!(pack_judged(&mixed, 1, 1).0, Packing::Skipped);
        assert_eq!(pack_judged(&json_like(300), 1, 1).0, Packing::Gzip);
        assert_eq!(pack_judged(&json_like(300), 1 << 20, 1).0, Packing::Small);
        // Compressible-looking but not smaller once gzipped: two bytes.
        assert_eq!(pack_judged(b"ab", 1, 1).0, Packing::NotSmaller);
        assert_eq!(sample_bits_per_byte(&[]), 0.0);
    }

    #[test]
    fn damaged_or_lying_data_is_an_error_not_a_bomb() {
        let raw = json_like(100);
        let (_, packed) = pack(&raw, 1, 1);
        let err = unpack(true, &packed, 10).unwrap_err();
        assert!(err.contains("header says 10"), "{err}");
        assert!(unpack(true, b"not gzip", 5).is_err());
    }
}
