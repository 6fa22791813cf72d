//! How the cache lays out its tree in the store:
//!
//! - `e/<namespace>\0<key>` → an entry: format `1`, flags (bit 0: gzip),
//!   version, expires_at_ms (0: never), raw length — all big-endian — then
//!   the value as stored.
//! - `x/<expires_at_ms BE><namespace>\0<key>` → empty: the expiry index, in
//!   expiry order, so the sweeper reads only what is due.
//!
//! Namespaces cannot contain NUL (they are refused), so the first NUL
//! separates namespace from key; keys may contain anything.

pub const ENTRY_PREFIX: &[u8] = b"e/";
pub const EXPIRY_PREFIX: &[u8] = b"x/";
const FORMAT: u8 = 1;
const GZIP: u8 = 1;
const HEADER: usize = 2 + 8 + 8 + 8;

/// `<namespace>\0<key>`: the part both layouts share.
pub fn name(namespace: &str, key: &str) -> Vec<u8> {
    let mut name = Vec::with_capacity(namespace.len() + 1 + key.len());
    name.extend_from_slice(namespace.as_bytes());
    name.push(0);
    name.extend_from_slice(key.as_bytes());
    name
}

pub fn split_name(name: &[u8]) -> Option<(&str, &str)> {
    let nul = name.iter().position(|&b| b == 0)?;
    let namespace = std::str::from_utf8(&name[..nul]).ok()?;
    let key = std::str::from_utf8(&name[nul + 1..]).ok()?;
    Some((namespace, key))
}

pub fn entry_key(name: &[u8]) -> Vec<u8> {
    [ENTRY_PREFIX, name].concat()
}

pub fn expiry_key(expires_at_ms: u64, name: &[u8]) -> Vec<u8> {
    [EXPIRY_PREFIX, &expires_at_ms.to_be_bytes(), name].concat()
}

/// (expires_at_ms, name) of an expiry-index key.
pub fn parse_expiry_key(key: &[u8]) -> Option<(u64, &[u8])> {
    let rest = key.strip_prefix(EXPIRY_PREFIX)?;
    let (at, name) = rest.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*at), name))
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub version: u64,
    /// 0: never expires.
    pub expires_at_ms: u64,
    pub compressed: bool,
    /// Length of the value as it was put.
    pub raw_len: u64,
    pub data: Vec<u8>,
}

impl Stored {
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms == 0 || self.expires_at_ms > now_ms
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.data.len());
        out.push(FORMAT);
        out.push(if self.compressed { GZIP } else { 0 });
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        out.extend_from_slice(&self.raw_len.to_be_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// The header alone (no copy of the value): for counting at start.
    pub fn decode_header(bytes: &[u8]) -> Option<(Stored, usize)> {
        let (&format, rest) = bytes.split_first()?;
        if format != FORMAT {
            return None;
        }
        let (&flags, rest) = rest.split_first()?;
        let (version, rest) = rest.split_first_chunk::<8>()?;
        let (expires, rest) = rest.split_first_chunk::<8>()?;
        let (raw_len, rest) = rest.split_first_chunk::<8>()?;
        Some((
            Stored {
                version: u64::from_be_bytes(*version),
                expires_at_ms: u64::from_be_bytes(*expires),
                compressed: flags & GZIP != 0,
                raw_len: u64::from_be_bytes(*raw_len),
                data: Vec::new(),
            },
            rest.len(),
        ))
    }

    pub fn decode(bytes: &[u8]) -> Option<Stored> {
        let (mut stored, len) = Self::decode_header(bytes)?;
        stored.data = bytes[bytes.len() - len..].to_vec();
        Some(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_at_the_first_nul() {
        let n = name("tenant", "key\0with nul");
        assert_eq!(split_name(&n), Some(("tenant", "key\0with nul")));
        assert_eq!(split_name(b"no-separator"), None);
        let e = entry_key(&n);
        assert!(e.starts_with(ENTRY_PREFIX));
    }

    #[test]
    fn expiry_keys_sort_by_time() {
        let a = expiry_key(5, &name("z", "z"));
        let b = expiry_key(256, &name("a", "a"));
        assert!(a < b, "byte order is time order");
        assert_eq!(parse_expiry_key(&b), Some((256, &name("a", "a")[..])));
        assert_eq!(parse_expiry_key(b"x/short"), None);
    }

    #[test]
    fn entries_round_trip_and_damage_is_detected() {
        let s = Stored {
            version: 42,
            expires_at_ms: 1_700_000_000_000,
            compressed: true,
            raw_len: 1000,
            data: b"gz".to_vec(),
        };
        let bytes = s.encode();
        assert_eq!(Stored::decode(&bytes), Some(s.clone()));
        let (header, len) = Stored::decode_header(&bytes).unwrap();
        assert_eq!((header.version, len), (42, 2));
        for cut in 0..HEADER {
            assert_eq!(Stored::decode(&bytes[..cut]), None);
        }
        let mut other = bytes;
        other[0] = 7;
        assert_eq!(Stored::decode(&other), None);
        assert!(s.is_live(1_699_999_999_999));
        assert!(!s.is_live(1_700_000_000_000));
        assert!(
            Stored {
                expires_at_ms: 0,
                ..s
            }
            .is_live(u64::MAX)
        );
    }
}
