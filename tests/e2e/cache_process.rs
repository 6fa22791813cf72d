//! The cache in the real binary: a write acknowledged in `sync` durability
//! survives SIGKILL, and a damaged data directory either stops the server
//! with a clear error or is quarantined.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry::proto::gantry::v1 as pb;
use pb::cache_client::CacheClient;

use crate::common::{GantryProcess, connect, run_gantry, serve_args};

fn spawn(cwd: &std::path::Path, envs: &[(&str, &str)]) -> GantryProcess {
    GantryProcess::spawn(&serve_args(&[]), envs, cwd)
}

async fn read(c: &mut CacheClient<tonic::transport::Channel>, key: &str) -> pb::GetResponse {
    c.get(pb::GetRequest {
        namespace: "orders".into(),
        key: key.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// A Put gantry acknowledged.
#[derive(Clone)]
struct Ack {
    key: String,
    version: u64,
    len: usize,
    at: Instant,
}

/// Eight writers in the "orders" namespace, putting until gantry stops
/// answering; `next(w, i)` is writer w's i-th key and value.
fn spawn_writers(
    channel: &tonic::transport::Channel,
    next: fn(usize, usize) -> (String, Vec<u8>),
) -> (Arc<Mutex<Vec<Ack>>>, Vec<tokio::task::JoinHandle<()>>) {
    let acknowledged: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let writers = (0..8)
        .map(|w| {
            let mut c = CacheClient::new(channel.clone());
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let (key, value) = next(w, i);
                    let len = value.len();
                    let put = c
                        .put(pb::PutRequest {
                            namespace: "orders".into(),
                            key: key.clone(),
                            value: value.into(),
                            ..Default::default()
                        })
                        .await;
                    let Ok(r) = put else { return };
                    let version = r.into_inner().version;
                    let at = Instant::now();
                    acknowledged.lock().unwrap().push(Ack {
                        key,
                        version,
                        len,
                        at,
                    });
                }
            })
        })
        .collect();
    (acknowledged, writers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_acknowledged_in_sync_mode_survives_sigkill() {
    let cwd = tempfile::tempdir().unwrap();
    // A long periodic flush, so only the sync path can make the writes durable in time.
    let envs = [
        ("GANTRY_CACHE_DURABILITY", "sync"),
        ("GANTRY_STORAGE_FLUSH_INTERVAL", "1h"),
    ];
    let mut gantry = spawn(cwd.path(), &envs);
    let (grpc, _) = gantry.wait_until_listening();
    let channel = connect(grpc).await;
    let (acknowledged, writers) = spawn_writers(&channel, |w, i| {
        let key = format!("w{w}-{i}");
        let value = format!("value of {key}").into_bytes();
        (key, value)
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "puts are too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gantry.signal("KILL");
    gantry.wait_exit(Duration::from_secs(10));
    for w in writers {
        w.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let mut gantry = spawn(cwd.path(), &envs);
    let (grpc, _) = gantry.wait_until_listening();
    let mut c = CacheClient::new(connect(grpc).await);
    for Ack { key, version, .. } in &acknowledged {
        let r = read(&mut c, key).await;
        assert!(r.found, "acknowledged put {key} lost");
        assert_eq!(r.version, *version);
        assert_eq!(&r.value[..], format!("value of {key}").as_bytes());
    }
    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
}

#[test]
fn a_damaged_data_directory_stops_the_server_or_is_quarantined() {
    let cwd = tempfile::tempdir().unwrap();
    let mut gantry = spawn(cwd.path(), &[]);
    gantry.wait_until_listening();
    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
    std::fs::write(cwd.path().join("data/conf"), b"garbage, no checksum").unwrap();

    let (code, _, stderr) = run_gantry(&serve_args(&[]), &[], cwd.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is corrupt"), "{stderr}");

    let mut gantry = spawn(
        cwd.path(),
        &[("GANTRY_STORAGE_ON_CORRUPTION", "quarantine")],
    );
    gantry.wait_until_listening();
    assert!(
        gantry.stderr_text().contains("DATA DIRECTORY CORRUPT"),
        "{}",
        gantry.stderr_text()
    );
    let moved = std::fs::read_dir(cwd.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("data.corrupt-")
        })
        .count();
    assert_eq!(moved, 1);
    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
}

/// `periodic` (the default) stages writes and drains them every half flush
/// interval: after SIGKILL, every Put acknowledged at least one flush
/// interval before the kill is there (with 100 ms allowed for the drain and
/// the flush themselves on a loaded test machine), rewrites of one key
/// included; after SIGTERM every acknowledged Put is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_puts_are_on_disk_within_the_flush_interval_and_all_after_a_stop() {
    const FLUSH: Duration = Duration::from_millis(200);
    let cwd = tempfile::tempdir().unwrap();
    let envs = [("GANTRY_STORAGE_FLUSH_INTERVAL", "200ms")];
    let mut gantry = spawn(cwd.path(), &envs);
    let (grpc, _) = gantry.wait_until_listening();
    let channel = connect(grpc).await;
    // Half the writers rewrite one key with 10 KiB values.
    let (acknowledged, writers) = spawn_writers(&channel, |w, i| match w % 2 {
        0 => (
            "shared".to_string(),
            vec![b'a' + (i % 26) as u8; 10 * 1024 + i % 7],
        ),
        _ => (format!("w{w}-{i}"), vec![b'a' + (i % 26) as u8; 100]),
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gantry.signal("KILL");
    let killed = Instant::now();
    gantry.wait_exit(Duration::from_secs(10));
    for w in writers {
        w.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let old_enough: Vec<_> = acknowledged
        .iter()
        .filter(|ack| killed.duration_since(ack.at) >= FLUSH + Duration::from_millis(100))
        .collect();
    assert!(old_enough.len() > 100, "{} puts checked", old_enough.len());

    let mut gantry = spawn(cwd.path(), &envs);
    let (grpc, _) = gantry.wait_until_listening();
    let mut c = CacheClient::new(connect(grpc).await);
    let mut shared_at_least = 0;
    for Ack {
        key, version, len, ..
    } in &old_enough
    {
        if key == "shared" {
            shared_at_least = shared_at_least.max(*version);
            continue;
        }
        let r = read(&mut c, key).await;
        assert!(
            r.found,
            "{key}, acknowledged before the flush interval, lost"
        );
        assert_eq!((r.version, r.value.len()), (*version, *len), "{key}");
    }
    let shared = read(&mut c, "shared").await;
    assert!(
        shared.found && shared.version >= shared_at_least,
        "the rewritten key is at version {} (found: {}), older than {shared_at_least}",
        shared.version,
        shared.found
    );

    // A stop writes everything staged before the last flush.
    let mut versions = Vec::new();
    for i in 0..50 {
        let r = c
            .put(pb::PutRequest {
                namespace: "orders".into(),
                key: format!("before-stop-{i}"),
                value: vec![b'z'; 4096].into(),
                ..Default::default()
            })
            .await
            .unwrap();
        versions.push(r.into_inner().version);
    }
    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
    let mut gantry = spawn(cwd.path(), &envs);
    let (grpc, _) = gantry.wait_until_listening();
    let mut c = CacheClient::new(connect(grpc).await);
    for (i, version) in versions.iter().enumerate() {
        let r = read(&mut c, &format!("before-stop-{i}")).await;
        assert!(r.found, "before-stop-{i} lost at a graceful stop");
        assert_eq!(r.version, *version);
    }
    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
}
