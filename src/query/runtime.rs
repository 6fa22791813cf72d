//! Query analysis as the server runs it: statistics and the slow log
//! restored from the store, `gantry.v1.QueryAnalyzer` served, statistics
//! saved periodically and at stop.

use super::QueryEngine;
use super::metrics::QueryMetrics;
use std::sync::Arc;

use super::service::{DirectAnalyze, QueryService};
use crate::config::QueryConfig;
use crate::proto::gantry::v1::query_analyzer_server::{self, QueryAnalyzerServer};
use crate::routes::{Served, grpc_service};
use crate::runtime::{Capability, Context, StartError, blocking};
use crate::store::fleet::FleetSnapshots;

pub struct Runtime;

impl Runtime {
    pub async fn start(
        config: &QueryConfig,
        ctx: &mut Context<'_>,
    ) -> Result<Capability, StartError> {
        let metrics = QueryMetrics::register(ctx.registry);
        let query = QueryEngine::new(config, ctx.store.clone(), metrics);
        // Unreadable statistics are logged, not fatal: they rebuild
        // themselves from new executions.
        let engine = query.clone();
        match blocking("restoring query statistics", move || engine.restore()).await {
            Ok(0) => {}
            Ok(restored) => tracing::info!(restored, "query statistics restored"),
            Err(e) => {
                tracing::error!(error = %e, "cannot read saved query statistics; starting empty")
            }
        }

        let saver = query.clone();
        ctx.background.save_every(
            config.persist_interval.get(),
            "query statistics",
            move || save(saver.clone()),
        );

        let mut service = QueryService::new(query.clone(), config);
        if let Some(redis) = ctx.redis.clone() {
            // The fleet view: publish this replica's statistics every few
            // seconds; TopQueries and SlowQueries merge everyone's.
            let fleet = FleetSnapshots::new(redis, "q");
            let engine = query.clone();
            fleet.publish_every(ctx.background, "query statistics to Redis", move || {
                engine.snapshot()
            });
            service = service.with_fleet(fleet);
        }
        let limit = ctx.max_message_bytes();
        let service = Arc::new(service);
        let status = super::status::source(service.clone());
        let mut served = Served::default().service(grpc_service!(
            QueryAnalyzerServer::from_arc(service),
            limit,
            "server.max_message_bytes"
        ));
        if ctx.direct_calls() {
            // A text analyzed before is answered from memory in the
            // connection's task; a new one is parsed in a task of its own.
            served = served.direct_or_task(
                query_analyzer_server::SERVICE_NAME,
                "Analyze",
                Arc::new(DirectAnalyze::new(query.clone(), config, limit)),
            );
        }
        Ok(Capability::new(
            "query",
            served,
            Box::pin(async move {
                // Query statistics and the slow log survive the restart.
                if let Err(e) = save(query).await {
                    tracing::error!(error = %e, "saving query statistics at shutdown failed");
                }
            }),
        )
        .status(status))
    }
}

async fn save(query: QueryEngine) -> Result<usize, String> {
    blocking("saving query statistics", move || query.save())
        .await
        .map_err(|e| e.to_string())
}
