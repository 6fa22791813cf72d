//! The Rust client for gantry: the generated gRPC clients, a connection
//! helper, and helpers as services use gantry ([`Gantry`]: limiter, lease,
//! near cache, recorder), with deadlines, round-robin over replicas, retries
//! of idempotent calls, a circuit breaker and a failure policy for when
//! gantry does not answer (docs/client-resilience.md).
#![forbid(unsafe_code)]

pub mod client;
pub mod connect;
/// The load generator behind `gantry-load` (feature `load`).
#[cfg(feature = "load")]
pub mod load;
pub mod queries;
pub mod replicas;
pub mod resilience;

/// Generated from the repository's `proto/`. The only place lints are relaxed.
pub mod proto {
    pub mod gantry {
        pub mod v1 {
            #![allow(clippy::all, clippy::pedantic, missing_docs)]
            tonic::include_proto!("gantry.v1");
        }
    }
    /// throttlecrab-server's interface, for side-by-side benchmarks.
    #[cfg(feature = "load")]
    pub mod throttlecrab {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("throttlecrab");
    }
}

pub use client::{Decision, Error, Gantry, Lease, Limiter, Namespace, NearCache, Recorder};
pub use connect::{ConnectError, Tls, connect, connect_replicas, connect_with};
pub use queries::{BatchingHint, QueryOrder, QueryStats, SlowQuery, TopQueries};
pub use replicas::Replicas;
pub use resilience::{DecisionCounts, DecisionSource, FailurePolicy};
