//! `--wire raw`: unary calls written straight onto HTTP/2 with the `h2`
//! crate, from requests encoded before the run (one per key), so the load
//! generator costs little CPU beside the server it measures. tonic's client
//! (`--wire tonic`) spends about as much CPU per call as gantry does to
//! answer it (a buffer task per channel, encoding every request, the tower
//! stack); on a two-core machine shared with the server and its store that
//! caps what the run can show. This is h2load's approach — replaying encoded
//! requests — with a different request per key, which h2load cannot do.

use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use http::header::{CONTENT_TYPE, HeaderMap, TE};
use rand::rngs::SmallRng;
use tokio::net::TcpStream;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;

use super::args::{LoadArgs, ScenarioName};
use super::keys::KeyPicker;
use super::scenario::should_rate_limit;

/// One request is encoded per key, so the key count is bounded.
pub const MAX_KEYS: u64 = 1_000_000;

/// One HTTP/2 connection; its clones share it.
#[derive(Clone)]
pub struct RawLink {
    send: SendRequest<Bytes>,
}

/// Opens an HTTP/2 connection (prior knowledge, as gRPC without TLS) and
/// drives it in a task of its own.
pub async fn connect(target: &str) -> Result<RawLink, String> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connecting to {target}: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY on {target}: {e}"))?;
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake(tcp)
        .await
        .map_err(|e| format!("HTTP/2 handshake with {target}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(RawLink { send })
}

/// What a raw run sends: the method's URI and one encoded request per key.
pub struct Requests {
    uri: http::Uri,
    bodies: Vec<Bytes>,
}

impl Requests {
    /// The scenario's requests, or why it cannot run on the raw wire.
    pub fn for_scenario(args: &LoadArgs) -> Result<Arc<Self>, String> {
        let (path, bodies) = match args.scenario {
            ScenarioName::Health => (
                "/grpc.health.v1.Health/Check",
                vec![frame(&HealthCheckRequest {
                    service: String::new(),
                })],
            ),
            ScenarioName::EnvoyRls => {
                if args.keys > MAX_KEYS {
                    return Err(format!(
                        "--wire raw encodes one request per key: at most {MAX_KEYS} keys, not {}",
                        args.keys
                    ));
                }
                let bodies = (0..args.keys.max(1))
                    .map(|i| frame(&should_rate_limit(&args.name, KeyPicker::nth(i))))
                    .collect();
                (
                    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
                    bodies,
                )
            }
            other => {
                return Err(format!(
                    "--wire raw runs health and envoy-rls; {} needs --wire tonic",
                    clap::ValueEnum::to_possible_value(&other)
                        .map(|v| v.get_name().to_string())
                        .unwrap_or_default()
                ));
            }
        };
        let uri = format!("http://{}{path}", args.target)
            .parse()
            .map_err(|e| format!("--target {}: {e}", args.target))?;
        Ok(Arc::new(Self { uri, bodies }))
    }
}

/// gRPC's length-prefixed message: no compression flag, big-endian length.
fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(5 + len);
    out.push(0);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    message.encode_raw(&mut out);
    Bytes::from(out)
}

/// One in-flight slot of a raw run: sends a key's request, reads the answer
/// to its trailers.
pub struct RawCaller {
    link: RawLink,
    requests: Arc<Requests>,
    keys: KeyPicker,
}

impl RawCaller {
    pub fn new(link: RawLink, requests: Arc<Requests>, keys: KeyPicker) -> Self {
        Self {
            link,
            requests,
            keys,
        }
    }

    pub async fn call(&mut self, rng: &mut SmallRng) -> Result<u64, Status> {
        let bodies = &self.requests.bodies;
        let body = bodies[(self.keys.index(rng) % bodies.len() as u64) as usize].clone();
        let request = http::Request::post(self.requests.uri.clone())
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .body(())
            .map_err(|e| Status::internal(format!("building the request: {e}")))?;
        std::future::poll_fn(|cx| self.link.send.poll_ready(cx))
            .await
            .map_err(from_h2)?;
        let (response, mut stream) = self
            .link
            .send
            .send_request(request, false)
            .map_err(from_h2)?;
        stream.send_data(body, true).map_err(from_h2)?;
        let response = response.await.map_err(from_h2)?;
        if response.status() != http::StatusCode::OK {
            return Err(Status::unknown(format!("HTTP {}", response.status())));
        }
        // An error without a message comes as headers alone ("trailers-only").
        if let Some(status) = grpc_status(response.headers()) {
            return status.map(|()| 1);
        }
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(from_h2)?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.map_err(from_h2)?;
        match trailers.as_ref().and_then(grpc_status) {
            Some(status) => status.map(|()| 1),
            None => Err(Status::internal("the answer ended without grpc-status")),
        }
    }
}

/// The call's outcome from `grpc-status` (and `grpc-message`), if present.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), Status>> {
    let code = headers.get("grpc-status")?;
    let code = code
        .to_str()
        .ok()
        .and_then(|c| c.parse::<i32>().ok())
        .map(Code::from_i32)
        .unwrap_or(Code::Unknown);
    if code == Code::Ok {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default();
    Some(Err(Status::new(code, message.to_string())))
}

/// A transport failure, counted as gRPC counts one.
fn from_h2(e: h2::Error) -> Status {
    Status::unavailable(format!("HTTP/2: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_the_message_behind_its_length() {
        let message = should_rate_limit("bench", KeyPicker::nth(42));
        let framed = frame(&message);
        assert_eq!(framed[0], 0);
        let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
        assert_eq!(len, framed.len() - 5);
        let decoded = <envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest as prost::Message>::decode(
            &framed[5..],
        )
        .unwrap();
        assert_eq!(decoded, message);
    }

    #[test]
    fn grpc_status_reads_codes_and_messages() {
        let mut headers = HeaderMap::new();
        assert!(grpc_status(&headers).is_none());
        headers.insert("grpc-status", "0".parse().unwrap());
        assert!(matches!(grpc_status(&headers), Some(Ok(()))));
        headers.insert("grpc-status", "3".parse().unwrap());
        headers.insert("grpc-message", "domain: must not be empty".parse().unwrap());
        let status = grpc_status(&headers).unwrap().unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "domain: must not be empty");
        headers.insert("grpc-status", "nonsense".parse().unwrap());
        assert_eq!(
            grpc_status(&headers).unwrap().unwrap_err().code(),
            Code::Unknown
        );
    }
}
