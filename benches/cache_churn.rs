//! Disk use of the cache's sled directory under put/expire churn: a fixed
//! working set of keys rewritten with short TTLs while the sweeper removes
//! what expired, for ROUNDS rounds; prints the live data and the directory
//! size after each round. Run: `cargo bench --bench cache_churn`
//! (ROUNDS, KEYS, VALUE_BYTES override the defaults). Asserts nothing timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry::cache::{CacheEngine, Condition};
use gantry::config::{CacheConfig, StorageConfig};
use gantry::store::{SledStore, Store};
use prost::bytes::Bytes;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds = env("ROUNDS", 20);
    let keys = env("KEYS", 20_000);
    let value_bytes = env("VALUE_BYTES", 1024) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        SledStore::open(&StorageConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .expect("open sled"),
    );
    let cache = CacheEngine::open(
        &CacheConfig {
            // Incompressible-ish values: measure sled, not gzip.
            compress_min_bytes: u64::MAX,
            ..Default::default()
        },
        store.clone(),
    )
    .expect("open cache");
    let value = Bytes::from(
        (0..value_bytes)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
            .collect::<Vec<u8>>(),
    );
    let live = keys * value_bytes as u64;
    println!(
        "churn: {keys} keys x {value_bytes} B = {:.1} MB live; each round rewrites every key with a 50 ms TTL, waits, sweeps",
        live as f64 / 1e6
    );
    println!("| round | writes so far | expired so far | dir MB | dir / live | round s |");
    println!("|---|---|---|---|---|---|");
    let started = Instant::now();
    for round in 1..=rounds {
        let t = Instant::now();
        for k in 0..keys {
            cache
                .put(
                    "churn",
                    &format!("k-{k:014}"),
                    value.clone(),
                    Some(Duration::from_millis(50)),
                    Condition::Always,
                )
                .expect("put");
        }
        std::thread::sleep(Duration::from_millis(60));
        let now = gantry::wallclock::now_ms();
        while cache.sweep_step(now, 1000).expect("sweep") == 1000 {}
        store.flush().expect("flush");
        let stats = cache
            .namespaces()
            .get("churn")
            .map(|c| c.snapshot())
            .unwrap_or_default();
        let size = dir_bytes(dir.path());
        println!(
            "| {round} | {} | {} | {:.1} | {:.1}x | {:.1} |",
            round * keys,
            stats.expirations,
            size as f64 / 1e6,
            size as f64 / live as f64,
            t.elapsed().as_secs_f64()
        );
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
