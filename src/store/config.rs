//! `[storage]`: where state that survives a restart lives.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::values::{Checked, HumanDuration, positive};
use crate::error::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Embedded sled database in `data_dir`: no other service needed.
    Sled,
    /// Redis, Valkey or Redis Cluster (`[storage.redis]`): state shared by
    /// every replica (docs/cluster.md says which capabilities keep it there).
    Redis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// Where sled keeps its files. Only one gantry may use a directory at a time.
    pub data_dir: PathBuf,
    /// How often sled writes its buffers to disk (the loss window after a crash).
    pub flush_interval: HumanDuration,
    /// sled's page cache, in bytes.
    pub cache_capacity_bytes: u64,
    /// A data directory that fails to open because it is damaged: `fail` stops
    /// with an error; `quarantine` moves it aside, logs loudly and starts empty.
    pub on_corruption: OnCorruption,
    /// Longest wait for a flush (a `sync` Put, a lease grant, shutdown) before
    /// the store counts as unwritable and the caller gets UNAVAILABLE.
    pub flush_timeout: HumanDuration,
    /// While the store is unwritable (a full disk), how often gantry tries to
    /// bring it back (for sled: reopen it and write a probe).
    pub recover_interval: HumanDuration,
    /// Where the shared state lives when `backend = "redis"`.
    pub redis: RedisConfig,
}

/// The environment variable a Redis password is read from (never a
/// configuration key, so it shows in no configuration dump or log).
pub const REDIS_PASSWORD_ENV: &str = "GANTRY_STORAGE_REDIS_PASSWORD";

/// `[storage.redis]`: one server by URL, or a cluster by its seed nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// One Redis or Valkey server: `redis://host:port[/db]`, or `rediss://`
    /// for TLS. No password in it: use `password_file` or the environment.
    pub url: String,
    /// Redis Cluster seed nodes (`host:port`); the rest are discovered.
    pub cluster: Vec<String>,
    /// Connect to the cluster's nodes over TLS.
    pub cluster_tls: bool,
    /// The ACL user (empty: the default user).
    pub username: String,
    /// A file holding the password (a mounted Secret); trailing newlines are
    /// ignored. Otherwise GANTRY_STORAGE_REDIS_PASSWORD, or none.
    pub password_file: PathBuf,
    /// Prefix of every key gantry writes, so several gantry clusters (or
    /// other applications) can share one Redis.
    pub key_prefix: String,
    /// With `rediss://` or `cluster_tls`: CA certificates (PEM) to verify
    /// Redis with instead of the webpki roots (a private CA).
    pub ca_file: PathBuf,
    /// Client certificate (PEM) for Redis's `tls-auth-clients`; with `key_file`.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Longest wait to open a connection.
    pub connect_timeout: HumanDuration,
    /// Longest wait for a reply; a call that waited longer is UNAVAILABLE.
    pub response_timeout: HumanDuration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            cluster: Vec::new(),
            cluster_tls: false,
            username: String::new(),
            password_file: PathBuf::new(),
            key_prefix: "gantry".into(),
            ca_file: PathBuf::new(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            connect_timeout: HumanDuration::from_secs(2),
            response_timeout: HumanDuration::from_secs(1),
        }
    }
}

impl RedisConfig {
    fn validate(&self) -> Checked {
        match (self.url.is_empty(), self.cluster.is_empty()) {
            (true, true) => {
                return Err(FieldError::new(
                    "storage.redis.url",
                    "is required with storage.backend = \"redis\" (or storage.redis.cluster for Redis Cluster)",
                ));
            }
            (false, false) => {
                return Err(FieldError::new(
                    "storage.redis.cluster",
                    "cannot be set together with storage.redis.url: name one server or a cluster's seed nodes",
                ));
            }
            (false, true) => check_url(&self.url)?,
            (true, false) => {
                for (i, node) in self.cluster.iter().enumerate() {
                    check_node(&format!("storage.redis.cluster[{i}]"), node)?;
                }
            }
        }
        let set = crate::tls::is_set;
        if set(&self.cert_file) != set(&self.key_file) {
            return Err(FieldError::new(
                if set(&self.cert_file) {
                    "storage.redis.key_file"
                } else {
                    "storage.redis.cert_file"
                },
                "cert_file and key_file go together (the client certificate and its key)",
            ));
        }
        let tls = self.url.starts_with("rediss://")
            || self.url.starts_with("valkeys://")
            || (!self.cluster.is_empty() && self.cluster_tls);
        if !tls && (set(&self.ca_file) || set(&self.cert_file)) {
            return Err(FieldError::new(
                if set(&self.ca_file) {
                    "storage.redis.ca_file"
                } else {
                    "storage.redis.cert_file"
                },
                "needs TLS to Redis: a rediss:// url, or cluster_tls = true",
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return Err(FieldError::new(
                "storage.redis.key_prefix",
                "must be non-empty and free of braces (they would pick Redis Cluster hash slots)",
            ));
        }
        positive(
            "storage.redis",
            [
                ("connect_timeout", self.connect_timeout),
                ("response_timeout", self.response_timeout),
            ],
        )
    }
}

/// A server URL: redis/rediss/valkey/valkeys scheme, a host, no password.
fn check_url(url: &str) -> Checked {
    const FIELD: &str = "storage.redis.url";
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(FieldError::new(
            FIELD,
            "must look like redis://host:6379 (or rediss:// for TLS)",
        ));
    };
    if !matches!(scheme, "redis" | "rediss" | "valkey" | "valkeys") {
        return Err(FieldError::new(
            FIELD,
            format!("scheme {scheme:?} is not one of redis, rediss, valkey, valkeys"),
        ));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && userinfo.contains(':')
    {
        // Never echo the URL: it holds the secret.
        return Err(FieldError::new(
            FIELD,
            format!(
                "must not contain a password (it would show in configuration dumps and logs); put it in storage.redis.password_file or {REDIS_PASSWORD_ENV}"
            ),
        ));
    }
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err(FieldError::new(FIELD, "names no host"));
    }
    Ok(())
}

/// A cluster seed node: `host:port`.
fn check_node(field: &str, node: &str) -> Checked {
    match node.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(FieldError::new(
            field.to_string(),
            format!("{node:?} is not host:port"),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCorruption {
    #[default]
    Fail,
    Quarantine,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Sled,
            data_dir: PathBuf::from("./data"),
            flush_interval: HumanDuration::from_millis(500),
            cache_capacity_bytes: 128 * 1024 * 1024,
            on_corruption: OnCorruption::Fail,
            flush_timeout: HumanDuration::from_secs(5),
            recover_interval: HumanDuration::from_secs(1),
            redis: RedisConfig::default(),
        }
    }
}

impl StorageConfig {
    pub(crate) fn validate(&self) -> Checked {
        if self.data_dir.as_os_str().is_empty() {
            return Err(FieldError::empty("storage.data_dir"));
        }
        if self.backend == StorageBackend::Redis {
            self.redis.validate()?;
        }
        positive(
            "storage",
            [
                ("flush_interval", self.flush_interval),
                ("flush_timeout", self.flush_timeout),
                ("recover_interval", self.recover_interval),
            ],
        )
    }
}
