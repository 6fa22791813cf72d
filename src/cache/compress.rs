//! gzip for large values, only when it saves space; the reader never sees
//! the difference.

use std::io::Read;

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

/// The value as it will be stored: gzip when `raw` has at least `min_bytes`
/// and compresses to fewer bytes, else raw. Returns (compressed, bytes).
pub fn pack(raw: &[u8], min_bytes: usize, level: u32) -> (bool, Vec<u8>) {
    if raw.len() < min_bytes || raw.is_empty() {
        return (false, raw.to_vec());
    }
    match gzip(raw, level) {
        Some(packed) => (true, packed),
        None => (false, raw.to_vec()),
    }
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

    #[test]
    fn damaged_or_lying_data_is_an_error_not_a_bomb() {
        let raw = json_like(100);
        let (_, packed) = pack(&raw, 1, 1);
        let err = unpack(true, &packed, 10).unwrap_err();
        assert!(err.contains("header says 10"), "{err}");
        assert!(unpack(true, b"not gzip", 5).is_err());
    }
}
