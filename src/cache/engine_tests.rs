//! The cache engine over a real sled directory, without gRPC.

use std::sync::Arc;
use std::time::Duration;

use prost::bytes::Bytes;

use super::watch::ChangeKind;
use super::{CacheEngine, CacheError, Condition};
use crate::config::{CacheConfig, StorageConfig};
use crate::store::{SledStore, Store};

fn store(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(
        SledStore::open(&StorageConfig {
            data_dir: dir.to_path_buf(),
            ..Default::default()
        })
        .unwrap(),
    )
}

fn engine_with(dir: &std::path::Path, adjust: impl FnOnce(&mut CacheConfig)) -> CacheEngine {
    let mut config = CacheConfig::default();
    adjust(&mut config);
    CacheEngine::open(&config, store(dir)).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn put_get_delete_and_versions_that_only_grow() {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), |_| {});
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

#[test]
fn conditions_hold_or_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), |_| {});
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

#[test]
fn bad_input_names_the_field_and_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), |c| {
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

#[test]
fn expired_entries_are_never_returned_and_the_sweeper_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), |_| {});
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
    // A put over the expired entry is a fresh entry for if_absent.
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

#[test]
fn rewriting_a_key_with_another_ttl_leaves_no_stale_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), |_| {});
    c.put(
        "ns",
        "k",
        b("1"),
        Some(Duration::from_millis(20)),
        Condition::Always,
    )
    .unwrap();
    c.put("ns", "k", b("2"), None, Condition::Always).unwrap();
    std::thread::sleep(Duration::from_millis(40));
    c.sweep_step(crate::wallclock::now_ms(), 10).unwrap();
    assert_eq!(c.get("ns", "k").unwrap().unwrap().value, b("2"));
    assert_eq!(c.namespaces().get("ns").unwrap().snapshot().expirations, 0);
}

#[test]
fn values_read_back_from_the_store_after_hot_eviction_compressed_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), |c| {
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

#[test]
fn entries_and_counts_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let v = {
        let c = engine_with(dir.path(), |_| {});
        c.put(
            "a",
            "k1",
            b("v1"),
            Some(Duration::from_secs(60)),
            Condition::Always,
        )
        .unwrap();
        c.put("b", "k2", b("v2"), None, Condition::Always)
            .unwrap()
            .version
    };
    let c = engine_with(dir.path(), |_| {});
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

#[test]
fn concurrent_compare_and_set_has_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let c = engine_with(dir.path(), |_| {});
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
