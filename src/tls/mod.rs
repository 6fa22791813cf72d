//! TLS on gantry's ports with rustls: the gRPC port (`[server.tls]`, both
//! transports, optionally mutual) and the metrics port
//! (`[telemetry.metrics_tls]`). Certificates reload from their files
//! without a restart. What is protected and what is not: docs/security.md.

mod acceptor;
mod config;
pub mod identity;
mod incoming;

pub use acceptor::{ReloadingTls, TlsError, TlsMetrics};
pub use config::{TlsFiles, is_set};
pub use incoming::{Incoming, Peer, ServerIo, incoming};
