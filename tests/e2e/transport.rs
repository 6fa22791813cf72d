//! Both HTTP/2 servers (`server.transport = "h2"`, gantry's own, and
//! `"hyper"`, tonic's): the same behaviour at the protocol's edges — unary and
//! streaming calls, responses larger than a flow-control window, unknown
//! services, the server's request timeout, a client that cancels, many calls
//! at once on one connection, and a graceful shutdown that lets a call finish.
//! (Every other e2e test runs on the default, `h2`.)

use std::time::{Duration, Instant};

use bytes::Bytes;
use gantry::config::{HumanDuration, PoolConfig, Transport};
use gantry::proto::gantry::v1 as pb;
use pb::cache_client::CacheClient;
use pb::leases_client::LeasesClient;
use pb::rate_limiter_client::RateLimiterClient;
use tonic::Code;

use crate::common::{TestServer, assert_status};

fn one_slot_pool() -> PoolConfig {
    PoolConfig {
        name: "db".into(),
        capacity: 1,
        max_per_holder: None,
        default_ttl: HumanDuration::from_secs(30),
        max_ttl: HumanDuration::from_secs(120),
    }
}

fn lease(holder: &str, max_wait: Option<Duration>) -> pb::AcquireLeaseRequest {
    pb::AcquireLeaseRequest {
        pool: "db".into(),
        holder: holder.into(),
        count: 1,
        max_wait: max_wait.map(|d| prost_types::Duration {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }),
        ..Default::default()
    }
}

/// "api": 100 tokens per key, refilling one an hour.
fn api_limit() -> gantry::config::LimitConfig {
    gantry::config::LimitConfig {
        name: "api".into(),
        rate: 1,
        period: HumanDuration::from_secs(3600),
        burst: Some(100),
        scope: gantry::config::LimitScopeConfig::PerKey,
        overrides: vec![],
    }
}

async fn server(transport: Transport, request_timeout: Duration) -> TestServer {
    TestServer::start_with(move |c| {
        c.server.transport = transport;
        c.server.request_timeout = HumanDuration::from_millis(request_timeout.as_millis() as u64);
        c.leases.pools = vec![one_slot_pool()];
        c.ratelimit.limits = vec![api_limit()];
    })
    .await
}

async fn calls_streams_and_large_bodies(transport: Transport) {
    let server = server(transport, Duration::from_secs(60)).await;
    let mut cache = CacheClient::new(server.channel.clone());

    // A server stream, then a value of 1 MiB: both ways across several
    // flow-control windows (64 KiB by default on the client).
    let mut watch = cache
        .watch(pb::WatchRequest {
            namespace: "t".into(),
            key_prefix: "k".into(),
            include_values: false,
        })
        .await
        .unwrap()
        .into_inner();
    let value: Bytes = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    cache
        .put(pb::PutRequest {
            namespace: "t".into(),
            key: "k".into(),
            value: value.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = cache
        .get(pb::GetRequest {
            namespace: "t".into(),
            key: "k".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.found, "{transport:?}");
    assert_eq!(got.value, value, "{transport:?}");
    let event = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a watch event")
        .unwrap()
        .unwrap();
    assert_eq!(event.key, "k");

    // An unknown service.
    let mut unknown = tonic::client::Grpc::new(server.channel.clone());
    unknown.ready().await.unwrap();
    let status = unknown
        .unary::<_, (), _>(
            tonic::Request::new(()),
            http::uri::PathAndQuery::from_static("/nowhere.v1.Nothing/Call"),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unimplemented,
        "{transport:?}: {status:?}"
    );

    // 500 calls at once on one connection: every one answered, and exactly
    // the bucket's 100 tokens granted.
    let mut calls = Vec::new();
    for _ in 0..500 {
        let mut limiter = RateLimiterClient::new(server.channel.clone());
        calls.push(tokio::spawn(async move {
            limiter
                .acquire(pb::AcquireRequest {
                    limit: "api".into(),
                    key: "one".into(),
                    tokens: 1,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .allowed
        }));
    }
    let mut granted = 0;
    for call in calls {
        granted += u32::from(call.await.unwrap());
    }
    assert_eq!(granted, 100, "{transport:?}");

    if transport == Transport::H2 {
        let (_, text) = crate::common::http_get(server.metrics, "/metrics").await;
        let open = crate::common::metric_value(&text, "gantry_grpc_connections");
        let accepted = crate::common::metric_value(&text, "gantry_grpc_connections_accepted_total");
        assert!(open.is_some_and(|n| n >= 1.0), "{text}");
        assert!(accepted.is_some_and(|n| n >= 1.0), "{text}");
        assert_eq!(
            crate::common::metric_value(&text, "gantry_grpc_connection_errors_total"),
            Some(0.0)
        );
    }
    server.stop().await.unwrap();
}

async fn timeouts_and_cancellation(transport: Transport) {
    let server = server(transport, Duration::from_millis(300)).await;
    let mut leases = LeasesClient::new(server.channel.clone());
    let held = leases
        .acquire(lease("first", None))
        .await
        .unwrap()
        .into_inner();
    assert!(held.granted);

    // The server's request_timeout ends a wait that asked for longer.
    let started = Instant::now();
    let status = leases
        .acquire(lease("second", Some(Duration::from_secs(20))))
        .await
        .unwrap_err();
    assert_status(status, Code::Cancelled, &["Timeout expired"]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{transport:?}: {took:?}"
    );

    // A client that gives up leaves the queue: its call is cancelled on the
    // server, and the pool shows no waiter.
    let mut waiter = LeasesClient::new(server.channel.clone());
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        waiter.acquire(lease("third", Some(Duration::from_millis(250)))),
    )
    .await;
    assert!(gave_up.is_err(), "{transport:?}: the wait should still run");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = leases
            .pool_status(pb::PoolStatusRequest { pool: "db".into() })
            .await
            .unwrap()
            .into_inner();
        if status.waiting == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{transport:?}: waiter still queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A call running at shutdown finishes: shutdown waits for it.
    let mut last = LeasesClient::new(server.channel.clone());
    let running = tokio::spawn(async move {
        last.acquire(lease("fourth", Some(Duration::from_millis(200))))
            .await
            .map(|r| r.into_inner().granted)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.stop().await.unwrap();
    let answer = running.await.unwrap();
    assert_eq!(
        answer.ok(),
        Some(false),
        "{transport:?}: the wait ran out, answered"
    );
}

#[tokio::test]
async fn both_transports_serve_calls_streams_and_large_bodies() {
    for transport in [Transport::H2, Transport::Hyper] {
        calls_streams_and_large_bodies(transport).await;
    }
}

#[tokio::test]
async fn both_transports_honour_timeouts_cancellation_and_shutdown() {
    for transport in [Transport::H2, Transport::Hyper] {
        timeouts_and_cancellation(transport).await;
    }
}

/// Immediate Acquire calls answered directly by the transport give the same
/// answers and errors as the service path, are counted like any call, shed
/// when the server is full, and whatever they do not handle (compressed
/// requests, waits) still works through the service path.
#[tokio::test]
async fn direct_acquire_answers_exactly_as_the_service_path() {
    let direct = server(Transport::H2, Duration::from_secs(60)).await;
    let service = TestServer::start_with(|c| {
        c.server.direct_calls = false;
        c.ratelimit.limits = vec![api_limit()];
    })
    .await;
    let ask = |limit: &str, key: &str, tokens: u64, dry_run: bool| pb::AcquireRequest {
        limit: limit.into(),
        key: key.into(),
        tokens,
        dry_run,
        ..Default::default()
    };
    let cases = [
        ask("api", "k", 1, false),
        ask("api", "k", 30, false),
        ask("api", "k", 80, true),
        ask("api", "k", 80, false),
        ask("api", "k", 101, false),
        ask("api", "", 1, false),
        ask("nope", "k", 1, false),
        ask("api", &"x".repeat(100_000), 1, false),
        ask("api", "k", 0, false),
    ];
    let mut a = RateLimiterClient::new(direct.channel.clone());
    let mut b = RateLimiterClient::new(service.channel.clone());
    for case in cases {
        let left = a.acquire(case.clone()).await.map(|r| r.into_inner());
        let right = b.acquire(case.clone()).await.map(|r| r.into_inner());
        match (left, right) {
            (Ok(x), Ok(y)) => {
                // The clocks of two servers differ by microseconds; everything else is equal.
                assert_eq!(
                    (x.allowed, x.remaining, x.limit),
                    (y.allowed, y.remaining, y.limit),
                    "{}",
                    case.key.len()
                );
                assert_eq!(x.retry_after.is_some(), y.retry_after.is_some());
                assert_eq!(x.waited, y.waited);
            }
            (Err(x), Err(y)) => {
                assert_eq!((x.code(), x.message()), (y.code(), y.message()));
            }
            (x, y) => panic!("direct {x:?} against service {y:?}"),
        }
    }

    // A compressed request and a wait go the service path, and work.
    let mut gzip = RateLimiterClient::new(direct.channel.clone())
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let r = gzip
        .acquire(ask("api", "z", 1, false))
        .await
        .unwrap()
        .into_inner();
    assert!(r.allowed && r.remaining == 99);
    // About 70 tokens are left in "k", refilling one an hour: a wait for 80 runs out.
    let mut waits = ask("api", "k", 80, false);
    waits.max_wait = Some(prost_types::Duration {
        seconds: 0,
        nanos: 50_000_000,
    });
    let r = a.acquire(waits).await.unwrap().into_inner();
    assert!(!r.allowed, "the bucket is spent; the wait runs out");
    assert!(
        r.waited
            .is_some_and(|w| w.nanos >= 40_000_000 || w.seconds > 0)
    );

    // Counted like every call: 9 cases + 1 compressed + 1 wait on /Acquire.
    let (_, text) = crate::common::http_get(direct.metrics, "/metrics").await;
    let started = crate::common::metric_value(
        &text,
        r#"grpc_server_started_total{grpc_service="gantry.v1.RateLimiter",grpc_method="Acquire"}"#,
    );
    assert_eq!(started, Some(11.0), "{text}");
    direct.stop().await.unwrap();
    service.stop().await.unwrap();
}

#[tokio::test]
async fn direct_acquire_is_shed_when_the_server_is_full() {
    let server = TestServer::start_with(|c| {
        c.server.max_inflight = 1;
        c.leases.pools = vec![one_slot_pool()];
    })
    .await;
    let mut leases = LeasesClient::new(server.channel.clone());
    assert!(
        leases
            .acquire(lease("a", None))
            .await
            .unwrap()
            .into_inner()
            .granted
    );
    // One call in flight: a lease wait.
    let mut waiter = LeasesClient::new(server.channel.clone());
    let waiting = tokio::spawn(async move {
        waiter
            .acquire(lease("b", Some(Duration::from_millis(500))))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = RateLimiterClient::new(server.channel.clone())
        .acquire(pb::AcquireRequest {
            limit: "nope".into(),
            key: "k".into(),
            tokens: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        status,
        Code::ResourceExhausted,
        &["server.max_inflight = 1"],
    );
    assert!(waiting.await.unwrap().is_ok());
    server.stop().await.unwrap();
}

/// Batches answered directly give the same answers and errors as the
/// service path, including a response too large for the message limit.
#[tokio::test]
async fn direct_acquire_batch_answers_exactly_as_the_service_path() {
    let start = |direct: bool| {
        TestServer::start_with(move |c| {
            c.server.direct_calls = direct;
            c.server.max_message_bytes = 1024;
            c.ratelimit.limits = vec![api_limit()];
        })
    };
    let (direct, service) = (start(true).await, start(false).await);
    let item = |key: String, tokens: u64| pb::AcquireRequest {
        limit: "api".into(),
        key,
        tokens,
        ..Default::default()
    };
    let batch = |items: Vec<pb::AcquireRequest>, all_or_nothing: bool| pb::AcquireBatchRequest {
        requests: items,
        all_or_nothing,
    };
    let cases = [
        batch((0..10).map(|i| item(format!("k{i}"), 30)).collect(), false),
        batch(vec![item("k0".into(), 60), item("k1".into(), 80)], true),
        batch(vec![item("k2".into(), 1), item(String::new(), 1)], false),
        batch(vec![item("k3".into(), 101)], false),
        batch(Vec::new(), false),
        // A request under 1 KiB whose answer is over it.
        batch(
            (0..70).map(|i| item(format!("z{i:02}"), 1)).collect(),
            false,
        ),
    ];
    let mut a = RateLimiterClient::new(direct.channel.clone());
    let mut b = RateLimiterClient::new(service.channel.clone());
    for (n, case) in cases.into_iter().enumerate() {
        let left = a.acquire_batch(case.clone()).await.map(|r| r.into_inner());
        let right = b.acquire_batch(case).await.map(|r| r.into_inner());
        match (left, right) {
            (Ok(x), Ok(y)) => {
                let brief = |r: &pb::AcquireBatchResponse| {
                    r.responses
                        .iter()
                        .map(|o| (o.allowed, o.remaining, o.limit))
                        .collect::<Vec<_>>()
                };
                assert_eq!(brief(&x), brief(&y), "case {n}");
                assert_ne!(n, 5, "the last answer is over the limit");
            }
            (Err(x), Err(y)) => {
                assert_eq!((x.code(), x.message()), (y.code(), y.message()), "case {n}");
                if n == 5 {
                    assert_status(x, Code::ResourceExhausted, &["response message too large"]);
                }
            }
            (x, y) => panic!("case {n}: direct {x:?} against service {y:?}"),
        }
    }
    direct.stop().await.unwrap();
    service.stop().await.unwrap();
}

/// A client that opens an Acquire and never sends its body is answered when
/// the call's deadline passes, as any call would be (raw HTTP/2, since a
/// gRPC library always sends the body).
#[tokio::test]
async fn a_direct_call_without_a_body_ends_at_its_deadline() {
    let server = server(Transport::H2, Duration::from_millis(300)).await;
    let socket = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    let (mut client, connection) = h2::client::handshake(socket).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!(
        "http://{}/gantry.v1.RateLimiter/Acquire",
        server.grpc
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let started = Instant::now();
    let (response, _body) = client.send_request(request, false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("answered before the test's own timeout")
        .unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    let headers = response.headers();
    assert_eq!(headers["grpc-status"], "1", "{headers:?}");
    assert_eq!(headers["grpc-message"], "Timeout%20expired", "{headers:?}");
    // Counted like any call that ran out of time.
    let (_, text) = crate::common::http_get(server.metrics, "/metrics").await;
    let cancelled = crate::common::metric_value(
        &text,
        r#"grpc_server_handled_total{grpc_service="gantry.v1.RateLimiter",grpc_method="Acquire",grpc_code="Canceled"}"#,
    );
    assert_eq!(cancelled, Some(1.0), "{text}");
    server.stop().await.unwrap();
}

/// What one raw HTTP/2 gRPC call came to: the grpc-status (from the
/// trailers, or the headers of a trailers-only answer) and the body.
async fn raw_call(
    addr: std::net::SocketAddr,
    path: &str,
    frames: &[Bytes],
    pause: Duration,
) -> (String, Bytes) {
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(socket).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let mut response = std::pin::pin!(response);
    for frame in frames {
        send.send_data(frame.clone(), false).unwrap();
        // Not answered while the stream is open, as tonic's unary path does.
        let early = tokio::time::timeout(pause, response.as_mut()).await;
        assert!(early.is_err(), "answered before the request ended");
    }
    send.send_data(Bytes::new(), true).unwrap();
    let response = response.await.unwrap();
    if let Some(status) = response.headers().get("grpc-status") {
        return (status.to_str().unwrap().to_string(), Bytes::new());
    }
    let mut body = response.into_body();
    let mut data = bytes::BytesMut::new();
    while let Some(chunk) = body.data().await {
        data.extend_from_slice(&chunk.expect("the stream was not reset"));
    }
    let trailers = body.trailers().await.expect("the stream was not reset");
    let status = trailers.expect("trailers")["grpc-status"]
        .to_str()
        .unwrap()
        .to_string();
    (status, data.freeze())
}

/// A client that ends its request stream with an empty DATA frame after the
/// message (hyper's, under tonic, does) is answered after that frame, not
/// before it: an answer before it made h2 reset the stream, and the late
/// frame counted against the connection until, under load, h2 closed the
/// connection (ENHANCE_YOUR_CALM) and failed every call on it. Data after
/// the message gets the service path's answer (tonic answers the first).
#[tokio::test]
async fn a_direct_call_is_answered_once_its_request_ends() {
    let start = |direct: bool| {
        TestServer::start_with(move |c| {
            c.server.direct_calls = direct;
            c.ratelimit.limits = vec![api_limit()];
        })
    };
    let (direct, service) = (start(true).await, start(false).await);
    let batch = pb::AcquireBatchRequest {
        requests: vec![pb::AcquireRequest {
            limit: "api".into(),
            key: "k".into(),
            tokens: 1,
            ..Default::default()
        }],
        all_or_nothing: false,
    };
    let message = |m: &pb::AcquireBatchRequest| {
        let encoded = prost::Message::encode_to_vec(m);
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        framed.extend_from_slice(&encoded);
        Bytes::from(framed)
    };
    let path = "/gantry.v1.RateLimiter/AcquireBatch";
    let pause = Duration::from_millis(150);
    let (status, body) = raw_call(direct.grpc, path, &[message(&batch)], pause).await;
    assert_eq!(status, "0");
    let answer: pb::AcquireBatchResponse = prost::Message::decode(&body[5..]).unwrap();
    assert_eq!(answer.responses.len(), 1);
    assert!(answer.responses[0].allowed);
    assert_eq!(answer.responses[0].remaining, 99);

    // A second message after the first, in a frame of its own.
    let two = [message(&batch), message(&batch)];
    let on_direct = raw_call(direct.grpc, path, &two, pause).await;
    let on_service = raw_call(service.grpc, path, &two, pause).await;
    // tonic reads the first message and answers it.
    assert_eq!((on_direct.0.as_str(), on_service.0.as_str()), ("0", "0"));
    let decode =
        |body: &Bytes| -> pb::AcquireBatchResponse { prost::Message::decode(&body[5..]).unwrap() };
    assert_eq!(decode(&on_direct.1).responses[0].remaining, 98);
    assert_eq!(decode(&on_service.1).responses[0].remaining, 99);
    direct.stop().await.unwrap();
    service.stop().await.unwrap();
}
