//! The shared cache: namespaced entries with TTLs, versions for
//! compare-and-set, batches, and a change stream, stored in sled (every live
//! entry) behind a bounded in-memory hot tier, with gzip for large values.
//!
//! - `entry`: how entries and the expiry index are laid out in the store.
//! - `compress`: gzip when it saves space (pure).
//! - `hot`: the in-memory tier (quick_cache).
//! - `stats`: per-namespace counters, for Stats and /metrics.
//! - `watch`: change events to watchers, with resync on overflow.
//! - `engine`: get/put/delete, conditions, expiry sweeping.
//! - `service`: `gantry.v1.Cache` over gRPC.

pub mod compress;
pub mod engine;
pub mod entry;
pub mod hot;
pub mod runtime;
pub mod service;
pub mod stats;
pub mod watch;

pub use engine::{CacheEngine, Condition, Found, Written};

use crate::error::ApiError;
use crate::store::StoreError;

/// What a cache call (or one item of a batch) can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("{field}: must not be empty")]
    Empty { field: String },
    #[error("{field}: {len} bytes is longer than the limit of {max} ({setting})")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
        setting: &'static str,
    },
    #[error("{field}: {value:?} contains a control character")]
    ControlCharacter { field: String, value: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A condition (`if_absent`, `if_version`) did not hold.
    #[error("{0}")]
    ConditionFailed(String),
    #[error("items: {len} items exceed the batch limit of {max} (cache.max_batch)")]
    BatchTooLarge { len: usize, max: usize },
    #[error(
        "namespace {namespace:?} would be namespace number {} over the limit of {max} (cache.max_namespaces)",
        max + 1
    )]
    TooManyNamespaces { namespace: String, max: usize },
    #[error("{max} watchers are already connected (cache.max_watchers)")]
    TooManyWatchers { max: usize },
    #[error("entry {key:?} in namespace {namespace:?} is damaged in the store: {detail}")]
    Damaged {
        namespace: String,
        key: String,
        detail: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CacheError {
    /// Prefixes the field with a batch item's position (`items[3].key`).
    pub fn in_item(self, index: usize) -> Self {
        let at = |field: String| format!("items[{index}].{field}");
        match self {
            CacheError::Empty { field } => CacheError::Empty { field: at(field) },
            CacheError::TooLong {
                field,
                len,
                max,
                setting,
            } => CacheError::TooLong {
                field: at(field),
                len,
                max,
                setting,
            },
            CacheError::ControlCharacter { field, value } => CacheError::ControlCharacter {
                field: at(field),
                value,
            },
            CacheError::Invalid { field, reason } => CacheError::Invalid {
                field: at(field),
                reason,
            },
            other => other,
        }
    }
}

impl From<CacheError> for ApiError {
    fn from(err: CacheError) -> Self {
        match err {
            CacheError::Empty { field } => ApiError::invalid(field, "must not be empty"),
            CacheError::TooLong {
                field,
                len,
                max,
                setting,
            } => ApiError::invalid(
                field,
                format!("{len} bytes is longer than the limit of {max} ({setting})"),
            ),
            CacheError::ControlCharacter { field, value } => {
                ApiError::invalid(field, format!("{value:?} contains a control character"))
            }
            CacheError::Invalid { field, reason } => ApiError::invalid(field, reason),
            CacheError::BatchTooLarge { len, max } => ApiError::invalid(
                "items",
                format!("{len} items exceed the batch limit of {max} (cache.max_batch)"),
            ),
            CacheError::ConditionFailed(message) => ApiError::FailedPrecondition(message),
            e @ (CacheError::TooManyNamespaces { .. } | CacheError::TooManyWatchers { .. }) => {
                ApiError::ResourceExhausted(e.to_string())
            }
            e @ CacheError::Damaged { .. } => ApiError::Internal(e.to_string()),
            CacheError::Store(e) => ApiError::from(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn errors_map_to_the_design_codes_and_name_the_item() {
        let cases = [
            (
                CacheError::Empty {
                    field: "key".into(),
                },
                Code::InvalidArgument,
            ),
            (
                CacheError::ConditionFailed("key \"k\" exists".into()),
                Code::FailedPrecondition,
            ),
            (
                CacheError::TooManyNamespaces {
                    namespace: "n".into(),
                    max: 2,
                },
                Code::ResourceExhausted,
            ),
            (
                CacheError::Store(StoreError::Io("disk".into())),
                Code::Unavailable,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(ApiError::from(err.clone()).code(), code, "{err}");
        }
        let err = CacheError::TooLong {
            field: "key".into(),
            len: 9,
            max: 4,
            setting: "cache.max_key_bytes",
        }
        .in_item(3);
        assert_eq!(
            err.to_string(),
            "items[3].key: 9 bytes is longer than the limit of 4 (cache.max_key_bytes)"
        );
    }
}

#[cfg(test)]
mod engine_tests;
