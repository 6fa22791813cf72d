//! `[auth]`: where callers' credentials and their grants come from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::values::{Checked, HumanDuration, positive};
use crate::error::FieldError;
use crate::tls::is_set;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// SHA-256 hashes of bearer tokens and the identity each stands for
    /// (src/auth/policy.rs shows the format); a mounted Secret.
    pub tokens_file: PathBuf,
    /// What each identity may use. Setting it turns authorization on: every
    /// call outside `open_services` needs a token or an mTLS client
    /// certificate and a grant.
    pub policy_file: PathBuf,
    /// gRPC services served to anyone, without credentials.
    pub open_services: Vec<String>,
    /// How often both files are checked for changes.
    pub reload_interval: HumanDuration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tokens_file: PathBuf::new(),
            policy_file: PathBuf::new(),
            open_services: vec![
                "grpc.health.v1.Health".to_string(),
                "grpc.reflection.v1.ServerReflection".to_string(),
                "grpc.reflection.v1alpha.ServerReflection".to_string(),
            ],
            reload_interval: HumanDuration::from_secs(5),
        }
    }
}

impl AuthConfig {
    pub fn enabled(&self) -> bool {
        is_set(&self.policy_file)
    }

    /// `client_certificates`: whether `[server.tls] client_ca_file` is set,
    /// the other way callers can be identified.
    pub(crate) fn validate(&self, client_certificates: bool) -> Checked {
        positive("auth", [("reload_interval", self.reload_interval)])?;
        if is_set(&self.tokens_file) && !self.enabled() {
            return Err(FieldError::new(
                "auth.policy_file",
                "is required when auth.tokens_file is set: tokens name identities, the policy says what they may use",
            ));
        }
        if self.enabled() && !is_set(&self.tokens_file) && !client_certificates {
            return Err(FieldError::new(
                "auth.tokens_file",
                "is required with auth.policy_file unless server.tls.client_ca_file identifies callers by certificate",
            ));
        }
        Ok(())
    }
}
