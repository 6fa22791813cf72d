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

async fn server(transport: Transport, request_timeout: Duration) -> TestServer {
    TestServer::start_with(move |c| {
        c.server.transport = transport;
        c.server.request_timeout = HumanDuration::from_millis(request_timeout.as_millis() as u64);
        c.leases.pools = vec![one_slot_pool()];
        c.ratelimit.limits = vec![gantry::config::LimitConfig {
            name: "api".into(),
            rate: 1,
            period: HumanDuration::from_secs(3600),
            burst: Some(100),
            scope: gantry::config::LimitScopeConfig::PerKey,
            overrides: vec![],
        }];
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
async fn h2_transport_calls_streams_and_large_bodies() {
    calls_streams_and_large_bodies(Transport::H2).await;
}

#[tokio::test]
async fn hyper_transport_calls_streams_and_large_bodies() {
    calls_streams_and_large_bodies(Transport::Hyper).await;
}

#[tokio::test]
async fn h2_transport_timeouts_and_cancellation() {
    timeouts_and_cancellation(Transport::H2).await;
}

#[tokio::test]
async fn hyper_transport_timeouts_and_cancellation() {
    timeouts_and_cancellation(Transport::Hyper).await;
}
