//! How Envoy's rate-limit descriptors map to gantry limits, in the spirit of
//! envoyproxy/ratelimit's descriptor configuration:
//!
//! ```toml
//! [[ratelimit.envoy]]
//! domain = "edge"
//! [[ratelimit.envoy.descriptors]]
//! entries = [{ key = "path", value = "/health" }]
//! unlimited = true                                  # never limited
//! [[ratelimit.envoy.descriptors]]
//! entries = [{ key = "path", value = "/api/*" }, { key = "remote_address" }]
//! limit = "api"                                     # `*`: a prefix match
//! shadow_mode = true                                # decide and count, never deny
//! [[ratelimit.envoy.descriptors]]
//! entries = [{ key = "remote_address" }]            # any value: one bucket per address
//! limit = "per-ip"
//! ```
//!
//! A rule matches a descriptor whose entries have the same keys in the same
//! order, with matching values where the rule names one. The first matching rule
//! decides; a descriptor no rule matches is not limited (as in envoyproxy/ratelimit).
//! `replaces` drops other rules' descriptors from the same request.

use std::collections::HashMap;

use super::metrics::{RateLimitMetrics, RuleCounters, RuleLabels};
use crate::config::{EnvoyDescriptorConfig, RateLimitConfig};

#[derive(Debug, Clone)]
enum ValueMatch {
    Any,
    Exact(String),
    Prefix(String),
}

impl ValueMatch {
    fn new(value: Option<&str>) -> Self {
        match value {
            None => Self::Any,
            Some(v) => match v.strip_suffix('*') {
                Some(prefix) => Self::Prefix(prefix.to_string()),
                None => Self::Exact(v.to_string()),
            },
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(want) => want == value,
            Self::Prefix(prefix) => value.starts_with(prefix.as_str()),
        }
    }
}

/// What a matching rule does with a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Decided by this gantry limit.
    Limit(String),
    /// Never limited.
    Unlimited,
}

#[derive(Debug, Clone)]
pub struct Rule {
    entries: Vec<(String, ValueMatch)>,
    pub action: Action,
    pub shadow_mode: bool,
    /// The rule's name (`name`, or one made of its entries).
    pub label: String,
    pub replaces: Vec<String>,
    pub counters: RuleCounters,
}

impl Rule {
    fn new(domain: &str, config: &EnvoyDescriptorConfig, metrics: &RateLimitMetrics) -> Self {
        let label = config.label();
        Self {
            entries: config
                .entries
                .iter()
                .map(|e| (e.key.clone(), ValueMatch::new(e.value.as_deref())))
                .collect(),
            action: match (&config.limit, config.unlimited) {
                (Some(limit), false) => Action::Limit(limit.clone()),
                // Validation allows nothing else; unlimited is the harmless reading.
                _ => Action::Unlimited,
            },
            shadow_mode: config.shadow_mode,
            counters: metrics.rule_counters(&RuleLabels {
                domain: domain.to_string(),
                rule: label.clone(),
            }),
            label,
            replaces: config.replaces.clone(),
        }
    }

    fn matches<'a>(&self, entries: impl ExactSizeIterator<Item = (&'a str, &'a str)>) -> bool {
        self.entries.len() == entries.len()
            && self
                .entries
                .iter()
                .zip(entries)
                .all(|((key, value), (k, v))| key == k && value.matches(v))
    }

    /// Counts the hits of one decision: `allowed` as the bucket decided,
    /// before shadow mode lets an over-limit descriptor through.
    pub fn count(&self, hits: u64, allowed: bool, remaining: u64, burst: u64) {
        let c = &self.counters;
        c.total_hits.inc_by(hits);
        if !allowed {
            c.over_limit.inc_by(hits);
            if self.shadow_mode {
                c.shadow_mode.inc_by(hits);
            }
        } else if remaining.saturating_mul(5) < burst {
            // envoyproxy/ratelimit's near_limit_ratio of 0.8.
            c.near_limit.inc_by(hits);
        } else {
            c.within_limit.inc_by(hits);
        }
    }
}

/// One domain's rules, in order.
#[derive(Debug, Clone, Default)]
pub struct Domain {
    rules: Vec<Rule>,
    /// Whether a rule names others it replaces: only then does a request
    /// need every descriptor's rule before deciding any.
    replaces: bool,
}

impl Domain {
    /// The rule that decides a descriptor with these entries (key, value),
    /// or None when no rule matches. No allocation: Envoy asks per call.
    pub fn rule<'a, I>(&self, entries: I) -> Option<&Rule>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
        I::IntoIter: ExactSizeIterator + Clone,
    {
        let entries = entries.into_iter();
        self.rules.iter().find(|r| r.matches(entries.clone()))
    }

    pub fn has_replaces(&self) -> bool {
        self.replaces
    }
}

#[derive(Debug, Clone, Default)]
pub struct EnvoyRules {
    domains: HashMap<String, Domain>,
}

/// Separates the parts of a bucket key built from a descriptor.
const SEP: char = '\u{1f}';

impl EnvoyRules {
    pub fn from_config(config: &RateLimitConfig, metrics: &RateLimitMetrics) -> Self {
        let domains = config
            .envoy
            .iter()
            .map(|d| {
                let rules: Vec<Rule> = d
                    .descriptors
                    .iter()
                    .map(|r| Rule::new(&d.domain, r, metrics))
                    .collect();
                let replaces = rules.iter().any(|r| !r.replaces.is_empty());
                (d.domain.clone(), Domain { rules, replaces })
            })
            .collect();
        Self { domains }
    }

    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The labels of every rule's counters.
    pub fn labels(&self) -> impl Iterator<Item = RuleLabels> + '_ {
        self.domains.iter().flat_map(|(domain, d)| {
            d.rules.iter().map(move |r| RuleLabels {
                domain: domain.clone(),
                rule: r.label.clone(),
            })
        })
    }

    /// A domain's rules; None for a domain no rule names (not limited).
    pub fn domain(&self, domain: &str) -> Option<&Domain> {
        self.domains.get(domain)
    }

    /// The rule that decides one descriptor, or None when no rule matches.
    pub fn rule(&self, domain: &str, entries: &[(&str, &str)]) -> Option<&Rule> {
        self.domain(domain)?.rule(entries.iter().copied())
    }

    /// The bucket key of a descriptor: one bucket per domain and values.
    pub fn bucket_key<'a>(
        domain: &str,
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> String {
        let mut key = String::from(domain);
        for (k, v) in entries {
            key.push(SEP);
            key.push_str(k);
            key.push('=');
            key.push_str(v);
        }
        key
    }

    /// The limit and bucket key for one descriptor, or None when unlimited.
    pub fn resolve(&self, domain: &str, entries: &[(&str, &str)]) -> Option<(&str, String)> {
        match &self.rule(domain, entries)?.action {
            Action::Limit(limit) => Some((
                limit.as_str(),
                Self::bucket_key(domain, entries.iter().copied()),
            )),
            Action::Unlimited => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EnvoyDescriptorConfig, EnvoyDomainConfig, EnvoyEntryConfig};

    fn entry(key: &str, value: Option<&str>) -> EnvoyEntryConfig {
        EnvoyEntryConfig {
            key: key.into(),
            value: value.map(String::from),
        }
    }

    fn rule(entries: Vec<EnvoyEntryConfig>, limit: &str) -> EnvoyDescriptorConfig {
        EnvoyDescriptorConfig {
            entries,
            limit: Some(limit.into()),
            ..Default::default()
        }
    }

    fn rules() -> EnvoyRules {
        EnvoyRules::from_config(
            &RateLimitConfig {
                envoy: vec![EnvoyDomainConfig {
                    domain: "edge".into(),
                    descriptors: vec![
                        EnvoyDescriptorConfig {
                            entries: vec![entry("path", Some("/health"))],
                            unlimited: true,
                            ..Default::default()
                        },
                        rule(
                            vec![entry("path", Some("/login")), entry("remote_address", None)],
                            "login",
                        ),
                        rule(
                            vec![entry("path", Some("/api/*")), entry("remote_address", None)],
                            "api",
                        ),
                        rule(vec![entry("remote_address", None)], "per-ip"),
                    ],
                }],
                ..Default::default()
            },
            &RateLimitMetrics::default(),
        )
    }

    #[test]
    fn the_first_matching_rule_decides_and_values_make_the_key() {
        let rules = rules();
        let (limit, key) = rules
            .resolve("edge", &[("remote_address", "10.0.0.1")])
            .unwrap();
        assert_eq!(limit, "per-ip");
        assert_eq!(key, "edge\u{1f}remote_address=10.0.0.1");
        let (other_limit, other_key) = rules
            .resolve("edge", &[("remote_address", "10.0.0.2")])
            .unwrap();
        assert_eq!(other_limit, "per-ip");
        assert_ne!(key, other_key, "one bucket per value");
        let (limit, _) = rules
            .resolve(
                "edge",
                &[("path", "/login"), ("remote_address", "10.0.0.1")],
            )
            .unwrap();
        assert_eq!(limit, "login");
    }

    #[test]
    fn unmatched_descriptors_and_domains_are_unlimited() {
        let rules = rules();
        assert!(
            rules
                .resolve("edge", &[("path", "/home"), ("remote_address", "1")])
                .is_none()
        );
        assert!(rules.resolve("edge", &[("user", "bob")]).is_none());
        assert!(rules.resolve("other", &[("remote_address", "1")]).is_none());
        assert!(rules.has_domain("edge"));
        assert!(!rules.has_domain("other"));
    }

    #[test]
    fn a_trailing_star_matches_by_prefix_and_each_value_has_its_bucket() {
        let rules = rules();
        let (limit, key) = rules
            .resolve("edge", &[("path", "/api/orders"), ("remote_address", "1")])
            .unwrap();
        assert_eq!(limit, "api");
        assert!(key.contains("path=/api/orders"), "{key}");
        let (_, other) = rules
            .resolve("edge", &[("path", "/api/users"), ("remote_address", "1")])
            .unwrap();
        assert_ne!(key, other);
        assert!(
            rules
                .resolve("edge", &[("path", "/apix"), ("remote_address", "1")])
                .is_none()
        );
    }

    #[test]
    fn an_unlimited_rule_matches_and_stops_the_search() {
        let rules = rules();
        let rule = rules.rule("edge", &[("path", "/health")]).unwrap();
        assert_eq!(rule.action, Action::Unlimited);
        assert_eq!(rule.label, "path_/health");
        assert!(rules.resolve("edge", &[("path", "/health")]).is_none());
    }

    #[test]
    fn hits_are_counted_in_envoys_categories() {
        let rules = rules();
        let rule = rules.rule("edge", &[("remote_address", "1")]).unwrap();
        rule.count(2, true, 50, 100); // within
        rule.count(1, true, 19, 100); // near: less than 20% left
        rule.count(3, false, 0, 100); // over
        let c = &rule.counters;
        assert_eq!(c.total_hits.get(), 6);
        assert_eq!(
            (c.within_limit.get(), c.near_limit.get(), c.over_limit.get()),
            (2, 1, 3)
        );
        assert_eq!(c.shadow_mode.get(), 0, "not a shadow rule");
    }
}
