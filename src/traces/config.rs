//! `[traces]`: span ingestion bounds, memory, persistence and forwarding.

use serde::{Deserialize, Serialize};

use crate::config::values::{Checked, HumanDuration, at_least_one, message_size, positive};
use crate::error::FieldError;

/// `[traces]`: span ingestion (gantry's API and OTLP), recent traces,
/// per-endpoint RED metrics and forwarding. Read at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// Where OTLP over HTTP is served (`POST /v1/traces`, protobuf or JSON,
    /// gzip), the Collector's port; empty: not served. Same TLS
    /// (`[server.tls]`) and tokens (`[auth]`) as the gRPC port.
    pub otlp_http_listen: String,
    /// Largest Ingest or OTLP Export message, in bytes (OTLP batches can be
    /// larger than `server.max_message_bytes`).
    pub max_message_bytes: u64,
    /// Most spans in one Ingest or Export request.
    pub max_batch: u64,
    /// Spans accepted but not yet stored; beyond it, RESOURCE_EXHAUSTED (the
    /// caller retries later) and the spans are counted as dropped.
    pub queue_spans: u64,
    /// Most spans kept in memory; whole traces are evicted, oldest first.
    pub max_spans: u64,
    /// Most bytes of spans kept in memory (estimated); whole traces are evicted, oldest first.
    pub max_bytes: u64,
    /// Longest span name (endpoint) and service name, in bytes.
    pub max_name_bytes: u64,
    /// Most attributes on one span.
    pub max_attributes: u64,
    /// Longest attribute key plus value, in bytes.
    pub max_attribute_bytes: u64,
    /// Most (service, endpoint) pairs with their own statistics and series;
    /// beyond it, spans count in one overflow series.
    pub max_endpoints: u64,
    /// Also write spans to the store, so GetTrace finds them after they left
    /// memory and after a restart, until `retention` has passed.
    pub persist: bool,
    /// How long persisted spans are kept (by their end time).
    pub retention: HumanDuration,
    /// OTLP/gRPC endpoint accepted spans are forwarded to, e.g.
    /// `http://collector:4317`, or `https://…` for TLS; empty: no forwarding.
    pub forward_endpoint: String,
    /// With an `https://` endpoint: CA certificates (PEM) to verify it with;
    /// empty: the webpki roots (a public backend).
    pub forward_ca_file: std::path::PathBuf,
    /// A file of `name: value` lines sent as metadata with every export
    /// (an API key, `authorization: Bearer …`); a mounted Secret.
    pub forward_headers_file: std::path::PathBuf,
    /// Spans waiting to be forwarded; beyond it new spans are dropped (and
    /// counted) rather than slowing ingestion.
    pub forward_queue_spans: u64,
    /// Most spans in one forwarded Export.
    pub forward_batch_spans: u64,
    /// Longest time a span waits for its batch to fill before it is sent.
    pub forward_interval: HumanDuration,
    /// Deadline of one forwarded Export.
    pub forward_timeout: HumanDuration,
    /// Longest pause between retries of a batch the endpoint refused with
    /// UNAVAILABLE or RESOURCE_EXHAUSTED (the pause doubles from 100 ms).
    pub forward_max_backoff: HumanDuration,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            otlp_http_listen: "127.0.0.1:4318".to_string(),
            max_message_bytes: 32 * 1024 * 1024,
            max_batch: 16_384,
            queue_spans: 131_072,
            max_spans: 500_000,
            max_bytes: 256 * 1024 * 1024,
            max_name_bytes: 1024,
            max_attributes: 128,
            max_attribute_bytes: 16 * 1024,
            max_endpoints: 1_000,
            persist: false,
            retention: HumanDuration::from_secs(24 * 3600),
            forward_endpoint: String::new(),
            forward_ca_file: std::path::PathBuf::new(),
            forward_headers_file: std::path::PathBuf::new(),
            forward_queue_spans: 65_536,
            forward_batch_spans: 512,
            forward_interval: HumanDuration::from_millis(200),
            forward_timeout: HumanDuration::from_secs(10),
            forward_max_backoff: HumanDuration::from_secs(30),
        }
    }
}

impl TracesConfig {
    /// The OTLP/HTTP address, or None when it is off.
    pub fn otlp_http_addr(&self) -> Result<Option<std::net::SocketAddr>, FieldError> {
        let text = self.otlp_http_listen.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            FieldError::new(
                "traces.otlp_http_listen",
                format!("{text:?} is not an address like 127.0.0.1:4318 (empty turns it off)"),
            )
        })
    }

    pub(crate) fn validate(&self) -> Checked {
        at_least_one(
            "traces",
            [
                ("max_batch", self.max_batch),
                ("queue_spans", self.queue_spans),
                ("max_spans", self.max_spans),
                ("max_bytes", self.max_bytes),
                ("max_name_bytes", self.max_name_bytes),
                ("max_attribute_bytes", self.max_attribute_bytes),
                ("max_endpoints", self.max_endpoints),
                ("forward_queue_spans", self.forward_queue_spans),
                ("forward_batch_spans", self.forward_batch_spans),
            ],
        )?;
        message_size("traces.max_message_bytes", self.max_message_bytes)?;
        self.otlp_http_addr()?;
        if self.queue_spans < self.max_batch {
            return Err(FieldError::new(
                "traces.queue_spans",
                format!(
                    "{} is below traces.max_batch ({}): a full batch could never be queued",
                    self.queue_spans, self.max_batch
                ),
            ));
        }
        positive(
            "traces",
            [
                ("retention", self.retention),
                ("forward_interval", self.forward_interval),
                ("forward_timeout", self.forward_timeout),
                ("forward_max_backoff", self.forward_max_backoff),
            ],
        )?;
        let endpoint = &self.forward_endpoint;
        let tls = endpoint.starts_with("https://");
        if !endpoint.is_empty() && !endpoint.starts_with("http://") && !tls {
            return Err(FieldError::new(
                "traces.forward_endpoint",
                format!("{endpoint:?} must start with http:// (plaintext gRPC) or https:// (TLS)"),
            ));
        }
        if crate::tls::is_set(&self.forward_ca_file) && !tls {
            return Err(FieldError::new(
                "traces.forward_ca_file",
                "needs an https:// traces.forward_endpoint",
            ));
        }
        Ok(())
    }
}
