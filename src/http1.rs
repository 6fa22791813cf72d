//! The small HTTP/1.1 servers beside the gRPC port — `/metrics` and
//! OTLP/HTTP — on one accept loop: connections (after their TLS handshake,
//! when the port has TLS) are served by hyper until shutdown, when each
//! finishes the request it is in.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::tls::{Peer, ReloadingTls};

/// TCP keepalive on these ports' connections.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// Answers one request; `Peer` says who is calling (the TLS client
/// certificate's identity, when there is one).
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        req: Request<Incoming>,
        peer: Peer,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Serves `handler` on `listener` until `shutdown` is cancelled. `what`
/// names the port in logs.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    handler: Arc<H>,
    shutdown: CancellationToken,
    what: &'static str,
) {
    let local = listener.local_addr().ok();
    let mut incoming = crate::tls::incoming(listener, KEEPALIVE, tls);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = incoming.next() => match accepted {
                Some(accepted) => accepted,
                None => break,
            },
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(port = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let peer = io.peer();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                let peer = peer.clone();
                async move { Ok::<_, Infallible>(handler.handle(req, peer).await) }
            });
            let io = hyper_util::rt::TokioIo::new(io);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(port = what, error = %e, "connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
    tracing::debug!(port = what, addr = ?local, "listener stopped");
}

/// A response with a plain-text body.
pub fn plain(status: http::StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
