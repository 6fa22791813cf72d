//! Per-endpoint RED metrics: for each (service, endpoint) — the span name of
//! server and consumer spans — calls, errors and latency over sliding windows
//! (1 minute, 5 minutes, 1 hour), plus cumulative counts in the shape of the
//! Collector's spanmetrics connector for /metrics.
//!
//! A window is a ring of slots; a span counts in the slot of its arrival
//! time, so clock skew between senders cannot move it. A window of length W
//! merges its last W/slot slots plus the current one: it covers at least W
//! and at most W plus one slot (1m: 10 s slots, 5m: 50 s, 1h: 10 min).
//! Pure: the caller passes the time.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::Equivalent;
use hdrhistogram::Histogram;

use super::span::{SpanKind, StatusCode};

/// Latencies are recorded in microseconds, 1 µs to 1 h, 2 significant digits.
const HIST_MAX_MICROS: u64 = 3_600_000_000;

/// Explicit bucket bounds of the spanmetrics connector's default histogram, in ms.
pub const SPANMETRICS_BUCKETS_MS: [f64; 16] = [
    2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1000.0, 1400.0, 2000.0, 5000.0,
    10000.0, 15000.0,
];

/// The endpoint of spans beyond `traces.max_endpoints` (cf. the Collector's
/// `otel.metric.overflow` series).
pub const OVERFLOW_ENDPOINT: &str = "otel.metric.overflow";

/// The windows EndpointStats offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    OneMinute,
    FiveMinutes,
    OneHour,
}

impl Window {
    pub const ALL: [Window; 3] = [Window::OneMinute, Window::FiveMinutes, Window::OneHour];

    /// Unset (zero) is one minute; other lengths round up to the next window
    /// (anything above an hour is an hour).
    pub fn round_up(d: Duration) -> Window {
        if d <= Duration::from_secs(60) {
            Window::OneMinute
        } else if d <= Duration::from_secs(300) {
            Window::FiveMinutes
        } else {
            Window::OneHour
        }
    }

    pub fn length(self) -> Duration {
        Duration::from_secs(match self {
            Window::OneMinute => 60,
            Window::FiveMinutes => 300,
            Window::OneHour => 3600,
        })
    }

    fn slot_nanos(self) -> u64 {
        self.length().as_nanos() as u64 / SLOTS_PER_WINDOW
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Slots in a window's length; the ring holds one more (the current slot).
const SLOTS_PER_WINDOW: u64 = 6;
const RING: usize = SLOTS_PER_WINDOW as usize + 1;

#[derive(Debug, Default)]
struct Slot {
    /// Which slot of time this is (time / slot length); u64::MAX: never used.
    number: u64,
    calls: u64,
    errors: u64,
    /// Allocated on the slot's first span: idle endpoints cost no histograms.
    latency: Option<Histogram<u32>>,
}

#[derive(Debug)]
struct Ring {
    window: Window,
    slots: [Slot; RING],
}

impl Ring {
    fn new(window: Window) -> Self {
        Self {
            window,
            slots: std::array::from_fn(|_| Slot {
                number: u64::MAX,
                ..Slot::default()
            }),
        }
    }

    fn record(&mut self, now_nanos: u64, micros: u64, error: bool) {
        let number = now_nanos / self.window.slot_nanos();
        let slot = &mut self.slots[(number % RING as u64) as usize];
        if slot.number != number {
            slot.number = number;
            slot.calls = 0;
            slot.errors = 0;
            if let Some(h) = slot.latency.as_mut() {
                h.reset();
            }
        }
        slot.calls += 1;
        slot.errors += u64::from(error);
        let latency = slot.latency.get_or_insert_with(new_histogram);
        latency.saturating_record(micros.clamp(1, HIST_MAX_MICROS));
    }

    /// The window's totals at `now`: the current slot and the previous RING-1.
    fn summary(&self, now_nanos: u64) -> Option<Summary> {
        let (calls, errors, merged) = self.totals(now_nanos)?;
        Some(summarize(calls, errors, &merged))
    }

    /// Calls, errors and the latency histogram of the window at `now`.
    fn totals(&self, now_nanos: u64) -> Option<(u64, u64, Histogram<u32>)> {
        let current = now_nanos / self.window.slot_nanos();
        let oldest = current.saturating_sub(SLOTS_PER_WINDOW);
        let mut merged = new_histogram();
        let (mut calls, mut errors) = (0, 0);
        for slot in &self.slots {
            if slot.number == u64::MAX || slot.number < oldest || slot.number > current {
                continue;
            }
            calls += slot.calls;
            errors += slot.errors;
            if let Some(h) = &slot.latency {
                // Same bounds on both sides: adding cannot fail.
                let _ = merged.add(h);
            }
        }
        (calls > 0).then_some((calls, errors, merged))
    }
}

fn summarize(calls: u64, errors: u64, merged: &Histogram<u32>) -> Summary {
    Summary {
        calls,
        errors,
        p50: micros(merged.value_at_quantile(0.50)),
        p95: micros(merged.value_at_quantile(0.95)),
        p99: micros(merged.value_at_quantile(0.99)),
        max: micros(merged.max()),
    }
}

/// One endpoint's totals over one window, as a replica publishes them for
/// the fleet view: calls, errors and the latency histogram's recorded
/// values (µs) with their counts.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WindowTotals {
    #[prost(uint32, tag = "1")]
    pub window: u32,
    #[prost(string, tag = "2")]
    pub service: String,
    #[prost(string, tag = "3")]
    pub endpoint: String,
    #[prost(uint64, tag = "4")]
    pub calls: u64,
    #[prost(uint64, tag = "5")]
    pub errors: u64,
    #[prost(uint64, repeated, tag = "6")]
    pub latency_values: Vec<u64>,
    #[prost(uint64, repeated, tag = "7")]
    pub latency_counts: Vec<u64>,
}

/// A replica's published totals.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Published {
    #[prost(message, repeated, tag = "1")]
    pub rows: Vec<WindowTotals>,
}

/// Rows for `window` from several replicas' totals: the same endpoint's
/// calls and errors add up and its histograms are added, so percentiles are
/// those of every call.
pub fn merge_totals(
    totals: impl IntoIterator<Item = WindowTotals>,
    window: Window,
    service: Option<&str>,
) -> Vec<EndpointRow> {
    let mut merged: std::collections::BTreeMap<(String, String), (u64, u64, Histogram<u32>)> =
        Default::default();
    for t in totals {
        if t.window != window as u32 || service.is_some_and(|s| s != t.service) {
            continue;
        }
        let entry = merged
            .entry((t.service, t.endpoint))
            .or_insert_with(|| (0, 0, new_histogram()));
        entry.0 += t.calls;
        entry.1 += t.errors;
        for (value, count) in t.latency_values.iter().zip(&t.latency_counts) {
            let count = u32::try_from(*count).unwrap_or(u32::MAX);
            let _ = entry.2.record_n((*value).clamp(1, HIST_MAX_MICROS), count);
        }
    }
    merged
        .into_iter()
        .filter(|(_, (calls, _, _))| *calls > 0)
        .map(|((service, endpoint), (calls, errors, h))| EndpointRow {
            service: Arc::from(service),
            endpoint: endpoint.into(),
            summary: summarize(calls, errors, &h),
        })
        .collect()
}

fn micros(v: u64) -> Duration {
    Duration::from_micros(v)
}

fn new_histogram() -> Histogram<u32> {
    // Constant, valid bounds: construction cannot fail; fall back to auto-resize anyway.
    Histogram::new_with_bounds(1, HIST_MAX_MICROS, 2).unwrap_or_else(|_| {
        let mut h = Histogram::new(2).unwrap_or_else(|_| unreachable!("2 digits are valid"));
        h.auto(true);
        h
    })
}

/// One window's numbers for one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub calls: u64,
    pub errors: u64,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Cumulative calls and latency buckets for one status code (spanmetrics shape).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cumulative {
    pub calls: u64,
    pub sum_ms: f64,
    /// Per bucket (not cumulative), the last one is +Inf.
    pub buckets: [u64; SPANMETRICS_BUCKETS_MS.len() + 1],
}

impl Cumulative {
    fn record(&mut self, ms: f64) {
        self.calls += 1;
        self.sum_ms += ms;
        let i = SPANMETRICS_BUCKETS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(SPANMETRICS_BUCKETS_MS.len());
        self.buckets[i] += 1;
    }
}

#[derive(Debug)]
struct Endpoint {
    /// Windows of entry (server, consumer) spans only: EndpointStats' rows.
    rings: [Ring; 3],
    /// Cumulative series per span kind and status, for /metrics: every
    /// kind, as the spanmetrics connector counts (a few entries at most).
    cumulative: Vec<(SpanKind, StatusCode, Cumulative)>,
    last_seen_nanos: u64,
}

impl Endpoint {
    fn new() -> Self {
        Self {
            rings: Window::ALL.map(Ring::new),
            cumulative: Vec::new(),
            last_seen_nanos: 0,
        }
    }

    fn record(&mut self, now_nanos: u64, span: SpanSample) {
        if span.kind.is_entry() {
            let micros = span.duration_nanos / 1_000;
            let error = span.status == StatusCode::Error;
            for ring in &mut self.rings {
                ring.record(now_nanos, micros, error);
            }
        }
        let ms = span.duration_nanos as f64 / 1e6;
        match self
            .cumulative
            .iter_mut()
            .find(|(k, s, _)| (*k, *s) == (span.kind, span.status))
        {
            Some((_, _, c)) => c.record(ms),
            None => {
                let mut c = Cumulative::default();
                c.record(ms);
                self.cumulative.push((span.kind, span.status, c));
            }
        }
        self.last_seen_nanos = now_nanos;
    }
}

/// What the endpoint table needs of one span.
#[derive(Debug, Clone, Copy)]
pub struct SpanSample {
    pub kind: SpanKind,
    pub status: StatusCode,
    pub duration_nanos: u64,
}

/// An endpoint's identity. Hashes like `(&str, &str)` so lookups borrow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointKey {
    pub service: Arc<str>,
    pub endpoint: Box<str>,
}

impl Hash for EndpointKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (&*self.service, &*self.endpoint).hash(state);
    }
}

#[derive(Hash)]
struct KeyRef<'a>(&'a str, &'a str);

impl Equivalent<EndpointKey> for KeyRef<'_> {
    fn equivalent(&self, key: &EndpointKey) -> bool {
        *key.service == *self.0 && *key.endpoint == *self.1
    }
}

/// One row of EndpointStats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    pub service: Arc<str>,
    pub endpoint: Box<str>,
    pub summary: Summary,
}

/// One series group of /metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct CumulativeRow {
    pub service: Arc<str>,
    pub endpoint: Box<str>,
    pub overflow: bool,
    pub kind: SpanKind,
    pub status: StatusCode,
    pub totals: Cumulative,
}

#[derive(Debug)]
pub struct EndpointTable {
    map: hashbrown::HashMap<EndpointKey, Endpoint, foldhash::fast::RandomState>,
    overflow: Endpoint,
    max: usize,
    /// Next time a full table may look for idle endpoints to drop.
    next_idle_scan_nanos: u64,
}

/// An endpoint with no span for this long can give its place to a new one.
const IDLE_NANOS: u64 = 3_600 * 1_000_000_000;
const IDLE_SCAN_EVERY_NANOS: u64 = 10 * 1_000_000_000;

impl EndpointTable {
    pub fn new(max: usize) -> Self {
        Self {
            map: hashbrown::HashMap::default(),
            overflow: Endpoint::new(),
            max: max.max(1),
            next_idle_scan_nanos: 0,
        }
    }

    /// Counts one server or consumer span that arrived at `now_nanos`;
    /// true when it went to the overflow series.
    pub fn record(
        &mut self,
        now_nanos: u64,
        service: &Arc<str>,
        endpoint: &str,
        span: SpanSample,
    ) -> bool {
        if let Some(e) = self.map.get_mut(&KeyRef(service, endpoint)) {
            e.record(now_nanos, span);
            return false;
        }
        if self.map.len() >= self.max {
            self.drop_idle(now_nanos);
        }
        if self.map.len() >= self.max {
            self.overflow.record(now_nanos, span);
            return true;
        }
        let mut e = Endpoint::new();
        e.record(now_nanos, span);
        self.map.insert(
            EndpointKey {
                service: service.clone(),
                endpoint: endpoint.into(),
            },
            e,
        );
        false
    }

    /// Endpoints silent for an hour have nothing in any window: they leave,
    /// so a fleet that renames endpoints over weeks does not end in overflow.
    fn drop_idle(&mut self, now_nanos: u64) {
        if now_nanos < self.next_idle_scan_nanos {
            return;
        }
        self.next_idle_scan_nanos = now_nanos.saturating_add(IDLE_SCAN_EVERY_NANOS);
        self.map
            .retain(|_, e| now_nanos.saturating_sub(e.last_seen_nanos) < IDLE_NANOS);
    }

    /// Endpoints with calls in the window, sorted by service then endpoint;
    /// the overflow row (service "") comes first when it has calls.
    pub fn stats(&self, now_nanos: u64, window: Window, service: Option<&str>) -> Vec<EndpointRow> {
        let mut rows: Vec<EndpointRow> = self
            .map
            .iter()
            .filter(|(k, _)| service.is_none_or(|s| *k.service == *s))
            .filter_map(|(k, e)| {
                e.rings[window.index()]
                    .summary(now_nanos)
                    .map(|summary| EndpointRow {
                        service: k.service.clone(),
                        endpoint: k.endpoint.clone(),
                        summary,
                    })
            })
            .collect();
        if service.is_none()
            && let Some(summary) = self.overflow.rings[window.index()].summary(now_nanos)
        {
            rows.push(EndpointRow {
                service: Arc::from(""),
                endpoint: OVERFLOW_ENDPOINT.into(),
                summary,
            });
        }
        rows.sort_by(|a, b| (&a.service, &a.endpoint).cmp(&(&b.service, &b.endpoint)));
        rows
    }

    /// Cumulative series for /metrics (status codes that have calls).
    /// Every endpoint's totals over every window at `now`, to publish.
    pub fn totals(&self, now_nanos: u64) -> Vec<WindowTotals> {
        let overflow_key = EndpointKey {
            service: Arc::from(""),
            endpoint: OVERFLOW_ENDPOINT.into(),
        };
        let all = self
            .map
            .iter()
            .chain(std::iter::once((&overflow_key, &self.overflow)));
        let mut rows = Vec::new();
        for (key, e) in all {
            for window in Window::ALL {
                if let Some((calls, errors, h)) = e.rings[window.index()].totals(now_nanos) {
                    let (latency_values, latency_counts) = h
                        .iter_recorded()
                        .map(|v| (v.value_iterated_to(), u64::from(v.count_at_value())))
                        .unzip();
                    rows.push(WindowTotals {
                        window: window as u32,
                        service: key.service.to_string(),
                        endpoint: key.endpoint.to_string(),
                        calls,
                        errors,
                        latency_values,
                        latency_counts,
                    });
                }
            }
        }
        rows
    }

    pub fn cumulative(&self) -> Vec<CumulativeRow> {
        let overflow_key = EndpointKey {
            service: Arc::from(""),
            endpoint: "".into(),
        };
        let all = self
            .map
            .iter()
            .map(|(k, e)| (k, e, false))
            .chain(std::iter::once((&overflow_key, &self.overflow, true)));
        let mut rows = Vec::new();
        for (key, e, overflow) in all {
            for (kind, status, totals) in &e.cumulative {
                rows.push(CumulativeRow {
                    service: key.service.clone(),
                    endpoint: key.endpoint.clone(),
                    overflow,
                    kind: *kind,
                    status: *status,
                    totals: totals.clone(),
                });
            }
        }
        rows
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(duration_nanos: u64, status: StatusCode) -> SpanSample {
        SpanSample {
            kind: SpanKind::Server,
            status,
            duration_nanos,
        }
    }

    const SEC: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn svc(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn windows_round_up() {
        assert_eq!(Window::round_up(Duration::ZERO), Window::OneMinute);
        assert_eq!(Window::round_up(Duration::from_secs(60)), Window::OneMinute);
        assert_eq!(
            Window::round_up(Duration::from_secs(61)),
            Window::FiveMinutes
        );
        assert_eq!(
            Window::round_up(Duration::from_secs(300)),
            Window::FiveMinutes
        );
        assert_eq!(Window::round_up(Duration::from_secs(301)), Window::OneHour);
        assert_eq!(
            Window::round_up(Duration::from_secs(86_400)),
            Window::OneHour
        );
    }

    #[test]
    fn percentiles_match_values_computed_independently() {
        let mut table = EndpointTable::new(10);
        let checkout = svc("checkout");
        // 1..=100 ms, the 7 slowest with status ERROR.
        let now = 1_000 * SEC;
        for ms in 1..=100u64 {
            let status = if ms > 93 {
                StatusCode::Error
            } else {
                StatusCode::Ok
            };
            table.record(now, &checkout, "GET /cart", server(ms * MS, status));
        }
        let rows = table.stats(now, Window::OneMinute, None);
        assert_eq!(rows.len(), 1);
        let s = rows[0].summary;
        assert_eq!((s.calls, s.errors), (100, 7));
        // Nearest-rank percentiles of 1..=100 ms are 50, 95 and 99 ms;
        // hdrhistogram with 2 significant digits is within 1%.
        for (got, want) in [(s.p50, 50), (s.p95, 95), (s.p99, 99), (s.max, 100)] {
            let want = Duration::from_millis(want);
            let diff = got.abs_diff(want);
            assert!(diff <= want / 100, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn spans_leave_each_window_when_it_slides_past() {
        let mut table = EndpointTable::new(10);
        let s = svc("api");
        let t0 = 10_000 * SEC;
        table.record(t0, &s, "old", server(500 * MS, StatusCode::Error));
        table.record(t0 + 50 * SEC, &s, "old", server(10 * MS, StatusCode::Ok));
        let calls = |now: u64, w: Window| -> u64 {
            table
                .stats(now, w, Some("api"))
                .iter()
                .map(|r| r.summary.calls)
                .sum()
        };
        // Both spans are inside the minute at t0 + 55s.
        assert_eq!(calls(t0 + 55 * SEC, Window::OneMinute), 2);
        // 80 s later the first span (slot of 10 s) has left the 1 m window, not the 5 m one.
        assert_eq!(calls(t0 + 80 * SEC, Window::OneMinute), 1);
        assert_eq!(calls(t0 + 80 * SEC, Window::FiveMinutes), 2);
        // The window covers at most W + one slot: after 70 s + a slot everything has gone.
        assert_eq!(calls(t0 + 130 * SEC, Window::OneMinute), 0);
        assert_eq!(calls(t0 + 400 * SEC, Window::FiveMinutes), 0);
        assert_eq!(calls(t0 + 400 * SEC, Window::OneHour), 2);
        assert_eq!(calls(t0 + 5_000 * SEC, Window::OneHour), 0);
        // And the remaining span's latency is what the window reports.
        let rows = table.stats(t0 + 80 * SEC, Window::OneMinute, None);
        assert_eq!(rows[0].summary.errors, 0);
        assert!(
            rows[0].summary.max.abs_diff(Duration::from_millis(10)) < Duration::from_micros(100)
        );
    }

    #[test]
    fn a_slot_reused_after_a_full_turn_forgets_its_old_spans() {
        let mut table = EndpointTable::new(10);
        let s = svc("api");
        let t0 = 10_000 * SEC;
        table.record(t0, &s, "e", server(100 * MS, StatusCode::Error));
        // Exactly one ring turn later (7 slots of 10 s) the same slot is reused.
        let later = t0 + 70 * SEC;
        table.record(later, &s, "e", server(MS, StatusCode::Ok));
        let row = &table.stats(later, Window::OneMinute, None)[0];
        assert_eq!((row.summary.calls, row.summary.errors), (1, 0));
        assert!(row.summary.max < Duration::from_millis(2));
    }

    #[test]
    fn rows_are_sorted_and_filtered_by_service() {
        let mut table = EndpointTable::new(10);
        let now = 100 * SEC;
        for (service, endpoint) in [("b", "z"), ("a", "y"), ("b", "a"), ("a", "x")] {
            table.record(now, &svc(service), endpoint, server(MS, StatusCode::Unset));
        }
        let names: Vec<String> = table
            .stats(now, Window::OneMinute, None)
            .iter()
            .map(|r| format!("{}/{}", r.service, r.endpoint))
            .collect();
        assert_eq!(names, ["a/x", "a/y", "b/a", "b/z"]);
        assert_eq!(table.stats(now, Window::OneMinute, Some("b")).len(), 2);
        assert!(table.stats(now, Window::OneMinute, Some("c")).is_empty());
    }

    #[test]
    fn endpoints_beyond_the_bound_go_to_overflow_until_idle_ones_leave() {
        let mut table = EndpointTable::new(2);
        let s = svc("api");
        let now = 10 * SEC;
        let overflowed: Vec<bool> = [
            ("a", StatusCode::Ok),
            ("b", StatusCode::Ok),
            ("c", StatusCode::Error),
            ("d", StatusCode::Ok),
        ]
        .into_iter()
        .map(|(e, status)| table.record(now, &s, e, server(MS, status)))
        .collect();
        assert_eq!(table.len(), 2);
        assert_eq!(overflowed, [false, false, true, true]);
        let rows = table.stats(now, Window::OneMinute, None);
        let overflow = rows
            .iter()
            .find(|r| &*r.endpoint == OVERFLOW_ENDPOINT)
            .unwrap();
        assert_eq!((overflow.summary.calls, overflow.summary.errors), (2, 1));
        let series = table.cumulative();
        assert!(
            series
                .iter()
                .any(|r| r.overflow && r.status == StatusCode::Error)
        );
        // Two hours later "a" and "b" are idle: a new endpoint takes a place.
        let later = now + 7_200 * SEC;
        assert!(!table.record(later, &s, "e", server(MS, StatusCode::Ok)));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn cumulative_buckets_follow_spanmetrics_bounds() {
        let mut table = EndpointTable::new(10);
        let s = svc("api");
        for ms in [1, 2, 3, 50, 20_000] {
            table.record(SEC, &s, "e", server(ms * MS, StatusCode::Unset));
        }
        let rows = table.cumulative();
        assert_eq!(rows.len(), 1);
        let t = &rows[0].totals;
        assert_eq!(t.calls, 5);
        assert!((t.sum_ms - 20_056.0).abs() < 1e-6);
        // <=2: 1 and 2; <=4: 3; <=50: 50; +Inf: 20000.
        assert_eq!(t.buckets[0], 2);
        assert_eq!(t.buckets[1], 1);
        assert_eq!(t.buckets[5], 1);
        assert_eq!(t.buckets[16], 1);
        assert_eq!(t.buckets.iter().sum::<u64>(), 5);
    }

    #[test]
    fn every_kind_is_a_series_but_only_entries_are_endpoints() {
        let mut table = EndpointTable::new(10);
        let s = svc("checkout");
        table.record(SEC, &s, "GET /cart", server(MS, StatusCode::Unset));
        let client = SpanSample {
            kind: SpanKind::Client,
            status: StatusCode::Error,
            duration_nanos: 2 * MS,
        };
        table.record(SEC, &s, "SELECT carts", client);
        let stats = table.stats(SEC, Window::OneMinute, None);
        let endpoints: Vec<&str> = stats.iter().map(|r| &*r.endpoint).collect();
        assert_eq!(endpoints, vec!["GET /cart"], "a client span is no endpoint");
        let mut series: Vec<(String, SpanKind, StatusCode, u64)> = table
            .cumulative()
            .into_iter()
            .map(|r| (r.endpoint.to_string(), r.kind, r.status, r.totals.calls))
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            series,
            vec![
                ("GET /cart".into(), SpanKind::Server, StatusCode::Unset, 1),
                (
                    "SELECT carts".into(),
                    SpanKind::Client,
                    StatusCode::Error,
                    1
                ),
            ]
        );
    }
}
