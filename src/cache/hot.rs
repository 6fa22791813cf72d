//! The in-memory hot tier: quick_cache (S3-FIFO, scan resistant), holding
//! values as they were put (decompressed), bounded by entries and bytes. An
//! eviction loses nothing — the entry is still in the store — and is counted
//! per namespace.

use std::sync::Arc;

use prost::bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};

use super::entry::split_name;
use super::stats::Namespaces;

/// A value in the hot tier.
#[derive(Debug, Clone)]
pub struct HotEntry {
    pub version: u64,
    /// 0: never expires.
    pub expires_at_ms: u64,
    pub value: Bytes,
    /// Bytes of the value as stored (after compression), for the counters.
    pub stored_len: usize,
}

/// Bookkeeping bytes per entry besides key and value.
const OVERHEAD: u64 = 64;

/// Weighs an entry by its bytes, but never below `floor` = bytes / entries,
/// so the weight capacity bounds both the bytes and the number of entries.
#[derive(Debug, Clone)]
struct ByBytes {
    floor: u64,
}

impl Weighter<Vec<u8>, HotEntry> for ByBytes {
    fn weight(&self, key: &Vec<u8>, val: &HotEntry) -> u64 {
        (key.len() as u64 + val.value.len() as u64 + OVERHEAD).max(self.floor)
    }
}

#[derive(Debug, Clone)]
struct CountEvictions(Arc<Namespaces>);

impl Lifecycle<Vec<u8>, HotEntry> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), key: Vec<u8>, _: HotEntry) {
        if let Some(counters) = split_name(&key).and_then(|(ns, _)| self.0.get(ns)) {
            counters.evicted();
        }
    }
}

type Inner = Cache<Vec<u8>, HotEntry, ByBytes, quick_cache::DefaultHashBuilder, CountEvictions>;

pub struct HotTier {
    cache: Inner,
}

impl HotTier {
    pub fn new(max_entries: u64, max_bytes: u64, namespaces: Arc<Namespaces>) -> Self {
        let floor = (max_bytes / max_entries.max(1)).max(1);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(usize::try_from(max_entries).unwrap_or(usize::MAX))
            .weight_capacity(max_bytes)
            .build();
        let cache = match options {
            Ok(options) => Cache::with_options(
                options,
                ByBytes { floor },
                quick_cache::DefaultHashBuilder::default(),
                CountEvictions(namespaces),
            ),
            // The configuration validates both as at least 1, so the options
            // always build; fall back to a tiny tier rather than panic.
            Err(_) => Cache::with(
                1,
                floor,
                ByBytes { floor },
                quick_cache::DefaultHashBuilder::default(),
                CountEvictions(namespaces),
            ),
        };
        Self { cache }
    }

    /// Keyed by the entry's name (`<namespace>\0<key>`).
    pub fn get(&self, name: &[u8]) -> Option<HotEntry> {
        self.cache.get(name)
    }

    pub fn insert(&self, name: Vec<u8>, entry: HotEntry) {
        self.cache.insert(name, entry);
    }

    pub fn remove(&self, name: &[u8]) {
        self.cache.remove(name);
    }

    /// Forgets every entry (the store is the truth again after it reopened).
    pub fn clear(&self) {
        self.cache.clear();
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    pub fn weight(&self) -> u64 {
        self.cache.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::name;

    fn entry(len: usize) -> HotEntry {
        HotEntry {
            version: 1,
            expires_at_ms: 0,
            value: Bytes::from(vec![b'x'; len]),
            stored_len: len,
        }
    }

    #[test]
    fn the_tier_is_bounded_by_entries_and_by_bytes_and_counts_evictions() {
        let namespaces = Arc::new(Namespaces::new(10));
        let counters = namespaces.get_or_create("ns").unwrap();
        // 100 entries or 100 KiB, whichever is reached first.
        let hot = HotTier::new(100, 100 * 1024, namespaces.clone());
        for i in 0..1000 {
            hot.insert(name("ns", &format!("k{i}")), entry(10));
        }
        assert!(hot.len() <= 100, "{} small entries", hot.len());
        for i in 0..1000 {
            hot.insert(name("ns", &format!("big{i}")), entry(10 * 1024));
        }
        assert!(hot.weight() <= 100 * 1024, "{} bytes", hot.weight());
        assert!(hot.len() <= 100);
        assert!(counters.snapshot().evictions >= 900);
        let key = name("ns", "big999");
        if let Some(e) = hot.get(&key) {
            assert_eq!(e.value.len(), 10 * 1024);
        }
        hot.remove(&key);
        assert!(hot.get(&key).is_none());
    }
}
