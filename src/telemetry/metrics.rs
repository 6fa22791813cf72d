//! Prometheus metrics: one registry per server instance (so tests can run
//! several servers in one process and assert exact counts), the per-RPC
//! families, process metrics, and the HTTP endpoint that serves them.

use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http1::plain;

/// Latency buckets from 50 µs to 60 s: gantry's calls are mostly sub-millisecond,
/// but rate-limit and lease waits can last seconds.
pub const LATENCY_BUCKETS: [f64; 19] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub grpc_service: String,
    pub grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    pub grpc_service: String,
    pub grpc_method: String,
    pub grpc_code: &'static str,
}

/// Per-method gRPC metrics, named as go-grpc-prometheus names them so that
/// existing dashboards and alerts work unchanged.
#[derive(Clone)]
pub struct RpcMetrics {
    pub started: Family<MethodLabels, Counter>,
    pub handled: Family<HandledLabels, Counter>,
    pub handling_seconds: Family<MethodLabels, Histogram>,
    pub inflight: Gauge,
    pub shed: Counter,
    pub connections: ConnectionMetrics,
}

/// HTTP/2 connections of gantry's own transport (`server.transport = "h2"`).
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    pub open: Gauge,
    pub accepted: Counter,
    /// Ended by a failed handshake or an HTTP/2 protocol error.
    pub errors: Counter,
    /// Closed because the peer did not answer a keepalive PING in time.
    pub keepalive_timeouts: Counter,
    /// Closed with GOAWAY ENHANCE_YOUR_CALM for abuse (a rapid-reset flood).
    pub abusive: Counter,
}

impl RpcMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            started: Family::default(),
            handled: Family::default(),
            handling_seconds: Family::new_with_constructor(latency_histogram),
            inflight: Gauge::default(),
            shed: Counter::default(),
            connections: ConnectionMetrics::default(),
        };
        registry.register(
            "grpc_server_started",
            "RPCs started on the server",
            metrics.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, by status code",
            metrics.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from the request's arrival to the end of its response (streams included)",
            metrics.handling_seconds.clone(),
        );
        registry.register(
            "gantry_grpc_inflight",
            "RPC handlers running now",
            metrics.inflight.clone(),
        );
        registry.register(
            "gantry_grpc_shed",
            "RPCs refused with RESOURCE_EXHAUSTED because server.max_inflight was reached",
            metrics.shed.clone(),
        );
        registry.register(
            "gantry_grpc_connections",
            "HTTP/2 connections open (server.transport = \"h2\")",
            metrics.connections.open.clone(),
        );
        registry.register(
            "gantry_grpc_connections_accepted",
            "HTTP/2 connections accepted (server.transport = \"h2\")",
            metrics.connections.accepted.clone(),
        );
        registry.register(
            "gantry_grpc_connection_errors",
            "Connections ended by a failed HTTP/2 handshake or a protocol error",
            metrics.connections.errors.clone(),
        );
        registry.register(
            "gantry_grpc_keepalive_timeouts",
            "Connections closed because the peer did not answer a keepalive PING in time",
            metrics.connections.keepalive_timeouts.clone(),
        );
        registry.register(
            "gantry_grpc_connections_abusive",
            "Connections closed with GOAWAY ENHANCE_YOUR_CALM for resetting more calls than allowed (rapid reset)",
            metrics.connections.abusive.clone(),
        );
        metrics
    }
}

/// The Go names of gRPC codes, as go-grpc-prometheus labels them.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Reads /proc/self on every scrape: CPU, memory, file descriptors, threads,
/// start time — the standard `process_*` series.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl ProcessCollector {
    fn gauge(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: f64,
    ) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(value);
        let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
        gauge.encode(metric)
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // /proc may be unreadable (non-Linux, hardened sandboxes): then the
        // process series are simply absent rather than failing the scrape.
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?;
            cpu.encode(metric)?;
            let rss = stat.rss as f64 * procfs::page_size() as f64;
            Self::gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                rss,
            )?;
            Self::gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.vsize as f64,
            )?;
            Self::gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads",
                stat.num_threads as f64,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                let start = boot as f64 + stat.starttime as f64 / ticks;
                Self::gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch in seconds",
                    start,
                )?;
            }
        }
        if let Ok(fds) = me.fd_count() {
            Self::gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                fds as f64,
            )?;
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            Self::gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            )?;
        }
        Ok(())
    }
}

/// Renders the registry, in OpenMetrics when the scraper asks for it and in
/// the classic Prometheus text format otherwise.
pub fn render(
    registry: &Registry,
    openmetrics: bool,
) -> Result<(String, &'static str), std::fmt::Error> {
    let mut body = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut body, registry)?;
        Ok((
            body,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ))
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?;
        Ok((body, "text/plain; version=0.0.4; charset=utf-8"))
    }
}

/// Who may read `/metrics` (`[telemetry] metrics_token_file`,
/// `[telemetry.metrics_tls]`).
#[derive(Default, Clone)]
pub struct MetricsAccess {
    /// The port's TLS, when on.
    pub tls: Option<Arc<crate::tls::ReloadingTls>>,
    /// A file holding the bearer token a scrape must send; read at each
    /// scrape, so a rotated Secret counts at once.
    pub token_file: Option<std::path::PathBuf>,
}

impl MetricsAccess {
    /// Whether the request carries the token (always, without a token file).
    fn admits(&self, req: &Request<Incoming>) -> Result<(), StatusCode> {
        let Some(path) = &self.token_file else {
            return Ok(());
        };
        let expected = std::fs::read_to_string(path).map_err(|e| {
            tracing::warn!(path = %path.display(), error = %e, "cannot read telemetry.metrics_token_file; refusing the scrape");
            StatusCode::SERVICE_UNAVAILABLE
        })?;
        let sent = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().split_at_checked(7))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|(_, token)| token)
            .ok_or(StatusCode::UNAUTHORIZED)?;
        // Hashes of equal length compared: no early exit on the token's bytes.
        let same = crate::auth::sha256(sent) == crate::auth::sha256(expected.trim().as_bytes());
        if same {
            Ok(())
        } else {
            Err(StatusCode::UNAUTHORIZED)
        }
    }
}

/// Refuses a request without the token, as every path of the port does.
fn refused(access: &MetricsAccess, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let status = access.admits(req).err()?;
    let mut resp = plain(
        status,
        "send `Authorization: Bearer <token>` (telemetry.metrics_token_file)\n",
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
    }
    Some(resp)
}

fn respond(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let openmetrics = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    match render(registry, openmetrics) {
        Ok((body, content_type)) => with_type(body.into(), content_type),
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
    }
}

fn with_type(body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// `/metrics`, `/status` and `/status.json` as an HTTP/1.1 handler.
struct MetricsPort {
    registry: Arc<Registry>,
    /// None with `telemetry.status_page = false`.
    status: Option<Arc<crate::status::Board>>,
    access: MetricsAccess,
}

impl MetricsPort {
    async fn status_json(
        &self,
        board: &crate::status::Board,
        req: &Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let ask = match crate::status::Ask::from_query(req.uri().query()) {
            Ok(ask) => ask,
            Err(why) => return plain(StatusCode::BAD_REQUEST, &format!("{why}\n")),
        };
        let snapshot = board.current(ask).await;
        match serde_json::to_vec(&*snapshot) {
            Ok(body) => {
                let mut resp = with_type(body.into(), "application/json");
                // Live data: never from a cache.
                resp.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store"),
                );
                resp
            }
            Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
        }
    }
}

impl crate::http1::Handler for MetricsPort {
    async fn handle(
        &self,
        req: Request<Incoming>,
        _peer: crate::tls::Peer,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let known = matches!(path, "/metrics" | "/status" | "/status.json");
        if known && req.method() != Method::GET && req.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        // The page itself holds no data (its script asks /status.json, with
        // the token when one is needed), so it is served to whoever reaches
        // the port; the data is not.
        let status = self.status.as_deref();
        if path == "/status" && status.is_some() {
            return crate::status::page::response();
        }
        if let Some(refusal) = refused(&self.access, &req) {
            return refusal;
        }
        match (path, status) {
            ("/metrics", _) => respond(&self.registry, &req),
            ("/status.json", Some(board)) => self.status_json(board, &req).await,
            ("/status" | "/status.json", None) => plain(
                StatusCode::NOT_FOUND,
                "the status page is off (telemetry.status_page = false); metrics are at /metrics\n",
            ),
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found; metrics are at /metrics, the status page at /status (its data at /status.json)\n",
            ),
        }
    }
}

/// Serves `/metrics` and the status page over HTTP/1.1 (in TLS when
/// configured) until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    status: Option<Arc<crate::status::Board>>,
    access: MetricsAccess,
    shutdown: CancellationToken,
) {
    let tls = access.tls.clone();
    let port = Arc::new(MetricsPort {
        registry,
        status,
        access,
    });
    crate::http1::serve(listener, tls, port, shutdown, "metrics").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_metrics_render_in_prometheus_text() {
        let mut registry = Registry::default();
        let rpc = RpcMetrics::register(&mut registry);
        let labels = MethodLabels {
            grpc_service: "gantry.v1.Cache".into(),
            grpc_method: "Get".into(),
        };
        rpc.started.get_or_create(&labels).inc();
        rpc.handled
            .get_or_create(&HandledLabels {
                grpc_service: labels.grpc_service.clone(),
                grpc_method: labels.grpc_method.clone(),
                grpc_code: code_label(tonic::Code::NotFound),
            })
            .inc();
        rpc.handling_seconds.get_or_create(&labels).observe(0.002);
        let (text, content_type) = render(&registry, false).unwrap();
        assert!(content_type.starts_with("text/plain"));
        assert!(text.contains(
            "grpc_server_started_total{grpc_service=\"gantry.v1.Cache\",grpc_method=\"Get\"} 1"
        ));
        assert!(text.contains("grpc_code=\"NotFound\"} 1"), "{text}");
        assert!(
            text.contains("grpc_server_handling_seconds_bucket"),
            "{text}"
        );
        let (open, _) = render(&registry, true).unwrap();
        assert!(open.ends_with("# EOF\n"));
    }

    #[test]
    fn process_metrics_are_reported_on_linux() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let (text, _) = render(&registry, false).unwrap();
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        assert!(text.contains("process_cpu_seconds_total"), "{text}");
        assert!(text.contains("process_open_fds"), "{text}");
    }

    #[test]
    fn every_code_has_a_go_style_label() {
        assert_eq!(code_label(tonic::Code::Ok), "OK");
        assert_eq!(code_label(tonic::Code::Cancelled), "Canceled");
        assert_eq!(
            code_label(tonic::Code::ResourceExhausted),
            "ResourceExhausted"
        );
    }
}
