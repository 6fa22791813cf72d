//! The cache engine over a real sled directory, without gRPC. Every test
//! body runs on each write path: `sync` (written to the store at once),
//! `periodic` with staged writes drained only where a test says (reads
//! served from what is staged), and `periodic` drained every millisecond
//! by another thread (drains racing the calls).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::bytes::Bytes;

use super::watch::ChangeKind;
use super::{CacheEngine, CacheError, Condition};
use crate::config::{CacheConfig, Durability, StorageConfig};
use crate::store::{Domain, SledStore, Store};

fn store(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(
        SledStore::open(&StorageConfig {
            data_dir: dir.to_path_buf(),
            ..Default::default()
        })
        .unwrap(),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    Sync,
    Staged,
    Draining,
}

/// An engine on one write path; a draining thread stops with it.
struct TestCache {
    engine: CacheEngine,
    store: Arc<dyn Store>,
    stop: Arc<AtomicBool>,
    drainer: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Deref for TestCache {
    type Target = CacheEngine;
    fn deref(&self) -> &CacheEngine {
        &self.engine
    }
}

impl TestCache {
    /// Writes what is staged to the store, as the server's drain does.
    fn settle(&self) {
        self.engine.drain().unwrap();
    }
}

impl Drop for TestCache {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(drainer) = self.drainer.take() {
            let _ = drainer.join();
        }
    }
}

fn engine_with(
    dir: &std::path::Path,
    writes: Writes,
    adjust: impl FnOnce(&mut CacheConfig),
) -> TestCache {
    let mut config = CacheConfig {
        durability: match writes {
            Writes::Sync => Durability::Sync,
            Writes::Staged | Writes::Draining => Durability::Periodic,
        },
        ..CacheConfig::default()
    };
    adjust(&mut config);
    let store = store(dir);
    let engine = CacheEngine::open(&config, store.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = (writes == Writes::Draining).then(|| {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                engine.drain().unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    });
    TestCache {
        engine,
        store,
        stop,
        drainer,
    }
}

/// One test per write path for each body `fn name(writes: Writes)`.
macro_rules! on_every_write_path {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sync() {
                super::$name(super::Writes::Sync)
            }
            #[test]
            fn staged() {
                super::$name(super::Writes::Staged)
            }
            #[test]
            fn draining() {
                super::$name(super::Writes::Draining)
            }
        }
    )*};
}

on_every_write_path!(
    put_get_delete_and_versions_that_only_grow,
    conditions_hold_or_fail_with_a_clear_message,
    bad_input_names_the_field_and_the_setting,
    expired_entries_are_never_returned_and_the_sweeper_removes_them,
    rewriting_a_key_with_another_ttl_leaves_no_stale_expiry,
    values_read_back_from_the_store_after_hot_eviction_compressed_or_not,
    entries_and_counts_survive_reopening,
    concurrent_compare_and_set_has_exactly_one_winner,
);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put_get_delete_and_versions_that_only_grow(writes: Writes) {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), writes, |_| {});
    assert_eq!(c.get("ns", "k").unwrap(), None);
    let v1 = c
        .put("ns", "k", b("one"), None, Condition::Always)
        .unwrap()
        .version;
    let found = c.get("ns", "k").unwrap().unwrap();
    assert_eq!(
        (found.value, found.version, found.expires_at_ms),
        (b("one"), v1, 0)
    );
    let v2 = c
        .put("ns", "k", b("two"), None, Condition::Always)
        .unwrap()
        .version;
    assert!(v2 > v1);
    assert!(c.delete("ns", "k", None).unwrap());
    assert!(!c.delete("ns", "k", None).unwrap(), "already gone");
    let v3 = c
        .put("ns", "k", b("three"), None, Condition::Always)
        .unwrap()
        .version;
    assert!(v3 > v2, "a re-created key never reuses a version");
    assert_eq!(
        c.get("other", "k").unwrap(),
        None,
        "namespaces are separate"
    );
}

fn conditions_hold_or_fail_with_a_clear_message(writes: Writes) {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), writes, |_| {});
    let v = c
        .put("ns", "k", b("a"), None, Condition::IfAbsent)
        .unwrap()
        .version;
    let err = c
        .put("ns", "k", b("b"), None, Condition::IfAbsent)
        .unwrap_err();
    assert_eq!(
        err,
        CacheError::ConditionFailed(format!(
            "namespace \"ns\" key \"k\" exists at version {v} (if_absent)"
        ))
    );
    let err = c
        .put("ns", "k", b("b"), None, Condition::IfVersion(v + 100))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("is at version {v}, not {}", v + 100)),
        "{err}"
    );
    let v2 = c
        .put("ns", "k", b("b"), None, Condition::IfVersion(v))
        .unwrap()
        .version;
    assert!(c.delete("ns", "k", Some(v)).is_err(), "stale version");
    assert!(c.delete("ns", "k", Some(v2)).unwrap());
    let err = c
        .put("ns", "k", b("c"), None, Condition::IfVersion(v2))
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

fn bad_input_names_the_field_and_the_setting(writes: Writes) {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), writes, |c| {
        c.max_key_bytes = 4;
        c.max_value_bytes = 8;
        c.max_namespace_bytes = 3;
        c.max_namespaces = 1;
    });
    let cases = [
        (c.get("", "k").unwrap_err(), "namespace: must not be empty"),
        (c.get("ns", "").unwrap_err(), "key: must not be empty"),
        (
            c.get("ns", "toolong").unwrap_err(),
            "key: 7 bytes is longer than the limit of 4 (cache.max_key_bytes)",
        ),
        (
            c.get("nspc", "k").unwrap_err(),
            "namespace: 4 bytes is longer than the limit of 3 (cache.max_namespace_bytes)",
        ),
        (
            c.get("n\0s", "k").unwrap_err(),
            "namespace: \"n\\0s\" contains a control character",
        ),
        (
            c.put("ns", "k", b("123456789"), None, Condition::Always)
                .unwrap_err(),
            "value: 9 bytes is longer than the limit of 8 (cache.max_value_bytes)",
        ),
    ];
    for (err, text) in cases {
        assert_eq!(err.to_string(), text);
    }
    c.put("ns", "k", b("v"), None, Condition::Always).unwrap();
    assert!(matches!(
        c.put("zz", "k", b("v"), None, Condition::Always),
        Err(CacheError::TooManyNamespaces { max: 1, .. })
    ));
}

fn expired_entries_are_never_returned_and_the_sweeper_removes_them(writes: Writes) {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), writes, |_| {});
    let mut watch = c.subscribe("ns").unwrap();
    c.put(
        "ns",
        "short",
        b("x"),
        Some(Duration::from_millis(30)),
        Condition::Always,
    )
    .unwrap();
    c.put(
        "ns",
        "long",
        b("y"),
        Some(Duration::from_secs(60)),
        Condition::Always,
    )
    .unwrap();
    c.put("ns", "forever", b("z"), None, Condition::Always)
        .unwrap();
    let found = c.get("ns", "short").unwrap().unwrap();
    assert!(found.expires_at_ms > 0);
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(
        c.get("ns", "short").unwrap(),
        None,
        "expired, not yet swept"
    );
    // The sweeper reads the store's expiry index: what is staged first.
    c.settle();
    let now = crate::wallclock::now_ms();
    assert_eq!(
        c.sweep_step(now, 10).unwrap(),
        1,
        "only the due index entry is read"
    );
    assert_eq!(c.sweep_step(now, 10).unwrap(), 0);
    let ns = c.namespaces().get("ns").unwrap().snapshot();
    assert_eq!((ns.entries, ns.expirations), (2, 1));
    let kinds: Vec<(ChangeKind, String)> = std::iter::from_fn(|| watch.rx.try_recv().ok())
        .map(|ch| (ch.kind, ch.key.clone()))
        .collect();
    assert_eq!(
        kinds.last(),
        Some(&(ChangeKind::Expire, "short".to_string()))
    );
    assert_eq!(kinds.len(), 4);
}

fn rewriting_a_key_with_another_ttl_leaves_no_stale_expiry(writes: Writes) {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), writes, |_| {});
    c.put(
        "ns",
        "k",
        b("1"),
        Some(Duration::from_millis(20)),
        Condition::Always,
    )
    .unwrap();
    c.settle();
    c.put("ns", "k", b("2"), None, Condition::Always).unwrap();
    c.settle();
    std::thread::sleep(Duration::from_millis(40));
    c.sweep_step(crate::wallclock::now_ms(), 10).unwrap();
    assert_eq!(c.get("ns", "k").unwrap().unwrap().value, b("2"));
    assert_eq!(c.namespaces().get("ns").unwrap().snapshot().expirations, 0);
}

fn values_read_back_from_the_store_after_hot_eviction_compressed_or_not(writes: Writes) {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), writes, |c| {
        c.hot_entries = 2;
        c.hot_bytes = 2 * 1024;
    });
    let json: String = (0..300)
        .map(|i| format!("{{\"id\":{i},\"ok\":true}},"))
        .collect();
    let noise: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    c.put("ns", "json", b(&json), None, Condition::Always)
        .unwrap();
    c.put(
        "ns",
        "noise",
        Bytes::from(noise.clone()),
        None,
        Condition::Always,
    )
    .unwrap();
    c.put("ns", "empty", Bytes::new(), None, Condition::Always)
        .unwrap();
    for i in 0..50 {
        c.put("ns", &format!("filler{i}"), b("f"), None, Condition::Always)
            .unwrap();
    }
    assert_eq!(c.get("ns", "json").unwrap().unwrap().value, b(&json));
    assert_eq!(
        c.get("ns", "noise").unwrap().unwrap().value,
        Bytes::from(noise)
    );
    assert_eq!(c.get("ns", "empty").unwrap().unwrap().value, Bytes::new());
    // Read back once more after they reached the store; stored sizes are
    // counted as they are written.
    c.settle();
    for i in 0..50 {
        c.get("ns", &format!("filler{i}")).unwrap().unwrap();
    }
    assert_eq!(c.get("ns", "json").unwrap().unwrap().value, b(&json));
    let s = c.namespaces().get("ns").unwrap().snapshot();
    assert!(s.store_hits >= 2, "{s:?}");
    assert!(s.evictions > 0, "{s:?}");
    assert!(
        s.stored_bytes + (json.len() as u64) / 2 < s.raw_bytes,
        "json compressed: {s:?}"
    );
    // Small: the empty value and the 50 fillers; the noise's sample said
    // gzip would not pay (not even tried); the JSON gzipped.
    assert_eq!(s.packed, [51, 1, 0, 1], "small, skipped, not smaller, gzip");
}

fn entries_and_counts_survive_reopening(writes: Writes) {
    let dir = tempfile::tempdir().unwrap();
    let v = {
        let c = engine_with(dir.path(), writes, |_| {});
        c.put(
            "a",
            "k1",
            b("v1"),
            Some(Duration::from_secs(60)),
            Condition::Always,
        )
        .unwrap();
        let v = c
            .put("b", "k2", b("v2"), None, Condition::Always)
            .unwrap()
            .version;
        // What the server's stop does before its last flush.
        c.settle();
        v
    };
    let c = engine_with(dir.path(), writes, |_| {});
    let found = c.get("b", "k2").unwrap().unwrap();
    assert_eq!((found.value, found.version), (b("v2"), v));
    let remaining = c.get("a", "k1").unwrap().unwrap().expires_at_ms - crate::wallclock::now_ms();
    assert!((50_000..=60_000).contains(&remaining), "{remaining}");
    let all = c.namespaces().snapshot();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|(_, s)| s.entries == 1 && s.raw_bytes == 2));
    let v2 = c
        .put("b", "k2", b("v3"), None, Condition::Always)
        .unwrap()
        .version;
    assert!(v2 > v, "versions keep growing after a restart");
}

fn concurrent_compare_and_set_has_exactly_one_winner(writes: Writes) {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), writes, |_| {});
    for round in 0..20 {
        let key = format!("k{round}");
        let v = c
            .put("ns", &key, b("0"), None, Condition::Always)
            .unwrap()
            .version;
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let (c, key) = (c.clone(), key.clone());
                    s.spawn(move || {
                        c.put("ns", &key, b(&t.to_string()), None, Condition::IfVersion(v))
                            .is_ok() as usize
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(winners, 1, "round {round}");
    }
}

fn json_of(len: usize, seed: usize) -> Bytes {
    let mut out = String::new();
    let mut i = seed;
    while out.len() < len {
        out.push_str(&format!("{{\"id\":{i},\"plan\":\"pro\",\"ok\":true}},"));
        i += 1;
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Expiry index entries in the store.
fn index_entries(c: &TestCache) -> usize {
    c.store
        .tree(Domain::Cache)
        .scan_prefix(super::entry::EXPIRY_PREFIX)
        .count()
}

#[test]
fn rewrites_between_drains_are_packed_and_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), Writes::Staged, |_| {});
    let mut last = 0;
    for i in 0..100 {
        let ttl = Some(Duration::from_secs(60 + i));
        last = c
            .put("ns", "k", json_of(4096, i as usize), ttl, Condition::Always)
            .unwrap()
            .version;
    }
    assert_eq!(c.write_behind().0, 1, "one key staged");
    assert_eq!(c.store.tree(Domain::Cache).len(), 0, "nothing written yet");
    c.settle();
    assert_eq!(c.write_behind(), (0, 0));
    assert_eq!(c.write_behind_totals(), (1, 0), "100 puts, one key written");
    let s = c.namespaces().get("ns").unwrap().snapshot();
    assert_eq!(s.packed, [0, 0, 0, 1], "gzipped once, for the last value");
    assert_eq!((s.entries, s.raw_bytes), (1, 4096));
    assert!(
        s.stored_bytes > 0 && s.stored_bytes < 2048,
        "the stored size of the last value: {s:?}"
    );
    assert_eq!(index_entries(&c), 1, "only the last expiry is indexed");
    // A later rewrite with another expiry replaces the index entry.
    c.put(
        "ns",
        "k",
        b("short"),
        Some(Duration::from_secs(5)),
        Condition::Always,
    )
    .unwrap();
    c.settle();
    assert_eq!(index_entries(&c), 1);
    let s = c.namespaces().get("ns").unwrap().snapshot();
    assert_eq!((s.entries, s.raw_bytes, s.stored_bytes), (1, 5, 5));
    // What was written is what a fresh engine reads.
    drop(c);
    let c = engine_with(dir.path(), Writes::Staged, |_| {});
    let found = c.get("ns", "k").unwrap().unwrap();
    assert_eq!(found.value, b("short"));
    assert!(found.version > last);
    assert!(c.delete("ns", "k", None).unwrap());
    assert_eq!(c.get("ns", "k").unwrap(), None, "a staged delete is read");
    c.settle();
    assert_eq!(index_entries(&c), 0);
    assert_eq!(c.store.tree(Domain::Cache).len(), 0);
    let s = c.namespaces().get("ns").unwrap().snapshot();
    assert_eq!((s.entries, s.raw_bytes, s.stored_bytes), (0, 0, 0));
}

#[test]
fn staged_writes_are_bounded_by_write_behind_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), Writes::Staged, |c| {
        c.write_behind_bytes = 10 * 1024;
    });
    let value = Bytes::from(vec![b'v'; 1000]);
    let mut most = 0;
    for i in 0..100 {
        c.put(
            "ns",
            &format!("k{i}"),
            value.clone(),
            None,
            Condition::Always,
        )
        .unwrap();
        most = most.max(c.write_behind().1);
    }
    assert!(most <= 10 * 1024, "{most} bytes staged");
    assert!(
        c.store.tree(Domain::Cache).len() >= 90,
        "the writers drained what passed the bound"
    );
    for i in 0..100 {
        assert_eq!(c.get("ns", &format!("k{i}")).unwrap().unwrap().value, value);
    }
}

#[test]
fn a_store_that_refuses_writes_refuses_puts_and_keeps_what_is_staged() {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), Writes::Staged, |_| {});
    let v = c
        .put("ns", "k", b("kept"), None, Condition::Always)
        .unwrap()
        .version;
    c.store.health().fault("disk gone (test)");
    let refused = c
        .put("ns", "k2", b("x"), None, Condition::Always)
        .unwrap_err();
    assert!(
        refused.to_string().contains("disk gone (test)"),
        "{refused}"
    );
    assert!(c.drain().is_err(), "the drain says the store failed");
    assert_eq!(c.write_behind_totals(), (0, 1));
    assert_eq!(c.write_behind().0, 1, "the staged write is kept to retry");
    assert_eq!(c.get("ns", "k").unwrap().unwrap().version, v);
    c.store.health().recovered();
    c.settle();
    drop(c);
    let c = engine_with(dir.path(), Writes::Staged, |_| {});
    assert_eq!(c.get("ns", "k").unwrap().unwrap().value, b("kept"));
}
