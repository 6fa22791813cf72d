//! Leases in the real binary: hot reload that shrinks and grows a pool, and
//! a SIGKILL in the middle of granting followed by a restart that must not
//! over-grant.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry::proto::gantry::v1 as pb;
use pb::leases_client::LeasesClient;
use tonic::transport::Channel;

use crate::common::{GantryProcess, connect};
use crate::leases::{status, wait_for_status};

fn pools_toml(pools: &[(&str, u32)]) -> String {
    pools
        .iter()
        .map(|(name, capacity)| {
            format!(
                "[[leases.pools]]\nname = \"{name}\"\ncapacity = {capacity}\nmax_ttl = \"1h\"\n"
            )
        })
        .collect()
}

fn spawn(cwd: &std::path::Path) -> GantryProcess {
    GantryProcess::serve_config(cwd, &[("GANTRY_SERVER_CONFIG_POLL_INTERVAL", "100ms")])
}

fn ask(pool: &str, holder: &str, count: u32) -> pb::AcquireLeaseRequest {
    pb::AcquireLeaseRequest {
        pool: pool.into(),
        holder: holder.into(),
        count,
        ttl: Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        ..Default::default()
    }
}

async fn granted(
    client: &mut LeasesClient<Channel>,
    req: pb::AcquireLeaseRequest,
) -> Option<String> {
    let lease = client.acquire(req).await.unwrap().into_inner();
    lease.granted.then_some(lease.lease_id)
}

async fn release(client: &mut LeasesClient<Channel>, id: &str) {
    let released = client
        .release(pb::ReleaseLeaseRequest {
            lease_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .released;
    assert!(released, "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_shrinks_a_pool_without_breaking_leases_and_growing_grants_waiters() {
    let cwd = tempfile::tempdir().unwrap();
    let config = cwd.path().join("gantry.toml");
    std::fs::write(&config, pools_toml(&[("db", 4), ("old", 1)])).unwrap();
    let mut gantry = spawn(cwd.path());
    let (grpc, _) = gantry.wait_until_listening();
    let mut client = LeasesClient::new(connect(grpc).await);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(granted(&mut client, ask("db", "a", 1)).await.unwrap());
    }

    std::fs::write(&config, pools_toml(&[("db", 2), ("new", 3)])).unwrap();
    wait_for_status(&mut client, "db", "capacity 2", |s| s.capacity == 2).await;
    let s = status(&mut client, "db").await;
    assert_eq!(
        s.in_use, 4,
        "existing leases are kept above the new capacity"
    );
    assert_eq!(granted(&mut client, ask("db", "b", 1)).await, None);
    release(&mut client, &held.pop().unwrap()).await;
    release(&mut client, &held.pop().unwrap()).await;
    assert_eq!(
        granted(&mut client, ask("db", "b", 1)).await,
        None,
        "2 in use: nothing new until under the capacity"
    );
    release(&mut client, &held.pop().unwrap()).await;
    held.push(granted(&mut client, ask("db", "b", 1)).await.unwrap());
    assert_eq!(status(&mut client, "db").await.in_use, 2);

    // The added pool works; the removed one is gone.
    assert!(granted(&mut client, ask("new", "b", 3)).await.is_some());
    let err = client.acquire(ask("old", "b", 1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Growing the pool grants a waiter at once.
    let mut waiter = client.clone();
    let waiting = tokio::spawn(async move {
        let mut req = ask("db", "c", 1);
        req.max_wait = Some(prost_types::Duration {
            seconds: 20,
            nanos: 0,
        });
        waiter.acquire(req).await.unwrap().into_inner()
    });
    wait_for_status(&mut client, "db", "one waiter", |s| s.waiting == 1).await;
    std::fs::write(&config, pools_toml(&[("db", 3), ("new", 3)])).unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("granted after the pool grew")
        .unwrap();
    assert!(lease.granted);
    assert_eq!(status(&mut client, "db").await.in_use, 3);

    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
}

/// Clients acquire as fast as they can while the server is killed with
/// SIGKILL. After a restart on the same data directory, every lease a client
/// was told it holds is still there, and the pool grants exactly up to its
/// capacity, not one unit more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_grants_never_leads_to_over_granting() {
    const CAPACITY: u32 = 5000;
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("gantry.toml"),
        pools_toml(&[("db", CAPACITY)]),
    )
    .unwrap();
    let mut gantry = spawn(cwd.path());
    let (grpc, _) = gantry.wait_until_listening();
    let channel = connect(grpc).await;

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut client = LeasesClient::new(channel.clone());
        let acknowledged = acknowledged.clone();
        tasks.push(tokio::spawn(async move {
            let holder = format!("instance-{t}");
            while let Ok(lease) = client.acquire(ask("db", &holder, 1)).await {
                let lease = lease.into_inner();
                assert!(lease.granted, "capacity is far away");
                acknowledged.lock().unwrap().push(lease.lease_id);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "grants are too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gantry.signal("KILL");
    gantry.wait_exit(Duration::from_secs(10));
    for task in tasks {
        task.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let mut gantry = spawn(cwd.path());
    let (grpc, _) = gantry.wait_until_listening();
    let mut client = LeasesClient::new(connect(grpc).await);
    let s = status(&mut client, "db").await;
    assert!(
        s.in_use as usize >= acknowledged.len(),
        "{} acknowledged, {} restored",
        acknowledged.len(),
        s.in_use
    );
    for id in &acknowledged {
        let renewed = client
            .renew(pb::RenewLeaseRequest {
                lease_id: id.clone(),
                ttl: None,
            })
            .await;
        assert!(renewed.is_ok(), "acknowledged lease {id} lost: {renewed:?}");
    }
    // Fill the pool: exactly the rest is grantable.
    let rest = CAPACITY - s.in_use;
    assert!(
        granted(&mut client, ask("db", "filler", rest))
            .await
            .is_some()
    );
    assert_eq!(granted(&mut client, ask("db", "one-more", 1)).await, None);
    assert_eq!(status(&mut client, "db").await.in_use, CAPACITY);

    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
}
