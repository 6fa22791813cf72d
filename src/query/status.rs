//! Query analysis's part of the status page: the fingerprints with the most
//! total time (TopQueries, with p50/p99 and N+1 batching hints) and the
//! latest slow executions (SlowQueries).

use std::sync::Arc;

use serde_json::json;

use super::service::QueryService;
use crate::proto::gantry::v1 as pb;
use crate::proto::gantry::v1::query_analyzer_server::QueryAnalyzer as _;
use crate::status::{self, Ask, Section, json as pj};

/// Rows in each list.
const ROWS: u32 = 10;

/// The section, over the service.
pub fn source(service: Arc<QueryService>) -> Arc<dyn status::Source> {
    Arc::new(move |_: Ask| -> Section {
        let service = service.clone();
        Box::pin(async move {
            let top = service
                .top_queries(status::request(pb::TopQueriesRequest {
                    limit: ROWS,
                    ..Default::default()
                }))
                .await;
            let slow = service
                .slow_queries(status::request(pb::SlowQueriesRequest {
                    limit: ROWS,
                    ..Default::default()
                }))
                .await;
            json!({
                "top": pj::answer("gantry.v1.TopQueriesResponse", top),
                "slow": pj::answer("gantry.v1.SlowQueriesResponse", slow),
            })
        })
    })
}
