//! Gantry as a cluster: several replicas on one Redis, and what happens when
//! Redis goes away under load. Each test owns its `redis-server`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gantry::config::{HumanDuration, StoreFailure};
use gantry::proto::gantry::v1 as pb;
use pb::rate_limiter_client::RateLimiterClient;
use tonic::Code;

use crate::backends::{Backend, RedisCluster, RedisServer};
use crate::common::{GantryProcess, TestServer, connect, http_get, metric_value, wait_serving};
use crate::ratelimit::limit;

/// `n` gantry processes on `backend`, each in its own directory with
/// `config` as gantry.toml, and a channel to each once it serves `service`.
async fn replicas(
    backend: &Backend,
    config: &str,
    n: usize,
    service: &str,
) -> (
    tempfile::TempDir,
    Vec<GantryProcess>,
    Vec<tonic::transport::Channel>,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut env = backend.env();
    env.push(("GANTRY_SERVER_SHUTDOWN_GRACE", "2s".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut processes: Vec<GantryProcess> = (0..n)
        .map(|i| {
            let data = dir.path().join(format!("replica-{i}"));
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(data.join("gantry.toml"), config).unwrap();
            GantryProcess::serve_config(&data, &env)
        })
        .collect();
    let mut channels = Vec::new();
    for process in &mut processes {
        let (grpc, _) = process.wait_until_listening();
        let channel = connect(grpc).await;
        wait_serving(&channel, service).await;
        channels.push(channel);
    }
    (dir, processes, channels)
}

/// SIGTERM to each process; each exits 0 (callers drop their channels first).
fn stop_all(processes: &mut [GantryProcess]) {
    for process in processes {
        process.signal("TERM");
        assert_eq!(process.wait_exit(Duration::from_secs(15)), 0);
    }
}

/// A protobuf timestamp `nanos` after the Unix epoch.
fn timestamp(nanos: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (nanos / 1_000_000_000) as i64,
        nanos: (nanos % 1_000_000_000) as i32,
    }
}

/// Nanoseconds since the Unix epoch, now.
fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
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
    if let Some(redis) = RedisServer::start(&[]) {
        three_replicas_admit_no_more_than_one_bucket_allows_on(redis).await;
    }
}

#[tokio::test]
async fn three_replicas_on_valkey_admit_no_more_than_one_bucket_allows() {
    if let Some(valkey) = RedisServer::start_valkey() {
        three_replicas_admit_no_more_than_one_bucket_allows_on(valkey).await;
    }
}

async fn three_replicas_admit_no_more_than_one_bucket_allows_on(redis: RedisServer) {
    let backend = Backend::Redis {
        url: redis.url(),
        prefix: "fleet".into(),
    };
    let (_dir, mut replicas, channels) = replicas(
        &backend,
        "[[ratelimit.limits]]\nname = \"api\"\nrate = 200\nperiod = \"1s\"\nburst = 50\n",
        3,
        "gantry.v1.RateLimiter",
    )
    .await;

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
    stop_all(&mut replicas);
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
        c.leases.pools = vec![gantry::config::PoolConfig {
            name: "db".into(),
            capacity: 5,
            max_per_holder: None,
            default_ttl: HumanDuration::from_secs(30),
            max_ttl: HumanDuration::from_secs(60),
        }];
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
    // A cache watcher open across the outage is told to resync afterwards.
    let mut watch = pb::cache_client::CacheClient::new(server.channel.clone())
        .watch(pb::WatchRequest {
            namespace: "ns".into(),
            key_prefix: String::new(),
            include_values: false,
        })
        .await
        .unwrap()
        .into_inner();

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
    // (The first failed call is what marks Redis down; health follows.)
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
    let resync = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = watch
                .message()
                .await
                .unwrap()
                .expect("the stream stays open");
            if event.kind == pb::watch_event::Kind::Resync as i32 {
                return event;
            }
        }
    })
    .await
    .expect("a RESYNC once the subscription is back");
    assert_eq!(resync.namespace, "ns");
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

/// While Redis is down, looking into buckets and exporting spans over
/// OTLP/HTTP fail promptly with UNAVAILABLE / 503 naming the store (never a
/// hang), and work again once Redis is back.
#[tokio::test]
async fn inspection_the_status_page_and_otlp_http_fail_clearly_while_redis_is_down_and_recover() {
    let Some(mut redis) = RedisServer::start(&[]) else {
        return;
    };
    let backend = Backend::Redis {
        url: redis.url(),
        prefix: "down".into(),
    };
    let server = TestServer::start_on(&backend, |c| {
        c.ratelimit.limits = vec![limit("api", 10, Duration::from_secs(60), 10)];
        c.leases.pools = vec![crate::leases::pool("db", 3)];
    })
    .await;
    let mut rl = RateLimiterClient::new(server.channel.clone());
    rl.acquire(acquire("api", "k")).await.unwrap();
    let pool_on_the_status_page = || async {
        let (code, body) = tokio::time::timeout(
            Duration::from_secs(10),
            crate::common::http_get(server.metrics, "/status.json"),
        )
        .await
        .expect("the status page hung with Redis down");
        assert_eq!(code, 200, "{body}");
        let snapshot: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(snapshot["server"]["backend"], "redis");
        snapshot["leases"]["pools"][0].clone()
    };
    assert_eq!(pool_on_the_status_page().await["capacity"], 3);
    let inspect = || pb::InspectBucketRequest {
        limit: "api".into(),
        key: "k".into(),
    };
    let hot = || pb::HotKeysRequest {
        limit: "api".into(),
        count: 5,
    };
    assert_eq!(
        rl.inspect_bucket(inspect()).await.unwrap().into_inner().key,
        "k"
    );
    assert!(
        !rl.hot_keys(hot())
            .await
            .unwrap()
            .into_inner()
            .buckets
            .is_empty()
    );

    redis.kill();
    let within = Duration::from_secs(10);
    let status = tokio::time::timeout(within, rl.inspect_bucket(inspect()))
        .await
        .expect("InspectBucket hung with Redis down")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!status.message().is_empty());
    let status = tokio::time::timeout(within, rl.hot_keys(hot()))
        .await
        .expect("HotKeys hung with Redis down")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The status page still answers, the pool's entry naming the outage
    // (a second after the last snapshot: they are shared for one).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pool = pool_on_the_status_page().await;
    assert_eq!(pool["pool"], "db");
    assert_eq!(pool["error"]["code"], "Unavailable", "{pool}");

    // Spans go to Redis too: an export is refused with 503 (retryable for
    // OTLP exporters) and the reason, then taken again once Redis is back.
    let url = format!("http://{}/v1/traces", server.otlp_http.unwrap());
    let body = crate::traces::otlp_json("4bf92f3577b34da6a3ce929d0e0e4736", "GET /during-outage");
    let args = [
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body.as_str(),
    ];
    let post = || crate::traces::curl(&url, &args);
    let (code, answer) = tokio::time::timeout(within, post())
        .await
        .expect("OTLP/HTTP hung with Redis down");
    assert_eq!(code, 503, "{answer}");
    assert!(
        answer.contains("\"code\":14") && answer.contains("Redis store is unreachable"),
        "{answer}"
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, answer) = post().await;
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never taken again after Redis came back: {code} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rl.inspect_bucket(inspect())
            .await
            .unwrap()
            .into_inner()
            .limit,
        "api"
    );
    // A second later (snapshots are shared for one), the pool is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(pool_on_the_status_page().await["in_use"], 0);
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
        // Both capabilities whose state lives in Redis follow it.
        let mut status = Vec::new();
        for service in ["gantry.v1.RateLimiter", "gantry.v1.Leases"] {
            status.push(
                health
                    .check(HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .map(|r| r.into_inner().status),
            );
        }
        if status
            .iter()
            .all(|s| s.as_ref().ok() == Some(&(want as i32)))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health never became {want:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three gantry processes share one lease pool: callers on every replica
/// acquire, hold and release at random and never hold more than the
/// capacity together; a waiter on one replica is woken at once by a release
/// on another; and the units of a replica killed with SIGKILL come back when
/// its leases expire.
#[tokio::test]
async fn three_replicas_share_a_lease_pool_and_a_killed_one_gives_its_units_back() {
    use pb::leases_client::LeasesClient;
    const CAPACITY: i64 = 6;
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let backend = Backend::Redis {
        url: redis.url(),
        prefix: "leases".into(),
    };
    let (_dir, mut replicas, channels) = replicas(
        &backend,
        "[[leases.pools]]\nname = \"db\"\ncapacity = 6\ndefault_ttl = \"2s\"\nmax_ttl = \"1m\"\n",
        3,
        "gantry.v1.Leases",
    )
    .await;
    let mut clients: Vec<LeasesClient<_>> = channels.into_iter().map(LeasesClient::new).collect();
    let ask = |holder: &str, count: u32, max_wait: Duration| pb::AcquireLeaseRequest {
        pool: "db".into(),
        holder: holder.into(),
        count,
        max_wait: Some(prost_types::Duration {
            seconds: max_wait.as_secs() as i64,
            nanos: max_wait.subsec_nanos() as i32,
        }),
        ..Default::default()
    };

    // Contention from every replica: what the callers hold together (counted
    // from a grant until its release is sent) never passes the capacity.
    let held = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut tasks = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        for t in 0..6u64 {
            let mut client = client.clone();
            let (held, peak) = (held.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let mut granted = 0;
                let until = Instant::now() + Duration::from_secs(5);
                while Instant::now() < until {
                    let count = 1 + ((t + granted) % 2) as u32;
                    let lease = client
                        .acquire(ask(
                            &format!("r{i}-t{t}"),
                            count,
                            Duration::from_millis(300),
                        ))
                        .await
                        .unwrap()
                        .into_inner();
                    if !lease.granted {
                        continue;
                    }
                    granted += 1;
                    let now = held.fetch_add(i64::from(count), Ordering::SeqCst) + i64::from(count);
                    peak.fetch_max(now, Ordering::SeqCst);
                    assert!(now <= CAPACITY, "{now} units held at once");
                    tokio::time::sleep(Duration::from_millis(5 + (t * 7) % 20)).await;
                    held.fetch_sub(i64::from(count), Ordering::SeqCst);
                    client
                        .release(pb::ReleaseLeaseRequest {
                            lease_id: lease.lease_id,
                        })
                        .await
                        .unwrap();
                }
                granted
            }));
        }
    }
    let mut granted = 0;
    for task in tasks {
        granted += task.await.unwrap();
    }
    assert!(granted > 50, "only {granted} grants: no contention");
    assert!(peak.load(Ordering::SeqCst) >= CAPACITY - 2);

    // A waiter on replica 1 is woken by a release on replica 0.
    let all = clients[0]
        .acquire(ask("holder-0", 6, Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    assert!(all.granted);
    let mut waiting = clients[1].clone();
    let waiter = tokio::spawn(async move {
        waiting
            .acquire(ask("holder-1", 6, Duration::from_secs(10)))
            .await
            .unwrap()
            .into_inner()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released_at = Instant::now();
    assert!(
        clients[0]
            .release(pb::ReleaseLeaseRequest {
                lease_id: all.lease_id,
            })
            .await
            .unwrap()
            .into_inner()
            .released
    );
    let woken = waiter.await.unwrap();
    assert!(woken.granted);
    assert!(
        released_at.elapsed() < Duration::from_millis(500),
        "woken {:?} after the release on another replica",
        released_at.elapsed()
    );
    clients[1]
        .release(pb::ReleaseLeaseRequest {
            lease_id: woken.lease_id,
        })
        .await
        .unwrap();

    // Replica 2 takes 4 units (TTL 2 s) and is killed; they come back when
    // the leases expire, and a waiter on replica 0 gets them.
    let taken = clients[2]
        .acquire(ask("doomed", 4, Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    assert!(taken.granted);
    replicas[2].signal("KILL");
    replicas[2].wait_exit(Duration::from_secs(10));
    let killed_at = Instant::now();
    let after = clients[0]
        .acquire(ask("survivor", 6, Duration::from_secs(10)))
        .await
        .unwrap()
        .into_inner();
    assert!(after.granted, "the killed replica's units came back");
    let waited = killed_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(4),
        "granted {waited:?} after the kill (TTL 2 s)"
    );
    drop(clients);
    stop_all(&mut replicas[..2]);
}

/// Three gantry processes share one cache: a Put on one is read on the
/// others at once, versions and compare-and-set are global, and a Watch on
/// one replica sees the writes and deletes made on the others.
#[tokio::test]
async fn three_replicas_share_one_cache() {
    if let Some(redis) = RedisServer::start(&[]) {
        three_replicas_share_one_cache_on(redis).await;
    }
}

#[tokio::test]
async fn three_replicas_on_valkey_share_one_cache() {
    if let Some(valkey) = RedisServer::start_valkey() {
        three_replicas_share_one_cache_on(valkey).await;
    }
}

async fn three_replicas_share_one_cache_on(redis: RedisServer) {
    use pb::cache_client::CacheClient;
    use tokio_stream::StreamExt;
    let backend = Backend::Redis {
        url: redis.url(),
        prefix: "cache".into(),
    };
    let (_dir, mut processes, channels) = replicas(&backend, "", 3, "gantry.v1.Cache").await;
    let mut caches: Vec<CacheClient<_>> = channels.iter().cloned().map(CacheClient::new).collect();
    let put =
        |key: &str, value: &[u8], condition: Option<pb::put_request::Condition>| pb::PutRequest {
            namespace: "shared".into(),
            key: key.into(),
            value: value.to_vec().into(),
            condition,
            ..Default::default()
        };
    let get = |key: &str| pb::GetRequest {
        namespace: "shared".into(),
        key: key.into(),
    };

    // Watch on replica 2; a first write proves its listener is subscribed.
    let mut events = caches[2]
        .watch(pb::WatchRequest {
            namespace: "shared".into(),
            key_prefix: String::new(),
            include_values: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut warmed = false;
    for _ in 0..50 {
        caches[0].put(put("warm", b"1", None)).await.unwrap();
        if let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_millis(100), events.next()).await
        {
            warmed = true;
            break;
        }
    }
    assert!(
        warmed,
        "the watcher on replica 2 never saw a write on replica 0"
    );
    // Events of the warm-up that arrived late are not what follows.
    while let Ok(Some(Ok(_))) =
        tokio::time::timeout(Duration::from_millis(200), events.next()).await
    {}

    let v1 = caches[0]
        .put(put("k", b"one", None))
        .await
        .unwrap()
        .into_inner()
        .version;
    let read = caches[1].get(get("k")).await.unwrap().into_inner();
    assert!(read.found);
    assert_eq!((&read.value[..], read.version), (&b"one"[..], v1));
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.kind, pb::watch_event::Kind::Put as i32);
    assert_eq!(
        (event.key.as_str(), event.version, &event.value[..]),
        ("k", v1, &b"one"[..])
    );

    // Compare-and-set at v1 from every replica at once: exactly one wins.
    let mut racers = Vec::new();
    for (i, cache) in caches.iter().enumerate() {
        let mut cache = cache.clone();
        let request = put(
            "k",
            format!("from {i}").as_bytes(),
            Some(pb::put_request::Condition::IfVersion(v1)),
        );
        racers.push(tokio::spawn(async move { cache.put(request).await }));
    }
    let mut winners = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            Ok(won) => winners.push(won.into_inner().version),
            Err(lost) => assert_eq!(lost.code(), Code::FailedPrecondition, "{lost:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert!(winners[0] > v1);

    // A delete on replica 1 is seen by the watcher on replica 2.
    while let Ok(Some(Ok(e))) =
        tokio::time::timeout(Duration::from_millis(300), events.next()).await
    {
        assert_eq!(e.kind, pb::watch_event::Kind::Put as i32, "the winning put");
    }
    let deleted = caches[1]
        .delete(pb::DeleteRequest {
            namespace: "shared".into(),
            key: "k".into(),
            if_version: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (event.kind, event.version),
        (pb::watch_event::Kind::Delete as i32, winners[0])
    );
    assert!(!caches[0].get(get("k")).await.unwrap().into_inner().found);

    // Replica 1 serves a key from its hot tier once read; a write on replica
    // 0 reaches it through the change event within moments.
    caches[0].put(put("hot", b"old", None)).await.unwrap();
    // Replica 1 keeps what it reads once it hears every replica's changes
    // (its subscription may come up a moment after it serves).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let read = caches[1].get(get("hot")).await.unwrap().into_inner();
        assert_eq!(&read.value[..], b"old");
        let stats = caches[1]
            .stats(pb::CacheStatsRequest {
                namespace: "shared".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if stats.namespaces[0].hot_hits >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never served from the hot tier: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written = Instant::now();
    caches[0].put(put("hot", b"new", None)).await.unwrap();
    loop {
        let read = caches[1].get(get("hot")).await.unwrap().into_inner();
        if &read.value[..] == b"new" {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_millis(500),
            "replica 1 still serves the old value {:?} after the write",
            written.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(events);
    drop(caches);
    drop(channels);
    stop_all(&mut processes);
}

/// Three gantry processes, one trace: its spans arrive through different
/// replicas, and GetTrace on any replica returns the whole trace, parents
/// before children.
#[tokio::test]
async fn a_trace_ingested_through_three_replicas_is_whole_on_each() {
    use pb::traces_client::TracesClient;
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let backend = Backend::Redis {
        url: redis.url(),
        prefix: "traces".into(),
    };
    let (_dir, mut processes, channels) = replicas(&backend, "", 3, "gantry.v1.Traces").await;
    let now = now_nanos();
    let span = |id: u8, parent: Option<u8>, name: &str| {
        let start = now + u64::from(id) * 1_000_000;
        pb::Span {
            trace_id: vec![7; 16].into(),
            span_id: vec![id; 8].into(),
            parent_span_id: parent.map(|p| vec![p; 8].into()).unwrap_or_default(),
            service: format!("service-{id}"),
            name: name.into(),
            kind: pb::SpanKind::Server as i32,
            start: Some(timestamp(start)),
            end: Some(timestamp(start + 5_000_000)),
            ..Default::default()
        }
    };
    // The children arrive first, each through another replica.
    let arrivals = [
        (2, vec![span(3, Some(2), "db"), span(4, Some(2), "cache")]),
        (1, vec![span(2, Some(1), "checkout")]),
        (0, vec![span(1, None, "GET /cart")]),
    ];
    for (replica, spans) in arrivals {
        TracesClient::new(channels[replica].clone())
            .ingest(pb::IngestRequest { spans })
            .await
            .unwrap();
    }
    for channel in &channels {
        let trace = TracesClient::new(channel.clone())
            .get_trace(pb::GetTraceRequest {
                trace_id: vec![7; 16].into(),
            })
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<u8> = trace.spans.iter().map(|s| s.span_id[0]).collect();
        assert_eq!(ids.len(), 4, "{ids:?}");
        assert_eq!(ids[0], 1, "the root first: {ids:?}");
        assert_eq!(ids[1], 2, "then its child: {ids:?}");
    }
    drop(channels);
    stop_all(&mut processes);
}

/// Three gantry processes record executions of the same statement; within
/// the publish interval, TopQueries on any replica counts all of them, with
/// percentiles of all the executions (a merged histogram: one replica's slow
/// executions move the fleet's p99, not its p50), and SlowQueries lists every
/// replica's slow ones.
#[tokio::test]
async fn query_statistics_answer_for_the_whole_fleet() {
    use pb::query_analyzer_client::QueryAnalyzerClient;
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let backend = Backend::Redis {
        url: redis.url(),
        prefix: "query".into(),
    };
    let (_dir, mut processes, channels) = replicas(
        &backend,
        "[query]\nslow_threshold = \"500ms\"\n",
        3,
        "gantry.v1.QueryAnalyzer",
    )
    .await;
    let execution = |ms: u64| pb::QueryExecution {
        sql: "SELECT * FROM orders WHERE id = 42".into(),
        duration: Some(prost_types::Duration {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }),
        rows: 1,
        service: "shop".into(),
        ..Default::default()
    };
    // Replicas 0 and 1: 50 fast executions each; replica 2: 2 slow ones.
    for (replica, ms, count) in [(0, 10, 50), (1, 10, 50), (2, 900, 2)] {
        let accepted = QueryAnalyzerClient::new(channels[replica].clone())
            .record(pb::RecordRequest {
                executions: (0..count).map(|_| execution(ms)).collect(),
            })
            .await
            .unwrap()
            .into_inner()
            .accepted;
        assert_eq!(accepted, count as u32);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for channel in &channels {
        let mut client = QueryAnalyzerClient::new(channel.clone());
        let top = loop {
            let top = client
                .top_queries(pb::TopQueriesRequest::default())
                .await
                .unwrap()
                .into_inner();
            if top.queries.first().is_some_and(|q| q.calls == 102) || Instant::now() > deadline {
                break top;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let q = &top.queries[0];
        assert_eq!(q.calls, 102, "{top:?}");
        let ms = |d: &Option<prost_types::Duration>| {
            let d = d.expect("set");
            d.seconds as u64 * 1000 + d.nanos as u64 / 1_000_000
        };
        assert!(ms(&q.p50).abs_diff(10) <= 1, "p50 of all executions: {q:?}");
        assert!(
            ms(&q.p99).abs_diff(900) <= 9,
            "p99 of all executions: {q:?}"
        );
        assert_eq!(ms(&q.max), 900);
        assert_eq!(q.rows, 102);
        let slow = client
            .slow_queries(pb::SlowQueriesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(slow.queries.len(), 2, "{slow:?}");
    }
    drop(channels);
    stop_all(&mut processes);
}

/// A Redis that requires a password (here an ACL user's): gantry
/// authenticates with `username` and `password_file` — a password that is in
/// no configuration value — and without them stays NOT_SERVING, saying why.
#[tokio::test]
async fn a_password_protected_redis_is_reached_with_a_password_file() {
    let Some(redis) = RedisServer::start(&[
        "--user",
        "gantry",
        "on",
        ">s3cret-pass",
        "~*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("redis-password");
    std::fs::write(&password, "s3cret-pass\n").unwrap();
    let backend = Backend::Redis {
        url: redis.url(),
        prefix: "auth".into(),
    };
    let server = TestServer::start_on(&backend, |c| {
        c.ratelimit.limits = vec![limit("api", 1, Duration::from_secs(3600), 2)];
        c.storage.redis.username = "gantry".into();
        c.storage.redis.password_file = password.clone();
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
    server.stop().await.unwrap();

    // Without the credentials: never SERVING, and calls say the store is unreachable.
    let mut config = crate::common::test_config(dir.path());
    backend.configure(&mut config);
    config.ratelimit.limits = vec![limit("api", 1, Duration::from_secs(3600), 2)];
    let gantry = gantry::server::Gantry::build(config, false).await.unwrap();
    let addr = gantry.grpc_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(gantry.serve(shutdown.clone()));
    let channel = connect(addr).await;
    let status = RateLimiterClient::new(channel.clone())
        .acquire(acquire("api", "k"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "gantry.v1.RateLimiter".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    shutdown.cancel();
    handle.await.unwrap().unwrap();
}

/// EndpointStats for the fleet: spans of one endpoint arrive through three
/// replicas (fast ones through two, slow failing ones through the third);
/// every replica reports all the calls, all the errors and the percentiles
/// of all of them.
#[tokio::test]
async fn endpoint_stats_answer_for_the_whole_fleet() {
    use pb::traces_client::TracesClient;
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let backend = Backend::Redis {
        url: redis.url(),
        prefix: "endpoints".into(),
    };
    let (_dir, mut processes, channels) = replicas(&backend, "", 3, "gantry.v1.Traces").await;
    let now = now_nanos();
    let span = |n: u64, ms: u64, failed: bool| pb::Span {
        trace_id: (n as u128 + 1).to_be_bytes().to_vec().into(),
        span_id: (n + 1).to_be_bytes().to_vec().into(),
        service: "shop".into(),
        name: "GET /cart".into(),
        kind: pb::SpanKind::Server as i32,
        start: Some(timestamp(now - ms * 1_000_000)),
        end: Some(timestamp(now)),
        status: failed.then(|| pb::SpanStatus {
            code: pb::span_status::Code::Error as i32,
            message: "boom".into(),
        }),
        ..Default::default()
    };
    for (replica, first, count, ms, failed) in [
        (0, 0, 50, 10, false),
        (1, 50, 50, 10, false),
        (2, 100, 2, 900, true),
    ] {
        TracesClient::new(channels[replica].clone())
            .ingest(pb::IngestRequest {
                spans: (first..first + count)
                    .map(|n| span(n, ms, failed))
                    .collect(),
            })
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for channel in &channels {
        let mut client = TracesClient::new(channel.clone());
        let stats = loop {
            let stats = client
                .endpoint_stats(pb::EndpointStatsRequest {
                    service: "shop".into(),
                    window: None,
                })
                .await
                .unwrap()
                .into_inner();
            if stats.endpoints.first().is_some_and(|e| e.calls == 102) || Instant::now() > deadline
            {
                break stats;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(stats.endpoints.len(), 1, "{stats:?}");
        let e = &stats.endpoints[0];
        assert_eq!((e.calls, e.errors), (102, 2), "{e:?}");
        let ms = |d: &Option<prost_types::Duration>| {
            let d = d.expect("set");
            d.seconds as u64 * 1000 + d.nanos as u64 / 1_000_000
        };
        assert!(ms(&e.p50).abs_diff(10) <= 1, "{e:?}");
        assert!(ms(&e.p99).abs_diff(900) <= 9, "{e:?}");
    }
    drop(channels);
    stop_all(&mut processes);
}

/// `rediss://` to a Redis that requires client certificates, verified with a
/// private CA (`storage.redis.ca_file`, `cert_file`, `key_file`); without
/// the client certificate gantry never reaches it.
#[tokio::test]
async fn a_redis_behind_mutual_tls_is_reached_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::certs::Ca::new("redis CA");
    let redis_pair = ca.server(dir.path(), "redis");
    let client = ca.client(dir.path(), "gantry", "spiffe://fleet/gantry");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let (cert, key, ca_arg) = (
        redis_pair.cert_file.display().to_string(),
        redis_pair.key_file.display().to_string(),
        ca_file.display().to_string(),
    );
    let Some(redis) = RedisServer::start_tls(&[
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_arg,
        "--tls-auth-clients",
        "yes",
    ]) else {
        return;
    };
    let backend = Backend::Redis {
        url: format!("rediss://127.0.0.1:{}", redis.port),
        prefix: "tls".into(),
    };
    let server = TestServer::start_on(&backend, |c| {
        c.ratelimit.limits = vec![limit("api", 1, Duration::from_secs(3600), 2)];
        c.storage.redis.ca_file = ca_file.clone();
        c.storage.redis.cert_file = client.cert_file.clone();
        c.storage.redis.key_file = client.key_file.clone();
    })
    .await;
    let mut rl = RateLimiterClient::new(server.channel.clone());
    let granted: Vec<bool> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(
                rl.acquire(acquire("api", "k"))
                    .await
                    .unwrap()
                    .into_inner()
                    .allowed,
            );
        }
        out
    };
    assert_eq!(granted, [true, true, false], "one bucket in Redis over TLS");
    server.stop().await.unwrap();

    // The CA alone (no client certificate): Redis refuses the handshake.
    let mut config = crate::common::test_config(dir.path());
    backend.configure(&mut config);
    config.ratelimit.limits = vec![limit("api", 1, Duration::from_secs(3600), 2)];
    config.storage.redis.ca_file = ca_file.clone();
    let gantry = gantry::server::Gantry::build(config, false).await.unwrap();
    let addr = gantry.grpc_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(gantry.serve(shutdown.clone()));
    let status = RateLimiterClient::new(connect(addr).await)
        .acquire(acquire("api", "k"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    shutdown.cancel();
    handle.await.unwrap().unwrap();
}

/// A Redis Cluster master is SIGKILLed and its replica promoted: gantry
/// follows the new topology — values written before are read, tokens are
/// decided, and expiries on the promoted node reach watchers (the primaries
/// are listed again).
#[tokio::test]
async fn a_redis_cluster_failover_is_followed() {
    use pb::cache_client::CacheClient;
    use tokio_stream::StreamExt;
    let Some(mut cluster) = RedisCluster::start_with_replicas() else {
        return;
    };
    let backend = Backend::RedisCluster {
        nodes: cluster.nodes(),
        prefix: "failover".into(),
    };
    let server = TestServer::start_on(&backend, |c| {
        c.ratelimit.limits = vec![limit("api", 1000, Duration::from_secs(1), 1000)];
    })
    .await;
    let mut cache = CacheClient::new(server.channel.clone());
    let mut limits = RateLimiterClient::new(server.channel.clone());
    let put = |key: String, ttl: Option<Duration>| pb::PutRequest {
        namespace: "f".into(),
        key: key.clone(),
        value: key.into_bytes().into(),
        ttl: ttl.map(|d| prost_types::Duration::try_from(d).unwrap()),
        ..Default::default()
    };
    // Keys over every slot range, so some live on the master that dies.
    for i in 0..60 {
        cache.put(put(format!("k{i}"), None)).await.unwrap();
    }
    assert!(
        limits
            .acquire(acquire("api", "a"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // Replication is asynchronous: give the replicas the writes.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let victim = cluster.a_master();
    cluster.servers[victim].kill();
    let survivor = (victim + 1) % cluster.servers.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    // The dead master is marked failing, then its replica takes its slots.
    while !cluster.nodes_seen_by(survivor).contains("master,fail")
        || cluster.healthy_masters_seen_by(survivor) < 3
    {
        assert!(Instant::now() < deadline, "no replica was promoted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = Instant::now();

    // Every value written before the failover is read again, and tokens
    // are decided, within seconds of the promotion.
    for i in 0..60 {
        let key = format!("k{i}");
        loop {
            match cache
                .get(pb::GetRequest {
                    namespace: "f".into(),
                    key: key.clone(),
                })
                .await
            {
                Ok(found) => {
                    let found = found.into_inner();
                    assert!(found.found, "{key} lost in the failover");
                    assert_eq!(&found.value[..], key.as_bytes());
                    break;
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    assert!(
                        promoted.elapsed() < Duration::from_secs(15),
                        "{key}: {status:?}\n{}",
                        cluster.nodes_seen_by(survivor)
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    loop {
        match limits.acquire(acquire("api", "a")).await {
            Ok(d) => {
                assert!(d.into_inner().allowed);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(promoted.elapsed() < Duration::from_secs(15), "{status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // The promoted node announces its own expiries: once the primaries were
    // listed again (every 5 s), watchers get EXPIRE from it too.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut events = cache
        .watch(pb::WatchRequest {
            namespace: "f".into(),
            key_prefix: "e".into(),
            include_values: false,
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<String> = (0..30).map(|i| format!("e{i}")).collect();
    for key in &keys {
        cache
            .put(put(key.clone(), Some(Duration::from_millis(200))))
            .await
            .unwrap();
    }
    let mut expired = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while expired.len() < keys.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(event))) = tokio::time::timeout(left, events.next()).await else {
            panic!("EXPIRE events for {} of {} keys", expired.len(), keys.len());
        };
        assert_ne!(
            event.kind,
            pb::watch_event::Kind::Resync as i32,
            "a RESYNC after the failover settled"
        );
        if event.kind == pb::watch_event::Kind::Expire as i32 {
            expired.insert(event.key);
        }
    }
    drop(events);
    server.stop().await.unwrap();
}
