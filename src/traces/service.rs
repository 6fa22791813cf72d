//! The two doors into span ingestion, both over gRPC: gantry's
//! `gantry.v1.Traces` and OTLP's `TraceService/Export`. Each converts and
//! checks spans one by one, then submits the valid ones to the pipeline.

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::TraceService,
};
use tonic::{Request, Response, Status};

use super::Traces;
use super::convert::{self, Converted, from_gantry, from_otlp, otlp_span_count, to_gantry};
use super::endpoints::Window;
use super::forward::ForwardItem;
use super::metrics::{Protocol, ProtocolLabel, RejectLabels};
use crate::error::ApiError;
use crate::grpc::{duration_from_pb, duration_to_pb};
use crate::proto::gantry::v1 as pb;
use crate::store::fleet::FleetSnapshots;

/// At most this many rejection lines go back to the caller.
const MAX_ERROR_LINES: usize = 100;

pub struct TracesService {
    traces: Traces,
    /// Other replicas' endpoint totals (`storage.backend = "redis"`).
    fleet: Option<FleetSnapshots>,
}

impl TracesService {
    pub fn new(traces: Traces) -> Self {
        Self {
            traces,
            fleet: None,
        }
    }

    /// EndpointStats answers for the whole fleet.
    pub fn with_fleet(mut self, fleet: FleetSnapshots) -> Self {
        self.fleet = Some(fleet);
        self
    }
}

/// Counts what a request brought and what was refused.
fn count(traces: &Traces, protocol: Protocol, received: usize, converted: &Converted) {
    let m = traces.metrics();
    let label = protocol.label();
    m.received
        .get_or_create(&ProtocolLabel { protocol: label })
        .inc_by(received as u64);
    for (_, e) in &converted.rejected {
        m.rejected
            .get_or_create(&RejectLabels {
                protocol: label,
                reason: e.reason(),
            })
            .inc();
    }
}

fn accepted(traces: &Traces, protocol: Protocol, stored: usize) {
    traces
        .metrics()
        .accepted
        .get_or_create(&ProtocolLabel {
            protocol: protocol.label(),
        })
        .inc_by(stored as u64);
}

#[tonic::async_trait]
impl pb::traces_server::Traces for TracesService {
    async fn ingest(
        &self,
        request: Request<pb::IngestRequest>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        let spans = request.into_inner().spans;
        let received = spans.len();
        self.traces.check_batch(received).map_err(ApiError::from)?;
        let span = tracing::debug_span!(
            "traces.ingest",
            spans = received,
            rejected = tracing::field::Empty,
            stored = tracing::field::Empty
        );
        let converted = from_gantry(spans, self.traces.limits());
        count(&self.traces, Protocol::Gantry, received, &converted);
        span.record("rejected", converted.rejected.len());
        let errors = converted.error_lines(MAX_ERROR_LINES);
        let rejected = converted.rejected.len();
        let valid = converted.spans.len();
        let stored = tracing::Instrument::instrument(
            self.traces.submit(converted.spans, None),
            span.clone(),
        )
        .await
        .map_err(ApiError::from)?;
        span.record("stored", stored);
        accepted(&self.traces, Protocol::Gantry, valid);
        Ok(Response::new(pb::IngestResponse {
            accepted: valid as u32,
            rejected: rejected as u32,
            errors,
        }))
    }

    async fn get_trace(
        &self,
        request: Request<pb::GetTraceRequest>,
    ) -> Result<Response<pb::Trace>, Status> {
        let sent = request.into_inner().trace_id;
        let trace_id = bytes::Bytes::from(super::span::trace_id_as_sent(&sent).into_owned());
        tracing::debug!(trace_id = %super::span::hex(&trace_id), "traces.get_trace");
        let spans = if self.traces.shared() {
            self.traces.get_anywhere(&trace_id).await
        } else if self.traces.persists() {
            let traces = self.traces.clone();
            let id = trace_id.clone();
            tokio::task::spawn_blocking(move || traces.get(&id))
                .await
                .map_err(|e| ApiError::Internal(format!("trace reader panicked: {e}")))?
        } else {
            self.traces.get(&trace_id)
        }
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::Trace {
            trace_id,
            spans: spans.iter().map(to_gantry).collect(),
        }))
    }

    async fn endpoint_stats(
        &self,
        request: Request<pb::EndpointStatsRequest>,
    ) -> Result<Response<pb::EndpointStatsResponse>, Status> {
        let r = request.into_inner();
        let asked = duration_from_pb("window", r.window.as_ref())?;
        let longest = Window::OneHour.length();
        if asked > longest {
            // Answering for the last hour instead would look like an answer
            // for the window asked.
            return Err(ApiError::invalid(
                "window",
                format!(
                    "{} is longer than the longest window kept ({}); windows are 1m, 5m and 1h, shorter ones round up",
                    humantime::format_duration(asked),
                    humantime::format_duration(longest)
                ),
            )
            .into());
        }
        let window = Window::round_up(asked);
        let service = (!r.service.is_empty()).then_some(r.service.as_str());
        let rows = match &self.fleet {
            Some(fleet) => {
                let others = fleet.others().await.map_err(ApiError::from)?;
                self.traces.fleet_endpoint_stats(&others, window, service)
            }
            None => self.traces.endpoint_stats(window, service),
        };
        tracing::debug!(window = ?window.length(), service = %r.service, endpoints = rows.len(), "traces.endpoint_stats");
        Ok(Response::new(pb::EndpointStatsResponse {
            window: Some(duration_to_pb(window.length())),
            endpoints: rows
                .into_iter()
                .map(|row| pb::EndpointStats {
                    service: row.service.to_string(),
                    endpoint: row.endpoint.into(),
                    calls: row.summary.calls,
                    errors: row.summary.errors,
                    p50: Some(duration_to_pb(row.summary.p50)),
                    p95: Some(duration_to_pb(row.summary.p95)),
                    p99: Some(duration_to_pb(row.summary.p99)),
                    max: Some(duration_to_pb(row.summary.max)),
                })
                .collect(),
        }))
    }
}

/// OTLP's trace receiver, into the same pipeline as Ingest.
#[derive(Clone)]
pub struct OtlpTraceService {
    traces: Traces,
}

impl OtlpTraceService {
    pub fn new(traces: Traces) -> Self {
        Self { traces }
    }
}

impl OtlpTraceService {
    /// One OTLP export, whichever transport brought it (gRPC, or HTTP with
    /// `protocol` = `Protocol::OtlpHttp`): converted and checked span by
    /// span, the valid ones stored (and forwarded), the rest reported in
    /// `partial_success`.
    pub async fn export_spans(
        &self,
        request: ExportTraceServiceRequest,
        protocol: Protocol,
    ) -> Result<ExportTraceServiceResponse, ApiError> {
        let resource_spans = request.resource_spans;
        let received = otlp_span_count(&resource_spans);
        self.traces.check_batch(received)?;
        let span = tracing::debug_span!(
            "traces.otlp_export",
            protocol = protocol.label(),
            spans = received,
            rejected = tracing::field::Empty,
            stored = tracing::field::Empty
        );
        // Forwarding sends the export as it came, minus the rejected spans.
        let mut original = self.traces.forwarding().then(|| resource_spans.clone());
        let converted = from_otlp(resource_spans, self.traces.limits());
        count(&self.traces, protocol, received, &converted);
        span.record("rejected", converted.rejected.len());
        if let Some(original) = original.as_mut() {
            let rejected: Vec<usize> = converted.rejected.iter().map(|(i, _)| *i).collect();
            convert::retain_valid(original, &rejected);
        }
        let partial_success = (!converted.rejected.is_empty()).then(|| ExportTracePartialSuccess {
            rejected_spans: converted.rejected.len() as i64,
            error_message: converted.error_lines(MAX_ERROR_LINES).join("; "),
        });
        let valid = converted.spans.len();
        let stored = tracing::Instrument::instrument(
            self.traces
                .submit(converted.spans, original.map(ForwardItem::Otlp)),
            span.clone(),
        )
        .await?;
        span.record("stored", stored);
        accepted(&self.traces, protocol, valid);
        Ok(ExportTraceServiceResponse { partial_success })
    }
}

#[tonic::async_trait]
impl TraceService for OtlpTraceService {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.export_spans(request.into_inner(), Protocol::Otlp)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }
}
