//! Span ingestion as the server runs it: the ingestion worker and, with
//! `traces.forward_endpoint`, the forwarder; `gantry.v1.Traces` and OTLP's
//! `TraceService` served with their own message limit; persisted spans swept
//! past their retention. At stop, spans accepted before the drain are
//! stored, then the forwarder makes its last attempt.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    self as otlp_server, TraceServiceServer,
};
use tokio_util::sync::CancellationToken;

use super::Traces;
use super::forward::{ForwardSettings, Forwarder};
use super::metrics::{SpanMetricsCollector, TracesMetrics};
use super::service::{OtlpTraceService, TracesService};
use crate::config::TracesConfig;
use crate::proto::gantry::v1::traces_server::TracesServer;
use crate::routes::{Served, grpc_service};
use crate::runtime::{Capability, Context, StartError};
use crate::store::fleet::FleetSnapshots;

/// OTLP's trace receiver, served beside gantry's own Traces service.
pub const OTLP_TRACES: &str = otlp_server::SERVICE_NAME;

pub struct Runtime;

impl Runtime {
    pub async fn start(
        config: &TracesConfig,
        ctx: &mut Context<'_>,
    ) -> Result<Capability, StartError> {
        let metrics = TracesMetrics::register(ctx.registry);
        let counters = metrics.clone();
        // The forwarder has its own stop: it must outlive the drain.
        let forward_stop = CancellationToken::new();
        let mut forward_task = None;
        let forwarder = match ForwardSettings::from_config(config) {
            Some(settings) => {
                let (forwarder, task) =
                    Forwarder::start(settings, metrics.clone(), forward_stop.clone())
                        .map_err(StartError::Forward)?;
                forward_task = Some(tokio::spawn(task));
                Some(forwarder)
            }
            None => None,
        };
        let mut traces = Traces::start(config, &ctx.store, metrics, forwarder)
            .map_err(StartError::TracesWorker)?;
        let mut service = TracesService::new(traces.clone());
        if let Some(redis) = ctx.redis.clone() {
            traces = traces.with_redis(super::shared::RedisSpans::new(
                redis.clone(),
                config.retention.get(),
            ));
            service = TracesService::new(traces.clone());
            // EndpointStats for the fleet: publish this replica's totals
            // every few seconds; any replica merges everyone's.
            let fleet = FleetSnapshots::new(redis, "ep");
            let source = traces.clone();
            fleet.publish_every(ctx.background, "endpoint statistics to Redis", move || {
                source.endpoint_snapshot()
            });
            service = service.with_fleet(fleet);
        }
        ctx.registry
            .register_collector(Box::new(SpanMetricsCollector(traces.endpoint_table())));

        if config.persist {
            // Once a minute, or more often for a short retention.
            let retention = config.retention.get();
            let every = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
            let sweeping = traces.clone();
            ctx.background.every_off_the_workers(
                every,
                "removed persisted spans past their retention",
                move || sweeping.sweep_persisted(retention, 10_000),
            );
        }

        // OTLP batches are large: span ingestion has its own message limit.
        let limit = usize::try_from(config.max_message_bytes).unwrap_or(usize::MAX);
        let otlp = OtlpTraceService::new(traces.clone());
        let service = Arc::new(service);
        let status = super::status::source(service.clone(), counters);
        let served = Served::default()
            .service(grpc_service!(
                TracesServer::from_arc(service),
                limit,
                "traces.max_message_bytes"
            ))
            .service(grpc_service!(
                TraceServiceServer::new(otlp.clone()),
                limit,
                "traces.max_message_bytes"
            ));
        let mut capability = Capability::new(
            "traces",
            served,
            Box::pin(async move {
                traces.drain().await;
                forward_stop.cancel();
                if let Some(task) = forward_task {
                    let _ = task.await;
                }
            }),
        )
        .needs_store(config.persist)
        .needs_redis(ctx.redis.is_some())
        .status(status);
        capability.otlp_export = Some(otlp);
        Ok(capability)
    }
}
