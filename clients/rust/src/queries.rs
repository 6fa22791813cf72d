//! Reading back what recorders sent — TopQueries and SlowQueries — as plain
//! structs with `Duration` and `SystemTime`, so an application needs no
//! generated types to show them.

use std::time::{Duration, SystemTime};

use crate::client::{Error, Gantry, std_duration, system_time};
use crate::proto::gantry::v1 as pb;

pub use pb::QueryOrder;

/// What [`Gantry::top_queries`] asks for; the default is the 20 heaviest
/// fingerprints of the whole fleet by total time.
#[derive(Clone, Debug, Default)]
pub struct TopQueries {
    pub order_by: QueryOrder,
    /// How many fingerprints; 0 means 20.
    pub limit: u32,
    /// Only this service; empty means the whole fleet.
    pub service: String,
}

/// One fingerprint's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryStats {
    pub fingerprint: String,
    pub service: String,
    /// The normalized text (raw only when the server keeps raw samples).
    pub sample: String,
    pub calls: u64,
    pub rows: u64,
    pub total: Duration,
    pub mean: Duration,
    pub min: Duration,
    pub max: Duration,
    pub stddev: Duration,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// Set when the statement ran many times in one trace (N+1).
    pub batching: Option<BatchingHint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchingHint {
    pub max_per_trace: u64,
    pub occurrences: u64,
    pub suggestion: String,
}

/// One execution over the slow threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct SlowQuery {
    pub fingerprint: String,
    pub text: String,
    pub duration: Duration,
    pub rows: u64,
    pub service: String,
    pub trace_id: String,
    pub time: SystemTime,
}

impl From<pb::QueryStats> for QueryStats {
    fn from(q: pb::QueryStats) -> Self {
        Self {
            total: std_duration(q.total.as_ref()),
            mean: std_duration(q.mean.as_ref()),
            min: std_duration(q.min.as_ref()),
            max: std_duration(q.max.as_ref()),
            stddev: std_duration(q.stddev.as_ref()),
            p50: std_duration(q.p50.as_ref()),
            p95: std_duration(q.p95.as_ref()),
            p99: std_duration(q.p99.as_ref()),
            first_seen: system_time(q.first_seen.as_ref()),
            last_seen: system_time(q.last_seen.as_ref()),
            batching: q.batching.map(|b| BatchingHint {
                max_per_trace: b.max_per_trace,
                occurrences: b.occurrences,
                suggestion: b.suggestion,
            }),
            fingerprint: q.fingerprint,
            service: q.service,
            sample: q.sample,
            calls: q.calls,
            rows: q.rows,
        }
    }
}

impl From<pb::SlowQuery> for SlowQuery {
    fn from(q: pb::SlowQuery) -> Self {
        Self {
            duration: std_duration(q.duration.as_ref()),
            time: system_time(q.time.as_ref()),
            fingerprint: q.fingerprint,
            text: q.text,
            rows: q.rows,
            service: q.service,
            trace_id: q.trace_id,
        }
    }
}

impl Gantry {
    /// The heaviest statements recorded.
    pub async fn top_queries(&self, ask: TopQueries) -> Result<Vec<QueryStats>, Error> {
        let ask = pb::TopQueriesRequest {
            order_by: ask.order_by.into(),
            limit: ask.limit,
            service: ask.service,
        };
        let r = self
            .call(
                crate::client::Repeat::Idempotent,
                self.budget(Duration::ZERO),
                || {
                    let mut query = self.query.clone();
                    let request = self.request(ask.clone(), Duration::ZERO);
                    async move { query.top_queries(request).await.map(|r| r.into_inner()) }
                },
            )
            .await?;
        Ok(r.queries.into_iter().map(QueryStats::from).collect())
    }

    /// Executions over the slow threshold, newest first: those at or after
    /// `since` (`None`: all that are kept), at most `limit` (0: 50).
    pub async fn slow_queries(
        &self,
        since: Option<SystemTime>,
        limit: u32,
    ) -> Result<Vec<SlowQuery>, Error> {
        let ask = pb::SlowQueriesRequest {
            since: since.map(prost_types::Timestamp::from),
            limit,
        };
        let r = self
            .call(
                crate::client::Repeat::Idempotent,
                self.budget(Duration::ZERO),
                || {
                    let mut query = self.query.clone();
                    let request = self.request(ask, Duration::ZERO);
                    async move { query.slow_queries(request).await.map(|r| r.into_inner()) }
                },
            )
            .await?;
        Ok(r.queries.into_iter().map(SlowQuery::from).collect())
    }
}
