//! The cache's part of the status page: Stats over every namespace (hits,
//! misses, entries, bytes, evictions, expirations) and the open watches;
//! the page draws the hit ratio over time from the hit and miss counts.

use std::sync::Arc;

use serde_json::json;

use super::CacheEngine;
use super::service::CacheService;
use crate::proto::gantry::v1 as pb;
use crate::proto::gantry::v1::cache_server::Cache as _;
use crate::status::{self, Ask, Section, json as pj};

/// The section, over the service and the engine it serves.
pub fn source(service: Arc<CacheService>, engine: CacheEngine) -> Arc<dyn status::Source> {
    Arc::new(move |_: Ask| -> Section {
        let (service, engine) = (service.clone(), engine.clone());
        Box::pin(async move {
            let stats = service
                .stats(status::request(pb::CacheStatsRequest::default()))
                .await;
            json!({
                "stats": pj::answer("gantry.v1.CacheStats", stats),
                "watchers": engine.watchers(),
            })
        })
    })
}
