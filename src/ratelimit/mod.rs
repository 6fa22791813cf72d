//! Rate limiting: shared token buckets (GCRA), fair waiting, atomic batches,
//! hot reload, persistence across restarts, and Envoy's rate-limit protocol.
//! Everything here but `service.rs` and `envoy.rs` is free of gRPC types.

pub mod coalesce;
pub mod config;
pub mod denials;
pub mod descriptors;
pub mod envoy;
pub mod gcra;
pub mod headers;
pub mod limiter;
pub mod limits;
pub mod metrics;
pub mod persist;
pub mod redis_gcra;
pub mod runtime;
pub mod service;
pub mod status;

pub use limiter::{AcquireRequest, Outcome, RateLimiter, SavedBucket};

use crate::error::FieldError;

/// What an acquisition can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// A malformed field (empty or long key, tokens above the burst, a batch
    /// over `ratelimit.max_batch`).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("limit {0:?} not found")]
    UnknownLimit(String),
    #[error(
        "bucket table full: {max} buckets still owe tokens (ratelimit.max_buckets); new key for limit {limit:?} refused"
    )]
    TableFull { limit: String, max: usize },
    #[error(
        "wait queue of limit {limit:?} key {key:?} is full ({max} waiters, ratelimit.max_waiters)"
    )]
    QueueFull {
        limit: String,
        key: String,
        max: usize,
    },
    /// The shared store (Redis) could not decide, and
    /// `ratelimit.store_failure = "closed"`.
    #[error("cannot decide limit {limit:?}: {cause} (ratelimit.store_failure = \"closed\")")]
    StoreUnavailable { limit: String, cause: String },
    /// Asked of a backend that cannot answer it (hot keys on Redis Cluster).
    #[error("{0}")]
    NotHere(String),
    #[error("internal rate-limiter error: {0}")]
    Internal(String),
}

#[cfg(test)]
mod tests;
