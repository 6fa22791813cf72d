//! Looking at buckets without touching them — what an operator asks first
//! during an incident: how full is this key's bucket, when does its next
//! token come, who waits; and which keys of a limit are the most spent.
//! Nothing here takes a token, creates a bucket or counts as a decision.

use super::*;
use crate::ratelimit::redis_gcra::{Job, Op};

/// One bucket as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketView {
    pub key: String,
    /// Whole tokens available now.
    pub tokens: u64,
    pub burst: u64,
    /// When the next token comes; None when the bucket is full.
    pub next_token_in: Option<Duration>,
    /// When the bucket is full again (zero: it is).
    pub full_in: Duration,
    /// Callers waiting in the bucket's queue (on this replica).
    pub waiters: u64,
}

/// Most keys a hot-keys answer lists.
pub const MAX_HOT_KEYS: usize = 1_000;
/// Most Redis keys one hot-keys call looks at (SCAN), so it stays an
/// operator's query and never a load on Redis.
pub const MAX_SCANNED: usize = 100_000;
/// Peeks in flight at once while listing hot keys on Redis.
const PEEKS_AT_ONCE: usize = 1_024;

/// The view of a bucket `full_in` from full: tokens now and the next one.
pub fn view(key: &str, params: Params, full_in: Duration, waiters: u64) -> BucketView {
    let interval = u128::from(params.period_ns) / u128::from(params.rate.max(1));
    let owed = full_in.as_nanos();
    // Tokens missing, rounded up: a part-refilled token is not there yet.
    let missing = owed.div_ceil(interval.max(1));
    let tokens = u128::from(params.burst).saturating_sub(missing);
    let next = owed % interval.max(1);
    let next_token_in = (owed > 0).then(|| {
        Duration::from_nanos(
            u64::try_from(if next == 0 { interval } else { next }).unwrap_or(u64::MAX),
        )
    });
    BucketView {
        key: key.to_string(),
        tokens: u64::try_from(tokens).unwrap_or(u64::MAX),
        burst: params.burst,
        next_token_in,
        full_in,
        waiters,
    }
}

impl RateLimiter {
    /// A bucket as it is now, on whichever backend holds it.
    pub async fn inspect(&self, limit: &str, key: &str) -> Result<BucketView, RateLimitError> {
        let state = self.inner.state.load_full();
        let req = AcquireRequest {
            limit,
            key,
            dry_run: true,
            ..Default::default()
        };
        let p = self.inner.prepare(&state, &req, None)?;
        match &self.inner.shared {
            None => {
                let now = self.inner.clock.now_ns();
                let shard = self.inner.lock(p.key);
                let (full_in, waiters) = match shard.map.get(&p.key) {
                    None => (Duration::ZERO, 0),
                    Some(bucket) => {
                        let mut probe = bucket.state;
                        let d = probe.decide(&p.params, now, 1, false);
                        let waiters = bucket.queue.as_ref().map_or(0, |q| q.waiters.len());
                        (Duration::from_nanos(d.reset_after_ns), waiters as u64)
                    }
                };
                Ok(view(key, p.params, full_in, waiters))
            }
            Some(shared) => {
                let job = self.job(shared, &p, Op::Peek);
                let waiters = shared.waiting(&job.key);
                let d = shared.buckets.decide(job).await.map_err(|e| {
                    RateLimitError::StoreUnavailable {
                        limit: limit.to_string(),
                        cause: e.to_string(),
                    }
                })?;
                Ok(view(
                    key,
                    p.params,
                    Duration::from_nanos(d.reset_after_ns),
                    waiters,
                ))
            }
        }
    }

    /// The `count` most spent buckets of `limit` (longest until full first)
    /// and how many buckets were looked at. Full buckets are not kept, so
    /// every bucket found owes tokens.
    pub async fn hottest(
        &self,
        limit: &str,
        count: usize,
    ) -> Result<(Vec<BucketView>, usize), RateLimitError> {
        let state = self.inner.state.load_full();
        let Some(l) = state.limits.by_name(limit).cloned() else {
            // prepare() says what is wrong with the name.
            self.inner.prepare(
                &state,
                &AcquireRequest {
                    limit,
                    key: "-",
                    ..Default::default()
                },
                None,
            )?;
            return Ok((Vec::new(), 0));
        };
        let count = count.clamp(1, MAX_HOT_KEYS);
        let (mut views, scanned) = match &self.inner.shared {
            None => self.hottest_embedded(&l),
            Some(shared) => self.hottest_shared(shared, &l).await?,
        };
        views.sort_by(|a, b| b.full_in.cmp(&a.full_in).then_with(|| a.key.cmp(&b.key)));
        views.truncate(count);
        Ok((views, scanned))
    }

    fn hottest_embedded(&self, limit: &Limit) -> (Vec<BucketView>, usize) {
        let now = self.inner.clock.now_ns();
        let mut views = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = shard.lock();
            for entry in shard.map.table.iter() {
                if entry.key.limit != limit.id {
                    continue;
                }
                let params = limit.params_for(&entry.key.key);
                let mut probe = entry.bucket.state;
                let d = probe.decide(&params, now, 1, false);
                let waiters = entry.bucket.queue.as_ref().map_or(0, |q| q.waiters.len());
                views.push(view(
                    &entry.key.key,
                    params,
                    Duration::from_nanos(d.reset_after_ns),
                    waiters as u64,
                ));
            }
        }
        let scanned = views.len();
        (views, scanned)
    }

    async fn hottest_shared(
        &self,
        shared: &shared::Shared,
        limit: &Limit,
    ) -> Result<(Vec<BucketView>, usize), RateLimitError> {
        let store_error = |cause: String| RateLimitError::StoreUnavailable {
            limit: limit.name.clone(),
            cause,
        };
        if shared.buckets.store().is_cluster() {
            return Err(RateLimitError::NotHere(format!(
                "hot keys of limit {:?} cannot be listed on Redis Cluster (its buckets are spread over nodes this client cannot scan as one); InspectBucket answers for one key",
                limit.name
            )));
        }
        let prefix = shared.buckets.key(&limit.name, "");
        let keys = shared
            .buckets
            .store()
            .scan_prefix(&prefix, MAX_SCANNED)
            .await
            .map_err(|e| store_error(e.to_string()))?;
        // Asked side by side, so the lanes send them in pipelined round
        // trips rather than one trip per key.
        let mut views = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PEEKS_AT_ONCE) {
            let peeks = chunk.iter().filter_map(|redis_key| {
                let key = redis_key.strip_prefix(&prefix)?;
                let params = limit.params_for(key);
                let job = Job {
                    key: redis_key.clone(),
                    params,
                    tokens: 1,
                    op: Op::Peek,
                };
                Some(async move {
                    let d = shared.buckets.decide(job).await?;
                    Ok::<_, crate::store::redis::RedisStoreError>((redis_key, key, params, d))
                })
            });
            let decided = futures_util::future::try_join_all(peeks)
                .await
                .map_err(|e| store_error(e.to_string()))?;
            for (redis_key, key, params, d) in decided {
                if d.reset_after_ns > 0 {
                    let waiters = shared.waiting(redis_key);
                    views.push(view(
                        key,
                        params,
                        Duration::from_nanos(d.reset_after_ns),
                        waiters,
                    ));
                }
            }
        }
        Ok((views, keys.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_says_tokens_now_and_when_the_next_comes() {
        // 5 per 10 s: one token every 2 s.
        let p = Params {
            rate: 5,
            period_ns: 10_000_000_000,
            burst: 5,
        };
        let full = view("k", p, Duration::ZERO, 0);
        assert_eq!((full.tokens, full.next_token_in), (5, None));
        // 3 s from full: 1.5 tokens owed, so 3 whole tokens, the next in 1 s.
        let spent = view("k", p, Duration::from_secs(3), 2);
        assert_eq!(spent.tokens, 3);
        assert_eq!(spent.next_token_in, Some(Duration::from_secs(1)));
        assert_eq!(spent.waiters, 2);
        // Exactly 2 tokens owed: the next arrives in a whole interval.
        let even = view("k", p, Duration::from_secs(4), 0);
        assert_eq!(
            (even.tokens, even.next_token_in),
            (3, Some(Duration::from_secs(2)))
        );
        // Empty.
        let empty = view("k", p, Duration::from_secs(10), 0);
        assert_eq!(empty.tokens, 0);
    }
}
