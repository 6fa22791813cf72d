//! The one mapping from gantry's errors to gRPC status codes.
//!
//! Each area has its own error type (`ConfigError`, `StoreError`, and one per
//! capability); the gRPC adapters turn them into [`ApiError`], and
//! `impl From<ApiError> for Status` below is the only place that picks a code:
//!
//! | error                | code                 |
//! |----------------------|----------------------|
//! | malformed input      | `INVALID_ARGUMENT`   |
//! | unknown limit/pool/… | `NOT_FOUND`          |
//! | lost condition (CAS) | `FAILED_PRECONDITION`|
//! | shed load / too big  | `RESOURCE_EXHAUSTED` |
//! | store down           | `UNAVAILABLE`        |
//! | a bug                | `INTERNAL`           |

use tonic::{Code, Status};

use crate::store::StoreError;

/// What a gRPC call can fail with, independent of which service raised it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A field is malformed; names the field and the value.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
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
}

impl ApiError {
    /// Shorthand for the most common error.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument { .. } => Code::InvalidArgument,
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        // Every storage failure seen by a call means "the store is down or
        // misbehaving": UNAVAILABLE lets clients (and Envoy's failure_mode_deny) react.
        ApiError::Unavailable(format!("store unavailable: {err}"))
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
