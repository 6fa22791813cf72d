//! Immediate decisions, coalesced on [`crate::lanes`]: the answers leave the
//! server in groups — about 0.15 write system calls per call instead of 0.66
//! (strace, 64 calls in flight). A full lane never refuses: the caller then
//! decides in place.

use crate::lanes::Lanes;

use super::{AcquireRequest, Outcome, RateLimitError, RateLimiter};

/// An acquisition with owned strings, so it can travel to a decision task.
#[derive(Debug, Clone, Default)]
pub struct OwnedAcquire {
    pub limit: String,
    pub key: String,
    pub tokens: u64,
    pub dry_run: bool,
    pub client: String,
}

impl OwnedAcquire {
    fn borrowed(&self) -> AcquireRequest<'_> {
        AcquireRequest {
            limit: &self.limit,
            key: &self.key,
            tokens: self.tokens,
            dry_run: self.dry_run,
            client: &self.client,
            ..Default::default()
        }
    }
}

/// The rate limiter on lanes.
#[derive(Clone)]
pub struct Coalescer {
    limiter: RateLimiter,
    lanes: Lanes,
}

impl Coalescer {
    pub fn new(limiter: RateLimiter, lanes: Lanes) -> Self {
        Self { limiter, lanes }
    }

    /// Decides now (never waits for tokens), on a lane.
    pub async fn decide(&self, request: OwnedAcquire) -> Result<Outcome, RateLimitError> {
        let limiter = self.limiter.clone();
        self.lanes
            .run(move || limiter.try_acquire(&request.borrowed()))
            .await
            .unwrap_or_else(|_| Err(stopped()))
    }

    /// Runs other rate-limit work (a whole batch) on the same lanes.
    pub async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce(&RateLimiter) -> R + Send + 'static,
    ) -> Result<R, RateLimitError> {
        let limiter = self.limiter.clone();
        self.lanes
            .run(move || work(&limiter))
            .await
            .map_err(|_| stopped())
    }
}

fn stopped() -> RateLimitError {
    RateLimitError::Internal("decision task stopped".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HumanDuration, LimitConfig, LimitScopeConfig, RateLimitConfig};
    use crate::ratelimit::metrics::RateLimitMetrics;

    fn limiter(burst: u64) -> RateLimiter {
        RateLimiter::new(
            &RateLimitConfig {
                limits: vec![LimitConfig {
                    name: "api".into(),
                    rate: 1,
                    period: HumanDuration::from_secs(3600),
                    burst: Some(burst),
                    scope: LimitScopeConfig::PerKey,
                    overrides: vec![],
                }],
                ..Default::default()
            },
            RateLimitMetrics::default(),
        )
    }

    fn request(key: &str) -> OwnedAcquire {
        OwnedAcquire {
            limit: "api".into(),
            key: key.into(),
            tokens: 1,
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn coalesced_callers_get_exactly_the_burst() {
        // Depth 1 forces some callers onto the in-place path as well.
        for depth in [1, 1024] {
            let coalescer = Coalescer::new(limiter(100), Lanes::spawn(2, depth));
            let mut tasks = Vec::new();
            for _ in 0..32 {
                let coalescer = coalescer.clone();
                tasks.push(tokio::spawn(async move {
                    let mut granted = 0;
                    for _ in 0..10 {
                        if coalescer.decide(request("hot")).await.unwrap().allowed {
                            granted += 1;
                        }
                    }
                    granted
                }));
            }
            let mut total = 0;
            for task in tasks {
                total += task.await.unwrap();
            }
            assert_eq!(total, 100, "depth {depth}");
        }
    }

    #[tokio::test]
    async fn errors_come_back_to_the_caller() {
        let coalescer = Coalescer::new(limiter(1), Lanes::spawn(1, 16));
        let err = coalescer
            .decide(OwnedAcquire {
                limit: "nope".into(),
                ..request("k")
            })
            .await
            .unwrap_err();
        assert_eq!(err, RateLimitError::UnknownLimit("nope".into()));
    }
}
