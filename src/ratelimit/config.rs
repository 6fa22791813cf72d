//! `[ratelimit]`: the limits, Envoy's domains, and the limiter's bounds.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::values::{Checked, HumanDuration, at_least_one, positive, unique_name};
use crate::error::FieldError;

/// `[ratelimit]`: shared token buckets. Hot-reloadable: `limits`, `envoy`,
/// `default_limit`, `max_waiters`, `max_key_bytes`, `max_batch`,
/// `envoy_response_headers`; the rest is read at start.
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
    /// After an unclean stop (kill -9, a crash): `spent` takes every bucket
    /// as emptied at the previous run's last heartbeat, so a crash loop hands
    /// out no fresh bursts; `saved` restores the last periodic snapshot.
    pub unclean_restart: UncleanRestart,
    /// Rate-limit headers Envoy adds to its responses: `off`, `draft03`
    /// (`X-RateLimit-Limit/Remaining/Reset`) or `ietf` (the current IETF
    /// draft's `RateLimit-Policy` and `RateLimit`). `true` means `draft03`.
    pub envoy_response_headers: EnvoyResponseHeaders,
    /// Decide immediate Acquire and AcquireBatch calls on a few decision tasks that answer in
    /// groups (fewer write system calls per call); false: decide in each call.
    pub coalesce: bool,
    /// With `storage.backend = "redis"`, a decision Redis cannot make:
    /// `closed` answers UNAVAILABLE (Envoy's `failure_mode_deny` then
    /// decides for Envoy); `open` allows it. Either way it is counted in
    /// `gantry_ratelimit_store_failures_total`.
    pub store_failure: StoreFailure,
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
            unclean_restart: UncleanRestart::Spent,
            envoy_response_headers: EnvoyResponseHeaders::Off,
            coalesce: true,
            store_failure: StoreFailure::Closed,
            limits: Vec::new(),
            envoy: Vec::new(),
        }
    }
}

/// Which rate-limit headers gantry asks Envoy to add to its responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvoyResponseHeaders {
    #[default]
    Off,
    /// draft-ietf-httpapi-ratelimit-headers-03: `X-RateLimit-Limit: 5, 5;w=10`,
    /// `X-RateLimit-Remaining`, `X-RateLimit-Reset` (what Envoy's own
    /// `enable_x_ratelimit_headers` sends).
    Draft03,
    /// The current IETF draft (draft-ietf-httpapi-ratelimit-headers-10):
    /// `RateLimit-Policy: "name";q=5;w=10` and `RateLimit: "name";r=0;t=2`.
    Ietf,
}

impl<'de> Deserialize<'de> for EnvoyResponseHeaders {
    /// Also `true`/`false`, as this key was a boolean before (and an
    /// environment variable's "true" arrives as a string).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(true) => Ok(Self::Draft03),
            Raw::Flag(false) => Ok(Self::Off),
            Raw::Name(name) => match name.as_str() {
                "off" | "false" => Ok(Self::Off),
                "draft03" | "true" => Ok(Self::Draft03),
                "ietf" => Ok(Self::Ietf),
                other => Err(serde::de::Error::custom(format!(
                    "{other:?} is not a header format; use \"off\", \"draft03\" or \"ietf\""
                ))),
            },
        }
    }
}

/// What a rate-limit decision is when the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreFailure {
    /// UNAVAILABLE: the caller (or Envoy's `failure_mode_deny`) decides.
    #[default]
    Closed,
    /// Allowed, counted: traffic flows unlimited until the store is back.
    Open,
}

/// What bucket levels are after an unclean stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UncleanRestart {
    /// Every bucket was empty at the last heartbeat (at most ~1.5 s before
    /// the crash) and has refilled since.
    #[default]
    Spent,
    /// As the last periodic snapshot saved them (up to `persist_interval` old).
    Saved,
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

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyDescriptorConfig {
    /// The rule's name: its label on the per-rule counters and what
    /// `replaces` refers to. Default: its entries, as `path_/login.remote_address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The descriptor's entries, in order. An entry without `value` matches any value,
    /// and that value becomes part of the bucket key (one bucket per value);
    /// a value ending in `*` matches every value that starts with the rest.
    pub entries: Vec<EnvoyEntryConfig>,
    /// The gantry limit that applies; every rule names one unless it is `unlimited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Matching descriptors are never limited (and no later rule is tried).
    #[serde(default)]
    pub unlimited: bool,
    /// Decide and count, never deny: the answer is OK even when the bucket
    /// is spent (counted in `gantry_ratelimit_envoy_shadow_mode_total`).
    #[serde(default)]
    pub shadow_mode: bool,
    /// Names of rules (in this domain) that do not apply to a request in
    /// which this rule matches a descriptor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyEntryConfig {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
}

impl EnvoyDescriptorConfig {
    /// The label of the rule's counters and the name `replaces` uses.
    pub fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|e| match &e.value {
                Some(v) => format!("{}_{v}", e.key),
                None => e.key.clone(),
            })
            .collect();
        parts.join(".")
    }
}

/// Longest limit name, configured or asked for.
pub const MAX_LIMIT_NAME_BYTES: usize = 256;

/// Upper bounds that keep the token arithmetic far from overflow.
pub const MAX_RATE: u64 = 1_000_000_000;
pub const MAX_BURST: u64 = 1_000_000_000_000;
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

impl RateLimitConfig {
    pub(crate) fn validate(&self) -> Checked {
        at_least_one(
            "ratelimit",
            [
                ("max_buckets", self.max_buckets),
                ("max_batch", self.max_batch),
                ("max_key_bytes", self.max_key_bytes),
            ],
        )?;
        positive(
            "ratelimit",
            [
                ("sweep_interval", self.sweep_interval),
                ("persist_interval", self.persist_interval),
            ],
        )?;
        let mut names = BTreeSet::new();
        for (i, limit) in self.limits.iter().enumerate() {
            let at = format!("ratelimit.limits[{i}]");
            unique_name(&format!("{at}.name"), &limit.name, &mut names)?;
            if limit.name.len() > MAX_LIMIT_NAME_BYTES {
                return Err(FieldError::too_long(
                    format!("{at}.name"),
                    limit.name.len(),
                    MAX_LIMIT_NAME_BYTES,
                    "limit names",
                ));
            }
            check_bucket(&at, limit.rate, limit.period.get(), limit.burst)?;
            let mut keys = BTreeSet::new();
            for (j, o) in limit.overrides.iter().enumerate() {
                let at = format!("{at}.overrides[{j}]");
                if !keys.insert(o.key.as_str()) {
                    return Err(FieldError::new(
                        format!("{at}.key"),
                        format!("{:?} is overridden twice", o.key),
                    ));
                }
                check_bucket(&at, o.rate, o.period.unwrap_or(limit.period).get(), o.burst)?;
            }
        }
        let configured = |key: String, name: &str| {
            if names.contains(name) {
                Ok(())
            } else {
                Err(FieldError::new(
                    key,
                    format!("{name:?} is not a configured limit"),
                ))
            }
        };
        if !self.default_limit.is_empty() {
            configured("ratelimit.default_limit".into(), &self.default_limit)?;
        }
        let mut domains = BTreeSet::new();
        for (i, domain) in self.envoy.iter().enumerate() {
            let at = format!("ratelimit.envoy[{i}]");
            if domain.domain.is_empty() {
                return Err(FieldError::empty(format!("{at}.domain")));
            }
            if !domains.insert(domain.domain.as_str()) {
                return Err(FieldError::new(
                    format!("{at}.domain"),
                    format!("{:?} is defined twice", domain.domain),
                ));
            }
            let labels: BTreeSet<String> = domain.descriptors.iter().map(|r| r.label()).collect();
            let mut seen = BTreeSet::new();
            for (j, rule) in domain.descriptors.iter().enumerate() {
                let at = format!("{at}.descriptors[{j}]");
                if rule.entries.is_empty() {
                    return Err(FieldError::new(
                        format!("{at}.entries"),
                        "must list at least one entry",
                    ));
                }
                for (k, entry) in rule.entries.iter().enumerate() {
                    if let Some(value) = &entry.value
                        && value.trim_end_matches('*').contains('*')
                    {
                        return Err(FieldError::new(
                            format!("{at}.entries[{k}].value"),
                            format!("{value:?}: `*` is allowed only at the end (a prefix match)"),
                        ));
                    }
                }
                if !seen.insert(rule.label()) {
                    return Err(FieldError::new(
                        format!("{at}.name"),
                        format!(
                            "{:?} names two rules of this domain; give one a `name`",
                            rule.label()
                        ),
                    ));
                }
                match (&rule.limit, rule.unlimited) {
                    (Some(limit), false) => configured(format!("{at}.limit"), limit)?,
                    (None, true) => {}
                    (Some(_), true) => {
                        return Err(FieldError::new(
                            format!("{at}.unlimited"),
                            "an unlimited rule names no limit",
                        ));
                    }
                    (None, false) => {
                        return Err(FieldError::new(
                            format!("{at}.limit"),
                            "name a configured limit, or set unlimited = true",
                        ));
                    }
                }
                for (k, name) in rule.replaces.iter().enumerate() {
                    if !labels.contains(name) || *name == rule.label() {
                        return Err(FieldError::new(
                            format!("{at}.replaces[{k}]"),
                            format!("{name:?} is not another rule of domain {:?}", domain.domain),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_bucket(at: &str, rate: u64, period: Duration, burst: Option<u64>) -> Checked {
    if rate == 0 || rate > MAX_RATE {
        return Err(FieldError::new(
            format!("{at}.rate"),
            format!("{rate} is out of range; use 1 to {MAX_RATE}"),
        ));
    }
    if period < Duration::from_millis(1) || period > MAX_PERIOD {
        return Err(FieldError::new(
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
        return Err(FieldError::new(
            format!("{at}.burst"),
            format!("{burst} is out of range; use 1 to {MAX_BURST}"),
        ));
    }
    Ok(())
}
