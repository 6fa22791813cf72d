//! The cache as the server runs it: opened over the store (its entries
//! counted), `gantry.v1.Cache` served, expired entries swept, staged writes
//! drained (`periodic`). What it writes is in the store by its stop, and the
//! server flushes the store last.

use std::time::{Duration, Instant};

use super::direct;
use super::engine::run_sweeper;
use super::service::CacheService;
use super::shared::RedisCache;
use super::stats::{CacheCollector, WatchCollector};
use super::{CacheEngine, CacheError};
use crate::config::CacheConfig;
use crate::proto::gantry::v1::cache_server::{self, CacheServer};
use crate::routes::{Served, grpc_service};
use crate::runtime::{Capability, Context, StartError, blocking};
use crate::store::StoreError;
use std::sync::Arc;

pub struct Runtime;

impl Runtime {
    /// `flush_interval`: `storage.flush_interval`, within which a write
    /// answered in `periodic` durability is on disk.
    pub async fn start(
        config: &CacheConfig,
        flush_interval: Duration,
        ctx: &mut Context<'_>,
    ) -> Result<Capability, StartError> {
        let (cache_config, store) = (config.clone(), ctx.store.clone());
        let started = Instant::now();
        let cache = blocking("opening the cache", move || {
            CacheEngine::open(&cache_config, store)
        })
        .await?;
        let entries: u64 = cache
            .namespaces()
            .snapshot()
            .iter()
            .map(|(_, s)| s.entries)
            .sum();
        if entries > 0 {
            tracing::info!(
                entries,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "cache entries counted"
            );
        }
        ctx.registry
            .register_collector(Box::new(CacheCollector(cache.namespaces())));
        ctx.registry
            .register_collector(Box::new(WatchCollector(cache.clone())));
        if let Some(redis) = ctx.redis.clone() {
            // Entries in Redis, which expires them itself: no sweeper, no
            // hot tier to forget; the engine validates and fans events out.
            let shared = RedisCache::start(cache.clone(), redis, ctx.background.token());
            let service = Arc::new(CacheService::shared(cache.clone(), shared));
            let status = super::status::source(service.clone(), cache);
            let served = served(service, ctx);
            return Ok(Capability::new("cache", served, Box::pin(async {}))
                .needs_redis(true)
                .status(status));
        }

        if cache.writes_behind() {
            // Staged writes are drained and flushed every half flush interval:
            // on disk within one, as `periodic` promises.
            let draining = cache.clone();
            ctx.background.every_off_the_workers(
                (flush_interval / 2).max(Duration::from_millis(1)),
                "cache writes drained to the store",
                move || match draining.drain_and_flush() {
                    Ok(drained) => drained,
                    // Said once by the store's health when it became unwritable;
                    // staged writes wait for its recovery.
                    Err(CacheError::Store(StoreError::Unwritable { .. })) => 0,
                    Err(e) => {
                        tracing::warn!(error = %e, "writing staged cache writes to the store failed; retrying");
                        0
                    }
                },
            );
        }

        let token = ctx.background.token();
        ctx.background.spawn(run_sweeper(
            cache.clone(),
            config.sweep_interval.get(),
            usize::try_from(config.sweep_batch).unwrap_or(usize::MAX),
            token,
        ));

        // The hot tier may show writes a store that recovered from a fault
        // lost; after a recovery the store is the truth.
        let mut writable = ctx.store.health().subscribe();
        let (forgetting, stop) = (cache.clone(), ctx.background.token());
        ctx.background.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = writable.changed() => if changed.is_err() { return },
                }
                if *writable.borrow_and_update() {
                    forgetting.forget_hot();
                }
            }
        });

        let cache_for_stop = cache.clone();
        let lanes = ctx.lanes(config.coalesce);
        let service = Arc::new(CacheService::new(cache.clone(), lanes));
        let status = super::status::source(service.clone(), cache);
        let served = served(service, ctx);
        // What is still staged is written before the server's last flush.
        let stop = Box::pin(async move {
            let drained = tokio::task::spawn_blocking(move || cache_for_stop.drain()).await;
            if let Ok(Err(e)) = drained {
                tracing::error!(error = %e, "staged cache writes could not be written at shutdown");
            }
        });
        Ok(Capability::new("cache", served, stop)
            .needs_store(true)
            .status(status))
    }
}

/// `gantry.v1.Cache`, its Get, Put and Delete run in the connection's task
/// and, with gantry's transport, answered from their request bytes.
fn served(service: Arc<CacheService>, ctx: &Context<'_>) -> Served {
    let mut served = Served::default()
        .service(grpc_service!(
            CacheServer::from_arc(service.clone()),
            ctx.max_message_bytes(),
            "server.max_message_bytes"
        ))
        .inline(cache_server::SERVICE_NAME, &["Get", "Put", "Delete"]);
    if ctx.direct_calls() {
        for (method, handler) in direct::handlers(service, ctx.max_message_bytes()) {
            served = served.direct(cache_server::SERVICE_NAME, method, handler);
        }
    }
    served
}
