//! The shared cache: namespaced entries with TTLs, versions for
//! compare-and-set, batches, and a change stream, stored in sled (every live
//! entry) behind a bounded in-memory hot tier, with gzip for large values.
//!
//! - `entry`: how entries and the expiry index are laid out in the store.
//! - `compress`: gzip when it saves space (pure).
//! - `hot`: the in-memory tier (quick_cache).
//! - `stats`: per-namespace counters, for Stats and /metrics.
//! - `watch`: change events to watchers, with resync on overflow.
//! - `behind`: writes staged in memory until a drain writes them (`periodic`).
//! - `engine`: get/put/delete, conditions, expiry sweeping.
//! - `service`: `gantry.v1.Cache` over gRPC.
//! - `direct`: its Get, Put and Delete answered from their request bytes.

pub mod behind;
pub mod compress;
pub mod config;
pub mod direct;
pub mod engine;
pub mod entry;
pub mod hot;
pub mod runtime;
pub mod service;
pub mod shared;
pub mod stats;
pub mod status;
pub mod watch;

pub use engine::{CacheEngine, Condition, Found, Written};

use crate::error::FieldError;
use crate::store::StoreError;

/// What a cache call (or one item of a batch) can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// A malformed field (empty, too long, a control character, a bad ttl,
    /// a batch over `cache.max_batch`).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// A condition (`if_absent`, `if_version`) did not hold.
    #[error("{0}")]
    ConditionFailed(String),
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
        match self {
            CacheError::Invalid(field) => CacheError::Invalid(field.in_item("items", index)),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use tonic::Code;

    #[test]
    fn errors_map_to_the_design_codes_and_name_the_item() {
        let cases = [
            (
                CacheError::Invalid(FieldError::empty("key")),
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
        let err = CacheError::Invalid(FieldError::too_long("key", 9, 4, "cache.max_key_bytes"))
            .in_item(3);
        assert_eq!(
            err.to_string(),
            "items[3].key: 9 bytes is longer than the limit of 4 (cache.max_key_bytes)"
        );
    }
}

#[cfg(test)]
mod engine_tests;
