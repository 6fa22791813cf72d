//! One `Config` struct, assembled from three sources in increasing precedence:
//! the TOML file < environment variables (`GANTRY_*`) < command-line flags.
//! This module is the loader; each section's struct and its validation live
//! beside what it configures (`ratelimit/config.rs`, …), shared value types
//! and checks in `values.rs`.
//!
//! Loading is a pure function of those inputs (`Config::load`), so every rule —
//! precedence, unknown keys, bad values — is tested without touching the real
//! environment. Overrides are applied to the parsed TOML table *before*
//! deserialising, typed by the default value of the key they override, so an
//! error always names the key, the value and where the value came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod server;
pub mod values;

// Each section lives beside what it configures; they are all reachable here.
pub use crate::cache::config::CacheConfig;
pub use crate::leases::config::{LeasesConfig, MAX_LEASE_TTL, MAX_POOL_NAME_BYTES, PoolConfig};
pub use crate::query::config::QueryConfig;
pub use crate::ratelimit::config::{
    EnvoyDescriptorConfig, EnvoyDomainConfig, EnvoyEntryConfig, EnvoyResponseHeaders, LimitConfig,
    LimitOverrideConfig, LimitScopeConfig, MAX_BURST, MAX_PERIOD, MAX_RATE, RateLimitConfig,
    StoreFailure, UncleanRestart,
};
pub use crate::store::config::{OnCorruption, RedisConfig, StorageBackend, StorageConfig};
pub use crate::telemetry::config::{LogFormat, TelemetryConfig};
pub use crate::traces::config::TracesConfig;
pub use server::{ServerConfig, Transport};
pub use values::{Durability, HumanDuration};

/// Environment variables that are short twins of command-line flags.
const FLAG_TWINS: &[(&str, &str)] = &[
    ("GANTRY_LISTEN", "server.listen"),
    ("GANTRY_METRICS_LISTEN", "server.metrics_listen"),
    ("GANTRY_DATA_DIR", "storage.data_dir"),
    ("GANTRY_OTLP_HTTP_LISTEN", "traces.otlp_http_listen"),
];

/// The environment variable naming the configuration file (twin of `--config`).
pub const CONFIG_FILE_ENV: &str = "GANTRY_CONFIG";

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub telemetry: TelemetryConfig,
    pub ratelimit: RateLimitConfig,
    pub cache: CacheConfig,
    pub query: QueryConfig,
    pub traces: TracesConfig,
    pub leases: LeasesConfig,
    pub auth: crate::auth::AuthConfig,
}

/// Where a configuration value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "the default"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(name) => write!(f, "flag --{name}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{key}: {reason} (from {origin})")]
    Invalid {
        key: String,
        reason: String,
        origin: Origin,
    },
    #[error("both {first} and {second} are set; keep one")]
    Conflict { first: String, second: String },
}

/// Command-line flags that override configuration keys (`None`: not given).
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub data_dir: Option<String>,
    pub otlp_http_listen: Option<String>,
}

impl FlagOverrides {
    fn entries(&self) -> Vec<(&'static str, &'static str, &str)> {
        let mut out = Vec::new();
        if let Some(v) = &self.listen {
            out.push(("listen", "server.listen", v.as_str()));
        }
        if let Some(v) = &self.metrics_listen {
            out.push(("metrics-listen", "server.metrics_listen", v.as_str()));
        }
        if let Some(v) = &self.data_dir {
            out.push(("data-dir", "storage.data_dir", v.as_str()));
        }
        if let Some(v) = &self.otlp_http_listen {
            out.push(("otlp-http-listen", "traces.otlp_http_listen", v.as_str()));
        }
        out
    }
}

/// A loaded configuration plus what the loader noticed but did not refuse.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// e.g. unknown `GANTRY_*` environment variables (ignored, since Kubernetes
    /// injects `GANTRY_SERVICE_HOST` and friends for a Service named gantry).
    pub warnings: Vec<String>,
}

impl Config {
    /// Assembles the configuration from the file's text (if any), the
    /// environment and the flags, then validates it.
    pub fn load(
        file: Option<(&Path, &str)>,
        env: &BTreeMap<String, String>,
        flags: &FlagOverrides,
    ) -> Result<Loaded, ConfigError> {
        let mut origins: BTreeMap<String, Origin> = BTreeMap::new();
        let mut table = match file {
            Some((path, text)) => {
                let table: toml::Table =
                    text.parse()
                        .map_err(|e: toml::de::Error| ConfigError::Syntax {
                            path: path.to_path_buf(),
                            message: e.to_string().trim_end().to_string(),
                        })?;
                // Keys from the file are blamed on the file unless overridden below.
                for key in scalar_paths(&table) {
                    origins.insert(key, Origin::File(path.to_path_buf()));
                }
                table
            }
            None => toml::Table::new(),
        };

        let defaults = default_table();
        let mut warnings = Vec::new();

        for (key, name, value) in env_overrides(env, &defaults, &mut warnings)? {
            set_override(
                &mut table,
                &defaults,
                &key,
                &value,
                Origin::Env(name.clone()),
            )?;
            origins.insert(key, Origin::Env(name));
        }
        for (flag, key, value) in flags.entries() {
            let origin = Origin::Flag(flag.to_string());
            set_override(&mut table, &defaults, key, value, origin.clone())?;
            origins.insert(key.to_string(), origin);
        }

        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table.clone()))
            .map_err(|err| {
                let key = err.path().to_string();
                let origin = blame(&origins, &key, file.map(|(p, _)| p));
                let value = lookup(&table, &key)
                    .map(|v| format!(" (value {v})"))
                    .unwrap_or_default();
                ConfigError::Invalid {
                    reason: format!("{}{value}", err.inner().to_string().trim_end()),
                    key,
                    origin,
                }
            })?;

        config.validate().map_err(|e| ConfigError::Invalid {
            origin: blame(&origins, &e.field, file.map(|(p, _)| p)),
            key: e.field,
            reason: e.reason,
        })?;
        Ok(Loaded { config, warnings })
    }

    /// Reads and checks a file on its own, as `gantry check-config` does.
    pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
        let text = read_file(path)?;
        Ok(Self::load(
            Some((path, &text)),
            &BTreeMap::new(),
            &FlagOverrides::default(),
        )?
        .config)
    }

    /// Rules that types alone cannot express: the first key that is wrong.
    fn validate(&self) -> values::Checked {
        self.server.validate()?;
        self.storage.validate()?;
        self.telemetry.validate()?;
        self.ratelimit.validate()?;
        self.cache.validate()?;
        self.query.validate()?;
        self.traces.validate()?;
        self.leases.validate()?;
        self.auth.validate(self.server.tls.mutual())?;
        self.check_value_fits_a_response()
    }

    /// A cache value must fit in a Get's response after gzip (which can grow
    /// an incompressible value slightly) with room for the other fields;
    /// otherwise a value could be stored and never read back.
    fn check_value_fits_a_response(&self) -> values::Checked {
        let value = self.cache.max_value_bytes;
        let needed = value.saturating_add(value / 1000).saturating_add(4096);
        if needed > self.server.max_message_bytes {
            return Err(crate::error::FieldError::new(
                "cache.max_value_bytes",
                format!(
                    "{value} does not fit in a response of server.max_message_bytes ({}) with gzip's overhead and the other fields; keep it at most {}",
                    self.server.max_message_bytes,
                    self.server.max_message_bytes.saturating_sub(4096) * 1000 / 1001
                ),
            ));
        }
        Ok(())
    }

    /// Every scalar key with its default value, in file order: the source of
    /// docs/configuration.md and of the environment variable names.
    pub fn documented_keys() -> Vec<(String, String, String)> {
        let defaults = default_table();
        scalar_paths(&defaults)
            .into_iter()
            .map(|key| {
                let value = lookup(&defaults, &key)
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                let env = env_name(&key);
                (key, value, env)
            })
            .collect()
    }
}

/// Reads a configuration file, naming it in the error.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn default_table() -> toml::Table {
    match toml::Table::try_from(Config::default()) {
        Ok(table) => table,
        // The defaults are plain structs of strings and numbers: serialising
        // them cannot fail, and a test (`defaults_serialise`) proves it.
        Err(e) => unreachable!("default configuration does not serialise: {e}"),
    }
}

/// `server.max_message_bytes` -> `GANTRY_SERVER_MAX_MESSAGE_BYTES`.
fn env_name(key: &str) -> String {
    format!("GANTRY_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Collects `(key, variable name, value)` for every recognised `GANTRY_*` variable.
fn env_overrides(
    env: &BTreeMap<String, String>,
    defaults: &toml::Table,
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, String, String)>, ConfigError> {
    let by_name: BTreeMap<String, String> = scalar_paths(defaults)
        .into_iter()
        .map(|key| (env_name(&key), key))
        .collect();
    let mut out: Vec<(String, String, String)> = Vec::new();
    for (name, value) in env.iter().filter(|(n, _)| n.starts_with("GANTRY_")) {
        let key = if let Some((_, key)) = FLAG_TWINS.iter().find(|(twin, _)| twin == name) {
            key.to_string()
        } else if let Some(key) = by_name.get(name) {
            key.clone()
        } else {
            if name != CONFIG_FILE_ENV && name != crate::store::config::REDIS_PASSWORD_ENV {
                warnings.push(format!("ignoring unknown environment variable {name}"));
            }
            continue;
        };
        if let Some((_, other, _)) = out.iter().find(|(k, _, _)| *k == key) {
            return Err(ConfigError::Conflict {
                first: other.clone(),
                second: name.clone(),
            });
        }
        out.push((key, name.clone(), value.clone()));
    }
    Ok(out)
}

/// Writes a string override into the table, converted to the type of the key's default.
fn set_override(
    table: &mut toml::Table,
    defaults: &toml::Table,
    key: &str,
    raw: &str,
    origin: Origin,
) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        key: key.to_string(),
        reason,
        origin: origin.clone(),
    };
    let default = lookup(defaults, key).ok_or_else(|| invalid("is not a known key".into()))?;
    let value = match default {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| invalid(format!("{raw:?} is not a whole number")))?,
        toml::Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| invalid(format!("{raw:?} is not a number")))?,
        toml::Value::Boolean(_) => match raw.trim() {
            "true" | "1" => toml::Value::Boolean(true),
            "false" | "0" => toml::Value::Boolean(false),
            _ => return Err(invalid(format!("{raw:?} is not true or false"))),
        },
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_string()))
                .collect(),
        ),
        _ => return Err(invalid("cannot be set from a string".into())),
    };
    let (sections, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let mut target = table;
    let mut walked = String::new();
    for section in sections.split('.').filter(|s| !s.is_empty()) {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(section);
        target = match target
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => t,
            other => {
                return Err(ConfigError::Invalid {
                    key: walked,
                    reason: format!("must be a table, found {}", other.type_str()),
                    origin,
                });
            }
        };
    }
    target.insert(leaf.to_string(), value);
    Ok(())
}

/// Keys whose value is a list of strings, set from the environment as a
/// comma-separated list.
const LIST_KEYS: &[&str] = &["storage.redis.cluster", "auth.open_services"];

/// Dotted paths of every scalar (non-table, non-array-of-tables) value, at
/// any depth (`storage.redis.url`), plus the string lists of [`LIST_KEYS`].
fn scalar_paths(table: &toml::Table) -> Vec<String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => walk(&path, inner, out),
                toml::Value::Array(_) if LIST_KEYS.contains(&path.as_str()) => out.push(path),
                toml::Value::Array(_) => {}
                _ => out.push(path),
            }
        }
    }
    let mut out = Vec::new();
    walk("", table, &mut out);
    out
}

fn lookup<'t>(table: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
    let mut parts = key.split('.');
    let mut current = table.get(parts.next()?)?;
    for part in parts {
        current = match current {
            toml::Value::Table(t) => t.get(part)?,
            toml::Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// The most specific recorded origin for a key: the key itself, then its parents.
fn blame(origins: &BTreeMap<String, Origin>, key: &str, file: Option<&Path>) -> Origin {
    let mut probe = key;
    loop {
        if let Some(origin) = origins.get(probe) {
            return origin.clone();
        }
        match probe.rsplit_once('.') {
            Some((parent, _)) => probe = parent,
            None => break,
        }
    }
    file.map_or(Origin::Default, |p| Origin::File(p.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        Config::load(
            Some((Path::new("gantry.toml"), text)),
            &BTreeMap::new(),
            &FlagOverrides::default(),
        )
        .map(|l| l.config)
    }

    #[test]
    fn defaults_serialise() {
        let table = default_table();
        assert!(table.contains_key("server"));
        assert_eq!(
            lookup(&table, "server.listen").and_then(|v| v.as_str()),
            Some("127.0.0.1:7070")
        );
    }

    #[test]
    fn empty_file_and_no_file_give_the_defaults() {
        assert_eq!(load_text("").unwrap(), Config::default());
        let loaded = Config::load(None, &BTreeMap::new(), &FlagOverrides::default()).unwrap();
        assert_eq!(loaded.config, Config::default());
        assert_eq!(loaded.config.storage.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn every_section_is_accepted_empty() {
        let text =
            "[server]\n[storage]\n[telemetry]\n[ratelimit]\n[cache]\n[query]\n[traces]\n[leases]\n";
        assert_eq!(load_text(text).unwrap(), Config::default());
    }

    #[test]
    fn file_values_are_read() {
        let config = load_text(
            "[server]\nlisten = \"0.0.0.0:8080\"\nshutdown_grace = \"3s\"\n[telemetry]\nlog_format = \"json\"\n",
        )
        .unwrap();
        assert_eq!(config.server.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.server.shutdown_grace.get(), Duration::from_secs(3));
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let file = "[server]\nlisten = \"127.0.0.1:1001\"\nmetrics_listen = \"127.0.0.1:2001\"\n[storage]\ndata_dir = \"/file\"\n";
        let environment = env(&[
            ("GANTRY_LISTEN", "127.0.0.1:1002"),
            ("GANTRY_SERVER_METRICS_LISTEN", "127.0.0.1:2002"),
        ]);
        let flags = FlagOverrides {
            listen: Some("127.0.0.1:1003".into()),
            ..Default::default()
        };
        let config = Config::load(Some((Path::new("f.toml"), file)), &environment, &flags)
            .unwrap()
            .config;
        assert_eq!(config.server.listen.port(), 1003, "flag beats env and file");
        assert_eq!(config.server.metrics_listen.port(), 2002, "env beats file");
        assert_eq!(
            config.storage.data_dir,
            PathBuf::from("/file"),
            "file beats default"
        );
    }

    #[test]
    fn env_values_are_typed_by_their_key() {
        let environment = env(&[
            ("GANTRY_SERVER_MAX_MESSAGE_BYTES", "8388608"),
            ("GANTRY_TELEMETRY_TRACE_SAMPLE_RATIO", "0.25"),
            ("GANTRY_SERVER_SHUTDOWN_GRACE", "250ms"),
        ]);
        let config = Config::load(None, &environment, &FlagOverrides::default())
            .unwrap()
            .config;
        assert_eq!(config.server.max_message_bytes, 8 * 1024 * 1024);
        assert_eq!(config.telemetry.trace_sample_ratio, 0.25);
        assert_eq!(
            config.server.shutdown_grace.get(),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn redis_settings_have_environment_twins_at_any_depth() {
        let environment = env(&[
            ("GANTRY_STORAGE_BACKEND", "redis"),
            (
                "GANTRY_STORAGE_REDIS_CLUSTER",
                "10.0.0.1:6379, 10.0.0.2:6379,",
            ),
            ("GANTRY_STORAGE_REDIS_KEY_PREFIX", "edge"),
            (
                "GANTRY_STORAGE_REDIS_PASSWORD",
                "not a key, never a warning",
            ),
        ]);
        let loaded = Config::load(None, &environment, &FlagOverrides::default()).unwrap();
        let redis = &loaded.config.storage.redis;
        assert_eq!(loaded.config.storage.backend, StorageBackend::Redis);
        assert_eq!(redis.cluster, vec!["10.0.0.1:6379", "10.0.0.2:6379"]);
        assert_eq!(redis.key_prefix, "edge");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let documented: Vec<String> = Config::documented_keys().into_iter().map(|k| k.2).collect();
        assert!(documented.contains(&"GANTRY_STORAGE_REDIS_URL".to_string()));
    }

    #[test]
    fn redis_settings_are_checked() {
        let refused = |text: &str, words: &[&str]| {
            let e = load_text(text).unwrap_err().to_string();
            for w in words {
                assert!(e.contains(w), "{w:?} in {e}");
            }
            e
        };
        refused(
            "[storage]\nbackend = \"redis\"\n",
            &["storage.redis.url", "is required"],
        );
        let e = refused(
            "[storage]\nbackend = \"redis\"\n[storage.redis]\nurl = \"redis://app:s3cret@10.0.0.1:6379\"\n",
            &["password_file", "GANTRY_STORAGE_REDIS_PASSWORD"],
        );
        assert!(!e.contains("s3cret"), "the secret is never echoed: {e}");
        refused(
            "[storage]\nbackend = \"redis\"\n[storage.redis]\nurl = \"http://x\"\n",
            &["scheme \"http\""],
        );
        refused(
            "[storage]\nbackend = \"redis\"\n[storage.redis]\ncluster = [\"a:1\", \"b\"]\n",
            &["storage.redis.cluster[1]", "host:port"],
        );
        refused(
            "[storage]\nbackend = \"redis\"\n[storage.redis]\nurl = \"redis://a:1\"\ncluster = [\"a:1\"]\n",
            &["cannot be set together"],
        );
        let ok = load_text(
            "[storage]\nbackend = \"redis\"\n[storage.redis]\nurl = \"rediss://gantry@redis.internal:6380/2\"\n",
        )
        .unwrap();
        assert_eq!(
            ok.storage.redis.url,
            "rediss://gantry@redis.internal:6380/2"
        );
        // Redis settings are not checked while the backend is sled.
        assert!(load_text("[storage.redis]\nurl = \"nonsense\"\n").is_ok());
    }

    #[test]
    fn unknown_env_variables_are_warned_about_not_fatal() {
        let environment = env(&[("GANTRY_SERVICE_HOST", "10.0.0.1"), ("GANTRY_CONFIG", "x")]);
        let loaded = Config::load(None, &environment, &FlagOverrides::default()).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("GANTRY_SERVICE_HOST"));
    }

    #[test]
    fn twin_and_full_env_names_conflict() {
        let environment = env(&[
            ("GANTRY_LISTEN", "127.0.0.1:1"),
            ("GANTRY_SERVER_LISTEN", "127.0.0.1:2"),
        ]);
        let err = Config::load(None, &environment, &FlagOverrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("GANTRY_LISTEN") && text.contains("GANTRY_SERVER_LISTEN"),
            "{text}"
        );
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let err = load_text("[server]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("lisen"), "{text}");
        assert!(text.contains("gantry.toml"), "{text}");
    }

    #[test]
    fn unknown_section_is_named() {
        let err = load_text("[sever]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("sever"), "{err}");
    }

    #[test]
    fn bad_address_names_key_and_value() {
        let err = load_text("[server]\nlisten = \"localhost\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("server.listen:"), "{text}");
        assert!(text.contains("localhost"), "{text}");
    }

    #[test]
    fn bad_type_names_key_and_value() {
        let err = load_text("[server]\nmax_inflight = \"lots\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("server.max_inflight") && text.contains("lots"),
            "{text}"
        );
    }

    #[test]
    fn bad_duration_names_key_and_value() {
        let err = load_text("[server]\nshutdown_grace = \"ten seconds\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("server.shutdown_grace") && text.contains("ten seconds"),
            "{text}"
        );
    }

    #[test]
    fn bad_enum_names_key_and_value() {
        let err = load_text("[telemetry]\nlog_format = \"xml\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("telemetry.log_format") && text.contains("xml"),
            "{text}"
        );
        let err = load_text("[storage]\nbackend = \"redis\"\n").unwrap_err();
        assert!(err.to_string().contains("redis"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = load_text("[server\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }));
        assert!(err.to_string().contains("gantry.toml"));
    }

    #[test]
    fn range_rules_name_key_and_value() {
        let cases = [
            (
                "[server]\nmax_message_bytes = 10\n",
                "server.max_message_bytes",
                "10",
            ),
            (
                "[server]\nmax_concurrent_streams = 0\n",
                "server.max_concurrent_streams",
                "0",
            ),
            ("[server]\nmax_inflight = 0\n", "server.max_inflight", "0"),
            (
                "[server]\nrequest_timeout = \"0s\"\n",
                "server.request_timeout",
                "0s",
            ),
            ("[storage]\ndata_dir = \"\"\n", "storage.data_dir", "empty"),
            (
                "[storage]\nflush_interval = \"0ms\"\n",
                "storage.flush_interval",
                "0s",
            ),
            (
                "[telemetry]\nlog_level = \"info,=[\"\n",
                "telemetry.log_level",
                "info,=[",
            ),
            (
                "[telemetry]\notlp_endpoint = \"collector:4317\"\n",
                "telemetry.otlp_endpoint",
                "collector:4317",
            ),
            (
                "[telemetry]\ntrace_sample_ratio = 1.5\n",
                "telemetry.trace_sample_ratio",
                "1.5",
            ),
            (
                "[telemetry]\nservice_name = \" \"\n",
                "telemetry.service_name",
                "empty",
            ),
            (
                "[server]\nlisten = \"127.0.0.1:9000\"\nmetrics_listen = \"127.0.0.1:9000\"\n",
                "server.metrics_listen",
                "127.0.0.1:9000",
            ),
        ];
        for (text, key, value) in cases {
            let err = load_text(text).expect_err(text).to_string();
            assert!(err.starts_with(key), "{text}: {err}");
            assert!(err.contains(value), "{text}: {err}");
            assert!(err.contains("gantry.toml"), "{text}: {err}");
        }
    }

    #[test]
    fn envoy_rules_and_header_formats_are_read_and_checked() {
        let limits = "[[ratelimit.limits]]\nname = \"api\"\nrate = 1\n\n[[ratelimit.envoy]]\ndomain = \"edge\"\n";
        let rule = |body: &str| format!("{limits}[[ratelimit.envoy.descriptors]]\n{body}\n");
        let ok = load_text(&format!(
            "{}[[ratelimit.envoy.descriptors]]\nentries = [{{ key = \"ip\" }}]\nlimit = \"api\"\nreplaces = [\"path_/health\"]\nshadow_mode = true\n",
            rule("entries = [{ key = \"path\", value = \"/health\" }]\nunlimited = true")
        ))
        .unwrap();
        let rules = &ok.ratelimit.envoy[0].descriptors;
        assert!(rules[0].unlimited && rules[1].shadow_mode);
        assert_eq!(rules[0].label(), "path_/health");
        let cases = [
            (
                rule("entries = [{ key = \"ip\" }]"),
                "ratelimit.envoy[0].descriptors[0].limit",
                "unlimited = true",
            ),
            (
                rule("entries = [{ key = \"ip\" }]\nlimit = \"api\"\nunlimited = true"),
                "ratelimit.envoy[0].descriptors[0].unlimited",
                "names no limit",
            ),
            (
                rule("entries = [{ key = \"p\", value = \"/a*b\" }]\nlimit = \"api\""),
                "ratelimit.envoy[0].descriptors[0].entries[0].value",
                "only at the end",
            ),
            (
                rule("entries = [{ key = \"ip\" }]\nlimit = \"api\"\nreplaces = [\"nope\"]"),
                "ratelimit.envoy[0].descriptors[0].replaces[0]",
                "\"nope\" is not another rule",
            ),
            (
                format!(
                    "{}{}",
                    rule("entries = [{ key = \"ip\" }]\nlimit = \"api\""),
                    "[[ratelimit.envoy.descriptors]]\nentries = [{ key = \"ip\" }]\nlimit = \"api\"\n"
                ),
                "ratelimit.envoy[0].descriptors[1].name",
                "give one a `name`",
            ),
            (
                "[ratelimit]\nenvoy_response_headers = \"draft99\"\n".to_string(),
                "ratelimit.envoy_response_headers",
                "\"draft99\" is not a header format",
            ),
        ];
        for (text, key, reason) in cases {
            let err = load_text(&text).expect_err(&text).to_string();
            assert!(err.starts_with(key), "{text}: {err}");
            assert!(err.contains(reason), "{text}: {err}");
        }
        // The format by name, the old boolean, and its environment twin.
        for (text, want) in [
            ("true", EnvoyResponseHeaders::Draft03),
            ("false", EnvoyResponseHeaders::Off),
            ("\"ietf\"", EnvoyResponseHeaders::Ietf),
            ("\"draft03\"", EnvoyResponseHeaders::Draft03),
        ] {
            let c = load_text(&format!("[ratelimit]\nenvoy_response_headers = {text}\n")).unwrap();
            assert_eq!(c.ratelimit.envoy_response_headers, want, "{text}");
        }
        for (value, want) in [
            ("true", EnvoyResponseHeaders::Draft03),
            ("ietf", EnvoyResponseHeaders::Ietf),
        ] {
            let c = Config::load(
                None,
                &env(&[("GANTRY_RATELIMIT_ENVOY_RESPONSE_HEADERS", value)]),
                &FlagOverrides::default(),
            )
            .unwrap()
            .config;
            assert_eq!(c.ratelimit.envoy_response_headers, want, "{value}");
        }
    }

    #[test]
    fn lease_pools_are_read_and_checked() {
        let config = load_text(
            "[leases]\ndurability = \"periodic\"\n[[leases.pools]]\nname = \"orders-db\"\ncapacity = 200\nmax_per_holder = 20\n",
        )
        .unwrap();
        assert_eq!(config.leases.durability, Durability::Periodic);
        let pool = &config.leases.pools[0];
        assert_eq!((pool.capacity, pool.max_per_holder), (200, Some(20)));
        assert_eq!(pool.default_ttl.get(), Duration::from_secs(30));
        assert_eq!(pool.max_ttl.get(), Duration::from_secs(600));

        let pool = |body: &str| format!("[[leases.pools]]\nname = \"p\"\n{body}\n");
        let cases = [
            (pool("capacity = 0"), "leases.pools[0].capacity", "0"),
            (
                pool("capacity = 5\nmax_per_holder = 6"),
                "leases.pools[0].max_per_holder",
                "6",
            ),
            (
                pool("capacity = 5\ndefault_ttl = \"20m\""),
                "leases.pools[0].default_ttl",
                "20m",
            ),
            (
                pool("capacity = 5\nmax_ttl = \"0s\""),
                "leases.pools[0].max_ttl",
                "0s",
            ),
            (
                format!("{}{}", pool("capacity = 1"), pool("capacity = 2")),
                "leases.pools[1].name",
                "\"p\"",
            ),
            (
                "[[leases.pools]]\nname = \"\"\ncapacity = 1\n".to_string(),
                "leases.pools[0].name",
                "empty",
            ),
            (
                "[leases]\nmax_holder_bytes = 0\n".to_string(),
                "leases.max_holder_bytes",
                "0",
            ),
        ];
        for (text, key, value) in cases {
            let err = load_text(&text).expect_err(&text).to_string();
            assert!(err.starts_with(key), "{text}: {err}");
            assert!(err.contains(value), "{text}: {err}");
        }
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let environment = env(&[("GANTRY_SERVER_MAX_INFLIGHT", "many")]);
        let err = Config::load(None, &environment, &FlagOverrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("server.max_inflight"), "{text}");
        assert!(text.contains("many"), "{text}");
        assert!(text.contains("GANTRY_SERVER_MAX_INFLIGHT"), "{text}");

        let environment = env(&[("GANTRY_LISTEN", "nowhere")]);
        let err = Config::load(None, &environment, &FlagOverrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("GANTRY_LISTEN") && text.contains("nowhere"),
            "{text}"
        );
    }

    #[test]
    fn bad_flag_values_name_the_flag() {
        let flags = FlagOverrides {
            metrics_listen: Some("9464".into()),
            ..Default::default()
        };
        let err = Config::load(None, &BTreeMap::new(), &flags).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--metrics-listen") && text.contains("9464"),
            "{text}"
        );
    }

    #[test]
    fn env_blame_beats_file_blame() {
        let environment = env(&[("GANTRY_SERVER_MAX_MESSAGE_BYTES", "5")]);
        let err = Config::load(
            Some((Path::new("f.toml"), "[server]\nmax_message_bytes = 9000\n")),
            &environment,
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("GANTRY_SERVER_MAX_MESSAGE_BYTES"),
            "{err}"
        );
    }

    #[test]
    fn documented_keys_cover_every_section_key() {
        let keys = Config::documented_keys();
        let names: Vec<&str> = keys.iter().map(|(k, _, _)| k.as_str()).collect();
        assert!(names.contains(&"server.listen"));
        assert!(names.contains(&"storage.data_dir"));
        assert!(names.contains(&"telemetry.otlp_endpoint"));
        let (_, _, env) = keys
            .iter()
            .find(|(k, _, _)| k == "server.max_message_bytes")
            .unwrap();
        assert_eq!(env, "GANTRY_SERVER_MAX_MESSAGE_BYTES");
    }
}
