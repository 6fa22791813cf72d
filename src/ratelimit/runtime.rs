//! The rate limiter as the server runs it: buckets restored from the store,
//! `gantry.v1.RateLimiter` and Envoy's rate-limit service (with their direct
//! calls), idle full buckets swept and levels saved periodically and at stop.

use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    self as envoy_server, RateLimitServiceServer,
};

use super::RateLimiter;
use super::coalesce::Coalescer;
use super::envoy::{DirectShouldRateLimit, EnvoyRateLimitService};
use super::metrics::RateLimitMetrics;
use super::persist;
use super::service::{DirectAcquire, DirectAcquireBatch, RateLimiterService};
use crate::config::RateLimitConfig;
use crate::proto::gantry::v1::rate_limiter_server::{self, RateLimiterServer};
use crate::routes::{Served, grpc_service};
use crate::runtime::{Capability, Context, StartError, blocking};
use crate::store::{Domain, Store};

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
        let runtime = Self {
            limiter: RateLimiter::new(config, metrics),
            store: ctx.store.clone(),
        };
        runtime.restore().await;

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

        let served = runtime.served(config, ctx);
        let reloaded = runtime.limiter.clone();
        Ok(Capability::new(
            "ratelimit",
            served,
            Box::pin(async move {
                // Bucket levels survive the restart, so clients get no fresh burst.
                if let Err(e) = runtime.save().await {
                    tracing::error!(error = %e, "saving rate-limit buckets at shutdown failed");
                }
            }),
        )
        .reloads(Box::new(move |config| reloaded.reload(&config.ratelimit))))
    }

    fn served(&self, config: &RateLimitConfig, ctx: &mut Context<'_>) -> Served {
        let limit = ctx.max_message_bytes();
        let coalescer = ctx
            .lanes(config.coalesce)
            .map(|lanes| Coalescer::new(self.limiter.clone(), lanes));
        let gantry = rate_limiter_server::SERVICE_NAME;
        let mut served = Served::default()
            .service(grpc_service!(
                RateLimiterServer::new(RateLimiterService::new(self.limiter.clone(), coalescer)),
                limit,
                "server.max_message_bytes"
            ))
            .service(grpc_service!(
                RateLimitServiceServer::new(EnvoyRateLimitService::new(self.limiter.clone())),
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
                    Arc::new(DirectAcquire::new(self.limiter.clone())),
                )
                .direct(
                    gantry,
                    "AcquireBatch",
                    Arc::new(DirectAcquireBatch::new(self.limiter.clone(), limit)),
                )
                .direct(
                    ENVOY_RLS,
                    "ShouldRateLimit",
                    Arc::new(DirectShouldRateLimit::new(self.limiter.clone(), limit)),
                );
        }
        served
    }

    async fn restore(&self) {
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
