//! The HTTP/2 floor: how fast the `h2` crate alone answers a unary gRPC
//! call when nothing else happens — no hyper, no tonic, no routing, no
//! decoding, no decision, no task per stream — just read the request and
//! write a fixed `AcquireResponse` with `grpc-status: 0`.
//!
//! Every Rust gRPC server pays at least this per call (gantry on its own
//! transport, src/transport, and throttlecrab-server on tonic → hyper → h2),
//! so it bounds what any work above HTTP/2 can win. `scripts/bench --only ratelimit` runs it beside
//! both servers (docs/benchmarks.md, "The HTTP/2 floor").
//!
//! ```text
//! cargo run --release --example h2_floor -- 127.0.0.1:7079
//! ```
#![forbid(unsafe_code)]

use bytes::Bytes;
use std::task::Poll;

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{HeaderMap, HeaderValue, Response};

/// An encoded `AcquireResponse` (allowed, remaining, the three durations,
/// limit) behind gRPC's 5-byte message prefix: about what gantry answers.
const ANSWER: &[u8] = b"\0\0\0\0\x0e\x08\x01\x10\x80\x84\xaf\x5f\x1a\x00\x22\x00\x30\x01\x3a\x00";

async fn answer(
    mut request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Result<(), h2::Error> {
    let body = request.body_mut();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
    }
    let head = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .map_err(|_| h2::Reason::INTERNAL_ERROR)?;
    let mut send = respond.send_response(head, false)?;
    send.send_data(Bytes::from_static(ANSWER), false)?;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    send.send_trailers(trailers)
}

/// One task per connection. It accepts every stream that has arrived, runs
/// the answers until nothing more is ready, and only then polls the
/// connection again, which is when `h2` writes: many replies per write (the
/// shape of gantry's own transport, src/transport). Polling the connection
/// after each answer instead (a `select!` over accept and the answers) cost
/// 8.1–9.0 µs per call here against 4.3–5.4 µs this way, and a task per
/// stream, as hyper does, 10.5–11.0 µs.
async fn serve_connection(socket: tokio::net::TcpStream) -> Result<(), h2::Error> {
    let mut connection = h2::server::handshake(socket).await?;
    let mut answers = FuturesUnordered::new();
    std::future::poll_fn(|cx| {
        loop {
            let mut progressed = false;
            loop {
                match connection.poll_accept(cx) {
                    Poll::Ready(Some(Ok((request, respond)))) => {
                        answers.push(answer(request, respond));
                        progressed = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            while let Poll::Ready(Some(result)) = answers.poll_next_unpin(cx) {
                if let Err(e) = result {
                    eprintln!("stream: {e}");
                }
                progressed = true;
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7079".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("h2_floor listening on {addr}");
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        tokio::spawn(async move {
            if let Err(e) = serve_connection(socket).await {
                eprintln!("connection: {e}");
            }
        });
    }
}
