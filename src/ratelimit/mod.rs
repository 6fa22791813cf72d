//! Rate limiting: shared token buckets (GCRA), fair waiting, atomic batches,
//! hot reload, persistence across restarts, and Envoy's rate-limit protocol.
//! Everything here but `service.rs` and `envoy.rs` is free of gRPC types.

pub mod coalesce;
pub mod descriptors;
pub mod envoy;
pub mod gcra;
pub mod limiter;
pub mod limits;
pub mod metrics;
pub mod persist;
pub mod runtime;
pub mod service;

pub use limiter::{AcquireRequest, Outcome, RateLimiter, SavedBucket};

use crate::error::ApiError;

/// What an acquisition can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    #[error("limit {0:?} not found")]
    UnknownLimit(String),
    #[error("{field}: must not be empty")]
    EmptyKey { field: String },
    #[error("{field}: {len} bytes is longer than the limit of {max} (ratelimit.max_key_bytes)")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    #[error("{field}: must not contain the control character U+001E")]
    BadKey { field: String },
    #[error(
        "{field}: {tokens} exceeds the burst of {burst} of limit {limit:?}; it could never be granted"
    )]
    TooManyTokens {
        field: String,
        tokens: u64,
        burst: u64,
        limit: String,
    },
    #[error("requests: {len} requests exceed the batch limit of {max} (ratelimit.max_batch)")]
    BatchTooLarge { len: usize, max: usize },
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
    #[error("internal rate-limiter error: {0}")]
    Internal(String),
}

impl From<RateLimitError> for ApiError {
    fn from(err: RateLimitError) -> Self {
        match &err {
            RateLimitError::UnknownLimit(name) => ApiError::NotFound {
                kind: "limit",
                name: name.clone(),
            },
            RateLimitError::EmptyKey { field }
            | RateLimitError::BadKey { field }
            | RateLimitError::TooLong { field, .. }
            | RateLimitError::TooManyTokens { field, .. } => {
                let text = err.to_string();
                let reason = text
                    .strip_prefix(&format!("{field}: "))
                    .unwrap_or(&text)
                    .to_string();
                ApiError::invalid(field.clone(), reason)
            }
            RateLimitError::BatchTooLarge { .. } => {
                let text = err.to_string();
                let reason = text.strip_prefix("requests: ").unwrap_or(&text).to_string();
                ApiError::invalid("requests", reason)
            }
            RateLimitError::TableFull { .. } | RateLimitError::QueueFull { .. } => {
                ApiError::ResourceExhausted(err.to_string())
            }
            RateLimitError::Internal(_) => ApiError::Internal(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests;
