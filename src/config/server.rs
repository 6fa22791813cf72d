//! `[server]`: the gRPC port, the metrics port and the HTTP/2 server.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::values::{Checked, HumanDuration, at_least_one, message_size, positive};
use crate::error::FieldError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The one gRPC port for every service.
    pub listen: SocketAddr,
    /// Prometheus metrics over HTTP (`/metrics`).
    pub metrics_listen: SocketAddr,
    /// Largest request or response message, in bytes (before compression is undone).
    pub max_message_bytes: u64,
    /// Concurrent streams (calls) per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Calls in flight over the whole server; beyond it calls are shed with RESOURCE_EXHAUSTED.
    pub max_inflight: u32,
    /// Upper bound on any call; a shorter client deadline (grpc-timeout) wins.
    pub request_timeout: HumanDuration,
    /// How long in-flight calls may run after SIGTERM/SIGINT before the server exits anyway.
    pub shutdown_grace: HumanDuration,
    /// TCP keepalive on accepted connections.
    pub tcp_keepalive: HumanDuration,
    /// How often the configuration file is checked for changes (hot reload of
    /// `[ratelimit]` and `[leases]`); 0s turns polling off (SIGHUP still reloads).
    pub config_poll_interval: HumanDuration,
    /// Which HTTP/2 server carries the gRPC services.
    pub transport: Transport,
    /// With the h2 transport: answer immediate rate-limit `Acquire`,
    /// `AcquireBatch`, Envoy's `ShouldRateLimit`, cache Get/Put/Delete and
    /// `Analyze` from their request bytes, without tonic's per-call machinery.
    pub direct_calls: bool,
    /// TLS on the gRPC port (`[server.tls]`); plaintext without `cert_file`.
    pub tls: crate::tls::TlsFiles,
}

/// The HTTP/2 server under the gRPC services (docs/benchmarks.md, "gantry's transport").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// gantry's own connection driver on the `h2` crate: short calls answered
    /// in the connection's task, replies written together.
    #[default]
    H2,
    /// tonic's built-in server (hyper): a task per call.
    Hyper,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 256,
            max_inflight: 10_000,
            request_timeout: HumanDuration::from_secs(60),
            shutdown_grace: HumanDuration::from_secs(10),
            tcp_keepalive: HumanDuration::from_secs(60),
            config_poll_interval: HumanDuration::from_secs(2),
            transport: Transport::H2,
            direct_calls: true,
            tls: crate::tls::TlsFiles::default(),
        }
    }
}

impl ServerConfig {
    pub(crate) fn validate(&self) -> Checked {
        message_size("server.max_message_bytes", self.max_message_bytes)?;
        at_least_one(
            "server",
            [
                (
                    "max_concurrent_streams",
                    u64::from(self.max_concurrent_streams),
                ),
                ("max_inflight", u64::from(self.max_inflight)),
            ],
        )?;
        positive("server", [("request_timeout", self.request_timeout)])?;
        self.tls.validate("server.tls")?;
        if self.listen == self.metrics_listen && self.listen.port() != 0 {
            return Err(FieldError::new(
                "server.metrics_listen",
                format!(
                    "{} is the same address as server.listen",
                    self.metrics_listen
                ),
            ));
        }
        Ok(())
    }
}
