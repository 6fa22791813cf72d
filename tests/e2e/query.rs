//! Query analysis end to end: Analyze (fingerprints, normalized text, kind,
//! tables, findings, limits), Record with per-execution rejection, TopQueries
//! arithmetic per service and fleet-wide, SlowQueries, N+1 hints, eviction and
//! persistence across a restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gantry::config::HumanDuration;
use gantry::proto::gantry::v1 as pb;
use pb::query_analyzer_client::QueryAnalyzerClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{TestServer, assert_status, http_get, metric_value};

async fn analyze(
    client: &mut QueryAnalyzerClient<Channel>,
    sql: &str,
    dialect: &str,
) -> pb::AnalyzeResponse {
    client
        .analyze(pb::AnalyzeRequest {
            sql: sql.into(),
            dialect: dialect.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn exec(sql: &str, ms: u64, service: &str) -> pb::QueryExecution {
    pb::QueryExecution {
        sql: sql.into(),
        dialect: "postgres".into(),
        duration: Some(prost_types::Duration {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }),
        rows: 3,
        service: service.into(),
        ..Default::default()
    }
}

fn secs(d: &Option<prost_types::Duration>) -> f64 {
    let d = d.as_ref().unwrap();
    d.seconds as f64 + f64::from(d.nanos) / 1e9
}

async fn top(
    client: &mut QueryAnalyzerClient<Channel>,
    order: pb::QueryOrder,
    service: &str,
) -> Vec<pb::QueryStats> {
    client
        .top_queries(pb::TopQueriesRequest {
            order_by: order as i32,
            limit: 0,
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .queries
}

/// A text analyzed before is answered from memory (on the h2 transport,
/// straight from the request bytes): exactly the answer of a fresh analysis
/// on a server that remembers nothing, errors included; the metrics count
/// both, and which calls were answered from memory.
#[tokio::test]
async fn a_repeated_analysis_answers_exactly_as_the_first() {
    let remembering = TestServer::start().await;
    let fresh = TestServer::start_with(|c| {
        c.server.direct_calls = false;
        c.query.analysis_memo_bytes = 0;
    })
    .await;
    let mut a = QueryAnalyzerClient::new(remembering.channel.clone());
    let mut b = QueryAnalyzerClient::new(fresh.channel.clone());
    let texts = [
        (
            "SELECT * FROM users WHERE lower(email) = 'a@b.c' LIMIT 10 OFFSET 50000",
            "postgres",
        ),
        ("SELEC broken", ""),
        (
            "SELECT id FROM t WHERE id = 1 FOR NO KEY UPDATE",
            "postgres",
        ),
        ("DELETE FROM `sessions`", "mysql"),
    ];
    for (sql, dialect) in texts {
        let first = analyze(&mut a, sql, dialect).await;
        for _ in 0..3 {
            assert_eq!(analyze(&mut a, sql, dialect).await, first, "{sql}");
        }
        for _ in 0..2 {
            assert_eq!(analyze(&mut b, sql, dialect).await, first, "{sql}");
        }
    }
    // Invalid requests are refused the same way, remembered text or not.
    let bad = pb::AnalyzeRequest {
        sql: "SELECT 1".into(),
        dialect: "oracle".into(),
    };
    let x = a.analyze(bad.clone()).await.unwrap_err();
    let y = b.analyze(bad).await.unwrap_err();
    assert_eq!((x.code(), x.message()), (y.code(), y.message()));
    let (_, text) = crate::common::http_get(remembering.metrics, "/metrics").await;
    assert_eq!(
        crate::common::metric_value(
            &text,
            "gantry_query_analyzed_total{dialect=\"postgres\",parsed=\"true\"}"
        ),
        Some(8.0),
        "{text}"
    );
    // Four texts, each repeated three times after its first analysis.
    let remembered = "gantry_query_analyses_remembered_total";
    assert_eq!(
        crate::common::metric_value(&text, remembered),
        Some(12.0),
        "{text}"
    );
    let (_, text) = crate::common::http_get(fresh.metrics, "/metrics").await;
    assert_eq!(
        crate::common::metric_value(&text, remembered),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        crate::common::metric_value(
            &text,
            "gantry_query_analyzed_total{dialect=\"postgres\",parsed=\"true\"}"
        ),
        Some(4.0),
        "{text}"
    );
    remembering.stop().await.unwrap();
    fresh.stop().await.unwrap();
}

crate::on_every_backend! {
async fn analyze_fingerprints_normalizes_and_finds_anti_patterns(backend: Backend) {
    let server = TestServer::start_on(&backend, |_| {}).await;
    let mut client = QueryAnalyzerClient::new(server.channel.clone());

    let a = analyze(
        &mut client,
        "SELECT * FROM users WHERE email = 'bob@example.com' AND id IN (1, 2, 3)",
        "postgres",
    )
    .await;
    let b = analyze(
        &mut client,
        "select *\n from USERS -- who\n where email = $1 and id in ($2)",
        "postgres",
    )
    .await;
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_eq!(a.fingerprint.len(), 16);
    assert_eq!(
        a.normalized,
        "SELECT * FROM users WHERE email = $1 AND id IN ($2, $3, $4)"
    );
    assert_eq!(a.statement_kind, "SELECT");
    assert_eq!(a.tables, vec!["users"]);
    let rules: Vec<&str> = a.findings.iter().map(|f| f.rule_id.as_str()).collect();
    assert_eq!(rules, vec!["select_star"]);
    assert_eq!(a.findings[0].severity, pb::Severity::Warning as i32);
    assert!(a.findings[0].message.contains("list the columns"));

    let other_table = analyze(
        &mut client,
        "SELECT * FROM orders WHERE email = 'x' AND id IN (1)",
        "postgres",
    )
    .await;
    assert_ne!(other_table.fingerprint, a.fingerprint);

    let mysql = analyze(&mut client, "DELETE FROM `sessions`", "MySQL").await;
    assert_eq!(mysql.statement_kind, "DELETE");
    assert_eq!(mysql.findings[0].rule_id, "delete_without_where");
    assert_eq!(mysql.findings[0].severity, pb::Severity::Critical as i32);
    assert_eq!(mysql.normalized, "DELETE FROM `sessions`");

    // Text that does not parse still gets a fingerprint and a parse_error finding.
    let broken = analyze(&mut client, "SELEC name FROM users WHERE id = 42", "").await;
    assert_eq!(broken.fingerprint.len(), 16);
    assert_eq!(broken.normalized, "SELEC name FROM users WHERE id = ?");
    assert_eq!(broken.findings[0].rule_id, "parse_error");
    let empty = analyze(&mut client, "", "sqlite").await;
    assert_eq!(empty.fingerprint.len(), 16);

    let bad_dialect = client
        .analyze(pb::AnalyzeRequest {
            sql: "SELECT 1".into(),
            dialect: "oracle".into(),
        })
        .await
        .unwrap_err();
    assert_status(
        bad_dialect,
        Code::InvalidArgument,
        &["dialect", "oracle", "postgres, mysql, sqlite or generic"],
    );
    let huge = client
        .analyze(pb::AnalyzeRequest {
            sql: format!("SELECT {} FROM t", "a, ".repeat(30_000)),
            dialect: String::new(),
        })
        .await
        .unwrap_err();
    assert_status(huge, Code::InvalidArgument, &["sql", "query.max_sql_bytes"]);
    let deep = analyze(
        &mut client,
        &format!("SELECT {}1{}", "(".repeat(20_000), ")".repeat(20_000)),
        "postgres",
    )
    .await;
    assert_eq!(deep.findings[0].rule_id, "parse_error");

    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "gantry_query_findings_total{rule=\"select_star\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "gantry_query_analyzed_total{dialect=\"generic\",parsed=\"false\"}"
        ),
        Some(1.0)
    );
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn record_top_and_slow_queries_with_per_execution_rejection(backend: Backend) {
    let server =
        TestServer::start_on(&backend, |c| c.query.slow_threshold = HumanDuration::from_millis(100)).await;
    let mut client = QueryAnalyzerClient::new(server.channel.clone());
    let q1 = "SELECT name FROM users WHERE id = 7";
    let q2 = "UPDATE carts SET total = 10 WHERE id = 3";
    let mut bad_fp = exec("", 1, "x");
    bad_fp.fingerprint = "not-hex".into();
    let mut bad_trace = exec(q1, 1, "x");
    bad_trace.trace_id = "abc".into();
    let mut negative = exec(q1, 1, "x");
    negative.duration = Some(prost_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    let mut bad_dialect = exec(q1, 1, "x");
    bad_dialect.dialect = "db2".into();
    let reply = client
        .record(pb::RecordRequest {
            executions: vec![
                exec(q1, 10, "api"),
                exec("SELECT name FROM users WHERE id = 99", 30, "api"),
                exec(q1, 250, "worker"),
                bad_fp,
                exec("", 1, "x"),
                bad_trace,
                negative,
                bad_dialect,
                exec(q2, 5, "api"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.accepted, reply.rejected), (4, 5));
    for (line, words) in reply.errors.iter().zip([
        ["execution 3", "fingerprint"],
        ["execution 4", "either sql or fingerprint"],
        ["execution 5", "trace_id"],
        ["execution 6", "execution 6: duration: must not be negative"],
        ["execution 7", "dialect"],
    ]) {
        for w in words {
            assert!(line.contains(w), "{w:?} in {line:?}");
        }
    }

    // Fleet-wide: q1 merges api (10, 30 ms) and worker (250 ms).
    let fleet = top(&mut client, pb::QueryOrder::TotalTime, "").await;
    assert_eq!(fleet.len(), 2);
    let users = &fleet[0];
    let durations = [0.010, 0.030, 0.250];
    let mean = durations.iter().sum::<f64>() / 3.0;
    let stddev = (durations.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / 3.0).sqrt();
    assert_eq!(users.calls, 3);
    assert!((secs(&users.total) - 0.290).abs() < 1e-9);
    assert!((secs(&users.mean) - mean).abs() < 1e-6);
    assert!((secs(&users.stddev) - stddev).abs() < 1e-6);
    assert!((secs(&users.min) - 0.010).abs() < 1e-9);
    assert!((secs(&users.max) - 0.250).abs() < 1e-9);
    assert!((secs(&users.p99) - 0.250).abs() <= 0.0025);
    assert_eq!(users.rows, 9);
    assert_eq!(users.service, "");
    // The sample is the normalized text: no literal of the caller's survives.
    assert_eq!(users.sample, "SELECT name FROM users WHERE id = $1");
    assert!(users.batching.is_none());

    // Per service, and by calls.
    let api = top(&mut client, pb::QueryOrder::Calls, "api").await;
    let calls: Vec<(u64, &str)> = api.iter().map(|q| (q.calls, q.service.as_str())).collect();
    assert_eq!(calls, vec![(2, "api"), (1, "api")]);

    // Only the 250 ms execution is over the 100 ms threshold.
    let slow = client
        .slow_queries(pb::SlowQueriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .queries;
    assert_eq!(slow.len(), 1);
    assert_eq!(slow[0].service, "worker");
    assert_eq!(slow[0].text, "SELECT name FROM users WHERE id = $1");
    assert_eq!(slow[0].fingerprint, users.fingerprint);
    let future = SystemTime::now() + Duration::from_secs(3600);
    let none = client
        .slow_queries(pb::SlowQueriesRequest {
            since: Some(prost_types::Timestamp::from(future)),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .queries;
    assert!(none.is_empty());

    // A fingerprint alone (no text) counts too.
    client
        .record(pb::RecordRequest {
            executions: vec![pb::QueryExecution {
                fingerprint: users.fingerprint.to_uppercase(),
                duration: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1_000_000,
                }),
                service: "api".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    assert_eq!(
        top(&mut client, pb::QueryOrder::Calls, "").await[0].calls,
        4
    );

    let too_many = client
        .record(pb::RecordRequest {
            executions: vec![exec(q1, 1, "x"); 1001],
        })
        .await
        .unwrap_err();
    assert_status(
        too_many,
        Code::InvalidArgument,
        &["1001 executions", "query.max_batch (1000)"],
    );
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "gantry_query_executions_total"),
        Some(5.0)
    );
    assert_eq!(
        metric_value(&metrics, "gantry_query_rejected_executions_total"),
        Some(5.0)
    );
    assert_eq!(
        metric_value(&metrics, "gantry_query_slow_queries_total"),
        Some(1.0)
    );
    server.stop().await.unwrap();
}
}

// "Newest first" means each execution's own time: a batch recorded late
// (a service flushing its buffer after a reconnect) does not push newer
// executions out of `limit`.
crate::on_every_backend! {
async fn slow_queries_are_newest_first_by_their_own_time(backend: Backend) {
    let server =
        TestServer::start_on(&backend, |c| c.query.slow_threshold = HumanDuration::from_millis(100)).await;
    let mut client = QueryAnalyzerClient::new(server.channel.clone());
    let now = SystemTime::now();
    let at = |seconds_ago: u64, service: &str| pb::QueryExecution {
        time: Some(prost_types::Timestamp::from(
            now - Duration::from_secs(seconds_ago),
        )),
        ..exec("SELECT 1", 500, service)
    };
    // Arrives in the order 10 s ago, 1 s ago, then a late batch from 5 and 3 s ago.
    for batch in [
        vec![at(10, "a")],
        vec![at(1, "b")],
        vec![at(5, "c"), at(3, "d")],
    ] {
        client
            .record(pb::RecordRequest { executions: batch })
            .await
            .unwrap();
    }
    let slow = client
        .slow_queries(pb::SlowQueriesRequest {
            since: None,
            limit: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .queries;
    let services: Vec<&str> = slow.iter().map(|q| q.service.as_str()).collect();
    assert_eq!(services, vec!["b", "d"]);
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn n_plus_one_in_a_trace_becomes_a_batching_hint(backend: Backend) {
    let server = TestServer::start_on(&backend, |_| {}).await;
    let mut client = QueryAnalyzerClient::new(server.channel.clone());
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let executions = (0..7)
        .map(|i| {
            let mut e = exec(
                &format!("SELECT * FROM items WHERE order_id = {i}"),
                2,
                "shop",
            );
            e.trace_id = trace.into();
            e
        })
        .chain([exec("SELECT id FROM orders WHERE user_id = 1", 3, "shop")])
        .collect();
    client
        .record(pb::RecordRequest { executions })
        .await
        .unwrap();
    let stats = top(&mut client, pb::QueryOrder::Calls, "shop").await;
    let items = &stats[0];
    assert_eq!(items.calls, 7);
    let hint = items.batching.as_ref().expect("a batching hint");
    assert_eq!((hint.max_per_trace, hint.occurrences), (7, 1));
    assert!(hint.suggestion.contains("IN list"));
    assert!(stats[1].batching.is_none());
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "gantry_query_nplus1_detections_total"),
        Some(1.0)
    );
    server.stop().await.unwrap();
}
}

#[tokio::test]
async fn statistics_are_bounded_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let adjust = |c: &mut gantry::config::Config| {
        c.query.max_fingerprints = 3;
        c.query.slow_threshold = HumanDuration::from_millis(50);
        c.query.keep_raw_samples = true;
    };
    let server = TestServer::start_in(dir.path(), adjust).await;
    let mut client = QueryAnalyzerClient::new(server.channel.clone());
    let mut executions = Vec::new();
    for (table, calls) in [("a", 5), ("b", 1), ("c", 3)] {
        for _ in 0..calls {
            executions.push(exec(
                &format!("SELECT x FROM {table} WHERE id = 1"),
                60,
                "svc",
            ));
        }
    }
    client
        .record(pb::RecordRequest { executions })
        .await
        .unwrap();
    client
        .record(pb::RecordRequest {
            executions: vec![exec("SELECT x FROM d WHERE id = 1", 1, "svc")],
        })
        .await
        .unwrap();
    let before = top(&mut client, pb::QueryOrder::Calls, "").await;
    let samples: Vec<&str> = before.iter().map(|q| q.sample.as_str()).collect();
    // "b" (one call) made room for "d"; raw samples were asked for.
    assert_eq!(
        samples,
        vec![
            "SELECT x FROM a WHERE id = 1",
            "SELECT x FROM c WHERE id = 1",
            "SELECT x FROM d WHERE id = 1"
        ]
    );
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "gantry_query_evicted_fingerprints_total"),
        Some(1.0)
    );
    server.stop().await.unwrap();

    let server = TestServer::start_in(dir.path(), adjust).await;
    let mut client = QueryAnalyzerClient::new(server.channel.clone());
    let after = top(&mut client, pb::QueryOrder::Calls, "").await;
    assert_eq!(after, before);
    let slow = client
        .slow_queries(pb::SlowQueriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .queries;
    assert_eq!(slow.len(), 9);
    assert_eq!(slow[0].text, "SELECT x FROM c WHERE id = 1");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let when = slow[0].time.unwrap().seconds;
    assert!((now - 60..=now).contains(&when), "{when} vs {now}");
    server.stop().await.unwrap();
}
