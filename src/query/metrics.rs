//! Query-analysis series on /metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnalyzedLabels {
    pub dialect: &'static str,
    pub parsed: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: &'static str,
}

#[derive(Clone, Debug)]
pub struct QueryMetrics {
    pub analyzed: Family<AnalyzedLabels, Counter>,
    pub findings: Family<RuleLabel, Counter>,
    pub remembered: Counter,
    pub executions: Counter,
    pub rejected: Counter,
    pub fingerprints: Gauge,
    pub evicted: Counter,
    pub slow: Counter,
    pub nplus1: Counter,
    pub persist_failures: Counter,
}

impl QueryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            analyzed: Family::default(),
            findings: Family::default(),
            remembered: Counter::default(),
            executions: Counter::default(),
            rejected: Counter::default(),
            fingerprints: Gauge::default(),
            evicted: Counter::default(),
            slow: Counter::default(),
            nplus1: Counter::default(),
            persist_failures: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("gantry_query");
        r.register(
            "analyzed",
            "Statements analyzed, by dialect and whether they parsed",
            m.analyzed.clone(),
        );
        r.register(
            "findings",
            "Anti-pattern findings, by rule",
            m.findings.clone(),
        );
        r.register(
            "analyses_remembered",
            "Analyze calls answered from the analyses of texts seen before (query.analysis_memo_bytes)",
            m.remembered.clone(),
        );
        r.register(
            "executions",
            "Executions added to the statistics by Record",
            m.executions.clone(),
        );
        r.register(
            "rejected_executions",
            "Executions Record refused one by one",
            m.rejected.clone(),
        );
        r.register(
            "fingerprints",
            "(fingerprint, service) statistics held",
            m.fingerprints.clone(),
        );
        r.register(
            "evicted_fingerprints",
            "Statistics dropped to stay within query.max_fingerprints (the least called)",
            m.evicted.clone(),
        );
        r.register(
            "slow_queries",
            "Executions at or above query.slow_threshold",
            m.slow.clone(),
        );
        r.register(
            "nplus1_detections",
            "Traces (or bursts) in which one fingerprint ran query.nplus1_threshold times: batching opportunities",
            m.nplus1.clone(),
        );
        r.register(
            "persist_failures",
            "Saves of the statistics the store refused",
            m.persist_failures.clone(),
        );
        m
    }
}
