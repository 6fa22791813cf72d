//! How Envoy's rate-limit descriptors map to gantry limits, in the spirit of
//! envoyproxy/ratelimit's descriptor configuration:
//!
//! ```toml
//! [[ratelimit.envoy]]
//! domain = "edge"
//! [[ratelimit.envoy.descriptors]]
//! entries = [{ key = "remote_address" }]          # any value: one bucket per address
//! limit = "per-ip"
//! [[ratelimit.envoy.descriptors]]
//! entries = [{ key = "path", value = "/login" }, { key = "remote_address" }]
//! limit = "login"
//! ```
//!
//! A rule matches a descriptor whose entries have the same keys in the same
//! order, with equal values where the rule names one. The first matching rule
//! decides; a descriptor no rule matches is not limited (as in envoyproxy/ratelimit).

use std::collections::HashMap;

use crate::config::RateLimitConfig;

#[derive(Debug, Clone)]
struct Rule {
    entries: Vec<(String, Option<String>)>,
    limit: String,
}

#[derive(Debug, Clone, Default)]
pub struct EnvoyRules {
    domains: HashMap<String, Vec<Rule>>,
}

/// Separates the parts of a bucket key built from a descriptor.
const SEP: char = '\u{1f}';

impl EnvoyRules {
    pub fn from_config(config: &RateLimitConfig) -> Self {
        let domains = config
            .envoy
            .iter()
            .map(|d| {
                let rules = d
                    .descriptors
                    .iter()
                    .map(|r| Rule {
                        entries: r
                            .entries
                            .iter()
                            .map(|e| (e.key.clone(), e.value.clone()))
                            .collect(),
                        limit: r.limit.clone(),
                    })
                    .collect();
                (d.domain.clone(), rules)
            })
            .collect();
        Self { domains }
    }

    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The limit and bucket key for one descriptor, or None when unlimited.
    pub fn resolve(&self, domain: &str, entries: &[(&str, &str)]) -> Option<(&str, String)> {
        let rule = self.domains.get(domain)?.iter().find(|rule| {
            rule.entries.len() == entries.len()
                && rule
                    .entries
                    .iter()
                    .zip(entries)
                    .all(|((key, value), (k, v))| {
                        key == k && value.as_deref().is_none_or(|want| want == *v)
                    })
        })?;
        let mut key = String::from(domain);
        for (k, v) in entries {
            key.push(SEP);
            key.push_str(k);
            key.push('=');
            key.push_str(v);
        }
        Some((rule.limit.as_str(), key))
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

    fn rules() -> EnvoyRules {
        EnvoyRules::from_config(&RateLimitConfig {
            envoy: vec![EnvoyDomainConfig {
                domain: "edge".into(),
                descriptors: vec![
                    EnvoyDescriptorConfig {
                        entries: vec![entry("path", Some("/login")), entry("remote_address", None)],
                        limit: "login".into(),
                    },
                    EnvoyDescriptorConfig {
                        entries: vec![entry("remote_address", None)],
                        limit: "per-ip".into(),
                    },
                ],
            }],
            ..Default::default()
        })
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
}
