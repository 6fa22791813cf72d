//! Gantry: one gRPC control plane that a fleet of services shares — rate
//! limits, a shared cache, SQL query analysis, span ingestion and leases on
//! global connection budgets.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod error;
pub mod filewatch;
pub mod grpc;
pub mod http1;
pub mod lanes;
pub mod leases;
pub mod query;
pub mod ratelimit;
pub mod reload;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod top;
pub mod traces;
pub mod transport;
pub mod waitqueue;
pub mod wallclock;

/// Code generated from `proto/` by build.rs. The only place lints are relaxed.
pub mod proto {
    pub mod gantry {
        pub mod v1 {
            #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
            tonic::include_proto!("gantry.v1");
        }
    }
}
