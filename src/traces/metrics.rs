//! Span-ingestion series on /metrics: gantry's own counters (`gantry_traces_*`)
//! and the per-endpoint RED series in the shape of the Collector's spanmetrics
//! connector (`traces_span_metrics_*`), read from the endpoint table at scrape time.

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::endpoints::{EndpointTable, SPANMETRICS_BUCKETS_MS};
use crate::telemetry::metrics::latency_histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub protocol: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Which door a span came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Gantry,
    Otlp,
    /// OTLP over HTTP (`traces.otlp_http_listen`).
    OtlpHttp,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Gantry => "gantry",
            Protocol::Otlp => "otlp",
            Protocol::OtlpHttp => "otlp_http",
        }
    }
}

#[derive(Clone, Debug)]
pub struct TracesMetrics {
    pub received: Family<ProtocolLabel, Counter>,
    pub accepted: Family<ProtocolLabel, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    /// Spans given up: `pipeline_full` (the caller was told RESOURCE_EXHAUSTED),
    /// `forward_queue_full`, `forward_failed`.
    pub dropped: Family<ReasonLabel, Counter>,
    pub duplicates: Counter,
    pub queue_spans: Gauge,
    pub apply_seconds: Histogram,
    pub stored_traces: Gauge,
    pub stored_spans: Gauge,
    pub stored_bytes: Gauge,
    pub evicted_traces: Counter,
    pub evicted_spans: Counter,
    pub endpoints: Gauge,
    pub overflow_spans: Counter,
    pub persisted_spans: Counter,
    pub persist_failures: Counter,
    pub retention_removed: Counter,
    pub forwarded_spans: Counter,
    pub forward_retries: Counter,
    pub forward_queue_spans: Gauge,
}

impl TracesMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            received: Family::default(),
            accepted: Family::default(),
            rejected: Family::default(),
            dropped: Family::default(),
            duplicates: Counter::default(),
            queue_spans: Gauge::default(),
            apply_seconds: latency_histogram(),
            stored_traces: Gauge::default(),
            stored_spans: Gauge::default(),
            stored_bytes: Gauge::default(),
            evicted_traces: Counter::default(),
            evicted_spans: Counter::default(),
            endpoints: Gauge::default(),
            overflow_spans: Counter::default(),
            persisted_spans: Counter::default(),
            persist_failures: Counter::default(),
            retention_removed: Counter::default(),
            forwarded_spans: Counter::default(),
            forward_retries: Counter::default(),
            forward_queue_spans: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("gantry_traces");
        r.register(
            "spans_received",
            "Spans in Ingest and OTLP Export requests",
            m.received.clone(),
        );
        r.register(
            "spans_accepted",
            "Spans that passed the checks and were stored",
            m.accepted.clone(),
        );
        r.register(
            "spans_rejected",
            "Invalid spans refused one by one, by reason",
            m.rejected.clone(),
        );
        r.register(
            "spans_dropped",
            "Spans given up: pipeline_full (caller told RESOURCE_EXHAUSTED), forward_queue_full, forward_failed",
            m.dropped.clone(),
        );
        r.register(
            "duplicate_spans",
            "Spans received again (same trace and span id) and kept once",
            m.duplicates.clone(),
        );
        r.register(
            "queue_spans",
            "Spans accepted but not yet stored",
            m.queue_spans.clone(),
        );
        r.register(
            "apply_seconds",
            "Time to store one group of queued batches",
            m.apply_seconds.clone(),
        );
        r.register(
            "stored_traces",
            "Traces held in memory",
            m.stored_traces.clone(),
        );
        r.register(
            "stored_spans",
            "Spans held in memory",
            m.stored_spans.clone(),
        );
        r.register(
            "stored_bytes",
            "Estimated bytes of the spans held in memory",
            m.stored_bytes.clone(),
        );
        r.register(
            "evicted_traces",
            "Whole traces evicted from memory to stay within traces.max_spans and max_bytes",
            m.evicted_traces.clone(),
        );
        r.register(
            "evicted_spans",
            "Spans of the evicted traces",
            m.evicted_spans.clone(),
        );
        r.register(
            "endpoints",
            "(service, endpoint) pairs with their own statistics",
            m.endpoints.clone(),
        );
        r.register(
            "endpoint_overflow_spans",
            "Spans counted in the overflow series because traces.max_endpoints was reached",
            m.overflow_spans.clone(),
        );
        r.register(
            "persisted_spans",
            "Spans written to the store (traces.persist)",
            m.persisted_spans.clone(),
        );
        r.register(
            "persist_failures",
            "Groups of spans the store refused (they stay in memory only)",
            m.persist_failures.clone(),
        );
        r.register(
            "retention_removed_spans",
            "Persisted spans removed after traces.retention",
            m.retention_removed.clone(),
        );
        r.register(
            "forwarded_spans",
            "Spans the forward endpoint accepted",
            m.forwarded_spans.clone(),
        );
        r.register(
            "forward_retries",
            "Forwarded batches sent again after UNAVAILABLE, RESOURCE_EXHAUSTED or a connection error",
            m.forward_retries.clone(),
        );
        r.register(
            "forward_queue_spans",
            "Spans waiting to be forwarded",
            m.forward_queue_spans.clone(),
        );
        m
    }

    pub fn drop_spans(&self, reason: &'static str, count: usize) {
        self.dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(count as u64);
    }
}

/// `traces_span_metrics_calls_total` and `traces_span_metrics_duration_milliseconds`,
/// labelled as the spanmetrics connector labels them.
#[derive(Debug)]
pub struct SpanMetricsCollector(pub Arc<Mutex<EndpointTable>>);

impl Collector for SpanMetricsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = self.0.lock().cumulative();
        if rows.is_empty() {
            return Ok(());
        }
        // The overflow series carries only its marker, as the connector's does.
        let labels = |r: &super::endpoints::CumulativeRow| -> Vec<(&'static str, String)> {
            if r.overflow {
                vec![
                    ("otel_metric_overflow", "true".to_string()),
                    ("status_code", r.status.label().to_string()),
                ]
            } else {
                vec![
                    ("service_name", r.service.to_string()),
                    ("span_name", r.endpoint.to_string()),
                    ("span_kind", r.kind.label().to_string()),
                    ("status_code", r.status.label().to_string()),
                ]
            }
        };
        let mut calls = encoder.encode_descriptor(
            "traces_span_metrics_calls",
            "Spans of every kind, by service, span name, kind and status (spanmetrics connector shape)",
            None,
            MetricType::Counter,
        )?;
        for row in &rows {
            ConstCounter::new(row.totals.calls).encode(calls.encode_family(&labels(row))?)?;
        }
        let mut durations = encoder.encode_descriptor(
            "traces_span_metrics_duration_milliseconds",
            "Latency of spans of every kind in milliseconds (spanmetrics connector shape)",
            None,
            MetricType::Histogram,
        )?;
        for row in &rows {
            let buckets: Vec<(f64, u64)> = SPANMETRICS_BUCKETS_MS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(row.totals.buckets)
                .collect();
            durations
                .encode_family(&labels(row))?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    row.totals.sum_ms,
                    row.totals.calls,
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}
