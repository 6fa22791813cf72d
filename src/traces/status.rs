//! Span ingestion's part of the status page: per-endpoint calls, errors and
//! latency over the page's window (EndpointStats), and this replica's
//! ingestion counters and queue.

use std::sync::Arc;

use serde_json::json;

use super::metrics::{Protocol, ProtocolLabel, ReasonLabel, TracesMetrics};
use super::service::TracesService;
use crate::grpc::duration_to_pb;
use crate::proto::gantry::v1 as pb;
use crate::proto::gantry::v1::traces_server::Traces as _;
use crate::status::{self, Ask, Section, json as pj};

/// The reasons spans are given up for (TracesMetrics::dropped).
const DROP_REASONS: [&str; 3] = ["pipeline_full", "forward_queue_full", "forward_failed"];

/// The section, over the service and the ingestion counters.
pub fn source(service: Arc<TracesService>, metrics: TracesMetrics) -> Arc<dyn status::Source> {
    Arc::new(move |ask: Ask| -> Section {
        let service = service.clone();
        let counters = counters(&metrics);
        Box::pin(async move {
            let stats = service
                .endpoint_stats(status::request(pb::EndpointStatsRequest {
                    service: String::new(),
                    window: Some(duration_to_pb(ask.window)),
                }))
                .await;
            json!({
                "endpoints": pj::answer("gantry.v1.EndpointStatsResponse", stats),
                "counters": counters,
            })
        })
    })
}

/// This replica's ingestion counters and queue.
fn counters(m: &TracesMetrics) -> serde_json::Value {
    let by_protocol = |family: &prometheus_client::metrics::family::Family<
        ProtocolLabel,
        prometheus_client::metrics::counter::Counter,
    >| {
        [Protocol::Gantry, Protocol::Otlp, Protocol::OtlpHttp]
            .into_iter()
            .map(|p| {
                family
                    .get(&ProtocolLabel {
                        protocol: p.label(),
                    })
                    .map_or(0, |c| c.get())
            })
            .sum::<u64>()
    };
    let dropped: u64 = DROP_REASONS
        .into_iter()
        .map(|reason| {
            m.dropped
                .get(&ReasonLabel { reason })
                .map_or(0, |c| c.get())
        })
        .sum();
    json!({
        "received_spans": by_protocol(&m.received),
        "accepted_spans": by_protocol(&m.accepted),
        "dropped_spans": dropped,
        "queue_spans": m.queue_spans.get(),
        "stored_traces": m.stored_traces.get(),
        "stored_spans": m.stored_spans.get(),
    })
}
