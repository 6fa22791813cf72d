//! Direct calls: a few unary methods that decide at once from memory (an
//! immediate rate-limit `Acquire`, an `AcquireBatch`, Envoy's
//! `ShouldRateLimit`) answered from their request bytes inside
//! the connection's task — decode, decide, encode, three HTTP/2 frames —
//! instead of through tonic's per-call machinery (a boxed future per layer,
//! a decode and an encode buffer, a response body polled frame by frame),
//! which cost more than the decision itself (docs/benchmarks.md).
//!
//! The same things happen as on the service path: the call is counted,
//! timed, traced and shed by the same [`RpcLayer`] records, validated by the
//! same functions and its errors are the same statuses. Anything out of the
//! ordinary — a compressed or oversized message, a body in pieces that does
//! not add up, a request the method wants to serve the long way (one that
//! waits) — goes through the service path untouched, so its answer is
//! exactly what it always was. Answers are not compressed (a client that
//! offers gzip may always be answered in identity, and these are tiny).

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use bytes::{BufMut, Bytes, BytesMut};
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Request, Response};

use super::stream::{IncomingBody, LazyDeadline, timed_out};
use crate::telemetry::rpc::{DirectCall, RpcLayer};

/// Starts the call's record (and sheds it when the server is full): called
/// by a [`DirectUnary`] once it knows it will answer, before any side effect.
pub type Begin<'a> = &'a mut dyn FnMut() -> Result<(), tonic::Status>;

/// A unary method answered directly.
pub trait DirectUnary: Send + Sync + 'static {
    /// Answers one uncompressed request message with a response message
    /// framed for the wire ([`encode_within`]), or `None` to send the call the
    /// service path (before calling `begin`, and so before any side effect).
    fn answer(&self, message: &[u8], begin: Begin<'_>) -> Option<Result<Bytes, tonic::Status>>;
}

/// Encodes an answer behind gRPC's 5-byte prefix (uncompressed), in one
/// buffer, refusing one larger than the message limit with what the service
/// path answers then (tonic's check, worded by the per-call layer).
pub fn encode_within(
    answer: &impl prost::Message,
    max_message_bytes: usize,
) -> Result<Bytes, tonic::Status> {
    let len = answer.encoded_len();
    if len > max_message_bytes {
        return Err(tonic::Status::resource_exhausted(format!(
            "response message too large: found {len} bytes, the limit is: {max_message_bytes} bytes (server.max_message_bytes)"
        )));
    }
    let mut framed = BytesMut::with_capacity(5 + len);
    framed.put_u8(0);
    framed.put_u32(len as u32);
    // Cannot fail: the buffer holds `len` more bytes.
    let _ = answer.encode(&mut framed);
    Ok(framed.freeze())
}

/// The methods answered directly, by path.
#[derive(Clone)]
pub struct DirectCalls {
    pub layer: RpcLayer,
    pub max_message_bytes: usize,
    pub methods: HashMap<&'static str, Arc<dyn DirectUnary>, foldhash::fast::RandomState>,
}

impl DirectCalls {
    /// The handler for this request, when its path has one and the request
    /// is plain gRPC (no request compression).
    pub fn handler(&self, request: &Request<RecvStream>) -> Option<Arc<dyn DirectUnary>> {
        let handler = self.methods.get(request.uri().path())?;
        let headers = request.headers();
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let identity = headers
            .get("grpc-encoding")
            .is_none_or(|v| v.as_bytes() == b"identity");
        (grpc && identity).then(|| handler.clone())
    }
}

/// What reading the request body came to.
enum Read {
    /// One whole uncompressed message, with its 5-byte prefix.
    Message(Bytes),
    /// Anything else: what was read so far, for the service path.
    Other(Bytes),
    /// The client went away.
    Gone,
}

/// Reads one gRPC message from the body, as long as it stays plain. Most
/// arrive in one DATA frame, which is then used without a copy.
async fn read_message(recv: &mut RecvStream, max_message_bytes: usize) -> Read {
    let mut single: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    loop {
        let chunk = match recv.data().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(_)) => return Read::Gone,
            None => break,
        };
        // Fails only when the stream is already gone, which the next read reports.
        let _ = recv.flow_control().release_capacity(chunk.len());
        if single.is_none() && joined.is_empty() {
            single = Some(chunk);
        } else {
            if let Some(first) = single.take() {
                joined.put(first);
            }
            joined.put(chunk);
        }
        let have: &[u8] = single.as_deref().unwrap_or(&joined);
        if have.len() < 5 {
            continue;
        }
        let length = u32::from_be_bytes([have[1], have[2], have[3], have[4]]) as usize;
        let plain = have[0] == 0 && length <= max_message_bytes && have.len() <= 5 + length;
        let whole = plain && have.len() == 5 + length;
        if !plain || whole {
            let bytes = single.take().unwrap_or_else(|| joined.split().freeze());
            return if whole {
                Read::Message(bytes)
            } else {
                Read::Other(bytes)
            };
        }
    }
    Read::Other(single.unwrap_or_else(|| joined.freeze()))
}

/// Serves a call directly, or hands it to `fallback` (the service path) with
/// the bytes already read put back in front of the rest of its body.
pub async fn serve<F, Fut>(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    handler: Arc<dyn DirectUnary>,
    calls: Arc<DirectCalls>,
    mut deadline: LazyDeadline,
    fallback: F,
) where
    F: FnOnce(Request<tonic::body::Body>, SendResponse<Bytes>, LazyDeadline) -> Fut,
    Fut: Future<Output = ()>,
{
    let (parts, mut recv) = request.into_parts();
    // A client that sends headers and no body is held to the call's deadline
    // like any other call.
    let read = {
        let mut reading = std::pin::pin!(read_message(&mut recv, calls.max_message_bytes));
        poll_fn(|cx| match reading.as_mut().poll(cx) {
            Poll::Ready(read) => Poll::Ready(Some(read)),
            Poll::Pending if deadline.poll_expired(cx) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await
    };
    // A call that ends before its message arrived is counted as the service
    // path counts it: started, and ended by the deadline or the client.
    let ended = |code: tonic::Code| {
        if let Ok(call) = calls.layer.start_direct(parts.uri.path(), &parts.headers) {
            call.finish(code);
        }
    };
    let framed = match read {
        None => {
            let status = timed_out();
            ended(status.code());
            let _ = respond.send_response(status.into_http::<()>(), true);
            return;
        }
        Some(Read::Message(framed)) => framed,
        Some(Read::Gone) => {
            ended(tonic::Code::Cancelled);
            return;
        }
        Some(Read::Other(head)) => {
            let body = tonic::body::Body::new(IncomingBody::after(head, recv));
            return fallback(Request::from_parts(parts, body), respond, deadline).await;
        }
    };
    let mut call: Option<DirectCall> = None;
    let mut begin = || {
        call = Some(calls.layer.start_direct(parts.uri.path(), &parts.headers)?);
        Ok(())
    };
    let answer = handler.answer(&framed[5..], &mut begin);
    let Some(answer) = answer else {
        let body = tonic::body::Body::new(IncomingBody::after(framed, recv));
        return fallback(Request::from_parts(parts, body), respond, deadline).await;
    };
    let code = match answer {
        Ok(framed) => match send_ok(&mut respond, framed) {
            Ok(()) => tonic::Code::Ok,
            Err(_) => tonic::Code::Cancelled,
        },
        Err(status) => {
            let code = status.code();
            let head = status.into_http::<()>();
            // The client may be gone already; the record says what was answered.
            let _ = respond.send_response(head, true);
            code
        }
    };
    if let Some(call) = call {
        call.finish(code);
    }
}

fn send_ok(respond: &mut SendResponse<Bytes>, framed: Bytes) -> Result<(), h2::Error> {
    let mut head = Response::new(());
    head.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let mut send = respond.send_response(head, false)?;
    send.send_data(framed, false)?;
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    send.send_trailers(trailers)
}
