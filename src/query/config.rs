//! `[query]`: SQL analysis bounds, statistics, the slow log, N+1 detection
//! and which rules report.

use serde::{Deserialize, Serialize};

use super::rules;
use crate::config::values::{Checked, HumanDuration, at_least_one, positive};
use crate::error::FieldError;

/// `[query]`: SQL analysis, per-fingerprint statistics, the slow-query log
/// and N+1 detection. Read at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Longest SQL text accepted by Analyze and Record, in bytes.
    pub max_sql_bytes: u64,
    /// Most executions in one Record.
    pub max_batch: u64,
    /// Most (fingerprint, service) statistics kept; beyond it the least-called 5% are dropped.
    pub max_fingerprints: u64,
    /// Longest `service` name, in bytes.
    pub max_service_bytes: u64,
    /// Executions at least this slow go to the slow-query log.
    pub slow_threshold: HumanDuration,
    /// Most executions in the slow-query log (the oldest go first).
    pub slow_log_size: u64,
    /// Keep the raw SQL as the sample and in the slow log (it can carry
    /// personal data); false keeps the normalized text.
    pub keep_raw_samples: bool,
    /// Executions of one fingerprint in one trace (or burst) that make an N+1 report.
    pub nplus1_threshold: u64,
    /// For executions without a trace id: the window one service's burst is counted in.
    pub nplus1_window: HumanDuration,
    /// Most traces (and bursts) followed at once for N+1 detection.
    pub nplus1_max_tracked: u64,
    /// How often statistics are saved to the store (also at shutdown).
    pub persist_interval: HumanDuration,
    /// Rule ids that are not reported, e.g. `["select_star"]`.
    pub disabled_rules: Vec<String>,
    /// `long_in_list` fires above this many items.
    pub max_in_list: u64,
    /// `large_offset` fires above this OFFSET.
    pub max_offset: u64,
    /// Bytes of analyses of texts seen before kept for Analyze (texts,
    /// normalized texts and findings); 0 analyzes every call afresh.
    pub analysis_memo_bytes: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            max_sql_bytes: 64 * 1024,
            max_batch: 1_000,
            max_fingerprints: 5_000,
            max_service_bytes: 256,
            slow_threshold: HumanDuration::from_secs(1),
            slow_log_size: 1_000,
            keep_raw_samples: false,
            nplus1_threshold: 5,
            nplus1_window: HumanDuration::from_secs(1),
            nplus1_max_tracked: 10_000,
            persist_interval: HumanDuration::from_secs(60),
            disabled_rules: Vec::new(),
            max_in_list: 100,
            max_offset: 1_000,
            analysis_memo_bytes: 16 * 1024 * 1024,
        }
    }
}

impl QueryConfig {
    pub(crate) fn validate(&self) -> Checked {
        at_least_one(
            "query",
            [
                ("max_sql_bytes", self.max_sql_bytes),
                ("max_batch", self.max_batch),
                ("max_fingerprints", self.max_fingerprints),
                ("max_service_bytes", self.max_service_bytes),
                ("slow_log_size", self.slow_log_size),
                ("nplus1_max_tracked", self.nplus1_max_tracked),
            ],
        )?;
        if self.nplus1_threshold < 2 {
            return Err(FieldError::new(
                "query.nplus1_threshold",
                format!("{} is out of range; use 2 or more", self.nplus1_threshold),
            ));
        }
        positive("query", [("persist_interval", self.persist_interval)])?;
        for id in &self.disabled_rules {
            if !rules::ALL.iter().any(|r| r.id == id) {
                return Err(FieldError::new(
                    "query.disabled_rules",
                    format!("{id:?} is not a rule id (see docs/query-rules.md)"),
                ));
            }
        }
        Ok(())
    }
}
