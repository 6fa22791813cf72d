//! Span-ingestion hot paths in process: one server span's aggregation into
//! its endpoint's windows, storing a span in the trace table (at its bound,
//! so every new trace evicts one), and converting an OTLP request of 512
//! spans with 10 attributes each (per span). Run: `cargo bench --bench traces`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gantry::traces::attributes::Attributes;
use gantry::traces::convert::from_otlp;
use gantry::traces::endpoints::EndpointTable;
use gantry::traces::span::{Span, SpanKind, SpanLimits, StatusCode};
use gantry::traces::table::TraceTable;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;

fn kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn span(n: u64) -> Span {
    let mut trace_id = [1u8; 16];
    trace_id[..8].copy_from_slice(&(n / 4 + 1).to_le_bytes());
    Span {
        trace_id,
        span_id: (n + 1).to_le_bytes(),
        parent_span_id: None,
        service: Arc::from("checkout"),
        name: format!("GET /items/{}", n % 20),
        kind: SpanKind::Server,
        start_unix_nanos: 1_000_000,
        end_unix_nanos: 3_000_000,
        status: StatusCode::Ok,
        status_message: String::new(),
        attributes: Attributes::from_pairs(
            (0..10).map(|a| (format!("attr.{a}"), format!("value-{a}"))),
        ),
        resource: Arc::default(),
        events: Vec::new(),
        links: Vec::new(),
    }
}

fn otlp_request(spans: usize) -> Vec<otlp::ResourceSpans> {
    let spans = (0..spans as u64)
        .map(|i| otlp::Span {
            trace_id: [(i % 251) as u8 + 1; 16].to_vec(),
            span_id: (i + 1).to_le_bytes().to_vec(),
            name: format!("GET /items/{}", i % 20),
            kind: 2,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000_000,
            attributes: (0..10)
                .map(|a| kv(&format!("attr.{a}"), format!("value-{a}")))
                .collect(),
            ..Default::default()
        })
        .collect();
    vec![otlp::ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv("service.name", "bench".into())],
            ..Default::default()
        }),
        scope_spans: vec![otlp::ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }]
}

fn benches(c: &mut Criterion) {
    let service: Arc<str> = Arc::from("checkout");
    let endpoints_names: Vec<String> = (0..20).map(|i| format!("GET /items/{i}")).collect();
    let mut endpoints = EndpointTable::new(1_000);
    let mut now = 1_000_000_000_000u64;
    let mut i = 0usize;
    c.bench_function("traces_endpoint_record_one_span", |b| {
        b.iter(|| {
            i = (i + 1) % endpoints_names.len();
            now += 1_000;
            endpoints.record(
                now,
                &service,
                &endpoints_names[i],
                gantry::traces::endpoints::SpanSample {
                    kind: SpanKind::Server,
                    status: StatusCode::Ok,
                    duration_nanos: black_box(2_345_678),
                },
            );
        })
    });

    let mut table = TraceTable::new(100_000, usize::MAX);
    let mut n = 0u64;
    for _ in 0..100_000 {
        table.insert(span(n), |_| {});
        n += 1;
    }
    c.bench_function("traces_table_insert_at_bound", |b| {
        b.iter_batched(
            || {
                n += 1;
                span(n)
            },
            |s| black_box(table.insert(s, |_| {})),
            BatchSize::SmallInput,
        )
    });

    let mut group = c.benchmark_group("traces_convert");
    group.throughput(Throughput::Elements(512));
    let limits = SpanLimits::default();
    group.bench_function("from_otlp_512_spans_10_attributes", |b| {
        b.iter_batched(
            || otlp_request(512),
            |request| black_box(from_otlp(request, &limits)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(traces, benches);
criterion_main!(traces);
