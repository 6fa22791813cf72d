//! `[telemetry]`: logs and gantry's own traces.

use serde::{Deserialize, Serialize};

use crate::config::values::Checked;
use crate::error::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` for people, `json` for log pipelines.
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,gantry=debug`.
    pub log_level: String,
    /// OTLP/gRPC endpoint for gantry's own spans, e.g. `http://collector:4317`; empty: off.
    pub otlp_endpoint: String,
    /// `service.name` of gantry's own spans.
    pub service_name: String,
    /// Share of gantry's own traces exported (0.0 to 1.0), respecting a sampled parent.
    pub trace_sample_ratio: f64,
    /// TLS on the metrics port (`[telemetry.metrics_tls]`); may name the
    /// same files as `[server.tls]`.
    pub metrics_tls: crate::tls::TlsFiles,
    /// A file holding the bearer token Prometheus must send to `/metrics`
    /// (its `authorization.credentials_file`); unset: no token needed.
    pub metrics_token_file: std::path::PathBuf,
    /// Serve the status page (`/status`, `/status.json`) on the metrics port.
    /// It shows rate-limit keys, lease holders and SQL text, which /metrics
    /// does not: off for a port others may reach without the token.
    pub status_page: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_level: "info".to_string(),
            otlp_endpoint: String::new(),
            service_name: "gantry".to_string(),
            trace_sample_ratio: 1.0,
            metrics_tls: crate::tls::TlsFiles::default(),
            metrics_token_file: std::path::PathBuf::new(),
            status_page: true,
        }
    }
}

impl TelemetryConfig {
    pub(crate) fn validate(&self) -> Checked {
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log_level) {
            return Err(FieldError::new(
                "telemetry.log_level",
                format!("{:?} is not a valid filter: {e}", self.log_level),
            ));
        }
        let endpoint = &self.otlp_endpoint;
        let endpoint_ok = endpoint.is_empty()
            || endpoint.starts_with("http://")
            || endpoint.starts_with("https://");
        if !endpoint_ok {
            return Err(FieldError::new(
                "telemetry.otlp_endpoint",
                format!(
                    "{endpoint:?} must start with http:// or https:// (or be empty to turn export off)"
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(FieldError::new(
                "telemetry.trace_sample_ratio",
                format!(
                    "{} is out of range; use 0.0 to 1.0",
                    self.trace_sample_ratio
                ),
            ));
        }
        self.metrics_tls.validate("telemetry.metrics_tls")?;
        if self.service_name.trim().is_empty() {
            return Err(FieldError::empty("telemetry.service_name"));
        }
        Ok(())
    }
}
