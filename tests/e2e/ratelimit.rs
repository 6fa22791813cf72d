//! `gantry.v1.RateLimiter` and Envoy's `ShouldRateLimit` over real gRPC.

use std::time::Duration;

use gantry::config::{
    Config, EnvoyDescriptorConfig, EnvoyDomainConfig, EnvoyEntryConfig, EnvoyResponseHeaders,
    HumanDuration, LimitConfig, LimitOverrideConfig, LimitScopeConfig,
};
use gantry::proto::gantry::v1 as pb;
use pb::rate_limiter_client::RateLimiterClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::backends::Backend;
use crate::common::{TestServer, http_get, metric_value};

pub(crate) fn limit(name: &str, rate: u64, period: Duration, burst: u64) -> LimitConfig {
    LimitConfig {
        name: name.into(),
        rate,
        period: HumanDuration(period),
        burst: Some(burst),
        scope: LimitScopeConfig::PerKey,
        overrides: vec![],
    }
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

fn acquire(limit: &str, key: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        limit: limit.into(),
        key: key.into(),
        tokens: 1,
        ..Default::default()
    }
}

fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn std_duration(d: Option<prost_types::Duration>) -> Duration {
    let d = d.expect("duration set");
    Duration::new(d.seconds as u64, d.nanos as u32)
}

async fn start(
    backend: &Backend,
    limits: Vec<LimitConfig>,
    adjust: impl FnOnce(&mut Config),
) -> (TestServer, RateLimiterClient<Channel>) {
    let server = TestServer::start_on(backend, |c| {
        c.ratelimit.limits = limits;
        adjust(c);
    })
    .await;
    let client = RateLimiterClient::new(server.channel.clone());
    (server, client)
}

crate::on_every_backend! {
cluster async fn acquire_spends_the_burst_then_answers_exactly_when_to_retry(backend: Backend) {
    // A token every second: the calls' own time (a few Redis Cluster round
    // trips on a busy machine) stays far below one token's worth.
    let (server, mut rl) = start(&backend, vec![limit("api", 10, Duration::from_secs(10), 3)], |_| {}).await;
    for left in [2, 1, 0] {
        let r = rl
            .acquire(acquire("api", "alice"))
            .await
            .unwrap()
            .into_inner();
        assert!(r.allowed);
        assert_eq!((r.remaining, r.limit), (left, 3));
    }
    let denied = rl
        .acquire(acquire("api", "alice"))
        .await
        .unwrap()
        .into_inner();
    assert!(!denied.allowed);
    let retry = std_duration(denied.retry_after);
    assert!(
        retry <= Duration::from_millis(1000) && retry > Duration::from_millis(800),
        "{retry:?}"
    );
    let reset = std_duration(denied.reset_after);
    assert!(
        reset <= Duration::from_millis(3000) && reset > Duration::from_millis(2500),
        "{reset:?}"
    );
    // A dry run of another key consumes nothing.
    for _ in 0..5 {
        let r = rl
            .acquire(pb::AcquireRequest {
                dry_run: true,
                tokens: 3,
                ..acquire("api", "bob")
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.allowed);
        assert_eq!(r.remaining, 3);
    }
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn bad_requests_get_clear_errors_naming_field_and_value(backend: Backend) {
    let (server, mut rl) = start(&backend, vec![limit("api", 10, Duration::from_secs(1), 5)], |c| {
        c.ratelimit.max_key_bytes = 16
    })
    .await;
    let cases: Vec<(pb::AcquireRequest, Code, &str)> = vec![
        (
            acquire("nope", "k"),
            Code::NotFound,
            "limit \"nope\" not found",
        ),
        (
            acquire("api", ""),
            Code::InvalidArgument,
            "key: must not be empty",
        ),
        (
            pb::AcquireRequest {
                tokens: 6,
                ..acquire("api", "k")
            },
            Code::InvalidArgument,
            "tokens: 6 exceeds the burst of 5",
        ),
        (
            acquire("api", "a-key-that-is-far-too-long"),
            Code::InvalidArgument,
            "key: 26 bytes is longer than the limit of 16",
        ),
        (
            pb::AcquireRequest {
                max_wait: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..acquire("api", "k")
            },
            Code::InvalidArgument,
            "max_wait: must not be negative",
        ),
        (
            acquire("api", "x\u{1e}9/1/9"),
            Code::InvalidArgument,
            "U+001E",
        ),
    ];
    for (request, code, text) in cases {
        let status = rl.acquire(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
        assert!(
            status.message().contains(text),
            "{request:?}: {}",
            status.message()
        );
    }
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
cluster async fn batches_are_atomic_when_asked_and_bounded(backend: Backend) {
    let (server, mut rl) = start(
        &backend,
        vec![limit("a", 1, hour(), 5), limit("b", 1, hour(), 1)],
        |c| c.ratelimit.max_batch = 4,
    )
    .await;
    rl.acquire(acquire("b", "k")).await.unwrap(); // b is empty now
    let batch = pb::AcquireBatchRequest {
        requests: vec![
            pb::AcquireRequest {
                tokens: 3,
                ..acquire("a", "k")
            },
            acquire("b", "k"),
        ],
        all_or_nothing: true,
    };
    let out = rl
        .acquire_batch(batch)
        .await
        .unwrap()
        .into_inner()
        .responses;
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|r| !r.allowed));
    let a = rl
        .acquire(pb::AcquireRequest {
            dry_run: true,
            ..acquire("a", "k")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.remaining, 5, "nothing was taken from a");

    let each = pb::AcquireBatchRequest {
        requests: vec![
            pb::AcquireRequest {
                tokens: 3,
                ..acquire("a", "k")
            },
            acquire("b", "k"),
        ],
        all_or_nothing: false,
    };
    let out = rl.acquire_batch(each).await.unwrap().into_inner().responses;
    assert_eq!(
        out.iter().map(|r| r.allowed).collect::<Vec<_>>(),
        vec![true, false]
    );

    let too_many = pb::AcquireBatchRequest {
        requests: vec![acquire("a", "k"); 5],
        all_or_nothing: false,
    };
    let status = rl.acquire_batch(too_many).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("5 requests exceed the batch limit of 4"),
        "{}",
        status.message()
    );

    let bad_item = pb::AcquireBatchRequest {
        requests: vec![acquire("a", "k"), acquire("zzz", "k")],
        all_or_nothing: false,
    };
    assert_eq!(
        rl.acquire_batch(bad_item).await.unwrap_err().code(),
        Code::NotFound
    );
    let empty_key = pb::AcquireBatchRequest {
        requests: vec![acquire("a", "k"), acquire("a", "")],
        all_or_nothing: true,
    };
    let status = rl.acquire_batch(empty_key).await.unwrap_err();
    assert!(
        status.message().starts_with("requests[1].key"),
        "{}",
        status.message()
    );
    let mut negative_wait = acquire("a", "k");
    negative_wait.max_wait = Some(prost_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    let status = rl
        .acquire_batch(pb::AcquireBatchRequest {
            requests: vec![acquire("a", "k"), acquire("a", "k"), negative_wait],
            all_or_nothing: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("requests[2].max_wait: must not be negative"),
        "{}",
        status.message()
    );
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn list_limits_shows_what_is_configured(backend: Backend) {
    let mut shared = limit("svc", 50, Duration::from_secs(60), 100);
    shared.scope = LimitScopeConfig::Shared;
    let mut api = limit("api", 10, Duration::from_secs(1), 20);
    api.overrides.push(LimitOverrideConfig {
        key: "partner".into(),
        rate: 100,
        period: None,
        burst: Some(200),
    });
    let (server, mut rl) = start(&backend, vec![shared, api], |c| {
        c.ratelimit.default_limit = "api".into()
    })
    .await;
    let list = rl
        .list_limits(pb::ListLimitsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.default_limit, "api");
    let names: Vec<&str> = list.limits.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, vec!["api", "svc"]);
    let api = &list.limits[0];
    assert_eq!((api.rate, api.burst), (10, 20));
    assert_eq!(std_duration(api.period), Duration::from_secs(1));
    assert_eq!(api.overrides.len(), 1);
    assert_eq!(
        (api.overrides[0].key.as_str(), api.overrides[0].burst),
        ("partner", 200)
    );
    assert_eq!(list.limits[1].scope, pb::LimitScope::Shared as i32);
    // The default limit answers for unknown names.
    assert!(
        rl.acquire(acquire("unconfigured", "k"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
cluster async fn a_waiter_is_granted_when_tokens_accrue_and_a_short_deadline_is_a_denial(backend: Backend) {
    let (server, mut rl) = start(
        &backend,
        vec![
            limit("fast", 10, Duration::from_secs(1), 1),
            limit("slow", 1, Duration::from_secs(2), 1),
        ],
        |_| {},
    )
    .await;
    rl.acquire(acquire("fast", "k")).await.unwrap();
    let waited = rl
        .acquire(pb::AcquireRequest {
            max_wait: Some(pb_duration(Duration::from_secs(2))),
            ..acquire("fast", "k")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(waited.allowed);
    let w = std_duration(waited.waited);
    assert!(
        w >= Duration::from_millis(80) && w < Duration::from_secs(1),
        "{w:?}"
    );

    // Empty the slow bucket and queue a waiter (granted at ~2 s). A caller
    // whose own deadline is 1 s (max_wait 10 s) is answered with a denial
    // before that deadline — never DEADLINE_EXCEEDED.
    rl.acquire(acquire("slow", "k")).await.unwrap();
    let mut first = rl.clone();
    let holder = tokio::spawn(async move {
        first
            .acquire(pb::AcquireRequest {
                max_wait: Some(pb_duration(Duration::from_secs(5))),
                client: "first".into(),
                ..acquire("slow", "k")
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut request = tonic::Request::new(pb::AcquireRequest {
        max_wait: Some(pb_duration(Duration::from_secs(10))),
        ..acquire("slow", "k")
    });
    request.set_timeout(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let answer = rl
        .acquire(request)
        .await
        .expect("a denial, not an error")
        .into_inner();
    assert!(!answer.allowed);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(std_duration(answer.retry_after) > Duration::ZERO);
    assert!(holder.await.unwrap().unwrap().into_inner().allowed);
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
cluster async fn concurrent_callers_over_grpc_get_exactly_the_burst(backend: Backend) {
    // Both decision paths: coalesced on decision tasks (default), and in each call.
    for coalesce in [true, false] {
        let (server, rl) = start(&backend, vec![limit("api", 1, hour(), 100)], |c| {
            c.ratelimit.coalesce = coalesce
        })
        .await;
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let mut rl = rl.clone();
            tasks.push(tokio::spawn(async move {
                let mut granted = 0u32;
                for _ in 0..5 {
                    if rl
                        .acquire(acquire("api", &format!("hot-{coalesce}")))
                        .await
                        .unwrap()
                        .into_inner()
                        .allowed
                    {
                        granted += 1;
                    }
                }
                granted
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        assert_eq!(
            total, 100,
            "64 x 5 calls on a bucket of 100 (coalesce = {coalesce})"
        );
        server.stop().await.unwrap();
    }
}
}

crate::on_every_backend! {
async fn a_full_queue_and_a_full_server_are_resource_exhausted(backend: Backend) {
    let (server, rl) = start(&backend, vec![limit("api", 1, hour(), 1)], |c| {
        c.ratelimit.max_waiters = 1;
        c.server.max_inflight = 2;
    })
    .await;
    let mut first = rl.clone();
    first.acquire(acquire("api", "k")).await.unwrap();
    let waiter = tokio::spawn(async move {
        first
            .acquire(pb::AcquireRequest {
                max_wait: Some(pb_duration(Duration::from_secs(1))),
                ..acquire("api", "k")
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One waiter holds the queue (max_waiters = 1) and one of the two call slots.
    let mut second = rl.clone();
    let status = second
        .acquire(pb::AcquireRequest {
            max_wait: Some(pb_duration(Duration::from_secs(1))),
            ..acquire("api", "k")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("max_waiters"),
        "{}",
        status.message()
    );

    // A second waiter on another key takes the last call slot; a third call is shed.
    let mut third = rl.clone();
    third.acquire(acquire("api", "other")).await.unwrap();
    let other_waiter = tokio::spawn(async move {
        third
            .acquire(pb::AcquireRequest {
                max_wait: Some(pb_duration(Duration::from_secs(1))),
                ..acquire("api", "other")
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = rl.clone();
    let shed = fourth
        .list_limits(pb::ListLimitsRequest {})
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted);
    assert!(
        shed.message().contains("server.max_inflight"),
        "{}",
        shed.message()
    );
    assert!(!waiter.await.unwrap().unwrap().into_inner().allowed);
    assert!(!other_waiter.await.unwrap().unwrap().into_inner().allowed);
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "gantry_grpc_shed_total"),
        Some(1.0),
        "{metrics}"
    );
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn a_caller_that_gives_up_leaves_the_queue_without_consuming(backend: Backend) {
    // One token a second, burst 2. Empty the bucket at t0; a caller that wants
    // 2 tokens would be granted at t0 + 2 s, but gives up at t0 + 50 ms.
    let (server, mut rl) = start(&backend, vec![limit("api", 1, Duration::from_secs(1), 2)], |_| {}).await;
    let t0 = std::time::Instant::now();
    rl.acquire(pb::AcquireRequest {
        tokens: 2,
        ..acquire("api", "k")
    })
    .await
    .unwrap();
    let mut impatient = rl.clone();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        impatient.acquire(pb::AcquireRequest {
            tokens: 2,
            max_wait: Some(pb_duration(Duration::from_secs(10))),
            ..acquire("api", "k")
        }),
    )
    .await;
    assert!(gave_up.is_err(), "the client abandoned its call");
    // At t0 + 2.3 s the bucket is full (2) if nobody took the tokens; had the
    // abandoned waiter been granted at t0 + 2 s, it would hold no whole token.
    tokio::time::sleep(
        (t0 + Duration::from_millis(2300)).saturating_duration_since(std::time::Instant::now()),
    )
    .await;
    let check = rl
        .acquire(pb::AcquireRequest {
            dry_run: true,
            ..acquire("api", "k")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "checked too late to tell: {:?}",
        t0.elapsed()
    );
    assert_eq!(check.remaining, 2);
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "gantry_ratelimit_waiting{limit=\"api\"}"),
        Some(0.0),
        "{metrics}"
    );
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn bucket_levels_survive_a_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::common::test_config(dir.path());
    backend.configure(&mut config);
    config.ratelimit.limits = vec![limit("api", 1, hour(), 10)];
    for round in 0..2 {
        let gantry = gantry::server::Gantry::build(config.clone(), false)
            .await
            .unwrap();
        let addr = gantry.grpc_addr();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn(gantry.serve(shutdown.clone()));
        let channel = crate::common::connect(addr).await;
        crate::common::wait_serving(&channel, "gantry.v1.RateLimiter").await;
        let mut rl = RateLimiterClient::new(channel);
        if round == 0 {
            let r = rl
                .acquire(pb::AcquireRequest {
                    tokens: 9,
                    ..acquire("api", "alice")
                })
                .await
                .unwrap();
            assert_eq!(r.into_inner().remaining, 1);
        } else {
            let r = rl
                .acquire(pb::AcquireRequest {
                    dry_run: true,
                    ..acquire("api", "alice")
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.remaining, 1, "a restart must not hand out a fresh burst");
            assert!(
                !rl.acquire(pb::AcquireRequest {
                    tokens: 2,
                    ..acquire("api", "alice")
                })
                .await
                .unwrap()
                .into_inner()
                .allowed
            );
        }
        drop(rl);
        shutdown.cancel();
        handle.await.unwrap().unwrap();
    }
}
}

crate::on_every_backend! {
async fn rate_limit_metrics_are_exported_per_limit(backend: Backend) {
    let (server, mut rl) = start(&backend, vec![limit("api", 1, hour(), 2)], |_| {}).await;
    for _ in 0..3 {
        rl.acquire(acquire("api", "k")).await.unwrap();
    }
    let (_, text) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &text,
            "gantry_ratelimit_decisions_total{limit=\"api\",result=\"allowed\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "gantry_ratelimit_decisions_total{limit=\"api\",result=\"denied\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "gantry_ratelimit_tokens_granted_total{limit=\"api\"}"
        ),
        Some(2.0)
    );
    assert!(
        text.contains("gantry_ratelimit_wait_seconds_bucket"),
        "{text}"
    );
    server.stop().await.unwrap();
}
}

mod envoy {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code as RlsCode;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

    fn envoy_config(c: &mut Config, rate: u64, period: Duration) {
        c.ratelimit.limits = vec![
            limit("per-ip", rate, period, rate),
            limit("login", 1, hour(), 1),
        ];
        let entry = |key: &str, value: Option<&str>| EnvoyEntryConfig {
            key: key.into(),
            value: value.map(String::from),
        };
        c.ratelimit.envoy = vec![EnvoyDomainConfig {
            domain: "edge".into(),
            descriptors: vec![
                EnvoyDescriptorConfig {
                    entries: vec![entry("path", Some("/login")), entry("remote_address", None)],
                    limit: Some("login".into()),
                    ..Default::default()
                },
                EnvoyDescriptorConfig {
                    entries: vec![entry("remote_address", None)],
                    limit: Some("per-ip".into()),
                    ..Default::default()
                },
                EnvoyDescriptorConfig {
                    entries: vec![entry("generic_key", None)],
                    limit: Some("per-ip".into()),
                    ..Default::default()
                },
            ],
        }];
    }

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "edge".into(),
            descriptors,
            hits_addend: 0,
        }
    }

    crate::on_every_backend! {
    cluster async fn should_rate_limit_maps_descriptors_to_buckets(backend: Backend) {
        let server = TestServer::start_on(&backend, |c| {
            envoy_config(c, 2, Duration::from_secs(60));
            c.ratelimit.envoy_response_headers = EnvoyResponseHeaders::Draft03;
        })
        .await;
        let mut rls = RateLimitServiceClient::new(server.channel.clone());
        let ip = descriptor(&[("remote_address", "10.0.0.1")]);
        for remaining in [1, 0] {
            let r = rls
                .should_rate_limit(request(vec![ip.clone()]))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.overall_code, RlsCode::Ok as i32);
            let status = &r.statuses[0];
            assert_eq!(status.limit_remaining, remaining);
            let current = status.current_limit.as_ref().unwrap();
            assert_eq!(
                (current.requests_per_unit, current.name.as_str()),
                (2, "per-ip")
            );
            assert!(status.duration_until_reset.is_some());
        }
        let over = rls
            .should_rate_limit(request(vec![ip.clone()]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(over.overall_code, RlsCode::OverLimit as i32);
        assert_eq!(over.statuses[0].code, RlsCode::OverLimit as i32);
        let headers: Vec<(&str, &str)> = over
            .response_headers_to_add
            .iter()
            .map(|h| (h.key.as_str(), h.value.as_str()))
            .collect();
        assert!(
            headers.contains(&("X-RateLimit-Limit", "2, 2;w=60")),
            "{headers:?}"
        );
        assert!(
            headers.contains(&("X-RateLimit-Remaining", "0")),
            "{headers:?}"
        );

        // Another address has its own bucket; an unmatched descriptor is not limited.
        let mixed = rls
            .should_rate_limit(request(vec![
                descriptor(&[("remote_address", "10.0.0.2")]),
                descriptor(&[("user", "bob")]),
            ]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(mixed.overall_code, RlsCode::Ok as i32);
        assert_eq!(mixed.statuses.len(), 2);
        assert!(mixed.statuses[1].current_limit.is_none());

        // Any over-limit descriptor makes the whole answer OVER_LIMIT.
        let both = rls
            .should_rate_limit(request(vec![
                descriptor(&[("remote_address", "10.0.0.3")]),
                ip.clone(),
            ]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(both.overall_code, RlsCode::OverLimit as i32);
        assert_eq!(both.statuses[0].code, RlsCode::Ok as i32);
        assert_eq!(both.statuses[1].code, RlsCode::OverLimit as i32);

        // hits_addend takes several tokens at once.
        let mut heavy = request(vec![descriptor(&[("remote_address", "10.0.0.4")])]);
        heavy.hits_addend = 2;
        let r = rls
            .should_rate_limit(heavy.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.overall_code, r.statuses[0].limit_remaining),
            (RlsCode::Ok as i32, 0)
        );

        // The descriptor's own limit override gets a bucket with those parameters.
        let mut overridden = descriptor(&[("remote_address", "10.0.0.1")]);
        overridden.limit = Some(RateLimitOverride {
            requests_per_unit: 5,
            unit: 2, // MINUTE
        });
        let r = rls
            .should_rate_limit(request(vec![overridden]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.overall_code, RlsCode::Ok as i32);
        assert_eq!(r.statuses[0].limit_remaining, 4);
        assert_eq!(
            r.statuses[0]
                .current_limit
                .as_ref()
                .unwrap()
                .requests_per_unit,
            5
        );

        let status = rls
            .should_rate_limit(RateLimitRequest {
                domain: String::new(),
                descriptors: vec![ip],
                hits_addend: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("domain"));
        server.stop().await.unwrap();
    }
    }

    /// The rule features operators roll limits out with: unlimited rules,
    /// prefix values, shadow mode, `replaces`, per-rule counters, and the
    /// IETF draft's headers announcing the configured quota and the time
    /// until the next request can succeed.
    fn rule_features_config(c: &mut Config) {
        c.ratelimit.limits = vec![
            limit("api", 2, Duration::from_secs(60), 2),
            limit("login", 1, hour(), 1),
            limit("per-ip", 1, hour(), 1),
        ];
        c.ratelimit.envoy_response_headers = EnvoyResponseHeaders::Ietf;
        let entry = |key: &str, value: Option<&str>| EnvoyEntryConfig {
            key: key.into(),
            value: value.map(String::from),
        };
        c.ratelimit.envoy = vec![EnvoyDomainConfig {
            domain: "edge".into(),
            descriptors: vec![
                EnvoyDescriptorConfig {
                    entries: vec![entry("path", Some("/health"))],
                    unlimited: true,
                    ..Default::default()
                },
                EnvoyDescriptorConfig {
                    name: Some("api-rollout".into()),
                    entries: vec![entry("path", Some("/api/*")), entry("remote_address", None)],
                    limit: Some("api".into()),
                    shadow_mode: true,
                    ..Default::default()
                },
                EnvoyDescriptorConfig {
                    entries: vec![entry("path", Some("/login")), entry("remote_address", None)],
                    limit: Some("login".into()),
                    replaces: vec!["per-ip".into()],
                    ..Default::default()
                },
                EnvoyDescriptorConfig {
                    name: Some("per-ip".into()),
                    entries: vec![entry("remote_address", None)],
                    limit: Some("per-ip".into()),
                    ..Default::default()
                },
            ],
        }];
    }

    crate::on_every_backend! {
    async fn descriptor_rules_shadow_unlimited_prefix_and_replaces(backend: Backend) {
        let server = TestServer::start_on(&backend, rule_features_config).await;
        let rls = RateLimitServiceClient::new(server.channel.clone());
        let ask = |descriptors: Vec<RateLimitDescriptor>| {
            let mut rls = rls.clone();
            async move { rls.should_rate_limit(request(descriptors)).await.unwrap().into_inner() }
        };
        // Unlimited: always OK, no limit reported.
        for _ in 0..3 {
            let r = ask(vec![descriptor(&[("path", "/health")])]).await;
            assert_eq!(r.overall_code, RlsCode::Ok as i32);
            assert!(r.statuses[0].current_limit.is_none());
        }
        // Shadow mode over a prefix rule: the third call is over the limit of 2
        // and still OK; a value outside the prefix is not limited at all.
        let api = descriptor(&[("path", "/api/orders"), ("remote_address", "10.0.0.1")]);
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let r = ask(vec![api.clone()]).await;
            assert_eq!(r.overall_code, RlsCode::Ok as i32, "shadow mode never denies");
            assert_eq!(r.statuses[0].code, RlsCode::Ok as i32);
            assert_eq!(
                r.statuses[0].current_limit.as_ref().map(|l| l.name.as_str()),
                Some("api")
            );
            assert!(r.response_headers_to_add.is_empty(), "a shadow rule announces nothing");
            remaining.push(r.statuses[0].limit_remaining);
        }
        assert_eq!(remaining, vec![1, 0, 0]);
        let outside = ask(vec![descriptor(&[("path", "/apix"), ("remote_address", "10.0.0.1")])]).await;
        assert!(outside.statuses[0].current_limit.is_none());

        // `replaces`: with the login rule matched, the per-ip descriptor is not
        // applied and takes nothing from its bucket.
        let login = descriptor(&[("path", "/login"), ("remote_address", "10.0.0.9")]);
        let ip = descriptor(&[("remote_address", "10.0.0.9")]);
        let first = ask(vec![login.clone(), ip.clone()]).await;
        assert_eq!(first.overall_code, RlsCode::Ok as i32);
        assert!(first.statuses[1].current_limit.is_none(), "per-ip was replaced");
        let second = ask(vec![login.clone(), ip.clone()]).await;
        assert_eq!(second.overall_code, RlsCode::OverLimit as i32);
        assert_eq!(second.statuses[0].code, RlsCode::OverLimit as i32);
        assert_eq!(second.statuses[1].code, RlsCode::Ok as i32);
        // The 429 announces the configured 1 per hour, and a token back in an hour.
        let headers: Vec<(&str, &str)> = second
            .response_headers_to_add
            .iter()
            .map(|h| (h.key.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(
            headers,
            vec![
                ("RateLimit-Policy", "\"login\";q=1;w=3600"),
                ("RateLimit", "\"login\";r=0;t=3600"),
                ("Retry-After", "3600"),
            ]
        );
        let alone = ask(vec![ip.clone()]).await;
        assert_eq!(alone.overall_code, RlsCode::Ok as i32, "per-ip's bucket is still full");

        // Per-rule counters on the metrics port, in envoyproxy/ratelimit's categories.
        let (_, text) = crate::common::http_get(server.metrics, "/metrics").await;
        let value = |name: &str, rule: &str| {
            crate::common::metric_value(
                &text,
                &format!("gantry_ratelimit_envoy_{name}_total{{domain=\"edge\",rule=\"{rule}\"}}"),
            )
            .unwrap_or_else(|| panic!("no {name} series for {rule}:\n{text}"))
        };
        assert_eq!(value("total_hits", "path_/health"), 3.0);
        assert_eq!(value("within_limit", "path_/health"), 3.0);
        assert_eq!(value("total_hits", "api-rollout"), 3.0);
        assert_eq!(value("over_limit", "api-rollout"), 1.0);
        assert_eq!(value("shadow_mode", "api-rollout"), 1.0);
        assert_eq!(value("near_limit", "api-rollout"), 1.0, "the second hit left 0 of 2");
        assert_eq!(value("within_limit", "api-rollout"), 1.0);
        assert_eq!(value("over_limit", "path_/login.remote_address"), 1.0);
        assert_eq!(value("total_hits", "per-ip"), 1.0, "replaced hits are not counted");
        server.stop().await.unwrap();
    }
    }

    /// ShouldRateLimit answered directly by the transport (the default) and
    /// through tonic (`server.direct_calls = false`) give the same answers.
    #[tokio::test]
    async fn direct_should_rate_limit_answers_exactly_as_the_service_path() {
        let start = |direct: bool| {
            TestServer::start_with(move |c| {
                envoy_config(c, 2, Duration::from_secs(60));
                c.ratelimit.envoy_response_headers = EnvoyResponseHeaders::Draft03;
                c.server.direct_calls = direct;
            })
        };
        let (direct, service) = (start(true).await, start(false).await);
        same_answers(&direct, &service).await;
        direct.stop().await.unwrap();
        service.stop().await.unwrap();
    }

    /// The same ShouldRateLimit cases on two servers get the same answers.
    async fn same_answers(left_server: &TestServer, right_server: &TestServer) {
        let ip = descriptor(&[("remote_address", "10.0.0.1")]);
        let mut overridden = ip.clone();
        overridden.limit = Some(RateLimitOverride {
            requests_per_unit: 0,
            unit: 2,
        });
        let mut heavy = request(vec![ip.clone()]);
        heavy.hits_addend = 5;
        let cases = [
            request(vec![ip.clone()]),
            request(vec![ip.clone(), descriptor(&[("user", "bob")])]),
            request(vec![ip.clone()]),
            heavy,
            request(vec![overridden]),
            request(vec![]),
            RateLimitRequest {
                domain: "elsewhere".into(),
                descriptors: vec![ip.clone()],
                hits_addend: 0,
            },
        ];
        let mut a = RateLimitServiceClient::new(left_server.channel.clone());
        let mut b = RateLimitServiceClient::new(right_server.channel.clone());
        for (n, case) in cases.into_iter().enumerate() {
            let left = a
                .should_rate_limit(case.clone())
                .await
                .map(|r| r.into_inner());
            let right = b.should_rate_limit(case).await.map(|r| r.into_inner());
            match (left, right) {
                (Ok(mut x), Ok(mut y)) => {
                    // Reset times differ by the microseconds between the two servers.
                    for s in x.statuses.iter_mut().chain(y.statuses.iter_mut()) {
                        s.duration_until_reset = None;
                    }
                    assert_eq!(x, y, "case {n}");
                }
                (Err(x), Err(y)) => {
                    assert_eq!((x.code(), x.message()), (y.code(), y.message()), "case {n}");
                }
                (x, y) => panic!("case {n}: {x:?} against {y:?}"),
            }
        }
    }

    /// Envoy's answers with buckets in Redis are the embedded store's.
    #[tokio::test]
    async fn should_rate_limit_answers_the_same_on_redis_as_on_sled() {
        let Some(redis) = Backend::redis() else {
            return;
        };
        let start = |backend: Backend| async move {
            TestServer::start_on(&backend, |c| {
                envoy_config(c, 2, Duration::from_secs(60));
                c.ratelimit.envoy_response_headers = EnvoyResponseHeaders::Draft03;
            })
            .await
        };
        let (sled, shared) = (start(Backend::Sled).await, start(redis).await);
        same_answers(&sled, &shared).await;
        sled.stop().await.unwrap();
        shared.stop().await.unwrap();
    }
}

#[tokio::test]
async fn calls_beyond_the_per_connection_limit_wait_for_a_free_slot() {
    // One call in flight per connection: while a rate-limit wait holds the
    // slot, a health check on the same connection waits; on a new connection it does not.
    let (server, mut rl) = start(
        &Backend::Sled,
        vec![limit("api", 1, Duration::from_secs(1), 1)],
        |c| c.server.max_concurrent_streams = 1,
    )
    .await;
    rl.acquire(acquire("api", "k")).await.unwrap();
    let mut waiting = rl.clone();
    let holder = tokio::spawn(async move {
        waiting
            .acquire(pb::AcquireRequest {
                max_wait: Some(pb_duration(Duration::from_secs(2))),
                ..acquire("api", "k")
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    // While the wait holds the slot (about a second), a new connection is not held up...
    let fresh = crate::common::connect(server.grpc).await;
    let started = std::time::Instant::now();
    tonic_health::pb::health_client::HealthClient::new(fresh)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // ...but a call on the busy connection waits for the slot.
    let started = std::time::Instant::now();
    let mut same = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    same.check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let queued = started.elapsed();
    assert!(holder.await.unwrap().unwrap().into_inner().allowed);
    assert!(
        queued >= Duration::from_millis(500),
        "the check did not wait for the slot: {queued:?}"
    );
    server.stop().await.unwrap();
}

crate::on_every_backend! {
cluster async fn inspect_a_bucket_and_list_the_hottest_keys(backend: Backend) {
    // One token a minute: nothing refills while the test looks.
    let (server, mut rl) = start(
        &backend,
        vec![limit("api", 1, Duration::from_secs(60), 5)],
        |_| {},
    )
    .await;
    let take = |key: &str, tokens: u64| pb::AcquireRequest {
        tokens,
        ..acquire("api", key)
    };
    rl.acquire(take("customer-a", 3)).await.unwrap();
    rl.acquire(take("customer-b", 1)).await.unwrap();
    let inspect = |key: &str| pb::InspectBucketRequest {
        limit: "api".into(),
        key: key.into(),
    };
    let a = rl.inspect_bucket(inspect("customer-a")).await.unwrap().into_inner();
    assert_eq!((a.limit.as_str(), a.key.as_str()), ("api", "customer-a"));
    assert_eq!((a.tokens, a.burst, a.waiters), (2, 5, 0));
    let next = a.next_token.unwrap();
    assert!(next.seconds <= 60 && (next.seconds, next.nanos) != (0, 0), "{next:?}");
    assert!((170..=180).contains(&a.full_in.unwrap().seconds), "{:?}", a.full_in);
    // Looking takes nothing.
    let again = rl.inspect_bucket(inspect("customer-a")).await.unwrap().into_inner();
    assert_eq!(again.tokens, 2);
    // A key never used is a full bucket.
    let fresh = rl.inspect_bucket(inspect("customer-z")).await.unwrap().into_inner();
    assert_eq!((fresh.tokens, fresh.next_token), (5, None));
    // A waiter shows.
    rl.acquire(take("customer-a", 2)).await.unwrap();
    let mut waiting = rl.clone();
    let waiter = tokio::spawn(async move {
        waiting
            .acquire(pb::AcquireRequest {
                max_wait: Some(pb_duration(Duration::from_secs(3))),
                ..acquire("api", "customer-a")
            })
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let a = rl.inspect_bucket(inspect("customer-a")).await.unwrap().into_inner();
        if a.waiters == 1 {
            assert_eq!(a.tokens, 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the waiter never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    waiter.abort();

    let hot = |count: u32| pb::HotKeysRequest {
        limit: "api".into(),
        count,
    };
    let listed = rl.hot_keys(hot(10)).await;
    if matches!(backend, Backend::RedisCluster { .. }) {
        let status = listed.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("Redis Cluster"), "{status:?}");
    } else {
        let listed = listed.unwrap().into_inner();
        let keys: Vec<&str> = listed.buckets.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(keys, vec!["customer-a", "customer-b"], "most spent first");
        assert!(listed.scanned >= 2);
        let top = rl.hot_keys(hot(1)).await.unwrap().into_inner();
        assert_eq!(top.buckets.len(), 1);
        assert_eq!(top.buckets[0].key, "customer-a");
    }
    let unknown = rl
        .inspect_bucket(pb::InspectBucketRequest {
            limit: "nope".into(),
            key: "k".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let unknown = rl
        .hot_keys(pb::HotKeysRequest {
            limit: "nope".into(),
            count: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await.unwrap();
}
}
