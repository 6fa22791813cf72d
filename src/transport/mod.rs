//! gantry's HTTP/2 server for its gRPC services (`server.transport = "h2"`,
//! the default): the `h2` crate driven by one task per connection, in which
//! short calls are answered without a task of their own.
//!
//! Why not hyper's server (which tonic's `Server` uses, and which stays
//! available as `server.transport = "hyper"`): hyper gives every call its own
//! task and the connection flushes whenever it is polled, so under load most
//! replies leave in a write system call each. Here the connection accepts
//! every stream that has arrived, runs the short ones to their answer, and
//! only then lets `h2` flush — many replies in one write. Measured with the
//! same service stack in one run: docs/benchmarks.md, "gantry's transport".
//!
//! Calls that can take long or use much CPU (streams, span batches, SQL
//! analysis, waits) still get a task each, so one connection's heavy call
//! neither blocks its other calls nor keeps the work off the other cores.

mod abuse;
pub mod direct;
mod router;
mod stream;

use abuse::{Ended, ResetBudget};
use stream::LazyDeadline;

pub use direct::DirectCalls;
pub use router::Router;

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{Request, Response};
use http_body::Body;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpConnectInfo;
use tower::{BoxError, Service, ServiceExt};

use crate::grpc::parse_grpc_timeout;
use crate::routes::MethodTable;
use crate::telemetry::metrics::ConnectionMetrics;
use crate::tls::{Peer, ServerIo};

/// HTTP/2 settings, as hyper's server sets them by default unless named here.
pub struct Settings {
    pub max_concurrent_streams: u32,
    /// Upper bound on any call; a shorter `grpc-timeout` wins.
    pub request_timeout: Duration,
    /// PING an idle-looking connection this often…
    pub keepalive_interval: Duration,
    /// …and close it when the answer takes longer than this.
    pub keepalive_timeout: Duration,
    /// How each method runs, by path: in the connection's own task (calls
    /// that answer at once from memory), answered from its request bytes, or
    /// (any path not here) in a task of its own.
    pub methods: Arc<MethodTable>,
    /// What the direct calls share.
    pub direct: DirectCalls,
    pub metrics: ConnectionMetrics,
}

const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// A client that opens a connection and never says hello is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type CallFuture = Pin<Box<dyn Future<Output = Ended> + Send>>;

/// What a transport serves: tonic's services behind gantry's per-call layer.
pub trait GrpcService:
    Service<
        Request<tonic::body::Body>,
        Response = Response<Self::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    type Body: Body<Data = Bytes, Error: Into<BoxError> + Send> + Send + 'static;
}

impl<S, B> GrpcService for S
where
    S: Service<Request<tonic::body::Body>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    type Body = B;
}

/// Serves `service` on every connection from `incoming` until `shutdown`;
/// then stops accepting, tells each connection to finish (HTTP/2 GOAWAY),
/// and returns once every connection has closed.
pub async fn serve<I, S>(
    mut incoming: I,
    service: S,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) where
    I: futures_util::Stream<Item = std::io::Result<ServerIo>> + Unpin,
    S: GrpcService,
{
    let settings = Arc::new(settings);
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let socket = tokio::select! {
            () = &mut shutdown => break,
            next = incoming.next() => match next {
                Some(Ok(socket)) => socket,
                Some(Err(e)) => {
                    // Out of file descriptors and the like: keep serving the
                    // connections there are; tonic's incoming already backs off.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    continue;
                }
                None => break,
            },
        };
        let peer = socket.peer();
        let span = tracing::debug_span!(
            "grpc.connection",
            peer = %peer.remote.map_or_else(|| "?".to_string(), |a| a.to_string()),
            identity = peer.identity.as_deref().unwrap_or_default(),
        );
        connections.spawn(tracing::Instrument::instrument(
            connection(
                socket,
                peer,
                service.clone(),
                settings.clone(),
                closing.clone(),
            ),
            span,
        ));
    }
    // Closing the listener refuses new connections while the old ones drain.
    drop(incoming);
    closing.cancel();
    connections.close();
    connections.wait().await;
}

/// One connection: accept every stream that has arrived, start each call,
/// run the short ones until nothing more is ready, and only then poll the
/// connection again (which is when `h2` writes what the calls queued).
async fn connection<S: GrpcService>(
    socket: ServerIo,
    peer: Peer,
    service: S,
    settings: Arc<Settings>,
    closing: CancellationToken,
) {
    // What tonic's server puts in every request, so `Request::remote_addr()`
    // answers the same on both transports.
    let connect_info = TcpConnectInfo {
        local_addr: peer.local,
        remote_addr: peer.remote,
    };
    // Carried by every request only when it says who the client is (mutual
    // TLS): an extension costs an allocation per call on the direct path.
    let identified = peer.identity.is_some().then_some(peer);
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Bytes>(socket);
    let metrics = settings.metrics.clone();
    metrics.accepted.inc();
    let mut conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            metrics.errors.inc();
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            metrics.errors.inc();
            tracing::debug!("HTTP/2 handshake timed out");
            return;
        }
    };
    metrics.open.inc();
    // Counted down however the connection ends.
    let _open = OpenConnection(metrics.open.clone());
    let mut keepalive = std::pin::pin!(keepalive(
        conn.ping_pong(),
        settings.keepalive_interval,
        settings.keepalive_timeout
    ));
    let mut closing = std::pin::pin!(closing.cancelled_owned());
    let mut going_away = false;
    let mut calls: FuturesUnordered<CallFuture> = FuturesUnordered::new();
    let keepalive_timeouts = metrics.keepalive_timeouts.clone();
    let resets = Arc::new(ResetBudget::default());
    let mut calmed = false;

    let result = poll_fn(move |cx| {
        if !going_away && closing.as_mut().poll(cx).is_ready() {
            going_away = true;
            conn.graceful_shutdown();
        }
        if keepalive.as_mut().poll(cx).is_ready() {
            keepalive_timeouts.inc();
            tracing::debug!("HTTP/2 keepalive: no PING answer in time; closing the connection");
            conn.abrupt_shutdown(h2::Reason::NO_ERROR);
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut progressed = false;
            // Polling the connection reads what arrived and writes what the
            // calls queued since the last time.
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((request, respond)))) => {
                        progressed = true;
                        let call = call(
                            request,
                            respond,
                            &service,
                            &settings,
                            &connect_info,
                            identified.as_ref(),
                        );
                        if call.inline {
                            calls.push(call.future);
                        } else {
                            let resets = resets.clone();
                            tokio::spawn(async move { resets.count(call.future.await) });
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            while let Poll::Ready(Some(ended)) = calls.poll_next_unpin(cx) {
                resets.count(ended);
                progressed = true;
            }
            if resets.exceeded() && !calmed {
                calmed = true;
                metrics.abusive.inc();
                tracing::warn!(
                    "closing a connection that reset more calls than it may (rapid reset): GOAWAY ENHANCE_YOUR_CALM"
                );
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await;
    if let Err(e) = result {
        // A client that goes away mid-stream is not an error of the protocol.
        if !e.is_io() {
            metrics.errors.inc();
        }
        tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
    }
}

/// The open-connections gauge, counted down on drop.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Call {
    future: CallFuture,
    inline: bool,
}

/// Starts one call. Requests that reach the service stack carry the
/// connection's addresses as on tonic's server (`Request::remote_addr()`);
/// a direct call, which never builds a request, skips that allocation.
fn call<S: GrpcService>(
    request: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    service: &S,
    settings: &Settings,
    connect_info: &TcpConnectInfo,
    identified: Option<&Peer>,
) -> Call {
    let mut request = request;
    if let Some(peer) = identified {
        request.extensions_mut().insert(peer.clone());
    }
    let client_deadline = request
        .headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    let deadline = LazyDeadline::new(client_deadline.map_or(settings.request_timeout, |d| {
        d.min(settings.request_timeout)
    }));
    let service = service.clone();
    let method = settings.methods.get(request.uri().path());
    if let Some(method) = method
        && let Some(handler) = settings.direct.handler(method, &request)
    {
        let (connect_info, spawn) = (connect_info.clone(), method.spawn_fallback);
        // The fallback request is rebuilt from the same parts, so it keeps
        // the peer extension.
        let fallback = move |mut request: Request<tonic::body::Body>, respond, deadline| {
            request.extensions_mut().insert(connect_info);
            let call = through_service(service, request, respond, deadline);
            if spawn {
                // Declined calls are the heavy ones: a task of their own, so
                // the connection's other calls do not wait behind them.
                tokio::spawn(call);
                Box::pin(async { Ended::Done }) as CallFuture
            } else {
                Box::pin(call)
            }
        };
        let direct = settings.direct.clone();
        let future = direct::serve(request, respond, handler, direct, deadline, fallback);
        return Call {
            future: Box::pin(future),
            inline: true,
        };
    }
    let inline = method.is_some_and(|m| m.inline);
    let mut request = stream::request(request);
    request.extensions_mut().insert(connect_info.clone());
    let future = Box::pin(through_service(service, request, respond, deadline));
    Call { future, inline }
}

/// A call through the service stack (tonic), answered on its stream.
async fn through_service<S: GrpcService>(
    service: S,
    request: Request<tonic::body::Body>,
    respond: h2::server::SendResponse<Bytes>,
    deadline: LazyDeadline,
) -> Ended {
    let answer = async move {
        match service.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    };
    match stream::serve(answer, respond, deadline).await {
        Ok(()) => Ended::Done,
        Err(end) => {
            tracing::debug!(error = %end, "call ended early");
            match end {
                stream::StreamEnd::Reset(_) => Ended::Reset,
                _ => Ended::Done,
            }
        }
    }
}

/// Resolves when the peer fails to answer a PING within `timeout`; PINGs
/// every `interval`. Never resolves when pings are unavailable.
async fn keepalive(ping_pong: Option<h2::PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    if interval.is_zero() {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection is closing; the accept loop sees it.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::RpcMetrics;
    use crate::telemetry::rpc::RpcLayer;

    /// What `tonic::Request::remote_addr()` reads on tonic's own server.
    #[tokio::test]
    async fn requests_carry_the_peer_address_as_on_tonics_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = crate::tls::incoming(listener, Duration::from_secs(60), None);
        // Answers every call with the peer it saw, in the status message.
        let service = tower::service_fn(|request: Request<tonic::body::Body>| async move {
            let peer = request
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
                .map(|a| a.to_string())
                .unwrap_or_default();
            Ok::<_, Infallible>(tonic::Status::unknown(peer).into_http::<tonic::body::Body>())
        });
        let metrics = RpcMetrics::register(&mut prometheus_client::registry::Registry::default());
        let settings = Settings {
            max_concurrent_streams: 16,
            request_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::ZERO,
            keepalive_timeout: Duration::from_secs(1),
            methods: Arc::default(),
            direct: DirectCalls {
                layer: RpcLayer::new(metrics.clone(), 16, Default::default(), false, None),
                max_message_bytes: 1 << 20,
            },
            metrics: metrics.connections,
        };
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            incoming,
            service,
            settings,
            stop.clone().cancelled_owned(),
        ));

        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = client
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap_err();
        let peer: std::net::SocketAddr = status.message().parse().unwrap();
        assert_eq!(peer.ip(), addr.ip());
        assert_ne!(
            peer.port(),
            addr.port(),
            "the client's port, not the server's"
        );

        stop.cancel();
        server.await.unwrap();
    }
}
