//! Span ingestion end to end: gantry's Ingest and OTLP Export (gzip too) into
//! one store, per-span rejection, GetTrace order and late spans, eviction
//! bounds, EndpointStats and the spanmetrics series, message limits, and
//! forwarding to a second gantry that is down and then comes back.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gantry::proto::gantry::v1 as pb;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use pb::traces_client::TracesClient;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

use crate::common::{TestServer, assert_status, http_get, metric_value};

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub(crate) fn ts(nanos: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (nanos / 1_000_000_000) as i64,
        nanos: (nanos % 1_000_000_000) as i32,
    }
}

/// A gantry span of `ms` milliseconds starting `offset_ms` after `base`.
pub(crate) fn span(
    trace: u8,
    id: u8,
    parent: Option<u8>,
    name: &str,
    base: u64,
    offset_ms: u64,
    ms: u64,
) -> pb::Span {
    let start = base + offset_ms * 1_000_000;
    pb::Span {
        trace_id: vec![trace; 16].into(),
        span_id: vec![id; 8].into(),
        parent_span_id: parent.map(|p| vec![p; 8].into()).unwrap_or_default(),
        service: "checkout".into(),
        name: name.into(),
        kind: pb::SpanKind::Server as i32,
        start: Some(ts(start)),
        end: Some(ts(start + ms * 1_000_000)),
        status: None,
        attributes: HashMap::from([("http.method".to_string(), "GET".to_string())]),
        ..Default::default()
    }
}

fn ids(trace: &pb::Trace) -> Vec<u8> {
    trace.spans.iter().map(|s| s.span_id[0]).collect()
}

async fn get(client: &mut TracesClient<Channel>, trace: u8) -> Result<pb::Trace, tonic::Status> {
    client
        .get_trace(pb::GetTraceRequest {
            trace_id: vec![trace; 16].into(),
        })
        .await
        .map(|r| r.into_inner())
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn otlp_span(
    trace: u8,
    id: u8,
    parent: Option<u8>,
    name: &str,
    start: u64,
    ms: u64,
    error: bool,
) -> otlp::Span {
    otlp::Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        kind: otlp::span::SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + ms * 1_000_000,
        attributes: vec![
            string_kv("http.route", name),
            KeyValue {
                key: "http.status_code".into(),
                value: Some(AnyValue {
                    value: Some(Value::IntValue(if error { 500 } else { 200 })),
                }),
                ..Default::default()
            },
        ],
        status: Some(otlp::Status {
            code: if error { 2 } else { 1 },
            message: if error { "boom".into() } else { String::new() },
        }),
        ..Default::default()
    }
}

fn export(service: &str, spans: Vec<otlp::Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![otlp::ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

crate::on_every_backend! {
async fn ingest_keeps_valid_spans_rejects_bad_ones_and_get_trace_orders_them(backend: Backend) {
    let server = TestServer::start_on(&backend, |_| {}).await;
    let mut client = TracesClient::new(server.channel.clone());
    let base = now_nanos();

    let mut no_name = span(1, 5, Some(1), "", base, 0, 1);
    no_name.name.clear();
    let mut short_id = span(1, 6, Some(1), "x", base, 0, 1);
    short_id.trace_id = vec![1; 15].into();
    let mut backwards = span(1, 7, Some(1), "x", base, 0, 1);
    backwards.end = Some(ts(base - 1_000));
    let mut zero_span = span(1, 8, Some(1), "x", base, 0, 1);
    zero_span.span_id = vec![0; 8].into();

    let reply = client
        .ingest(pb::IngestRequest {
            spans: vec![
                // A child before its parent, and a sibling that started earlier.
                span(1, 3, Some(2), "db", base, 30, 5),
                no_name,
                span(1, 2, Some(1), "GET /cart", base, 20, 40),
                short_id,
                span(1, 4, Some(1), "GET /price", base, 10, 5),
                backwards,
                zero_span,
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.accepted, reply.rejected), (3, 4));
    assert_eq!(reply.errors.len(), 4);
    for (line, words) in reply.errors.iter().zip([
        ["span 1", "name"],
        ["span 3", "trace_id must be 16 bytes"],
        ["span 5", "Z) is before start ("],
        ["span 6", "span_id must not be all zero"],
    ]) {
        for w in words {
            assert!(line.contains(w), "{w:?} in {line:?}");
        }
    }

    // The root arrives late and joins its trace; the order is parents first, siblings by start.
    client
        .ingest(pb::IngestRequest {
            spans: vec![span(1, 1, None, "GET /checkout", base, 0, 100)],
        })
        .await
        .unwrap();
    let trace = get(&mut client, 1).await.unwrap();
    assert_eq!(ids(&trace), vec![1, 4, 2, 3]);
    let root = &trace.spans[0];
    assert_eq!(root.name, "GET /checkout");
    assert_eq!(root.service, "checkout");
    assert_eq!(root.start, Some(ts(base)));
    assert_eq!(root.end, Some(ts(base + 100_000_000)));
    assert_eq!(
        root.attributes.get("http.method").map(String::as_str),
        Some("GET")
    );
    assert!(root.parent_span_id.is_empty());

    assert_status(
        get(&mut client, 9).await.unwrap_err(),
        Code::NotFound,
        &["trace", "0909"],
    );
    let bad = client
        .get_trace(pb::GetTraceRequest {
            trace_id: vec![1; 4].into(),
        })
        .await
        .unwrap_err();
    assert_status(bad, Code::InvalidArgument, &["trace_id", "16 bytes"]);
    // The id as logs and traceparent show it: 32 hex digits, as text or
    // through JSON (where they arrive base64-decoded, as 24 bytes).
    let hex_id = "01".repeat(16);
    let as_json = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&hex_id)
            .unwrap()
    };
    for sent in [hex_id.clone().into_bytes(), as_json] {
        let trace = client
            .get_trace(pb::GetTraceRequest {
                trace_id: sent.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ids(&trace), vec![1, 4, 2, 3]);
        assert_eq!(&trace.trace_id[..], &[1; 16][..]);
    }

    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "gantry_traces_spans_received_total{protocol=\"gantry\"}"
        ),
        Some(8.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "gantry_traces_spans_rejected_total{protocol=\"gantry\",reason=\"time\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "gantry_traces_stored_spans"),
        Some(4.0)
    );
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn otlp_export_lands_in_the_same_store_with_partial_success_and_gzip(backend: Backend) {
    let server = TestServer::start_on(&backend, |_| {}).await;
    let mut otlp_client =
        TraceServiceClient::new(server.channel.clone()).send_compressed(CompressionEncoding::Gzip);
    let mut client = TracesClient::new(server.channel.clone());
    let start = now_nanos();

    let mut bad = otlp_span(3, 9, None, "bad", start, 1, false);
    bad.span_id = vec![1, 2, 3];
    let reply = otlp_client
        .export(export(
            "payments",
            vec![
                otlp_span(3, 1, None, "POST /pay", start, 20, false),
                bad,
                otlp_span(3, 2, Some(1), "POST /pay", start, 80, true),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    let partial = reply.partial_success.expect("one span was rejected");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial
            .error_message
            .contains("span 1: span_id must be 8 bytes"),
        "{}",
        partial.error_message
    );

    // A clean export has no partial_success at all.
    let clean = otlp_client
        .export(export(
            "payments",
            vec![otlp_span(4, 1, None, "GET /refunds", start, 3, false)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(clean.partial_success, None);

    let trace = get(&mut client, 3).await.unwrap();
    assert_eq!(ids(&trace), vec![1, 2]);
    assert_eq!(trace.spans[0].service, "payments");
    assert_eq!(
        trace.spans[1].status.as_ref().unwrap().code,
        pb::span_status::Code::Error as i32
    );
    assert_eq!(trace.spans[1].status.as_ref().unwrap().message, "boom");
    assert_eq!(
        trace.spans[1]
            .attributes
            .get("http.status_code")
            .map(String::as_str),
        Some("500")
    );

    let stats = client
        .endpoint_stats(pb::EndpointStatsRequest {
            service: "payments".into(),
            window: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stats.window,
        Some(prost_types::Duration {
            seconds: 60,
            nanos: 0
        })
    );
    let rows: Vec<(String, u64, u64)> = stats
        .endpoints
        .iter()
        .map(|e| (e.endpoint.clone(), e.calls, e.errors))
        .collect();
    assert_eq!(
        rows,
        vec![("GET /refunds".into(), 1, 0), ("POST /pay".into(), 2, 1)]
    );

    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "gantry_traces_spans_received_total{protocol=\"otlp\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "gantry_traces_spans_accepted_total{protocol=\"otlp\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "traces_span_metrics_calls_total{service_name=\"payments\",span_name=\"POST /pay\",span_kind=\"SPAN_KIND_SERVER\",status_code=\"STATUS_CODE_ERROR\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "traces_span_metrics_duration_milliseconds_bucket{service_name=\"payments\",span_name=\"POST /pay\",span_kind=\"SPAN_KIND_SERVER\",status_code=\"STATUS_CODE_OK\",le=\"50\"}"
        ),
        Some(1.0),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("span_metrics"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn endpoint_stats_percentiles_windows_and_filters(backend: Backend) {
    let server = TestServer::start_on(&backend, |_| {}).await;
    let mut client = TracesClient::new(server.channel.clone());
    let base = now_nanos();
    // 1..=100 ms on one endpoint (every 10th an error), one client span that does not count.
    let mut spans: Vec<pb::Span> = (1..=100u8)
        .map(|i| {
            let mut s = span(i, 1, None, "GET /search", base, 0, u64::from(i));
            if i % 10 == 0 {
                s.status = Some(pb::SpanStatus {
                    code: pb::span_status::Code::Error as i32,
                    message: "timeout".into(),
                });
            }
            s
        })
        .collect();
    let mut client_span = span(200, 1, None, "SELECT", base, 0, 1);
    client_span.kind = pb::SpanKind::Client as i32;
    spans.push(client_span);
    let mut other = span(201, 1, None, "GET /", base, 0, 1);
    other.service = "web".into();
    spans.push(other);
    client.ingest(pb::IngestRequest { spans }).await.unwrap();

    let stats = |service: &str, window_secs: i64| {
        let mut client = client.clone();
        let service = service.to_string();
        async move {
            client
                .endpoint_stats(pb::EndpointStatsRequest {
                    service,
                    window: Some(prost_types::Duration {
                        seconds: window_secs,
                        nanos: 0,
                    }),
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let all = stats("", 60).await;
    let names: Vec<(&str, &str)> = all
        .endpoints
        .iter()
        .map(|e| (e.service.as_str(), e.endpoint.as_str()))
        .collect();
    assert_eq!(names, vec![("checkout", "GET /search"), ("web", "GET /")]);
    let search = &all.endpoints[0];
    assert_eq!((search.calls, search.errors), (100, 10));
    let ms = |d: &Option<prost_types::Duration>| {
        let d = d.as_ref().unwrap();
        d.seconds as f64 * 1e3 + f64::from(d.nanos) / 1e6
    };
    // Nearest-rank percentiles of 1..=100 ms, within hdrhistogram's 1%.
    for (got, want) in [
        (&search.p50, 50.0),
        (&search.p95, 95.0),
        (&search.p99, 99.0),
        (&search.max, 100.0),
    ] {
        assert!(
            (ms(got) - want).abs() <= want / 100.0,
            "{} vs {want}",
            ms(got)
        );
    }
    // Two minutes round up to five, and the filter keeps one service.
    let five = stats("web", 120).await;
    assert_eq!(
        five.window,
        Some(prost_types::Duration {
            seconds: 300,
            nanos: 0
        })
    );
    assert_eq!(five.endpoints.len(), 1);
    assert_eq!(five.endpoints[0].endpoint, "GET /");
    let hour = stats("checkout", 3000).await;
    assert_eq!(
        hour.window,
        Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0
        })
    );
    assert_eq!(hour.endpoints[0].calls, 100);
    assert!(stats("nobody", 60).await.endpoints.is_empty());
    let negative = client
        .clone()
        .endpoint_stats(pb::EndpointStatsRequest {
            service: String::new(),
            window: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_status(negative, Code::InvalidArgument, &["window"]);
    // Longer than the longest window kept: said, not answered for an hour.
    let day = client
        .clone()
        .endpoint_stats(pb::EndpointStatsRequest {
            service: String::new(),
            window: Some(prost_types::Duration {
                seconds: 86_400,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_status(
        day,
        Code::InvalidArgument,
        &["window", "1day is longer than the longest window kept (1h)"],
    );
    server.stop().await.unwrap();
}
}

// The in-memory table's bounds: embedded only (with Redis, GetTrace also
// finds evicted traces there).
#[tokio::test]
async fn memory_bounds_evict_whole_traces_oldest_first() {
    let server = TestServer::start_with(|c| c.traces.max_spans = 10).await;
    let mut client = TracesClient::new(server.channel.clone());
    let base = now_nanos();
    for trace in 1..=5u8 {
        let spans = (1..=3u8)
            .map(|id| {
                span(
                    trace,
                    id,
                    (id > 1).then_some(1),
                    "op",
                    base,
                    u64::from(id),
                    1,
                )
            })
            .collect();
        client.ingest(pb::IngestRequest { spans }).await.unwrap();
    }
    // 15 spans in, at most 10 kept: traces 1 and 2 went whole, 3..=5 are complete.
    for trace in 1..=2 {
        assert_eq!(
            get(&mut client, trace).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    for trace in 3..=5 {
        assert_eq!(ids(&get(&mut client, trace).await.unwrap()), vec![1, 2, 3]);
    }
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "gantry_traces_stored_spans"),
        Some(9.0)
    );
    assert_eq!(
        metric_value(&metrics, "gantry_traces_evicted_traces_total"),
        Some(2.0)
    );
    server.stop().await.unwrap();
}

crate::on_every_backend! {
async fn batch_and_message_limits_are_enforced_with_the_setting_named(backend: Backend) {
    let server = TestServer::start_on(&backend, |c| {
        c.server.max_message_bytes = 16 * 1024;
        c.traces.max_message_bytes = 256 * 1024;
        c.traces.max_batch = 1_000;
    })
    .await;
    let mut client = TracesClient::new(server.channel.clone());
    let mut otlp_client = TraceServiceClient::new(server.channel.clone());
    let start = now_nanos();

    // ~100 KiB: over the server-wide limit, within the traces one.
    let big: Vec<otlp::Span> = (1..=200u8)
        .map(|i| {
            let mut s = otlp_span(7, i, None, "bulk", start, 1, false);
            s.attributes.push(string_kv("payload", &"x".repeat(500)));
            s
        })
        .collect();
    let reply = otlp_client
        .export(export("bulk", big))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.partial_success, None);
    assert_eq!(get(&mut client, 7).await.unwrap().spans.len(), 200);

    let huge: Vec<otlp::Span> = (1..=200u8)
        .map(|i| {
            let mut s = otlp_span(8, i, None, "bulk", start, 1, false);
            s.attributes.push(string_kv("payload", &"x".repeat(2_000)));
            s
        })
        .collect();
    let too_big = otlp_client.export(export("bulk", huge)).await.unwrap_err();
    assert_status(
        too_big,
        Code::ResourceExhausted,
        &["traces.max_message_bytes"],
    );

    let spans: Vec<pb::Span> = (0..1_001u32)
        .map(|i| {
            span(
                (i % 200) as u8 + 1,
                (i / 200) as u8 + 1,
                None,
                "op",
                start,
                0,
                1,
            )
        })
        .collect();
    let too_many = client
        .ingest(pb::IngestRequest { spans })
        .await
        .unwrap_err();
    assert_status(
        too_many,
        Code::InvalidArgument,
        &["1001 spans", "traces.max_batch (1000)"],
    );

    let mut attrs = span(9, 1, None, "op", start, 0, 1);
    attrs.attributes = (0..200)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let reply = client
        .ingest(pb::IngestRequest { spans: vec![attrs] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.rejected, 1);
    assert!(
        reply.errors[0].contains("200 attributes, more than the 128 allowed"),
        "{:?}",
        reply.errors
    );
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn concurrent_ingestion_loses_nothing_it_acknowledged(backend: Backend) {
    // A queue just one batch deep: concurrent batches are refused rather than queued.
    let server = TestServer::start_on(&backend, |c| {
        c.traces.max_batch = 500;
        c.traces.queue_spans = 500;
    })
    .await;
    let mut tasks = Vec::new();
    for t in 0..16u8 {
        let mut client = TracesClient::new(server.channel.clone());
        tasks.push(tokio::spawn(async move {
            let base = now_nanos();
            let mut acknowledged = 0u64;
            let mut refused = 0u64;
            for round in 0..4u8 {
                let spans = (0..500u32)
                    .map(|i| {
                        let trace = t * 8 + round * 2 + (i % 2) as u8 + 1;
                        let id = (i / 2 % 250) as u8 + 1;
                        let mut s = span(trace, id, None, "op", base, 0, 1);
                        s.span_id = [(i / 2) as u16 as u8, (i / 512) as u8 + 1, 1, 1, 1, 1, 1, 1]
                            .to_vec()
                            .into();
                        s
                    })
                    .collect();
                match client.ingest(pb::IngestRequest { spans }).await {
                    Ok(r) => acknowledged += u64::from(r.into_inner().accepted),
                    Err(status) => {
                        assert_status(
                            status,
                            Code::ResourceExhausted,
                            &["traces.queue_spans", "retry"],
                        );
                        refused += 500;
                    }
                }
            }
            (acknowledged, refused)
        }));
    }
    let (mut acknowledged, mut refused) = (0, 0);
    for task in tasks {
        let (a, r) = task.await.unwrap();
        acknowledged += a;
        refused += r;
    }
    assert_eq!(acknowledged + refused, 16 * 4 * 500);
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    // Every acknowledged span is stored; every refused one is counted as dropped.
    assert_eq!(
        metric_value(&metrics, "gantry_traces_stored_spans"),
        Some(acknowledged as f64)
    );
    let dropped = metric_value(
        &metrics,
        "gantry_traces_spans_dropped_total{reason=\"pipeline_full\"}",
    )
    .unwrap_or(0.0);
    assert_eq!(dropped, refused as f64);
    assert_eq!(
        metric_value(&metrics, "gantry_traces_queue_spans"),
        Some(0.0)
    );
    server.stop().await.unwrap();
}
}

/// Polls GetTrace until the trace has `want` spans.
async fn wait_for_trace(channel: Channel, trace: u8, want: usize) {
    let mut client = TracesClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(t) = get(&mut client, trace).await
            && t.spans.len() == want
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace} never reached {want} spans"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_reaches_a_receiver_that_is_down_at_first_and_drops_beyond_the_queue() {
    // Reserve a port for the receiver, which starts only later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sender = TestServer::start_with(|c| {
        c.traces.forward_endpoint = format!("http://127.0.0.1:{port}");
        c.traces.forward_queue_spans = 5;
        c.traces.forward_batch_spans = 3;
        c.traces.forward_interval = gantry::config::HumanDuration::from_millis(50);
        c.traces.forward_max_backoff = gantry::config::HumanDuration::from_millis(200);
    })
    .await;
    let mut client = TracesClient::new(sender.channel.clone());
    let mut otlp_client = TraceServiceClient::new(sender.channel.clone());
    let base = now_nanos();

    // Three Ingest spans and two OTLP spans fill the forward queue exactly.
    client
        .ingest(pb::IngestRequest {
            spans: (1..=3)
                .map(|id| span(1, id, (id > 1).then_some(1), "op", base, 0, 1))
                .collect(),
        })
        .await
        .unwrap();
    otlp_client
        .export(export(
            "otlp-svc",
            vec![
                otlp_span(2, 1, None, "GET /a", base, 2, false),
                otlp_span(2, 2, Some(1), "GET /b", base, 1, false),
            ],
        ))
        .await
        .unwrap();
    // The receiver is down: retries happen, and a sixth span has no room.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_get(sender.metrics, "/metrics").await;
        if metric_value(&metrics, "gantry_traces_forward_retries_total").unwrap_or(0.0) >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no retries while the receiver is down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = client
        .ingest(pb::IngestRequest {
            spans: vec![span(3, 1, None, "op", base, 0, 1)],
        })
        .await
        .unwrap()
        .into_inner();
    // Ingestion itself is not slowed or refused by a stuck forwarder.
    assert_eq!(reply.accepted, 1);
    let (_, metrics) = http_get(sender.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "gantry_traces_spans_dropped_total{reason=\"forward_queue_full\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "gantry_traces_forward_queue_spans"),
        Some(5.0)
    );

    // The receiver comes up on the reserved port: the queued spans arrive.
    let receiver = TestServer::start_with(|c| {
        c.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    wait_for_trace(receiver.channel.clone(), 1, 3).await;
    wait_for_trace(receiver.channel.clone(), 2, 2).await;
    let mut at_receiver = TracesClient::new(receiver.channel.clone());
    let forwarded = get(&mut at_receiver, 2).await.unwrap();
    // OTLP spans keep their resource's service name on the way through.
    assert_eq!(forwarded.spans[0].service, "otlp-svc");
    assert_eq!(
        get(&mut at_receiver, 1).await.unwrap().spans[0].service,
        "checkout"
    );
    assert_eq!(
        get(&mut at_receiver, 3).await.unwrap_err().code(),
        Code::NotFound
    );
    let (_, metrics) = http_get(sender.metrics, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "gantry_traces_forwarded_spans_total"),
        Some(5.0)
    );
    assert_eq!(
        metric_value(&metrics, "gantry_traces_forward_queue_spans"),
        Some(0.0)
    );

    sender.stop().await.unwrap();
    receiver.stop().await.unwrap();
}

/// [`otel_python`], or None after saying the test is skipped (a failure
/// with GANTRY_REQUIRE_OTEL_SDK set, as in CI).
fn otel_python_or_skip() -> Option<std::path::PathBuf> {
    let python = otel_python();
    if python.is_none() {
        assert!(
            std::env::var_os("GANTRY_REQUIRE_OTEL_SDK").is_none(),
            "GANTRY_REQUIRE_OTEL_SDK is set but no Python with the SDK and its gRPC and HTTP exporters was found"
        );
        eprintln!("SKIPPED: no Python with the OpenTelemetry SDK (run .ci/run)");
    }
    python
}

/// A Python with the OpenTelemetry SDK: GANTRY_OTEL_PYTHON, or the venv .ci/run fills.
fn otel_python() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("GANTRY_OTEL_PYTHON") {
        return Some(path.into());
    }
    let ci = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/venv/bin/python");
    let has_sdk = ci.exists()
        && std::process::Command::new(&ci)
            .args([
                "-c",
                "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc, opentelemetry.exporter.otlp.proto.http",
            ])
            .status()
            .is_ok_and(|s| s.success());
    has_sdk.then_some(ci)
}

/// A gantry behind TLS with `[auth]` on, where `token` names `identity`,
/// which may ingest and read spans; its CA and the CA's file in `dir`.
async fn tls_server_for(
    dir: &std::path::Path,
    identity: &str,
    token: &str,
) -> (TestServer, crate::certs::Ca, std::path::PathBuf) {
    let ca = crate::certs::Ca::new("traces CA");
    let pair = ca.server(dir, "gantry");
    let ca_file = ca.write(dir, "ca.crt");
    let tokens = dir.join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nidentity = \"{identity}\"\nsha256 = \"{}\"\n",
            crate::security::sha256_hex(token)
        ),
    )
    .unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!("[[grant]]\nidentities = [\"{identity}\"]\ntraces = [\"ingest\", \"read\"]\n"),
    )
    .unwrap();
    let server = TestServer::start_with(|c| {
        c.server.tls.cert_file = pair.cert_file.clone();
        c.server.tls.key_file = pair.key_file.clone();
        c.auth.tokens_file = tokens.clone();
        c.auth.policy_file = policy.clone();
    })
    .await;
    (server, ca, ca_file)
}

/// Forwarding to a TLS receiver that wants a token, as to a SaaS backend:
/// the CA from `traces.forward_ca_file`, the token from
/// `traces.forward_headers_file`.
#[tokio::test]
async fn forwarding_reaches_a_tls_receiver_with_the_headers_it_requires() {
    let dir = tempfile::tempdir().unwrap();
    let token = "forwarder-token-3c5d";
    let (receiver, ca, ca_file) = tls_server_for(dir.path(), "forwarder", token).await;
    let headers = dir.path().join("headers");
    std::fs::write(
        &headers,
        format!("# the backend's key\nAuthorization: Bearer {token}\n"),
    )
    .unwrap();
    let sender = TestServer::start_with(|c| {
        c.traces.forward_endpoint = format!("https://localhost:{}", receiver.grpc.port());
        c.traces.forward_ca_file = ca_file.clone();
        c.traces.forward_headers_file = headers.clone();
        c.traces.forward_interval = gantry::config::HumanDuration::from_millis(50);
    })
    .await;
    let base = now_nanos();
    TracesClient::new(sender.channel.clone())
        .ingest(pb::IngestRequest {
            spans: (1..=2)
                .map(|id| span(7, id, (id > 1).then_some(1), "op", base, 0, 1))
                .collect(),
        })
        .await
        .unwrap();

    let channel = crate::security::tls_channel(receiver.grpc, &ca.pem(), None)
        .await
        .unwrap();
    let mut at_receiver = TracesClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = at_receiver
            .get_trace(crate::security::with_token(
                pb::GetTraceRequest {
                    trace_id: vec![7; 16].into(),
                },
                token,
            ))
            .await;
        match found {
            Ok(trace) => {
                assert_eq!(trace.into_inner().spans.len(), 2);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::NotFound, "{e:?}");
                assert!(
                    Instant::now() < deadline,
                    "the forwarded spans never arrived"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let (_, metrics) = http_get(sender.metrics, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "gantry_traces_forwarded_spans_total"),
        Some(2.0)
    );
    sender.stop().await.unwrap();
    receiver.stop().await.unwrap();
}

/// Runs tests/otel/export_spans.py against `endpoint` with `env`; the id of
/// the trace it exported.
async fn export_with_the_sdk(
    python: std::path::PathBuf,
    endpoint: String,
    env: Vec<(&'static str, String)>,
) -> Vec<u8> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otel/export_spans.py");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(endpoint)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let hex = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert_eq!(hex.len(), 32, "{hex:?}");
    (0..16)
        .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap())
        .collect()
}

/// The SDK configured the usual way — OTEL_EXPORTER_OTLP_CERTIFICATE for the
/// CA, OTEL_EXPORTER_OTLP_HEADERS for the token — exports over TLS.
#[tokio::test]
async fn the_python_opentelemetry_sdk_exports_over_tls_with_a_token() {
    let Some(python) = otel_python_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = "sdk-token-77aa";
    let (server, ca, ca_file) = tls_server_for(dir.path(), "py-shop", token).await;
    let trace_id = export_with_the_sdk(
        python,
        format!("localhost:{}", server.grpc.port()),
        vec![
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                ca_file.display().to_string(),
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                format!("authorization=Bearer%20{token}"),
            ),
        ],
    )
    .await;

    let channel = crate::security::tls_channel(server.grpc, &ca.pem(), None)
        .await
        .unwrap();
    let mut client = TracesClient::new(channel);
    // The SDK's export went through the token; spans are there to read back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let trace = loop {
        match client
            .get_trace(crate::security::with_token(
                pb::GetTraceRequest {
                    trace_id: trace_id.clone().into(),
                },
                token,
            ))
            .await
        {
            Ok(trace) => break trace.into_inner(),
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the SDK's spans never arrived: {e:?}"),
        }
    };
    let names: Vec<&str> = trace.spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["GET /orders/{id}", "SELECT orders"]);
    let unauthenticated = client
        .get_trace(pb::GetTraceRequest {
            trace_id: trace_id.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);
    server.stop().await.unwrap();
}

crate::on_every_backend! {
async fn the_python_opentelemetry_sdk_exports_to_gantry(backend: Backend) {
    let Some(python) = otel_python_or_skip() else {
        return;
    };
    let server = TestServer::start_on(&backend, |_| {}).await;
    let trace_id = export_with_the_sdk(python, server.grpc.to_string(), vec![]).await;

    let mut client = TracesClient::new(server.channel.clone());
    let trace = client
        .get_trace(pb::GetTraceRequest {
            trace_id: trace_id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = trace.spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["GET /orders/{id}", "SELECT orders"]);
    let root = &trace.spans[0];
    assert_eq!(root.service, "py-shop");
    assert_eq!(root.kind, pb::SpanKind::Server as i32);
    // The resource, events and links come back as the SDK sent them.
    assert_eq!(
        root.resource_attributes
            .get("telemetry.sdk.language")
            .map(String::as_str),
        Some("python")
    );
    assert_eq!(
        root.resource_attributes.get("service.name").map(String::as_str),
        Some("py-shop")
    );
    let event = &root.events[0];
    assert_eq!(event.name, "cache miss");
    assert_eq!(
        event.attributes.get("cache.key").map(String::as_str),
        Some("order:42")
    );
    let secs = |t: &Option<prost_types::Timestamp>| {
        let t = t.as_ref().unwrap();
        (t.seconds, t.nanos)
    };
    assert!(secs(&event.time) >= secs(&root.start) && secs(&event.time) <= secs(&root.end));
    let db = &trace.spans[1];
    assert_eq!(db.links.len(), 1);
    assert_eq!(db.links[0].trace_id, root.trace_id);
    assert_eq!(db.links[0].span_id, root.span_id);
    assert_eq!(
        db.links[0].attributes.get("link.reason").map(String::as_str),
        Some("follows")
    );
    assert_eq!(
        root.attributes.get("http.status_code").map(String::as_str),
        Some("200")
    );
    assert_eq!(trace.spans[1].parent_span_id, root.span_id);

    let stats = client
        .endpoint_stats(pb::EndpointStatsRequest {
            service: "py-shop".into(),
            window: None,
        })
        .await
        .unwrap()
        .into_inner();
    let rows: Vec<(&str, u64, u64)> = stats
        .endpoints
        .iter()
        .map(|e| (e.endpoint.as_str(), e.calls, e.errors))
        .collect();
    // The client span is not an endpoint; the failed server span is an error.
    assert_eq!(
        rows,
        vec![("GET /orders/{id}", 1, 0), ("POST /orders", 1, 1)]
    );
    // On /metrics every kind counts, labelled as the spanmetrics connector does.
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    for (name, kind, status) in [
        ("SELECT orders", "SPAN_KIND_CLIENT", "STATUS_CODE_UNSET"),
        ("GET /orders/{id}", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET"),
        ("POST /orders", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR"),
    ] {
        let series = format!(
            "traces_span_metrics_calls_total{{service_name=\"py-shop\",span_name=\"{name}\",span_kind=\"{kind}\",status_code=\"{status}\"}}"
        );
        assert_eq!(metric_value(&metrics, &series), Some(1.0), "{series}");
    }
    server.stop().await.unwrap();
}
}

crate::on_every_backend! {
async fn the_python_sdks_http_exporter_posts_to_otlp_http(backend: Backend) {
    let Some(python) = otel_python_or_skip() else {
        return;
    };
    let server = TestServer::start_on(&backend, |_| {}).await;
    let url = format!("http://{}/v1/traces", server.otlp_http.unwrap());
    let trace_id = export_with_the_sdk(python, url, vec![]).await;
    let trace = TracesClient::new(server.channel.clone())
        .get_trace(pb::GetTraceRequest {
            trace_id: trace_id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = trace.spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["GET /orders/{id}", "SELECT orders"]);
    assert_eq!(trace.spans[0].service, "py-shop");
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "gantry_traces_spans_received_total{protocol=\"otlp_http\"}"
        ),
        Some(3.0),
        "protobuf, gzipped, counted as OTLP/HTTP"
    );
    server.stop().await.unwrap();
}
}

/// curl against OTLP/HTTP: `args` after the URL; status and body. Run off
/// the test's runtime thread, which also serves the in-process gantry.
pub(crate) async fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let mut command = std::process::Command::new("curl");
    command
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            url,
        ])
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("curl runs (apt-get install curl)");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// An OTLP JSON export of one server span (ids in hex, as the JSON mapping has them).
pub(crate) fn otlp_json(trace_hex: &str, name: &str) -> String {
    let now = now_nanos();
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"curl-shop"}}}}]}},
        "scopeSpans":[{{"spans":[{{"traceId":"{trace_hex}","spanId":"00f067aa0ba902b7","name":"{name}","kind":2,
        "startTimeUnixNano":"{}","endTimeUnixNano":"{}",
        "attributes":[{{"key":"http.route","value":{{"stringValue":"/pay"}}}}]}}]}}]}}]}}"#,
        now - 5_000_000,
        now
    )
}

#[tokio::test]
async fn otlp_http_takes_json_and_gzip_from_curl_and_refuses_clearly() {
    let server = TestServer::start().await;
    let url = format!("http://{}/v1/traces", server.otlp_http.unwrap());
    let json = ["-H", "Content-Type: application/json"];
    let trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736";

    // JSON, as a browser or a serverless runtime sends it.
    let body = otlp_json(trace_hex, "POST /pay");
    let (code, answer) = curl(&url, &[&json[..], &["--data-binary", &body]].concat()).await;
    assert_eq!((code, answer.as_str()), (200, "{}"), "{answer}");
    // The same gzipped, under another trace.
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("export.json.gz");
    {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder
            .write_all(otlp_json(&"ab".repeat(16), "POST /refund").as_bytes())
            .unwrap();
        std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
    }
    let at_gz = format!("@{}", gz.display());
    let (code, _) = curl(
        &url,
        &[
            &json[..],
            &["-H", "Content-Encoding: gzip", "--data-binary", &at_gz],
        ]
        .concat(),
    )
    .await;
    assert_eq!(code, 200);

    let mut client = TracesClient::new(server.channel.clone());
    for (id, name) in [
        (trace_hex.to_string(), "POST /pay"),
        ("ab".repeat(16), "POST /refund"),
    ] {
        let trace = client
            .get_trace(pb::GetTraceRequest {
                trace_id: id.into_bytes().into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(trace.spans.len(), 1);
        let span = &trace.spans[0];
        assert_eq!(
            (span.name.as_str(), span.service.as_str()),
            (name, "curl-shop")
        );
        assert_eq!(span.kind, pb::SpanKind::Server as i32);
        assert_eq!(
            span.attributes.get("http.route").map(String::as_str),
            Some("/pay")
        );
    }

    // A span gantry refuses: 200 with partialSuccess, as the Collector answers.
    let bad = otlp_json(&"00".repeat(16), "zero trace id");
    let (code, answer) = curl(&url, &[&json[..], &["--data-binary", &bad]].concat()).await;
    assert_eq!(code, 200);
    assert!(answer.contains("\"partialSuccess\""), "{answer}");
    assert!(
        answer.contains("\"rejectedSpans\":\"1\"") || answer.contains("\"rejectedSpans\":1"),
        "{answer}"
    );

    // What is not an export says so, in the request's encoding.
    let (code, answer) = curl(&url, &[&json[..], &["--data-binary", "{not json"]].concat()).await;
    assert_eq!(code, 400);
    assert!(
        answer.contains("\"message\":\"the body is not an OTLP ExportTraceServiceRequest (JSON)"),
        "{answer}"
    );
    let (code, answer) = curl(
        &url,
        &["-H", "Content-Type: text/plain", "--data-binary", "x"],
    )
    .await;
    assert_eq!(code, 415);
    assert!(
        answer.contains("application/x-protobuf or application/json"),
        "{answer}"
    );
    let (code, _) = curl(&url, &[]).await;
    assert_eq!(code, 405, "GET");
    let (code, _) = curl(
        &url.replace("/v1/traces", "/v1/logs"),
        &[&json[..], &["--data-binary", "{}"]].concat(),
    )
    .await;
    assert_eq!(code, 404);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn otlp_http_bounds_bodies_by_traces_max_message_bytes() {
    let server = TestServer::start_with(|c| c.traces.max_message_bytes = 4096).await;
    let url = format!("http://{}/v1/traces", server.otlp_http.unwrap());
    let big = "x".repeat(8192);
    let (code, answer) = curl(
        &url,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &big,
        ],
    )
    .await;
    assert_eq!(code, 413);
    assert!(
        answer.contains("traces.max_message_bytes (4096 bytes)"),
        "{answer}"
    );
    // A small gzip that unzips past the bound is refused too (no zip bombs).
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("bomb.gz");
    {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![b' '; 1 << 20]).unwrap();
        std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
    }
    let at_gz = format!("@{}", gz.display());
    let (code, answer) = curl(
        &url,
        &[
            "-H",
            "Content-Type: application/json",
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            &at_gz,
        ],
    )
    .await;
    assert_eq!(code, 413);
    assert!(answer.contains("unzipped body"), "{answer}");
    server.stop().await.unwrap();
}

/// The OTLP/HTTP port has the gRPC port's TLS and tokens.
#[tokio::test]
async fn otlp_http_over_tls_wants_a_token_that_may_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let token = "http-exporter-9f1e";
    let (server, _ca, ca_file) = tls_server_for(dir.path(), "browser-app", token).await;
    let url = format!(
        "https://localhost:{}/v1/traces",
        server.otlp_http.unwrap().port()
    );
    let ca = ca_file.display().to_string();
    let body = otlp_json(&"cd".repeat(16), "GET /");
    let base = [
        "--cacert",
        ca.as_str(),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body.as_str(),
    ];
    let (code, answer) = curl(&url, &base).await;
    assert_eq!(code, 401, "{answer}");
    let bearer = format!("Authorization: Bearer {token}");
    let (code, answer) = curl(&url, &[&base[..], &["-H", &bearer]].concat()).await;
    assert_eq!((code, answer.as_str()), (200, "{}"));
    let (code, _) = curl(
        &url,
        &[&base[..], &["-H", "Authorization: Bearer wrong"]].concat(),
    )
    .await;
    assert_eq!(code, 401);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn persisted_traces_survive_a_restart_until_their_retention_passes() {
    let dir = tempfile::tempdir().unwrap();
    let persist = |retention: Duration| {
        move |c: &mut gantry::config::Config| {
            c.traces.persist = true;
            c.traces.retention = gantry::config::HumanDuration(retention);
        }
    };
    let base = now_nanos();
    let server = TestServer::start_in(dir.path(), persist(Duration::from_secs(3600))).await;
    let mut client = TracesClient::new(server.channel.clone());
    client
        .ingest(pb::IngestRequest {
            spans: vec![
                span(1, 1, None, "root", base, 0, 5),
                span(1, 2, Some(1), "child", base, 1, 1),
            ],
        })
        .await
        .unwrap();
    server.stop().await.unwrap();

    // Memory is empty after the restart; the store answers.
    let server = TestServer::start_in(dir.path(), persist(Duration::from_secs(3600))).await;
    let mut client = TracesClient::new(server.channel.clone());
    assert_eq!(ids(&get(&mut client, 1).await.unwrap()), vec![1, 2]);
    // A late span after the restart joins the persisted ones.
    client
        .ingest(pb::IngestRequest {
            spans: vec![span(1, 3, Some(2), "late", base, 2, 1)],
        })
        .await
        .unwrap();
    assert_eq!(ids(&get(&mut client, 1).await.unwrap()), vec![1, 2, 3]);
    server.stop().await.unwrap();

    // With a one-second retention the sweeper removes them.
    let server = TestServer::start_in(dir.path(), persist(Duration::from_secs(1))).await;
    let mut client = TracesClient::new(server.channel.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&mut client, 1).await.is_ok() {
        assert!(Instant::now() < deadline, "spans outlived their retention");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "gantry_traces_retention_removed_spans_total"),
        Some(3.0)
    );
    server.stop().await.unwrap();
}

crate::on_every_backend! {
async fn endpoints_beyond_the_bound_share_one_overflow_series(backend: Backend) {
    let server = TestServer::start_on(&backend, |c| c.traces.max_endpoints = 2).await;
    let mut client = TracesClient::new(server.channel.clone());
    let base = now_nanos();
    let spans = ["a", "b", "c", "d", "c"]
        .iter()
        .enumerate()
        .map(|(i, name)| span(i as u8 + 1, 1, None, name, base, 0, 1))
        .collect();
    client.ingest(pb::IngestRequest { spans }).await.unwrap();
    let rows = client
        .endpoint_stats(pb::EndpointStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .endpoints;
    let seen: Vec<(&str, &str, u64)> = rows
        .iter()
        .map(|e| (e.service.as_str(), e.endpoint.as_str(), e.calls))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("", "otel.metric.overflow", 3),
            ("checkout", "a", 1),
            ("checkout", "b", 1)
        ]
    );
    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "traces_span_metrics_calls_total{otel_metric_overflow=\"true\",status_code=\"STATUS_CODE_UNSET\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric_value(&metrics, "gantry_traces_endpoint_overflow_spans_total"),
        Some(3.0)
    );
    assert_eq!(metric_value(&metrics, "gantry_traces_endpoints"), Some(2.0));
    // Series per endpoint stay bounded: no series for c or d.
    assert!(!metrics.contains("span_name=\"c\""));
    server.stop().await.unwrap();
}
}
