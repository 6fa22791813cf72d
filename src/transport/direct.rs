//! Direct calls: a few unary methods that decide at once from memory (an
//! immediate rate-limit `Acquire`, an `AcquireBatch`, Envoy's
//! `ShouldRateLimit`, cache Get/Put/Delete, a remembered `Analyze`) or wait
//! without using the CPU (on Redis, a flush, a parse in its own task),
//! answered from their request bytes inside
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

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use bytes::{BufMut, Bytes, BytesMut};
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Request, Response};

use super::abuse::Ended;
use super::stream::{IncomingBody, LazyDeadline, timed_out};
use crate::routes::{Answer, DirectUnary, Later, Method};
use crate::telemetry::rpc::{DirectCall, RpcLayer};

/// What direct calls share: the per-call layer that records them, and the
/// request message limit.
#[derive(Clone)]
pub struct DirectCalls {
    pub layer: RpcLayer,
    pub max_message_bytes: usize,
}

impl DirectCalls {
    /// The method's handler, when it has one and the request is plain gRPC
    /// (no request compression).
    pub fn handler(
        &self,
        method: &Method,
        request: &Request<RecvStream>,
    ) -> Option<Arc<dyn DirectUnary>> {
        let handler = method.direct.as_ref()?;
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

/// Reads one gRPC message from the body, as long as it stays plain, and
/// the body to its end, as tonic's unary path does. Most arrive in one DATA
/// frame, which is then used without a copy.
///
/// Reading to the end matters: many clients (hyper's, under tonic) end the
/// stream with an empty DATA frame after the message. Answered before it, a
/// stream is reset by h2 (NO_ERROR), and that empty frame arriving later for
/// a stream h2 no longer tracks is a stream error h2 counts against the
/// connection — under load past its limit of 1,024, when it closes the
/// connection with ENHANCE_YOUR_CALM and every call on it fails.
async fn read_message(recv: &mut RecvStream, max_message_bytes: usize) -> Read {
    let mut single: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut whole = false;
    loop {
        let chunk = match recv.data().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(_)) => return Read::Gone,
            None => break,
        };
        // Fails only when the stream is already gone, which the next read reports.
        let _ = recv.flow_control().release_capacity(chunk.len());
        if chunk.is_empty() {
            continue;
        }
        if single.is_none() && joined.is_empty() {
            single = Some(chunk);
        } else {
            if let Some(first) = single.take() {
                joined.put(first);
            }
            joined.put(chunk);
        }
        if whole {
            // More after the message: the service path says what it makes of it.
            break;
        }
        let have: &[u8] = single.as_deref().unwrap_or(&joined);
        if have.len() < 5 {
            continue;
        }
        let length = u32::from_be_bytes([have[1], have[2], have[3], have[4]]) as usize;
        let plain = have[0] == 0 && length <= max_message_bytes && have.len() <= 5 + length;
        if !plain {
            break;
        }
        whole = have.len() == 5 + length;
    }
    let bytes = single.unwrap_or_else(|| joined.freeze());
    let length = bytes
        .get(1..5)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
    if whole && length.is_some_and(|length| bytes.len() == 5 + length) && recv.is_end_stream() {
        Read::Message(bytes)
    } else {
        Read::Other(bytes)
    }
}

/// Serves a call directly, or hands it to `fallback` (the service path) with
/// the bytes already read put back in front of the rest of its body.
pub async fn serve<F, Fut>(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    handler: Arc<dyn DirectUnary>,
    calls: DirectCalls,
    mut deadline: LazyDeadline,
    fallback: F,
) -> Ended
where
    F: FnOnce(Request<tonic::body::Body>, SendResponse<Bytes>, LazyDeadline) -> Fut,
    Fut: Future<Output = Ended>,
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
        if let Ok(call) =
            calls
                .layer
                .start_direct(parts.uri.path(), &parts.headers, &parts.extensions)
        {
            call.finish(code);
        }
    };
    let framed = match read {
        None => {
            let status = timed_out();
            ended(status.code());
            let _ = respond.send_response(status.into_http::<()>(), true);
            return Ended::Done;
        }
        Some(Read::Message(framed)) => framed,
        Some(Read::Gone) => {
            ended(tonic::Code::Cancelled);
            return Ended::Reset;
        }
        Some(Read::Other(head)) => {
            let body = tonic::body::Body::new(IncomingBody::after(head, recv));
            return fallback(Request::from_parts(parts, body), respond, deadline).await;
        }
    };
    match answer(&*handler, &framed[5..], &parts, &calls, &mut respond) {
        Answered::Done => Ended::Done,
        Answered::Later(later, call) => {
            finish_later(later, call, respond, deadline).await;
            Ended::Done
        }
        Answered::Declined => {
            let body = tonic::body::Body::new(IncomingBody::after(framed, recv));
            fallback(Request::from_parts(parts, body), respond, deadline).await
        }
    }
}

/// What the handler made of a call.
enum Answered {
    /// Sent the service path.
    Declined,
    /// Answered.
    Done,
    /// Its answer is on its way (from the shared store), with its record.
    Later(Later, Option<DirectCall>),
}

/// Waits for an answer that was not ready at once — within the call's
/// deadline, and no longer once the client reset the stream — and sends it.
async fn finish_later(
    later: Later,
    call: Option<DirectCall>,
    mut respond: SendResponse<Bytes>,
    mut deadline: LazyDeadline,
) {
    let span = call
        .as_ref()
        .map_or_else(tracing::Span::none, |c| c.span().clone());
    let mut later = std::pin::pin!(tracing::Instrument::instrument(later, span));
    let answer = poll_fn(|cx| {
        if let Poll::Ready(answer) = later.as_mut().poll(cx) {
            return Poll::Ready(Some(answer));
        }
        if deadline.poll_expired(cx) {
            return Poll::Ready(Some(Err(timed_out())));
        }
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let code = match answer {
        None => tonic::Code::Cancelled,
        Some(answer) => send(&mut respond, answer),
    };
    if let Some(call) = call {
        call.finish(code);
    }
}

/// Sends an answer; the code the call's record ends with.
fn send(respond: &mut SendResponse<Bytes>, answer: Result<Bytes, tonic::Status>) -> tonic::Code {
    match answer {
        Ok(framed) => match send_ok(respond, framed) {
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
    }
}

/// Answers the call from its message, or says the handler sends it the
/// service path. The decision and the answer run inside the call's span,
/// entered as soon as its record starts.
fn answer(
    handler: &dyn DirectUnary,
    message: &[u8],
    parts: &http::request::Parts,
    calls: &DirectCalls,
    respond: &mut SendResponse<Bytes>,
) -> Answered {
    let mut call: Option<DirectCall> = None;
    let mut entered: Option<tracing::span::EnteredSpan> = None;
    let mut begin = || {
        let started =
            calls
                .layer
                .start_direct(parts.uri.path(), &parts.headers, &parts.extensions)?;
        entered = Some(started.span().clone().entered());
        let caller = started.caller().clone();
        call = Some(started);
        Ok(caller)
    };
    let Some(answer) = handler.answer(message, &mut begin) else {
        return Answered::Declined;
    };
    let answer = match answer {
        Answer::Now(answer) => answer,
        Answer::Later(later) => {
            drop(entered);
            return Answered::Later(later, call);
        }
    };
    let code = send(respond, answer);
    if let Some(call) = call {
        call.finish(code);
    }
    drop(entered);
    Answered::Done
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
