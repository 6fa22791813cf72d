//! Gantry as a cluster: several replicas on one Redis, and what happens when
//! Redis goes away under load. Each test owns its `redis-server`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gantry::config::{HumanDuration, LimitConfig, LimitScopeConfig, StoreFailure};
use gantry::proto::gantry::v1 as pb;
use pb::rate_limiter_client::RateLimiterClient;
use tonic::Code;

use crate::backends::{Backend, RedisServer};
use crate::common::{GantryProcess, TestServer, connect, http_get, metric_value, wait_serving};

fn limit(name: &str, rate: u64, period: Duration, burst: u64) -> LimitConfig {
    LimitConfig {
        name: name.into(),
        rate,
        period: HumanDuration(period),
        burst: Some(burst),
        scope: LimitScopeConfig::PerKey,
        overrides: vec![],
    }
}

fn acquire(limit: &str, key: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        limit: limit.into(),
        key: key.into(),
        tokens: 1,
        ..Default::default()
    }
}

/// Three gantry processes on one Redis, each hammered by its own callers
/// for 20 s with single acquisitions and all-or-nothing batches: the tokens
/// admitted fleet-wide never exceed what one bucket allows, burst + rate x
/// elapsed — and come close to it, so the limit is neither per replica nor
/// starved.
#[tokio::test]
async fn three_replicas_admit_no_more_than_one_bucket_allows() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gantry.toml"),
        "[[ratelimit.limits]]\nname = \"api\"\nrate = 200\nperiod = \"1s\"\nburst = 50\n",
    )
    .unwrap();
    let backend = Backend::Redis {
        url: redis.url(),
        prefix: "fleet".into(),
    };
    let mut env = backend.env();
    env.push(("GANTRY_SERVER_SHUTDOWN_GRACE", "2s".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut replicas: Vec<GantryProcess> = (0..3)
        .map(|i| {
            let data = dir.path().join(format!("replica-{i}"));
            std::fs::create_dir_all(&data).unwrap();
            std::fs::copy(dir.path().join("gantry.toml"), data.join("gantry.toml")).unwrap();
            GantryProcess::serve_config(&data, &env)
        })
        .collect();
    let mut channels = Vec::new();
    for replica in &mut replicas {
        let (grpc, _) = replica.wait_until_listening();
        let channel = connect(grpc).await;
        wait_serving(&channel, "gantry.v1.RateLimiter").await;
        channels.push(channel);
    }

    let admitted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut callers = Vec::new();
    for (i, channel) in channels.iter().enumerate() {
        for caller in 0..8 {
            let mut rl = RateLimiterClient::new(channel.clone());
            let (admitted, stop) = (admitted.clone(), stop.clone());
            callers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if (n + caller).is_multiple_of(4) {
                        // Two tokens of the same bucket, all or nothing.
                        let batch = rl
                            .acquire_batch(pb::AcquireBatchRequest {
                                requests: vec![acquire("api", "shared"), acquire("api", "shared")],
                                all_or_nothing: true,
                            })
                            .await
                            .unwrap_or_else(|e| panic!("replica {i}: {e:?}"))
                            .into_inner();
                        let granted = batch.responses.iter().filter(|r| r.allowed).count();
                        assert!(granted == 0 || granted == 2, "a batch split: {batch:?}");
                        admitted.fetch_add(granted as u64, Ordering::Relaxed);
                    } else {
                        let r = rl
                            .acquire(acquire("api", "shared"))
                            .await
                            .unwrap_or_else(|e| panic!("replica {i}: {e:?}"))
                            .into_inner();
                        admitted.fetch_add(u64::from(r.allowed), Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    let allowed = 50.0 + 200.0 * elapsed;
    assert!(
        admitted <= allowed,
        "admitted {admitted} tokens in {elapsed:.2} s; one bucket allows {allowed:.0}"
    );
    assert!(
        admitted >= 0.9 * 200.0 * (elapsed - 0.5),
        "admitted only {admitted} tokens in {elapsed:.2} s"
    );
    drop(channels);
    for replica in &mut replicas {
        replica.signal("TERM");
        assert_eq!(replica.wait_exit(Duration::from_secs(15)), 0);
    }
}

/// redis-server killed (SIGKILL) under load and started again: meanwhile
/// rate-limit calls are UNAVAILABLE with a message naming the cause and
/// health says NOT_SERVING; within seconds of its return both recover on
/// their own, and what Redis had acknowledged (appendfsync always) is kept.
#[tokio::test]
async fn redis_killed_under_load_fails_closed_then_recovers() {
    let Some(mut redis) = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"])
    else {
        return;
    };
    let backend = Backend::Redis {
        url: redis.url(),
        prefix: "outage".into(),
    };
    let server = TestServer::start_on(&backend, |c| {
        c.ratelimit.limits = vec![limit("api", 1, Duration::from_secs(3600), 10)];
        c.storage.recover_interval = HumanDuration::from_millis(200);
    })
    .await;
    let mut rl = RateLimiterClient::new(server.channel.clone());
    let spent = rl
        .acquire(pb::AcquireRequest {
            tokens: 7,
            ..acquire("api", "kept")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spent.remaining, 3);

    let load = {
        let mut rl = rl.clone();
        tokio::spawn(async move {
            let (mut ok, mut unavailable) = (0u32, 0u32);
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                match rl.acquire(acquire("api", "load")).await {
                    Ok(_) => ok += 1,
                    Err(status) => {
                        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                        assert!(status.message().contains("Redis"), "{status:?}");
                        unavailable += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, unavailable)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    let status = rl.acquire(acquire("api", "k")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("ratelimit.store_failure"),
        "{status:?}"
    );
    wait_health(
        &server,
        tonic_health::pb::health_check_response::ServingStatus::NotServing,
    )
    .await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let back = Instant::now();
    redis.restart();
    wait_health(
        &server,
        tonic_health::pb::health_check_response::ServingStatus::Serving,
    )
    .await;
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "{:?}",
        back.elapsed()
    );
    let kept = rl
        .acquire(pb::AcquireRequest {
            dry_run: true,
            ..acquire("api", "kept")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kept.remaining, 3,
        "the acknowledged spend survived the crash"
    );
    let (ok, unavailable) = load.await.unwrap();
    assert!(
        ok > 0 && unavailable > 0,
        "ok {ok}, unavailable {unavailable}"
    );
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert!(
        metric_value(
            &metrics,
            "gantry_ratelimit_store_failures_total{answer=\"unavailable\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, "gantry_store_redis_reconnects_total").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

/// With `ratelimit.store_failure = "open"`, a Redis outage lets calls through
/// (counted), instead of failing them.
#[tokio::test]
async fn with_store_failure_open_an_outage_allows_and_counts() {
    let Some(mut redis) = RedisServer::start(&[]) else {
        return;
    };
    let backend = Backend::Redis {
        url: redis.url(),
        prefix: "open".into(),
    };
    let server = TestServer::start_on(&backend, |c| {
        c.ratelimit.limits = vec![limit("api", 1, Duration::from_secs(3600), 1)];
        c.ratelimit.store_failure = StoreFailure::Open;
    })
    .await;
    let mut rl = RateLimiterClient::new(server.channel.clone());
    assert!(
        rl.acquire(acquire("api", "k"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        !rl.acquire(acquire("api", "k"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    redis.kill();
    for _ in 0..3 {
        let r = rl.acquire(acquire("api", "k")).await.unwrap().into_inner();
        assert!(r.allowed, "fails open: {r:?}");
    }
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "gantry_ratelimit_store_failures_total{answer=\"allowed\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

async fn wait_health(
    server: &TestServer,
    want: tonic_health::pb::health_check_response::ServingStatus,
) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(server.channel.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: "gantry.v1.RateLimiter".into(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.as_ref().ok() == Some(&(want as i32)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health never became {want:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
