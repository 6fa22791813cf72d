//! The tower layer every gRPC call passes through: it sheds load beyond
//! `server.max_inflight`, opens a tracing span per call (continuing the
//! caller's W3C trace context), and records go-grpc-prometheus style metrics,
//! reading the final status from the response headers or trailers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::auth::{Auth, Caller};
use crate::tls::Peer;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Bytes;
use tokio::sync::Semaphore;
use tower::{Layer, Service};
use tracing::Instrument;

use super::metrics::{HandledLabels, MethodLabels, RpcMetrics, code_label};

use crate::error::ApiError;
use tower::BoxError;

/// One method's metric handles, created at start so a call does no label
/// allocation or family lookup.
struct MethodHandles {
    labels: MethodLabels,
    /// The setting that limits this method's message size.
    size_setting: &'static str,
    started: prometheus_client::metrics::counter::Counter,
    handling: prometheus_client::metrics::histogram::Histogram,
    /// By gRPC code number (0..=16), created on first use.
    handled: [std::sync::OnceLock<prometheus_client::metrics::counter::Counter>; 17],
}

impl MethodHandles {
    fn new(metrics: &RpcMetrics, labels: MethodLabels, size_setting: &'static str) -> Self {
        let started = metrics.started.get_or_create(&labels).clone();
        let handling = metrics.handling_seconds.get_or_create(&labels).clone();
        Self {
            labels,
            size_setting,
            started,
            handling,
            handled: Default::default(),
        }
    }

    fn handled(
        &self,
        metrics: &RpcMetrics,
        code: tonic::Code,
    ) -> &prometheus_client::metrics::counter::Counter {
        let slot = (code as usize).min(16);
        self.handled[slot].get_or_init(|| {
            metrics
                .handled
                .get_or_create(&HandledLabels {
                    grpc_service: self.labels.grpc_service.clone(),
                    grpc_method: self.labels.grpc_method.clone(),
                    grpc_code: code_label(code),
                })
                .clone()
        })
    }
}

/// Shared by every connection's copy of the layer.
struct Shared {
    metrics: RpcMetrics,
    inflight: Arc<Semaphore>,
    max_inflight: u32,
    /// Handles per `/package.Service/Method` path; any other path shares the
    /// `unknown` handles, so random paths cannot blow up cardinality.
    methods: std::collections::HashMap<String, Arc<MethodHandles>, foldhash::fast::RandomState>,
    unknown: Arc<MethodHandles>,
    /// Extract `traceparent` (and open spans at INFO) only when our own spans are exported.
    propagate_context: bool,
    /// `[auth]`, when on: who may call what.
    auth: Option<Arc<Auth>>,
}

/// Authenticates a call and checks its method (`[auth]`); with auth off,
/// every caller may do everything.
fn authorize(
    shared: &Shared,
    path: &str,
    headers: &HeaderMap,
    extensions: &http::Extensions,
) -> Result<Caller, tonic::Status> {
    match &shared.auth {
        None => Ok(Caller::anyone()),
        Some(auth) => auth
            .check(path, headers, extensions.get::<Peer>())
            .map_err(tonic::Status::from),
    }
}

#[derive(Clone)]
pub struct RpcLayer {
    shared: Arc<Shared>,
}

impl RpcLayer {
    /// `methods`: every routed method path, with the setting that bounds
    /// its messages (named when tonic refuses one as too large).
    pub fn new(
        metrics: RpcMetrics,
        max_inflight: u32,
        methods: HashMap<String, &'static str>,
        propagate_context: bool,
        auth: Option<Arc<Auth>>,
    ) -> Self {
        let unknown = Arc::new(MethodHandles::new(
            &metrics,
            unknown_labels(),
            "server.max_message_bytes",
        ));
        let methods = methods
            .into_iter()
            .map(|(path, setting)| {
                let handles = match method_labels(&path) {
                    Some(labels) => Arc::new(MethodHandles::new(&metrics, labels, setting)),
                    None => unknown.clone(),
                };
                (path, handles)
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                metrics,
                inflight: Arc::new(Semaphore::new(max_inflight as usize)),
                max_inflight,
                methods,
                unknown,
                propagate_context,
                auth,
            }),
        }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Splits `/gantry.v1.Cache/Get` into service and method labels.
fn method_labels(path: &str) -> Option<MethodLabels> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    Some(MethodLabels {
        grpc_service: service.to_string(),
        grpc_method: method.to_string(),
    })
}

/// The labels every path outside the routed methods shares.
fn unknown_labels() -> MethodLabels {
    MethodLabels {
        grpc_service: "unknown".to_string(),
        grpc_method: "unknown".to_string(),
    }
}

/// A gRPC status carried in a header map (trailers-only responses carry it in
/// the headers, normal ones in the trailers).
fn status_in(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
}

/// tonic's codec reports a request it cannot decode (garbage bytes, a
/// string field that is not UTF-8) as INTERNAL; it is the caller's input, so
/// gantry's contract says INVALID_ARGUMENT, with tonic's own message. tonic
/// gives no structured marker for this, so its message prefix (prost's
/// `DecodeError`) is what identifies it; gantry's own INTERNAL errors never
/// start that way.
fn rewrite_undecodable(headers: &mut HeaderMap) {
    if status_in(headers) != Some(tonic::Code::Internal) {
        return;
    }
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    if !status
        .message()
        .starts_with("failed to decode Protobuf message")
    {
        return;
    }
    let replacement = tonic::Status::invalid_argument(status.message().to_string());
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    let _ = replacement.add_header(headers);
}

/// tonic reports an oversized message as OUT_OF_RANGE; the gRPC spec (and
/// gantry's contract) say RESOURCE_EXHAUSTED. Rewrites that one status in
/// place, naming the setting that sets the limit.
fn rewrite_oversized(headers: &mut HeaderMap, setting: &str) {
    if status_in(headers) != Some(tonic::Code::OutOfRange) {
        return;
    }
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    let Some(detail) = status
        .message()
        .strip_prefix("Error, decoded message length too large: ")
        .map(|d| ("request", d))
        .or_else(|| {
            status
                .message()
                .strip_prefix("Error, encoded message length too large: ")
                .map(|d| ("response", d))
        })
    else {
        return;
    };
    let (which, detail) = detail;
    let replacement = tonic::Status::resource_exhausted(format!(
        "{which} message too large: {detail} ({setting})"
    ));
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    // add_header only fails for a message that cannot be encoded, and ours is plain ASCII.
    let _ = replacement.add_header(headers);
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl<S, B> Service<Request<tonic::body::Body>> for RpcService<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<RpcBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<tonic::body::Body>) -> Self::Future {
        // The clone-and-swap keeps the instance that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();

        let mut call = CallRecord::start(&shared, req.uri().path(), req.headers());
        let span = call.span.clone();
        let caller = authorize(&shared, req.uri().path(), req.headers(), req.extensions());

        Box::pin(
            async move {
                match caller {
                    Ok(caller) => {
                        req.extensions_mut().insert(caller);
                    }
                    Err(status) => {
                        call.finish(status.code());
                        let (parts, ()) = status.into_http::<()>().into_parts();
                        return Ok(Response::from_parts(parts, RpcBody::empty()));
                    }
                }
                let Ok(permit) = shared.inflight.clone().try_acquire_owned() else {
                    let status = shed(&shared);
                    call.finish(status.code());
                    let (parts, ()) = status.into_http::<()>().into_parts();
                    return Ok(Response::from_parts(parts, RpcBody::empty()));
                };
                shared.metrics.inflight.inc();
                let result = inner.call(req).await;
                shared.metrics.inflight.dec();
                drop(permit);
                match result {
                    Ok(response) => {
                        let (mut parts, body) = response.into_parts();
                        rewrite_oversized(&mut parts.headers, call.method.size_setting);
                        rewrite_undecodable(&mut parts.headers);
                        if let Some(code) = status_in(&parts.headers) {
                            // Trailers-only response: the status is final now.
                            call.finish(code);
                        }
                        Ok(Response::from_parts(parts, RpcBody::new(body, call)))
                    }
                    Err(e) => {
                        call.finish(tonic::Code::Internal);
                        Err(e)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// Counts a call shed for `server.max_inflight` and says so.
fn shed(shared: &Shared) -> tonic::Status {
    shared.metrics.shed.inc();
    tonic::Status::from(ApiError::ResourceExhausted(format!(
        "server overloaded: {} calls in flight (server.max_inflight = {}); retry with backoff",
        shared.max_inflight, shared.max_inflight
    )))
}

impl RpcLayer {
    /// Starts the record of a call that the transport answers itself, without
    /// passing through this layer's service (src/transport's direct calls):
    /// counted, timed, traced and shed exactly like every other call.
    pub fn start_direct(
        &self,
        path: &str,
        headers: &HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<DirectCall, tonic::Status> {
        let shared = &self.shared;
        let mut call = CallRecord::start(shared, path, headers);
        let caller = match authorize(shared, path, headers, extensions) {
            Ok(caller) => caller,
            Err(status) => {
                call.finish(status.code());
                return Err(status);
            }
        };
        let Ok(permit) = shared.inflight.clone().try_acquire_owned() else {
            let status = shed(shared);
            call.finish(status.code());
            return Err(status);
        };
        shared.metrics.inflight.inc();
        Ok(DirectCall {
            call,
            caller,
            _permit: permit,
        })
    }
}

/// A call answered by the transport itself; its outcome is recorded by
/// [`DirectCall::finish`], or as CANCELLED when it is dropped unfinished.
pub struct DirectCall {
    call: CallRecord,
    caller: Caller,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl DirectCall {
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    pub fn span(&self) -> &tracing::Span {
        &self.call.span
    }

    pub fn finish(mut self, code: tonic::Code) {
        self.call.finish(code);
    }
}

impl Drop for DirectCall {
    fn drop(&mut self) {
        self.call.shared.metrics.inflight.dec();
    }
}

/// Records a call's outcome exactly once: when the status is seen, or on drop
/// (a client that went away before the end counts as CANCELLED).
struct CallRecord {
    shared: Arc<Shared>,
    method: Arc<MethodHandles>,
    start: Instant,
    span: tracing::Span,
    done: bool,
}

impl CallRecord {
    /// Counts the call as started and opens its span (continuing the caller's
    /// trace when our spans are exported).
    fn start(shared: &Arc<Shared>, path: &str, headers: &HeaderMap) -> Self {
        let method = shared.methods.get(path).unwrap_or(&shared.unknown).clone();
        method.started.inc();
        // INFO when the span is exported (it is part of the caller's trace),
        // DEBUG otherwise: a span per call costs time on the hot path.
        macro_rules! request_span {
            ($level:expr) => {
                tracing::span!(
                    $level,
                    "grpc.request",
                    otel.name = %path.trim_start_matches('/'),
                    otel.kind = "server",
                    rpc.system = "grpc",
                    rpc.service = %method.labels.grpc_service,
                    rpc.method = %method.labels.grpc_method,
                    rpc.grpc.status_code = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                )
            };
        }
        let span = if shared.propagate_context {
            request_span!(tracing::Level::INFO)
        } else {
            request_span!(tracing::Level::DEBUG)
        };
        if shared.propagate_context {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let parent = opentelemetry::global::get_text_map_propagator(|p| {
                p.extract(&HeaderExtractor(headers))
            });
            // Fails only when no OpenTelemetry layer is installed; then there is
            // nothing to continue and the span stays a root.
            let _ = span.set_parent(parent);
        }
        Self {
            shared: shared.clone(),
            method,
            start: Instant::now(),
            span,
            done: false,
        }
    }

    fn finish(&mut self, code: tonic::Code) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.start.elapsed();
        self.method.handled(&self.shared.metrics, code).inc();
        self.method.handling.observe(elapsed.as_secs_f64());
        self.span.record("rpc.grpc.status_code", code as i32);
        if code != tonic::Code::Ok {
            self.span.record("otel.status_code", "ERROR");
        }
        tracing::debug!(
            parent: &self.span,
            code = ?code,
            elapsed_us = elapsed.as_micros() as u64,
            "call finished"
        );
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// The response body, watched for the trailers that carry the final status.
    pub struct RpcBody<B> {
        #[pin]
        inner: Option<B>,
        call: Option<CallRecord>,
    }
}

impl<B> RpcBody<B> {
    fn new(inner: B, call: CallRecord) -> Self {
        let call = if call.done { None } else { Some(call) };
        Self {
            inner: Some(inner),
            call,
        }
    }

    fn empty() -> Self {
        Self {
            inner: None,
            call: None,
        }
    }
}

impl<B> Body for RpcBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    let setting = this
                        .call
                        .as_ref()
                        .map_or("server.max_message_bytes", |c| c.method.size_setting);
                    rewrite_oversized(&mut trailers, setting);
                    if let Some(mut call) = this.call.take() {
                        call.finish(status_in(&trailers).unwrap_or(tonic::Code::Unknown));
                    }
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Ready(Some(Err(e))) => {
                if let Some(mut call) = this.call.take() {
                    call.finish(tonic::Code::Internal);
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                if let Some(mut call) = this.call.take() {
                    // A gRPC response that ends without a status is an error (gRPC spec).
                    call.finish(tonic::Code::Unknown);
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_split_known_paths_and_fold_unknown_ones() {
        let metrics = RpcMetrics::register(&mut prometheus_client::registry::Registry::default());
        let known = HashMap::from([
            (
                "/gantry.v1.Cache/Get".to_string(),
                "server.max_message_bytes",
            ),
            (
                "/gantry.v1.Traces/Ingest".to_string(),
                "traces.max_message_bytes",
            ),
        ]);
        let layer = RpcLayer::new(metrics, 10, known, false, None);
        let handles = |path: &str| {
            let shared = &layer.shared;
            shared.methods.get(path).unwrap_or(&shared.unknown).clone()
        };
        let l = &handles("/gantry.v1.Cache/Get").labels;
        assert_eq!(
            (l.grpc_service.as_str(), l.grpc_method.as_str()),
            ("gantry.v1.Cache", "Get")
        );
        assert_eq!(
            handles("/gantry.v1.Traces/Ingest").size_setting,
            "traces.max_message_bytes"
        );
        let l = &handles("/random/garbage").labels;
        assert_eq!(
            (l.grpc_service.as_str(), l.grpc_method.as_str()),
            ("unknown", "unknown")
        );
    }

    #[test]
    fn undecodable_requests_become_invalid_argument_and_other_internals_stay() {
        let mut headers = HeaderMap::new();
        tonic::Status::internal("failed to decode Protobuf message: invalid wire type value: 7")
            .add_header(&mut headers)
            .unwrap();
        rewrite_undecodable(&mut headers);
        let status = tonic::Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("invalid wire type"));
        let mut headers = HeaderMap::new();
        tonic::Status::internal("internal error: a bug")
            .add_header(&mut headers)
            .unwrap();
        rewrite_undecodable(&mut headers);
        assert_eq!(status_in(&headers), Some(tonic::Code::Internal));
    }

    #[test]
    fn oversized_messages_become_resource_exhausted() {
        let mut headers = HeaderMap::new();
        tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5000 bytes, the limit is: 1024 bytes",
        )
        .add_header(&mut headers)
        .unwrap();
        rewrite_oversized(&mut headers, "server.max_message_bytes");
        let status = tonic::Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("5000 bytes"),
            "{}",
            status.message()
        );
        assert!(status.message().contains("server.max_message_bytes"));

        // Other OUT_OF_RANGE errors are left alone.
        let mut headers = HeaderMap::new();
        tonic::Status::out_of_range("offset 9 past the end")
            .add_header(&mut headers)
            .unwrap();
        rewrite_oversized(&mut headers, "server.max_message_bytes");
        assert_eq!(status_in(&headers), Some(tonic::Code::OutOfRange));
    }

    #[test]
    fn status_is_read_from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_in(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(status_in(&headers), Some(tonic::Code::NotFound));
    }
}
