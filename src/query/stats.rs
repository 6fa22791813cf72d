//! Per-fingerprint statistics, per service: calls, total, mean, min, max,
//! stddev (Welford), percentiles (hdrhistogram), rows, first and last seen,
//! one sample text and the batching hint. Bounded like pg_stat_statements:
//! when full, the least-called 5% of entries go, and the drops are counted.
//! Pure: times are passed in.

use std::collections::HashMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies in microseconds, 2 significant digits; the histogram grows to
/// the largest value seen (1 µs to 1 h).
const MAX_MICROS: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u32> {
    let mut h = Histogram::new_with_bounds(1, 2, 2).unwrap_or_else(|_| {
        Histogram::new(2).unwrap_or_else(|_| unreachable!("2 significant digits are valid"))
    });
    h.auto(true);
    h
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Batching {
    /// Most executions seen within one trace (or burst).
    pub max_per_trace: u64,
    /// Traces (or bursts) where the threshold was reached.
    pub occurrences: u64,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub calls: u64,
    pub total_nanos: u128,
    pub min_nanos: u64,
    pub max_nanos: u64,
    /// Welford's running mean and sum of squared deviations, in nanoseconds.
    pub mean_nanos: f64,
    pub m2: f64,
    pub latency: Histogram<u32>,
    pub rows: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub sample: String,
    pub batching: Batching,
}

impl Entry {
    pub fn new(sample: String, time_ms: u64) -> Self {
        Self {
            calls: 0,
            total_nanos: 0,
            min_nanos: u64::MAX,
            max_nanos: 0,
            mean_nanos: 0.0,
            m2: 0.0,
            latency: new_histogram(),
            rows: 0,
            first_seen_ms: time_ms,
            last_seen_ms: time_ms,
            sample,
            batching: Batching::default(),
        }
    }

    pub fn record(&mut self, duration: Duration, rows: u64, time_ms: u64) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.calls += 1;
        self.total_nanos += u128::from(nanos);
        self.min_nanos = self.min_nanos.min(nanos);
        self.max_nanos = self.max_nanos.max(nanos);
        let x = nanos as f64;
        let delta = x - self.mean_nanos;
        self.mean_nanos += delta / self.calls as f64;
        self.m2 += delta * (x - self.mean_nanos);
        let micros = (nanos / 1_000).clamp(1, MAX_MICROS);
        let _ = self.latency.record(micros);
        self.rows = self.rows.saturating_add(rows);
        self.first_seen_ms = self.first_seen_ms.min(time_ms);
        self.last_seen_ms = self.last_seen_ms.max(time_ms);
    }

    /// Adds another entry of the same fingerprint (another service's).
    pub fn merge(&mut self, other: &Entry) {
        if other.calls == 0 {
            return;
        }
        let (n1, n2) = (self.calls as f64, other.calls as f64);
        let n = n1 + n2;
        let delta = other.mean_nanos - self.mean_nanos;
        self.mean_nanos += delta * n2 / n;
        self.m2 += other.m2 + delta * delta * n1 * n2 / n;
        self.calls += other.calls;
        self.total_nanos += other.total_nanos;
        self.min_nanos = self.min_nanos.min(other.min_nanos);
        self.max_nanos = self.max_nanos.max(other.max_nanos);
        let _ = self.latency.add(&other.latency);
        self.rows = self.rows.saturating_add(other.rows);
        self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        self.batching.max_per_trace = self
            .batching
            .max_per_trace
            .max(other.batching.max_per_trace);
        self.batching.occurrences += other.batching.occurrences;
    }

    pub fn mean(&self) -> Duration {
        Duration::from_nanos(self.mean_nanos.round() as u64)
    }

    /// Population standard deviation.
    pub fn stddev(&self) -> Duration {
        if self.calls == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos((self.m2 / self.calls as f64).max(0.0).sqrt().round() as u64)
    }

    pub fn percentile(&self, q: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(q))
    }

    pub fn total(&self) -> Duration {
        Duration::from_nanos(u64::try_from(self.total_nanos).unwrap_or(u64::MAX))
    }
}

/// TopQueries orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    TotalTime,
    MeanTime,
    P99,
    Calls,
    Rows,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub fingerprint: String,
    pub service: String,
}

#[derive(Debug)]
pub struct StatsTable {
    map: HashMap<Key, Entry>,
    max: usize,
    evicted: u64,
}

impl StatsTable {
    pub fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            max: max.max(1),
            evicted: 0,
        }
    }

    /// The entry of a (fingerprint, service), made room for if new.
    pub fn entry(&mut self, key: Key, sample: impl FnOnce() -> String, time_ms: u64) -> &mut Entry {
        if !self.map.contains_key(&key) && self.map.len() >= self.max {
            self.evict_least_called();
        }
        self.map
            .entry(key)
            .or_insert_with(|| Entry::new(sample(), time_ms))
    }

    /// Drops the least-called 5% (at least one), the least recently seen first among equals.
    fn evict_least_called(&mut self) {
        let n = (self.map.len() / 20).max(1);
        let mut candidates: Vec<(u64, u64, Key)> = self
            .map
            .iter()
            .map(|(k, e)| (e.calls, e.last_seen_ms, k.clone()))
            .collect();
        candidates.sort_unstable();
        for (_, _, key) in candidates.into_iter().take(n) {
            self.map.remove(&key);
        }
        self.evicted += n as u64;
    }

    /// The heaviest entries: per (fingerprint, service) for one service, or
    /// merged per fingerprint over the fleet.
    pub fn top(&self, order: Order, limit: usize, service: Option<&str>) -> Vec<(Key, Entry)> {
        let mut rows: Vec<(Key, Entry)> = match service {
            Some(s) => self
                .map
                .iter()
                .filter(|(k, _)| k.service == s)
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
            None => {
                let mut merged: HashMap<&str, Entry> = HashMap::new();
                for (k, e) in &self.map {
                    merged
                        .entry(&k.fingerprint)
                        .and_modify(|m| m.merge(e))
                        .or_insert_with(|| e.clone());
                }
                merged
                    .into_iter()
                    .map(|(fp, e)| {
                        (
                            Key {
                                fingerprint: fp.to_string(),
                                service: String::new(),
                            },
                            e,
                        )
                    })
                    .collect()
            }
        };
        let value = |e: &Entry| -> u128 {
            match order {
                Order::TotalTime => e.total_nanos,
                Order::MeanTime => e.mean_nanos as u128,
                Order::P99 => u128::from(e.latency.value_at_quantile(0.99)),
                Order::Calls => u128::from(e.calls),
                Order::Rows => u128::from(e.rows),
            }
        };
        rows.sort_by(|a, b| value(&b.1).cmp(&value(&a.1)).then_with(|| a.0.cmp(&b.0)));
        rows.truncate(limit);
        rows
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.map.iter()
    }

    /// At start: restored entries, even above the bound (it applies to new ones).
    pub fn restore(&mut self, key: Key, entry: Entry) {
        self.map.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fp: &str, service: &str) -> Key {
        Key {
            fingerprint: fp.into(),
            service: service.into(),
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn arithmetic_matches_values_computed_independently() {
        let durations = [3u64, 7, 7, 10, 13, 40, 2, 8];
        let mut table = StatsTable::new(10);
        for (i, d) in durations.iter().enumerate() {
            table
                .entry(key("a", "svc"), || "SELECT ?".into(), 1_000)
                .record(ms(*d), 2, 1_000 + i as u64);
        }
        let (_, e) = &table.top(Order::TotalTime, 10, Some("svc"))[0];
        let n = durations.len() as f64;
        let mean = durations.iter().sum::<u64>() as f64 / n;
        let var = durations
            .iter()
            .map(|d| (*d as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        assert_eq!(e.calls, 8);
        assert_eq!(e.total(), ms(90));
        assert_eq!(e.min_nanos, 2_000_000);
        assert_eq!(e.max_nanos, 40_000_000);
        assert!((e.mean().as_secs_f64() * 1e3 - mean).abs() < 1e-6);
        assert!((e.stddev().as_secs_f64() * 1e3 - var.sqrt()).abs() < 1e-6);
        assert_eq!(e.rows, 16);
        assert_eq!((e.first_seen_ms, e.last_seen_ms), (1_000, 1_007));
        // Nearest rank over 8 values: p50 is the 4th smallest (7 ms), p99 the largest.
        assert!(e.percentile(0.5).abs_diff(ms(7)) <= ms(7) / 100);
        assert!(e.percentile(0.99).abs_diff(ms(40)) <= ms(40) / 100);
    }

    #[test]
    fn the_fleet_view_merges_services_exactly() {
        let mut table = StatsTable::new(10);
        let all = [(1u64, "a"), (5, "b"), (9, "a"), (20, "b"), (4, "c")];
        for (d, s) in all {
            table
                .entry(key("fp", s), || "x".into(), 0)
                .record(ms(d), 1, 0);
        }
        let fleet = table.top(Order::Calls, 10, None);
        assert_eq!(fleet.len(), 1);
        let e = &fleet[0].1;
        let n = all.len() as f64;
        let mean = all.iter().map(|(d, _)| *d as f64).sum::<f64>() / n;
        let var = all
            .iter()
            .map(|(d, _)| (*d as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        assert_eq!(e.calls, 5);
        assert_eq!(e.total(), ms(39));
        assert!((e.stddev().as_secs_f64() * 1e3 - var.sqrt()).abs() < 1e-6);
        assert_eq!(e.max_nanos, 20_000_000);
        assert_eq!(fleet[0].0.service, "");
    }

    #[test]
    fn orders_pick_the_heaviest() {
        let mut table = StatsTable::new(10);
        // "many": 10 calls of 1 ms; "slow": 1 call of 50 ms with 1000 rows.
        for _ in 0..10 {
            table
                .entry(key("many", "s"), String::new, 0)
                .record(ms(1), 0, 0);
        }
        table
            .entry(key("slow", "s"), String::new, 0)
            .record(ms(50), 1000, 0);
        let first = |o| table.top(o, 1, None)[0].0.fingerprint.clone();
        assert_eq!(first(Order::TotalTime), "slow");
        assert_eq!(first(Order::MeanTime), "slow");
        assert_eq!(first(Order::P99), "slow");
        assert_eq!(first(Order::Calls), "many");
        assert_eq!(first(Order::Rows), "slow");
        assert_eq!(table.top(Order::Calls, 5, Some("other")).len(), 0);
    }

    #[test]
    fn a_full_table_drops_the_least_called_and_counts_them() {
        let mut table = StatsTable::new(3);
        for (fp, calls) in [("a", 5), ("b", 1), ("c", 3)] {
            for _ in 0..calls {
                table
                    .entry(key(fp, "s"), String::new, 0)
                    .record(ms(1), 0, 0);
            }
        }
        table
            .entry(key("d", "s"), String::new, 0)
            .record(ms(1), 0, 0);
        assert_eq!(table.len(), 3);
        assert_eq!(table.evicted(), 1);
        let left: Vec<String> = table
            .top(Order::Calls, 10, None)
            .into_iter()
            .map(|(k, _)| k.fingerprint)
            .collect();
        assert_eq!(left, vec!["a", "c", "d"]);
    }
}
