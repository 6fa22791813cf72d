//! Leases: parts of global budgets (pools) handed to holders for a while, so
//! a fleet as a whole never goes over a budget such as a database's
//! connection limit. Everything here but `service.rs` is free of gRPC types.
//!
//! - `pool`: a pool's configured shape (capacity, per-holder maximum, TTLs).
//! - `table`: the pure state machine — grants, fair waiting, expiry, reload.
//! - `journal`: writes leases to the store before they are granted (group commit).
//! - `persist`: how a lease is laid out in the store.
//! - `manager`: the async shell — locks, waits, timers, journal, metrics.
//! - `service`: `gantry.v1.Leases` over gRPC.

pub mod config;
pub mod journal;
pub mod manager;
pub mod metrics;
pub mod persist;
pub mod pool;
pub mod runtime;
pub mod service;
pub mod shared;
pub mod status;
pub mod table;

pub use manager::{AcquireOutcome, LeaseManager};
pub use shared::SharedLeases;
pub use table::{Denial, Lease, PoolStatus};

use crate::error::FieldError;

/// What a lease call can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// A malformed field (empty or long names, a count above the pool's
    /// capacity or per-holder maximum).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("pool {0:?} not found")]
    UnknownPool(String),
    #[error("lease {0:?} not found (it expired, was released, or never existed)")]
    UnknownLease(String),
    #[error("wait queue of pool {pool:?} is full ({max} waiters, leases.max_waiters)")]
    QueueFull { pool: String, max: usize },
    #[error("pool {0:?} was removed from the configuration while the call waited")]
    PoolRemoved(String),
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
}

/// Where the lease pools live: this process's table (embedded), or Redis.
#[derive(Clone)]
pub enum Leases {
    Embedded(LeaseManager),
    Shared(SharedLeases),
}

impl Leases {
    pub async fn acquire(
        &self,
        ask: table::Ask<'_>,
        max_wait: std::time::Duration,
    ) -> Result<AcquireOutcome, LeaseError> {
        match self {
            Leases::Embedded(m) => m.acquire(ask, max_wait).await,
            Leases::Shared(s) => s.acquire(ask, max_wait).await,
        }
    }

    pub async fn renew(
        &self,
        id: &str,
        ttl: Option<std::time::Duration>,
    ) -> Result<Lease, LeaseError> {
        match self {
            Leases::Embedded(m) => m.renew(id, ttl).await,
            Leases::Shared(s) => s.renew(id, ttl).await,
        }
    }

    pub async fn release(&self, id: &str) -> Result<bool, LeaseError> {
        match self {
            Leases::Embedded(m) => m.release(id),
            Leases::Shared(s) => s.release(id).await,
        }
    }

    pub async fn status(&self, pool: &str) -> Result<PoolStatus, LeaseError> {
        match self {
            Leases::Embedded(m) => m.status(pool),
            Leases::Shared(s) => s.status(pool).await,
        }
    }

    /// The pools configured now, sorted.
    pub fn pool_names(&self) -> Vec<String> {
        match self {
            Leases::Embedded(m) => m.pool_names(),
            Leases::Shared(s) => s.pool_names(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use tonic::Code;

    #[test]
    fn errors_map_to_the_design_codes() {
        let cases = [
            (LeaseError::UnknownPool("db".into()), Code::NotFound),
            (LeaseError::UnknownLease("x".into()), Code::NotFound),
            (
                LeaseError::Invalid(FieldError::empty("holder")),
                Code::InvalidArgument,
            ),
            (
                LeaseError::QueueFull {
                    pool: "db".into(),
                    max: 3,
                },
                Code::ResourceExhausted,
            ),
            (LeaseError::Unavailable("disk".into()), Code::Unavailable),
        ];
        for (err, code) in cases {
            let status = tonic::Status::from(ApiError::from(err.clone()));
            assert_eq!(status.code(), code, "{err}");
        }
        let status = tonic::Status::from(ApiError::from(LeaseError::Invalid(FieldError::new(
            "count",
            "9 exceeds the capacity of 5",
        ))));
        assert_eq!(status.message(), "count: 9 exceeds the capacity of 5");
    }
}

#[cfg(test)]
mod table_tests;
