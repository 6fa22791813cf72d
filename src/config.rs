//! One `Config` struct, assembled from three sources in increasing precedence:
//! the TOML file < environment variables (`GANTRY_*`) < command-line flags.
//!
//! Loading is a pure function of those inputs (`Config::load`), so every rule —
//! precedence, unknown keys, bad values — is tested without touching the real
//! environment. Overrides are applied to the parsed TOML table *before*
//! deserialising, typed by the default value of the key they override, so an
//! error always names the key, the value and where the value came from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Environment variables that are short twins of command-line flags.
const FLAG_TWINS: &[(&str, &str)] = &[
    ("GANTRY_LISTEN", "server.listen"),
    ("GANTRY_METRICS_LISTEN", "server.metrics_listen"),
    ("GANTRY_DATA_DIR", "storage.data_dir"),
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
}

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
    /// `[ratelimit]`); 0s turns polling off (SIGHUP still reloads).
    pub config_poll_interval: HumanDuration,
    /// Which HTTP/2 server carries the gRPC services.
    pub transport: Transport,
    /// With the h2 transport: answer immediate rate-limit `Acquire`,
    /// `AcquireBatch` and Envoy's `ShouldRateLimit` from their request bytes,
    /// without tonic's per-call machinery.
    pub direct_calls: bool,
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
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Embedded sled database in `data_dir`: no other service needed.
    Sled,
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
        }
    }
}

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
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_level: "info".to_string(),
            otlp_endpoint: String::new(),
            service_name: "gantry".to_string(),
            trace_sample_ratio: 1.0,
        }
    }
}

/// `[ratelimit]`: shared token buckets. Hot-reloadable: `limits`, `envoy`,
/// `default_limit`, `max_waiters`, `envoy_response_headers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Limit used for names that are not configured; empty: unknown names are NOT_FOUND.
    pub default_limit: String,
    /// Most buckets held in memory over all limits (full buckets do not count: they are dropped).
    pub max_buckets: u64,
    /// Most callers waiting in one bucket's queue; beyond it, RESOURCE_EXHAUSTED.
    pub max_waiters: u64,
    /// Most requests in one AcquireBatch.
    pub max_batch: u64,
    /// Longest `key` (and `client`) accepted, in bytes.
    pub max_key_bytes: u64,
    /// How often idle full buckets are dropped.
    pub sweep_interval: HumanDuration,
    /// How often bucket levels are saved to the store (they are also saved at shutdown).
    pub persist_interval: HumanDuration,
    /// Add draft-03 `X-RateLimit-*` headers to Envoy ShouldRateLimit answers.
    pub envoy_response_headers: bool,
    /// Decide immediate Acquire and AcquireBatch calls on a few decision tasks that answer in
    /// groups (fewer write system calls per call); false: decide in each call.
    pub coalesce: bool,
    /// The limits, e.g. `[[ratelimit.limits]] name = "api" rate = 100 period = "1s" burst = 200`.
    pub limits: Vec<LimitConfig>,
    /// Envoy domains and how their descriptors map to limits.
    pub envoy: Vec<EnvoyDomainConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            default_limit: String::new(),
            max_buckets: 1_000_000,
            max_waiters: 1_000,
            max_batch: 1_000,
            max_key_bytes: 1024,
            sweep_interval: HumanDuration::from_secs(10),
            persist_interval: HumanDuration::from_secs(60),
            envoy_response_headers: false,
            coalesce: true,
            limits: Vec::new(),
            envoy: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScopeConfig {
    /// One bucket per key.
    #[default]
    PerKey,
    /// One bucket for every key.
    Shared,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    pub name: String,
    /// Tokens added per `period`.
    pub rate: u64,
    /// The refill period; default 1s.
    #[serde(default = "one_second")]
    pub period: HumanDuration,
    /// Bucket capacity; default `rate`.
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub scope: LimitScopeConfig,
    /// Per-key exceptions.
    #[serde(default)]
    pub overrides: Vec<LimitOverrideConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrideConfig {
    pub key: String,
    pub rate: u64,
    /// Default: the limit's period.
    #[serde(default)]
    pub period: Option<HumanDuration>,
    /// Default: the override's rate.
    #[serde(default)]
    pub burst: Option<u64>,
}

fn one_second() -> HumanDuration {
    HumanDuration::from_secs(1)
}

/// One Envoy rate-limit domain: `[[ratelimit.envoy]] domain = "edge"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyDomainConfig {
    pub domain: String,
    /// Rules tried in order; the first whose entries match a descriptor decides its limit.
    #[serde(default)]
    pub descriptors: Vec<EnvoyDescriptorConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyDescriptorConfig {
    /// The descriptor's entries, in order. An entry without `value` matches any value,
    /// and that value becomes part of the bucket key (one bucket per value).
    pub entries: Vec<EnvoyEntryConfig>,
    /// The gantry limit that applies.
    pub limit: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyEntryConfig {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// Upper bounds that keep the token arithmetic far from overflow.
pub const MAX_RATE: u64 = 1_000_000_000;
pub const MAX_BURST: u64 = 1_000_000_000_000;
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

impl RateLimitConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: String, reason: String| Err((key, reason));
        if self.max_buckets == 0 {
            return err(
                "ratelimit.max_buckets".into(),
                "must be at least 1, got 0".into(),
            );
        }
        if self.max_batch == 0 {
            return err(
                "ratelimit.max_batch".into(),
                "must be at least 1, got 0".into(),
            );
        }
        if self.max_key_bytes == 0 {
            return err(
                "ratelimit.max_key_bytes".into(),
                "must be at least 1, got 0".into(),
            );
        }
        if self.sweep_interval.get().is_zero() {
            return err(
                "ratelimit.sweep_interval".into(),
                "must be positive, got 0s".into(),
            );
        }
        if self.persist_interval.get().is_zero() {
            return err(
                "ratelimit.persist_interval".into(),
                "must be positive, got 0s".into(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, limit) in self.limits.iter().enumerate() {
            let at = format!("ratelimit.limits[{i}]");
            if limit.name.trim().is_empty() {
                return err(format!("{at}.name"), "must not be empty".into());
            }
            if limit.name.chars().any(char::is_control) {
                return err(
                    format!("{at}.name"),
                    format!("{:?} contains a control character", limit.name),
                );
            }
            if !names.insert(limit.name.as_str()) {
                return err(
                    format!("{at}.name"),
                    format!("{:?} is defined twice", limit.name),
                );
            }
            check_bucket(&at, limit.rate, limit.period.get(), limit.burst)?;
            let mut keys = std::collections::BTreeSet::new();
            for (j, o) in limit.overrides.iter().enumerate() {
                let at = format!("{at}.overrides[{j}]");
                if !keys.insert(o.key.as_str()) {
                    return err(
                        format!("{at}.key"),
                        format!("{:?} is overridden twice", o.key),
                    );
                }
                check_bucket(&at, o.rate, o.period.unwrap_or(limit.period).get(), o.burst)?;
            }
        }
        if !self.default_limit.is_empty() && !names.contains(self.default_limit.as_str()) {
            return err(
                "ratelimit.default_limit".into(),
                format!("{:?} is not a configured limit", self.default_limit),
            );
        }
        let mut domains = std::collections::BTreeSet::new();
        for (i, domain) in self.envoy.iter().enumerate() {
            let at = format!("ratelimit.envoy[{i}]");
            if domain.domain.is_empty() {
                return err(format!("{at}.domain"), "must not be empty".into());
            }
            if !domains.insert(domain.domain.as_str()) {
                return err(
                    format!("{at}.domain"),
                    format!("{:?} is defined twice", domain.domain),
                );
            }
            for (j, rule) in domain.descriptors.iter().enumerate() {
                let at = format!("{at}.descriptors[{j}]");
                if rule.entries.is_empty() {
                    return err(
                        format!("{at}.entries"),
                        "must list at least one entry".into(),
                    );
                }
                if !names.contains(rule.limit.as_str()) {
                    return err(
                        format!("{at}.limit"),
                        format!("{:?} is not a configured limit", rule.limit),
                    );
                }
            }
        }
        Ok(())
    }
}

fn check_bucket(
    at: &str,
    rate: u64,
    period: Duration,
    burst: Option<u64>,
) -> Result<(), (String, String)> {
    if rate == 0 || rate > MAX_RATE {
        return Err((
            format!("{at}.rate"),
            format!("{rate} is out of range; use 1 to {MAX_RATE}"),
        ));
    }
    if period < Duration::from_millis(1) || period > MAX_PERIOD {
        return Err((
            format!("{at}.period"),
            format!(
                "{} is out of range; use 1ms to 366 days",
                humantime::format_duration(period)
            ),
        ));
    }
    if let Some(burst) = burst
        && (burst == 0 || burst > MAX_BURST)
    {
        return Err((
            format!("{at}.burst"),
            format!("{burst} is out of range; use 1 to {MAX_BURST}"),
        ));
    }
    Ok(())
}

/// `[cache]`: the shared cache. Hot-reloadable: none yet (read at start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `periodic`: a Put is in the store when answered and on disk within
    /// `storage.flush_interval`. `sync`: a Put is answered after it is on disk
    /// (concurrent Puts share one flush).
    pub durability: Durability,
    /// Longest namespace name, in bytes.
    pub max_namespace_bytes: u64,
    /// Most namespaces; a Put into a new one beyond it is RESOURCE_EXHAUSTED
    /// (each namespace has its own series on /metrics).
    pub max_namespaces: u64,
    /// Longest key, in bytes.
    pub max_key_bytes: u64,
    /// Largest value, in bytes.
    pub max_value_bytes: u64,
    /// Most items in one GetMany or PutMany.
    pub max_batch: u64,
    /// Most entries in the in-memory hot tier.
    pub hot_entries: u64,
    /// Most value bytes in the in-memory hot tier.
    pub hot_bytes: u64,
    /// Values of at least this many bytes are gzip-compressed when that saves space.
    pub compress_min_bytes: u64,
    /// gzip level, 1 (fastest) to 9 (smallest).
    pub compression_level: u32,
    /// How often expired entries are removed from the store.
    pub sweep_interval: HumanDuration,
    /// Most expired entries removed per sweep step (between steps requests run).
    pub sweep_batch: u64,
    /// Events buffered per watched namespace before a slow watcher is told to resync.
    pub watch_buffer: u64,
    /// Most concurrent Watch streams.
    pub max_watchers: u64,
    /// Answer Get and Put calls from a few tasks in groups (fewer write system
    /// calls per call); false: each call runs on its own.
    pub coalesce: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Periodic,
            max_namespace_bytes: 128,
            max_namespaces: 1_000,
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
            max_batch: 1_000,
            hot_entries: 100_000,
            hot_bytes: 64 * 1024 * 1024,
            compress_min_bytes: 1024,
            compression_level: 1,
            sweep_interval: HumanDuration::from_secs(1),
            sweep_batch: 1_000,
            watch_buffer: 1_024,
            max_watchers: 1_000,
            coalesce: true,
        }
    }
}

impl CacheConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let at_least_one = [
            ("max_namespace_bytes", self.max_namespace_bytes),
            ("max_namespaces", self.max_namespaces),
            ("max_key_bytes", self.max_key_bytes),
            ("max_value_bytes", self.max_value_bytes),
            ("max_batch", self.max_batch),
            ("hot_entries", self.hot_entries),
            ("hot_bytes", self.hot_bytes),
            ("sweep_batch", self.sweep_batch),
            ("watch_buffer", self.watch_buffer),
            ("max_watchers", self.max_watchers),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return Err((format!("cache.{key}"), "must be at least 1, got 0".into()));
            }
        }
        if !(1..=9).contains(&self.compression_level) {
            return Err((
                "cache.compression_level".into(),
                format!("{} is out of range; use 1 to 9", self.compression_level),
            ));
        }
        if self.sweep_interval.get().is_zero() {
            return Err((
                "cache.sweep_interval".into(),
                "must be positive, got 0s".into(),
            ));
        }
        if self.watch_buffer > 1 << 20 {
            return Err((
                "cache.watch_buffer".into(),
                format!("{} is out of range; use 1 to 1048576", self.watch_buffer),
            ));
        }
        Ok(())
    }
}

/// `[query]`: SQL analysis, per-fingerprint statistics, the slow-query log
/// and N+1 detection. Read at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Longest SQL text accepted by Analyze and Record, in bytes.
    pub max_sql_bytes: u64,
    /// Most executions in one Record.
    pub max_batch: u64,
    /// Most (fingerprint, service) statistics kept; beyond it the least-called 5% are dropped.
    pub max_fingerprints: u64,
    /// Longest `service` name, in bytes.
    pub max_service_bytes: u64,
    /// Executions at least this slow go to the slow-query log.
    pub slow_threshold: HumanDuration,
    /// Most executions in the slow-query log (the oldest go first).
    pub slow_log_size: u64,
    /// Keep the raw SQL as the sample and in the slow log (it can carry
    /// personal data); false keeps the normalized text.
    pub keep_raw_samples: bool,
    /// Executions of one fingerprint in one trace (or burst) that make an N+1 report.
    pub nplus1_threshold: u64,
    /// For executions without a trace id: the window one service's burst is counted in.
    pub nplus1_window: HumanDuration,
    /// Most traces (and bursts) followed at once for N+1 detection.
    pub nplus1_max_tracked: u64,
    /// How often statistics are saved to the store (also at shutdown).
    pub persist_interval: HumanDuration,
    /// Rule ids that are not reported, e.g. `["select_star"]`.
    pub disabled_rules: Vec<String>,
    /// `long_in_list` fires above this many items.
    pub max_in_list: u64,
    /// `large_offset` fires above this OFFSET.
    pub max_offset: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            max_sql_bytes: 64 * 1024,
            max_batch: 1_000,
            max_fingerprints: 5_000,
            max_service_bytes: 256,
            slow_threshold: HumanDuration::from_secs(1),
            slow_log_size: 1_000,
            keep_raw_samples: false,
            nplus1_threshold: 5,
            nplus1_window: HumanDuration::from_secs(1),
            nplus1_max_tracked: 10_000,
            persist_interval: HumanDuration::from_secs(60),
            disabled_rules: Vec::new(),
            max_in_list: 100,
            max_offset: 1_000,
        }
    }
}

impl QueryConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let at_least_one = [
            ("max_sql_bytes", self.max_sql_bytes),
            ("max_batch", self.max_batch),
            ("max_fingerprints", self.max_fingerprints),
            ("max_service_bytes", self.max_service_bytes),
            ("slow_log_size", self.slow_log_size),
            ("nplus1_max_tracked", self.nplus1_max_tracked),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return Err((format!("query.{key}"), "must be at least 1, got 0".into()));
            }
        }
        if self.nplus1_threshold < 2 {
            return Err((
                "query.nplus1_threshold".into(),
                format!("{} is out of range; use 2 or more", self.nplus1_threshold),
            ));
        }
        if self.persist_interval.get().is_zero() {
            return Err((
                "query.persist_interval".into(),
                "must be positive, got 0s".into(),
            ));
        }
        for id in &self.disabled_rules {
            if !crate::query::rules::ALL.iter().any(|r| r.id == id) {
                return Err((
                    "query.disabled_rules".into(),
                    format!("{id:?} is not a rule id (see docs/query-rules.md)"),
                ));
            }
        }
        Ok(())
    }
}

/// `[traces]`: span ingestion (gantry's API and OTLP), recent traces,
/// per-endpoint RED metrics and forwarding. Read at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
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
    /// `http://collector:4317`; empty: no forwarding.
    pub forward_endpoint: String,
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
            forward_queue_spans: 65_536,
            forward_batch_spans: 512,
            forward_interval: HumanDuration::from_millis(200),
            forward_timeout: HumanDuration::from_secs(10),
            forward_max_backoff: HumanDuration::from_secs(30),
        }
    }
}

impl TracesConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let at_least_one = [
            ("max_batch", self.max_batch),
            ("queue_spans", self.queue_spans),
            ("max_spans", self.max_spans),
            ("max_bytes", self.max_bytes),
            ("max_name_bytes", self.max_name_bytes),
            ("max_attribute_bytes", self.max_attribute_bytes),
            ("max_endpoints", self.max_endpoints),
            ("forward_queue_spans", self.forward_queue_spans),
            ("forward_batch_spans", self.forward_batch_spans),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return Err((format!("traces.{key}"), "must be at least 1, got 0".into()));
            }
        }
        const KIB: u64 = 1024;
        if !(KIB..=1024 * 1024 * KIB).contains(&self.max_message_bytes) {
            return Err((
                "traces.max_message_bytes".into(),
                format!(
                    "{} is out of range; use 1024 (1 KiB) to 1073741824 (1 GiB)",
                    self.max_message_bytes
                ),
            ));
        }
        if self.queue_spans < self.max_batch {
            return Err((
                "traces.queue_spans".into(),
                format!(
                    "{} is below traces.max_batch ({}): a full batch could never be queued",
                    self.queue_spans, self.max_batch
                ),
            ));
        }
        for (key, value) in [
            ("retention", self.retention),
            ("forward_interval", self.forward_interval),
            ("forward_timeout", self.forward_timeout),
            ("forward_max_backoff", self.forward_max_backoff),
        ] {
            if value.get().is_zero() {
                return Err((format!("traces.{key}"), "must be positive, got 0s".into()));
            }
        }
        let endpoint = &self.forward_endpoint;
        if !endpoint.is_empty() && !endpoint.starts_with("http://") {
            return Err((
                "traces.forward_endpoint".into(),
                format!(
                    "{endpoint:?} must start with http:// (plaintext gRPC; put a TLS sidecar in front for https)"
                ),
            ));
        }
        Ok(())
    }
}

/// `[leases]`: global budgets (pools) leased out to holders. Hot-reloadable:
/// `pools`, `max_waiters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeasesConfig {
    /// `sync`: a grant or renewal is answered only after it is flushed to disk,
    /// so a crash never over-grants. `periodic`: written to the store before
    /// the answer but flushed every `storage.flush_interval`.
    pub durability: Durability,
    /// Most callers waiting in one pool's queue; beyond it, RESOURCE_EXHAUSTED.
    pub max_waiters: u64,
    /// Longest `holder` accepted, in bytes.
    pub max_holder_bytes: u64,
    /// The pools, e.g. `[[leases.pools]] name = "orders-db" capacity = 200`.
    pub pools: Vec<PoolConfig>,
}

impl Default for LeasesConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            max_waiters: 1_000,
            max_holder_bytes: 256,
            pools: Vec::new(),
        }
    }
}

/// When a write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Flushed to disk before the answer.
    #[default]
    Sync,
    /// In the store before the answer, on disk within `storage.flush_interval`.
    Periodic,
}

/// One pool: `[[leases.pools]] name = "orders-db" capacity = 200`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// Units leased out at most at any moment, over every holder.
    pub capacity: u32,
    /// Most units one holder may hold over all its leases; default: the capacity.
    #[serde(default)]
    pub max_per_holder: Option<u32>,
    /// TTL of a lease that asks for none; default 30s.
    #[serde(default = "default_lease_ttl")]
    pub default_ttl: HumanDuration,
    /// Longest TTL granted (longer asks are capped); default 10m.
    #[serde(default = "max_lease_ttl")]
    pub max_ttl: HumanDuration,
}

fn default_lease_ttl() -> HumanDuration {
    HumanDuration::from_secs(30)
}

fn max_lease_ttl() -> HumanDuration {
    HumanDuration::from_secs(600)
}

/// Longest pool name.
pub const MAX_POOL_NAME_BYTES: usize = 256;

/// Longest lease TTL a pool may allow, so expiry times stay far from overflow.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

impl LeasesConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: String, reason: String| Err((key, reason));
        if self.max_holder_bytes == 0 {
            return err(
                "leases.max_holder_bytes".into(),
                "must be at least 1, got 0".into(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            let at = format!("leases.pools[{i}]");
            if pool.name.trim().is_empty() {
                return err(format!("{at}.name"), "must not be empty".into());
            }
            if pool.name.chars().any(char::is_control) {
                return err(
                    format!("{at}.name"),
                    format!("{:?} contains a control character", pool.name),
                );
            }
            if pool.name.len() > MAX_POOL_NAME_BYTES {
                return err(
                    format!("{at}.name"),
                    format!(
                        "{} bytes is longer than the limit of {MAX_POOL_NAME_BYTES}",
                        pool.name.len()
                    ),
                );
            }
            if !names.insert(pool.name.as_str()) {
                return err(
                    format!("{at}.name"),
                    format!("{:?} is defined twice", pool.name),
                );
            }
            if pool.capacity == 0 {
                return err(format!("{at}.capacity"), "must be at least 1, got 0".into());
            }
            if let Some(max) = pool.max_per_holder
                && (max == 0 || max > pool.capacity)
            {
                return err(
                    format!("{at}.max_per_holder"),
                    format!(
                        "{max} is out of range; use 1 to the capacity ({})",
                        pool.capacity
                    ),
                );
            }
            let (default_ttl, max_ttl) = (pool.default_ttl.get(), pool.max_ttl.get());
            if max_ttl < Duration::from_millis(1) || max_ttl > MAX_LEASE_TTL {
                return err(
                    format!("{at}.max_ttl"),
                    format!("{} is out of range; use 1ms to 366 days", pool.max_ttl),
                );
            }
            if default_ttl < Duration::from_millis(1) || default_ttl > max_ttl {
                return err(
                    format!("{at}.default_ttl"),
                    format!(
                        "{} is out of range; use 1ms to max_ttl ({})",
                        pool.default_ttl, pool.max_ttl
                    ),
                );
            }
        }
        Ok(())
    }
}

/// A duration written the human way in TOML and environment variables: `"500ms"`, `"10s"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?} ({e}); write e.g. \"500ms\", \"10s\" or \"1m\""
                ))
            })
    }
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

        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                origin: blame(&origins, &key, file.map(|(p, _)| p)),
                key,
                reason,
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

    /// Rules that types alone cannot express. Returns the key and what is wrong with it.
    fn validate(&self) -> Result<(), (String, String)> {
        self.validate_core()
            .map_err(|(key, reason)| (key.to_string(), reason))?;
        self.ratelimit.validate()?;
        self.cache.validate()?;
        self.query.validate()?;
        self.traces.validate()?;
        self.leases.validate()
    }

    fn validate_core(&self) -> Result<(), (&'static str, String)> {
        const KIB: u64 = 1024;
        let s = &self.server;
        if !(KIB..=1024 * 1024 * KIB).contains(&s.max_message_bytes) {
            return Err((
                "server.max_message_bytes",
                format!(
                    "{} is out of range; use 1024 (1 KiB) to 1073741824 (1 GiB)",
                    s.max_message_bytes
                ),
            ));
        }
        if s.max_concurrent_streams == 0 {
            return Err((
                "server.max_concurrent_streams",
                "must be at least 1, got 0".into(),
            ));
        }
        if s.max_inflight == 0 {
            return Err(("server.max_inflight", "must be at least 1, got 0".into()));
        }
        if s.request_timeout.get().is_zero() {
            return Err(("server.request_timeout", "must be positive, got 0s".into()));
        }
        if s.listen == s.metrics_listen && s.listen.port() != 0 {
            return Err((
                "server.metrics_listen",
                format!("{} is the same address as server.listen", s.metrics_listen),
            ));
        }
        let st = &self.storage;
        if st.data_dir.as_os_str().is_empty() {
            return Err(("storage.data_dir", "must not be empty".into()));
        }
        if st.flush_interval.get().is_zero() {
            return Err(("storage.flush_interval", "must be positive, got 0s".into()));
        }
        let t = &self.telemetry;
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&t.log_level) {
            return Err((
                "telemetry.log_level",
                format!("{:?} is not a valid filter: {e}", t.log_level),
            ));
        }
        let endpoint_ok = t.otlp_endpoint.is_empty()
            || t.otlp_endpoint.starts_with("http://")
            || t.otlp_endpoint.starts_with("https://");
        if !endpoint_ok {
            return Err((
                "telemetry.otlp_endpoint",
                format!(
                    "{:?} must start with http:// or https:// (or be empty to turn export off)",
                    t.otlp_endpoint
                ),
            ));
        }
        if !(0.0..=1.0).contains(&t.trace_sample_ratio) {
            return Err((
                "telemetry.trace_sample_ratio",
                format!("{} is out of range; use 0.0 to 1.0", t.trace_sample_ratio),
            ));
        }
        if t.service_name.trim().is_empty() {
            return Err(("telemetry.service_name", "must not be empty".into()));
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
            if name != CONFIG_FILE_ENV {
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
        _ => return Err(invalid("cannot be set from a string".into())),
    };
    let (section, leaf) = key.split_once('.').unwrap_or(("", key));
    let target = if section.is_empty() {
        table
    } else {
        match table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => t,
            other => {
                return Err(ConfigError::Invalid {
                    key: section.to_string(),
                    reason: format!("must be a table, found {}", other.type_str()),
                    origin,
                });
            }
        }
    };
    target.insert(leaf.to_string(), value);
    Ok(())
}

/// Dotted paths of every scalar (non-table, non-array-of-tables) value.
fn scalar_paths(table: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    for (section, value) in table {
        match value {
            toml::Value::Table(inner) => {
                for (key, v) in inner {
                    if !matches!(v, toml::Value::Table(_) | toml::Value::Array(_)) {
                        out.push(format!("{section}.{key}"));
                    }
                }
            }
            _ => out.push(section.clone()),
        }
    }
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
