//! HTTP/2 abuse against gantry's own transport, sent as raw frames: rapid
//! reset in both shapes, a CONTINUATION flood, a huge header list, streams
//! beyond the advertised limit and a connection that never says hello. Each
//! test asserts the server deals with the offender and keeps answering a
//! second, well-behaved client.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{TestServer, http_get, metric_value};

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let bytes = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix, the prefix byte's other bits `flags`.
fn hpack_int(value: usize, n: u8, flags: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

fn hpack_string(s: &[u8], out: &mut Vec<u8>) {
    hpack_int(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// A literal header without indexing: a static-table name, or a new one.
fn header(out: &mut Vec<u8>, name_index: usize, name: &str, value: &[u8]) {
    if name_index == 0 {
        out.push(0);
        hpack_string(name.as_bytes(), out);
    } else {
        hpack_int(name_index, 4, 0, out);
    }
    hpack_string(value, out);
}

/// The header block of a gRPC call to `path`, plus `extra` bytes of padding headers.
fn grpc_headers(path: &str, extra: usize) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    header(&mut block, 4, ":path", path.as_bytes());
    header(&mut block, 1, ":authority", b"localhost");
    header(&mut block, 31, "content-type", b"application/grpc");
    header(&mut block, 0, "te", b"trailers");
    let mut i = 0;
    while extra > 0 && block.len() < extra {
        header(&mut block, 0, &format!("x-pad-{i}"), &[b'a'; 1000]);
        i += 1;
    }
    block
}

/// A raw HTTP/2 connection: frames written by hand, frames read on a task.
struct Raw {
    write: OwnedWriteHalf,
    frames: mpsc::UnboundedReceiver<Frame>,
}

impl Raw {
    /// Connects and, with `hello`, sends the preface and an empty SETTINGS.
    async fn connect(addr: std::net::SocketAddr, hello: bool) -> Self {
        let socket = TcpStream::connect(addr).await.unwrap();
        socket.set_nodelay(true).unwrap();
        let (mut read, write) = socket.into_split();
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut head = [0u8; 9];
            while read.read_exact(&mut head).await.is_ok() {
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0; len];
                if read.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let frame = Frame {
                    kind: head[3],
                    flags: head[4],
                    stream,
                    payload,
                };
                if tx.send(frame).is_err() {
                    break;
                }
            }
            // Dropping `tx` tells the reader the connection closed.
        });
        let mut raw = Self { write, frames };
        if hello {
            raw.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            raw.send(&frame(SETTINGS, 0, 0, &[])).await;
        }
        raw
    }

    /// Writes bytes; false once the server has closed the connection.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.write.write_all(bytes).await.is_ok()
    }

    /// Waits for the server's SETTINGS and acknowledges it.
    async fn settle(&mut self) {
        loop {
            let got = self
                .next(Duration::from_secs(5))
                .await
                .expect("server SETTINGS");
            if got.kind == SETTINGS && got.flags & ACK == 0 {
                self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                return;
            }
        }
    }

    async fn next(&mut self, within: Duration) -> Option<Frame> {
        tokio::time::timeout(within, self.frames.recv())
            .await
            .ok()
            .flatten()
    }

    /// Frames until the connection closes or `within` passes; true if it closed.
    async fn drain(&mut self, within: Duration, seen: &mut Vec<Frame>) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.frames.recv()).await {
                Ok(Some(frame)) => seen.push(frame),
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}

fn goaway_code(seen: &[Frame]) -> Option<u32> {
    seen.iter()
        .find(|f| f.kind == GOAWAY)
        .and_then(Frame::error_code)
}

/// A second client on its own connection still gets answers.
async fn still_serves(server: &TestServer) {
    let channel = crate::common::connect(server.grpc).await;
    let answer = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("a well-behaved client is still served");
    assert_eq!(answer.into_inner().status, 1);
}

const ACQUIRE: &str = "/gantry.v1.RateLimiter/Acquire";

/// Sends rounds of `batch` HEADERS (a body that never comes) then `batch`
/// RST_STREAMs until the server closes the connection; returns the streams
/// reset and what the server sent.
async fn rapid_reset(server: &TestServer, batch: u32) -> (u32, Vec<Frame>) {
    let mut raw = Raw::connect(server.grpc, true).await;
    raw.settle().await;
    let block = grpc_headers(ACQUIRE, 0);
    let mut next_id = 1u32;
    let mut reset = 0;
    let mut seen = Vec::new();
    while reset < 100_000 {
        let ids: Vec<u32> = (0..batch).map(|i| next_id + 2 * i).collect();
        next_id += 2 * batch;
        let mut bytes = Vec::new();
        for &id in &ids {
            bytes.extend(frame(HEADERS, END_HEADERS, id, &block));
        }
        if !raw.send(&bytes).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut bytes = Vec::new();
        for &id in &ids {
            bytes.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        if !raw.send(&bytes).await {
            break;
        }
        reset += batch;
        while let Ok(frame) = raw.frames.try_recv() {
            seen.push(frame);
        }
        if goaway_code(&seen).is_some() {
            break;
        }
    }
    raw.drain(Duration::from_secs(2), &mut seen).await;
    (reset, seen)
}

#[tokio::test]
async fn rapid_reset_in_batches_is_cut_off() {
    let server = TestServer::start().await;
    let (reset, seen) = rapid_reset(&server, 200).await;
    assert_eq!(goaway_code(&seen), Some(ENHANCE_YOUR_CALM), "{seen:?}");
    assert!(
        reset <= 2_000,
        "{reset} streams reset before the connection closed"
    );
    still_serves(&server).await;
    let (_, text) = http_get(server.metrics, "/metrics").await;
    assert!(
        metric_value(&text, "gantry_grpc_connections_abusive_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn rapid_reset_one_by_one_is_cut_off() {
    let server = TestServer::start().await;
    let (reset, seen) = rapid_reset(&server, 1).await;
    assert_eq!(goaway_code(&seen), Some(ENHANCE_YOUR_CALM), "{seen:?}");
    assert!(
        reset <= 2_000,
        "{reset} streams reset before the connection closed"
    );
    still_serves(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn streams_beyond_the_advertised_limit_are_refused() {
    let server = TestServer::start_with(|c| c.server.max_concurrent_streams = 4).await;
    let mut raw = Raw::connect(server.grpc, true).await;
    raw.settle().await;
    let block = grpc_headers(ACQUIRE, 0);
    let mut bytes = Vec::new();
    for id in [1u32, 3, 5, 7, 9] {
        bytes.extend(frame(HEADERS, END_HEADERS, id, &block));
    }
    raw.send(&bytes).await;
    let mut seen = Vec::new();
    raw.drain(Duration::from_millis(500), &mut seen).await;
    let refused: Vec<u32> = seen
        .iter()
        .filter(|f| f.kind == RST_STREAM && f.error_code() == Some(REFUSED_STREAM))
        .map(|f| f.stream)
        .collect();
    assert_eq!(refused, vec![9], "{seen:?}");
    // The four within the limit are still open: one completes normally.
    let mut message = vec![0u8, 0, 0, 0, 0];
    let request = gantry::proto::gantry::v1::AcquireRequest {
        limit: "nope".into(),
        key: "k".into(),
        ..Default::default()
    };
    let body = prost::Message::encode_to_vec(&request);
    message[1..5].copy_from_slice(&(body.len() as u32).to_be_bytes());
    message.extend(body);
    raw.send(&frame(DATA, END_STREAM, 1, &message)).await;
    let mut seen = Vec::new();
    raw.drain(Duration::from_millis(500), &mut seen).await;
    assert!(
        seen.iter().any(|f| f.kind == HEADERS && f.stream == 1),
        "stream 1 was answered: {seen:?}"
    );
    still_serves(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.grpc, true).await;
    raw.settle().await;
    let block = grpc_headers(ACQUIRE, 0);
    raw.send(&frame(HEADERS, 0, 1, &block)).await;
    let mut chunk = Vec::new();
    header(&mut chunk, 0, "x-flood", &[b'b'; 4000]);
    let started = Instant::now();
    let mut sent = 0;
    while sent < 10_000 && started.elapsed() < Duration::from_secs(10) {
        if !raw.send(&frame(CONTINUATION, 0, 1, &chunk)).await {
            break;
        }
        sent += 1;
    }
    let mut seen = Vec::new();
    let closed = raw.drain(Duration::from_secs(5), &mut seen).await;
    assert!(
        closed || goaway_code(&seen).is_some(),
        "the flooding connection is closed ({sent} CONTINUATION frames sent): {seen:?}"
    );
    assert!(
        sent < 10_000,
        "the server kept reading a CONTINUATION flood"
    );
    still_serves(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_huge_header_list_is_refused() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.grpc, true).await;
    raw.settle().await;
    // 64 KiB of headers, four times the advertised limit, in one HEADERS and CONTINUATIONs.
    let block = grpc_headers(ACQUIRE, 64 * 1024);
    let mut pieces = block.chunks(16 * 1024).peekable();
    let first = pieces.next().unwrap();
    let mut bytes = frame(HEADERS, 0, 1, first);
    while let Some(piece) = pieces.next() {
        let flags = if pieces.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        bytes.extend(frame(CONTINUATION, flags, 1, piece));
    }
    raw.send(&bytes).await;
    let mut seen = Vec::new();
    let closed = raw.drain(Duration::from_secs(2), &mut seen).await;
    let refused = seen.iter().any(|f| {
        (f.kind == RST_STREAM && f.stream == 1)
            || f.kind == GOAWAY
            || (f.kind == HEADERS && f.stream == 1)
    });
    assert!(
        closed || refused,
        "the oversized request was refused: {seen:?}"
    );
    // No call was made with those headers.
    let (_, text) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &text,
            "grpc_server_started_total{grpc_service=\"gantry.v1.RateLimiter\",grpc_method=\"Acquire\"}"
        ),
        Some(0.0),
        "{text}"
    );
    still_serves(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_that_never_says_hello_is_dropped() {
    let server = TestServer::start().await;
    let mut silent = Raw::connect(server.grpc, false).await;
    // Others are served meanwhile.
    still_serves(&server).await;
    let mut seen = Vec::new();
    let closed = silent.drain(Duration::from_secs(15), &mut seen).await;
    assert!(
        closed,
        "the silent connection is closed by the handshake timeout"
    );
    still_serves(&server).await;
    server.stop().await.unwrap();
}
