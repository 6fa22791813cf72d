//! `gantry.v1.QueryAnalyzer` over gRPC: checks every input against its
//! limit, converts, and asks the engine.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};

use prost::Message;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::analyze::Analysis;
use super::dialect::Dialect;
use super::rules::{Finding, Severity};
use super::stats::{Entry, Key, Order};
use super::{Execution, QueryEngine, QueryError};
use crate::config::QueryConfig;
use crate::error::{ApiError, FieldError};
use crate::grpc::{duration_from_pb, duration_to_pb};
use crate::proto::gantry::v1 as pb;
use crate::routes::{Answer, Begin, DirectUnary, encode_within};
use crate::store::fleet::FleetSnapshots;

/// TopQueries answers at most this many fingerprints, whatever `limit` says.
const MAX_TOP: usize = 1_000;
/// At most this many rejection lines go back to the caller.
const MAX_ERROR_LINES: usize = 100;

pub struct QueryService {
    engine: QueryEngine,
    /// The other replicas' statistics (`storage.backend = "redis"`).
    fleet: Option<FleetSnapshots>,
    max_sql_bytes: usize,
    max_batch: usize,
    max_service_bytes: usize,
}

impl QueryService {
    pub fn new(engine: QueryEngine, config: &QueryConfig) -> Self {
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Self {
            engine,
            fleet: None,
            max_sql_bytes: size(config.max_sql_bytes),
            max_batch: size(config.max_batch),
            max_service_bytes: size(config.max_service_bytes),
        }
    }

    /// TopQueries and SlowQueries answer for the whole fleet.
    pub fn with_fleet(mut self, fleet: FleetSnapshots) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// The other replicas' snapshots; none without Redis.
    async fn others(&self) -> Result<Vec<Vec<u8>>, Status> {
        match &self.fleet {
            None => Ok(Vec::new()),
            Some(fleet) => fleet
                .others()
                .await
                .map_err(|e| Status::from(ApiError::from(e))),
        }
    }

    fn dialect(name: &str, field: &str) -> Result<Dialect, QueryError> {
        Dialect::parse(name).ok_or_else(|| {
            let reason = format!("{name:?} is not a dialect; use {}", Dialect::NAMES);
            QueryError::Invalid(FieldError::new(field, reason))
        })
    }

    fn check_sql(&self, sql: &str, field: &str) -> Result<(), QueryError> {
        if sql.len() > self.max_sql_bytes {
            let (len, max) = (sql.len(), self.max_sql_bytes);
            return Err(FieldError::too_long(field, len, max, "query.max_sql_bytes").into());
        }
        Ok(())
    }

    /// One execution, checked; the error names the field.
    fn execution(&self, e: pb::QueryExecution, now_ms: u64) -> Result<Execution, QueryError> {
        let invalid =
            |field: &str, reason: String| QueryError::Invalid(FieldError::new(field, reason));
        let dialect = Self::dialect(&e.dialect, "dialect")?;
        let (sql, fingerprint) = match (e.sql.is_empty(), e.fingerprint.is_empty()) {
            (false, _) => {
                self.check_sql(&e.sql, "sql")?;
                (Some(e.sql), None)
            }
            (true, false) => {
                let fp = e.fingerprint.to_ascii_lowercase();
                if fp.len() != 16 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        "fingerprint",
                        format!("{:?} is not 16 hex digits", e.fingerprint),
                    ));
                }
                (None, Some(fp))
            }
            (true, true) => {
                return Err(invalid(
                    "sql",
                    "either sql or fingerprint is required".into(),
                ));
            }
        };
        let duration = duration_from_pb("duration", e.duration.as_ref())?;
        if e.service.len() > self.max_service_bytes {
            return Err(invalid(
                "service",
                format!(
                    "{} bytes is longer than the limit of {} (query.max_service_bytes)",
                    e.service.len(),
                    self.max_service_bytes
                ),
            ));
        }
        let trace_id = match e.trace_id.as_str() {
            "" => None,
            t if t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(t.to_ascii_lowercase())
            }
            t => return Err(invalid("trace_id", format!("{t:?} is not 32 hex digits"))),
        };
        let time_ms = match &e.time {
            None => now_ms,
            Some(t) if t.seconds >= 0 && (0..1_000_000_000).contains(&t.nanos) => {
                (t.seconds as u64).saturating_mul(1_000) + (t.nanos as u64) / 1_000_000
            }
            Some(t) => {
                return Err(invalid(
                    "time",
                    format!("{}s {}ns is not a valid time", t.seconds, t.nanos),
                ));
            }
        };
        Ok(Execution {
            sql,
            fingerprint,
            dialect,
            duration,
            rows: e.rows,
            service: e.service,
            trace_id,
            time_ms,
        })
    }
}

fn now_ms() -> u64 {
    crate::wallclock::now_ms()
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

fn severity(s: Severity) -> i32 {
    match s {
        Severity::Info => pb::Severity::Info as i32,
        Severity::Warning => pb::Severity::Warning as i32,
        Severity::Error => pb::Severity::Error as i32,
        Severity::Critical => pb::Severity::Critical as i32,
    }
}

fn analyze_response(analysis: &Analysis, dialect: Dialect) -> pb::AnalyzeResponse {
    tracing::debug!(
        dialect = dialect.name(),
        fingerprint = %analysis.fingerprinted.fingerprint,
        kind = analysis.statement_kind,
        findings = analysis.findings.len(),
        "query.analyze"
    );
    pb::AnalyzeResponse {
        fingerprint: analysis.fingerprinted.fingerprint.clone(),
        normalized: analysis.fingerprinted.normalized.clone(),
        statement_kind: analysis.statement_kind.to_string(),
        tables: analysis.tables.clone(),
        findings: analysis.findings.iter().cloned().map(finding).collect(),
    }
}

/// `Analyze` answered by the transport from the request bytes with exactly
/// the service path's answer: a text analyzed before at once, a new one
/// parsed in a task of its own (so the connection's other calls do not wait
/// behind a parse, and one connection's parses spread over the cores). An
/// invalid request goes the service path, which words the refusal.
pub struct DirectAnalyze {
    engine: QueryEngine,
    max_sql_bytes: usize,
    /// The response limit the service path enforces.
    max_message_bytes: usize,
}

impl DirectAnalyze {
    pub fn new(engine: QueryEngine, config: &QueryConfig, max_message_bytes: usize) -> Self {
        Self {
            engine,
            max_sql_bytes: usize::try_from(config.max_sql_bytes).unwrap_or(usize::MAX),
            max_message_bytes,
        }
    }
}

impl DirectUnary for DirectAnalyze {
    fn answer(&self, message: &[u8], begin: Begin<'_>) -> Option<Answer> {
        let r = pb::AnalyzeRequest::decode(message).ok()?;
        let dialect = Dialect::parse(&r.dialect)?;
        if r.sql.len() > self.max_sql_bytes {
            return None;
        }
        let remembered = self.engine.remembered(&r.sql, dialect);
        if let Err(shed) = begin() {
            return Some(Answer::Now(Err(shed)));
        }
        let max_message_bytes = self.max_message_bytes;
        if let Some(analysis) = remembered {
            return Some(Answer::Now(encode_within(
                &analyze_response(&analysis, dialect),
                max_message_bytes,
            )));
        }
        let engine = self.engine.clone();
        let parse = tokio::spawn(
            async move {
                let analysis = engine.analyze_new(&r.sql, dialect);
                encode_within(&analyze_response(&analysis, dialect), max_message_bytes)
            }
            .in_current_span(),
        );
        // A call abandoned (deadline, reset) before its task runs never
        // parses; a parse under way runs to its end (it is one poll).
        let parse = AbortOnDropHandle::new(parse);
        Some(Answer::Later(Box::pin(async move {
            parse.await.unwrap_or_else(|e| {
                Err(ApiError::Internal(format!("analyzing the statement failed: {e}")).into())
            })
        })))
    }
}

fn finding(f: Finding) -> pb::Finding {
    pb::Finding {
        rule_id: f.rule_id.to_string(),
        severity: severity(f.severity),
        message: f.message,
        snippet: f.snippet,
    }
}

fn order(value: i32) -> Result<Order, QueryError> {
    Ok(match pb::QueryOrder::try_from(value) {
        Ok(pb::QueryOrder::Unspecified | pb::QueryOrder::TotalTime) => Order::TotalTime,
        Ok(pb::QueryOrder::MeanTime) => Order::MeanTime,
        Ok(pb::QueryOrder::P99) => Order::P99,
        Ok(pb::QueryOrder::Calls) => Order::Calls,
        Ok(pb::QueryOrder::Rows) => Order::Rows,
        Err(_) => {
            let reason = format!("{value} is not a QueryOrder");
            return Err(QueryError::Invalid(FieldError::new("order_by", reason)));
        }
    })
}

fn stats(key: Key, e: Entry) -> pb::QueryStats {
    let batching = (e.batching.occurrences > 0).then(|| pb::BatchingHint {
        max_per_trace: e.batching.max_per_trace,
        occurrences: e.batching.occurrences,
        suggestion: "the same statement runs many times per request (N+1): fetch the rows in one query with an IN list or a JOIN".into(),
    });
    pb::QueryStats {
        fingerprint: key.fingerprint,
        service: key.service,
        calls: e.calls,
        total: Some(duration_to_pb(e.total())),
        mean: Some(duration_to_pb(e.mean())),
        min: Some(duration_to_pb(Duration::from_nanos(if e.calls == 0 {
            0
        } else {
            e.min_nanos
        }))),
        max: Some(duration_to_pb(Duration::from_nanos(e.max_nanos))),
        stddev: Some(duration_to_pb(e.stddev())),
        p50: Some(duration_to_pb(e.percentile(0.50))),
        p95: Some(duration_to_pb(e.percentile(0.95))),
        p99: Some(duration_to_pb(e.percentile(0.99))),
        rows: e.rows,
        first_seen: Some(timestamp(e.first_seen_ms)),
        last_seen: Some(timestamp(e.last_seen_ms)),
        sample: e.sample,
        batching,
    }
}

#[tonic::async_trait]
impl pb::query_analyzer_server::QueryAnalyzer for QueryService {
    async fn analyze(
        &self,
        request: Request<pb::AnalyzeRequest>,
    ) -> Result<Response<pb::AnalyzeResponse>, Status> {
        let r = request.into_inner();
        let dialect = Self::dialect(&r.dialect, "dialect").map_err(ApiError::from)?;
        self.check_sql(&r.sql, "sql").map_err(ApiError::from)?;
        let analysis = self.engine.analyze(&r.sql, dialect);
        Ok(Response::new(analyze_response(&analysis, dialect)))
    }

    async fn record(
        &self,
        request: Request<pb::RecordRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        let executions = request.into_inner().executions;
        if executions.len() > self.max_batch {
            let reason = format!(
                "{} executions in one request, more than query.max_batch ({})",
                executions.len(),
                self.max_batch
            );
            return Err(ApiError::invalid("executions", reason).into());
        }
        let now = now_ms();
        let mut valid = Vec::with_capacity(executions.len());
        let mut errors = Vec::new();
        let mut rejected = 0u32;
        for (i, e) in executions.into_iter().enumerate() {
            match self.execution(e, now) {
                Ok(e) => valid.push(e),
                Err(err) => {
                    rejected += 1;
                    if errors.len() < MAX_ERROR_LINES {
                        errors.push(format!("execution {i}: {err}"));
                    }
                }
            }
        }
        let accepted = valid.len() as u32;
        self.engine.metrics().rejected.inc_by(u64::from(rejected));
        let engine = self.engine.clone();
        // Fingerprinting a large batch is CPU work: keep it off the async workers.
        tokio::task::spawn_blocking(move || engine.record(valid))
            .await
            .map_err(|e| ApiError::Internal(format!("recording panicked: {e}")))?;
        tracing::debug!(accepted, rejected, "query.record");
        Ok(Response::new(pb::RecordResponse {
            accepted,
            rejected,
            errors,
        }))
    }

    async fn top_queries(
        &self,
        request: Request<pb::TopQueriesRequest>,
    ) -> Result<Response<pb::TopQueriesResponse>, Status> {
        let r = request.into_inner();
        let order = order(r.order_by).map_err(ApiError::from)?;
        let limit = match r.limit {
            0 => 20,
            n => (n as usize).min(MAX_TOP),
        };
        let service = (!r.service.is_empty()).then_some(r.service.as_str());
        let rows = if self.fleet.is_some() {
            let others = self.others().await?;
            self.engine.fleet(&others, Some(order), limit, service, 0).0
        } else {
            self.engine.top(order, limit, service)
        };
        Ok(Response::new(pb::TopQueriesResponse {
            queries: rows.into_iter().map(|(k, e)| stats(k, e)).collect(),
        }))
    }

    async fn slow_queries(
        &self,
        request: Request<pb::SlowQueriesRequest>,
    ) -> Result<Response<pb::SlowQueriesResponse>, Status> {
        let r = request.into_inner();
        let since_ms = match &r.since {
            None => 0,
            Some(t) => SystemTime::try_from(*t)
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        let limit = match r.limit {
            0 => 50,
            n => (n as usize).min(MAX_TOP),
        };
        let slow = if self.fleet.is_some() {
            let others = self.others().await?;
            self.engine.fleet(&others, None, limit, None, since_ms).1
        } else {
            self.engine.slow(since_ms, limit)
        };
        let queries = slow
            .into_iter()
            .map(|q| pb::SlowQuery {
                fingerprint: q.fingerprint,
                text: q.text,
                duration: Some(duration_to_pb(q.duration)),
                rows: q.rows,
                service: q.service,
                trace_id: q.trace_id,
                time: Some(timestamp(q.time_ms)),
            })
            .collect();
        Ok(Response::new(pb::SlowQueriesResponse { queries }))
    }
}
