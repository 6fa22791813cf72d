//! The status page (`/status`, its data at `/status.json`) and `gantry top`,
//! against real servers with known traffic in every capability: the JSON on
//! every backend, the metrics port's access settings (TLS and token) for the
//! data and for `gantry top`, `gantry top` as a process, and the page itself
//! in a real Chromium (Debian's package, driven by playwright-core from
//! tests/browser; .ci/run installs both) that must show the traffic, then
//! show more of it without a reload. The browser test saves a screenshot in
//! cargo's target/tmp.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gantry::proto::gantry::v1 as pb;
use serde_json::Value;
use tonic::transport::Channel;

use crate::certs::Ca;
use crate::common::{TestServer, http_get, http_get_with_headers, run_gantry};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn configure(c: &mut gantry::config::Config) {
    // Five an hour: the traffic below spends them and is denied after.
    c.ratelimit.limits = vec![crate::ratelimit::limit(
        "api",
        5,
        Duration::from_secs(3600),
        5,
    )];
    c.leases.pools = vec![crate::leases::pool("db", 3)];
    c.query.slow_threshold = gantry::config::HumanDuration::from_millis(1);
}

/// Known traffic: `acquires` on api/customer-7 (5 allowed, the rest
/// denied), `leases` units of db held by worker-1, `puts` entries in
/// "pages" read back once each plus one miss, `executions` of one query,
/// `spans` spans of checkout's GET /cart (one of them failed).
struct Wave {
    acquires: usize,
    leases: u32,
    puts: usize,
    executions: usize,
    spans: u8,
}

async fn traffic(channel: &Channel, wave: &Wave, first_span: u8) {
    let mut limits = pb::rate_limiter_client::RateLimiterClient::new(channel.clone());
    for _ in 0..wave.acquires {
        let request = pb::AcquireRequest {
            limit: "api".into(),
            key: "customer-7".into(),
            tokens: 1,
            ..Default::default()
        };
        limits.acquire(request).await.unwrap();
    }
    let mut leases = pb::leases_client::LeasesClient::new(channel.clone());
    for _ in 0..wave.leases {
        let request = pb::AcquireLeaseRequest {
            pool: "db".into(),
            holder: "worker-1".into(),
            count: 1,
            ..Default::default()
        };
        assert!(leases.acquire(request).await.unwrap().into_inner().granted);
    }
    let mut cache = pb::cache_client::CacheClient::new(channel.clone());
    for i in 0..wave.puts {
        let key = format!("page-{first_span}-{i}");
        let put = pb::PutRequest {
            namespace: "pages".into(),
            key: key.clone(),
            value: b"<html>".to_vec().into(),
            ..Default::default()
        };
        cache.put(put).await.unwrap();
        let get = pb::GetRequest {
            namespace: "pages".into(),
            key,
        };
        assert!(cache.get(get).await.unwrap().into_inner().found);
    }
    let miss = pb::GetRequest {
        namespace: "pages".into(),
        key: "never-written".into(),
    };
    cache.get(miss).await.unwrap();
    let mut query = pb::query_analyzer_client::QueryAnalyzerClient::new(channel.clone());
    let executions = (0..wave.executions)
        .map(|i| pb::QueryExecution {
            sql: format!("SELECT * FROM orders WHERE id = {i}"),
            duration: Some(prost_types::Duration {
                seconds: 0,
                nanos: 5_000_000,
            }),
            service: "shop".into(),
            ..Default::default()
        })
        .collect();
    query
        .record(pb::RecordRequest { executions })
        .await
        .unwrap();
    let mut traces = pb::traces_client::TracesClient::new(channel.clone());
    let base = crate::traces::now_nanos();
    let spans = (0..wave.spans)
        .map(|i| {
            let mut span = crate::traces::span(first_span + i, 1, None, "GET /cart", base, 0, 3);
            if i == 0 {
                span.status = Some(pb::SpanStatus {
                    code: pb::span_status::Code::Error as i32,
                    message: "boom".into(),
                });
            }
            span
        })
        .collect();
    traces.ingest(pb::IngestRequest { spans }).await.unwrap();
}

const FIRST: Wave = Wave {
    acquires: 8,
    leases: 2,
    puts: 4,
    executions: 6,
    spans: 4,
};

async fn status_json(server: &TestServer, query: &str) -> Value {
    let (status, body) = http_get(server.metrics, &format!("/status.json{query}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Fleet-wide answers (Redis) are merged from snapshots the replicas
/// publish every few seconds: ask until `check` passes or 15 s went by.
async fn eventually(server: &TestServer, check: impl Fn(&Value) -> Result<(), String>) -> Value {
    let started = Instant::now();
    loop {
        let snapshot = status_json(server, "").await;
        match check(&snapshot) {
            Ok(()) => return snapshot,
            Err(why) if started.elapsed() > Duration::from_secs(15) => {
                panic!("{why}\n{snapshot:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn expect(what: &str, got: &Value, want: impl Into<Value>) -> Result<(), String> {
    let want = want.into();
    if *got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want {want}"))
    }
}

/// What FIRST shows on every backend (Redis Cluster cannot list hot keys:
/// its section says so, and the rest shows).
fn shows_first_wave(s: &Value, cluster: bool) -> Result<(), String> {
    let r = &s["ratelimit"];
    expect("limit name", &r["limits"]["limits"][0]["name"], "api")?;
    expect("allowed", &r["counters"]["api"]["allowed"], 5)?;
    expect("denied", &r["counters"]["api"]["denied"], 3)?;
    if cluster {
        let refused = &r["hot_keys"]["api"]["error"]["code"];
        expect("hot keys on Redis Cluster", refused, "FailedPrecondition")?;
    } else {
        let hot = &r["hot_keys"]["api"]["buckets"][0];
        expect("hot key", &hot["key"], "customer-7")?;
        expect("hot key tokens", &hot["tokens"], 0)?;
    }
    let denied = &r["denied_keys"]["api"][0];
    expect("most denied key", &denied["key"], "customer-7")?;
    expect("its denials", &denied["denied"], 3)?;
    let pool = &s["leases"]["pools"][0];
    expect("pool", &pool["pool"], "db")?;
    expect("capacity", &pool["capacity"], 3)?;
    expect("in use", &pool["in_use"], 2)?;
    expect("holder", &pool["holders"][0]["holder"], "worker-1")?;
    let pages = &s["cache"]["stats"]["namespaces"][0];
    expect("namespace", &pages["namespace"], "pages")?;
    let hits = pages["hot_hits"].as_u64().unwrap_or(0) + pages["store_hits"].as_u64().unwrap_or(0);
    expect("hits", &Value::from(hits), 4)?;
    expect("misses", &pages["store_misses"], 1)?;
    let top = &s["query"]["top"]["queries"][0];
    expect("query calls", &top["calls"], 6)?;
    let sample = top["sample"].as_str().unwrap_or_default();
    if !sample.starts_with("SELECT * FROM orders WHERE id = ") {
        return Err(format!("query sample: {sample:?}"));
    }
    let slow = s["query"]["slow"]["queries"].as_array().map_or(0, Vec::len);
    expect("slow queries", &Value::from(slow), 6)?;
    let endpoint = &s["traces"]["endpoints"]["endpoints"][0];
    expect("endpoint", &endpoint["endpoint"], "GET /cart")?;
    expect("endpoint calls", &endpoint["calls"], 4)?;
    expect("endpoint errors", &endpoint["errors"], 1)?;
    Ok(())
}

crate::on_every_backend! {
cluster async fn status_json_answers_every_capability_from_its_rpcs(backend: Backend) {
    let server = TestServer::start_on(&backend, configure).await;
    traffic(&server.channel, &FIRST, 1).await;
    let cluster = matches!(backend, Backend::RedisCluster { .. });
    let snapshot = eventually(&server, |s| shows_first_wave(s, cluster)).await;

    let s = &snapshot["server"];
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["backend"], if backend.is_redis() { "redis" } else { "sled" });
    assert!(s["uptime_seconds"].as_f64().unwrap() > 0.0);
    assert!(s["store"]["size_bytes"].as_u64().is_some(), "{s}");
    assert_eq!(s["store"]["writable"], true);
    assert!(snapshot["time_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
    // The RPCs' own JSON mapping: durations as protobuf writes them.
    let p99 = snapshot["traces"]["endpoints"]["endpoints"][0]["p99"].as_str().unwrap();
    assert!(p99.ends_with('s'), "{p99}");
    assert_eq!(snapshot["window_seconds"], 60);
    assert_eq!(status_json(&server, "?window=1h").await["window_seconds"], 3600);

    let (status, body) = http_get(server.metrics, "/status.json?window=2d").await;
    assert_eq!(status, 400);
    assert!(body.contains("window must be 1m, 5m or 1h"), "{body}");
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    let made = crate::common::metric_value(&metrics, "gantry_status_snapshot_seconds_count");
    assert!(made.is_some_and(|n| n >= 2.0), "{made:?}");
    server.stop().await.unwrap();
}
}

#[tokio::test]
async fn the_page_is_one_self_contained_file_with_a_strict_policy() {
    let server = TestServer::start().await;
    let (status, head, body) = http_get_with_headers(server.metrics, "/status").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'sha256-"),
        "{head}"
    );
    assert!(
        body.contains("status.json"),
        "the page reads its data from /status.json"
    );
    assert!(
        !body.contains("<script src") && !body.contains("https://"),
        "nothing from elsewhere"
    );
    let (status, body) = http_get(server.metrics, "/nowhere").await;
    assert_eq!(status, 404);
    assert!(body.contains("/status"), "{body}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_status_page_can_be_turned_off() {
    let server = TestServer::start_with(|c| c.telemetry.status_page = false).await;
    for path in ["/status", "/status.json"] {
        let (status, body) = http_get(server.metrics, path).await;
        assert_eq!(status, 404, "{path}");
        assert!(body.contains("telemetry.status_page = false"), "{body}");
    }
    let (status, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        !metrics.contains("gantry_status_snapshot_seconds"),
        "no board, no series"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_data_and_gantry_top_need_the_metrics_token_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("metrics CA");
    let pair = ca.server(dir.path(), "metrics");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "scrape-me\n").unwrap();
    let wrong_token = dir.path().join("wrong-token");
    std::fs::write(&wrong_token, "guess").unwrap();
    let server = TestServer::start_with(|c| {
        configure(c);
        c.telemetry.metrics_tls.cert_file = pair.cert_file.clone();
        c.telemetry.metrics_tls.key_file = pair.key_file.clone();
        c.telemetry.metrics_token_file = token_file.clone();
    })
    .await;
    traffic(&server.channel, &FIRST, 1).await;

    let url = format!("https://localhost:{}", server.metrics.port());
    let top = |token: &Path| {
        let args = [
            "top",
            "-n",
            "1",
            "--url",
            &url,
            "--ca-file",
            ca_file.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
        ]
        .map(String::from);
        let cwd = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_gantry(&args, &[("COLUMNS", "200")], &cwd)
        })
    };
    let (code, out, err) = top(&wrong_token).await.unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("401"), "{out}");
    let (code, out, err) = top(&token_file).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("customer-7") && out.contains("worker-1×2"),
        "{out}"
    );

    // Plain HTTP to the TLS port gets nothing.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        http_get(server.metrics, "/status.json"),
    )
    .await;
    if let Ok((status, body)) = plain {
        assert_ne!(status, 200, "{body}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn gantry_top_shows_the_traffic_and_then_its_rates() {
    let server = TestServer::start_with(configure).await;
    traffic(&server.channel, &FIRST, 1).await;
    let url = format!("http://{}", server.metrics);
    let cwd = server.dir.path().to_path_buf();
    let top = tokio::task::spawn_blocking(move || {
        run_gantry(
            // Over a second apart: a snapshot is shared for a second.
            &[
                "top", "-n", "2", "-d", "1200ms", "--window", "5m", "--url", &url,
            ],
            &[("COLUMNS", "160")],
            &cwd,
        )
    });
    let (code, out, err) = top.await.unwrap();
    assert_eq!(code, 0, "{err}");
    let frames: Vec<&str> = out.split("\ngantry ").collect();
    assert_eq!(frames.len(), 2, "two frames:\n{out}");
    for expected in [
        "RATE LIMITS",
        "customer-7",
        "0/5",
        "MOST DENIED KEY",
        "worker-1×2",
        "pages",
        "80.0%", // 4 hits, 1 miss
        "ENDPOINTS (last 5m)",
        "GET /cart",
        "25.0%", // 1 of 4 spans failed
        "SELECT * FROM orders WHERE id = ?",
        "59m59s", // the bucket is full again in an hour
    ] {
        assert!(
            frames[0].contains(expected),
            "{expected:?} not in\n{}",
            frames[0]
        );
    }
    // The second frame has rates (0.0/s: no traffic between the frames).
    assert!(frames[1].contains("0.0/s"), "{}", frames[1]);
    assert!(!frames[0].contains("0.0/s"), "{}", frames[0]);

    let stopped = run_gantry(
        &[
            "top",
            "-n",
            "1",
            "--timeout",
            "1s",
            "--url",
            "http://127.0.0.1:1",
        ],
        &[],
        server.dir.path(),
    );
    assert_eq!(stopped.0, 1);
    assert!(
        stopped.1.contains("cannot reach 127.0.0.1:1"),
        "{stopped:?}"
    );
    server.stop().await.unwrap();
}

/// The browser and its driver, or None (said once) when either is missing;
/// `GANTRY_REQUIRE_BROWSER=1` (set by .ci/run) makes that a failure.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let driver = Path::new(ROOT).join("tests/browser");
    let have = chromium.is_file() && driver.join("node_modules/playwright-core").is_dir();
    if !have {
        assert!(
            std::env::var_os("GANTRY_REQUIRE_BROWSER").is_none(),
            "the status page test needs Debian's chromium and `npm ci` in tests/browser (.ci/run does both)"
        );
        eprintln!(
            "skipped: the status page browser test needs /usr/bin/chromium (apt-get install chromium) and `npm ci` in tests/browser"
        );
        return None;
    }
    Some((chromium, driver))
}

/// The rows of one table of the page, as the driver read them.
fn rows<'a>(seen: &'a Value, section: &str, table: usize) -> &'a Vec<Value> {
    seen["sections"][section][table]
        .as_array()
        .unwrap_or_else(|| panic!("no table {table} in {section}: {seen:#}"))
}

fn cell(row: &Value, column: &str) -> String {
    row[column].as_str().unwrap_or_default().to_string()
}

/// tests/browser/status_page.mjs running against a page, spoken to in JSON lines.
struct PageDriver {
    node: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl PageDriver {
    fn open(
        chromium: &Path,
        driver: &Path,
        metrics: std::net::SocketAddr,
        screenshot: &Path,
        token: Option<&str>,
    ) -> Self {
        let mut command = Command::new("node");
        command
            .arg(driver.join("status_page.mjs"))
            .arg(format!("http://{metrics}/status"))
            .arg(screenshot)
            .env("CHROMIUM", chromium)
            .env_remove("TOKEN")
            .current_dir(driver)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(token) = token {
            command.env("TOKEN", token);
        }
        let mut node = command.spawn().expect("node runs");
        let stdin = node.stdin.take().unwrap();
        let stdout = node.stdout.take().unwrap();
        let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        Self { node, stdin, lines }
    }

    /// The driver's next report, which must be `stage`.
    fn next(&self, stage: &str) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!("the browser driver said nothing for 60 s (waiting for {stage})")
            });
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}"));
        if value["stage"] == "done" && stage != "done" {
            panic!("the driver ended early: {value}");
        }
        assert_eq!(value["stage"], stage, "{value}");
        value
    }

    /// Lets the driver look for the live update.
    fn go_on(&mut self) {
        writeln!(self.stdin, "next").unwrap();
    }

    fn wait(mut self) {
        assert!(self.node.wait().unwrap().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_for_the_metrics_token_once_and_then_shows_the_data() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "scrape-me\n").unwrap();
    let server = TestServer::start_with(|c| {
        configure(c);
        c.telemetry.metrics_token_file = token_file.clone();
    })
    .await;
    traffic(&server.channel, &FIRST, 1).await;
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page-token.png");
    let mut page = PageDriver::open(
        &chromium,
        &driver,
        server.metrics,
        &screenshot,
        Some("scrape-me"),
    );
    let first = tokio::task::block_in_place(|| page.next("first"));
    assert_eq!(cell(&rows(&first, "ratelimit", 0)[0], "denied"), "3");
    page.go_on();
    tokio::task::block_in_place(|| page.next("live"));
    let done = tokio::task::block_in_place(|| page.next("done"));
    let dialogs = done["dialogs"].as_array().unwrap();
    assert_eq!(dialogs.len(), 1, "asked once: {dialogs:?}");
    assert!(dialogs[0].as_str().unwrap().contains("bearer token"));
    // The only error the browser saw is the first, refused request.
    for error in done["errors"].as_array().unwrap() {
        assert!(error.as_str().unwrap().contains("401"), "{error}");
    }
    page.wait();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_live_traffic_in_a_real_browser() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let server = TestServer::start_with(configure).await;
    traffic(&server.channel, &FIRST, 1).await;

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut page = PageDriver::open(&chromium, &driver, server.metrics, &screenshot, None);
    let first = tokio::task::block_in_place(|| page.next("first"));
    let limits = rows(&first, "ratelimit", 0);
    assert_eq!(cell(&limits[0], "limit"), "api");
    assert_eq!(cell(&limits[0], "allowed"), "5");
    assert_eq!(cell(&limits[0], "denied"), "3");
    assert_eq!(cell(&limits[0], "denied %"), "37.5%");
    let denied = rows(&first, "ratelimit", 1);
    assert_eq!(cell(&denied[0], "key"), "customer-7");
    assert_eq!(cell(&denied[0], "denied"), "3");
    let hot = rows(&first, "ratelimit", 2);
    assert_eq!(cell(&hot[0], "key"), "customer-7");
    assert_eq!(cell(&hot[0], "tokens"), "0 / 5");
    let pools = rows(&first, "leases", 0);
    assert_eq!(cell(&pools[0], "pool"), "db");
    assert_eq!(cell(&pools[0], "in use").trim(), "2");
    assert_eq!(cell(&pools[0], "holders"), "worker-1 ×2");
    let pages = rows(&first, "cache", 0);
    assert_eq!(cell(&pages[0], "namespace"), "pages");
    assert_eq!(cell(&pages[0], "entries"), "4");
    assert_eq!(cell(&pages[0], "hit ratio"), "80.0%");
    let endpoints = rows(&first, "spans", 0);
    assert_eq!(cell(&endpoints[0], "endpoint"), "GET /cart");
    assert_eq!(cell(&endpoints[0], "calls"), "4");
    assert_eq!(cell(&endpoints[0], "error %"), "25.0%");
    let top = rows(&first, "query", 0);
    assert_eq!(cell(&top[0], "calls"), "6");
    assert!(cell(&top[0], "fingerprint").starts_with("SELECT * FROM orders WHERE id ="));
    assert_eq!(rows(&first, "query", 1).len(), 6, "six slow executions");
    assert_eq!(first["fields"]["version"], env!("CARGO_PKG_VERSION"));

    // More traffic while the page stays open: it must show it by itself.
    let more = Wave {
        acquires: 4,
        leases: 1,
        puts: 2,
        executions: 3,
        spans: 2,
    };
    traffic(&server.channel, &more, 100).await;
    page.go_on();
    let live = tokio::task::block_in_place(|| page.next("live"));
    let limits = rows(&live, "ratelimit", 0);
    assert_eq!(cell(&limits[0], "allowed"), "5");
    assert_eq!(cell(&limits[0], "denied"), "7");
    assert_eq!(cell(&rows(&live, "ratelimit", 1)[0], "denied"), "7");
    let pools = rows(&live, "leases", 0);
    assert_eq!(cell(&pools[0], "in use").trim(), "3");
    assert_eq!(cell(&pools[0], "holders"), "worker-1 ×3");
    assert_eq!(cell(&rows(&live, "cache", 0)[0], "entries"), "6");
    assert_eq!(cell(&rows(&live, "spans", 0)[0], "calls"), "6");
    assert_eq!(cell(&rows(&live, "query", 0)[0], "calls"), "9");
    // Rates need two snapshots: by now the charts have lines.
    let charts = live["charts"].as_array().unwrap();
    assert!(charts.iter().any(|c| c == "denied"), "{charts:?}");

    let done = tokio::task::block_in_place(|| page.next("done"));
    assert_eq!(done["errors"], serde_json::json!([]), "errors on the page");
    assert_eq!(
        done["dialogs"],
        serde_json::json!([]),
        "no prompt without a token"
    );
    page.wait();
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    eprintln!("status page screenshot: {}", screenshot.display());
    server.stop().await.unwrap();
}
