//! The one tonic router: every gantry service, health, reflection, limits and
//! graceful shutdown. Start-up happens in phases — `Gantry::build` opens the
//! store and binds the ports (so errors surface before anything is served and
//! tests learn the ports), `Gantry::serve` serves until the shutdown token is
//! cancelled, then drains within the grace period and flushes the store.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::cache::CacheEngine;
use crate::cache::service::CacheService;
use crate::cache::stats::CacheCollector;
use crate::config::{Config, Transport};
use crate::lanes::{Lanes, default_lanes};
use crate::leases::LeaseManager;
use crate::leases::metrics::LeaseMetrics;
use crate::leases::service::LeasesService;
use crate::proto::gantry::v1 as pb;
use crate::query::QueryEngine;
use crate::query::metrics::QueryMetrics;
use crate::query::service::QueryService;
use crate::ratelimit::coalesce::Coalescer;
use crate::ratelimit::envoy::{DirectShouldRateLimit, EnvoyRateLimitService};
use crate::ratelimit::metrics::RateLimitMetrics;
use crate::ratelimit::service::{DirectAcquire, DirectAcquireBatch, RateLimiterService};
use crate::ratelimit::{RateLimiter, persist as rl_persist};
use crate::reload::{ConfigSource, ReloadTargets, Reloader};
use crate::store::{self, Domain, Store, StoreError};
use crate::telemetry::metrics::{self, ProcessCollector, RpcMetrics};
use crate::telemetry::rpc::RpcLayer;
use crate::traces::Traces;
use crate::traces::forward::{ForwardSettings, Forwarder};
use crate::traces::metrics::{SpanMetricsCollector, TracesMetrics};
use crate::traces::service::{OtlpTraceService, TracesService};
use crate::transport;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;

/// Queue depth of each lane; a full lane makes callers run their work in place.
const COALESCE_DEPTH: usize = 4096;

/// HTTP/2 PINGs on every connection, so dead peers are noticed.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls that answer at once from memory (or wait without using CPU): with
/// `server.transport = "h2"` they run in their connection's task, so their
/// replies leave together. Everything else gets a task of its own.
const INLINE_PATHS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/gantry.v1.RateLimiter/Acquire",
    "/gantry.v1.RateLimiter/AcquireBatch",
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    "/gantry.v1.Cache/Get",
    "/gantry.v1.Cache/Put",
    "/gantry.v1.Cache/Delete",
    "/gantry.v1.Leases/Acquire",
    "/gantry.v1.Leases/Renew",
    "/gantry.v1.Leases/Release",
];

/// Envoy's rate-limit service, served beside gantry's own.
pub const ENVOY_RLS: &str = "envoy.service.ratelimit.v3.RateLimitService";

/// OTLP's trace receiver, served beside gantry's own Traces service.
pub const OTLP_TRACES: &str = "opentelemetry.proto.collector.trace.v1.TraceService";

/// The encoded descriptors of gantry's own protos, written by build.rs.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gantry_descriptor");

/// Every gantry service name, as health and reflection report them.
pub const GANTRY_SERVICES: [&str; 5] = [
    pb::rate_limiter_server::SERVICE_NAME,
    pb::cache_server::SERVICE_NAME,
    pb::query_analyzer_server::SERVICE_NAME,
    pb::traces_server::SERVICE_NAME,
    pb::leases_server::SERVICE_NAME,
];

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the lease journal thread: {0}")]
    Journal(std::io::Error),
    #[error("cannot start the span ingestion thread: {0}")]
    TracesWorker(std::io::Error),
    #[error("{0}")]
    Forward(String),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("flushing the store at shutdown failed: {0}")]
    Flush(String),
}

/// A built server: store open, ports bound, not yet serving.
pub struct Gantry {
    config: Config,
    store: Arc<dyn Store>,
    grpc_listener: TcpListener,
    metrics_listener: TcpListener,
    registry: Registry,
    rpc_metrics: RpcMetrics,
    propagate_context: bool,
    health: HealthReporter,
    health_service: HealthService,
    limiter: RateLimiter,
    rl_metrics: RateLimitMetrics,
    leases: LeaseManager,
    cache: CacheEngine,
    traces: Traces,
    forward: Option<ForwardTask>,
    query: QueryEngine,
    source: Option<ConfigSource>,
    reload_trigger: Arc<tokio::sync::Notify>,
}

type HealthService =
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, key, source })
}

impl Gantry {
    /// Opens the store and binds both ports. `propagate_context`: continue
    /// callers' W3C trace context (worth it only when our spans are exported).
    pub async fn build(config: Config, propagate_context: bool) -> Result<Self, StartError> {
        let storage = config.storage.clone();
        let store = tokio::task::spawn_blocking(move || store::open(&storage))
            .await
            .map_err(|e| StoreError::Io(format!("store opener panicked: {e}")))??;
        let grpc_listener = bind(config.server.listen, "server.listen").await?;
        let metrics_listener = bind(config.server.metrics_listen, "server.metrics_listen").await?;

        let mut registry = Registry::default();
        let rpc_metrics = RpcMetrics::register(&mut registry);
        registry.register_collector(Box::new(ProcessCollector));
        let rl_metrics = RateLimitMetrics::register(&mut registry);
        let limiter = RateLimiter::new(&config.ratelimit, rl_metrics.clone());
        restore_buckets(&limiter, store.as_ref()).await;
        let leases = LeaseManager::new(
            &config.leases,
            store.clone(),
            LeaseMetrics::register(&mut registry),
        )
        .map_err(StartError::Journal)?;
        restore_leases(&leases, &store).await?;
        let cache = open_cache(&config, &store).await?;
        registry.register_collector(Box::new(CacheCollector(cache.namespaces())));
        registry.register_collector(Box::new(crate::cache::stats::WatchCollector(cache.clone())));
        let (traces, forward) = start_traces(&config, &store, &mut registry)?;
        let query = QueryEngine::new(
            &config.query,
            store.clone(),
            QueryMetrics::register(&mut registry),
        );
        restore_query_stats(&query).await;

        let health = HealthReporter::new();
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );

        Ok(Self {
            config,
            store,
            grpc_listener,
            metrics_listener,
            registry,
            rpc_metrics,
            propagate_context,
            health,
            health_service,
            limiter,
            rl_metrics,
            leases,
            cache,
            traces,
            forward,
            query,
            source: None,
            reload_trigger: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Where the configuration came from: enables hot reload (SIGHUP and
    /// file polling) of the hot-reloadable sections.
    pub fn with_config_source(mut self, source: ConfigSource) -> Self {
        self.source = Some(source);
        self
    }

    /// Notify it to reload the configuration now (the SIGHUP handler does).
    /// A notification before serving starts is kept, not lost.
    pub fn reload_trigger(&self) -> Arc<tokio::sync::Notify> {
        self.reload_trigger.clone()
    }

    pub fn limiter(&self) -> RateLimiter {
        self.limiter.clone()
    }

    pub fn leases(&self) -> LeaseManager {
        self.leases.clone()
    }

    pub fn cache(&self) -> CacheEngine {
        self.cache.clone()
    }

    pub fn traces(&self) -> Traces {
        self.traces.clone()
    }

    /// The health reporter, for components that must report themselves NOT_SERVING.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        // A bound listener always has a local address; fall back to the configured one.
        self.grpc_listener
            .local_addr()
            .unwrap_or(self.config.server.listen)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .unwrap_or(self.config.server.metrics_listen)
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Serves until `shutdown` is cancelled, then: health turns NOT_SERVING,
    /// no new connections are accepted, in-flight calls get
    /// `server.shutdown_grace` to finish, and the store is flushed.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        let grpc_addr = self.grpc_addr();
        let metrics_addr = self.metrics_addr();
        let Gantry {
            config,
            store,
            grpc_listener,
            metrics_listener,
            registry,
            rpc_metrics,
            propagate_context,
            health: health_reporter,
            health_service,
            limiter,
            rl_metrics,
            leases,
            cache,
            traces,
            forward,
            query,
            source,
            reload_trigger,
        } = self;
        let server_cfg = &config.server;
        let limit = usize::try_from(server_cfg.max_message_bytes).unwrap_or(usize::MAX);

        set_all(&health_reporter, ServingStatus::Serving).await;

        let reflection_v1 = reflection_builder()
            .build_v1()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection_builder()
            .build_v1alpha()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;

        let connection_metrics = rpc_metrics.connections.clone();
        let layer = RpcLayer::new(
            rpc_metrics,
            server_cfg.max_inflight,
            known_paths(),
            propagate_context,
        );

        // One set of lanes (a task per core) for every service that coalesces.
        // Lanes group the replies of hyper's task-per-call server; gantry's own
        // transport already answers short calls together per connection, and
        // there the extra hop only costs (docs/benchmarks.md).
        let hyper = server_cfg.transport == Transport::Hyper;
        let rl_coalesce = config.ratelimit.coalesce && hyper;
        let cache_coalesce = config.cache.coalesce && hyper;
        let lanes =
            (rl_coalesce || cache_coalesce).then(|| Lanes::spawn(default_lanes(), COALESCE_DEPTH));
        let coalescer = lanes
            .clone()
            .filter(|_| rl_coalesce)
            .map(|lanes| Coalescer::new(limiter.clone(), lanes));
        let cache_lanes = lanes.filter(|_| cache_coalesce);

        // Every service gets the same message limit and gzip both ways;
        // span ingestion has its own, larger limit (OTLP batches are large).
        macro_rules! limited {
            ($service:expr) => {
                limited!($service, limit)
            };
            ($service:expr, $limit:expr) => {
                $service
                    .max_decoding_message_size($limit)
                    .max_encoding_message_size($limit)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Gzip)
            };
        }
        let traces_limit = usize::try_from(config.traces.max_message_bytes).unwrap_or(usize::MAX);

        // The same services on either transport (`server.transport`).
        macro_rules! with_services {
            ($router:expr) => {
                $router
                    .add_service(limited!(health_service.clone()))
                    .add_service(limited!(reflection_v1.clone()))
                    .add_service(limited!(reflection_v1alpha.clone()))
                    .add_service(limited!(pb::rate_limiter_server::RateLimiterServer::new(
                        RateLimiterService::new(limiter.clone(), coalescer.clone())
                    )))
                    .add_service(limited!(RateLimitServiceServer::new(
                        EnvoyRateLimitService::new(limiter.clone())
                    )))
                    .add_service(limited!(pb::cache_server::CacheServer::new(
                        CacheService::new(cache.clone(), cache_lanes.clone())
                    )))
                    .add_service(limited!(
                        pb::query_analyzer_server::QueryAnalyzerServer::new(QueryService::new(
                            query.clone(),
                            &config.query
                        ))
                    ))
                    .add_service(limited!(
                        pb::traces_server::TracesServer::new(TracesService::new(traces.clone())),
                        traces_limit
                    ))
                    .add_service(limited!(
                        TraceServiceServer::new(OtlpTraceService::new(traces.clone())),
                        traces_limit
                    ))
                    .add_service(limited!(pb::leases_server::LeasesServer::new(
                        LeasesService::new(leases.clone())
                    )))
            };
        }

        let incoming = TcpIncoming::from(grpc_listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(server_cfg.tcp_keepalive.get()));

        let background = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(sweep_buckets(
            limiter.clone(),
            config.ratelimit.sweep_interval.get(),
            background.clone(),
        ));
        tasks.spawn(persist_buckets(
            limiter.clone(),
            store.clone(),
            config.ratelimit.persist_interval.get(),
            background.clone(),
        ));
        tasks.spawn(leases.clone().run_expiry(background.clone()));
        tasks.spawn(crate::cache::engine::run_sweeper(
            cache.clone(),
            config.cache.sweep_interval.get(),
            usize::try_from(config.cache.sweep_batch).unwrap_or(usize::MAX),
            background.clone(),
        ));
        tasks.spawn(save_query_stats_periodically(
            query.clone(),
            config.query.persist_interval.get(),
            background.clone(),
        ));
        if config.traces.persist {
            tasks.spawn(sweep_persisted_spans(
                traces.clone(),
                config.traces.retention.get(),
                background.clone(),
            ));
        }
        if let Some(source) = source {
            let reloader = Reloader::new(
                source,
                ReloadTargets {
                    limiter: limiter.clone(),
                    metrics: rl_metrics,
                    leases: leases.clone(),
                },
                config.clone(),
            );
            tasks.spawn(reloader.run(
                server_cfg.config_poll_interval.get(),
                reload_trigger,
                background.clone(),
            ));
        }

        // Metrics stay up while the gRPC side drains, so the drain can be watched.
        let metrics_stop = CancellationToken::new();
        let metrics_task = tokio::spawn(metrics::serve(
            metrics_listener,
            Arc::new(registry),
            metrics_stop.clone(),
        ));

        tracing::info!(
            grpc = %grpc_addr,
            metrics = %metrics_addr,
            data_dir = %config.storage.data_dir.display(),
            backend = store.backend(),
            "gantry listening"
        );

        let reporter = health_reporter.clone();
        let stop_signal = shutdown.clone();
        let signal = async move {
            stop_signal.cancelled().await;
            set_all(&reporter, ServingStatus::NotServing).await;
            tracing::info!("shutting down: health NOT_SERVING, no new connections, draining calls");
        };
        let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match server_cfg.transport {
                Transport::H2 => {
                    let settings = transport::Settings {
                        max_concurrent_streams: server_cfg.max_concurrent_streams,
                        request_timeout: server_cfg.request_timeout.get(),
                        keepalive_interval: HTTP2_KEEPALIVE_INTERVAL,
                        keepalive_timeout: HTTP2_KEEPALIVE_TIMEOUT,
                        inline_paths: INLINE_PATHS.into(),
                        metrics: connection_metrics,
                        direct: server_cfg.direct_calls.then(|| {
                            let acquire: Arc<dyn transport::DirectUnary> =
                                Arc::new(DirectAcquire::new(limiter.clone()));
                            let batch: Arc<dyn transport::DirectUnary> =
                                Arc::new(DirectAcquireBatch::new(limiter.clone(), limit));
                            let envoy: Arc<dyn transport::DirectUnary> =
                                Arc::new(DirectShouldRateLimit::new(limiter.clone(), limit));
                            Arc::new(transport::DirectCalls {
                                layer: layer.clone(),
                                max_message_bytes: limit,
                                methods: [
                                    ("/gantry.v1.RateLimiter/Acquire", acquire),
                                    ("/gantry.v1.RateLimiter/AcquireBatch", batch),
                                    (
                                        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
                                        envoy,
                                    ),
                                ]
                                .into_iter()
                                .collect(),
                            })
                        }),
                    };
                    let service = tower::ServiceBuilder::new()
                        .layer(layer)
                        .service(with_services!(transport::Router::default()));
                    Box::pin(async move {
                        transport::serve(incoming, service, settings, signal).await;
                        Ok(())
                    })
                }
                Transport::Hyper => Box::pin(
                    tonic::transport::Server::builder()
                        .timeout(server_cfg.request_timeout.get())
                        .concurrency_limit_per_connection(
                            server_cfg.max_concurrent_streams as usize,
                        )
                        .max_concurrent_streams(server_cfg.max_concurrent_streams)
                        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
                        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
                        .layer(layer)
                        .add_routes(with_services!(tonic::service::Routes::default()).prepare())
                        .serve_with_incoming_shutdown(incoming, signal),
                ),
            };
        tokio::pin!(server);

        let grace = server_cfg.shutdown_grace.get();
        let served = tokio::select! {
            result = &mut server => result,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace = ?grace, "grace period over; closing the calls still running");
                Ok(())
            }
        };

        metrics_stop.cancel();
        let _ = metrics_task.await;
        background.cancel();
        while tasks.join_next().await.is_some() {}

        // Lease changes still queued reach the store before it is flushed.
        leases.stop().await;

        // Spans accepted before the drain are stored; then the forwarder
        // makes its last attempt for what it still holds.
        traces.drain().await;
        if let Some((task, stop)) = forward {
            stop.cancel();
            let _ = task.await;
        }

        // Query statistics and the slow log survive the restart.
        if let Err(e) = save_query_stats(&query).await {
            tracing::error!(error = %e, "saving query statistics at shutdown failed");
        }

        // Bucket levels survive the restart, so clients get no fresh burst.
        if let Err(e) = save_buckets(&limiter, &store).await {
            tracing::error!(error = %e, "saving rate-limit buckets at shutdown failed");
        }

        let flush_store = store.clone();
        let flushed = tokio::task::spawn_blocking(move || flush_store.flush())
            .await
            .map_err(|e| ServeError::Flush(e.to_string()))?;
        flushed.map_err(|e| ServeError::Flush(e.to_string()))?;
        tracing::info!("store flushed; gantry stopped");
        served.map_err(ServeError::from)
    }
}

/// Both reflection versions describe every service, themselves included
/// (tonic's builder would add only its own version's descriptor).
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .register_file_descriptor_set(otlp_trace_descriptors())
}

/// OTLP's descriptors, less the collector services gantry does not serve
/// (logs, metrics, profiles) and their data models, so reflection lists
/// only what answers.
pub fn otlp_trace_descriptors() -> prost_types::FileDescriptorSet {
    let mut set = prost_types::FileDescriptorSet::decode(opentelemetry_proto::DESCRIPTORS)
        .unwrap_or_default();
    set.file.retain(|file| {
        let package = file.package.as_deref().unwrap_or_default();
        !["logs", "metrics", "profiles"].iter().any(|signal| {
            package.starts_with(&format!("opentelemetry.proto.{signal}."))
                || package.starts_with(&format!("opentelemetry.proto.collector.{signal}."))
        })
    });
    set
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in GANTRY_SERVICES.into_iter().chain([ENVOY_RLS, OTLP_TRACES]) {
        reporter.set_service_status(name, status).await;
    }
}

async fn restore_buckets(limiter: &RateLimiter, store: &dyn Store) {
    let tree = store.tree(Domain::RateLimit);
    match rl_persist::load(&*tree, std::time::SystemTime::now()) {
        Ok((saved, downtime, skipped)) => {
            let restored = limiter.restore(&saved, downtime);
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

/// Opens the cache over the store, counting the entries it holds (a scan).
async fn open_cache(config: &Config, store: &Arc<dyn Store>) -> Result<CacheEngine, StartError> {
    let (cache_config, store) = (config.cache.clone(), store.clone());
    let started = std::time::Instant::now();
    let cache = tokio::task::spawn_blocking(move || CacheEngine::open(&cache_config, store))
        .await
        .map_err(|e| StoreError::Io(format!("cache open panicked: {e}")))??;
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
    Ok(cache)
}

/// Restores saved query statistics; unreadable ones are logged, not fatal
/// (statistics rebuild themselves from new executions).
async fn restore_query_stats(query: &QueryEngine) {
    let engine = query.clone();
    match tokio::task::spawn_blocking(move || engine.restore()).await {
        Ok(Ok(0)) => {}
        Ok(Ok(restored)) => tracing::info!(restored, "query statistics restored"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read saved query statistics; starting empty")
        }
        Err(e) => tracing::error!(error = %e, "restoring query statistics panicked"),
    }
}

async fn save_query_stats(query: &QueryEngine) -> Result<usize, String> {
    let engine = query.clone();
    tokio::task::spawn_blocking(move || engine.save())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Saves query statistics every `every`, so a crash loses at most that much.
async fn save_query_stats_periodically(
    query: QueryEngine,
    every: Duration,
    stop: CancellationToken,
) {
    save_every(every, stop, "query statistics", || save_query_stats(&query)).await;
}

/// Runs `save` every `every` (not at once: state was just restored) until
/// `stop`; a failure is logged and the next tick tries again.
async fn save_every<F, Fut>(every: Duration, stop: CancellationToken, what: &'static str, save: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<usize, String>>,
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {
                if let Err(e) = save().await {
                    tracing::warn!(error = %e, "periodic save of {what} failed");
                }
            }
        }
    }
}

/// The span forwarder's task and the token that ends it (after the drain).
type ForwardTask = (tokio::task::JoinHandle<()>, CancellationToken);

/// The span pipeline and, with `traces.forward_endpoint`, its forwarder task.
fn start_traces(
    config: &Config,
    store: &Arc<dyn Store>,
    registry: &mut Registry,
) -> Result<(Traces, Option<ForwardTask>), StartError> {
    let metrics = TracesMetrics::register(registry);
    let mut forward = None;
    let forwarder = match ForwardSettings::from_config(&config.traces) {
        Some(settings) => {
            let stop = CancellationToken::new();
            let (forwarder, task) = Forwarder::start(settings, metrics.clone(), stop.clone())
                .map_err(StartError::Forward)?;
            forward = Some((tokio::spawn(task), stop));
            Some(forwarder)
        }
        None => None,
    };
    let traces = Traces::start(&config.traces, store, metrics, forwarder)
        .map_err(StartError::TracesWorker)?;
    registry.register_collector(Box::new(SpanMetricsCollector(traces.endpoint_table())));
    Ok((traces, forward))
}

/// Removes persisted spans past `traces.retention`, once a minute (or
/// more often for a short retention).
async fn sweep_persisted_spans(traces: Traces, retention: Duration, stop: CancellationToken) {
    let every = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    every_tick_off_the_workers(
        every,
        stop,
        "removed persisted spans past their retention",
        move || traces.sweep_persisted(retention, 10_000),
    )
    .await;
}

/// Runs `job` every `every` on the blocking pool until `stop`; logs its
/// count at debug level when it did something.
async fn every_tick_off_the_workers<F>(
    every: Duration,
    stop: CancellationToken,
    what: &'static str,
    job: F,
) where
    F: Fn() -> usize + Clone + Send + 'static,
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {
                if let Ok(count) = tokio::task::spawn_blocking(job.clone()).await
                    && count > 0
                {
                    tracing::debug!(count, "{what}");
                }
            }
        }
    }
}

/// Puts back the leases granted before a restart. Unlike bucket levels,
/// leases that cannot be read are a reason not to start: serving without
/// them could grant units that are still held.
async fn restore_leases(leases: &LeaseManager, store: &Arc<dyn Store>) -> Result<(), StartError> {
    let (leases, store) = (leases.clone(), store.clone());
    let report = tokio::task::spawn_blocking(move || leases.restore(store.as_ref()))
        .await
        .map_err(|e| StoreError::Io(format!("lease restore panicked: {e}")))??;
    if report.restored > 0 || !report.stale.is_empty() {
        tracing::info!(
            restored = report.restored,
            dropped = report.stale.len(),
            "leases restored (expired ones and those of removed pools dropped)"
        );
    }
    Ok(())
}

async fn save_buckets(limiter: &RateLimiter, store: &Arc<dyn Store>) -> Result<usize, String> {
    let snapshot = limiter.snapshot();
    let count = snapshot.len();
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        rl_persist::save(
            &*store.tree(Domain::RateLimit),
            &snapshot,
            std::time::SystemTime::now(),
        )
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    Ok(count)
}

/// Drops idle full buckets every `every`, off the async workers.
async fn sweep_buckets(limiter: RateLimiter, every: Duration, stop: CancellationToken) {
    every_tick_off_the_workers(every, stop, "swept full rate-limit buckets", move || {
        limiter.sweep()
    })
    .await;
}

/// Saves bucket levels every `every`, so even a crash loses little.
async fn persist_buckets(
    limiter: RateLimiter,
    store: Arc<dyn Store>,
    every: Duration,
    stop: CancellationToken,
) {
    save_every(every, stop, "rate-limit buckets", || {
        save_buckets(&limiter, &store)
    })
    .await;
}

/// `/package.Service/Method` for every method this server routes, from the
/// descriptor sets: the label set of the per-method metrics.
pub fn known_paths() -> HashSet<String> {
    let otlp = otlp_trace_descriptors().encode_to_vec();
    let sets: [&[u8]; 5] = [
        FILE_DESCRIPTOR_SET,
        &otlp,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut paths = HashSet::from([format!("/{ENVOY_RLS}/ShouldRateLimit")]);
    for encoded in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    paths.insert(format!(
                        "/{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflection_describes_the_otlp_trace_service_and_no_other_signal() {
        let set = otlp_trace_descriptors();
        let services: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| {
                let package = f.package.clone().unwrap_or_default();
                f.service
                    .iter()
                    .map(move |s| format!("{package}.{}", s.name.clone().unwrap_or_default()))
            })
            .collect();
        assert_eq!(services, vec![OTLP_TRACES.to_string()]);
        // The trace model and what it imports are still there.
        assert!(
            set.file
                .iter()
                .any(|f| f.package.as_deref() == Some("opentelemetry.proto.trace.v1"))
        );
        assert!(
            set.file
                .iter()
                .any(|f| f.package.as_deref() == Some("opentelemetry.proto.common.v1"))
        );
    }

    #[test]
    fn known_paths_cover_every_service() {
        let paths = known_paths();
        for path in [
            "/gantry.v1.RateLimiter/Acquire",
            "/gantry.v1.Cache/Watch",
            "/gantry.v1.QueryAnalyzer/SlowQueries",
            "/gantry.v1.Traces/EndpointStats",
            "/gantry.v1.Leases/PoolStatus",
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(paths.contains(path), "{path} missing");
        }
    }
}
