//! The gRPC server: five capabilities, health, reflection, the transport and
//! graceful shutdown, in start-up order. `Gantry::build` opens the store,
//! binds the ports and starts each capability (which restores its state and
//! starts its background work), so errors surface before anything is served
//! and tests learn the ports; `Gantry::serve` serves until the shutdown token
//! is cancelled, then drains within the grace period, stops the capabilities
//! (each saves what it owns) and flushes the store.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::Auth;
use crate::config::{Config, StorageBackend, Transport};
use crate::proto::gantry::v1 as pb;
use crate::reload::{ConfigSource, ReloadMetrics, Reloader};
use crate::routes::{GrpcService, Served, grpc_service};
use crate::runtime::{Background, Capability, Context};
use crate::store::redis::RedisStore;
use crate::store::{self, Store, StoreError};
use crate::telemetry::metrics::{self, ProcessCollector, RpcMetrics};
use crate::telemetry::rpc::RpcLayer;
use crate::tls::{ReloadingTls, TlsMetrics};
use crate::transport;
use crate::{cache, leases, query, ratelimit, traces};

pub use crate::ratelimit::runtime::ENVOY_RLS;
pub use crate::runtime::StartError;
pub use crate::traces::runtime::OTLP_TRACES;

/// HTTP/2 PINGs on every connection, so dead peers are noticed.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The encoded descriptors of gantry's own protos, written by build.rs.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gantry_descriptor");

/// Envoy's `rls.proto` and its imports, for reflection (empty when build.rs
/// could not find them).
pub const ENVOY_RLS_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("envoy_rls_descriptor");

/// Every gantry service name, as health and reflection report them.
pub const GANTRY_SERVICES: [&str; 5] = [
    pb::rate_limiter_server::SERVICE_NAME,
    pb::cache_server::SERVICE_NAME,
    pb::query_analyzer_server::SERVICE_NAME,
    pb::traces_server::SERVICE_NAME,
    pb::leases_server::SERVICE_NAME,
];

/// The setting that bounds the messages of services that name none.
const DEFAULT_SIZE_SETTING: &str = "server.max_message_bytes";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("flushing the store at shutdown failed: {0}")]
    Flush(String),
}

/// A built server: store open, ports bound, capabilities started, not yet serving.
pub struct Gantry {
    config: Config,
    store: Arc<dyn Store>,
    grpc_listener: TcpListener,
    metrics_listener: TcpListener,
    /// `traces.otlp_http_listen`, when on.
    otlp_http_listener: Option<TcpListener>,
    registry: Registry,
    rpc_metrics: RpcMetrics,
    reload_metrics: ReloadMetrics,
    propagate_context: bool,
    health: HealthReporter,
    capabilities: Vec<Capability>,
    redis: Option<RedisStore>,
    /// `[server.tls]`, `[telemetry.metrics_tls]`, `[auth]` when on.
    grpc_tls: Option<Arc<ReloadingTls>>,
    metrics_tls: Option<Arc<ReloadingTls>>,
    /// `[server.tls]` again, offering HTTP/1.1 instead of h2, for OTLP/HTTP.
    otlp_http_tls: Option<Arc<ReloadingTls>>,
    auth: Option<Arc<Auth>>,
    background: Background,
    source: Option<ConfigSource>,
    reload_trigger: Arc<tokio::sync::Notify>,
    /// When `build` began, for the status page's uptime.
    started: (std::time::Instant, std::time::SystemTime),
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, key, source })
}

impl Gantry {
    /// Opens the store, binds both ports and starts every capability.
    /// `propagate_context`: continue callers' W3C trace context (worth it
    /// only when our spans are exported).
    pub async fn build(config: Config, propagate_context: bool) -> Result<Self, StartError> {
        let started = (std::time::Instant::now(), std::time::SystemTime::now());
        let storage = config.storage.clone();
        let store = tokio::task::spawn_blocking(move || store::open(&storage))
            .await
            .map_err(|e| StoreError::Io(format!("store opener panicked: {e}")))??;
        let grpc_listener = bind(config.server.listen, "server.listen").await?;
        let metrics_listener = bind(config.server.metrics_listen, "server.metrics_listen").await?;
        let otlp_http_listener = match config.traces.otlp_http_addr() {
            Ok(Some(addr)) => Some(bind(addr, "traces.otlp_http_listen").await?),
            // Validation refused an unparsable address before this.
            Ok(None) | Err(_) => None,
        };

        let mut registry = Registry::default();
        let rpc_metrics = RpcMetrics::register(&mut registry);
        let reload_metrics = ReloadMetrics::register(&mut registry);
        registry.register_collector(Box::new(ProcessCollector));
        store.health().register(&mut registry);
        let tls_metrics = TlsMetrics::register(&mut registry);
        let tls = |port, section, files: &crate::tls::TlsFiles, alpn: &[&[u8]]| {
            files
                .enabled()
                .then(|| ReloadingTls::load(port, section, files, alpn, tls_metrics.clone()))
                .transpose()
                .map_err(StartError::Tls)
        };
        let grpc_tls = tls("grpc", "server.tls", &config.server.tls, &[b"h2"])?;
        let metrics_tls = tls(
            "metrics",
            "telemetry.metrics_tls",
            &config.telemetry.metrics_tls,
            &[b"http/1.1"],
        )?;
        let otlp_http_tls = match &otlp_http_listener {
            Some(_) => tls(
                "otlp_http",
                "server.tls",
                &config.server.tls,
                &[b"http/1.1"],
            )?,
            None => None,
        };
        let auth = Auth::load(&config.auth, &mut registry).map_err(StartError::Auth)?;

        let mut background = Background::default();
        let redis = match config.storage.backend {
            StorageBackend::Redis => Some(
                RedisStore::start(
                    &config.storage.redis,
                    config.storage.recover_interval.get(),
                    &mut registry,
                    background.token(),
                )
                .map_err(StartError::Redis)?,
            ),
            StorageBackend::Sled => None,
        };
        let mut ctx = Context::new(
            store.clone(),
            &mut registry,
            &config.server,
            &mut background,
        );
        ctx.redis = redis.clone();
        // Start-up order; at shutdown they stop in the same order.
        let capabilities = vec![
            ratelimit::runtime::Runtime::start(&config.ratelimit, &mut ctx).await?,
            leases::runtime::Runtime::start(&config.leases, &mut ctx).await?,
            cache::runtime::Runtime::start(
                &config.cache,
                config.storage.flush_interval.get(),
                &mut ctx,
            )
            .await?,
            traces::runtime::Runtime::start(&config.traces, &mut ctx).await?,
            query::runtime::Runtime::start(&config.query, &mut ctx).await?,
        ];

        Ok(Self {
            config,
            store,
            grpc_listener,
            metrics_listener,
            otlp_http_listener,
            registry,
            rpc_metrics,
            reload_metrics,
            propagate_context,
            health: HealthReporter::new(),
            capabilities,
            background,
            redis,
            grpc_tls,
            metrics_tls,
            otlp_http_tls,
            auth,
            source: None,
            reload_trigger: Arc::new(tokio::sync::Notify::new()),
            started,
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

    /// Where OTLP/HTTP is served; None when `traces.otlp_http_listen` is empty.
    pub fn otlp_http_addr(&self) -> Option<SocketAddr> {
        self.otlp_http_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Serves until `shutdown` is cancelled, then: health turns NOT_SERVING,
    /// no new connections are accepted, in-flight calls get
    /// `server.shutdown_grace` to finish, the capabilities stop (saving what
    /// they own), and the store is flushed.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        let grpc_addr = self.grpc_addr();
        let metrics_addr = self.metrics_addr();
        let otlp_http_addr = self.otlp_http_addr();
        let Gantry {
            config,
            store,
            grpc_listener,
            metrics_listener,
            otlp_http_listener,
            registry,
            rpc_metrics,
            reload_metrics,
            propagate_context,
            health,
            capabilities,
            mut background,
            redis,
            grpc_tls,
            metrics_tls,
            otlp_http_tls,
            auth,
            source,
            reload_trigger,
            started,
        } = self;
        let server_cfg = &config.server;

        let mut served = operations(&health, server_cfg)?;
        let mut reload_hooks = Vec::new();
        let mut stops = Vec::new();
        let mut writers = Vec::new();
        let mut on_redis = Vec::new();
        let mut otlp_export = None;
        let mut status_sources = Vec::new();
        for capability in capabilities {
            otlp_export = otlp_export.or(capability.otlp_export);
            status_sources.extend(capability.status.map(|s| (capability.name, s)));
            if capability.needs_store {
                writers.extend(capability.served.services.iter().map(|s| s.name));
            }
            if capability.needs_redis {
                on_redis.extend(capability.served.services.iter().map(|s| s.name));
            }
            served.merge(capability.served);
            reload_hooks.extend(capability.reload);
            stops.push((capability.name, capability.stop));
        }
        let health_names: Vec<&'static str> = served.services.iter().map(|s| s.name).collect();
        set_health(&health, &health_names, ServingStatus::Serving).await;
        background.spawn(watch_store(
            store.clone(),
            config.storage.recover_interval.get(),
            health.clone(),
            writers,
            shutdown.clone(),
        ));
        if let Some(redis) = redis {
            background.spawn(watch_redis(
                redis,
                health.clone(),
                on_redis,
                shutdown.clone(),
            ));
        }

        for tls in [&grpc_tls, &metrics_tls, &otlp_http_tls]
            .into_iter()
            .flatten()
        {
            background.spawn(tls.clone().watch(background.token()));
        }
        if let Some(auth) = &auth {
            background.spawn(auth.clone().watch(background.token()));
        }
        warn_if_exposed(&config, grpc_addr);
        warn_if_status_exposed(&config, metrics_addr);

        let connection_metrics = rpc_metrics.connections.clone();
        // The status page, unless turned off (then neither its board nor its metric).
        let mut registry = registry;
        let status_board = config.telemetry.status_page.then(|| {
            let board = crate::status::Board::new(
                crate::status::ServerFacts {
                    started: started.0,
                    started_at: started.1,
                    transport: match server_cfg.transport {
                        Transport::H2 => "h2",
                        Transport::Hyper => "hyper",
                    },
                    backend: if config.storage.backend == StorageBackend::Redis {
                        "redis"
                    } else {
                        store.backend()
                    },
                    data_dir: config.storage.data_dir.display().to_string(),
                    config_source: source.as_ref().and_then(|s| s.path.as_ref()).map_or_else(
                        || "defaults, environment and flags (no file)".to_string(),
                        |path| path.display().to_string(),
                    ),
                    store: store.clone(),
                    inflight: rpc_metrics.inflight.clone(),
                    connections: connection_metrics.open.clone(),
                },
                status_sources,
            );
            board.register(&mut registry);
            Arc::new(board)
        });
        let layer = RpcLayer::new(
            rpc_metrics,
            server_cfg.max_inflight,
            method_size_settings(&served),
            propagate_context,
            auth.clone(),
        );

        if let Some(source) = source {
            let reloader = Reloader::new(source, reload_hooks, reload_metrics, config.clone());
            let token = background.token();
            background.spawn(reloader.run(
                server_cfg.config_poll_interval.get(),
                reload_trigger,
                token,
            ));
        }

        // Metrics stay up while the gRPC side drains, so the drain can be watched.
        let metrics_stop = CancellationToken::new();
        let metrics_access = metrics::MetricsAccess {
            tls: metrics_tls,
            token_file: crate::tls::is_set(&config.telemetry.metrics_token_file)
                .then(|| config.telemetry.metrics_token_file.clone()),
        };
        let metrics_task = tokio::spawn(metrics::serve(
            metrics_listener,
            Arc::new(registry),
            status_board,
            metrics_access,
            metrics_stop.clone(),
        ));

        // OTLP/HTTP: the gRPC port's TLS and tokens; it stops taking
        // requests with the gRPC side and finishes those it has.
        let otlp_http_task = otlp_http_listener
            .zip(otlp_export)
            .map(|(listener, export)| {
                let max = usize::try_from(config.traces.max_message_bytes).unwrap_or(usize::MAX);
                let handler = Arc::new(crate::traces::otlp_http::OtlpHttp::new(
                    export,
                    auth.clone(),
                    max,
                ));
                tokio::spawn(crate::http1::serve(
                    listener,
                    otlp_http_tls,
                    handler,
                    shutdown.clone(),
                    "otlp_http",
                ))
            });

        tracing::info!(
            grpc = %grpc_addr,
            metrics = %metrics_addr,
            otlp_http = %otlp_http_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
            data_dir = %config.storage.data_dir.display(),
            backend = if config.storage.backend == StorageBackend::Redis { "redis" } else { store.backend() },
            "gantry listening"
        );

        let incoming =
            crate::tls::incoming(grpc_listener, server_cfg.tcp_keepalive.get(), grpc_tls);
        let reporter = health.clone();
        let stop_signal = shutdown.clone();
        let signal = async move {
            stop_signal.cancelled().await;
            set_health(&reporter, &health_names, ServingStatus::NotServing).await;
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
                        methods: Arc::new(served.methods),
                        direct: transport::DirectCalls {
                            layer: layer.clone(),
                            max_message_bytes: usize::try_from(server_cfg.max_message_bytes)
                                .unwrap_or(usize::MAX),
                        },
                        metrics: connection_metrics,
                    };
                    let service = tower::ServiceBuilder::new()
                        .layer(layer)
                        .service(transport::Router::new(&served.services));
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
                        .add_routes(tonic_routes(&served.services))
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

        if let Some(task) = otlp_http_task {
            // Its accept loop ended with the shutdown signal; its open
            // connections finish their request (hyper's graceful shutdown).
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        metrics_stop.cancel();
        let _ = metrics_task.await;
        // Whatever the disk does, what is left after the drain — background
        // work, the capabilities' stops, the last flush — shares one
        // `storage.flush_timeout`: a stalled disk must not hold the process
        // past what the orchestrator was told (grace + flush timeout).
        let flush_timeout = config.storage.flush_timeout.get();
        let deadline = tokio::time::Instant::now() + flush_timeout;
        background.stop_by(deadline).await;
        stop_capabilities(stops, deadline).await;

        let flush_store = store.clone();
        let flushing = tokio::task::spawn_blocking(move || flush_store.flush());
        let flushed = match tokio::time::timeout_at(deadline, flushing).await {
            Ok(Ok(result)) => store.health().observe(result),
            Ok(Err(e)) => Err(StoreError::Io(format!(
                "the flush at shutdown panicked: {e}"
            ))),
            Err(_) => Err(StoreError::Unwritable {
                cause: format!(
                    "the flush at shutdown did not finish within {flush_timeout:?} (storage.flush_timeout)"
                ),
            }),
        };
        flushed.map_err(|e| ServeError::Flush(e.to_string()))?;
        tracing::info!("store flushed; gantry stopped");
        served.map_err(ServeError::from)
    }
}

/// Says once, at start, when the gRPC port is reachable from other hosts
/// without TLS or without authorization: anyone there may use everything.
fn warn_if_exposed(config: &Config, grpc_addr: SocketAddr) {
    if grpc_addr.ip().is_loopback() {
        return;
    }
    let missing: Vec<&str> = [
        (!config.server.tls.enabled()).then_some("TLS ([server.tls])"),
        (!config.auth.enabled()).then_some("authorization ([auth] policy_file)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        tracing::warn!(
            grpc = %grpc_addr,
            "listening beyond loopback without {}: any client that reaches the port may use every limit, namespace and pool (docs/security.md)",
            missing.join(" or ")
        );
    }
}

/// The status page's data names keys, holders and statements: say so when
/// anyone who reaches the metrics port can read it.
fn warn_if_status_exposed(config: &Config, metrics_addr: SocketAddr) {
    let token = crate::tls::is_set(&config.telemetry.metrics_token_file);
    if config.telemetry.status_page && !token && !metrics_addr.ip().is_loopback() {
        tracing::warn!(
            metrics = %metrics_addr,
            "the status page (/status.json) is served beyond loopback without telemetry.metrics_token_file: whoever reaches the port can read rate-limit keys, lease holders and SQL statements; set a token or telemetry.status_page = false (docs/security.md)"
        );
    }
}

/// Runs the capabilities' stops side by side until `deadline`; those still
/// running then are abandoned (their state is what the store last took).
async fn stop_capabilities(
    stops: Vec<(&'static str, crate::runtime::StopFuture)>,
    deadline: tokio::time::Instant,
) {
    let mut running = tokio::task::JoinSet::new();
    for (name, stop) in stops {
        tracing::debug!(capability = name, "stopping");
        running.spawn(async move {
            stop.await;
            name
        });
    }
    loop {
        match tokio::time::timeout_at(deadline, running.join_next()).await {
            Ok(None) => return,
            Ok(Some(Ok(name))) => tracing::debug!(capability = name, "stopped"),
            Ok(Some(Err(e))) => tracing::error!(error = %e, "a capability's stop panicked"),
            Err(_) => {
                tracing::error!(
                    still_running = running.len(),
                    "stopping the capabilities did not finish within storage.flush_timeout; going on"
                );
                running.abort_all();
                return;
            }
        }
    }
}

/// Health and both reflection versions: served beside the capabilities,
/// with the server's message limit.
fn operations(
    health: &HealthReporter,
    server: &crate::config::ServerConfig,
) -> Result<Served, ServeError> {
    let limit = usize::try_from(server.max_message_bytes).unwrap_or(usize::MAX);
    let health_server = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health.clone()),
    );
    let reflection_v1 = reflection_builder()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let served = Served::default()
        .service(grpc_service!(health_server, limit, DEFAULT_SIZE_SETTING))
        .service(grpc_service!(reflection_v1, limit, DEFAULT_SIZE_SETTING))
        .service(grpc_service!(
            reflection_v1alpha,
            limit,
            DEFAULT_SIZE_SETTING
        ))
        .inline(tonic_health::pb::health_server::SERVICE_NAME, &["Check"]);
    Ok(served)
}

/// The same services on tonic's server: one axum route per service name,
/// as tonic's `Routes::add_service` makes them.
fn tonic_routes(services: &[GrpcService]) -> tonic::service::Routes {
    use tower::ServiceExt;
    let router = services.iter().fold(axum::Router::new(), |router, grpc| {
        router.route_service(
            &format!("/{}/{{*rest}}", grpc.name),
            grpc.service
                .clone()
                .map_request(|req: http::Request<axum::body::Body>| {
                    let mut req = req.map(tonic::body::Body::new);
                    // tonic's server carries our `Peer`; `Request::remote_addr()`
                    // reads its own type, as on the h2 transport.
                    let tcp = req.extensions().get::<crate::tls::Peer>().map(|peer| {
                        tonic::transport::server::TcpConnectInfo {
                            local_addr: peer.local,
                            remote_addr: peer.remote,
                        }
                    });
                    if let Some(tcp) = tcp {
                        req.extensions_mut().insert(tcp);
                    }
                    req
                }),
        )
    });
    tonic::service::Routes::from(router).prepare()
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
        .register_encoded_file_descriptor_set(ENVOY_RLS_DESCRIPTOR_SET)
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

/// While the store is unwritable (a full disk): the services that write
/// report NOT_SERVING, and every `storage.recover_interval` gantry tries to
/// bring the store back; once it takes writes, they report SERVING again.
async fn watch_store(
    store: Arc<dyn Store>,
    every: Duration,
    reporter: HealthReporter,
    writers: Vec<&'static str>,
    shutdown: CancellationToken,
) {
    let health = store.health().clone();
    let mut writable = health.subscribe();
    loop {
        while *writable.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = writable.changed() => if changed.is_err() { return },
            }
        }
        set_health(&reporter, &writers, ServingStatus::NotServing).await;
        // Each new reason an attempt fails is said at warn; repeats at debug.
        let mut told = String::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let attempt = store.clone();
            let recovering = tokio::task::spawn_blocking(move || attempt.recover());
            match tokio::time::timeout(health.flush_timeout() + every, recovering).await {
                Ok(Ok(Ok(()))) => break,
                Ok(Ok(Err(e))) if e.to_string() != told => {
                    told = e.to_string();
                    tracing::warn!(error = %e, "the store is still not writable; trying again every storage.recover_interval");
                }
                Ok(Ok(Err(e))) => tracing::debug!(error = %e, "the store is still not writable"),
                Ok(Err(e)) => tracing::error!(error = %e, "recovering the store panicked"),
                Err(_) => tracing::warn!("recovering the store did not finish in time"),
            }
        }
        health.recovered();
        if !shutdown.is_cancelled() {
            set_health(&reporter, &writers, ServingStatus::Serving).await;
        }
    }
}

/// The services whose state lives in Redis report NOT_SERVING while it
/// does not answer (and until the first connection), SERVING once it does.
async fn watch_redis(
    redis: RedisStore,
    reporter: HealthReporter,
    services: Vec<&'static str>,
    shutdown: CancellationToken,
) {
    let mut up = redis.subscribe();
    loop {
        let status = if *up.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if !shutdown.is_cancelled() {
            set_health(&reporter, &services, status).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = up.changed() => if changed.is_err() { return },
        }
    }
}

async fn set_health(reporter: &HealthReporter, services: &[&str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in services {
        reporter.set_service_status(*name, status).await;
    }
}

/// Every method path this server routes, with the setting that bounds its
/// messages: the label set of the per-method metrics.
fn method_size_settings(served: &Served) -> HashMap<String, &'static str> {
    let setting_of = |path: &str| {
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        served
            .services
            .iter()
            .find(|s| s.name == service)
            .map_or(DEFAULT_SIZE_SETTING, |s| s.size_setting)
    };
    known_paths()
        .into_iter()
        .chain(served.methods.keys().cloned())
        .map(|path| {
            let setting = setting_of(&path);
            (path, setting)
        })
        .collect()
}

/// `/package.Service/Method` for every method in the descriptor sets this
/// server serves (services without a descriptor here, such as Envoy's, are
/// known from the methods their capability registers).
pub fn known_paths() -> HashSet<String> {
    let otlp = otlp_trace_descriptors().encode_to_vec();
    let sets: [&[u8]; 5] = [
        FILE_DESCRIPTOR_SET,
        &otlp,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut paths = HashSet::new();
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
