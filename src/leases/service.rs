//! `gantry.v1.Leases` over gRPC: converts and validates, then asks the manager.

use crate::auth::{Area, Caller};
use std::time::{Duration, UNIX_EPOCH};

use tonic::{Request, Response, Status};

use super::table::{Ask, Denial};
use super::{Lease, Leases};
use crate::error::ApiError;
use crate::grpc::{duration_from_pb, duration_to_pb, grpc_timeout, wait_within_deadline};
use crate::proto::gantry::v1 as pb;

pub struct LeasesService {
    manager: Leases,
}

impl LeasesService {
    pub fn new(manager: Leases) -> Self {
        Self { manager }
    }
}

fn timestamp(unix_ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(unix_ms))
}

fn granted(lease: Lease, waited: Duration) -> pb::Lease {
    pb::Lease {
        lease_id: lease.id,
        pool: lease.pool,
        holder: lease.holder,
        count: lease.count,
        expires_at: Some(timestamp(lease.expires_at_ms)),
        granted: true,
        waited: Some(duration_to_pb(waited)),
        denial_reason: pb::DenialReason::Unspecified as i32,
    }
}

/// An unset or zero TTL means the pool's default.
fn ttl(field: &str, value: Option<&prost_types::Duration>) -> Result<Option<Duration>, ApiError> {
    let ttl = duration_from_pb(field, value)?;
    Ok((!ttl.is_zero()).then_some(ttl))
}

#[tonic::async_trait]
impl pb::leases_server::Leases for LeasesService {
    async fn acquire(
        &self,
        request: Request<pb::AcquireLeaseRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let deadline = grpc_timeout(request.metadata());
        let r = request.get_ref();
        Caller::of(&request)?.may(Area::Leases, &r.pool)?;
        let max_wait = duration_from_pb("max_wait", r.max_wait.as_ref())?;
        // A wait must end in an answer before the caller's deadline does.
        let max_wait = wait_within_deadline(max_wait, deadline);
        let span = tracing::debug_span!(
            "leases.acquire",
            pool = %r.pool,
            holder = %r.holder,
            count = r.count,
            max_wait_ms = max_wait.as_millis() as u64,
            granted = tracing::field::Empty,
            lease_id = tracing::field::Empty,
        );
        let ask = Ask {
            pool: &r.pool,
            holder: &r.holder,
            count: r.count,
            ttl: ttl("ttl", r.ttl.as_ref())?,
        };
        let outcome =
            tracing::Instrument::instrument(self.manager.acquire(ask, max_wait), span.clone())
                .await
                .map_err(ApiError::from)?;
        span.record("granted", outcome.lease.is_some());
        let lease = match outcome.lease {
            Some(lease) => {
                span.record("lease_id", lease.id.as_str());
                granted(lease, outcome.waited)
            }
            None => pb::Lease {
                pool: r.pool.clone(),
                holder: r.holder.clone(),
                count: r.count.max(1),
                granted: false,
                waited: Some(duration_to_pb(outcome.waited)),
                denial_reason: match outcome.denial {
                    Some(Denial::PoolFull) => pb::DenialReason::PoolFull,
                    Some(Denial::HolderLimit) => pb::DenialReason::HolderLimit,
                    Some(Denial::QueueAhead) => pb::DenialReason::QueueAhead,
                    None => pb::DenialReason::Unspecified,
                } as i32,
                ..Default::default()
            },
        };
        Ok(Response::new(lease))
    }

    // Renew and Release name a lease by its id: at least 96 bits no one can
    // guess, which only the caller it was granted to has seen, so holding the
    // id is the grant (docs/security.md).
    async fn renew(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let r = request.get_ref();
        let span = tracing::debug_span!("leases.renew", lease_id = %r.lease_id, pool = tracing::field::Empty);
        let lease = tracing::Instrument::instrument(
            self.manager.renew(&r.lease_id, ttl("ttl", r.ttl.as_ref())?),
            span.clone(),
        )
        .await
        .map_err(ApiError::from)?;
        span.record("pool", lease.pool.as_str());
        Ok(Response::new(granted(lease, Duration::ZERO)))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
        let r = request.get_ref();
        let released = self
            .manager
            .release(&r.lease_id)
            .await
            .map_err(ApiError::from)?;
        tracing::debug!(lease_id = %r.lease_id, released, "leases.release");
        Ok(Response::new(pb::ReleaseLeaseResponse { released }))
    }

    async fn pool_status(
        &self,
        request: Request<pb::PoolStatusRequest>,
    ) -> Result<Response<pb::PoolStatusResponse>, Status> {
        let r = request.get_ref();
        if r.pool.is_empty() {
            return Err(ApiError::invalid("pool", "must not be empty").into());
        }
        Caller::of(&request)?.may(Area::Leases, &r.pool)?;
        let status = self.manager.status(&r.pool).await.map_err(ApiError::from)?;
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(pb::PoolStatusResponse {
            pool: status.pool,
            capacity: status.capacity,
            in_use: clamp(status.in_use),
            waiting: clamp(status.waiting as u64),
            holders: status
                .holders
                .into_iter()
                .map(|(holder, units, leases)| pb::Holder {
                    holder,
                    count: clamp(units),
                    leases,
                })
                .collect(),
        }))
    }
}
