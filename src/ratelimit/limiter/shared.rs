//! Decisions on buckets kept in Redis (`storage.backend = "redis"`): the same
//! validation, parameters, outcomes and metrics as the embedded table, with
//! the bucket itself decided in Redis (src/ratelimit/redis_gcra.rs).
//!
//! Waiting stays per replica: a bucket's waiters on this replica queue in
//! arrival order (a FIFO lock per bucket); only the head asks Redis, and
//! when refused it sleeps exactly the `retry_after` Redis answered, then asks
//! again. While it waits, immediate callers on this replica are refused, as
//! in the embedded table: the tokens belong to the queue.

use std::collections::HashMap;

use super::*;
use crate::config::StoreFailure;
use crate::ratelimit::redis_gcra::{Job, Op, RedisBuckets};
use crate::store::redis::RedisStoreError;

pub(super) struct Shared {
    pub(super) buckets: RedisBuckets,
    on_failure: StoreFailure,
    /// Buckets with waiters on this replica: their turn lock and how many
    /// wait for it (removed when the last leaves).
    queues: Mutex<HashMap<String, Queue>>,
}

/// A bucket's turn lock (FIFO) and how many wait for it on this replica.
type Queue = (Arc<tokio::sync::Mutex<()>>, usize);

impl Shared {
    pub(super) fn new(buckets: RedisBuckets, on_failure: StoreFailure) -> Self {
        Self {
            buckets,
            on_failure,
            queues: Mutex::default(),
        }
    }

    fn has_waiters(&self, key: &str) -> bool {
        self.queues.lock().contains_key(key)
    }

    /// How many wait for the bucket `key` on this replica.
    pub(super) fn waiting(&self, key: &str) -> u64 {
        self.queues.lock().get(key).map_or(0, |(_, n)| *n as u64)
    }
}

/// A place in a bucket's queue on this replica; leaving (also by a caller
/// that gave up, whose call is dropped) removes it.
struct QueuePlace<'a> {
    shared: &'a Shared,
    key: String,
    waiting: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.waiting.dec();
        let mut queues = self.shared.queues.lock();
        if let Some((_, waiting)) = queues.get_mut(&self.key) {
            *waiting -= 1;
            if *waiting == 0 {
                queues.remove(&self.key);
            }
        }
    }
}

impl RateLimiter {
    /// Whether buckets live in Redis (shared by every replica).
    pub fn is_shared(&self) -> bool {
        self.inner.shared.is_some()
    }

    /// Decides now, never waiting, on whichever backend holds the buckets.
    pub async fn acquire_now(&self, req: &AcquireRequest<'_>) -> Result<Outcome, RateLimitError> {
        match &self.inner.shared {
            None => self.try_acquire(req),
            Some(shared) => {
                let op = if req.dry_run { Op::Peek } else { Op::Take };
                self.shared_once(shared, req, op).await
            }
        }
    }

    /// Returns tokens (Envoy's `is_negative_hits`) on whichever backend.
    pub async fn give_back_now(&self, req: &AcquireRequest<'_>) -> Result<Outcome, RateLimitError> {
        match &self.inner.shared {
            None => self.give_back(req),
            Some(shared) => {
                let mut outcome = self.shared_once(shared, req, Op::GiveBack).await?;
                outcome.allowed = true;
                Ok(outcome)
            }
        }
    }

    /// `acquire_batch` on whichever backend holds the buckets.
    pub async fn acquire_many(
        &self,
        reqs: &[AcquireRequest<'_>],
        all_or_nothing: bool,
    ) -> Result<Vec<Outcome>, RateLimitError> {
        let Some(shared) = &self.inner.shared else {
            return self.acquire_batch(reqs, all_or_nothing);
        };
        self.check_batch_size(reqs.len())?;
        let state = self.inner.state.load_full();
        let prepared = reqs
            .iter()
            .enumerate()
            .map(|(i, r)| self.inner.prepare(&state, r, Some(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let outcomes = if all_or_nothing {
            self.shared_all(shared, &prepared, reqs.iter().all(|r| r.dry_run))
                .await
        } else {
            let decisions = prepared.iter().zip(reqs).map(|(p, r)| {
                let op = if r.dry_run { Op::Peek } else { Op::Take };
                let job = self.job(shared, p, op);
                async move { shared.buckets.decide(job).await }
            });
            futures_util::future::join_all(decisions)
                .await
                .into_iter()
                .map(|d| d.map(Outcome::from))
                .collect::<Result<Vec<_>, _>>()
        };
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            Err(e) => {
                return prepared
                    .iter()
                    .map(|p| self.store_failed(shared, p.limit, p.params, e.clone()))
                    .collect();
            }
        };
        self.inner.count_batch(&prepared, reqs, &outcomes);
        Ok(outcomes)
    }

    /// A wait in this replica's queue for the bucket (see the module comment).
    pub(super) async fn acquire_shared_waiting(
        &self,
        shared: &Shared,
        req: &AcquireRequest<'_>,
    ) -> Result<Outcome, RateLimitError> {
        let state = self.inner.state.load_full();
        let p = self.inner.prepare(&state, req, None)?;
        let job = self.job(shared, &p, Op::Take);
        let started = tokio::time::Instant::now();
        let deadline = started + req.max_wait;
        let (turn, _place) = {
            let mut queues = shared.queues.lock();
            let entry = queues
                .entry(job.key.clone())
                .or_insert_with(|| (Arc::default(), 0));
            if entry.1 >= state.settings.max_waiters {
                return Err(RateLimitError::QueueFull {
                    limit: p.limit.name.clone(),
                    key: req.key.to_string(),
                    max: state.settings.max_waiters,
                });
            }
            entry.1 += 1;
            (
                entry.0.clone(),
                QueuePlace {
                    shared,
                    key: job.key.clone(),
                    waiting: p.limit.counters.waiting.clone(),
                },
            )
        };
        p.limit.counters.waiting.inc();
        let result: Result<Outcome, RateLimitError> = async {
            let Ok(_head) = tokio::time::timeout_at(deadline, turn.lock()).await else {
                // Never reached the head: what the bucket says now, refused.
                let mut outcome = self
                    .decide_job(
                        shared,
                        &p,
                        Job {
                            op: Op::Peek,
                            ..job.clone()
                        },
                    )
                    .await?;
                outcome.allowed = false;
                return Ok(outcome);
            };
            // As in the embedded queue, a waiter stays until its tokens
            // come or its time is up (other replicas may give tokens back).
            loop {
                let outcome = self.decide_job(shared, &p, job.clone()).await?;
                let now = tokio::time::Instant::now();
                if outcome.allowed || now >= deadline {
                    return Ok(outcome);
                }
                let retry = outcome.retry_after.max(Duration::from_millis(1));
                tokio::time::sleep_until((now + retry).min(deadline)).await;
            }
        }
        .await;
        let waited = started.elapsed();
        p.limit.counters.wait_seconds.observe(waited.as_secs_f64());
        let mut outcome = result?;
        outcome.waited = waited;
        self.inner
            .count(p.limit, req.key, &outcome, p.tokens, false);
        Ok(outcome)
    }

    async fn shared_once(
        &self,
        shared: &Shared,
        req: &AcquireRequest<'_>,
        op: Op,
    ) -> Result<Outcome, RateLimitError> {
        let state = self.inner.state.load_full();
        let p = self.inner.prepare(&state, req, None)?;
        let mut job = self.job(shared, &p, op);
        // Waiters on this replica come first: a newcomer only looks.
        let queued = op == Op::Take && shared.has_waiters(&job.key);
        if queued {
            job.op = Op::Peek;
        }
        let mut outcome = self.decide_job(shared, &p, job).await?;
        if queued {
            outcome.allowed = false;
            if outcome.retry_after.is_zero() {
                outcome.retry_after = Duration::from_nanos(p.params.token_interval_ns());
            }
        }
        if op != Op::GiveBack {
            self.inner.count(
                p.limit,
                req.key,
                &outcome,
                p.tokens,
                op == Op::Peek || queued,
            );
        }
        Ok(outcome)
    }

    async fn decide_job(
        &self,
        shared: &Shared,
        p: &Prepared<'_>,
        job: Job,
    ) -> Result<Outcome, RateLimitError> {
        match shared.buckets.decide(job).await {
            Ok(decision) => Ok(decision.into()),
            Err(e) => self.store_failed(shared, p.limit, p.params, e),
        }
    }

    async fn shared_all(
        &self,
        shared: &Shared,
        prepared: &[Prepared<'_>],
        dry_run: bool,
    ) -> Result<Vec<Outcome>, RedisStoreError> {
        // A bucket named twice must hold both: one job per distinct bucket.
        let mut jobs: Vec<Job> = Vec::with_capacity(prepared.len());
        let mut item_job: Vec<usize> = Vec::with_capacity(prepared.len());
        for p in prepared {
            let key = shared.buckets.key(&p.limit.name, p.key.key);
            match jobs.iter().position(|j| j.key == key) {
                Some(i) => {
                    jobs[i].tokens = jobs[i].tokens.saturating_add(p.tokens);
                    item_job.push(i);
                }
                None => {
                    item_job.push(jobs.len());
                    jobs.push(Job {
                        key,
                        params: p.params,
                        tokens: p.tokens,
                        op: Op::Take,
                    });
                }
            }
        }
        let decisions = shared.buckets.decide_all(&jobs, dry_run).await?;
        let all_allowed = decisions.iter().all(|d| d.allowed);
        Ok(item_job
            .into_iter()
            .map(|i| {
                let mut outcome = decisions
                    .get(i)
                    .copied()
                    .map(Outcome::from)
                    .unwrap_or_default();
                outcome.allowed = all_allowed;
                if all_allowed {
                    outcome.retry_after = Duration::ZERO;
                }
                outcome
            })
            .collect())
    }

    pub(super) fn job(&self, shared: &Shared, p: &Prepared<'_>, op: Op) -> Job {
        Job {
            key: shared.buckets.key(&p.limit.name, p.key.key),
            params: p.params,
            tokens: p.tokens,
            op,
        }
    }

    /// What a decision Redis could not make becomes (`ratelimit.store_failure`).
    fn store_failed(
        &self,
        shared: &Shared,
        limit: &Limit,
        params: Params,
        error: RedisStoreError,
    ) -> Result<Outcome, RateLimitError> {
        match shared.on_failure {
            StoreFailure::Open => {
                self.inner.metrics.store_failure("allowed");
                tracing::debug!(limit = %limit.name, error = %error, "rate-limit store unreachable: allowed (ratelimit.store_failure = \"open\")");
                Ok(Outcome {
                    allowed: true,
                    limit: params.burst,
                    ..Outcome::default()
                })
            }
            StoreFailure::Closed => {
                self.inner.metrics.store_failure("unavailable");
                Err(RateLimitError::StoreUnavailable {
                    limit: limit.name.clone(),
                    cause: error.to_string(),
                })
            }
        }
    }
}
