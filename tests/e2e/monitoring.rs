//! The Grafana dashboard and the alerting rules (helm/gantry/monitoring)
//! against the metrics gantry really exports: real servers (sled with
//! traffic in every capability, one with TLS, one on Redis when
//! redis-server is installed) are scraped, and every metric a PromQL
//! expression names must be among the names they served. A few series only
//! appear after rare events (a failed reload, dropped spans, a full bucket
//! table, a failing store): those are listed below with the event, and
//! checked against the names gantry registers in its source instead. When
//! promtool is installed (.ci/run builds it from the Go module proxy),
//! `promtool check rules` must accept the rules file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use gantry::config::{EnvoyDescriptorConfig, EnvoyDomainConfig, EnvoyEntryConfig};
use gantry::proto::gantry::v1 as pb;

use crate::backends::Backend;
use crate::certs::Ca;
use crate::common::{TestServer, http_get};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Series the rules read that other exporters serve.
const FROM_ELSEWHERE: &[&str] = &[
    "up", // Prometheus's own, per scrape target
    "kubelet_volume_stats_available_bytes",
    "kubelet_volume_stats_capacity_bytes",
];

/// Series that appear only after an event a short test does not cause.
const AFTER_RARE_EVENTS: &[(&str, &str)] = &[
    (
        "gantry_traces_spans_dropped_total",
        "spans shed or a forward failing",
    ),
    ("gantry_config_reloads_total", "a configuration reload"),
    (
        "gantry_ratelimit_table_full_total",
        "ratelimit.max_buckets reached",
    ),
    (
        "gantry_ratelimit_store_failures_total",
        "Redis failing a decision",
    ),
];

fn monitoring(file: &str) -> PathBuf {
    Path::new(ROOT).join("helm/gantry/monitoring").join(file)
}

/// Every `expr:` of the rules file, with the alert it belongs to (a
/// one-line value or a `|` block).
fn rule_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring("alerts.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut alert = String::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_string();
        }
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        let expr = if value == "|" {
            let indent = line.len() - trimmed.len();
            lines[i + 1..]
                .iter()
                .take_while(|l| l.len() - l.trim_start().len() > indent && !l.trim().is_empty())
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            value.to_string()
        };
        found.push((format!("alert {alert}"), expr));
    }
    let alerts = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(found.len(), alerts, "one expression per alert");
    found
}

/// Every PromQL query of the dashboard: panel targets and variables.
fn dashboard_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring("dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard.json parses");
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            found.push((
                format!("panel {title:?}"),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            found.push((format!("variable {}", variable["name"]), query.to_string()));
        }
    }
    assert!(found.len() > 30, "{} queries", found.len());
    found
}

/// The metric names an expression selects: identifiers followed by a label
/// matcher, or the first argument of `label_values(…)`.
fn metric_names_in(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b':'))
            {
                i += 1;
            }
            let word = &expr[start..i];
            let before = expr[..start].trim_end();
            if bytes.get(i) == Some(&b'{') || before.ends_with("label_values(") {
                names.push(word.to_string());
            }
        } else if c == b'"' {
            // Skip label values: they may hold words followed by braces.
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += 1 + usize::from(bytes[i] == b'\\');
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    names
}

/// The series names an exposition serves: samples, and the families its
/// `# TYPE` lines declare (a histogram as its `_bucket`, `_sum`, `_count`).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut parts = declared.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            names.insert(name.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Prefixes of gantry's sub-registries: their metrics are registered by the
/// rest of the name.
const REGISTRY_PREFIXES: &[&str] = &["gantry_traces_", "gantry_query_"];

/// Whether gantry's source registers a metric of this name (its own, or
/// the rest after a sub-registry's prefix, as a string literal).
fn registered_in_source(name: &str) -> bool {
    // Read once for every name asked about.
    static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    fn walk(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let source = SOURCE.get_or_init(|| {
        let mut source = String::new();
        walk(&Path::new(ROOT).join("src"), &mut source);
        source
    });
    let base = name.strip_suffix("_total").unwrap_or(name);
    std::iter::once(base)
        .chain(
            REGISTRY_PREFIXES
                .iter()
                .filter_map(|p| base.strip_prefix(p)),
        )
        .any(|registered| source.contains(&format!("\"{registered}\"")))
}

/// A sled server with a limit, a lease pool and an Envoy domain, and one
/// call or more in every capability, so that labelled series exist.
async fn busy_server() -> TestServer {
    let server = TestServer::start_with(|c| {
        c.ratelimit.limits = vec![crate::ratelimit::limit(
            "api",
            1,
            Duration::from_secs(3600),
            1,
        )];
        c.ratelimit.envoy = vec![EnvoyDomainConfig {
            domain: "edge".into(),
            descriptors: vec![EnvoyDescriptorConfig {
                entries: vec![EnvoyEntryConfig {
                    key: "remote_address".into(),
                    value: None,
                }],
                limit: Some("api".into()),
                ..Default::default()
            }],
        }];
        c.leases.pools = vec![crate::leases::pool("db", 1)];
        c.query.slow_threshold = gantry::config::HumanDuration::from_millis(1);
    })
    .await;
    let channel = server.channel.clone();

    let mut limits = pb::rate_limiter_client::RateLimiterClient::new(channel.clone());
    for max_wait in [
        None,
        None,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 50_000_000,
        }),
    ] {
        let request = pb::AcquireRequest {
            limit: "api".into(),
            key: "k".into(),
            tokens: 1,
            max_wait,
            ..Default::default()
        };
        limits.acquire(request).await.unwrap();
    }
    let mut envoy = RateLimitServiceClient::new(channel.clone());
    envoy
        .should_rate_limit(RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![rate_limit_descriptor::Entry {
                    key: "remote_address".into(),
                    value: "10.0.0.1".into(),
                }],
                ..Default::default()
            }],
            hits_addend: 0,
        })
        .await
        .unwrap();

    let mut cache = pb::cache_client::CacheClient::new(channel.clone());
    let put = pb::PutRequest {
        namespace: "carts".into(),
        key: "k".into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    };
    cache.put(put).await.unwrap();
    for key in ["k", "missing"] {
        let get = pb::GetRequest {
            namespace: "carts".into(),
            key: key.into(),
        };
        cache.get(get).await.unwrap();
    }

    let mut leases = pb::leases_client::LeasesClient::new(channel.clone());
    let lease = pb::AcquireLeaseRequest {
        pool: "db".into(),
        holder: "pod-a".into(),
        count: 1,
        ..Default::default()
    };
    leases.acquire(lease).await.unwrap();

    let mut query = pb::query_analyzer_client::QueryAnalyzerClient::new(channel.clone());
    let analyze = pb::AnalyzeRequest {
        sql: "SELECT * FROM orders".into(),
        dialect: "postgres".into(),
    };
    query.analyze(analyze).await.unwrap();
    let execution = pb::QueryExecution {
        sql: "SELECT * FROM orders WHERE id = 1".into(),
        duration: Some(prost_types::Duration {
            seconds: 0,
            nanos: 5_000_000,
        }),
        service: "shop".into(),
        ..Default::default()
    };
    let record = pb::RecordRequest {
        executions: vec![execution],
    };
    query.record(record).await.unwrap();

    let mut traces = pb::traces_client::TracesClient::new(channel);
    let base = crate::traces::now_nanos();
    let mut failed = crate::traces::span(9, 1, None, "GET /cart", base, 0, 3);
    failed.status = Some(pb::SpanStatus {
        code: pb::span_status::Code::Error as i32,
        message: "boom".into(),
    });
    let ingest = pb::IngestRequest {
        spans: vec![failed],
    };
    traces.ingest(ingest).await.unwrap();
    server
}

async fn scrape(server: &TestServer) -> BTreeSet<String> {
    let (status, text) = http_get(server.metrics, "/metrics").await;
    assert_eq!(status, 200);
    exported_names(&text)
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_read_is_one_gantry_exports() {
    let busy = busy_server().await;
    // Spans are counted as their batch is stored, a moment after Ingest answers.
    let mut exported = BTreeSet::new();
    for _ in 0..100 {
        exported = scrape(&busy).await;
        if exported.contains("traces_span_metrics_calls_total") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    busy.stop().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let pair = Ca::new("monitoring CA").server(dir.path(), "gantry");
    let tls = TestServer::start_with(|c| {
        c.server.tls.cert_file = pair.cert_file.clone();
        c.server.tls.key_file = pair.key_file.clone();
    })
    .await;
    exported.extend(scrape(&tls).await);
    tls.stop().await.unwrap();

    let redis = Backend::redis();
    if let Some(backend) = &redis {
        let server = TestServer::start_on(backend, |_| {}).await;
        exported.extend(scrape(&server).await);
        server.stop().await.unwrap();
    }

    let mut missing = Vec::new();
    let expressions: Vec<_> = rule_expressions()
        .into_iter()
        .chain(dashboard_expressions())
        .collect();
    for (place, expr) in &expressions {
        let names = metric_names_in(expr);
        assert!(!names.is_empty(), "{place}: no metric found in {expr}");
        for name in names {
            let rare = AFTER_RARE_EVENTS.iter().any(|(n, _)| *n == name);
            let redis_only = redis.is_none() && name.starts_with("gantry_store_redis_");
            let known = exported.contains(&name)
                || FROM_ELSEWHERE.contains(&name.as_str())
                || ((rare || redis_only) && registered_in_source(&name));
            if !known {
                missing.push(format!("{place}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics gantry does not export:\n{}\n\nexported:\n{exported:?}",
        missing.join("\n")
    );
}

#[test]
fn the_name_scanner_finds_selected_metrics_only() {
    assert_eq!(
        metric_names_in(
            r#"sum by (le) (rate(a_seconds_bucket{job=~"x{1}"}[5m])) / b{c="d"} and label_values(g_up, job)"#
        ),
        ["a_seconds_bucket", "b", "g_up"]
    );
    let names = exported_names(
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\n# TYPE c_total counter\nc_total 2\n",
    );
    assert!(names.contains("h_sum") && names.contains("c_total") && names.contains("h_bucket"));
}

fn promtool() -> Option<PathBuf> {
    let candidates = [Path::new(ROOT).join(".ci/bin/promtool")];
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    candidates.into_iter().find(|p| p.is_file()).or(on_path)
}

#[test]
fn promtool_accepts_the_rules() {
    let Some(promtool) = promtool() else {
        assert!(
            std::env::var_os("GANTRY_REQUIRE_PROMTOOL").is_none(),
            "GANTRY_REQUIRE_PROMTOOL is set but promtool is not installed"
        );
        eprintln!("SKIPPED: promtool is not installed (run .ci/run)");
        return;
    };
    let out = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(monitoring("alerts.yaml"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules:\n{text}");
    let rules = rule_expressions().len();
    assert!(
        text.contains(&format!("SUCCESS: {rules} rules found")),
        "{text}"
    );
}
