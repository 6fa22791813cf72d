//! Leases as the server runs them: the journal started, granted leases put
//! back from the store, `gantry.v1.Leases` served, expiries run on time, and
//! the journal drained to the store at stop.

use super::metrics::LeaseMetrics;
use super::service::LeasesService;
use super::{LeaseManager, Leases, SharedLeases};
use crate::config::LeasesConfig;
use crate::proto::gantry::v1::leases_server::{self, LeasesServer};
use crate::routes::{Served, grpc_service};
use crate::runtime::{Capability, Context, StartError, blocking};
use std::sync::Arc;

pub struct Runtime;

impl Runtime {
    /// Unlike bucket levels, leases that cannot be read are a reason not to
    /// start: serving without them could grant units that are still held.
    pub async fn start(
        config: &LeasesConfig,
        ctx: &mut Context<'_>,
    ) -> Result<Capability, StartError> {
        let metrics = LeaseMetrics::register(ctx.registry);
        if let Some(redis) = ctx.redis.clone() {
            // Pools in Redis: nothing to restore, journal or expire here —
            // every script ends the leases whose time has come.
            let shared = SharedLeases::start(config, redis, metrics, ctx.background.token());
            let reloaded = shared.clone();
            let (served, status) = served(Leases::Shared(shared), ctx);
            return Ok(Capability::new("leases", served, Box::pin(async {}))
                .reloads(Box::new(move |config| reloaded.reload(&config.leases)))
                .needs_redis(true)
                .status(status));
        }
        let leases =
            LeaseManager::new(config, ctx.store.clone(), metrics).map_err(StartError::Journal)?;
        let (restoring, store) = (leases.clone(), ctx.store.clone());
        let report = blocking("restoring leases", move || {
            restoring.restore(store.as_ref())
        })
        .await?;
        if report.restored > 0 || !report.stale.is_empty() {
            tracing::info!(
                restored = report.restored,
                dropped = report.stale.len(),
                "leases restored (expired ones and those of removed pools dropped)"
            );
        }

        let token = ctx.background.token();
        ctx.background.spawn(leases.clone().run_expiry(token));

        let (served, status) = served(Leases::Embedded(leases.clone()), ctx);
        let reloaded = leases.clone();
        Ok(Capability::new(
            "leases",
            served,
            // Lease changes still queued reach the store before it is flushed.
            Box::pin(async move { leases.stop().await }),
        )
        .reloads(Box::new(move |config| reloaded.reload(&config.leases)))
        .needs_store(true)
        .status(status))
    }
}

/// `gantry.v1.Leases`, its short calls in the connection's task.
/// The service and the status page's section over it.
fn served(leases: Leases, ctx: &mut Context<'_>) -> (Served, Arc<dyn crate::status::Source>) {
    let service = Arc::new(LeasesService::new(leases.clone()));
    let status = super::status::source(service.clone(), leases);
    let served = Served::default()
        .service(grpc_service!(
            LeasesServer::from_arc(service),
            ctx.max_message_bytes(),
            "server.max_message_bytes"
        ))
        .inline(
            leases_server::SERVICE_NAME,
            &["Acquire", "Renew", "Release"],
        );
    (served, status)
}
