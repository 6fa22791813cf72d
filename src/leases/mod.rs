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

pub mod journal;
pub mod manager;
pub mod metrics;
pub mod persist;
pub mod pool;
pub mod runtime;
pub mod service;
pub mod table;

pub use manager::{AcquireOutcome, LeaseManager};
pub use table::{Lease, PoolStatus};

use crate::error::ApiError;

/// What a lease call can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("pool {0:?} not found")]
    UnknownPool(String),
    #[error("lease {0:?} not found (it expired, was released, or never existed)")]
    UnknownLease(String),
    #[error("{field}: must not be empty")]
    Empty { field: &'static str },
    #[error("{field}: {len} bytes is longer than the limit of {max} ({setting})")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
        setting: &'static str,
    },
    #[error(
        "count: {count} exceeds the capacity of {capacity} of pool {pool:?}; it could never be granted"
    )]
    AboveCapacity {
        count: u32,
        capacity: u32,
        pool: String,
    },
    #[error("count: {count} exceeds the per-holder maximum of {max} of pool {pool:?}")]
    AboveHolderMax { count: u32, max: u32, pool: String },
    #[error("wait queue of pool {pool:?} is full ({max} waiters, leases.max_waiters)")]
    QueueFull { pool: String, max: usize },
    #[error("pool {0:?} was removed from the configuration while the call waited")]
    PoolRemoved(String),
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
}

impl From<LeaseError> for ApiError {
    fn from(err: LeaseError) -> Self {
        match &err {
            LeaseError::UnknownPool(name) | LeaseError::PoolRemoved(name) => ApiError::NotFound {
                kind: "pool",
                name: name.clone(),
            },
            LeaseError::UnknownLease(id) => ApiError::NotFound {
                kind: "lease",
                name: id.clone(),
            },
            LeaseError::Empty { field } | LeaseError::TooLong { field, .. } => {
                let text = err.to_string();
                let reason = text
                    .strip_prefix(&format!("{field}: "))
                    .unwrap_or(&text)
                    .to_string();
                ApiError::invalid(*field, reason)
            }
            LeaseError::AboveCapacity { .. } | LeaseError::AboveHolderMax { .. } => {
                let text = err.to_string();
                let reason = text.strip_prefix("count: ").unwrap_or(&text).to_string();
                ApiError::invalid("count", reason)
            }
            LeaseError::QueueFull { .. } => ApiError::ResourceExhausted(err.to_string()),
            LeaseError::Unavailable(_) => ApiError::Unavailable(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn errors_map_to_the_design_codes() {
        let cases = [
            (LeaseError::UnknownPool("db".into()), Code::NotFound),
            (LeaseError::UnknownLease("x".into()), Code::NotFound),
            (LeaseError::Empty { field: "holder" }, Code::InvalidArgument),
            (
                LeaseError::AboveCapacity {
                    count: 9,
                    capacity: 5,
                    pool: "db".into(),
                },
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
        let status = tonic::Status::from(ApiError::from(LeaseError::AboveCapacity {
            count: 9,
            capacity: 5,
            pool: "db".into(),
        }));
        assert_eq!(
            status.message(),
            "count: 9 exceeds the capacity of 5 of pool \"db\"; it could never be granted"
        );
    }
}

#[cfg(test)]
mod table_tests;
