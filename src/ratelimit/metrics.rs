//! Rate-limit series on /metrics, labelled by limit (bounded: only configured
//! limits get series).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::telemetry::metrics::latency_histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub limit: String,
    pub result: &'static str,
}

/// Metric handles of one limit, created once so the hot path does no label lookups.
#[derive(Debug, Clone)]
pub struct LimitCounters {
    pub allowed: Counter,
    pub denied: Counter,
    pub tokens_granted: Counter,
    pub wait_seconds: Histogram,
    pub waiting: Gauge,
    pub buckets: Gauge,
    pub table_full: Counter,
    /// The keys this limit denies most (the status page's list).
    pub denied_keys: std::sync::Arc<super::denials::DeniedKeys>,
}

/// One Envoy descriptor rule (`[[ratelimit.envoy.descriptors]]`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub domain: String,
    pub rule: String,
}

/// Hits (descriptor tokens) a rule decided, in envoyproxy/ratelimit's
/// categories: every hit counts in `total_hits` and in exactly one of
/// `over_limit`, `near_limit` (allowed, over 80% of the bucket used) and
/// `within_limit`; a shadow-mode rule's over-limit hits count in
/// `over_limit` and `shadow_mode` (and were allowed).
#[derive(Debug, Clone, Default)]
pub struct RuleCounters {
    pub total_hits: Counter,
    pub over_limit: Counter,
    pub near_limit: Counter,
    pub within_limit: Counter,
    pub shadow_mode: Counter,
}

#[derive(Clone, Debug, Default)]
struct RuleFamilies {
    total_hits: Family<RuleLabels, Counter>,
    over_limit: Family<RuleLabels, Counter>,
    near_limit: Family<RuleLabels, Counter>,
    within_limit: Family<RuleLabels, Counter>,
    shadow_mode: Family<RuleLabels, Counter>,
}

#[derive(Clone, Debug)]
pub struct RateLimitMetrics {
    rules: RuleFamilies,
    decisions: Family<DecisionLabels, Counter>,
    tokens: Family<LimitLabel, Counter>,
    wait: Family<LimitLabel, Histogram>,
    waiting: Family<LimitLabel, Gauge>,
    buckets: Family<LimitLabel, Gauge>,
    table_full: Family<LimitLabel, Counter>,
    pub buckets_total: Gauge,
    store_failures: Family<FailureLabel, Counter>,
    /// Per limit name, kept across reloads like the series.
    denied_keys: std::sync::Arc<
        parking_lot::Mutex<
            std::collections::HashMap<String, std::sync::Arc<super::denials::DeniedKeys>>,
        >,
    >,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabel {
    /// `allowed` (ratelimit.store_failure = "open") or `unavailable`.
    pub answer: &'static str,
}

impl Default for RateLimitMetrics {
    fn default() -> Self {
        Self {
            decisions: Family::default(),
            tokens: Family::default(),
            wait: Family::new_with_constructor(latency_histogram),
            waiting: Family::default(),
            buckets: Family::default(),
            table_full: Family::default(),
            buckets_total: Gauge::default(),
            store_failures: Family::default(),
            rules: RuleFamilies::default(),
            denied_keys: Default::default(),
        }
    }
}

impl RateLimitMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "gantry_ratelimit_decisions",
            "Acquire decisions by limit and result (allowed, denied)",
            m.decisions.clone(),
        );
        registry.register(
            "gantry_ratelimit_tokens_granted",
            "Tokens handed out",
            m.tokens.clone(),
        );
        registry.register(
            "gantry_ratelimit_wait_seconds",
            "Time callers with max_wait spent in a bucket's queue",
            m.wait.clone(),
        );
        registry.register(
            "gantry_ratelimit_waiting",
            "Callers waiting in bucket queues now",
            m.waiting.clone(),
        );
        registry.register(
            "gantry_ratelimit_buckets",
            "Buckets held in memory (full buckets are dropped), as of the last sweep",
            m.buckets.clone(),
        );
        registry.register(
            "gantry_ratelimit_table_full",
            "New keys refused because ratelimit.max_buckets was reached",
            m.table_full.clone(),
        );
        registry.register(
            "gantry_ratelimit_buckets_total",
            "Buckets held in memory over all limits",
            m.buckets_total.clone(),
        );
        registry.register(
            "gantry_ratelimit_store_failures",
            "Decisions the shared store (storage.backend = \"redis\") could not make, by the answer given (ratelimit.store_failure)",
            m.store_failures.clone(),
        );
        let rules = [
            ("total_hits", "every hit", &m.rules.total_hits),
            (
                "over_limit",
                "hits over the limit (denied, or allowed in shadow mode)",
                &m.rules.over_limit,
            ),
            (
                "near_limit",
                "allowed hits that left less than 20% of the bucket",
                &m.rules.near_limit,
            ),
            (
                "within_limit",
                "allowed hits that left at least 20% of the bucket",
                &m.rules.within_limit,
            ),
            (
                "shadow_mode",
                "hits over the limit that a shadow_mode rule allowed",
                &m.rules.shadow_mode,
            ),
        ];
        for (name, what, family) in rules {
            registry.register(
                format!("gantry_ratelimit_envoy_{name}"),
                format!("Envoy descriptor hits per rule: {what}"),
                family.clone(),
            );
        }
        m
    }

    /// The counters of one Envoy descriptor rule.
    pub fn rule_counters(&self, labels: &RuleLabels) -> RuleCounters {
        let f = &self.rules;
        // One statement per handle (see counters_for).
        let total_hits = f.total_hits.get_or_create(labels).clone();
        let over_limit = f.over_limit.get_or_create(labels).clone();
        let near_limit = f.near_limit.get_or_create(labels).clone();
        let within_limit = f.within_limit.get_or_create(labels).clone();
        let shadow_mode = f.shadow_mode.get_or_create(labels).clone();
        RuleCounters {
            total_hits,
            over_limit,
            near_limit,
            within_limit,
            shadow_mode,
        }
    }

    /// Drops the series of a rule that is no longer configured.
    pub fn forget_rule(&self, labels: &RuleLabels) {
        let f = &self.rules;
        for family in [
            &f.total_hits,
            &f.over_limit,
            &f.near_limit,
            &f.within_limit,
            &f.shadow_mode,
        ] {
            family.remove(labels);
        }
    }

    /// Counts a decision the shared store could not make.
    pub fn store_failure(&self, answer: &'static str) {
        self.store_failures
            .get_or_create(&FailureLabel { answer })
            .inc();
    }

    pub fn counters_for(&self, limit: &str) -> LimitCounters {
        let label = LimitLabel {
            limit: limit.to_string(),
        };
        let decision = |result| DecisionLabels {
            limit: limit.to_string(),
            result,
        };
        // One statement per handle: get_or_create returns a read guard, and a
        // second call on the same family while it lives would deadlock.
        let allowed = self.decisions.get_or_create(&decision("allowed")).clone();
        let denied = self.decisions.get_or_create(&decision("denied")).clone();
        let tokens_granted = self.tokens.get_or_create(&label).clone();
        let wait_seconds = self.wait.get_or_create(&label).clone();
        let waiting = self.waiting.get_or_create(&label).clone();
        let buckets = self.buckets.get_or_create(&label).clone();
        let table_full = self.table_full.get_or_create(&label).clone();
        let denied_keys = self
            .denied_keys
            .lock()
            .entry(limit.to_string())
            .or_default()
            .clone();
        LimitCounters {
            denied_keys,
            allowed,
            denied,
            tokens_granted,
            wait_seconds,
            waiting,
            buckets,
            table_full,
        }
    }

    /// Drops the series of a limit that is no longer configured.
    pub fn forget(&self, limit: &str) {
        let label = LimitLabel {
            limit: limit.to_string(),
        };
        for result in ["allowed", "denied"] {
            self.decisions.remove(&DecisionLabels {
                limit: limit.to_string(),
                result,
            });
        }
        self.tokens.remove(&label);
        self.wait.remove(&label);
        self.waiting.remove(&label);
        self.buckets.remove(&label);
        self.table_full.remove(&label);
    }
}
