//! Query analysis: fingerprints and normalized text (from tokens), the
//! statement kind, tables and anti-pattern findings (from a parse), and
//! fleet-wide per-fingerprint statistics with a slow-query log and N+1
//! detection. Pure domain logic; `service.rs` is the gRPC adapter.

pub mod analyze;
pub mod config;
pub mod dialect;
pub mod fingerprint;
pub mod lexer;
pub mod memo;
pub mod metrics;
pub mod nplus1;
pub mod persist;
pub mod rules;
#[cfg(test)]
mod rules_tests;
pub mod runtime;
pub mod service;
pub mod slowlog;
pub mod stats;
pub mod status;
pub mod tokens;
pub mod unsupported;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::QueryConfig;
use crate::error::FieldError;
use crate::store::{Domain, Store, StoreError};
use analyze::Analysis;
use dialect::Dialect;
use metrics::{AnalyzedLabels, QueryMetrics, RuleLabel};
use nplus1::NPlusOne;
use rules::RuleSettings;
use slowlog::{SlowLog, SlowQuery};
use stats::{Entry, Key, Order, StatsTable};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

/// One execution to record, checked by the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// The SQL, when sent (it gives the fingerprint and the sample).
    pub sql: Option<String>,
    /// The fingerprint, when no SQL was sent.
    pub fingerprint: Option<String>,
    pub dialect: Dialect,
    pub duration: Duration,
    pub rows: u64,
    pub service: String,
    /// 32 hex digits, or None.
    pub trace_id: Option<String>,
    pub time_ms: u64,
}

struct State {
    table: StatsTable,
    slow: SlowLog,
    nplus1: NPlusOne,
}

struct Inner {
    state: Mutex<State>,
    rules: RuleSettings,
    /// Analyses of texts seen before (Analyze).
    analyses: memo::AnalysisMemo,
    slow_threshold: Duration,
    keep_raw_samples: bool,
    store: Arc<dyn Store>,
    metrics: QueryMetrics,
}

/// The handle the adapter and the background saver share.
#[derive(Clone)]
pub struct QueryEngine {
    inner: Arc<Inner>,
}

fn size(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl QueryEngine {
    pub fn new(config: &QueryConfig, store: Arc<dyn Store>, metrics: QueryMetrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    table: StatsTable::new(size(config.max_fingerprints)),
                    slow: SlowLog::new(size(config.slow_log_size)),
                    nplus1: NPlusOne::new(
                        config.nplus1_threshold,
                        u64::try_from(config.nplus1_window.get().as_millis()).unwrap_or(u64::MAX),
                        size(config.nplus1_max_tracked),
                    ),
                }),
                rules: RuleSettings {
                    disabled: config.disabled_rules.iter().cloned().collect(),
                    max_in_list: size(config.max_in_list),
                    max_offset: config.max_offset,
                },
                analyses: memo::AnalysisMemo::new(config.analysis_memo_bytes),
                slow_threshold: config.slow_threshold.get(),
                keep_raw_samples: config.keep_raw_samples,
                store,
                metrics,
            }),
        }
    }

    pub fn metrics(&self) -> &QueryMetrics {
        &self.inner.metrics
    }

    /// Analyzes `sql`, or answers from the analyses of texts seen before.
    pub fn analyze(&self, sql: &str, dialect: Dialect) -> Arc<Analysis> {
        self.remembered(sql, dialect)
            .unwrap_or_else(|| self.analyze_new(sql, dialect))
    }

    /// Analyzes `sql` without looking for it among the texts seen before
    /// (the caller just did), and remembers it.
    pub fn analyze_new(&self, sql: &str, dialect: Dialect) -> Arc<Analysis> {
        let analysis = Arc::new(analyze::analyze(sql, dialect, &self.inner.rules));
        self.inner.analyses.remember(sql, dialect, analysis.clone());
        self.count(&analysis, dialect);
        analysis
    }

    /// The analysis of a text seen before, without analyzing a new one
    /// (counted as an analysis when there is one).
    pub fn remembered(&self, sql: &str, dialect: Dialect) -> Option<Arc<Analysis>> {
        let analysis = self.inner.analyses.get(sql, dialect)?;
        self.inner.metrics.remembered.inc();
        self.count(&analysis, dialect);
        Some(analysis)
    }

    fn count(&self, analysis: &Analysis, dialect: Dialect) {
        let m = &self.inner.metrics;
        let parsed = !analysis
            .findings
            .iter()
            .any(|f| f.rule_id == rules::PARSE_ERROR.id);
        m.analyzed
            .get_or_create(&AnalyzedLabels {
                dialect: dialect.name(),
                parsed: if parsed { "true" } else { "false" },
            })
            .inc();
        for f in &analysis.findings {
            m.findings
                .get_or_create(&RuleLabel { rule: f.rule_id })
                .inc();
        }
    }

    /// Adds checked executions to the statistics. Fingerprinting happens
    /// before the lock, so concurrent Records overlap in the costly part.
    pub fn record(&self, executions: Vec<Execution>) {
        let prepared: Vec<(Execution, String, String)> = executions
            .into_iter()
            .map(|e| {
                let (fingerprint, text) = match (&e.sql, &e.fingerprint) {
                    (Some(sql), _) => {
                        let f = fingerprint::fingerprint(sql, e.dialect);
                        let text = if self.inner.keep_raw_samples {
                            sql.clone()
                        } else {
                            f.normalized
                        };
                        (f.fingerprint, text)
                    }
                    (None, Some(fp)) => (fp.clone(), String::new()),
                    (None, None) => (String::new(), String::new()),
                };
                (e, fingerprint, text)
            })
            .collect();
        let m = &self.inner.metrics;
        m.executions.inc_by(prepared.len() as u64);
        let mut state = self.inner.state.lock();
        let evicted_before = state.table.evicted();
        for (e, fingerprint, text) in prepared {
            let seen =
                state
                    .nplus1
                    .observe(e.trace_id.as_deref(), &e.service, &fingerprint, e.time_ms);
            if seen.reached {
                m.nplus1.inc();
            }
            if e.duration >= self.inner.slow_threshold {
                m.slow.inc();
                state.slow.push(SlowQuery {
                    fingerprint: fingerprint.clone(),
                    text: text.clone(),
                    duration: e.duration,
                    rows: e.rows,
                    service: e.service.clone(),
                    trace_id: e.trace_id.clone().unwrap_or_default(),
                    time_ms: e.time_ms,
                });
            }
            let key = Key {
                fingerprint,
                service: e.service,
            };
            let entry: &mut Entry = state.table.entry(key, || text, e.time_ms);
            entry.record(e.duration, e.rows, e.time_ms);
            if seen.count >= 2 {
                entry.batching.max_per_trace = entry.batching.max_per_trace.max(seen.count);
            }
            if seen.reached {
                entry.batching.occurrences += 1;
            }
        }
        m.fingerprints.set(state.table.len() as i64);
        m.evicted.inc_by(state.table.evicted() - evicted_before);
    }

    pub fn top(&self, order: Order, limit: usize, service: Option<&str>) -> Vec<(Key, Entry)> {
        self.inner.state.lock().table.top(order, limit, service)
    }

    pub fn slow(&self, since_ms: u64, limit: usize) -> Vec<SlowQuery> {
        self.inner.state.lock().slow.recent(since_ms, limit)
    }

    /// This replica's statistics and slow log, encoded, for the fleet view.
    pub fn snapshot(&self) -> Vec<u8> {
        let state = self.inner.state.lock();
        persist::encode(state.table.iter(), state.slow.iter()).0
    }

    /// `top` and `slow` over this replica's live statistics merged with
    /// other replicas' snapshots (undecodable ones are skipped).
    pub fn fleet(
        &self,
        others: &[Vec<u8>],
        order: Option<Order>,
        limit: usize,
        service: Option<&str>,
        since_ms: u64,
    ) -> (Vec<(Key, Entry)>, Vec<SlowQuery>) {
        let decoded: Vec<persist::Saved> = others
            .iter()
            .filter_map(|bytes| persist::decode(bytes).ok())
            .collect();
        let state = self.inner.state.lock();
        let capacity = state.table.len()
            + decoded
                .iter()
                .map(|(entries, _)| entries.len())
                .sum::<usize>();
        let mut table = StatsTable::new(capacity.max(1));
        let mut slow = SlowLog::new(
            state.slow.len() + decoded.iter().map(|(_, s)| s.len()).sum::<usize>() + 1,
        );
        for (key, entry) in state.table.iter() {
            table
                .entry(key.clone(), || entry.sample.clone(), entry.first_seen_ms)
                .merge(entry);
        }
        for q in state.slow.iter() {
            slow.push(q.clone());
        }
        drop(state);
        for (entries, queries) in decoded {
            for (key, entry) in entries {
                let sample = entry.sample.clone();
                table
                    .entry(key, || sample, entry.first_seen_ms)
                    .merge(&entry);
            }
            for q in queries {
                slow.push(q);
            }
        }
        let top = order.map_or_else(Vec::new, |order| table.top(order, limit, service));
        (top, slow.recent(since_ms, limit))
    }

    /// Writes the statistics and the slow log to the store (blocking).
    pub fn save(&self) -> Result<usize, StoreError> {
        let tree = self.inner.store.tree(Domain::Query);
        let state = self.inner.state.lock();
        let saved = persist::save(&*tree, state.table.iter(), state.slow.iter());
        if saved.is_err() {
            self.inner.metrics.persist_failures.inc();
        }
        saved
    }

    /// Reads what was saved (blocking); returns the number of statistics restored.
    pub fn restore(&self) -> Result<usize, StoreError> {
        let tree = self.inner.store.tree(Domain::Query);
        let (entries, slow) = persist::load(&*tree)?;
        let mut state = self.inner.state.lock();
        let count = entries.len();
        for (key, entry) in entries {
            state.table.restore(key, entry);
        }
        for q in slow {
            state.slow.push(q);
        }
        self.inner
            .metrics
            .fingerprints
            .set(state.table.len() as i64);
        Ok(count)
    }
}
