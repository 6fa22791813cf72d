//! One HTTP/2 stream (one gRPC call): the request body as an `http_body::Body`
//! for tonic, and the service's response written back with HTTP/2 flow control.
//! The shape follows hyper's own h2 server (`H2Stream`, `PipeToSendStream`).

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body, Frame};

use tower::BoxError;

/// The request body as tonic reads it; received bytes are handed back to the
/// flow-control window as they are read, so a client sends no faster than the
/// call consumes.
pub struct IncomingBody {
    /// Bytes already read off the stream (by a direct call that then handed
    /// the call to the service path), given out first.
    head: Option<Bytes>,
    recv: RecvStream,
    data_done: bool,
}

impl IncomingBody {
    pub fn new(recv: RecvStream) -> Self {
        Self::after(Bytes::new(), recv)
    }

    /// A body whose first bytes, `head`, were already read from `recv`.
    pub fn after(head: Bytes, recv: RecvStream) -> Self {
        Self {
            head: (!head.is_empty()).then_some(head),
            data_done: recv.is_end_stream(),
            recv,
        }
    }
}

impl Body for IncomingBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if !self.data_done {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Fails only once the stream is gone, which the next poll reports.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => self.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.recv.is_end_stream()
    }
}

/// Why a call ended without a complete answer (logged at debug: clients
/// cancelling calls is normal).
#[derive(Debug, thiserror::Error)]
pub enum StreamEnd {
    /// The client reset the stream (cancelled the call, or its deadline passed).
    #[error("the client reset the stream ({0})")]
    Reset(h2::Reason),
    /// The connection failed while answering.
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    /// The response body failed; the stream was reset.
    #[error("response body: {0}")]
    Body(BoxError),
}

/// A call's deadline whose timer is set only once the call has to wait: most
/// calls answer at their first poll, and a timer costs a lock.
pub struct LazyDeadline {
    at: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LazyDeadline {
    /// `within` from now (the call's arrival).
    pub fn new(within: Duration) -> Self {
        Self {
            at: tokio::time::Instant::now() + within,
            sleep: None,
        }
    }

    /// Whether the deadline has passed; registers `cx` to be woken when it does.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let at = self.at;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// The answer to a call that outlived its deadline: the one tonic's own server gives.
pub fn timed_out() -> tonic::Status {
    tonic::Status::cancelled("Timeout expired")
}

/// Runs one call: the service's future (dropped when the client resets the
/// stream or the deadline passes, which cancels the call), then the response.
pub async fn serve<F, B>(
    call: F,
    mut respond: SendResponse<Bytes>,
    mut deadline: LazyDeadline,
) -> Result<(), StreamEnd>
where
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError> + Send,
{
    let response = {
        let mut call = std::pin::pin!(call);
        poll_fn(|cx| {
            if let Poll::Ready(response) = call.as_mut().poll(cx) {
                return Poll::Ready(Ok(response));
            }
            if deadline.poll_expired(cx) {
                return Poll::Ready(Err(None));
            }
            match respond.poll_reset(cx) {
                Poll::Ready(Ok(reason)) => Poll::Ready(Err(Some(StreamEnd::Reset(reason)))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(Some(StreamEnd::H2(e)))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    };
    let response = match response {
        Ok(response) => response,
        Err(Some(end)) => return Err(end),
        Err(None) => {
            respond.send_response(timed_out().into_http::<()>(), true)?;
            return Ok(());
        }
    };
    let (head, body) = response.into_parts();
    let head = Response::from_parts(head, ());
    if body.is_end_stream() {
        respond.send_response(head, true)?;
        return Ok(());
    }
    let send = respond.send_response(head, false)?;
    pipe(body, send).await
}

/// Writes the body's frames to the stream, waiting for send capacity before
/// pulling the next chunk, so a slow reader holds back a streaming call
/// instead of growing a buffer here.
async fn pipe<B>(body: B, mut send: SendStream<Bytes>) -> Result<(), StreamEnd>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError> + Send,
{
    let mut body = std::pin::pin!(body);
    loop {
        let frame = poll_fn(|cx| {
            if let Poll::Ready(reason) = send.poll_reset(cx) {
                return Poll::Ready(Err(match reason {
                    Ok(reason) => StreamEnd::Reset(reason),
                    Err(e) => StreamEnd::H2(e),
                }));
            }
            body.as_mut().poll_frame(cx).map(Ok)
        })
        .await?;
        let frame = match frame {
            None => {
                send.send_data(Bytes::new(), true)?;
                return Ok(());
            }
            Some(Err(e)) => {
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return Err(StreamEnd::Body(e.into()));
            }
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                if !data.is_empty() {
                    // A minimal claim, as hyper makes: h2 raises it to what is buffered.
                    send.reserve_capacity(1);
                    while send.capacity() == 0 {
                        match poll_fn(|cx| send.poll_capacity(cx)).await {
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return Err(e.into()),
                            None => return Err(StreamEnd::Reset(h2::Reason::CANCEL)),
                        }
                    }
                }
                send.send_data(data, end)?;
                if end {
                    return Ok(());
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            send.reserve_capacity(0);
            send.send_trailers(trailers)?;
            return Ok(());
        }
    }
}

/// The request as the service sees it.
pub fn request(request: Request<RecvStream>) -> Request<tonic::body::Body> {
    request.map(|recv| tonic::body::Body::new(IncomingBody::new(recv)))
}
