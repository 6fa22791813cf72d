//! The limits in force: built from `[ratelimit]`, swapped whole on reload.

use std::collections::HashMap;
use std::sync::Arc;

use super::gcra::Params;
use super::metrics::{LimitCounters, RateLimitMetrics};
use crate::config::{LimitConfig, LimitScopeConfig, RateLimitConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    PerKey,
    Shared,
}

#[derive(Debug)]
pub struct Limit {
    /// Stable for the life of the process while the name stays configured;
    /// part of every bucket key.
    pub id: u32,
    pub name: String,
    pub params: Params,
    pub scope: Scope,
    pub overrides: FastMap<String, Params>,
    pub counters: LimitCounters,
}

/// Marks a bucket key that carries its own parameters (Envoy's per-descriptor
/// `limit` override): `<key>\u{1e}<rate>/<period_ns>/<burst>`. Callers of the
/// gantry API cannot send it (keys with this character are refused), so only
/// the Envoy adapter can make such buckets.
pub const OVERRIDE_MARK: char = '\u{1e}';

/// The bucket key for `key` with explicit parameters.
pub fn key_with_params(key: &str, p: Params) -> String {
    format!("{key}{OVERRIDE_MARK}{}/{}/{}", p.rate, p.period_ns, p.burst)
}

fn params_in_key(key: &str) -> Option<Params> {
    let (_, spec) = key.rsplit_once(OVERRIDE_MARK)?;
    let mut parts = spec.split('/').map(|p| p.parse::<u64>().ok());
    let (rate, period_ns, burst) = (parts.next()??, parts.next()??, parts.next()??);
    (rate > 0 && period_ns > 0 && burst > 0).then_some(Params {
        rate,
        period_ns,
        burst,
    })
}

impl Limit {
    /// The parameters for a bucket key: its own (an Envoy override), its
    /// per-key override, or the limit's.
    pub fn params_for(&self, key: &str) -> Params {
        if key.contains(OVERRIDE_MARK)
            && let Some(p) = params_in_key(key)
        {
            return p;
        }
        self.params_for_plain_key(key)
    }

    /// Parameters for a key known not to carry its own (the caller checked).
    pub fn params_for_plain_key(&self, key: &str) -> Params {
        if self.overrides.is_empty() {
            return self.params;
        }
        self.overrides.get(key).copied().unwrap_or(self.params)
    }

    /// The key of the bucket a caller's key maps to.
    pub fn bucket_key<'k>(&self, key: &'k str) -> &'k str {
        match self.scope {
            Scope::PerKey => key,
            // One bucket per limit, or per explicit parameter set.
            Scope::Shared => key.find(OVERRIDE_MARK).map_or("", |i| &key[i..]),
        }
    }
}

/// Every limit in force, by name and by id.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
pub struct LimitSet {
    by_name: FastMap<String, Arc<Limit>>,
    by_id: FastMap<u32, Arc<Limit>>,
    default: Option<Arc<Limit>>,
}

fn params(rate: u64, period: std::time::Duration, burst: Option<u64>) -> Params {
    Params {
        rate,
        period_ns: u64::try_from(period.as_nanos()).unwrap_or(u64::MAX),
        burst: burst.unwrap_or(rate),
    }
}

fn build_limit(id: u32, config: &LimitConfig, counters: LimitCounters) -> Limit {
    let overrides = config
        .overrides
        .iter()
        .map(|o| {
            let period = o.period.unwrap_or(config.period).get();
            (o.key.clone(), params(o.rate, period, o.burst))
        })
        .collect();
    Limit {
        id,
        name: config.name.clone(),
        params: params(config.rate, config.period.get(), config.burst),
        scope: match config.scope {
            LimitScopeConfig::PerKey => Scope::PerKey,
            LimitScopeConfig::Shared => Scope::Shared,
        },
        overrides,
        counters,
    }
}

impl LimitSet {
    /// Builds the set from a validated configuration, keeping the ids of
    /// limits that `previous` already had (so their buckets carry over) and
    /// drawing new ids from `next_id`.
    pub fn build(
        config: &RateLimitConfig,
        previous: Option<&LimitSet>,
        next_id: &mut u32,
        metrics: &RateLimitMetrics,
    ) -> Self {
        let mut set = LimitSet::default();
        for limit_config in &config.limits {
            let id = match previous.and_then(|p| p.by_name.get(&limit_config.name)) {
                Some(old) => old.id,
                None => {
                    let id = *next_id;
                    *next_id += 1;
                    id
                }
            };
            let limit = Arc::new(build_limit(
                id,
                limit_config,
                metrics.counters_for(&limit_config.name),
            ));
            set.by_id.insert(id, limit.clone());
            set.by_name.insert(limit_config.name.clone(), limit);
        }
        if !config.default_limit.is_empty() {
            set.default = set.by_name.get(&config.default_limit).cloned();
        }
        set
    }

    /// The limit for a name, falling back to the default limit.
    pub fn resolve(&self, name: &str) -> Option<&Arc<Limit>> {
        self.by_name.get(name).or(self.default.as_ref())
    }

    pub fn by_id(&self, id: u32) -> Option<&Arc<Limit>> {
        self.by_id.get(&id)
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Limit>> {
        self.by_name.get(name)
    }

    pub fn default_limit(&self) -> Option<&Arc<Limit>> {
        self.default.as_ref()
    }

    /// Every limit, sorted by name.
    pub fn sorted(&self) -> Vec<&Arc<Limit>> {
        let mut limits: Vec<_> = self.by_name.values().collect();
        limits.sort_by(|a, b| a.name.cmp(&b.name));
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HumanDuration, LimitOverrideConfig};

    fn limit(name: &str, rate: u64) -> LimitConfig {
        LimitConfig {
            name: name.into(),
            rate,
            period: HumanDuration::from_secs(1),
            burst: None,
            scope: LimitScopeConfig::PerKey,
            overrides: vec![],
        }
    }

    #[test]
    fn explicit_parameters_ride_in_the_key() {
        let metrics = RateLimitMetrics::default();
        let rl = RateLimitConfig {
            limits: vec![limit("api", 10)],
            ..Default::default()
        };
        let set = LimitSet::build(&rl, None, &mut 0, &metrics);
        let api = set.by_name("api").unwrap();
        let custom = Params {
            rate: 7,
            period_ns: 60_000_000_000,
            burst: 7,
        };
        let key = key_with_params("1.2.3.4", custom);
        assert_eq!(api.params_for(&key), custom);
        assert_eq!(api.params_for("1.2.3.4").rate, 10);
        assert_eq!(
            api.params_for("x\u{1e}garbage").rate,
            10,
            "an unparsable suffix is ignored"
        );
    }

    #[test]
    fn ids_survive_a_rebuild_and_new_limits_get_new_ids() {
        let metrics = RateLimitMetrics::default();
        let mut next = 0;
        let mut config = RateLimitConfig {
            limits: vec![limit("a", 1), limit("b", 2)],
            ..Default::default()
        };
        let first = LimitSet::build(&config, None, &mut next, &metrics);
        config.limits = vec![limit("b", 5), limit("c", 3)];
        let second = LimitSet::build(&config, Some(&first), &mut next, &metrics);
        assert_eq!(
            second.by_name("b").unwrap().id,
            first.by_name("b").unwrap().id
        );
        assert_ne!(
            second.by_name("c").unwrap().id,
            first.by_name("a").unwrap().id
        );
        assert!(second.by_name("a").is_none());
        assert_eq!(second.by_name("b").unwrap().params.rate, 5);
    }

    #[test]
    fn burst_defaults_to_rate_and_overrides_inherit_the_period() {
        let metrics = RateLimitMetrics::default();
        let mut config = limit("api", 10);
        config.period = HumanDuration::from_secs(60);
        config.overrides.push(LimitOverrideConfig {
            key: "vip".into(),
            rate: 100,
            period: None,
            burst: Some(150),
        });
        let rl = RateLimitConfig {
            limits: vec![config],
            default_limit: "api".into(),
            ..Default::default()
        };
        let set = LimitSet::build(&rl, None, &mut 0, &metrics);
        let api = set.resolve("api").unwrap();
        assert_eq!(api.params_for("anyone").burst, 10);
        assert_eq!(api.params_for("vip").burst, 150);
        assert_eq!(api.params_for("vip").period_ns, 60_000_000_000);
        assert_eq!(
            set.resolve("unknown").unwrap().name,
            "api",
            "falls back to the default"
        );
    }
}
