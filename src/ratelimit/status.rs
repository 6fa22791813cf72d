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

pub struct RateLimitStatus {
    service: Arc<RateLimiterService>,
    limiter: RateLimiter,
}

impl RateLimitStatus {
    pub fn new(service: Arc<RateLimiterService>, limiter: RateLimiter) -> Self {
        Self { service, limiter }
    }
}

impl status::Source for RateLimitStatus {
    fn section(&self, _: Ask) -> Section {
        let (service, limiter) = (self.service.clone(), self.limiter.clone());
        Box::pin(async move {
            let listed = service
                .list_limits(status::request(pb::ListLimitsRequest {}))
                .await;
            let limits = pj::answer("gantry.v1.ListLimitsResponse", listed);
            let mut counters = Map::new();
            let mut hot_keys = Map::new();
            let mut denied_keys = Map::new();
            for limit in limiter.limits().sorted() {
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
                let hot = service
                    .hot_keys(status::request(pb::HotKeysRequest {
                        limit: limit.name.clone(),
                        count: HOT_KEYS,
                    }))
                    .await;
                hot_keys.insert(
                    limit.name.clone(),
                    pj::answer("gantry.v1.HotKeysResponse", hot),
                );
                let denied: Vec<Value> = c
                    .denied_keys
                    .top(DENIED_KEYS)
                    .into_iter()
                    .map(|k| json!({ "key": k.key, "denied": k.denied, "error": k.error }))
                    .collect();
                denied_keys.insert(limit.name.clone(), Value::Array(denied));
            }
            json!({
                "limits": limits,
                "counters": Value::Object(counters),
                "hot_keys": Value::Object(hot_keys),
                "denied_keys": Value::Object(denied_keys),
            })
        })
    }
}
