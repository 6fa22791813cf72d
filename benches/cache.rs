//! Cache hot paths in process: a hot-tier hit through the engine, a read
//! from sled after a hot-tier miss, puts of 100 B and of 10 KiB (random and
//! JSON-like: issue #23), and gzip on JSON-like values (cost per value; the
//! ratio is printed). Run: `cargo bench --bench cache`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gantry::cache::compress;
use gantry::cache::{CacheEngine, Condition};
use gantry::config::{CacheConfig, StorageConfig};
use gantry::store::{SledStore, Store};
use prost::bytes::Bytes;

fn json_like(bytes: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes + 100);
    let mut i = 0;
    while v.len() < bytes {
        v.extend_from_slice(
            format!("{{\"id\":{i},\"user\":\"user-{}\",\"plan\":\"pro\",\"score\":{},\"active\":true}},", i * 7, i % 97)
                .as_bytes(),
        );
        i += 1;
    }
    v.truncate(bytes);
    v
}

/// Bytes gzip cannot shrink (xorshift), as encrypted or compressed payloads are.
fn noise(bytes: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn engine(dir: &std::path::Path, hot_entries: u64) -> CacheEngine {
    let store: Arc<dyn Store> = Arc::new(
        SledStore::open(&StorageConfig {
            data_dir: dir.to_path_buf(),
            ..Default::default()
        })
        .expect("open sled"),
    );
    let config = CacheConfig {
        hot_entries,
        ..Default::default()
    };
    CacheEngine::open(&config, store).expect("open cache")
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = engine(dir.path(), 100_000);
    let keys: Vec<String> = (0..10_000).map(|i| format!("k-{i:014}")).collect();
    let value = Bytes::from(vec![b'v'; 100]);
    for key in &keys {
        cache
            .put("bench", key, value.clone(), None, Condition::Always)
            .expect("put");
    }
    let mut i = 0usize;
    c.bench_function("cache_get_hot_hit_100B", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(cache.get("bench", &keys[i]).expect("get"))
        })
    });

    // A one-entry hot tier: nearly every read goes to sled.
    let cold_dir = tempfile::tempdir().expect("tempdir");
    let cold = engine(cold_dir.path(), 1);
    for key in &keys {
        cold.put("bench", key, value.clone(), None, Condition::Always)
            .expect("put");
    }
    c.bench_function("cache_get_store_100B", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(cold.get("bench", &keys[i]).expect("get"))
        })
    });

    c.bench_function("cache_put_100B", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(
                cache
                    .put("bench", &keys[i], value.clone(), None, Condition::Always)
                    .expect("put"),
            )
        })
    });

    // 10 KiB values: random bytes (as encrypted or compressed payloads are)
    // and JSON, each put over the same 1,000 keys.
    let random = Bytes::from(noise(10 * 1024));
    let json = Bytes::from(json_like(10 * 1024));
    for (kind, value) in [("random", random), ("json", json)] {
        c.bench_function(&format!("cache_put_10KiB_{kind}"), |b| {
            b.iter(|| {
                i = (i + 1) % 1000;
                black_box(
                    cache
                        .put("bench", &keys[i], value.clone(), None, Condition::Always)
                        .expect("put"),
                )
            })
        });
    }
    c.bench_function("sample_judgement_10KiB", |b| {
        let value = json_like(10 * 1024);
        b.iter(|| black_box(compress::worth_trying(black_box(&value))))
    });

    let mut group = c.benchmark_group("gzip_json");
    for size in [1024usize, 10 * 1024, 100 * 1024] {
        let raw = json_like(size);
        for level in [1u32, 6] {
            let (compressed, packed) = compress::pack(&raw, 0, level);
            println!(
                "gzip level {level}, {size} B of JSON: {} B stored ({:.1}x smaller, compressed = {compressed})",
                packed.len(),
                size as f64 / packed.len() as f64
            );
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(format!("pack_{size}B_level{level}"), |b| {
                b.iter(|| black_box(compress::pack(black_box(&raw), 0, level)))
            });
            group.bench_function(format!("unpack_{size}B_level{level}"), |b| {
                b.iter(|| black_box(compress::unpack(true, black_box(&packed), size as u64)))
            });
        }
    }
    group.finish();
}

criterion_group!(cache_benches, benches);
criterion_main!(cache_benches);
