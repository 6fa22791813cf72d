//! Lease series on /metrics, labelled by pool (bounded: only configured
//! pools get series).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::table::{EndReason, PoolGauges};
use crate::telemetry::metrics::latency_histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub pool: String,
    pub result: &'static str,
}

#[derive(Clone, Debug)]
pub struct LeaseMetrics {
    acquisitions: Family<ResultLabels, Counter>,
    ended: Family<ResultLabels, Counter>,
    renewed: Family<PoolLabel, Counter>,
    wait: Family<PoolLabel, Histogram>,
    capacity: Family<PoolLabel, Gauge>,
    in_use: Family<PoolLabel, Gauge>,
    waiting: Family<PoolLabel, Gauge>,
    holders: Family<PoolLabel, Gauge>,
    pub journal: JournalMetrics,
}

/// The lease journal's group commits.
#[derive(Clone, Debug)]
pub struct JournalMetrics {
    pub commit_seconds: Histogram,
    pub writes: Counter,
    pub failures: Counter,
}

/// How an acquisition ended, as the `result` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireResult {
    Granted,
    /// Not available and the caller did not wait.
    Denied,
    /// The caller waited and its time ran out.
    TimedOut,
}

impl Default for LeaseMetrics {
    fn default() -> Self {
        Self {
            acquisitions: Family::default(),
            ended: Family::default(),
            renewed: Family::default(),
            wait: Family::new_with_constructor(latency_histogram),
            capacity: Family::default(),
            in_use: Family::default(),
            waiting: Family::default(),
            holders: Family::default(),
            journal: JournalMetrics {
                commit_seconds: latency_histogram(),
                writes: Counter::default(),
                failures: Counter::default(),
            },
        }
    }
}

fn label(pool: &str) -> PoolLabel {
    PoolLabel {
        pool: pool.to_string(),
    }
}

impl LeaseMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "gantry_leases_acquisitions",
            "Lease acquisitions by pool and result (granted, denied, timed_out)",
            m.acquisitions.clone(),
        );
        registry.register(
            "gantry_leases_ended",
            "Leases ended by pool and how (released, expired, pool_removed)",
            m.ended.clone(),
        );
        registry.register(
            "gantry_leases_renewed",
            "Lease renewals by pool",
            m.renewed.clone(),
        );
        registry.register(
            "gantry_leases_wait_seconds",
            "Time callers with max_wait spent in a pool's queue",
            m.wait.clone(),
        );
        registry.register(
            "gantry_leases_capacity",
            "Configured capacity of each pool",
            m.capacity.clone(),
        );
        registry.register(
            "gantry_leases_in_use",
            "Units held by unexpired leases",
            m.in_use.clone(),
        );
        registry.register(
            "gantry_leases_waiting",
            "Callers waiting in each pool's queue",
            m.waiting.clone(),
        );
        registry.register(
            "gantry_leases_holders",
            "Holders with at least one lease",
            m.holders.clone(),
        );
        registry.register(
            "gantry_leases_journal_commit_seconds",
            "Time to write (and in sync mode flush) one group of lease changes",
            m.journal.commit_seconds.clone(),
        );
        registry.register(
            "gantry_leases_journal_writes",
            "Lease changes written to the store",
            m.journal.writes.clone(),
        );
        registry.register(
            "gantry_leases_journal_failures",
            "Groups of lease changes the store refused",
            m.journal.failures.clone(),
        );
        m
    }

    pub fn acquired(&self, pool: &str, result: AcquireResult) {
        let result = match result {
            AcquireResult::Granted => "granted",
            AcquireResult::Denied => "denied",
            AcquireResult::TimedOut => "timed_out",
        };
        self.acquisitions
            .get_or_create(&ResultLabels {
                pool: pool.to_string(),
                result,
            })
            .inc();
    }

    pub fn waited(&self, pool: &str, seconds: f64) {
        self.wait.get_or_create(&label(pool)).observe(seconds);
    }

    pub fn released(&self, pool: &str) {
        self.count_end(pool, "released");
    }

    pub fn ended(&self, pool: &str, reason: EndReason) {
        let how = match reason {
            EndReason::Expired => "expired",
            EndReason::PoolRemoved => "pool_removed",
        };
        self.count_end(pool, how);
    }

    fn count_end(&self, pool: &str, result: &'static str) {
        self.ended
            .get_or_create(&ResultLabels {
                pool: pool.to_string(),
                result,
            })
            .inc();
    }

    pub fn renewed(&self, pool: &str) {
        self.renewed.get_or_create(&label(pool)).inc();
    }

    /// Sets a pool's gauges.
    pub fn observe(&self, pool: &str, status: &PoolGauges) {
        let l = label(pool);
        self.capacity
            .get_or_create(&l)
            .set(i64::from(status.capacity));
        self.in_use
            .get_or_create(&l)
            .set(i64::try_from(status.in_use).unwrap_or(i64::MAX));
        self.waiting
            .get_or_create(&l)
            .set(i64::try_from(status.waiting).unwrap_or(i64::MAX));
        self.holders
            .get_or_create(&l)
            .set(i64::try_from(status.holders).unwrap_or(i64::MAX));
    }

    /// Drops the gauges of a pool that is no longer configured (its counters
    /// stay: they are totals).
    pub fn forget(&self, pool: &str) {
        let l = label(pool);
        self.capacity.remove(&l);
        self.in_use.remove(&l);
        self.waiting.remove(&l);
        self.holders.remove(&l);
    }
}
