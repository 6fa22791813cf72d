//! How a lease is laid out in the store (the `leases` tree):
//!
//! - key `l/<lease id>`
//! - value: format version `1`, count (u32), expires_at_ms (u64), pool
//!   length (u16), pool, holder — integers big-endian.
//!
//! Decoding never trusts the bytes: an entry that does not decode is skipped
//! and counted, not a panic.

use super::table::Lease;
use crate::store::{StoreError, Tree};

const PREFIX: &[u8] = b"l/";
const VERSION: u8 = 1;

pub fn key(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(PREFIX.len() + id.len());
    key.extend_from_slice(PREFIX);
    key.extend_from_slice(id.as_bytes());
    key
}

pub fn encode(lease: &Lease) -> Vec<u8> {
    let pool_len = u16::try_from(lease.pool.len()).unwrap_or(u16::MAX);
    let mut value = Vec::with_capacity(15 + lease.pool.len() + lease.holder.len());
    value.push(VERSION);
    value.extend_from_slice(&lease.count.to_be_bytes());
    value.extend_from_slice(&lease.expires_at_ms.to_be_bytes());
    value.extend_from_slice(&pool_len.to_be_bytes());
    value.extend_from_slice(&lease.pool.as_bytes()[..usize::from(pool_len)]);
    value.extend_from_slice(lease.holder.as_bytes());
    value
}

pub fn decode(key: &[u8], value: &[u8]) -> Option<Lease> {
    let id = std::str::from_utf8(key.strip_prefix(PREFIX)?).ok()?;
    let (&version, rest) = value.split_first()?;
    if version != VERSION {
        return None;
    }
    let (count, rest) = rest.split_first_chunk::<4>()?;
    let (expires, rest) = rest.split_first_chunk::<8>()?;
    let (pool_len, rest) = rest.split_first_chunk::<2>()?;
    let pool_len = usize::from(u16::from_be_bytes(*pool_len));
    if rest.len() < pool_len {
        return None;
    }
    let (pool, holder) = rest.split_at(pool_len);
    Some(Lease {
        id: id.to_string(),
        pool: std::str::from_utf8(pool).ok()?.to_string(),
        holder: std::str::from_utf8(holder).ok()?.to_string(),
        count: u32::from_be_bytes(*count),
        expires_at_ms: u64::from_be_bytes(*expires),
    })
}

/// Every saved lease, and how many entries did not decode (with their keys,
/// to delete).
pub fn load(tree: &dyn Tree) -> Result<(Vec<Lease>, Vec<Vec<u8>>), StoreError> {
    let mut leases = Vec::new();
    let mut undecodable = Vec::new();
    for item in tree.scan_prefix(PREFIX) {
        let (k, v) = item?;
        match decode(&k, &v) {
            Some(lease) => leases.push(lease),
            None => undecodable.push(k),
        }
    }
    Ok((leases, undecodable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Domain;

    fn lease(id: &str, pool: &str, holder: &str) -> Lease {
        Lease {
            id: id.into(),
            pool: pool.into(),
            holder: holder.into(),
            count: 7,
            expires_at_ms: 1_800_000_000_123,
        }
    }

    #[test]
    fn leases_round_trip() {
        for l in [
            lease("abc", "orders-db", "instance-1"),
            lease("x", "p", ""),
            lease("y", "päöl", "hölder/with\0nul"),
        ] {
            assert_eq!(decode(&key(&l.id), &encode(&l)), Some(l.clone()));
        }
    }

    #[test]
    fn damaged_entries_do_not_decode() {
        let good = encode(&lease("a", "pool", "h"));
        assert_eq!(decode(b"zz", &good), None, "wrong prefix");
        for cut in 0..16 {
            assert_eq!(decode(&key("a"), &good[..cut]), None, "cut at {cut}");
        }
        let mut future = good.clone();
        future[0] = 9;
        assert_eq!(decode(&key("a"), &future), None, "unknown version");
        let mut bad_len = good;
        bad_len[13] = 0xff;
        assert_eq!(
            decode(&key("a"), &bad_len),
            None,
            "pool length past the end"
        );
    }

    #[test]
    fn load_reads_every_lease_and_names_the_damaged_ones() {
        let (_dir, store) = crate::store::temp_store();
        let tree = store.tree(Domain::Leases);
        for l in [lease("a", "db", "h1"), lease("b", "db", "h2")] {
            tree.insert(&key(&l.id), &encode(&l)).unwrap();
        }
        tree.insert(b"l/broken", b"\x01").unwrap();
        let (leases, bad) = load(&*tree).unwrap();
        assert_eq!(leases.len(), 2);
        assert_eq!(bad, vec![b"l/broken".to_vec()]);
    }
}
