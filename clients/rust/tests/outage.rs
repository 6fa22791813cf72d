//! What the client does when gantry does not answer — the failure policy, the
//! circuit breaker, several endpoints, leases and the near cache — against a
//! real gantry the tests SIGKILL and start again (docs/client-resilience.md).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gantry_client::{Decision, DecisionSource, FailurePolicy, Gantry, Limiter};

mod common;
use common::start;

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Call {
    at: Instant,
    took: Duration,
    decision: Result<Decision, String>,
}

/// Calls `limiter.acquire` every 5 ms (no wait, a 300 ms timeout) until stopped.
fn stream(
    limiter: Limiter,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Vec<Call>>,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut calls = Vec::new();
        while !*stopped.borrow() {
            let at = Instant::now();
            let decision = limiter
                .acquire(1, Duration::ZERO)
                .await
                .map_err(|e| e.to_string());
            calls.push(Call {
                at,
                took: at.elapsed(),
                decision,
            });
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = stopped.changed() => {}
            }
        }
        calls
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_policies_when_gantry_is_killed_and_restarted() {
    let Some(mut server) = start() else { return };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for policy in [
        FailurePolicy::FailOpen,
        FailurePolicy::FailClosed,
        FailurePolicy::Local,
    ] {
        let mut gantry = Gantry::connect(&server.addr, Duration::from_secs(10))
            .await
            .unwrap()
            .with_timeout(Duration::from_millis(300))
            .with_failure_policy(policy);
        if policy == FailurePolicy::Local {
            let seen = seen.clone();
            gantry = gantry.on_decision(move |_, d| seen.lock().unwrap().push(d.source));
        }
        clients.push((policy, gantry));
    }
    // "steady": 5 tokens a second, burst 1.
    let streams: Vec<_> = clients
        .iter()
        .map(|(policy, g)| stream(g.limiter("steady", &format!("k-{policy:?}"))))
        .collect();
    let local = clients[2].1.clone();
    eventually("the local policy learned the limit", || {
        let known = local.knows_limit("steady");
        async move { known }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted = Instant::now();
    server.restart();
    for (policy, g) in &clients {
        let before = g.decisions().server;
        eventually(
            &format!("{policy:?}: gantry decides again, same client"),
            || {
                let now = g.decisions().server;
                async move { now > before }
            },
        )
        .await;
    }
    for ((policy, g), (stop, task)) in clients.iter().zip(streams) {
        let _ = stop.send(true);
        let calls = task.await.unwrap();
        let mut during = Vec::new();
        for call in &calls {
            let Ok(d) = &call.decision else {
                panic!(
                    "{policy:?}: a call failed instead of answering by the policy: {:?}",
                    call.decision
                )
            };
            assert!(
                call.took < Duration::from_millis(350),
                "{policy:?}: a call took {:?}",
                call.took
            );
            if call.at > killed + Duration::from_millis(100) && call.at < restarted {
                during.push((call.took, d.clone()));
            }
        }
        assert!(
            during.len() > 50,
            "{policy:?}: {} calls during the outage",
            during.len()
        );
        for (_, d) in &during {
            match policy {
                FailurePolicy::FailOpen => {
                    assert!(d.allowed && d.source == DecisionSource::FailOpen, "{d:?}")
                }
                FailurePolicy::FailClosed => assert!(
                    !d.allowed
                        && d.source == DecisionSource::FailClosed
                        && d.reason.contains("gantry unreachable"),
                    "{d:?}"
                ),
                FailurePolicy::Local => assert_eq!(d.source, DecisionSource::Local, "{d:?}"),
            }
        }
        if *policy == FailurePolicy::Local {
            let allowed = during.iter().filter(|(_, d)| d.allowed).count() as f64;
            let bound = 1.0 + 5.0 * (restarted - killed).as_secs_f64() + 1.0;
            assert!(
                allowed > 0.0 && allowed <= bound,
                "local allowed {allowed} during the outage"
            );
        }
        let mut took: Vec<Duration> = during.iter().map(|(t, _)| *t).collect();
        took.sort();
        let median = took[took.len() / 2];
        assert!(
            median < Duration::from_millis(2),
            "{policy:?}: median answer {median:?} during the outage"
        );
        let counts = g.decisions();
        assert!(
            counts.server > 0 && counts.total() == calls.len() as u64,
            "{policy:?}: {counts:?}"
        );
    }
    let seen = seen.lock().unwrap();
    let counts = clients[2].1.decisions();
    assert_eq!(
        seen.iter().filter(|s| **s == DecisionSource::Local).count() as u64,
        counts.local
    );
    assert_eq!(
        seen.iter()
            .filter(|s| **s == DecisionSource::Server)
            .count() as u64,
        counts.server
    );
    assert!(counts.local > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_endpoints_loses_one_replica_without_a_failed_call() {
    let Some(a) = start() else { return };
    let Some(mut b) = start() else { return };
    let gantry = Gantry::connect(&format!("{},{}", a.addr, b.addr), Duration::from_secs(10))
        .await
        .unwrap()
        .with_failure_policy(FailurePolicy::FailClosed);
    // Each replica has its own "tight" bucket of 2: four tokens at once for
    // one key are there only if the calls are spread over both.
    let mut round = 0;
    eventually("four tokens from two replicas' buckets of two", || {
        round += 1;
        let limiter = gantry.limiter("tight", &format!("spread-{round}"));
        async move {
            let mut granted = 0;
            for _ in 0..4 {
                if let Ok(d) = limiter.acquire(1, Duration::ZERO).await
                    && d.allowed
                    && d.source == DecisionSource::Server
                {
                    granted += 1;
                }
            }
            granted == 4
        }
    })
    .await;
    let (stop, limited) = stream(gantry.limiter("tight", "both"));
    let reader = gantry.namespace("n");
    let (stop_reads, mut reads_stopped) = tokio::sync::watch::channel(false);
    let reads = tokio::spawn(async move {
        let mut failures = Vec::new();
        while !*reads_stopped.borrow_and_update() {
            if let Err(e) = reader.get("k").await {
                failures.push(e.to_string());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        failures
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gantry.replicas(), (2, 2));
    b.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gantry.replicas(), (2, 1), "the killed replica is left out");
    let _ = stop.send(true);
    let _ = stop_reads.send(true);
    let failures = reads.await.unwrap();
    assert!(
        failures.is_empty(),
        "reads failed when one replica was killed: {failures:?}"
    );
    let calls = limited.await.unwrap();
    let after: Vec<&Call> = calls
        .iter()
        .filter(|c| c.at > killed + Duration::from_millis(100))
        .collect();
    assert!(calls.iter().all(|c| c.decision.is_ok()));
    assert!(
        after.len() > 50,
        "{} limiter calls after the kill",
        after.len()
    );
    for call in after {
        let d = call.decision.as_ref().unwrap();
        assert_eq!(
            d.source,
            DecisionSource::Server,
            "{:?} after the kill: {d:?}",
            call.at - killed
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_reported_lost_before_it_expires() {
    let Some(mut server) = start() else { return };
    let gantry = Gantry::connect(&server.addr, Duration::from_secs(10))
        .await
        .unwrap();
    let lease = gantry
        .lease(
            "db",
            "pod-outage",
            1,
            Duration::from_secs(1),
            Duration::ZERO,
        )
        .await
        .unwrap();
    let mut lost = lease.watch_lost();
    server.kill();
    let reason = tokio::time::timeout(Duration::from_secs(3), lost.wait_for(Option::is_some))
        .await
        .expect("never reported lost")
        .unwrap()
        .clone();
    let now = SystemTime::now();
    assert!(now < lease.expires_at(), "reported lost after its expiry");
    assert!(lease.lost());
    assert!(reason.unwrap().contains("not renewed before its expiry"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_near_cache_serves_bounded_stale_data_then_resyncs() {
    let Some(mut server) = start() else { return };
    let gantry = Gantry::connect(&server.addr, Duration::from_secs(10))
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let carts = gantry.namespace("carts");
    let near = carts
        .near_cache("", 100)
        .max_stale(Duration::from_millis(700));
    carts
        .put("cart:1", b"v1".to_vec(), Duration::ZERO)
        .await
        .unwrap();
    eventually("held locally", || async {
        near.get("cart:1").await.ok().flatten().as_deref() == Some(&b"v1"[..]) && near.len() == 1
    })
    .await;
    server.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        near.get("cart:1").await.unwrap().as_deref(),
        Some(&b"v1"[..]),
        "within max_stale"
    );
    tokio::time::sleep(
        (killed + Duration::from_millis(750)).saturating_duration_since(Instant::now()),
    )
    .await;
    assert_eq!(
        near.len(),
        0,
        "held past max_stale while the stream is down"
    );
    assert!(
        near.get("cart:1").await.is_err(),
        "past max_stale a read goes to gantry, which is down"
    );
    server.restart();
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the breaker's back-off
    eventually("gantry back", || async {
        carts
            .put("cart:1", b"v2".to_vec(), Duration::ZERO)
            .await
            .is_ok()
    })
    .await;
    eventually("live again after the restart", || async {
        near.get("cart:1").await.ok().flatten().as_deref() == Some(&b"v2"[..]) && near.len() == 1
    })
    .await;
    carts
        .put("cart:1", b"v3".to_vec(), Duration::ZERO)
        .await
        .unwrap();
    eventually("the watch follows writes again", || async {
        near.get("cart:1").await.ok().flatten().as_deref() == Some(&b"v3"[..])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_name_target_is_balanced_over_what_it_resolves_to() {
    // localhost may also give ::1, where nothing listens: it is left out.
    let Some(server) = start() else { return };
    let port = server.addr.rsplit_once(':').unwrap().1;
    let gantry = Gantry::connect(&format!("dns:///localhost:{port}"), Duration::from_secs(10))
        .await
        .unwrap();
    for _ in 0..10 {
        let top = gantry.top_queries(Default::default()).await;
        assert!(top.is_ok(), "{top:?}");
    }
}
