//! Leases over real gRPC: every RPC and error, expiry and waking, fairness
//! between holders, cancellation, restarts, and many tasks at once checking
//! that the capacity is never exceeded.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use gantry::config::{HumanDuration, PoolConfig};
use gantry::proto::gantry::v1 as pb;
use pb::leases_client::LeasesClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::backends::Backend;
use crate::common::{TestServer, assert_status, http_get, metric_value};

pub(crate) fn pool(name: &str, capacity: u32) -> PoolConfig {
    PoolConfig {
        name: name.into(),
        capacity,
        max_per_holder: None,
        default_ttl: HumanDuration::from_secs(30),
        max_ttl: HumanDuration::from_secs(120),
    }
}

async fn server_with(backend: &Backend, pools: Vec<PoolConfig>) -> TestServer {
    TestServer::start_on(backend, move |c| c.leases.pools = pools).await
}

fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn ask(pool: &str, holder: &str, count: u32) -> pb::AcquireLeaseRequest {
    pb::AcquireLeaseRequest {
        pool: pool.into(),
        holder: holder.into(),
        count,
        ..Default::default()
    }
}

fn waiting(req: pb::AcquireLeaseRequest, max_wait: Duration) -> pb::AcquireLeaseRequest {
    pb::AcquireLeaseRequest {
        max_wait: Some(pb_duration(max_wait)),
        ..req
    }
}

async fn acquire(client: &mut LeasesClient<Channel>, req: pb::AcquireLeaseRequest) -> pb::Lease {
    client.acquire(req).await.unwrap().into_inner()
}

async fn release(client: &mut LeasesClient<Channel>, id: &str) -> bool {
    client
        .release(pb::ReleaseLeaseRequest {
            lease_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .released
}

pub(crate) async fn status(
    client: &mut LeasesClient<Channel>,
    pool: &str,
) -> pb::PoolStatusResponse {
    client
        .pool_status(pb::PoolStatusRequest { pool: pool.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Polls PoolStatus until `check` holds (waiters queue asynchronously).
pub(crate) async fn wait_for_status(
    client: &mut LeasesClient<Channel>,
    pool: &str,
    what: &str,
    check: impl Fn(&pb::PoolStatusResponse) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(client, pool).await;
        if check(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {s:?} after 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn millis_from_now(ts: &prost_types::Timestamp) -> i64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000 - now
}

crate::on_every_backend! {
cluster async fn acquire_renew_release_and_status_work_together(backend: Backend) {
    let server = server_with(&backend, vec![pool("orders-db", 10)]).await;
    let mut client = LeasesClient::new(server.channel.clone());

    let mut req = ask("orders-db", "instance-1", 4);
    req.ttl = Some(pb_duration(Duration::from_secs(20)));
    let lease = acquire(&mut client, req).await;
    assert!(lease.granted);
    assert_eq!(lease.pool, "orders-db");
    assert_eq!(lease.holder, "instance-1");
    assert_eq!(lease.count, 4);
    assert_eq!(lease.lease_id.len(), 32, "{lease:?}");
    let left = millis_from_now(lease.expires_at.as_ref().unwrap());
    assert!((15_000..=20_000).contains(&left), "expires in {left} ms");

    let other = acquire(&mut client, ask("orders-db", "instance-2", 0)).await;
    assert!(other.granted);
    assert_eq!(other.count, 1, "a count of 0 means 1");
    let again = acquire(&mut client, ask("orders-db", "instance-1", 2)).await;
    assert!(again.granted);

    let s = status(&mut client, "orders-db").await;
    assert_eq!((s.capacity, s.in_use, s.waiting), (10, 7, 0));
    let holders: Vec<(String, u32, u32)> = s
        .holders
        .iter()
        .map(|h| (h.holder.clone(), h.count, h.leases))
        .collect();
    assert_eq!(
        holders,
        vec![("instance-1".into(), 6, 2), ("instance-2".into(), 1, 1)]
    );

    // Renew: the TTL counts from now; unset means the pool's default (30 s),
    // and a longer ask is capped at max_ttl (120 s).
    let renewed = client
        .renew(pb::RenewLeaseRequest {
            lease_id: lease.lease_id.clone(),
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.granted);
    assert_eq!(renewed.lease_id, lease.lease_id);
    let left = millis_from_now(renewed.expires_at.as_ref().unwrap());
    assert!((25_000..=30_000).contains(&left), "renewed for {left} ms");
    let capped = client
        .renew(pb::RenewLeaseRequest {
            lease_id: lease.lease_id.clone(),
            ttl: Some(pb_duration(Duration::from_secs(3600))),
        })
        .await
        .unwrap()
        .into_inner();
    let left = millis_from_now(capped.expires_at.as_ref().unwrap());
    assert!((115_000..=120_000).contains(&left), "capped at {left} ms");

    assert!(release(&mut client, &lease.lease_id).await);
    assert!(
        !release(&mut client, &lease.lease_id).await,
        "release is idempotent"
    );
    let s = status(&mut client, "orders-db").await;
    assert_eq!(s.in_use, 3);

    // Renewing a released lease is NOT_FOUND.
    let err = client
        .renew(pb::RenewLeaseRequest {
            lease_id: lease.lease_id.clone(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(&lease.lease_id), "{}", err.message());
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn bad_calls_get_clear_errors(backend: Backend) {
    let mut small = pool("db", 5);
    small.max_per_holder = Some(2);
    let server = TestServer::start_on(&backend, |c| {
        c.leases.pools = vec![small];
        c.leases.max_waiters = 1;
    })
    .await;
    let mut client = LeasesClient::new(server.channel.clone());
    let expect =
        |result: Result<tonic::Response<pb::Lease>, tonic::Status>, code, words: &[&str]| {
            assert_status(result.unwrap_err(), code, words)
        };
    expect(
        client.acquire(ask("nope", "h", 1)).await,
        Code::NotFound,
        &["pool", "nope"],
    );
    expect(
        client.acquire(ask("db", "h", 6)).await,
        Code::InvalidArgument,
        &["count", "6", "capacity of 5"],
    );
    expect(
        client.acquire(ask("db", "h", 3)).await,
        Code::InvalidArgument,
        &["count", "3", "per-holder maximum of 2"],
    );
    expect(
        client.acquire(ask("db", "", 1)).await,
        Code::InvalidArgument,
        &["holder", "empty"],
    );
    expect(
        client.acquire(ask("db", &"h".repeat(300), 1)).await,
        Code::InvalidArgument,
        &["holder", "300 bytes", "leases.max_holder_bytes"],
    );
    let mut negative = ask("db", "h", 1);
    negative.ttl = Some(prost_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    expect(
        client.acquire(negative).await,
        Code::InvalidArgument,
        &["ttl", "negative"],
    );
    expect(
        client
            .renew(pb::RenewLeaseRequest {
                lease_id: "0123".into(),
                ttl: None,
            })
            .await,
        Code::NotFound,
        &["lease", "0123"],
    );
    let status = client
        .release(pb::ReleaseLeaseRequest {
            lease_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("lease_id"),
        "{}",
        status.message()
    );
    let status = client
        .pool_status(pb::PoolStatusRequest {
            pool: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Full pool: no wait means granted = false, not an error; a full queue
    // is RESOURCE_EXHAUSTED.
    for holder in ["a", "b"] {
        assert!(acquire(&mut client, ask("db", holder, 2)).await.granted);
    }
    let denied = acquire(&mut client, ask("db", "c", 2)).await;
    assert!(!denied.granted);
    assert!(denied.lease_id.is_empty());
    assert_eq!((denied.pool.as_str(), denied.count), ("db", 2));
    assert_eq!(denied.denial_reason(), pb::DenialReason::PoolFull);
    // One unit is free, but "a" holds its maximum of 2: the answer says so.
    let over_own = acquire(&mut client, ask("db", "a", 1)).await;
    assert!(!over_own.granted);
    assert_eq!(over_own.denial_reason(), pb::DenialReason::HolderLimit);
    // A wait that runs out says why too.
    let timed_out = acquire(
        &mut client,
        waiting(ask("db", "c", 2), Duration::from_millis(200)),
    )
    .await;
    assert!(!timed_out.granted);
    assert_eq!(timed_out.denial_reason(), pb::DenialReason::PoolFull);
    let mut waiter = client.clone();
    let queued = tokio::spawn(async move {
        waiter
            .acquire(waiting(ask("db", "c", 2), Duration::from_secs(2)))
            .await
    });
    wait_for_status(&mut client, "db", "one waiter", |s| s.waiting == 1).await;
    // The free unit fits "d", but "c" came first.
    let behind = acquire(&mut client, ask("db", "d", 1)).await;
    assert!(!behind.granted);
    assert_eq!(behind.denial_reason(), pb::DenialReason::QueueAhead);
    expect(
        client
            .acquire(waiting(ask("db", "d", 1), Duration::from_secs(2)))
            .await,
        Code::ResourceExhausted,
        &["queue", "db", "leases.max_waiters"],
    );
    queued.abort();
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn an_expired_lease_wakes_a_waiter_at_once(backend: Backend) {
    let server = server_with(&backend, vec![pool("db", 1)]).await;
    let mut client = LeasesClient::new(server.channel.clone());
    let mut short = ask("db", "a", 1);
    short.ttl = Some(pb_duration(Duration::from_millis(400)));
    let held = acquire(&mut client, short).await;
    assert!(held.granted);

    let started = Instant::now();
    let lease = acquire(
        &mut client,
        waiting(ask("db", "b", 1), Duration::from_secs(10)),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(lease.granted, "{lease:?}");
    assert_eq!(lease.holder, "b");
    // Granted when the first lease expired (~400 ms), not after polling or
    // at the end of the wait.
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let waited = lease.waited.unwrap();
    assert!(waited.seconds < 5 && (waited.seconds > 0 || waited.nanos > 250_000_000));

    let s = status(&mut client, "db").await;
    assert_eq!(s.in_use, 1);
    assert_eq!(s.holders[0].holder, "b");
    // The expired lease is gone for good.
    let err = client
        .renew(pb::RenewLeaseRequest {
            lease_id: held.lease_id.clone(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "gantry_leases_ended_total{pool=\"db\",result=\"expired\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn a_wait_that_runs_out_answers_not_granted_before_the_deadline(backend: Backend) {
    let server = server_with(&backend, vec![pool("db", 1)]).await;
    let mut client = LeasesClient::new(server.channel.clone());
    assert!(acquire(&mut client, ask("db", "a", 1)).await.granted);

    let started = Instant::now();
    let lease = acquire(
        &mut client,
        waiting(ask("db", "b", 1), Duration::from_millis(300)),
    )
    .await;
    assert!(!lease.granted);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A deadline shorter than max_wait: still an answer, not DEADLINE_EXCEEDED.
    let mut req = tonic::Request::new(waiting(ask("db", "b", 1), Duration::from_secs(30)));
    req.set_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let lease = client.acquire(req).await.unwrap().into_inner();
    assert!(!lease.granted);
    assert!(started.elapsed() < Duration::from_secs(5));

    let s = status(&mut client, "db").await;
    assert_eq!((s.in_use, s.waiting), (1, 0), "nobody left in the queue");
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "gantry_leases_acquisitions_total{pool=\"db\",result=\"timed_out\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    server.stop().await.unwrap();
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_granted_in_turn_between_holders() {
    // Embedded only: with Redis, each replica queues its waiters in arrival
    // order, without rotating between holders (docs/cluster.md).
    let server = server_with(&Backend::Sled, vec![pool("db", 1)]).await;
    let mut client = LeasesClient::new(server.channel.clone());
    let first = acquire(&mut client, ask("db", "x", 1)).await;

    // A greedy holder queues three, then two others arrive; each waiter
    // reports its grant on a channel.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let order = ["greedy", "greedy", "greedy", "b", "c"];
    for (n, holder) in order.iter().enumerate() {
        let mut c = client.clone();
        let tx = tx.clone();
        let holder = holder.to_string();
        tokio::spawn(async move {
            let lease = acquire(
                &mut c,
                waiting(ask("db", &holder, 1), Duration::from_secs(30)),
            )
            .await;
            tx.send(lease).unwrap();
        });
        wait_for_status(&mut client, "db", "queued in order", |s| {
            s.waiting as usize == n + 1
        })
        .await;
    }
    let mut granted = Vec::new();
    let mut held = first.lease_id;
    for _ in 0..order.len() {
        assert!(release(&mut client, &held).await);
        let lease = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a waiter is granted when units return")
            .unwrap();
        assert!(lease.granted);
        granted.push(lease.holder.clone());
        held = lease.lease_id;
    }
    assert_eq!(granted, vec!["greedy", "b", "c", "greedy", "greedy"]);
    server.stop().await.unwrap();
}

crate::on_every_backend! {
async fn a_cancelled_waiter_leaves_the_queue_without_consuming(backend: Backend) {
    let server = server_with(&backend, vec![pool("db", 2)]).await;
    let mut client = LeasesClient::new(server.channel.clone());
    let held = acquire(&mut client, ask("db", "a", 2)).await;

    let mut c = client.clone();
    let waiter = tokio::spawn(async move {
        c.acquire(waiting(ask("db", "big", 2), Duration::from_secs(60)))
            .await
    });
    wait_for_status(&mut client, "db", "one waiter", |s| s.waiting == 1).await;
    // The big waiter blocks smaller ones behind it…
    assert!(!acquire(&mut client, ask("db", "small", 1)).await.granted);
    // …until it goes away (the client drops the call: HTTP/2 RST_STREAM).
    waiter.abort();
    wait_for_status(&mut client, "db", "waiter gone", |s| s.waiting == 0).await;
    assert!(release(&mut client, &held.lease_id).await);
    let s = status(&mut client, "db").await;
    assert_eq!(s.in_use, 0, "the cancelled waiter consumed nothing");
    assert!(acquire(&mut client, ask("db", "small", 1)).await.granted);
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn leases_survive_a_restart_and_those_that_expired_meanwhile_do_not(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        TestServer::start_in_on(dir.path(), &backend, |c| {
            c.leases.pools = vec![pool("db", 5)]
        })
    };
    let server = start().await;
    let mut client = LeasesClient::new(server.channel.clone());
    let long = acquire(&mut client, ask("db", "long", 3)).await;
    let mut short = ask("db", "short", 2);
    short.ttl = Some(pb_duration(Duration::from_millis(300)));
    assert!(acquire(&mut client, short).await.granted);
    server.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let server = start().await;
    let mut client = LeasesClient::new(server.channel.clone());
    let s = status(&mut client, "db").await;
    assert_eq!(s.in_use, 3, "{s:?}");
    assert_eq!(s.holders.len(), 1);
    assert_eq!(s.holders[0].holder, "long");
    assert!(!acquire(&mut client, ask("db", "x", 3)).await.granted);
    assert!(
        release(&mut client, &long.lease_id).await,
        "the old id still works"
    );
    assert!(acquire(&mut client, ask("db", "x", 5)).await.granted);
    server.stop().await.unwrap();
}
}

// Many tasks acquire (some waiting), hold briefly and release at random.
// Each task counts the units it holds from the moment a grant arrives until
// it sends the release; that count (a lower bound on what the server holds)
// must never pass the capacity, nor may PoolStatus's `in_use`.
crate::on_every_backend! {
cluster async fn many_tasks_at_random_never_exceed_the_capacity(backend: Backend) {
    const CAPACITY: u32 = 10;
    let mut p = pool("db", CAPACITY);
    p.max_per_holder = Some(6);
    let server = server_with(&backend, vec![p]).await;
    let held = Arc::new(AtomicI64::new(0));
    let peak = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut checker = LeasesClient::new(server.channel.clone());
    let checker_stop = stop.clone();
    let checks = tokio::spawn(async move {
        let mut n = 0u32;
        while !checker_stop.load(Ordering::Relaxed) {
            let s = status(&mut checker, "db").await;
            assert!(s.in_use <= CAPACITY, "in_use {} > {CAPACITY}", s.in_use);
            let by_holders: u32 = s.holders.iter().map(|h| h.count).sum();
            assert_eq!(by_holders, s.in_use);
            n += 1;
        }
        n
    });

    let mut tasks = Vec::new();
    for t in 0..24u64 {
        let mut client = LeasesClient::new(server.channel.clone());
        let (held, peak) = (held.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = 0x2545_F491_4F6C_DD1D_u64 ^ (t + 1).wrapping_mul(0x9E37_79B9);
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let (mut granted, mut asked) = (0u32, 0u32);
            for _ in 0..40 {
                let count = 1 + next(3) as u32;
                let holder = format!("holder-{}", next(6));
                let mut req = ask("db", &holder, count);
                if next(2) == 0 {
                    req = waiting(req, Duration::from_millis(20 + next(200)));
                }
                asked += 1;
                let lease = acquire(&mut client, req).await;
                if !lease.granted {
                    continue;
                }
                granted += 1;
                let now = held.fetch_add(i64::from(count), Ordering::SeqCst) + i64::from(count);
                peak.fetch_max(now, Ordering::SeqCst);
                assert!(now <= i64::from(CAPACITY), "{now} units held at once");
                tokio::time::sleep(Duration::from_millis(next(15))).await;
                held.fetch_sub(i64::from(count), Ordering::SeqCst);
                assert!(release(&mut client, &lease.lease_id).await);
            }
            (granted, asked)
        }));
    }
    let mut granted = 0;
    for task in tasks {
        granted += task.await.unwrap().0;
    }
    stop.store(true, Ordering::Relaxed);
    let checks = checks.await.unwrap();
    assert!(checks > 5, "the checker ran {checks} times");
    assert!(
        granted > 100,
        "only {granted} grants: the test did not contend"
    );
    assert!(peak.load(Ordering::SeqCst) >= i64::from(CAPACITY) - 3);

    let mut client = LeasesClient::new(server.channel.clone());
    let s = status(&mut client, "db").await;
    assert_eq!((s.in_use, s.waiting), (0, 0), "{s:?}");
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "gantry_leases_acquisitions_total{pool=\"db\",result=\"granted\"}"
        ),
        Some(f64::from(granted)),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "gantry_leases_in_use{pool=\"db\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&metrics, "gantry_leases_capacity{pool=\"db\"}"),
        Some(f64::from(CAPACITY))
    );
    if !backend.is_redis() {
        let writes = metric_value(&metrics, "gantry_leases_journal_writes_total").unwrap();
        assert!(writes >= f64::from(granted), "{writes} journal writes");
    }
    server.stop().await.unwrap();
}
}
