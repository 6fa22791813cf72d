//! The cache kept in Redis (`storage.backend = "redis"`): every replica reads
//! and writes the same entries, so a Put on one is read on the others at once.
//!
//! An entry is one Redis hash (`<prefix>:c:<namespace length>:<namespace>:<key>`)
//! holding its version, whether the value is gzipped, the value's length and
//! the stored bytes; its TTL is Redis's own (PEXPIRE). Writes are Lua scripts
//! ([`PUT_LUA`], [`DELETE_LUA`]): checking the condition (`if_absent`,
//! `if_version`), choosing the version and writing are one atomic step, and the
//! same step publishes the change (Redis pub/sub) for every replica's
//! watchers. A version is `max(previous + 1, Redis's clock in µs)`: it grows
//! with every write of a key, and a key deleted and written again never
//! reuses an old version (as long as the Redis clock does not go back).
//!
//! The embedded engine still validates (the same limits and errors), counts
//! namespaces, gzips and fans events out to this replica's watchers; its
//! store is not used.
//!
//! Each replica keeps a hot tier (`cache.hot_entries`, `hot_bytes`) kept
//! coherent by the same change events: every event, from any replica,
//! removes the key from it, and while this replica's subscription is down
//! nothing is kept (it is emptied when the subscription is lost or starts).
//! A Get fills it only if no event for a key of the same stripe arrived while
//! it read from Redis, so a value read just before another replica's write
//! cannot be kept after that write's invalidation. A replica's hot copy may
//! lag another replica's write by the time the event takes to arrive (about a
//! millisecond on a LAN).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::sync::CancellationToken;

use super::hot::HotEntry;
use super::watch::{Change, ChangeKind, MAX_EVENT_VALUE_BYTES};
use super::{CacheEngine, CacheError, Condition, Found, compress, entry};
use crate::store::StoreError;
use crate::store::redis::{RedisStore, RedisStoreError};
use crate::wallclock::now_ms;

/// Where every write announces itself.
const EVENTS_CHANNEL: &str = "c-events";

/// KEYS[1]: the entry. ARGV: condition (`always`, `absent`, `version`), the
/// expected version, ttl in ms (0: none), gzipped (0/1), raw length, stored
/// bytes, the events channel, the event's tail, and whether the event carries
/// the stored bytes (1/0: they are sent once, not twice). Returns {stored
/// (1/0), the version written or the current one (0: none)}.
pub const PUT_LUA: &str = r#"
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local condition = ARGV[1]
if condition == 'absent' and current > 0 then return {0, current} end
if condition == 'version' and current ~= tonumber(ARGV[2]) then return {0, current} end
local version = math.max(current + 1, now_us)
redis.call('HSET', KEYS[1], 'v', string.format('%.0f', version), 'z', ARGV[4], 'n', ARGV[5], 'd', ARGV[6])
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
local event = struct.pack('>Bdd', 1, version, math.floor(now_us / 1000)) .. ARGV[8]
if ARGV[9] == '1' then event = event .. ARGV[6] end
redis.call('PUBLISH', ARGV[7], event)
return {1, version}
"#;

/// KEYS[1]: the entry. ARGV: the expected version ('' for any), the events
/// channel, the event's tail. Returns {deleted (1/0, -1: version mismatch),
/// the version deleted or the current one}.
pub const DELETE_LUA: &str = r#"
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if ARGV[1] ~= '' and current ~= tonumber(ARGV[1]) then return {-1, current} end
if current == 0 then return {0, 0} end
redis.call('DEL', KEYS[1])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('PUBLISH', ARGV[2], struct.pack('>Bdd', 2, current, now_ms) .. ARGV[3])
return {1, current}
"#;

/// Invalidation stripes: a Get fills the hot tier only if its stripe saw
/// no change event while it read from Redis.
const STRIPES: usize = 1024;

/// The cache in Redis.
#[derive(Clone)]
pub struct RedisCache {
    engine: CacheEngine,
    store: RedisStore,
    put: Arc<redis::Script>,
    delete: Arc<redis::Script>,
    coherence: Arc<Coherence>,
}

/// What keeps the hot tier coherent with every replica's writes.
struct Coherence {
    /// Whether change events arrive now (the subscription is up).
    listening: AtomicBool,
    /// The same, for a Watch that waits for it: set after the watchers
    /// already there were told to resync, so a new one is not.
    subscribed: tokio::sync::watch::Sender<bool>,
    /// On a cluster, whether every primary first listed has its expiry
    /// subscription up (true at once on one server, where the one
    /// subscription carries them).
    expiries_subscribed: tokio::sync::watch::Sender<bool>,
    /// Change events seen per stripe of entry names.
    changes: Box<[AtomicU64]>,
    hasher: foldhash::fast::FixedState,
}

impl Coherence {
    fn stripe(&self, name: &[u8]) -> &AtomicU64 {
        let hash = self.hasher.hash_one(name) as usize;
        &self.changes[hash % STRIPES]
    }
}

impl RedisCache {
    /// Starts listening for changes made on any replica (until `stop`).
    pub fn start(engine: CacheEngine, store: RedisStore, stop: CancellationToken) -> Self {
        let cluster = store.is_cluster();
        let cache = Self {
            engine,
            store,
            put: Arc::new(redis::Script::new(PUT_LUA)),
            delete: Arc::new(redis::Script::new(DELETE_LUA)),
            coherence: Arc::new(Coherence {
                listening: AtomicBool::new(false),
                subscribed: tokio::sync::watch::Sender::new(false),
                expiries_subscribed: tokio::sync::watch::Sender::new(!cluster),
                changes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
                hasher: foldhash::fast::FixedState::default(),
            }),
        };
        let listener = cache.clone();
        tokio::spawn(async move { listener.listen(stop).await });
        cache
    }

    fn key(&self, namespace: &str, key: &str) -> String {
        self.store
            .key("c", &format!("{}:{namespace}:{key}", namespace.len()))
    }

    fn channel(&self) -> String {
        self.store.key(EVENTS_CHANNEL, "")
    }

    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Found>, CacheError> {
        self.engine.check(namespace, key)?;
        let counters = self.engine.namespaces().get(namespace);
        let name = entry::name(namespace, key);
        if let Some(hot) = self.engine.hot().get(&name)
            && (hot.expires_at_ms == 0 || hot.expires_at_ms > now_ms())
        {
            if let Some(c) = &counters {
                c.hot_hit();
            }
            return Ok(Some(Found {
                value: hot.value,
                version: hot.version,
                expires_at_ms: hot.expires_at_ms,
            }));
        }
        if let Some(c) = &counters {
            c.hot_miss();
        }
        let stripe = self.coherence.stripe(&name);
        let changes_before = stripe.load(Ordering::Acquire);
        let entry = self.key(namespace, key);
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("HMGET")
            .arg(&entry)
            .arg(&["v", "z", "n", "d"])
            .cmd("PTTL")
            .arg(&entry);
        let (fields, ttl_ms): (Vec<Option<Vec<u8>>>, i64) =
            self.store.pipeline(&pipeline).await.map_err(unavailable)?;
        let number = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.as_deref())
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<u64>().ok())
        };
        let (Some(version), Some(data)) = (number(0), fields.get(3).and_then(|f| f.as_ref()))
        else {
            if let Some(c) = &counters {
                c.store_miss();
            }
            return Ok(None);
        };
        let value = compress::unpack(number(1) == Some(1), data, number(2).unwrap_or(0)).map_err(
            |detail| CacheError::Damaged {
                namespace: namespace.to_string(),
                key: key.to_string(),
                detail,
            },
        )?;
        if let Some(c) = &counters {
            c.store_hit();
        }
        let found = Found {
            value: Bytes::from(value),
            version,
            expires_at_ms: u64::try_from(ttl_ms)
                .ok()
                .map_or(0, |ttl| now_ms().saturating_add(ttl)),
        };
        // Kept only while events arrive, and only if none for this stripe
        // arrived meanwhile (it could have been this key's newer write).
        if self.coherence.listening.load(Ordering::Acquire)
            && stripe.load(Ordering::Acquire) == changes_before
        {
            self.engine.hot().insert(
                name,
                HotEntry {
                    version,
                    expires_at_ms: found.expires_at_ms,
                    value: found.value.clone(),
                    stored_len: data.len(),
                },
            );
        }
        Ok(Some(found))
    }

    pub async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        condition: Condition,
    ) -> Result<u64, CacheError> {
        let counters = self.engine.check_put(namespace, key, &value)?;
        let (compressed, data) = self.engine.pack(&counters, &value);
        let (mode, expected) = match condition {
            Condition::Always => ("always", 0),
            Condition::IfAbsent => ("absent", 0),
            Condition::IfVersion(v) => ("version", v),
        };
        // A positive TTL below 1 ms still expires (as embedded).
        let ttl_ms = ttl.map_or(0, |t| {
            u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        let with_value = value.len() <= MAX_EVENT_VALUE_BYTES;
        let event = event_tail(
            namespace,
            key,
            with_value.then_some((compressed, value.len() as u64)),
        );
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.put.get_hash())
            .arg(1)
            .arg(self.key(namespace, key))
            .arg(mode)
            .arg(expected)
            .arg(ttl_ms)
            .arg(u8::from(compressed))
            .arg(value.len())
            .arg(data)
            .arg(self.channel())
            .arg(event)
            .arg(u8::from(with_value));
        let (stored, version): (i64, u64) = self.run(&self.put, &cmd).await?;
        if stored == 1 {
            self.forget(namespace, key);
            return Ok(version);
        }
        let live = (version > 0).then_some(version);
        Err(condition_failed(namespace, key, condition, live))
    }

    /// Deletes a live entry (only at `if_version` when given). False when
    /// there was none.
    pub async fn delete(
        &self,
        namespace: &str,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<bool, CacheError> {
        self.engine.check(namespace, key)?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.delete.get_hash())
            .arg(1)
            .arg(self.key(namespace, key))
            .arg(if_version.map(|v| v.to_string()).unwrap_or_default())
            .arg(self.channel())
            .arg(event_tail(namespace, key, None));
        let (deleted, version): (i64, u64) = self.run(&self.delete, &cmd).await?;
        match (deleted, if_version) {
            (1, _) => {
                self.forget(namespace, key);
                Ok(true)
            }
            (-1, Some(want)) => Err(condition_failed(
                namespace,
                key,
                Condition::IfVersion(want),
                (version > 0).then_some(version),
            )),
            _ => Ok(false),
        }
    }

    /// Drops this replica's hot copy of a key it just wrote (its own event
    /// follows, but a read here must not wait for it).
    fn forget(&self, namespace: &str, key: &str) {
        let name = entry::name(namespace, key);
        self.coherence.stripe(&name).fetch_add(1, Ordering::AcqRel);
        self.engine.hot().remove(&name);
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        cmd: &redis::Cmd,
    ) -> Result<T, CacheError> {
        self.store.eval(script, cmd).await.map_err(unavailable)
    }

    /// Waits up to `max` for this replica to receive every replica's change
    /// events; false when it does not (a Watch cannot promise them then).
    pub async fn until_listening(&self, max: std::time::Duration) -> bool {
        let mut subscribed = self.coherence.subscribed.subscribe();
        let mut expiries = self.coherence.expiries_subscribed.subscribe();
        tokio::time::timeout(max, async {
            subscribed.wait_for(|up| *up).await.is_ok() && expiries.wait_for(|up| *up).await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Hands the changes every replica publishes to this replica's watchers,
    /// and the expiries Redis announces (keyspace notifications, switched on
    /// before each subscription: on one server in the same subscription, on
    /// a cluster on every primary, each announcing its own keys); when a
    /// subscription is lost (and at its start), tells them to resync, since
    /// changes may have been missed.
    async fn listen(self, stop: CancellationToken) {
        let events = self.channel();
        let expired = self.store.expired_channel();
        let cluster = self.store.is_cluster();
        if cluster {
            tokio::spawn(self.clone().listen_for_expiries_on_primaries(stop.clone()));
        }
        let channels: Vec<String> = if cluster {
            vec![events.clone()]
        } else {
            vec![events.clone(), expired]
        };
        let store = self.store.clone();
        let prepare = || {
            let store = store.clone();
            async move {
                // Not before Redis answers: subscribing while expiry events
                // are still off would leave watchers without EXPIRE events.
                cluster || store.enable_expiry_events(None).await.is_ok()
            }
        };
        let coherence = &self.coherence;
        let entries = self.store.key("c", "");
        self.store
            .listen_all(
                None,
                &channels,
                stop,
                prepare,
                |channel, payload| {
                    let change = if channel == events {
                        parse_event(payload)
                    } else {
                        parse_expired(&entries, payload)
                    };
                    if let Some(change) = change {
                        self.hand_out(change);
                    }
                },
                |listening| {
                    coherence.listening.store(listening, Ordering::Release);
                    self.missed();
                    coherence.subscribed.send_replace(listening);
                },
            )
            .await;
    }

    /// A change for this replica's watchers; its hot copy is dropped first.
    fn hand_out(&self, change: Change) {
        let name = entry::name(&change.namespace, &change.key);
        self.coherence.stripe(&name).fetch_add(1, Ordering::AcqRel);
        self.engine.hot().remove(&name);
        let namespace = change.namespace.clone();
        self.engine.watch_hub().publish(&namespace, || change);
    }

    /// Events may have been missed: nothing kept is trusted, watchers resync.
    fn missed(&self) {
        for stripe in self.coherence.changes.iter() {
            stripe.fetch_add(1, Ordering::AcqRel);
        }
        self.engine.hot().clear();
        self.engine.watch_hub().resync_all(now_ms());
    }

    /// On a cluster: one subscription to expiries per primary, kept in step
    /// with the primaries every [`PRIMARIES_EVERY`] (a failover promotes a
    /// replica, a resharding adds nodes).
    async fn listen_for_expiries_on_primaries(self, stop: CancellationToken) {
        let mut listening: HashMap<String, CancellationToken> = HashMap::new();
        // The first primaries still to subscribe before a Watch is promised expiries.
        let mut first: Option<Arc<std::sync::atomic::AtomicUsize>> = None;
        loop {
            match self.store.primaries().await {
                Ok(primaries) if !primaries.is_empty() => {
                    let first = first
                        .get_or_insert_with(|| {
                            Arc::new(std::sync::atomic::AtomicUsize::new(primaries.len()))
                        })
                        .clone();
                    listening.retain(|node, node_stop| {
                        let kept = primaries.contains(node);
                        if !kept {
                            node_stop.cancel();
                        }
                        kept
                    });
                    for node in primaries {
                        if !listening.contains_key(&node) {
                            let node_stop = stop.child_token();
                            listening.insert(node.clone(), node_stop.clone());
                            tokio::spawn(self.clone().listen_for_expiries_on(
                                node,
                                node_stop,
                                first.clone(),
                            ));
                        }
                    }
                }
                Ok(_) => tracing::debug!("the cluster lists no primary yet"),
                Err(e) => tracing::debug!(error = %e, "cannot list the cluster's primaries yet"),
            }
            // Soon while none is known yet (the store may still be connecting).
            let again = if first.is_some() {
                PRIMARIES_EVERY
            } else {
                std::time::Duration::from_millis(100)
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(again) => {}
            }
        }
    }

    async fn listen_for_expiries_on(
        self,
        node: String,
        stop: CancellationToken,
        first: Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let started = AtomicBool::new(false);
        let channels = [self.store.expired_channel()];
        let entries = self.store.key("c", "");
        let store = self.store.clone();
        let prepare = || {
            let (store, node) = (store.clone(), node.clone());
            async move { store.enable_expiry_events(Some(&node)).await.is_ok() }
        };
        self.store
            .listen_all(
                Some(&node),
                &channels,
                stop,
                prepare,
                |_, payload| {
                    if let Some(change) = parse_expired(&entries, payload) {
                        self.hand_out(change);
                    }
                },
                // Expiries may have been missed from a loss until the node's
                // subscription is back (not before its first start: watchers
                // on this replica had nothing of it to miss yet).
                |up| {
                    if !up || started.swap(true, Ordering::AcqRel) {
                        self.missed();
                    } else if first.fetch_sub(1, Ordering::AcqRel) == 1 {
                        self.coherence.expiries_subscribed.send_replace(true);
                    }
                },
            )
            .await;
    }
}

/// How often a cluster's primaries are listed again for expiry subscriptions.
const PRIMARIES_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// An expiry Redis announced: the name of an entry's key
/// (`<entries><namespace length>:<namespace>:<key>`, see
/// [`RedisCache::key`]), as an `EXPIRE` change; `None` for other keys.
fn parse_expired(entries: &str, name: &[u8]) -> Option<Change> {
    let rest = name.strip_prefix(entries.as_bytes())?;
    let colon = rest.iter().position(|&b| b == b':')?;
    let length: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    let rest = &rest[colon + 1..];
    let namespace = std::str::from_utf8(rest.get(..length)?).ok()?;
    let key = rest.get(length..)?.strip_prefix(b":")?;
    Some(Change {
        kind: ChangeKind::Expire,
        namespace: namespace.to_string(),
        key: String::from_utf8(key.to_vec()).ok()?,
        version: 0,
        value: None,
        at_ms: now_ms(),
    })
}

/// The part of a change event the writer knows before the script runs:
/// namespace and key, length-prefixed, then whether the value follows and,
/// if so, whether it is gzipped and its length (the script appends the
/// stored bytes, which it already has).
fn event_tail(namespace: &str, key: &str, value: Option<(bool, u64)>) -> Vec<u8> {
    let mut tail = BytesMut::with_capacity(19 + namespace.len() + key.len());
    for part in [namespace.as_bytes(), key.as_bytes()] {
        tail.put_u32(part.len() as u32);
        tail.put_slice(part);
    }
    match value {
        Some((compressed, raw_len)) => {
            tail.put_u8(1);
            tail.put_u8(u8::from(compressed));
            tail.put_u64(raw_len);
        }
        None => tail.put_u8(0),
    }
    tail.to_vec()
}

/// A change as published by [`PUT_LUA`] / [`DELETE_LUA`]: kind (1 put,
/// 2 delete), version and time (big-endian doubles), then [`event_tail`] and,
/// when it says so, the stored bytes.
fn parse_event(mut bytes: &[u8]) -> Option<Change> {
    if bytes.len() < 17 {
        return None;
    }
    let kind = match bytes.get_u8() {
        1 => ChangeKind::Put,
        2 => ChangeKind::Delete,
        _ => return None,
    };
    let version = bytes.get_f64() as u64;
    let at_ms = bytes.get_f64() as u64;
    let mut text = || -> Option<String> {
        if bytes.len() < 4 {
            return None;
        }
        let len = bytes.get_u32() as usize;
        let part = bytes.get(..len)?;
        let text = String::from_utf8(part.to_vec()).ok()?;
        bytes.advance(len);
        Some(text)
    };
    let namespace = text()?;
    let key = text()?;
    let value = match bytes.first() {
        Some(1) if bytes.len() >= 10 => {
            let compressed = bytes[1] == 1;
            let raw_len = u64::from_be_bytes(bytes[2..10].try_into().ok()?);
            let value = compress::unpack(compressed, &bytes[10..], raw_len).ok()?;
            Some(Bytes::from(value))
        }
        _ => None,
    };
    Some(Change {
        kind,
        namespace,
        key,
        version,
        value,
        at_ms,
    })
}

fn condition_failed(
    namespace: &str,
    key: &str,
    condition: Condition,
    live: Option<u64>,
) -> CacheError {
    let what = match (condition, live) {
        (Condition::IfAbsent, Some(v)) => format!("exists at version {v} (if_absent)"),
        (Condition::IfVersion(want), Some(v)) => {
            format!("is at version {v}, not {want} (if_version)")
        }
        (Condition::IfVersion(want), None) => format!("does not exist (if_version {want})"),
        _ => "changed meanwhile".to_string(),
    };
    CacheError::ConditionFailed(format!("namespace {namespace:?} key {key:?} {what}"))
}

fn unavailable(e: RedisStoreError) -> CacheError {
    CacheError::Store(StoreError::Io(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_their_wire_form() {
        let mut wire = vec![1u8];
        wire.extend_from_slice(&1_700_000_000_000_001f64.to_be_bytes());
        wire.extend_from_slice(&1_700_000_000_000f64.to_be_bytes());
        wire.extend(event_tail("ns", "k:1", Some((false, 5))));
        wire.extend_from_slice(b"value");
        let change = parse_event(&wire).unwrap();
        assert_eq!(change.kind, ChangeKind::Put);
        assert_eq!(
            (change.namespace.as_str(), change.key.as_str()),
            ("ns", "k:1")
        );
        assert_eq!(change.version, 1_700_000_000_000_001);
        assert_eq!(change.value.as_deref(), Some(&b"value"[..]));
        let mut wire = vec![2u8];
        wire.extend_from_slice(&7f64.to_be_bytes());
        wire.extend_from_slice(&0f64.to_be_bytes());
        wire.extend(event_tail("ns", "k", None));
        let change = parse_event(&wire).unwrap();
        assert_eq!((change.kind, change.value), (ChangeKind::Delete, None));
        assert!(parse_event(&wire[..20]).is_none(), "a cut event is ignored");
        // A gzipped value arrives as it was written.
        let raw = vec![b'a'; 4096];
        let (compressed, stored) = compress::pack(&raw, 64, 6);
        assert!(compressed);
        let mut wire = vec![1u8];
        wire.extend_from_slice(&9f64.to_be_bytes());
        wire.extend_from_slice(&0f64.to_be_bytes());
        wire.extend(event_tail("ns", "k", Some((true, raw.len() as u64))));
        wire.extend(stored);
        assert_eq!(parse_event(&wire).unwrap().value.as_deref(), Some(&raw[..]));
    }

    #[test]
    fn an_announced_expiry_names_namespace_and_key_even_with_colons() {
        let change = parse_expired("gantry:c:", b"gantry:c:3:a:b:key:with:colons").unwrap();
        assert_eq!(
            (change.kind, change.namespace.as_str(), change.key.as_str()),
            (ChangeKind::Expire, "a:b", "key:with:colons")
        );
        assert!(parse_expired("gantry:c:", b"gantry:rl:3:a:b:k").is_none());
        assert!(parse_expired("gantry:c:", b"gantry:c:9:short").is_none());
    }
}
