//! The one mapping from gantry's errors to gRPC status codes.
//!
//! Each area has its own error type (`ConfigError`, `StoreError`, and one per
//! capability); malformed input is a [`FieldError`] that they carry as it
//! is. The conversions below (structural matches, no text taken apart) turn
//! them into [`ApiError`], and `impl From<ApiError> for Status` is the only
//! place that picks a code:
//!
//! | error                | code                 |
//! |----------------------|----------------------|
//! | malformed input      | `INVALID_ARGUMENT`   |
//! | unknown limit/pool/… | `NOT_FOUND`          |
//! | lost condition (CAS) | `FAILED_PRECONDITION`|
//! | shed load / too big  | `RESOURCE_EXHAUSTED` |
//! | store down           | `UNAVAILABLE`        |
//! | no/unknown credentials | `UNAUTHENTICATED`  |
//! | outside its grant    | `PERMISSION_DENIED`  |
//! | a bug                | `INTERNAL`           |

use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::cache::CacheError;
use crate::leases::LeaseError;
use crate::query::QueryError;
use crate::ratelimit::RateLimitError;
use crate::store::StoreError;
use crate::traces::TracesError;

/// A malformed field: which one (with its place in a batch, as
/// `requests[3].key`) and why. Validation everywhere returns this; domain
/// errors carry it as it is, so nothing has to be taken apart again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An empty required field.
    pub fn empty(field: impl Into<String>) -> Self {
        Self::new(field, "must not be empty")
    }

    /// A field over its configured length (`setting` names the key).
    pub fn too_long(field: impl Into<String>, len: usize, max: usize, setting: &str) -> Self {
        Self::new(
            field,
            format!("{len} bytes is longer than the limit of {max} ({setting})"),
        )
    }

    /// A required text field: not empty, at most `max` bytes.
    pub fn check_text(field: &str, value: &str, max: usize, setting: &str) -> Result<(), Self> {
        if value.is_empty() {
            return Err(Self::empty(field));
        }
        if value.len() > max {
            return Err(Self::too_long(field, value.len(), max, setting));
        }
        Ok(())
    }

    /// The same error for item `index` of the batch field `list`.
    pub fn in_item(self, list: &str, index: usize) -> Self {
        Self {
            field: format!("{list}[{index}].{}", self.field),
            reason: self.reason,
        }
    }
}

/// What a gRPC call can fail with, independent of which service raised it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A field is malformed; names the field and the value.
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    /// A named thing (limit, pool, trace…) does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// A condition the caller set did not hold (e.g. compare-and-set lost).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The server sheds load, a queue is full, or a message is too large.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The store cannot be reached; callers may retry.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected internal state.
    #[error("internal error: {0}")]
    Internal(String),
    /// No credentials, or ones that identify nobody.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known caller asked for something its grant does not cover.
    #[error("{0}")]
    PermissionDenied(String),
}

impl ApiError {
    /// Shorthand for the most common error.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::InvalidArgument(FieldError::new(field, reason))
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

impl From<FieldError> for Status {
    fn from(err: FieldError) -> Self {
        ApiError::from(err).into()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        // Every storage failure seen by a call means "the store is down or
        // misbehaving": UNAVAILABLE lets clients (and Envoy's failure_mode_deny) react.
        ApiError::Unavailable(format!("store unavailable: {err}"))
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Missing | AuthError::Malformed | AuthError::UnknownToken => {
                ApiError::Unauthenticated(err.to_string())
            }
            AuthError::Denied { .. } => ApiError::PermissionDenied(err.to_string()),
        }
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        ApiError::from(err).into()
    }
}

impl From<RateLimitError> for ApiError {
    fn from(err: RateLimitError) -> Self {
        match err {
            RateLimitError::Invalid(field) => ApiError::InvalidArgument(field),
            RateLimitError::UnknownLimit(name) => ApiError::NotFound {
                kind: "limit",
                name,
            },
            RateLimitError::TableFull { .. } | RateLimitError::QueueFull { .. } => {
                ApiError::ResourceExhausted(err.to_string())
            }
            RateLimitError::StoreUnavailable { .. } => ApiError::Unavailable(err.to_string()),
            RateLimitError::NotHere(message) => ApiError::FailedPrecondition(message),
            RateLimitError::Internal(_) => ApiError::Internal(err.to_string()),
        }
    }
}

impl From<LeaseError> for ApiError {
    fn from(err: LeaseError) -> Self {
        match err {
            LeaseError::Invalid(field) => ApiError::InvalidArgument(field),
            LeaseError::UnknownPool(name) | LeaseError::PoolRemoved(name) => {
                ApiError::NotFound { kind: "pool", name }
            }
            LeaseError::UnknownLease(id) => ApiError::NotFound {
                kind: "lease",
                name: id,
            },
            LeaseError::QueueFull { .. } => ApiError::ResourceExhausted(err.to_string()),
            LeaseError::Unavailable(_) => ApiError::Unavailable(err.to_string()),
        }
    }
}

impl From<CacheError> for ApiError {
    fn from(err: CacheError) -> Self {
        match err {
            CacheError::Invalid(field) => ApiError::InvalidArgument(field),
            CacheError::ConditionFailed(message) => ApiError::FailedPrecondition(message),
            CacheError::TooManyNamespaces { .. } | CacheError::TooManyWatchers { .. } => {
                ApiError::ResourceExhausted(err.to_string())
            }
            CacheError::Damaged { .. } => ApiError::Internal(err.to_string()),
            CacheError::Store(e) => ApiError::from(e),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(err: QueryError) -> Self {
        match err {
            QueryError::Invalid(field) => ApiError::InvalidArgument(field),
        }
    }
}

impl From<TracesError> for ApiError {
    fn from(err: TracesError) -> Self {
        match err {
            TracesError::Invalid(field) => ApiError::InvalidArgument(field),
            TracesError::QueueFull { .. } => ApiError::ResourceExhausted(err.to_string()),
            TracesError::NotFound(id) => ApiError::NotFound {
                kind: "trace",
                name: id,
            },
            TracesError::Stopped => ApiError::Unavailable(err.to_string()),
            TracesError::Store(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_design_table() {
        let cases = [
            (
                ApiError::invalid("key", "must not be empty"),
                Code::InvalidArgument,
            ),
            (
                ApiError::NotFound {
                    kind: "limit",
                    name: "api".into(),
                },
                Code::NotFound,
            ),
            (
                ApiError::FailedPrecondition("version 3 != 4".into()),
                Code::FailedPrecondition,
            ),
            (
                ApiError::ResourceExhausted("queue full".into()),
                Code::ResourceExhausted,
            ),
            (ApiError::Unavailable("down".into()), Code::Unavailable),
            (ApiError::Internal("bug".into()), Code::Internal),
        ];
        for (err, code) in cases {
            let status = Status::from(err.clone());
            assert_eq!(status.code(), code, "{err}");
            assert_eq!(status.message(), err.to_string());
        }
    }

    #[test]
    fn messages_name_field_and_value() {
        let status = Status::from(ApiError::invalid("tokens", "500 exceeds the burst of 100"));
        assert_eq!(status.message(), "tokens: 500 exceeds the burst of 100");
        let status = Status::from(ApiError::NotFound {
            kind: "limit",
            name: "nope".into(),
        });
        assert_eq!(status.message(), "limit \"nope\" not found");
    }

    #[test]
    fn store_errors_are_unavailable() {
        let status = Status::from(ApiError::from(StoreError::Io("disk gone".into())));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("disk gone"));
    }
}
