//! What a run measured, as JSON for scripts or a table for people.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn from(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// "closed" (fixed concurrency) or "open" (fixed rate).
    pub mode: &'static str,
    pub concurrency: Option<usize>,
    pub target_rate: Option<u64>,
    pub connections: usize,
    pub measured_secs: f64,
    /// Calls that returned OK.
    pub ok: u64,
    /// Failed calls by gRPC status code name.
    pub errors: BTreeMap<String, u64>,
    /// Open loop: calls not sent because `max_inflight` were outstanding.
    pub skipped: u64,
    /// OK calls per second.
    pub requests_per_sec: f64,
    /// Items per second (a batch of 100 counts 100).
    pub items_per_sec: f64,
    /// Latency of OK calls (open loop: from the intended start).
    pub latency: Latency,
}

impl Report {
    pub fn table(&self) -> String {
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let load = match (self.mode, self.concurrency, self.target_rate) {
            ("open", _, Some(rate)) => format!("open loop at {rate}/s"),
            (_, Some(c), _) => format!("closed loop, {c} in flight"),
            _ => self.mode.to_string(),
        };
        format!(
            "scenario      {}\n\
             load          {load} over {} connections, {:.1}s measured\n\
             requests/s    {:.0}\n\
             items/s       {:.0}\n\
             ok            {}\n\
             errors        {errors}\n\
             skipped       {}\n\
             latency (µs)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
            self.scenario,
            self.connections,
            self.measured_secs,
            self.requests_per_sec,
            self.items_per_sec,
            self.ok,
            self.skipped,
            self.latency.p50_us,
            self.latency.p90_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.latency.max_us,
        )
    }
}
