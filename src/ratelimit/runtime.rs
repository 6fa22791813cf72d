//! The rate limiter as the server runs it: buckets restored from the store,
//! `gantry.v1.RateLimiter` and Envoy's rate-limit service (with their direct
//! calls), idle full buckets swept and levels saved periodically and at stop.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    self as envoy_server, RateLimitServiceServer,
};

use super::RateLimiter;
use super::coalesce::Coalescer;
use super::envoy::{DirectShouldRateLimit, EnvoyRateLimitService};
use super::metrics::RateLimitMetrics;
use super::persist::{self, LastStop};
use super::redis_gcra::RedisBuckets;
use super::service::{DirectAcquire, DirectAcquireBatch, RateLimiterService};
use crate::config::{RateLimitConfig, UncleanRestart};
use crate::proto::gantry::v1::rate_limiter_server::{self, RateLimiterServer};
use crate::routes::{Served, grpc_service};
use crate::runtime::{Capability, Context, StartError, blocking};
use crate::store::redis::RedisStore;
use crate::store::{Domain, Store};

/// How often the rate limiter records that gantry is alive: after an unclean
/// stop, buckets count as emptied at the last record.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Envoy's rate-limit service, served beside gantry's own.
pub const ENVOY_RLS: &str = envoy_server::SERVICE_NAME;

#[derive(Clone)]
pub struct Runtime {
    limiter: RateLimiter,
    store: Arc<dyn Store>,
}

impl Runtime {
    /// Builds the limiter, restores saved bucket levels, and starts the
    /// sweep and the periodic save.
    pub async fn start(
        config: &RateLimitConfig,
        ctx: &mut Context<'_>,
    ) -> Result<Capability, StartError> {
        let metrics = RateLimitMetrics::register(ctx.registry);
        if let Some(redis) = ctx.redis.clone() {
            return Ok(Self::start_shared(config, ctx, metrics, redis));
        }
        let runtime = Self {
            limiter: RateLimiter::new(config, metrics),
            store: ctx.store.clone(),
        };
        runtime.restore(config.unclean_restart).await;
        let beating = runtime.clone();
        ctx.background
            .save_every(HEARTBEAT, "the rate-limit heartbeat", move || {
                let beating = beating.clone();
                async move { beating.heartbeat().await.map(|()| 1) }
            });

        let limiter = runtime.limiter.clone();
        ctx.background.every_off_the_workers(
            config.sweep_interval.get(),
            "swept full rate-limit buckets",
            move || limiter.sweep(),
        );
        let saver = runtime.clone();
        ctx.background.save_every(
            config.persist_interval.get(),
            "rate-limit buckets",
            move || {
                let saver = saver.clone();
                async move { saver.save().await }
            },
        );

        let coalescer = ctx
            .lanes(config.coalesce)
            .map(|lanes| Coalescer::new(runtime.limiter.clone(), lanes));
        let service = Arc::new(RateLimiterService::new(runtime.limiter.clone(), coalescer));
        let served = Self::served(&runtime.limiter, service.clone(), ctx);
        let status = super::status::source(service, runtime.limiter.clone());
        let reloaded = runtime.limiter.clone();
        Ok(Capability::new(
            "ratelimit",
            served,
            Box::pin(async move {
                // Bucket levels survive the restart, so clients get no fresh
                // burst; only a saved snapshot counts as a clean stop.
                match runtime.save().await {
                    Ok(_) => {
                        if let Err(e) = runtime.mark_clean_stop().await {
                            tracing::error!(error = %e, "recording the clean stop failed; the next start will treat buckets as spent");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "saving rate-limit buckets at shutdown failed")
                    }
                }
            }),
        )
        .reloads(Box::new(move |config| reloaded.reload(&config.ratelimit)))
        .status(status))
    }

    /// Buckets in Redis (`storage.backend = "redis"`): nothing to restore,
    /// sweep or save — Redis keeps them and expires full ones. Direct calls
    /// answer when Redis replies, without tonic's per-call machinery.
    fn start_shared(
        config: &RateLimitConfig,
        ctx: &mut Context<'_>,
        metrics: RateLimitMetrics,
        redis: RedisStore,
    ) -> Capability {
        let limiter = RateLimiter::shared(config, metrics, RedisBuckets::start(redis));
        // No coalescing lanes: a decision waits for Redis, and the buckets'
        // own lanes gather the round trips (src/ratelimit/redis_gcra.rs).
        let service = Arc::new(RateLimiterService::new(limiter.clone(), None));
        let served = Self::served(&limiter, service.clone(), ctx);
        let status = super::status::source(service, limiter.clone());
        Capability::new("ratelimit", served, Box::pin(async {}))
            .reloads(Box::new(move |config| limiter.reload(&config.ratelimit)))
            .needs_redis(true)
            .status(status)
    }

    /// gantry.v1.RateLimiter and Envoy's service, with their direct calls.
    fn served(
        limiter: &RateLimiter,
        service: Arc<RateLimiterService>,
        ctx: &mut Context<'_>,
    ) -> Served {
        let limit = ctx.max_message_bytes();
        let gantry = rate_limiter_server::SERVICE_NAME;
        let mut served = Served::default()
            .service(grpc_service!(
                RateLimiterServer::from_arc(service),
                limit,
                "server.max_message_bytes"
            ))
            .service(grpc_service!(
                RateLimitServiceServer::new(EnvoyRateLimitService::new(limiter.clone())),
                limit,
                "server.max_message_bytes"
            ))
            .inline(gantry, &["Acquire", "AcquireBatch"])
            .inline(ENVOY_RLS, &["ShouldRateLimit"]);
        if ctx.direct_calls() {
            served = served
                .direct(
                    gantry,
                    "Acquire",
                    Arc::new(DirectAcquire::new(limiter.clone())),
                )
                .direct(
                    gantry,
                    "AcquireBatch",
                    Arc::new(DirectAcquireBatch::new(limiter.clone(), limit)),
                )
                .direct(
                    ENVOY_RLS,
                    "ShouldRateLimit",
                    Arc::new(DirectShouldRateLimit::new(limiter.clone(), limit)),
                );
        }
        served
    }

    /// Restores bucket levels as the previous run left them: the snapshot
    /// after a clean stop; after an unclean one (by default) every bucket
    /// emptied at the last heartbeat. Then records this run's first heartbeat.
    async fn restore(&self, unclean: UncleanRestart) {
        let store = self.store.clone();
        let last = blocking("reading how the last run stopped", move || {
            persist::last_stop(&*store.tree(Domain::RateLimit))
        })
        .await;
        match last {
            Ok(LastStop::Unclean { alive_at }) if unclean == UncleanRestart::Spent => {
                let ago = SystemTime::now()
                    .duration_since(alive_at)
                    .unwrap_or(Duration::ZERO);
                self.limiter.assume_spent(ago);
                tracing::warn!(
                    last_alive_ms_ago = ago.as_millis() as u64,
                    "the last run did not stop cleanly: every rate-limit bucket counts as emptied at its last heartbeat (ratelimit.unclean_restart = \"spent\")"
                );
            }
            Ok(_) => self.restore_snapshot().await,
            Err(e) => {
                // Unknown: the conservative choice, as after a crash just now.
                self.limiter.assume_spent(Duration::ZERO);
                tracing::error!(error = %e, "cannot read how the last run stopped; every rate-limit bucket counts as emptied now");
            }
        }
        if let Err(e) = self.heartbeat().await {
            tracing::warn!(error = %e, "recording the rate-limit heartbeat failed");
        }
    }

    async fn restore_snapshot(&self) {
        let store = self.store.clone();
        let loaded = blocking("restoring rate-limit buckets", move || {
            persist::load(&*store.tree(Domain::RateLimit), SystemTime::now())
        })
        .await;
        match loaded {
            Ok((saved, downtime, skipped)) => {
                let restored = self.limiter.restore(&saved, downtime);
                if !saved.is_empty() || skipped > 0 {
                    tracing::info!(
                        saved = saved.len(),
                        restored,
                        skipped,
                        downtime_ms = downtime.as_millis() as u64,
                        "rate-limit buckets restored (downtime counted as refill)"
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read saved rate-limit buckets; starting with full buckets")
            }
        }
    }

    async fn heartbeat(&self) -> Result<(), String> {
        let store = self.store.clone();
        blocking("the rate-limit heartbeat", move || {
            persist::heartbeat(&*store.tree(Domain::RateLimit), SystemTime::now())
        })
        .await
        .map_err(|e| e.to_string())
    }

    async fn mark_clean_stop(&self) -> Result<(), String> {
        let store = self.store.clone();
        blocking("recording the clean stop", move || {
            persist::mark_clean_stop(&*store.tree(Domain::RateLimit))
        })
        .await
        .map_err(|e| e.to_string())
    }

    async fn save(&self) -> Result<usize, String> {
        let snapshot = self.limiter.snapshot();
        let count = snapshot.len();
        let store = self.store.clone();
        blocking("saving rate-limit buckets", move || {
            persist::save(
                &*store.tree(Domain::RateLimit),
                &snapshot,
                SystemTime::now(),
            )
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(count)
    }
}
