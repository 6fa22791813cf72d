//! The bucket table and the decisions made on it: immediate acquisitions,
//! fair waiting, atomic batches, sweeping, reload and snapshots.
//!
//! Buckets live in 64 mutex-guarded shards keyed by (limit id, key), so
//! decisions on different buckets rarely contend, and one decision is a hash,
//! an uncontended lock and the GCRA arithmetic. A bucket that has waiters
//! carries a queue; one dispatcher task per such bucket sleeps exactly until
//! the head's tokens have accrued, grants it, and goes on to the next.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{Notify, oneshot};

use super::RateLimitError;
use super::descriptors::EnvoyRules;
use super::gcra::{BucketState, Decision, Params};
use super::limits::{Limit, LimitSet};
use super::metrics::RateLimitMetrics;
use crate::config::{EnvoyResponseHeaders, RateLimitConfig};
use crate::error::FieldError;
use crate::ratelimit::config::MAX_LIMIT_NAME_BYTES;

mod batch;
mod buckets;
pub mod inspect;
mod shared;
mod waiting;

pub use buckets::Clock;
use buckets::{Bucket, BucketKey, Granted, KeyRef, Map, Queue, Shard};
use waiting::{WaitGuard, enqueue};

const SHARDS: usize = 64;
/// Named when a key or client is longer than allowed.
const MAX_KEY_SETTING: &str = "ratelimit.max_key_bytes";
/// A full table re-sweeps a shard at most this often when new keys keep coming.
const RESWEEP_NS: u64 = 10_000_000;

/// Settings that a reload may change without touching the buckets.
#[derive(Debug, Clone)]
struct Settings {
    envoy_response_headers: EnvoyResponseHeaders,
    max_waiters: usize,
    max_key_bytes: usize,
    max_batch: usize,
}

impl Settings {
    fn from(config: &RateLimitConfig) -> Self {
        Self {
            envoy_response_headers: config.envoy_response_headers,
            max_waiters: usize::try_from(config.max_waiters).unwrap_or(usize::MAX),
            max_key_bytes: usize::try_from(config.max_key_bytes).unwrap_or(usize::MAX),
            max_batch: usize::try_from(config.max_batch).unwrap_or(usize::MAX),
        }
    }
}

/// Everything a reload replaces, swapped as one so a decision reads it with
/// a single atomic load.
struct State {
    limits: Arc<LimitSet>,
    settings: Settings,
    envoy: Arc<EnvoyRules>,
}

impl State {
    fn new(limits: LimitSet, config: &RateLimitConfig, metrics: &RateLimitMetrics) -> Self {
        Self {
            limits: Arc::new(limits),
            settings: Settings::from(config),
            envoy: Arc::new(EnvoyRules::from_config(config, metrics)),
        }
    }
}

struct Inner {
    state: ArcSwap<State>,
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    buckets: AtomicUsize,
    max_buckets: usize,
    clock: Clock,
    next_waiter: AtomicU64,
    next_limit_id: Mutex<u32>,
    metrics: RateLimitMetrics,
    /// After an unclean stop: how long before this limiter's clock started
    /// the previous run was last alive; every bucket counts as emptied then.
    /// `u64::MAX`: no such assumption (buckets start full).
    spent_before_start_ns: AtomicU64,
    /// Buckets kept in Redis instead of the table (`storage.backend = "redis"`).
    shared: Option<shared::Shared>,
}

/// One acquisition as the domain sees it (the gRPC adapter fills it in).
#[derive(Debug, Clone, Copy, Default)]
pub struct AcquireRequest<'a> {
    pub limit: &'a str,
    pub key: &'a str,
    /// 0 means 1.
    pub tokens: u64,
    /// Zero: decide now.
    pub max_wait: Duration,
    pub dry_run: bool,
    pub client: &'a str,
    /// Explicit bucket parameters (Envoy's descriptor `limit` override); the
    /// key must then come from `limits::key_with_params`.
    pub params: Option<Params>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    pub allowed: bool,
    pub remaining: u64,
    pub retry_after: Duration,
    pub reset_after: Duration,
    pub limit: u64,
    pub waited: Duration,
}

impl From<Decision> for Outcome {
    fn from(d: Decision) -> Self {
        Outcome {
            allowed: d.allowed,
            remaining: d.remaining,
            retry_after: Duration::from_nanos(d.retry_after_ns),
            reset_after: Duration::from_nanos(d.reset_after_ns),
            limit: d.limit,
            waited: Duration::ZERO,
        }
    }
}

/// A bucket saved across a restart: how long until it would be full again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedBucket {
    pub limit: String,
    pub key: String,
    pub deficit: Duration,
}

enum Enqueued {
    Decided(Outcome),
    Waiting {
        id: u64,
        rx: oneshot::Receiver<Granted>,
        /// The immediate denial, kept for a wait that ends without a grant.
        outcome: Outcome,
    },
}

/// A validated request, resolved to its limit and bucket.
struct Prepared<'a> {
    limit: &'a Limit,
    params: Params,
    key: KeyRef<'a>,
    tokens: u64,
}

#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig, metrics: RateLimitMetrics) -> Self {
        Self::build(config, metrics, None)
    }

    /// A limiter whose buckets live in Redis, shared by every replica.
    pub fn shared(
        config: &RateLimitConfig,
        metrics: RateLimitMetrics,
        buckets: crate::ratelimit::redis_gcra::RedisBuckets,
    ) -> Self {
        Self::build(
            config,
            metrics,
            Some(shared::Shared::new(buckets, config.store_failure)),
        )
    }

    fn build(
        config: &RateLimitConfig,
        metrics: RateLimitMetrics,
        shared: Option<shared::Shared>,
    ) -> Self {
        let mut next_id = 0;
        let limits = LimitSet::build(config, None, &mut next_id, &metrics);
        let hasher = foldhash::fast::RandomState::default();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: Map::default(),
                    last_sweep_ns: 0,
                })
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                state: ArcSwap::from_pointee(State::new(limits, config, &metrics)),
                shards,
                hasher,
                buckets: AtomicUsize::new(0),
                max_buckets: usize::try_from(config.max_buckets).unwrap_or(usize::MAX),
                clock: Clock::default(),
                next_waiter: AtomicU64::new(1),
                next_limit_id: Mutex::new(next_id),
                metrics,
                spent_before_start_ns: AtomicU64::new(u64::MAX),
                shared,
            }),
        }
    }

    /// The limits in force now.
    pub fn limits(&self) -> Arc<LimitSet> {
        self.inner.state.load().limits.clone()
    }

    /// The Envoy descriptor rules in force now.
    pub fn envoy_rules(&self) -> Arc<EnvoyRules> {
        self.inner.state.load().envoy.clone()
    }

    /// Which rate-limit headers Envoy answers carry.
    pub fn envoy_response_headers(&self) -> EnvoyResponseHeaders {
        self.inner.state.load().settings.envoy_response_headers
    }

    pub fn max_batch(&self) -> usize {
        self.inner.state.load().settings.max_batch
    }

    /// Buckets held in memory now.
    pub fn bucket_count(&self) -> usize {
        self.inner.buckets.load(Ordering::Relaxed)
    }

    /// Decides now, never waiting (`max_wait` is ignored).
    pub fn try_acquire(&self, req: &AcquireRequest<'_>) -> Result<Outcome, RateLimitError> {
        let state = self.inner.state.load();
        let prepared = self.inner.prepare(&state, req, None)?;
        let now = self.inner.clock.now_ns();
        let mut shard = self.inner.lock(prepared.key);
        let outcome = self
            .inner
            .decide_now(&mut shard, &prepared, now, req.dry_run)?;
        drop(shard);
        self.inner.count(
            prepared.limit,
            req.key,
            &outcome,
            prepared.tokens,
            req.dry_run,
        );
        Ok(outcome)
    }

    /// Decides now, or waits in the bucket's fair queue up to `max_wait`.
    pub async fn acquire(&self, req: &AcquireRequest<'_>) -> Result<Outcome, RateLimitError> {
        if req.max_wait.is_zero() || req.dry_run {
            return self.acquire_now(req).await;
        }
        if let Some(shared) = &self.inner.shared {
            return self.acquire_shared_waiting(shared, req).await;
        }
        let state = self.inner.state.load_full();
        let set = &*state.limits;
        let prepared = self.inner.prepare(&state, req, None)?;
        let started = tokio::time::Instant::now();
        let (id, rx, outcome) = match enqueue(&self.inner, &prepared, req.client)? {
            Enqueued::Decided(outcome) => {
                self.inner
                    .count(prepared.limit, req.key, &outcome, prepared.tokens, false);
                return Ok(outcome);
            }
            Enqueued::Waiting { id, rx, outcome } => (id, rx, outcome),
        };

        let mut guard = WaitGuard {
            inner: self.inner.clone(),
            key: prepared.key.owned(),
            id,
            rx: Some(rx),
            limit: set
                .by_id(prepared.key.limit)
                .cloned()
                .ok_or_else(|| RateLimitError::Internal("limit vanished".into()))?,
            tokens: prepared.tokens,
        };
        let deadline = started + req.max_wait;
        let granted = match guard.rx.as_mut() {
            Some(rx) => tokio::time::timeout_at(deadline, rx).await,
            None => {
                return Err(RateLimitError::Internal(
                    "wait guard without receiver".into(),
                ));
            }
        };
        let waited = started.elapsed();
        let result = match granted {
            Ok(Ok(Granted(decision))) => {
                guard.rx = None;
                let mut outcome = Outcome::from(decision);
                outcome.waited = waited;
                outcome
            }
            // The limit was removed by a reload while waiting.
            Ok(Err(_)) => {
                guard.rx = None;
                Outcome { waited, ..outcome }
            }
            Err(_) => match guard.leave() {
                // Granted at the last moment: the tokens are ours.
                Some(Granted(decision)) => Outcome {
                    waited,
                    ..Outcome::from(decision)
                },
                None => {
                    let mut denied = self.inner.denied_now(&prepared);
                    denied.waited = waited;
                    denied
                }
            },
        };
        prepared
            .limit
            .counters
            .wait_seconds
            .observe(waited.as_secs_f64());
        self.inner
            .count(prepared.limit, req.key, &result, prepared.tokens, false);
        Ok(result)
    }

    /// Returns tokens to a bucket (Envoy's `is_negative_hits`). A missing
    /// bucket is full already, so there is nothing to return.
    pub fn give_back(&self, req: &AcquireRequest<'_>) -> Result<Outcome, RateLimitError> {
        let state = self.inner.state.load();
        let prepared = self.inner.prepare(&state, req, None)?;
        let now = self.inner.clock.now_ns();
        let mut shard = self.inner.lock(prepared.key);
        if let Some(bucket) = shard.map.get_mut(&prepared.key) {
            bucket.state.refund(&prepared.params, now, prepared.tokens);
        }
        drop(shard);
        let mut outcome = self.try_acquire(&AcquireRequest {
            dry_run: true,
            ..*req
        })?;
        outcome.allowed = true;
        Ok(outcome)
    }

    /// Decides several acquisitions; see `AcquireBatchRequest` in the proto.
    /// Every request is validated before anything is consumed, so an invalid
    /// one fails the whole call with nothing taken.
    pub fn acquire_batch(
        &self,
        reqs: &[AcquireRequest<'_>],
        all_or_nothing: bool,
    ) -> Result<Vec<Outcome>, RateLimitError> {
        self.check_batch_size(reqs.len())?;
        let state = self.inner.state.load();
        let prepared = reqs
            .iter()
            .enumerate()
            .map(|(i, r)| self.inner.prepare(&state, r, Some(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let outcomes = if all_or_nothing {
            let dry_run = reqs.iter().all(|r| r.dry_run);
            self.inner.batch_atomic(&prepared, dry_run)?
        } else {
            let now = self.inner.clock.now_ns();
            let mut out = Vec::with_capacity(prepared.len());
            for (p, r) in prepared.iter().zip(reqs) {
                let mut shard = self.inner.lock(p.key);
                out.push(self.inner.decide_now(&mut shard, p, now, r.dry_run)?);
            }
            out
        };
        self.inner.count_batch(&prepared, reqs, &outcomes);
        Ok(outcomes)
    }

    /// Refuses a batch over `ratelimit.max_batch` before anything is looked at.
    fn check_batch_size(&self, len: usize) -> Result<(), RateLimitError> {
        let max = self.max_batch();
        if len > max {
            return Err(FieldError::new(
                "requests",
                format!("{len} requests exceed the batch limit of {max} (ratelimit.max_batch)"),
            )
            .into());
        }
        Ok(())
    }

    /// Applies new limits. Buckets of limits that stay keep their level
    /// (capped at a smaller burst); buckets of removed limits are dropped and
    /// their waiters answered `allowed = false`.
    pub fn reload(&self, config: &RateLimitConfig) {
        let inner = &self.inner;
        let old_state = inner.state.load_full();
        let old = old_state.limits.clone();
        let new = {
            let mut next_id = inner.next_limit_id.lock();
            LimitSet::build(config, Some(&old), &mut next_id, &inner.metrics)
        };
        let state = Arc::new(State::new(new, config, &inner.metrics));
        let kept: std::collections::HashSet<_> = state.envoy.labels().collect();
        for labels in old_state.envoy.labels() {
            if !kept.contains(&labels) {
                inner.metrics.forget_rule(&labels);
            }
        }
        let new = state.limits.clone();
        inner.state.store(state);
        let now = inner.clock.now_ns();
        let mut removed = 0usize;
        for shard in inner.shards.iter() {
            let mut shard = shard.lock();
            shard.map.retain(|key, bucket| {
                match (old.by_id(key.limit), new.by_id(key.limit)) {
                    (Some(o), Some(n)) => {
                        let (po, pn) = (o.params_for(&key.key), n.params_for(&key.key));
                        bucket.state.rescale(&po, &pn, now);
                        if let Some(queue) = &bucket.queue {
                            // The head's wait may be shorter or longer now.
                            queue.wake.notify_one();
                        }
                        true
                    }
                    (old_limit, None) => {
                        if let (Some(q), Some(o)) = (bucket.queue.take(), old_limit) {
                            o.counters.waiting.dec_by(q.waiters.len() as i64);
                        }
                        removed += 1;
                        false
                    }
                    (None, Some(_)) => true,
                }
            });
        }
        inner.buckets.fetch_sub(removed, Ordering::Relaxed);
        for limit in old.sorted() {
            if new.by_name(&limit.name).is_none() {
                inner.metrics.forget(&limit.name);
            }
        }
    }

    /// Drops idle full buckets (a full bucket is the same as no bucket) and
    /// refreshes the bucket gauges. Returns how many were dropped.
    pub fn sweep(&self) -> usize {
        let inner = &self.inner;
        let state = inner.state.load();
        let set = &*state.limits;
        let now = inner.clock.now_ns();
        let mut per_limit: std::collections::HashMap<u32, i64> = Default::default();
        let mut dropped = 0;
        for shard in inner.shards.iter() {
            let mut shard = shard.lock();
            dropped += sweep_shard(&mut shard, set, now);
            for key in shard.map.keys() {
                *per_limit.entry(key.limit).or_default() += 1;
            }
        }
        inner.buckets.fetch_sub(dropped, Ordering::Relaxed);
        for limit in set.sorted() {
            limit
                .counters
                .buckets
                .set(per_limit.get(&limit.id).copied().unwrap_or(0));
        }
        inner
            .metrics
            .buckets_total
            .set(i64::try_from(self.bucket_count()).unwrap_or(i64::MAX));
        dropped
    }

    /// Every non-full bucket, for saving across a restart.
    pub fn snapshot(&self) -> Vec<SavedBucket> {
        let state = self.inner.state.load();
        let set = &*state.limits;
        let now = self.inner.clock.now_ns();
        let mut saved = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = shard.lock();
            for (key, bucket) in shard.map.iter() {
                let deficit = bucket.state.deficit_ns(now);
                if deficit == 0 {
                    continue;
                }
                if let Some(limit) = set.by_id(key.limit) {
                    saved.push(SavedBucket {
                        limit: limit.name.clone(),
                        key: key.key.to_string(),
                        deficit: Duration::from_nanos(deficit),
                    });
                }
            }
        }
        saved
    }

    /// Takes every bucket as emptied `ago` (the previous run's last sign of
    /// life before an unclean stop): a bucket made from now on starts with
    /// what it refilled since, instead of a full burst.
    pub fn assume_spent(&self, ago: Duration) {
        let ago = u64::try_from(ago.as_nanos()).unwrap_or(u64::MAX - 1);
        let since_start = self.inner.clock.now_ns();
        self.inner.spent_before_start_ns.store(
            ago.saturating_sub(since_start).min(u64::MAX - 1),
            Ordering::Relaxed,
        );
    }

    /// Restores saved buckets, counting `downtime` as refill time. Buckets of
    /// limits no longer configured, or already full again, are skipped.
    pub fn restore(&self, saved: &[SavedBucket], downtime: Duration) -> usize {
        let state = self.inner.state.load();
        let set = &*state.limits;
        let now = self.inner.clock.now_ns();
        let mut restored = 0;
        for bucket in saved {
            let Some(limit) = set.by_name(&bucket.limit) else {
                continue;
            };
            let Some(left) = bucket
                .deficit
                .checked_sub(downtime)
                .filter(|d| !d.is_zero())
            else {
                continue;
            };
            if self.inner.buckets.load(Ordering::Relaxed) >= self.inner.max_buckets {
                break;
            }
            let key = self.inner.key_ref(limit.id, &bucket.key);
            let params = limit.params_for(&bucket.key);
            // Never restore more deficit than an empty bucket has.
            let max_deficit =
                u128::from(params.burst) * u128::from(params.period_ns) / u128::from(params.rate);
            let left_ns = u64::try_from(left.as_nanos().min(max_deficit)).unwrap_or(u64::MAX);
            let mut shard = self.inner.lock(key);
            if shard.map.get(&key).is_none() {
                self.inner.buckets.fetch_add(1, Ordering::Relaxed);
            }
            shard.map.insert(
                key,
                Bucket {
                    state: BucketState::with_deficit(now, left_ns),
                    queue: None,
                },
            );
            restored += 1;
        }
        restored
    }
}

fn sweep_shard(shard: &mut Shard, set: &LimitSet, now: u64) -> usize {
    let before = shard.map.len();
    shard.map.retain(|key, bucket| {
        bucket.queue.is_some() || (set.by_id(key.limit).is_some() && !bucket.state.is_full(now))
    });
    shard.last_sweep_ns = now;
    before - shard.map.len()
}

impl Inner {
    fn key_ref<'a>(&self, limit: u32, key: &'a str) -> KeyRef<'a> {
        KeyRef {
            limit,
            key,
            hash: self.hasher.hash_one((limit, key)),
        }
    }

    fn shard_of(&self, key: KeyRef<'_>) -> usize {
        // The shard's table uses the top 7 bits (control bytes) and the low
        // bits (position) of the same hash: picking the shard from bits
        // 50..56 leaves both with full entropy.
        ((key.hash >> 50) as usize) % SHARDS
    }

    fn lock(&self, key: KeyRef<'_>) -> MutexGuard<'_, Shard> {
        self.shards[self.shard_of(key)].lock()
    }

    /// Validates a request and resolves its limit and bucket. `item`: its
    /// index in a batch, named in errors (formatted only when there is one).
    fn prepare<'a>(
        &self,
        state: &'a State,
        req: &AcquireRequest<'a>,
        item: Option<usize>,
    ) -> Result<Prepared<'a>, RateLimitError> {
        let set = &*state.limits;
        let field = |name: &str| match item {
            Some(i) => format!("requests[{i}].{name}"),
            None => name.to_string(),
        };
        let settings = &state.settings;
        // Bounded before the name is looked up, or echoed in a NOT_FOUND.
        // The field's name (`requests[i].limit`) is built only for an error:
        // a batch of 100 must not format 100 strings to say nothing is wrong.
        if req.limit.is_empty() || req.limit.len() > MAX_LIMIT_NAME_BYTES {
            let name = field("limit");
            FieldError::check_text(&name, req.limit, MAX_LIMIT_NAME_BYTES, "limit names")?;
        }
        let limit = set
            .resolve(req.limit)
            .ok_or_else(|| RateLimitError::UnknownLimit(req.limit.to_string()))?;
        if req.key.is_empty() {
            return Err(FieldError::empty(field("key")).into());
        }
        let max_key = settings.max_key_bytes;
        if req.key.len() > max_key {
            let e = FieldError::too_long(field("key"), req.key.len(), max_key, MAX_KEY_SETTING);
            return Err(e.into());
        }
        if req.client.len() > max_key {
            let e =
                FieldError::too_long(field("client"), req.client.len(), max_key, MAX_KEY_SETTING);
            return Err(e.into());
        }
        if req.params.is_none() && req.key.contains(super::limits::OVERRIDE_MARK) {
            return Err(FieldError::new(
                field("key"),
                "must not contain the control character U+001E",
            )
            .into());
        }
        let bucket_key = limit.bucket_key(req.key);
        // Without explicit parameters the key was just checked to carry none.
        let params = req
            .params
            .unwrap_or_else(|| limit.params_for_plain_key(bucket_key));
        let tokens = req.tokens.max(1);
        if tokens > params.burst {
            return Err(FieldError::new(
                field("tokens"),
                format!(
                    "{tokens} exceeds the burst of {} of limit {:?}; it could never be granted",
                    params.burst, limit.name
                ),
            )
            .into());
        }
        Ok(Prepared {
            limit,
            params,
            key: self.key_ref(limit.id, bucket_key),
            tokens,
        })
    }

    /// One immediate decision under the shard lock. A bucket with waiters
    /// refuses newcomers: its tokens belong to the queue.
    fn decide_now(
        &self,
        shard: &mut Shard,
        p: &Prepared<'_>,
        now: u64,
        dry_run: bool,
    ) -> Result<Outcome, RateLimitError> {
        if let Some(bucket) = shard.map.get_mut(&p.key) {
            if let Some(queue) = bucket.queue.as_ref().filter(|q| !q.waiters.is_empty()) {
                let ahead = queue.waiters.tokens_waiting();
                let mut d = bucket.state.decide(&p.params, now, p.tokens, false);
                let behind_queue =
                    bucket
                        .state
                        .decide(&p.params, now, p.tokens.saturating_add(ahead), false);
                d.allowed = false;
                d.retry_after_ns = behind_queue.retry_after_ns.max(1);
                return Ok(d.into());
            }
            return Ok(bucket
                .state
                .decide(&p.params, now, p.tokens, !dry_run)
                .into());
        }
        // No bucket is a full bucket (or, after an unclean stop, an emptied one).
        let mut state = self.fresh_state(&p.params);
        let decision = state.decide(&p.params, now, p.tokens, !dry_run);
        if !dry_run {
            self.insert_new(shard, p, state, now)?;
        }
        Ok(decision.into())
    }

    /// The state of a bucket that does not exist yet: full, unless the
    /// previous run stopped uncleanly (see [`RateLimiter::assume_spent`]).
    fn fresh_state(&self, params: &Params) -> BucketState {
        let before_start = self.spent_before_start_ns.load(Ordering::Relaxed);
        if before_start == u64::MAX {
            return BucketState::default();
        }
        // Empty at -before_start on this clock: full at full_ns - before_start.
        BucketState::with_deficit(0, params.full_ns().saturating_sub(before_start))
    }

    /// Adds a bucket, enforcing `max_buckets`: sweeps this shard first, and
    /// refuses rather than evicting a bucket that still owes tokens.
    fn insert_new(
        &self,
        shard: &mut Shard,
        p: &Prepared<'_>,
        state: BucketState,
        now: u64,
    ) -> Result<(), RateLimitError> {
        if self.buckets.load(Ordering::Relaxed) >= self.max_buckets {
            if now.saturating_sub(shard.last_sweep_ns) >= RESWEEP_NS {
                let state = self.state.load();
                let set = &*state.limits;
                let dropped = sweep_shard(shard, set, now);
                self.buckets.fetch_sub(dropped, Ordering::Relaxed);
            }
            if self.buckets.load(Ordering::Relaxed) >= self.max_buckets {
                p.limit.counters.table_full.inc();
                return Err(RateLimitError::TableFull {
                    limit: p.limit.name.clone(),
                    max: self.max_buckets,
                });
            }
        }
        self.buckets.fetch_add(1, Ordering::Relaxed);
        shard.map.insert(p.key, Bucket { state, queue: None });
        Ok(())
    }

    /// What a waiter whose time ran out is told.
    fn denied_now(&self, p: &Prepared<'_>) -> Outcome {
        let now = self.clock.now_ns();
        let mut shard = self.lock(p.key);
        let mut outcome = self
            .decide_now(&mut shard, p, now, true)
            .unwrap_or_default();
        outcome.allowed = false;
        if outcome.retry_after.is_zero() {
            outcome.retry_after = Duration::from_nanos(p.params.token_interval_ns());
        }
        outcome
    }

    /// Counts a batch's decisions (on either backend); a denied item's
    /// tokens were not granted, and a dry run grants none.
    fn count_batch(
        &self,
        prepared: &[Prepared<'_>],
        reqs: &[AcquireRequest<'_>],
        outcomes: &[Outcome],
    ) {
        for ((p, r), outcome) in prepared.iter().zip(reqs).zip(outcomes) {
            self.count(
                p.limit,
                r.key,
                outcome,
                p.tokens,
                r.dry_run || !outcome.allowed,
            );
        }
    }

    fn count(&self, limit: &Limit, key: &str, outcome: &Outcome, tokens: u64, no_tokens: bool) {
        if outcome.allowed {
            limit.counters.allowed.inc();
            if !no_tokens {
                limit.counters.tokens_granted.inc_by(tokens);
            }
        } else {
            limit.counters.denied.inc();
            // The caller's key, without the parameters an Envoy override appends.
            let shown = key
                .split(super::limits::OVERRIDE_MARK)
                .next()
                .unwrap_or(key);
            limit.counters.denied_keys.record(shown);
        }
    }
}
