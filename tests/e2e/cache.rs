//! The cache over real gRPC: every RPC and error, TTLs (read path and
//! sweeper), compare-and-set races, batches with mixed outcomes, compression
//! round trips, restarts, Stats and /metrics, and Watch with its resync.

use std::time::{Duration, Instant};

use gantry::config::HumanDuration;
use gantry::proto::gantry::v1 as pb;
use pb::cache_client::CacheClient;
use prost::bytes::Bytes;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{TestServer, assert_status, http_get, metric_value};

fn put_req(ns: &str, key: &str, value: impl Into<Bytes>) -> pb::PutRequest {
    pb::PutRequest {
        namespace: ns.into(),
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn get_req(ns: &str, key: &str) -> pb::GetRequest {
    pb::GetRequest {
        namespace: ns.into(),
        key: key.into(),
    }
}

fn ttl(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

async fn get(c: &mut CacheClient<Channel>, ns: &str, key: &str) -> pb::GetResponse {
    c.get(get_req(ns, key)).await.unwrap().into_inner()
}

async fn delete(
    c: &mut CacheClient<Channel>,
    ns: &str,
    key: &str,
    if_version: Option<u64>,
) -> Result<bool, tonic::Status> {
    c.delete(pb::DeleteRequest {
        namespace: ns.into(),
        key: key.into(),
        if_version,
    })
    .await
    .map(|r| r.into_inner().deleted)
}

async fn put(c: &mut CacheClient<Channel>, req: pb::PutRequest) -> u64 {
    let r = c.put(req).await.unwrap().into_inner();
    assert!(r.stored);
    r.version
}

fn json_like(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("{{\"user\":{i},\"plan\":\"pro\",\"active\":true}},").into_bytes())
        .collect()
}

fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

crate::on_every_backend! {
cluster async fn put_get_delete_with_versions_and_ttl(backend: Backend) {
    let server = TestServer::start_on(&backend, |_| {}).await;
    let mut c = CacheClient::new(server.channel.clone());

    assert!(!get(&mut c, "orders", "o-1").await.found);
    let v1 = put(&mut c, put_req("orders", "o-1", &b"pending"[..])).await;
    // The first write of a fresh server: a version a client can show and compare.
    assert!(v1 >= 1, "versions start at 1, got {v1}");
    let r = get(&mut c, "orders", "o-1").await;
    assert!(r.found);
    assert_eq!((&r.value[..], r.version), (&b"pending"[..], v1));
    assert_eq!(r.ttl_remaining, None, "no TTL: never expires");

    let mut with_ttl = put_req("orders", "o-1", &b"paid"[..]);
    with_ttl.ttl = ttl(Duration::from_secs(30));
    let v2 = put(&mut c, with_ttl).await;
    assert!(v2 > v1);
    let r = get(&mut c, "orders", "o-1").await;
    let left = r.ttl_remaining.unwrap();
    assert!((25..=30).contains(&left.seconds), "{left:?}");

    assert!(delete(&mut c, "orders", "o-1", None).await.unwrap());
    assert!(!get(&mut c, "orders", "o-1").await.found);
    assert!(
        !delete(&mut c, "orders", "o-1", None).await.unwrap(),
        "already gone"
    );
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn conditions_lose_with_failed_precondition(backend: Backend) {
    let server = TestServer::start_on(&backend, |_| {}).await;
    let mut c = CacheClient::new(server.channel.clone());
    let mut absent = put_req("ns", "lock", &b"me"[..]);
    absent.condition = Some(pb::put_request::Condition::IfAbsent(true));
    let v = put(&mut c, absent.clone()).await;
    let err = c.put(absent).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("exists at version"),
        "{}",
        err.message()
    );

    let mut cas = put_req("ns", "lock", &b"you"[..]);
    cas.condition = Some(pb::put_request::Condition::IfVersion(v + 1000));
    let err = c.put(cas.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains(&format!("is at version {v}")),
        "{}",
        err.message()
    );
    cas.condition = Some(pb::put_request::Condition::IfVersion(v));
    let v2 = put(&mut c, cas).await;

    let err = delete(&mut c, "ns", "lock", Some(v)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(delete(&mut c, "ns", "lock", Some(v2)).await.unwrap());
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn bad_input_is_invalid_argument_naming_the_field(backend: Backend) {
    let server = TestServer::start_on(&backend, |c| {
        c.cache.max_value_bytes = 1000;
        c.cache.max_key_bytes = 16;
        c.cache.max_batch = 3;
        c.cache.max_namespaces = 2;
    })
    .await;
    let mut c = CacheClient::new(server.channel.clone());
    let expect = assert_status;
    expect(
        c.get(get_req("", "k")).await.unwrap_err(),
        Code::InvalidArgument,
        &["namespace", "empty"],
    );
    expect(
        c.get(get_req("ns", "")).await.unwrap_err(),
        Code::InvalidArgument,
        &["key", "empty"],
    );
    expect(
        c.get(get_req("ns", &"k".repeat(17))).await.unwrap_err(),
        Code::InvalidArgument,
        &["key", "17 bytes", "cache.max_key_bytes"],
    );
    expect(
        c.put(put_req("ns", "k", vec![0u8; 1001]))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        &["value", "1001 bytes", "cache.max_value_bytes"],
    );
    let mut negative = put_req("ns", "k", &b"v"[..]);
    negative.ttl = Some(prost_types::Duration {
        seconds: -5,
        nanos: 0,
    });
    expect(
        c.put(negative).await.unwrap_err(),
        Code::InvalidArgument,
        &["ttl", "negative"],
    );
    let too_many = pb::GetManyRequest {
        items: (0..4).map(|i| get_req("ns", &format!("k{i}"))).collect(),
    };
    expect(
        c.get_many(too_many).await.unwrap_err(),
        Code::InvalidArgument,
        &["items", "4 items", "cache.max_batch"],
    );
    put(&mut c, put_req("a", "k", &b"v"[..])).await;
    put(&mut c, put_req("b", "k", &b"v"[..])).await;
    expect(
        c.put(put_req("c", "k", &b"v"[..])).await.unwrap_err(),
        Code::ResourceExhausted,
        &["\"c\"", "cache.max_namespaces"],
    );
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn batches_answer_per_item_in_order(backend: Backend) {
    let server = TestServer::start_on(&backend, |_| {}).await;
    let mut c = CacheClient::new(server.channel.clone());
    let v = put(&mut c, put_req("ns", "existing", &b"old"[..])).await;
    let mut lost = put_req("ns", "existing", &b"new"[..]);
    lost.condition = Some(pb::put_request::Condition::IfVersion(v + 1));
    let results = c
        .put_many(pb::PutManyRequest {
            items: vec![
                put_req("ns", "a", &b"1"[..]),
                put_req("ns", "", &b"2"[..]),
                lost,
                put_req("ns", "b", &b"3"[..]),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 4);
    assert!(results[0].response.as_ref().unwrap().stored);
    let e1 = results[1].error.as_ref().unwrap();
    assert_eq!(e1.code, Code::InvalidArgument as i32);
    assert!(e1.message.starts_with("items[1].key"), "{}", e1.message);
    let e2 = results[2].error.as_ref().unwrap();
    assert_eq!(e2.code, Code::FailedPrecondition as i32, "{}", e2.message);
    assert!(results[3].response.is_some());

    let results = c
        .get_many(pb::GetManyRequest {
            items: vec![
                get_req("ns", "b"),
                get_req("ns", "missing"),
                get_req("", "x"),
                get_req("ns", "existing"),
                get_req("ns", "a"),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let values: Vec<Option<&[u8]>> = results
        .iter()
        .map(|r| {
            r.response
                .as_ref()
                .filter(|g| g.found)
                .map(|g| &g.value[..])
        })
        .collect();
    assert_eq!(
        values,
        vec![
            Some(&b"3"[..]),
            None,
            None,
            Some(&b"old"[..]),
            Some(&b"1"[..])
        ]
    );
    assert!(
        results[1].response.is_some() && results[1].error.is_none(),
        "a miss is not an error"
    );
    assert!(
        results[2]
            .error
            .as_ref()
            .unwrap()
            .message
            .starts_with("items[2].namespace")
    );
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
cluster async fn concurrent_compare_and_set_has_exactly_one_winner(backend: Backend) {
    let server = TestServer::start_on(&backend, |_| {}).await;
    let mut c = CacheClient::new(server.channel.clone());
    for round in 0..5 {
        let key = format!("counter-{round}");
        let v = put(&mut c, put_req("ns", &key, &b"0"[..])).await;
        let mut tasks = Vec::new();
        for writer in 0..16 {
            let mut c = c.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let mut req = put_req("ns", &key, writer.to_string().into_bytes());
                req.condition = Some(pb::put_request::Condition::IfVersion(v));
                c.put(req).await.map(|r| r.into_inner().version)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(version) => winners.push(version),
                Err(status) => assert_eq!(status.code(), Code::FailedPrecondition),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}");
        assert_eq!(get(&mut c, "ns", &key).await.version, winners[0]);
    }
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn values_round_trip_whether_compressed_or_not(backend: Backend) {
    let server = TestServer::start_on(&backend, |c| c.cache.compress_min_bytes = 512).await;
    let mut c = CacheClient::new(server.channel.clone());
    let json = json_like(500);
    let random = noise(20_000);
    for (key, value) in [
        ("json", json.clone()),
        ("noise", random.clone()),
        ("empty", Vec::new()),
    ] {
        put(&mut c, put_req("blobs", key, value.clone())).await;
        assert_eq!(
            &get(&mut c, "blobs", key).await.value[..],
            &value[..],
            "{key}"
        );
    }
    // What compression made of each value: gzip tried only where the
    // sample said it could pay. Counted as values are written to the store
    // (on sled in `periodic` durability by the drain, within half
    // `storage.flush_interval`).
    let expected = [("gzip", 1.0), ("skipped", 1.0), ("small", 1.0), ("not_smaller", 0.0)];
    let series = |outcome: &str| {
        format!("gantry_cache_packed_total{{namespace=\"blobs\",outcome=\"{outcome}\"}}")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let (_, metrics) = http_get(server.metrics, "/metrics").await;
        // On sled, also until the drain that counted them finished writing.
        let written = metric_value(&metrics, "gantry_cache_write_behind_written_total");
        let counted = metric_value(&metrics, &series("gzip")) == Some(1.0)
            && (backend.is_redis() || written == Some(3.0));
        if counted || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (outcome, count) in expected {
        let series = series(outcome);
        assert_eq!(metric_value(&metrics, &series), Some(count), "{series}\n{metrics}");
    }
    if backend.is_redis() {
        // Entry and byte counts are not kept in Redis (docs/cluster.md).
        server.stop().await.unwrap();
        return;
    }
    // On sled the three Puts were staged, then written by a drain.
    let written = metric_value(&metrics, "gantry_cache_write_behind_written_total");
    assert_eq!(written, Some(3.0), "{metrics}");
    let staged = metric_value(&metrics, "gantry_cache_write_behind_keys");
    assert_eq!(staged, Some(0.0), "{metrics}");
    let stats = c
        .stats(pb::CacheStatsRequest {
            namespace: "blobs".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = &stats.namespaces[0];
    assert_eq!(s.entries, 3);
    assert_eq!(s.raw_bytes, (json.len() + random.len()) as u64);
    // JSON shrinks several times; noise is stored raw (no growth).
    assert!(
        s.stored_bytes < random.len() as u64 + json.len() as u64 / 3,
        "{s:?}"
    );
    assert!(s.stored_bytes >= random.len() as u64, "{s:?}");
    server.stop().await.unwrap();
}
}

#[tokio::test]
async fn expired_entries_are_not_returned_and_are_swept() {
    let server = TestServer::start_with(|c| {
        c.cache.sweep_interval = HumanDuration::from_millis(50);
    })
    .await;
    let mut c = CacheClient::new(server.channel.clone());
    let mut short = put_req("sessions", "s-1", &b"token"[..]);
    short.ttl = ttl(Duration::from_millis(300));
    put(&mut c, short).await;
    put(&mut c, put_req("sessions", "s-2", &b"keep"[..])).await;
    assert!(get(&mut c, "sessions", "s-1").await.found);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!get(&mut c, "sessions", "s-1").await.found);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = c
            .stats(pb::CacheStatsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let total = stats.total.unwrap();
        if total.expirations == 1 {
            assert_eq!(total.entries, 1);
            break;
        }
        assert!(Instant::now() < deadline, "not swept: {total:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "gantry_cache_expirations_total{namespace=\"sessions\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "gantry_cache_entries{namespace=\"sessions\"}"),
        Some(1.0)
    );
    assert!(
        metric_value(
            &metrics,
            "gantry_cache_hits_total{namespace=\"sessions\",tier=\"hot\"}"
        )
        .unwrap()
            >= 1.0
    );
    server.stop().await.unwrap();
}

crate::on_every_backend! {
async fn entries_survive_a_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in_on(dir.path(), &backend, |_| {}).await;
    let mut c = CacheClient::new(server.channel.clone());
    let v = put(&mut c, put_req("cfg", "flags", json_like(100))).await;
    let mut expiring = put_req("cfg", "soon", &b"x"[..]);
    expiring.ttl = ttl(Duration::from_millis(200));
    put(&mut c, expiring).await;
    server.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let server = TestServer::start_in_on(dir.path(), &backend, |_| {}).await;
    let mut c = CacheClient::new(server.channel.clone());
    let r = get(&mut c, "cfg", "flags").await;
    assert_eq!((&r.value[..], r.version), (&json_like(100)[..], v));
    assert!(
        !get(&mut c, "cfg", "soon").await.found,
        "its TTL ran out while down"
    );
    server.stop().await.unwrap();
}
}

async fn next_event(stream: &mut tonic::Streaming<pb::WatchEvent>) -> pb::WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap()
}

// On Redis, expiries come from Redis's keyspace notifications: on one
// server's subscription, on a cluster from every primary's (docs/cluster.md).
crate::on_every_backend! {
cluster async fn watch_streams_puts_deletes_and_expiries_of_a_prefix(backend: Backend) {
    let server = TestServer::start_on(&backend, |c| {
        c.cache.sweep_interval = HumanDuration::from_millis(50);
    })
    .await;
    let mut c = CacheClient::new(server.channel.clone());
    let mut stream = c
        .watch(pb::WatchRequest {
            namespace: "cfg".into(),
            key_prefix: "feature/".into(),
            include_values: true,
        })
        .await
        .unwrap()
        .into_inner();
    put(&mut c, put_req("cfg", "other", &b"ignored"[..])).await;
    put(&mut c, put_req("elsewhere", "feature/x", &b"ignored"[..])).await;
    let v = put(&mut c, put_req("cfg", "feature/a", &b"on"[..])).await;
    let e = next_event(&mut stream).await;
    assert_eq!(e.kind, pb::watch_event::Kind::Put as i32);
    assert_eq!(
        (e.key.as_str(), e.version, &e.value[..]),
        ("feature/a", v, &b"on"[..])
    );
    assert!(e.time.is_some());

    delete(&mut c, "cfg", "feature/a", None).await.unwrap();
    let e = next_event(&mut stream).await;
    assert_eq!(
        (e.kind, e.version),
        (pb::watch_event::Kind::Delete as i32, v)
    );

    let mut short = put_req("cfg", "feature/b", &b"1"[..]);
    short.ttl = ttl(Duration::from_millis(100));
    put(&mut c, short).await;
    assert_eq!(
        next_event(&mut stream).await.kind,
        pb::watch_event::Kind::Put as i32
    );
    let e = next_event(&mut stream).await;
    assert_eq!(
        (e.kind, e.key.as_str()),
        (pb::watch_event::Kind::Expire as i32, "feature/b")
    );
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn a_watcher_that_falls_behind_gets_a_resync(backend: Backend) {
    let server = TestServer::start_on(&backend, |c| c.cache.watch_buffer = 4).await;
    let mut c = CacheClient::new(server.channel.clone());
    let mut stream = c
        .watch(pb::WatchRequest {
            namespace: "big".into(),
            key_prefix: String::new(),
            include_values: true,
        })
        .await
        .unwrap()
        .into_inner();
    // 60 KB events fill the HTTP/2 flow-control windows (connection and
    // stream) quickly, so the server cannot drain the buffer of 4 while this
    // watcher does not read: 200 of them are 12 MB.
    let value = noise(60_000);
    for i in 0..200 {
        put(&mut c, put_req("big", &format!("k{i}"), value.clone())).await;
    }
    put(&mut c, put_req("big", "last", &b"after"[..])).await;
    let mut kinds = Vec::new();
    loop {
        let e = next_event(&mut stream).await;
        if e.kind == pb::watch_event::Kind::Resync as i32 {
            kinds.push("resync");
        } else {
            kinds.push("put");
        }
        if e.key == "last" {
            break;
        }
    }
    assert!(kinds.contains(&"resync"), "{kinds:?}");
    assert!(
        kinds.len() < 200,
        "events were dropped, not buffered: {} events",
        kinds.len()
    );
    assert_eq!(
        kinds.last(),
        Some(&"put"),
        "the stream goes on after a resync"
    );
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert!(metric_value(&metrics, "gantry_cache_watch_resyncs_total").unwrap() >= 1.0);
    assert_eq!(metric_value(&metrics, "gantry_cache_watchers"), Some(1.0));
    drop(stream);
    server.stop().await.unwrap();
}
}

/// One call of [`direct_calls_answer_exactly_as_the_service_path`].
enum Call {
    Get(pb::GetRequest),
    Put(pb::PutRequest),
    /// A Put of `key` at the version this server last answered with.
    PutAtLastVersion(&'static str),
    Delete(pb::DeleteRequest),
}

/// One server's answers, told as text in which versions are named by the
/// order they appeared (`v0`, `v1`, …): versions on Redis come from its
/// clock, so two servers' differ, while their order and use must not.
#[derive(Default)]
struct Answers {
    versions: Vec<u64>,
}

impl Answers {
    fn saw(&mut self, version: u64) {
        if version != 0 && !self.versions.contains(&version) {
            self.versions.push(version);
        }
    }

    /// `text` with every whole number that is a version seen replaced by its name.
    fn named(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
            out.push_str(&rest[..start]);
            let digits = &rest[start..];
            let end = digits
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(digits.len());
            let number = &digits[..end];
            match self.versions.iter().position(|v| v.to_string() == number) {
                Some(i) => out.push_str(&format!("v{i}")),
                None => out.push_str(number),
            }
            rest = &digits[end..];
        }
        out.push_str(rest);
        out
    }

    /// A call's answer as text, or its status; the time left of a TTL is
    /// rounded to whole seconds (two servers read the clock apart).
    async fn of(
        &mut self,
        c: &mut CacheClient<Channel>,
        call: &Call,
    ) -> Result<String, (Code, String)> {
        let answer = match call {
            Call::Get(r) => c.get(r.clone()).await.map(|r| {
                let mut r = r.into_inner();
                self.saw(r.version);
                if let Some(left) = &mut r.ttl_remaining {
                    left.seconds += i64::from(left.nanos > 500_000_000);
                    left.nanos = 0;
                }
                format!("{r:?}")
            }),
            Call::Put(_) | Call::PutAtLastVersion(_) => {
                let r = match call {
                    Call::PutAtLastVersion(key) => {
                        let mut r = put_req("ns", key, &b"swapped"[..]);
                        let last = self.versions.last().copied().unwrap_or(0);
                        r.condition = Some(pb::put_request::Condition::IfVersion(last));
                        r
                    }
                    Call::Put(r) => r.clone(),
                    _ => unreachable!(),
                };
                c.put(r).await.map(|r| {
                    let r = r.into_inner();
                    self.saw(r.version);
                    format!("{r:?}")
                })
            }
            Call::Delete(r) => c
                .delete(r.clone())
                .await
                .map(|r| format!("{:?}", r.into_inner())),
        };
        answer
            .map(|text| self.named(&text))
            .map_err(|s| (s.code(), self.named(s.message())))
    }
}

// Get, Put and Delete answered from their bytes by gantry's transport (the
// default) and through tonic (`server.direct_calls = false`) give the same
// answers and refusals, in both durabilities, on every backend (a Redis
// Cluster and Valkey too).
crate::on_every_backend! {
cluster async fn direct_calls_answer_exactly_as_the_service_path(backend: Backend) {
    use gantry::config::Durability;
    use pb::put_request::Condition;
    let del = |namespace: &str, key: &str, if_version| {
        Call::Delete(pb::DeleteRequest {
            namespace: namespace.into(),
            key: key.into(),
            if_version,
        })
    };
    let with = |key: &str, f: &dyn Fn(&mut pb::PutRequest)| {
        let mut r = put_req("ns", key, &b"v"[..]);
        f(&mut r);
        Call::Put(r)
    };
    let calls = [
        Call::Get(get_req("ns", "k")),
        Call::Put(put_req("ns", "k", &b"first"[..])),
        Call::Get(get_req("ns", "k")),
        with("k", &|r| r.ttl = ttl(Duration::from_secs(30))),
        Call::Get(get_req("ns", "k")),
        with("k", &|r| r.condition = Some(Condition::IfAbsent(true))),
        with("k", &|r| r.condition = Some(Condition::IfVersion(1))),
        Call::PutAtLastVersion("k"),
        Call::Get(get_req("ns", "k")),
        del("ns", "k", Some(1)),
        del("ns", "k", None),
        del("ns", "k", None),
        Call::Get(get_req("ns", "k")),
        Call::Put(put_req("ns", "json", json_like(400))),
        Call::Get(get_req("ns", "json")),
        Call::Put(put_req("ns", "noise", noise(10 * 1024))),
        Call::Get(get_req("ns", "noise")),
        Call::Get(get_req("", "k")),
        Call::Put(put_req("ns", &"k".repeat(17), &b"v"[..])),
        Call::Put(put_req("ns", "big", vec![0u8; 20_001])),
        with("k", &|r| r.ttl = Some(prost_types::Duration { seconds: -5, nanos: 0 })),
        del("ns", "", None),
        Call::Put(put_req("second", "k", &b"v"[..])),
        Call::Put(put_req("third", "k", &b"v"[..])),
    ];
    for durability in [Durability::Periodic, Durability::Sync] {
        let start = |backend: Backend, direct: bool| async move {
            TestServer::start_on(&backend, |c| {
                c.server.direct_calls = direct;
                c.cache.durability = durability;
                c.cache.max_key_bytes = 16;
                c.cache.max_value_bytes = 20_000;
                c.cache.max_namespaces = 2;
            })
            .await
        };
        let direct = start(backend.clone(), true).await;
        let service = start(backend.another(), false).await;
        let mut a = CacheClient::new(direct.channel.clone());
        let mut b = CacheClient::new(service.channel.clone());
        let (mut left_answers, mut right_answers) = (Answers::default(), Answers::default());
        let mut refused = 0;
        for (n, call) in calls.iter().enumerate() {
            let left = left_answers.of(&mut a, call).await;
            let right = right_answers.of(&mut b, call).await;
            assert_eq!(left, right, "{durability:?}, call {n}");
            refused += usize::from(left.is_err());
        }
        // The cases reach the refusals they were written for.
        assert_eq!(refused, 9, "{durability:?}");
        direct.stop().await.unwrap();
        service.stop().await.unwrap();
    }
}
}
