//! The rate limiter's part of the status page: the limits (ListLimits), each
//! limit's hottest keys (HotKeys), and this replica's decision counters (from
//! which the page draws allowed and denied rates) and most denied keys.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::RateLimiter;
use super::service::RateLimiterService;
use crate::proto::gantry::v1 as pb;
use crate::proto::gantry::v1::rate_limiter_server::RateLimiter as _;
use crate::status::{self, Ask, Section, json as pj};

/// Keys listed per limit.
const HOT_KEYS: u32 = 5;
const DENIED_KEYS: usize = 5;
/// Limits whose hot keys are listed: HotKeys scans every bucket of the
/// table (or of Redis), so a snapshot asks it for the few limits that deny
/// most (then those with waiters), not for each of hundreds of limits.
const HOT_KEY_LIMITS: usize = 3;

/// The section, over the service and the limiter it serves.
pub fn source(service: Arc<RateLimiterService>, limiter: RateLimiter) -> Arc<dyn status::Source> {
    Arc::new(move |_: Ask| -> Section {
        let (service, limiter) = (service.clone(), limiter.clone());
        Box::pin(async move {
            let listed = service
                .list_limits(status::request(pb::ListLimitsRequest {}))
                .await;
            let limits = pj::answer("gantry.v1.ListLimitsResponse", listed);
            let mut counters = Map::new();
            let mut hot_keys = Map::new();
            let mut denied_keys = Map::new();
            let set = limiter.limits();
            let sorted = set.sorted();
            for limit in &sorted {
                let c = &limit.counters;
                counters.insert(
                    limit.name.clone(),
                    json!({
                        "allowed": c.allowed.get(),
                        "denied": c.denied.get(),
                        "tokens_granted": c.tokens_granted.get(),
                        "waiting": c.waiting.get(),
                    }),
                );
                let denied: Vec<Value> = c
                    .denied_keys
                    .top(DENIED_KEYS)
                    .into_iter()
                    .map(|k| json!({ "key": k.key, "denied": k.denied, "error": k.error }))
                    .collect();
                denied_keys.insert(limit.name.clone(), Value::Array(denied));
            }
            for name in busiest(sorted.iter().map(|l| {
                (
                    l.name.as_str(),
                    l.counters.denied.get(),
                    l.counters.waiting.get(),
                )
            })) {
                let hot = service
                    .hot_keys(status::request(pb::HotKeysRequest {
                        limit: name.to_string(),
                        count: HOT_KEYS,
                    }))
                    .await;
                hot_keys.insert(
                    name.to_string(),
                    pj::answer("gantry.v1.HotKeysResponse", hot),
                );
            }
            json!({
                "limits": limits,
                "counters": Value::Object(counters),
                "hot_keys": Value::Object(hot_keys),
                "denied_keys": Value::Object(denied_keys),
            })
        })
    })
}

/// The limits worth a HotKeys scan: those that denied most, then those with
/// callers waiting; at most [`HOT_KEY_LIMITS`], none that is idle.
fn busiest<'a>(limits: impl Iterator<Item = (&'a str, u64, i64)>) -> Vec<&'a str> {
    let mut active: Vec<(&str, u64, i64)> = limits
        .filter(|&(_, denied, waiting)| denied > 0 || waiting > 0)
        .collect();
    active.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
    active
        .into_iter()
        .take(HOT_KEY_LIMITS)
        .map(|(name, _, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_keys_are_asked_for_the_few_limits_that_deny_or_queue_most() {
        let limits = [
            ("idle", 0, 0),
            ("api", 50, 0),
            ("login", 900, 0),
            ("exports", 0, 3),
            ("search", 10, 0),
        ];
        assert_eq!(busiest(limits.into_iter()), vec!["login", "api", "search"]);
        let quiet = [("idle", 0, 0), ("exports", 0, 3)];
        assert_eq!(busiest(quiet.into_iter()), vec!["exports"]);
    }
}
