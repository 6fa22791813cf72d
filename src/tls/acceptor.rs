//! A port's TLS configuration, built from its files and rebuilt when they
//! change: new connections get the new certificate, open ones keep theirs.
//! A change that does not load (a half-written file, a key that does not
//! match) is refused with a log line and a metric; what is served stays.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use super::config::TlsFiles;
use super::identity;
use crate::filewatch::Polled;

/// Why a port's TLS could not be built, naming the key and file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {key} {path}: {reason}")]
    File {
        key: String,
        path: String,
        reason: String,
    },
    #[error("{key} holds no {what}")]
    Empty { key: String, what: &'static str },
    #[error("{section}: {reason}")]
    Invalid { section: String, reason: String },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabel {
    port: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabel {
    port: &'static str,
    result: &'static str,
}

/// `gantry_tls_reloads_total{port,result}`, `gantry_tls_certificate_expiry_timestamp_seconds{port}`,
/// `gantry_tls_handshake_failures_total{port}`.
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    reloads: Family<ReloadLabel, Counter>,
    expiry: Family<PortLabel, Gauge>,
    handshake_failures: Family<PortLabel, Counter>,
}

impl TlsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "gantry_tls_reloads",
            "Certificate reloads after the files changed, by port and result (ok, failed: the old certificate stays)",
            metrics.reloads.clone(),
        );
        registry.register(
            "gantry_tls_certificate_expiry_timestamp_seconds",
            "When the certificate served on the port expires (Unix time)",
            metrics.expiry.clone(),
        );
        registry.register(
            "gantry_tls_handshake_failures",
            "TLS handshakes that failed or timed out (no or an untrusted client certificate, plaintext to a TLS port, …)",
            metrics.handshake_failures.clone(),
        );
        metrics
    }
}

/// The TLS of one port (`grpc` or `metrics`), swapped when its files change.
pub struct ReloadingTls {
    port: &'static str,
    section: &'static str,
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<ServerConfig>,
    /// The bytes the current configuration was built from.
    loaded: parking_lot::Mutex<Vec<Vec<u8>>>,
    metrics: TlsMetrics,
}

impl ReloadingTls {
    /// Builds the port's TLS from `files` (which must be enabled); fails
    /// naming the key and file when they do not make a configuration.
    pub fn load(
        port: &'static str,
        section: &'static str,
        files: &TlsFiles,
        alpn: &[&[u8]],
        metrics: TlsMetrics,
    ) -> Result<Arc<Self>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let bytes = read_all(section, files)?;
        let (config, expiry) = build(section, &bytes, &alpn)?;
        if let Some(expiry) = expiry {
            metrics
                .expiry
                .get_or_create(&PortLabel { port })
                .set(expiry);
        }
        Ok(Arc::new(Self {
            port,
            section,
            files: files.clone(),
            alpn,
            current: ArcSwap::from_pointee(config),
            loaded: parking_lot::Mutex::new(bytes),
            metrics,
        }))
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    pub fn requires_client_certificates(&self) -> bool {
        self.files.mutual()
    }

    pub fn handshake_failed(&self) {
        self.metrics
            .handshake_failures
            .get_or_create(&PortLabel { port: self.port })
            .inc();
    }

    /// Rebuilds the configuration when the files' bytes changed; `Ok(false)`
    /// when they did not.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let bytes = read_all(self.section, &self.files)?;
        if *self.loaded.lock() == bytes {
            return Ok(false);
        }
        let (config, expiry) = build(self.section, &bytes, &self.alpn)?;
        self.current.store(Arc::new(config));
        *self.loaded.lock() = bytes;
        if let Some(expiry) = expiry {
            self.metrics
                .expiry
                .get_or_create(&PortLabel { port: self.port })
                .set(expiry);
        }
        Ok(true)
    }

    /// Checks the files every `reload_interval` until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let this = self.clone();
        let check = move || this.reload_if_changed().map_err(|e| e.to_string());
        let every = self.files.reload_interval.get();
        crate::filewatch::poll(every, stop, check, |polled| {
            let result = match polled {
                Polled::Reloaded => {
                    tracing::info!(port = self.port, "TLS certificate reloaded from {}", self.section);
                    "ok"
                }
                Polled::Refused { reason, new_reason } => {
                    if new_reason {
                        tracing::warn!(port = self.port, error = %reason, "TLS files changed but do not load; serving the previous certificate");
                    }
                    "failed"
                }
            };
            let label = ReloadLabel {
                port: self.port,
                result,
            };
            self.metrics.reloads.get_or_create(&label).inc();
        })
        .await;
    }
}

/// The files' bytes: certificate, key, and client CA when set.
fn read_all(section: &str, files: &TlsFiles) -> Result<Vec<Vec<u8>>, TlsError> {
    let read = |key: &str, path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::File {
            key: format!("{section}.{key}"),
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let mut bytes = Vec::with_capacity(3);
    for (key, path) in [
        ("cert_file", &files.cert_file),
        ("key_file", &files.key_file),
        ("client_ca_file", &files.client_ca_file),
    ] {
        if super::config::is_set(path) {
            bytes.push(read(key, path)?);
        }
    }
    Ok(bytes)
}

/// A rustls configuration (TLS 1.2 and 1.3 only, ring) from the files'
/// bytes, and the leaf certificate's expiry.
fn build(
    section: &str,
    bytes: &[Vec<u8>],
    alpn: &[Vec<u8>],
) -> Result<(ServerConfig, Option<i64>), TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        section: section.to_string(),
        reason,
    };
    let empty = |key: &str, what| TlsError::Empty {
        key: format!("{section}.{key}"),
        what,
    };
    let certs = pem_certs(&bytes[0]);
    if certs.is_empty() {
        return Err(empty("cert_file", "PEM certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(&bytes[1])
        .map_err(|_| empty("key_file", "PEM private key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid(e.to_string()))?;
    let builder = match bytes.get(2) {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let cas = pem_certs(ca);
            if cas.is_empty() {
                return Err(empty("client_ca_file", "PEM certificate"));
            }
            for cert in cas {
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("client_ca_file: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(format!("client_ca_file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let expiry = identity::not_after(&certs[0]);
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid(format!("cert_file and key_file: {e}")))?;
    config.alpn_protocols = alpn.to_vec();
    Ok((config, expiry))
}

fn pem_certs(bytes: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(bytes)
        .filter_map(Result::ok)
        .collect()
}
