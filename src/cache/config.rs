//! `[cache]`: the shared cache's bounds, tiers, compression and expiry.

use serde::{Deserialize, Serialize};

use crate::config::values::{Checked, Durability, HumanDuration, at_least_one, positive};
use crate::error::FieldError;

/// `[cache]`: the shared cache. Read at start (a change needs a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `periodic`: a Put is in the store when answered and on disk within
    /// `storage.flush_interval`. `sync`: a Put is answered after it is on disk
    /// (concurrent Puts share one flush).
    pub durability: Durability,
    /// Longest namespace name, in bytes.
    pub max_namespace_bytes: u64,
    /// Most namespaces; a Put into a new one beyond it is RESOURCE_EXHAUSTED
    /// (each namespace has its own series on /metrics).
    pub max_namespaces: u64,
    /// Longest key, in bytes.
    pub max_key_bytes: u64,
    /// Largest value, in bytes.
    pub max_value_bytes: u64,
    /// Most items in one GetMany or PutMany.
    pub max_batch: u64,
    /// Most entries in the in-memory hot tier.
    pub hot_entries: u64,
    /// Most value bytes in the in-memory hot tier.
    pub hot_bytes: u64,
    /// Values of at least this many bytes are gzip-compressed when that saves space.
    pub compress_min_bytes: u64,
    /// gzip level, 1 (fastest) to 9 (smallest).
    pub compression_level: u32,
    /// How often expired entries are removed from the store.
    pub sweep_interval: HumanDuration,
    /// Most expired entries removed per sweep step (between steps requests run).
    pub sweep_batch: u64,
    /// Events buffered per watched namespace before a slow watcher is told to resync.
    pub watch_buffer: u64,
    /// Most concurrent Watch streams.
    pub max_watchers: u64,
    /// Answer Get and Put calls from a few tasks in groups (fewer write system
    /// calls per call); false: each call runs on its own.
    pub coalesce: bool,
    /// In `periodic` durability, most bytes (keys and values) of writes
    /// answered but not yet written to the store; a write beyond it writes
    /// them first, on its own call.
    pub write_behind_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Periodic,
            max_namespace_bytes: 128,
            max_namespaces: 1_000,
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
            max_batch: 1_000,
            hot_entries: 100_000,
            hot_bytes: 64 * 1024 * 1024,
            compress_min_bytes: 1024,
            compression_level: 1,
            sweep_interval: HumanDuration::from_secs(1),
            sweep_batch: 1_000,
            watch_buffer: 1_024,
            max_watchers: 1_000,
            coalesce: true,
            write_behind_bytes: 64 * 1024 * 1024,
        }
    }
}

impl CacheConfig {
    pub(crate) fn validate(&self) -> Checked {
        at_least_one(
            "cache",
            [
                ("max_namespace_bytes", self.max_namespace_bytes),
                ("max_namespaces", self.max_namespaces),
                ("max_key_bytes", self.max_key_bytes),
                ("max_value_bytes", self.max_value_bytes),
                ("max_batch", self.max_batch),
                ("hot_entries", self.hot_entries),
                ("hot_bytes", self.hot_bytes),
                ("sweep_batch", self.sweep_batch),
                ("watch_buffer", self.watch_buffer),
                ("max_watchers", self.max_watchers),
                ("write_behind_bytes", self.write_behind_bytes),
            ],
        )?;
        if !(1..=9).contains(&self.compression_level) {
            return Err(FieldError::new(
                "cache.compression_level",
                format!("{} is out of range; use 1 to 9", self.compression_level),
            ));
        }
        positive("cache", [("sweep_interval", self.sweep_interval)])?;
        if self.watch_buffer > 1 << 20 {
            return Err(FieldError::new(
                "cache.watch_buffer",
                format!("{} is out of range; use 1 to 1048576", self.watch_buffer),
            ));
        }
        Ok(())
    }
}
