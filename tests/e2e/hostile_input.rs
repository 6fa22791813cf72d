//! Input that used to slip past the checks: a 10 KB limit name (echoed whole
//! into a trailer too large for the client), an empty one, undecodable
//! request bytes, a Watch prefix no key can match, durations beyond
//! protobuf's range, a cache value larger than any response can carry. Each
//! gets INVALID_ARGUMENT naming the problem, on both transports.

use bytes::{Buf, BufMut};
use gantry::config::Transport;
use gantry::proto::gantry::v1 as pb;
use pb::cache_client::CacheClient;
use pb::rate_limiter_client::RateLimiterClient;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use crate::common::{TestServer, assert_status, run_gantry};

/// Sends and receives raw message bytes, so a test can send what no
/// generated client would.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

async fn raw_call(channel: &Channel, path: &'static str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .expect_err("the server refuses the bytes")
}

fn acquire(limit: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        limit: limit.into(),
        key: "k".into(),
        ..Default::default()
    }
}

fn servers() -> [Transport; 2] {
    [Transport::H2, Transport::Hyper]
}

#[tokio::test]
async fn limit_names_are_bounded_and_required() {
    for transport in servers() {
        let server = TestServer::start_with(|c| c.server.transport = transport).await;
        let mut rl = RateLimiterClient::new(server.channel.clone());
        let long = "x".repeat(10_000);
        let status = rl.acquire(acquire(&long)).await.unwrap_err();
        assert_status(
            status,
            Code::InvalidArgument,
            &["limit: 10000 bytes is longer than the limit of 256"],
        );
        let status = rl.acquire(acquire("")).await.unwrap_err();
        assert_status(status, Code::InvalidArgument, &["limit: must not be empty"]);
        let status = rl
            .acquire_batch(pb::AcquireBatchRequest {
                requests: vec![acquire(&long), acquire("api")],
                all_or_nothing: false,
            })
            .await
            .unwrap_err();
        assert_status(
            status,
            Code::InvalidArgument,
            &["requests[0].limit: 10000 bytes is longer"],
        );
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument() {
    for transport in servers() {
        let server = TestServer::start_with(|c| c.server.transport = transport).await;
        // Garbage: a field header with an impossible wire type.
        let garbage = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
        // `limit` (field 1, a string) that is not UTF-8.
        let bad_utf8 = vec![0x0a, 0x02, 0xc3, 0x28];
        let calls = [
            ("/gantry.v1.RateLimiter/Acquire", true),
            ("/gantry.v1.RateLimiter/AcquireBatch", false),
            (
                "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
                true,
            ),
            ("/gantry.v1.Cache/Get", true),
            (
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                false,
            ),
        ];
        for (path, first_field_is_a_string) in calls {
            let mut bodies = vec![garbage.clone()];
            if first_field_is_a_string {
                bodies.push(bad_utf8.clone());
            }
            for body in bodies {
                let status = raw_call(&server.channel, path, body).await;
                assert_status(
                    status,
                    Code::InvalidArgument,
                    &["failed to decode Protobuf message"],
                );
            }
        }
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_watch_prefix_longer_than_any_key_is_refused() {
    let server = TestServer::start_with(|c| c.cache.max_key_bytes = 64).await;
    let mut cache = CacheClient::new(server.channel.clone());
    let status = cache
        .watch(pb::WatchRequest {
            namespace: "ns".into(),
            key_prefix: "p".repeat(1_000_000),
            include_values: false,
        })
        .await
        .unwrap_err();
    assert_status(
        status,
        Code::InvalidArgument,
        &["key_prefix: 1000000 bytes is longer than the limit of 64 (cache.max_key_bytes)"],
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn durations_beyond_protobufs_range_are_refused() {
    let server = TestServer::start().await;
    let mut rl = RateLimiterClient::new(server.channel.clone());
    let status = rl
        .acquire(pb::AcquireRequest {
            max_wait: Some(prost_types::Duration {
                seconds: 315_576_000_001,
                nanos: 0,
            }),
            ..acquire("api")
        })
        .await
        .unwrap_err();
    assert_status(
        status,
        Code::InvalidArgument,
        &["max_wait: 315576000001s is beyond protobuf's Duration range"],
    );
    let mut cache = CacheClient::new(server.channel.clone());
    let status = cache
        .put(pb::PutRequest {
            namespace: "ns".into(),
            key: "k".into(),
            value: b"v".to_vec().into(),
            ttl: Some(prost_types::Duration {
                seconds: i64::MAX,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        status,
        Code::InvalidArgument,
        &["ttl:", "beyond protobuf's Duration range"],
    );
    server.stop().await.unwrap();
}

#[test]
fn a_cache_value_larger_than_a_response_can_carry_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gantry.toml"),
        "[server]\nmax_message_bytes = 1048576\n\n[cache]\nmax_value_bytes = 1048576\n",
    )
    .unwrap();
    let (code, _, stderr) = run_gantry(&["check-config", "gantry.toml"], &[], dir.path());
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("cache.max_value_bytes"), "{stderr}");
    assert!(stderr.contains("server.max_message_bytes"), "{stderr}");
}
