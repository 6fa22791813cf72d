//! The cache itself: reads through the hot tier to the store, conditional
//! writes, deletes, and the expiry sweeper. No gRPC types.
//!
//! Every write of a key happens under that key's stripe lock (one of 1024),
//! which makes read-check-write conditions atomic and keeps the hot tier
//! coherent: a writer updates the store and the hot tier before it lets go,
//! and a reader that fills the hot tier after a miss does so under the same
//! lock. Hot-tier hits take no lock.
//!
//! The store holds every live entry; TTLs are wall-clock times, so entries
//! survive a restart with the time they have left. An expired entry is never
//! returned: reads check the time, and the sweeper removes expired entries in
//! bounded steps through the expiry index.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use prost::bytes::Bytes;

use super::CacheError;
use super::behind::{InStore, Pending, Staged, WriteBehind};
use super::compress;
use super::entry::{self, Stored};
use super::hot::{HotEntry, HotTier};
use super::stats::{Counters, Namespaces};
use super::watch::{Change, ChangeKind, MAX_EVENT_VALUE_BYTES, Subscription, WatchHub};
use crate::config::{CacheConfig, Durability};
use crate::error::FieldError;
use crate::store::flush::GroupFlush;
use crate::store::{BatchOp, Domain, Store, StoreError, Tree};
use crate::wallclock::now_ms;

const STRIPES: usize = 1024;

/// Values shorter than this are copied out of the request before the hot
/// tier, the write-behind or a watch event keeps them (see [`own_copy`]).
const COPY_BELOW: usize = 4 * 1024;

/// A value decoded from a request shares the request's whole receive buffer
/// (8 KiB or more), and keeps all of it alive for as long as the value is
/// held: a 100-byte value in the hot tier would hold some 80 times its size,
/// unseen by `cache.hot_bytes`. Short values get an allocation of their own
/// (a copy of under 4 KiB); longer ones fill most of their buffer anyway.
fn own_copy(value: Bytes) -> Bytes {
    if value.len() < COPY_BELOW {
        Bytes::copy_from_slice(&value)
    } else {
        value
    }
}

/// When a write may happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// Only when no live entry exists.
    IfAbsent,
    /// Only when the live entry has this version (compare-and-set).
    IfVersion(u64),
}

/// A live entry as a read sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub value: Bytes,
    pub version: u64,
    /// 0: never expires.
    pub expires_at_ms: u64,
}

/// A successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub version: u64,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_namespace_bytes: usize,
    max_key_bytes: usize,
    max_value_bytes: usize,
    max_batch: usize,
    compress_min_bytes: usize,
    compression_level: u32,
}

struct Inner {
    store: Arc<dyn Store>,
    tree: Arc<dyn Tree>,
    hot: HotTier,
    stripes: Box<[Mutex<()>]>,
    hasher: foldhash::fast::RandomState,
    namespaces: Arc<Namespaces>,
    watch: WatchHub,
    limits: Limits,
    /// Set in `sync` durability: writes are answered after a shared flush.
    flush: Option<GroupFlush>,
    /// Set in `periodic` durability: writes are staged and drained to the
    /// store (every half flush interval, by the server).
    behind: Option<WriteBehind>,
}

#[derive(Clone)]
pub struct CacheEngine {
    inner: Arc<Inner>,
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn damaged(name: &[u8], detail: impl Into<String>) -> CacheError {
    let (namespace, key) = entry::split_name(name).unwrap_or(("?", "?"));
    CacheError::Damaged {
        namespace: namespace.to_string(),
        key: key.to_string(),
        detail: detail.into(),
    }
}

impl CacheEngine {
    /// Opens the cache over the store and counts what it already holds
    /// (blocking: reads every entry's header once).
    pub fn open(config: &CacheConfig, store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let namespaces = Arc::new(Namespaces::new(usize_of(config.max_namespaces)));
        let tree = store.tree(Domain::Cache);
        for item in tree.scan_prefix(entry::ENTRY_PREFIX) {
            let (key, value) = item?;
            let name = &key[entry::ENTRY_PREFIX.len()..];
            if let (Some((ns, _)), Some((header, stored_len))) =
                (entry::split_name(name), Stored::decode_header(&value))
            {
                namespaces
                    .load(ns)
                    .resize(1, header.raw_len as i64, stored_len as i64);
            }
        }
        let (flush, behind) = match config.durability {
            Durability::Sync => (
                Some(
                    GroupFlush::start(store.clone(), "cache")
                        .map_err(|e| StoreError::Io(format!("cannot start the flusher: {e}")))?,
                ),
                None,
            ),
            Durability::Periodic => (
                None,
                Some(WriteBehind::new(usize_of(config.write_behind_bytes))),
            ),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                tree,
                store,
                hot: HotTier::new(config.hot_entries, config.hot_bytes, namespaces.clone()),
                stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
                hasher: foldhash::fast::RandomState::default(),
                namespaces,
                watch: WatchHub::new(usize_of(config.watch_buffer), usize_of(config.max_watchers)),
                limits: Limits {
                    max_namespace_bytes: usize_of(config.max_namespace_bytes),
                    max_key_bytes: usize_of(config.max_key_bytes),
                    max_value_bytes: usize_of(config.max_value_bytes),
                    max_batch: usize_of(config.max_batch),
                    compress_min_bytes: usize_of(config.compress_min_bytes),
                    compression_level: config.compression_level,
                },
                flush,
                behind,
            }),
        })
    }

    pub fn namespaces(&self) -> Arc<Namespaces> {
        self.inner.namespaces.clone()
    }

    pub fn max_batch(&self) -> usize {
        self.inner.limits.max_batch
    }

    pub fn watchers(&self) -> usize {
        self.inner.watch.watchers()
    }

    /// Forgets the hot tier: after the store recovered from a fault it may
    /// have lost writes the hot tier still shows, and the store is the truth.
    pub fn forget_hot(&self) {
        self.inner.hot.clear();
    }

    pub fn hot_entries(&self) -> usize {
        self.inner.hot.len()
    }

    /// Keys and bytes answered but not yet written to the store (write-behind).
    pub fn write_behind(&self) -> (usize, usize) {
        self.inner
            .behind
            .as_ref()
            .map_or((0, 0), |b| (b.staged_keys(), b.staged_bytes()))
    }

    /// Whether writes are staged and need draining (`periodic` durability).
    pub fn writes_behind(&self) -> bool {
        self.inner.behind.is_some()
    }

    /// Keys written by write-behind drains so far, and drains the store refused.
    pub fn write_behind_totals(&self) -> (u64, u64) {
        self.inner
            .behind
            .as_ref()
            .map_or((0, 0), WriteBehind::totals)
    }

    /// Checks a namespace (for Watch and Stats as well as reads and writes).
    pub fn check_namespace(&self, namespace: &str) -> Result<(), CacheError> {
        let field = "namespace";
        let max = self.inner.limits.max_namespace_bytes;
        FieldError::check_text(field, namespace, max, "cache.max_namespace_bytes")?;
        if namespace.chars().any(char::is_control) {
            let reason = format!("{namespace:?} contains a control character");
            return Err(FieldError::new(field, reason).into());
        }
        Ok(())
    }

    /// A Watch's key prefix: one longer than any key could never match.
    pub fn check_key_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        let max = self.inner.limits.max_key_bytes;
        if prefix.len() > max {
            let e = FieldError::too_long("key_prefix", prefix.len(), max, "cache.max_key_bytes");
            return Err(e.into());
        }
        Ok(())
    }

    /// Checks what a Put writes (namespace, key, value size) and counts the
    /// namespace (`cache.max_namespaces`); the shared store's writes use it too.
    pub(crate) fn check_put(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
    ) -> Result<Arc<Counters>, CacheError> {
        self.check(namespace, key)?;
        let max = self.inner.limits.max_value_bytes;
        if value.len() > max {
            let e = FieldError::too_long("value", value.len(), max, "cache.max_value_bytes");
            return Err(e.into());
        }
        self.inner.namespaces.get_or_create(namespace)
    }

    /// A value as it is stored: gzipped where that pays (`cache.compress_min_bytes`),
    /// counted in the namespace's `packed` outcomes.
    pub(crate) fn pack(&self, counters: &Counters, value: &[u8]) -> (bool, Vec<u8>) {
        let limits = self.inner.limits;
        let (packing, data) =
            compress::pack_judged(value, limits.compress_min_bytes, limits.compression_level);
        counters.packed(packing);
        (packing.compressed(), data)
    }

    /// The hot tier, for the shared store's replica-local copy of entries.
    pub(crate) fn hot(&self) -> &HotTier {
        &self.inner.hot
    }

    /// The hub Watch subscribes to; the shared store's listener publishes to it.
    pub(crate) fn watch_hub(&self) -> &WatchHub {
        &self.inner.watch
    }

    pub(crate) fn check(&self, namespace: &str, key: &str) -> Result<(), CacheError> {
        self.check_namespace(namespace)?;
        let max = self.inner.limits.max_key_bytes;
        FieldError::check_text("key", key, max, "cache.max_key_bytes")?;
        Ok(())
    }

    fn lock(&self, name: &[u8]) -> MutexGuard<'_, ()> {
        let hash = self.inner.hasher.hash_one(name);
        self.inner.stripes[(hash as usize) % STRIPES].lock()
    }

    /// The header of an entry (and its stored length), from the hot tier
    /// when it holds the entry (it is coherent with the store under the
    /// stripe lock), else from the store.
    fn current(&self, name: &[u8]) -> Result<Option<(Stored, usize)>, CacheError> {
        match self.inner.hot.get(name) {
            Some(hot) => Ok(Some((
                Stored {
                    version: hot.version,
                    expires_at_ms: hot.expires_at_ms,
                    compressed: false,
                    raw_len: hot.value.len() as u64,
                    data: Vec::new(),
                },
                hot.stored_len,
            ))),
            None => match self.staged_for(name) {
                Some(Staged::Put {
                    version,
                    expires_at_ms,
                    value,
                }) => Ok(Some((
                    Stored {
                        version,
                        expires_at_ms,
                        compressed: false,
                        raw_len: value.len() as u64,
                        data: Vec::new(),
                    },
                    0,
                ))),
                Some(Staged::Delete) => Ok(None),
                None => self.header(name),
            },
        }
    }

    /// Puts an entry in the hot tier; `stored_len`: its bytes in the store
    /// (what the store holds for the key, while a write of it is staged).
    fn remember(
        &self,
        name: Vec<u8>,
        version: u64,
        expires_at_ms: u64,
        value: Bytes,
        stored_len: usize,
    ) {
        let entry = HotEntry {
            version,
            expires_at_ms,
            value,
            stored_len,
        };
        self.inner.hot.insert(name, entry);
    }

    /// What is staged for an entry (write-behind), if anything.
    fn staged_for(&self, name: &[u8]) -> Option<Staged> {
        self.inner.behind.as_ref().and_then(|b| b.staged(name))
    }

    /// What the store holds for an entry now, for the record a staged write
    /// starts (under the stripe lock): the record's own knowledge, else the
    /// hot tier (coherent with the store while nothing is staged), else the
    /// store.
    fn in_store(&self, behind: &WriteBehind, name: &[u8]) -> Result<Option<InStore>, CacheError> {
        if let Some(known) = behind.in_store(name) {
            return Ok(known);
        }
        if let Some(hot) = self.inner.hot.get(name) {
            return Ok(Some(InStore {
                expires_at_ms: hot.expires_at_ms,
                stored_len: hot.stored_len,
            }));
        }
        Ok(self.header(name)?.map(|(h, stored_len)| InStore {
            expires_at_ms: h.expires_at_ms,
            stored_len,
        }))
    }

    /// The stored header of an entry (and its stored length), without the value.
    fn header(&self, name: &[u8]) -> Result<Option<(Stored, usize)>, CacheError> {
        match self.inner.tree.get(&entry::entry_key(name))? {
            None => Ok(None),
            Some(bytes) => Stored::decode_header(&bytes)
                .map(Some)
                .ok_or_else(|| damaged(name, "unreadable entry header")),
        }
    }

    pub fn get(&self, namespace: &str, key: &str) -> Result<Option<Found>, CacheError> {
        self.check(namespace, key)?;
        let counters = self.inner.namespaces.get(namespace);
        let count = |f: fn(&Counters)| {
            if let Some(c) = &counters {
                f(c);
            }
        };
        let name = entry::name(namespace, key);
        let now = now_ms();
        if let Some(hot) = self.inner.hot.get(&name) {
            // The hot tier is coherent with the store, so an expired hot
            // entry is an expired entry.
            if hot.expires_at_ms != 0 && hot.expires_at_ms <= now {
                count(Counters::hot_miss);
                count(Counters::store_miss);
                return Ok(None);
            }
            count(Counters::hot_hit);
            return Ok(Some(Found {
                value: hot.value,
                version: hot.version,
                expires_at_ms: hot.expires_at_ms,
            }));
        }
        count(Counters::hot_miss);
        let _guard = self.lock(&name);
        if let Some(behind) = &self.inner.behind
            && let Some(staged) = behind.staged(&name)
        {
            let Staged::Put {
                version,
                expires_at_ms,
                value,
            } = staged
            else {
                count(Counters::store_miss);
                return Ok(None);
            };
            if expires_at_ms != 0 && expires_at_ms <= now {
                count(Counters::store_miss);
                return Ok(None);
            }
            let in_store = behind.in_store(&name).flatten();
            let stored_len = in_store.map_or(0, |s| s.stored_len);
            self.remember(name, version, expires_at_ms, value.clone(), stored_len);
            count(Counters::store_hit);
            return Ok(Some(Found {
                value,
                version,
                expires_at_ms,
            }));
        }
        let Some(bytes) = self.inner.tree.get(&entry::entry_key(&name))? else {
            count(Counters::store_miss);
            return Ok(None);
        };
        let stored = Stored::decode(&bytes).ok_or_else(|| damaged(&name, "unreadable entry"))?;
        if !stored.is_live(now) {
            count(Counters::store_miss);
            return Ok(None);
        }
        let value = compress::unpack(stored.compressed, &stored.data, stored.raw_len)
            .map_err(|e| damaged(&name, e))?;
        let value = Bytes::from(value);
        let (version, expires_at_ms) = (stored.version, stored.expires_at_ms);
        self.remember(
            name,
            version,
            expires_at_ms,
            value.clone(),
            stored.data.len(),
        );
        count(Counters::store_hit);
        Ok(Some(Found {
            value,
            version: stored.version,
            expires_at_ms: stored.expires_at_ms,
        }))
    }

    /// Writes an entry if `condition` holds. `ttl` None: no expiry. In `sync`
    /// durability, wait for [`Self::durable`] before answering; in
    /// `periodic`, the write is staged and reaches the store at the next drain.
    pub fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        condition: Condition,
    ) -> Result<Written, CacheError> {
        self.check(namespace, key)?;
        let limits = self.inner.limits;
        if value.len() > limits.max_value_bytes {
            let (len, max) = (value.len(), limits.max_value_bytes);
            return Err(FieldError::too_long("value", len, max, "cache.max_value_bytes").into());
        }
        let counters = self.inner.namespaces.get_or_create(namespace)?;
        let value = own_copy(value);
        let name = entry::name(namespace, key);
        // Staged writes are bounded: past the bound this call drains first
        // (outside any stripe lock: the drain takes them).
        if let Some(behind) = &self.inner.behind
            && behind.full(name.len() + value.len())
        {
            self.drain()?;
        }
        // Packing is the slow part of a direct write: before the lock.
        let packed = match self.inner.behind {
            Some(_) => None,
            None => Some(self.pack(&counters, &value)),
        };
        let now = now_ms();
        // Millisecond resolution; a positive TTL below 1 ms still expires.
        let expires_at_ms = ttl.map_or(0, |t| {
            now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1))
        });

        let _guard = self.lock(&name);
        let current = self.current(&name)?;
        check_condition(namespace, key, condition, live_version(&current, now))?;
        // sled's ids start at 0, but version 0 is "no version" on the wire
        // (an unset if_version): versions start at 1, as on Redis.
        let version = self.inner.store.next_id()?.saturating_add(1);
        let raw = value.len() as i64;
        let (old_raw, old_stored) = match &current {
            Some((old, old_len)) => (Some(old.raw_len as i64), *old_len as i64),
            None => (None, 0),
        };
        let stored_len = match (&self.inner.behind, packed) {
            (Some(behind), _) => {
                let in_store = self.in_store(behind, &name)?;
                let staged = Staged::Put {
                    version,
                    expires_at_ms,
                    value: value.clone(),
                };
                behind.stage(&name, staged, in_store);
                // Stored bytes are counted when the drain writes them.
                counters.resize(i64::from(old_raw.is_none()), raw - old_raw.unwrap_or(0), 0);
                in_store.map_or(0, |s| s.stored_len)
            }
            (None, packed) => {
                let (compressed, data) = packed.unwrap_or_default();
                let stored = Stored {
                    version,
                    expires_at_ms,
                    compressed,
                    raw_len: value.len() as u64,
                    data,
                };
                self.write_direct(&name, &stored, current.as_ref().map(|(c, _)| c))?;
                let stored_len = stored.data.len();
                counters.resize(
                    i64::from(old_raw.is_none()),
                    raw - old_raw.unwrap_or(0),
                    stored_len as i64 - old_stored,
                );
                stored_len
            }
        };
        self.remember(name, version, expires_at_ms, value.clone(), stored_len);
        self.inner.watch.publish(namespace, || Change {
            kind: ChangeKind::Put,
            namespace: namespace.to_string(),
            key: key.to_string(),
            version,
            value: (value.len() <= MAX_EVENT_VALUE_BYTES).then_some(value),
            at_ms: now,
        });
        Ok(Written { version })
    }

    /// Writes an entry to the store at once (`sync` durability), under its
    /// stripe lock; `old` is the entry it replaces.
    fn write_direct(
        &self,
        name: &[u8],
        stored: &Stored,
        old: Option<&Stored>,
    ) -> Result<(), CacheError> {
        let tree = &self.inner.tree;
        let expires_at_ms = stored.expires_at_ms;
        // Index first: a crash in between leaves an index entry without an
        // entry (the sweeper skips it), never an entry the sweeper cannot find.
        if expires_at_ms != 0 {
            tree.set(&entry::expiry_key(expires_at_ms, name), &[])?;
        }
        tree.set(&entry::entry_key(name), &stored.encode())?;
        if let Some(old) = old
            && old.expires_at_ms != 0
            && old.expires_at_ms != expires_at_ms
        {
            tree.remove(&entry::expiry_key(old.expires_at_ms, name))?;
        }
        Ok(())
    }

    /// Writes what is staged (write-behind) to the store in one batch:
    /// values packed now, a key rewritten since the last drain written
    /// once. Returns how many keys it wrote. Blocking.
    pub fn drain(&self) -> Result<usize, CacheError> {
        let Some(behind) = &self.inner.behind else {
            return Ok(0);
        };
        let _turn = behind.drain_turn();
        let pending = behind.snapshot();
        if pending.is_empty() {
            return Ok(0);
        }
        let mut ops = Vec::with_capacity(pending.len() * 2);
        let _span = tracing::debug_span!("cache.drain", keys = pending.len()).entered();
        let written: Vec<Option<InStore>> = pending
            .iter()
            .map(|p| self.store_ops(p, &mut ops))
            .collect();
        if let Err(e) = self.inner.tree.apply_batch(ops) {
            behind.drain_failed();
            return Err(e.into());
        }
        for (p, now) in pending.iter().zip(written) {
            let _guard = self.lock(&p.name);
            let (before, after) = (
                p.in_store.map_or(0, |s| s.stored_len as i64),
                now.map_or(0, |s| s.stored_len as i64),
            );
            if let Some(c) = self.counters_of(&p.name) {
                c.resize(0, 0, after - before);
            }
            behind.written(p, now);
            // The hot tier knows the stored size of what the store holds.
            if let Some(now) = now
                && let Some(mut hot) = self.inner.hot.get(&p.name)
                && hot.stored_len != now.stored_len
            {
                hot.stored_len = now.stored_len;
                self.inner.hot.insert(p.name.clone(), hot);
            }
        }
        Ok(pending.len())
    }

    /// Drains, then flushes the store if any drain wrote since the last
    /// flush: whatever was answered before the call is on disk after it.
    pub fn drain_and_flush(&self) -> Result<usize, CacheError> {
        let drained = self.drain()?;
        if self
            .inner
            .behind
            .as_ref()
            .is_some_and(WriteBehind::take_unflushed)
        {
            self.inner.store.flush()?;
        }
        Ok(drained)
    }

    /// The store operations that make the store hold `p`; what it then holds.
    fn store_ops(&self, p: &Pending, ops: &mut Vec<BatchOp>) -> Option<InStore> {
        let old_expiry = p.in_store.map_or(0, |s| s.expires_at_ms);
        let stale_index = |ops: &mut Vec<BatchOp>, keep: u64| {
            if old_expiry != 0 && old_expiry != keep {
                ops.push(BatchOp::Remove(entry::expiry_key(old_expiry, &p.name)));
            }
        };
        match &p.staged {
            Staged::Put {
                version,
                expires_at_ms,
                value,
            } => {
                let limits = self.inner.limits;
                let (packing, data) = compress::pack_judged(
                    value,
                    limits.compress_min_bytes,
                    limits.compression_level,
                );
                if let Some(c) = self.counters_of(&p.name) {
                    c.packed(packing);
                }
                let stored = Stored {
                    version: *version,
                    expires_at_ms: *expires_at_ms,
                    compressed: packing.compressed(),
                    raw_len: value.len() as u64,
                    data,
                };
                if *expires_at_ms != 0 {
                    let index = entry::expiry_key(*expires_at_ms, &p.name);
                    ops.push(BatchOp::Insert(index, Vec::new()));
                }
                let stored_len = stored.data.len();
                ops.push(BatchOp::Insert(entry::entry_key(&p.name), stored.encode()));
                stale_index(ops, *expires_at_ms);
                Some(InStore {
                    expires_at_ms: *expires_at_ms,
                    stored_len,
                })
            }
            Staged::Delete => {
                ops.push(BatchOp::Remove(entry::entry_key(&p.name)));
                stale_index(ops, 0);
                None
            }
        }
    }

    fn counters_of(&self, name: &[u8]) -> Option<Arc<Counters>> {
        entry::split_name(name).and_then(|(namespace, _)| self.inner.namespaces.get(namespace))
    }

    /// Whether a write is answered only after a flush (`sync` durability):
    /// then [`Self::durable`] waits.
    pub fn answers_after_flush(&self) -> bool {
        self.inner.flush.is_some()
    }

    /// Resolves once every write made before the call is on disk (`sync`
    /// durability); at once in `periodic`.
    pub async fn durable(&self) -> Result<(), CacheError> {
        match &self.inner.flush {
            Some(flush) => flush.flushed().await.map_err(CacheError::from),
            None => Ok(()),
        }
    }

    /// Deletes a live entry (only at `if_version` when given). False when
    /// there was no live entry.
    pub fn delete(
        &self,
        namespace: &str,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<bool, CacheError> {
        self.check(namespace, key)?;
        let name = entry::name(namespace, key);
        let now = now_ms();
        let _guard = self.lock(&name);
        let current = self.current(&name)?;
        if let Some(v) = if_version {
            check_condition(
                namespace,
                key,
                Condition::IfVersion(v),
                live_version(&current, now),
            )?;
        }
        let live = current
            .as_ref()
            .filter(|(c, _)| c.is_live(now))
            .map(|(c, _)| c);
        let Some(old) = live else {
            // Nothing live; an expired entry is left to the sweeper, which counts it.
            return Ok(false);
        };
        let stored_len = current.as_ref().map_or(0, |(_, l)| *l);
        self.remove_locked(&name, old, stored_len)?;
        let version = old.version;
        self.inner.watch.publish(namespace, || Change {
            kind: ChangeKind::Delete,
            namespace: namespace.to_string(),
            key: key.to_string(),
            version,
            value: None,
            at_ms: now,
        });
        Ok(true)
    }

    /// Removes an entry (`old`, stored in `stored_len` bytes) under its
    /// stripe lock: staged in `periodic` (its stored bytes are counted off
    /// when the drain removes it), from the store at once in `sync`.
    fn remove_locked(
        &self,
        name: &[u8],
        old: &Stored,
        stored_len: usize,
    ) -> Result<(), CacheError> {
        let stored = match &self.inner.behind {
            Some(behind) => {
                let in_store = self.in_store(behind, name)?;
                behind.stage(name, Staged::Delete, in_store);
                0
            }
            None => {
                let tree = &self.inner.tree;
                tree.remove(&entry::entry_key(name))?;
                if old.expires_at_ms != 0 {
                    tree.remove(&entry::expiry_key(old.expires_at_ms, name))?;
                }
                stored_len as i64
            }
        };
        self.inner.hot.remove(name);
        if let Some(c) = self.counters_of(name) {
            c.resize(-1, -(old.raw_len as i64), -stored);
        }
        Ok(())
    }

    /// Removes up to `batch` entries whose expiry is due, through the expiry
    /// index (never a scan of the entries). Returns how many index entries it
    /// handled: call again while it returns `batch`.
    pub fn sweep_step(&self, now: u64, batch: usize) -> Result<usize, CacheError> {
        let mut due = Vec::with_capacity(batch.min(1024));
        for item in self.inner.tree.scan_prefix(entry::EXPIRY_PREFIX) {
            let (index_key, _) = item?;
            match entry::parse_expiry_key(&index_key) {
                Some((at, _)) if at > now => break,
                Some((at, name)) => {
                    let name = name.to_vec();
                    due.push((index_key, at, name));
                }
                // Damaged index keys are dropped.
                None => due.push((index_key, 0, Vec::new())),
            }
            if due.len() >= batch {
                break;
            }
        }
        for (index_key, at, name) in &due {
            if !name.is_empty() {
                self.expire_one(name, *at, now)?;
            }
            self.inner.tree.remove(index_key)?;
        }
        Ok(due.len())
    }

    fn expire_one(&self, name: &[u8], at: u64, now: u64) -> Result<(), CacheError> {
        let _guard = self.lock(name);
        let Some((current, stored_len)) = self.current(name)? else {
            return Ok(());
        };
        // The index may be stale: the entry was rewritten with another expiry.
        if current.expires_at_ms != at || current.is_live(now) {
            return Ok(());
        }
        self.remove_locked(name, &current, stored_len)?;
        let Some((namespace, key)) = entry::split_name(name) else {
            return Ok(());
        };
        if let Some(c) = self.inner.namespaces.get(namespace) {
            c.expirations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.watch.publish(namespace, || Change {
            kind: ChangeKind::Expire,
            namespace: namespace.to_string(),
            key: key.to_string(),
            version: current.version,
            value: None,
            at_ms: now,
        });
        Ok(())
    }

    pub fn subscribe(&self, namespace: &str) -> Result<Subscription, CacheError> {
        self.check_namespace(namespace)?;
        self.inner.watch.subscribe(namespace)
    }

    /// Counts a watcher that fell behind and was told to resync.
    pub fn count_resync(&self) {
        self.inner
            .watch
            .resyncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn resyncs(&self) -> u64 {
        self.inner
            .watch
            .resyncs
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops broadcast channels nobody listens to any more.
    pub fn prune_watch_channels(&self) {
        self.inner.watch.prune();
    }
}

/// The version of the entry if it is live at `now`.
fn live_version(current: &Option<(Stored, usize)>, now: u64) -> Option<u64> {
    current
        .as_ref()
        .filter(|(c, _)| c.is_live(now))
        .map(|(c, _)| c.version)
}

fn check_condition(
    namespace: &str,
    key: &str,
    condition: Condition,
    live_version: Option<u64>,
) -> Result<(), CacheError> {
    let failed = |what: String| {
        Err(CacheError::ConditionFailed(format!(
            "namespace {namespace:?} key {key:?} {what}"
        )))
    };
    match (condition, live_version) {
        (Condition::Always, _) => Ok(()),
        (Condition::IfAbsent, None) => Ok(()),
        (Condition::IfAbsent, Some(v)) => failed(format!("exists at version {v} (if_absent)")),
        (Condition::IfVersion(want), Some(v)) if v == want => Ok(()),
        (Condition::IfVersion(want), Some(v)) => {
            failed(format!("is at version {v}, not {want} (if_version)"))
        }
        (Condition::IfVersion(want), None) => failed(format!("does not exist (if_version {want})")),
    }
}

/// Removes expired entries every `every`, in bounded steps off the async
/// workers, until `stop`.
pub async fn run_sweeper(
    engine: CacheEngine,
    every: Duration,
    batch: usize,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        engine.prune_watch_channels();
        loop {
            let step = engine.clone();
            let done = tokio::task::spawn_blocking(move || step.sweep_step(now_ms(), batch)).await;
            match done {
                Ok(Ok(n)) if n >= batch && !stop.is_cancelled() => continue,
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cache expiry sweep failed; retrying next interval");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cache expiry sweep panicked");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_stop_sharing_the_request_buffer_long_ones_keep_it() {
        let request = Bytes::from(vec![7u8; 16 * 1024]);
        let short = own_copy(request.slice(10..110));
        assert!(short.is_unique(), "a 100-byte value holds only itself");
        assert_eq!(short, request.slice(10..110));
        let long = own_copy(request.slice(0..8 * 1024));
        assert!(!long.is_unique(), "a long value is not copied");
    }
}
