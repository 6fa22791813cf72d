//! The services of the API contract whose capability has not landed yet. Each
//! answers UNIMPLEMENTED with a message naming the method and the issue that
//! brings it, so generated clients can be built and wired today. A capability
//! that lands replaces its stub here with its own `service.rs`.

use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::proto::gantry::v1 as pb;

fn not_landed<T>(method: &'static str, detail: &'static str) -> Result<T, Status> {
    Err(ApiError::Unimplemented { method, detail }.into())
}

const QUERY: &str = "the query-analysis capability has not landed yet (issue #6)";

#[derive(Debug, Default, Clone, Copy)]
pub struct PendingQueryAnalyzer;

#[tonic::async_trait]
impl pb::query_analyzer_server::QueryAnalyzer for PendingQueryAnalyzer {
    async fn analyze(
        &self,
        _: Request<pb::AnalyzeRequest>,
    ) -> Result<Response<pb::AnalyzeResponse>, Status> {
        not_landed("gantry.v1.QueryAnalyzer/Analyze", QUERY)
    }
    async fn record(
        &self,
        _: Request<pb::RecordRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        not_landed("gantry.v1.QueryAnalyzer/Record", QUERY)
    }
    async fn top_queries(
        &self,
        _: Request<pb::TopQueriesRequest>,
    ) -> Result<Response<pb::TopQueriesResponse>, Status> {
        not_landed("gantry.v1.QueryAnalyzer/TopQueries", QUERY)
    }
    async fn slow_queries(
        &self,
        _: Request<pb::SlowQueriesRequest>,
    ) -> Result<Response<pb::SlowQueriesResponse>, Status> {
        not_landed("gantry.v1.QueryAnalyzer/SlowQueries", QUERY)
    }
}
