//! `[server.tls]` and `[telemetry.metrics_tls]`: which files a port's TLS
//! comes from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::values::{Checked, HumanDuration, positive};
use crate::error::FieldError;

/// A port's certificate, key and (for mutual TLS) client CA bundle, all PEM.
/// Without `cert_file` the port is plaintext. An empty path is unset (so
/// every key has its environment twin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// The certificate chain served, leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates that client certificates must chain to; when set, a
    /// client without a valid certificate is refused during the handshake.
    pub client_ca_file: PathBuf,
    /// How often the files are checked for changes (cert-manager rotates
    /// them in place); a change is served to new connections.
    pub reload_interval: HumanDuration,
}

impl Default for TlsFiles {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
            reload_interval: HumanDuration::from_secs(5),
        }
    }
}

impl TlsFiles {
    pub fn enabled(&self) -> bool {
        is_set(&self.cert_file)
    }

    /// Mutual TLS: client certificates are required and verified.
    pub fn mutual(&self) -> bool {
        is_set(&self.client_ca_file)
    }

    /// `section` is where the keys live, for the error (`server.tls`).
    pub(crate) fn validate(&self, section: &str) -> Checked {
        positive(section, [("reload_interval", self.reload_interval)])?;
        match (is_set(&self.cert_file), is_set(&self.key_file)) {
            (true, false) => Err(FieldError::new(
                format!("{section}.key_file"),
                "is required when cert_file is set",
            )),
            (false, true) => Err(FieldError::new(
                format!("{section}.cert_file"),
                "is required when key_file is set",
            )),
            (false, false) if self.mutual() => Err(FieldError::new(
                format!("{section}.client_ca_file"),
                "needs cert_file and key_file: mutual TLS is TLS first",
            )),
            _ => Ok(()),
        }
    }
}

/// An empty path means the key is unset.
pub fn is_set(path: &Path) -> bool {
    !path.as_os_str().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_without_a_certificate_and_a_ca_without_tls_are_refused() {
        let key_only = TlsFiles {
            key_file: "k.pem".into(),
            ..TlsFiles::default()
        };
        assert_eq!(
            key_only.validate("server.tls").unwrap_err().field,
            "server.tls.cert_file"
        );
        let ca_only = TlsFiles {
            client_ca_file: "ca.pem".into(),
            ..TlsFiles::default()
        };
        assert_eq!(
            ca_only.validate("server.tls").unwrap_err().field,
            "server.tls.client_ca_file"
        );
        assert!(TlsFiles::default().validate("server.tls").is_ok());
        assert!(!TlsFiles::default().enabled());
    }
}
