//! Saving and restoring the statistics and the slow-query log: one record
//! (`state` in the `query` tree), written whole, so a save is atomic.
//! Histograms are kept as (value, count) pairs.

use std::time::Duration;

use prost::Message;

use super::slowlog::SlowQuery;
use super::stats::{Batching, Entry, Key};
use crate::store::{StoreError, Tree};

const STATE_KEY: &[u8] = b"state";

#[derive(Clone, PartialEq, prost::Message)]
struct SavedEntry {
    #[prost(string, tag = "1")]
    fingerprint: String,
    #[prost(string, tag = "2")]
    service: String,
    #[prost(uint64, tag = "3")]
    calls: u64,
    #[prost(uint64, tag = "4")]
    total_nanos_high: u64,
    #[prost(uint64, tag = "5")]
    total_nanos_low: u64,
    #[prost(uint64, tag = "6")]
    min_nanos: u64,
    #[prost(uint64, tag = "7")]
    max_nanos: u64,
    #[prost(double, tag = "8")]
    mean_nanos: f64,
    #[prost(double, tag = "9")]
    m2: f64,
    #[prost(uint64, repeated, tag = "10")]
    latency_values: Vec<u64>,
    #[prost(uint64, repeated, tag = "11")]
    latency_counts: Vec<u64>,
    #[prost(uint64, tag = "12")]
    rows: u64,
    #[prost(uint64, tag = "13")]
    first_seen_ms: u64,
    #[prost(uint64, tag = "14")]
    last_seen_ms: u64,
    #[prost(string, tag = "15")]
    sample: String,
    #[prost(uint64, tag = "16")]
    max_per_trace: u64,
    #[prost(uint64, tag = "17")]
    occurrences: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SavedSlow {
    #[prost(string, tag = "1")]
    fingerprint: String,
    #[prost(string, tag = "2")]
    text: String,
    #[prost(uint64, tag = "3")]
    duration_nanos: u64,
    #[prost(uint64, tag = "4")]
    rows: u64,
    #[prost(string, tag = "5")]
    service: String,
    #[prost(string, tag = "6")]
    trace_id: String,
    #[prost(uint64, tag = "7")]
    time_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SavedState {
    #[prost(message, repeated, tag = "1")]
    entries: Vec<SavedEntry>,
    #[prost(message, repeated, tag = "2")]
    slow: Vec<SavedSlow>,
}

fn save_entry(key: &Key, e: &Entry) -> SavedEntry {
    let (latency_values, latency_counts) = e
        .latency
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), u64::from(v.count_at_value())))
        .unzip();
    SavedEntry {
        fingerprint: key.fingerprint.clone(),
        service: key.service.clone(),
        calls: e.calls,
        total_nanos_high: (e.total_nanos >> 64) as u64,
        total_nanos_low: e.total_nanos as u64,
        min_nanos: e.min_nanos,
        max_nanos: e.max_nanos,
        mean_nanos: e.mean_nanos,
        m2: e.m2,
        latency_values,
        latency_counts,
        rows: e.rows,
        first_seen_ms: e.first_seen_ms,
        last_seen_ms: e.last_seen_ms,
        sample: e.sample.clone(),
        max_per_trace: e.batching.max_per_trace,
        occurrences: e.batching.occurrences,
    }
}

fn load_entry(s: SavedEntry) -> (Key, Entry) {
    let mut e = Entry::new(s.sample, s.first_seen_ms);
    e.calls = s.calls;
    e.total_nanos = (u128::from(s.total_nanos_high) << 64) | u128::from(s.total_nanos_low);
    e.min_nanos = s.min_nanos;
    e.max_nanos = s.max_nanos;
    e.mean_nanos = s.mean_nanos;
    e.m2 = s.m2;
    for (value, count) in s.latency_values.into_iter().zip(s.latency_counts) {
        let _ = e
            .latency
            .record_n(value.max(1), u32::try_from(count).unwrap_or(u32::MAX));
    }
    e.rows = s.rows;
    e.last_seen_ms = s.last_seen_ms;
    e.batching = Batching {
        max_per_trace: s.max_per_trace,
        occurrences: s.occurrences,
    };
    (
        Key {
            fingerprint: s.fingerprint,
            service: s.service,
        },
        e,
    )
}

pub fn save<'a>(
    tree: &dyn Tree,
    entries: impl Iterator<Item = (&'a Key, &'a Entry)>,
    slow: impl Iterator<Item = &'a SlowQuery>,
) -> Result<usize, StoreError> {
    let (bytes, count) = encode(entries, slow);
    tree.set(STATE_KEY, &bytes)?;
    Ok(count)
}

/// The statistics and slow log as bytes (what `save` stores, and what a
/// replica publishes for the fleet view), with the number of statistics.
pub fn encode<'a>(
    entries: impl Iterator<Item = (&'a Key, &'a Entry)>,
    slow: impl Iterator<Item = &'a SlowQuery>,
) -> (Vec<u8>, usize) {
    let state = SavedState {
        entries: entries.map(|(k, e)| save_entry(k, e)).collect(),
        slow: slow
            .map(|q| SavedSlow {
                fingerprint: q.fingerprint.clone(),
                text: q.text.clone(),
                duration_nanos: u64::try_from(q.duration.as_nanos()).unwrap_or(u64::MAX),
                rows: q.rows,
                service: q.service.clone(),
                trace_id: q.trace_id.clone(),
                time_ms: q.time_ms,
            })
            .collect(),
    };
    let count = state.entries.len();
    (state.encode_to_vec(), count)
}

/// The saved statistics and slow log; empty when nothing was saved. A
/// record that does not decode is an error (the caller starts empty and says so).
/// What a save wrote: the statistics and the slow log.
pub type Saved = (Vec<(Key, Entry)>, Vec<SlowQuery>);

pub fn load(tree: &dyn Tree) -> Result<Saved, StoreError> {
    let Some(bytes) = tree.get(STATE_KEY)? else {
        return Ok((Vec::new(), Vec::new()));
    };
    decode(&bytes).map_err(|e| StoreError::Io(format!("saved query statistics do not decode: {e}")))
}

/// What [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Saved, prost::DecodeError> {
    let state = SavedState::decode(bytes)?;
    let entries = state.entries.into_iter().map(load_entry).collect();
    let slow = state
        .slow
        .into_iter()
        .map(|s| SlowQuery {
            fingerprint: s.fingerprint,
            text: s.text,
            duration: Duration::from_nanos(s.duration_nanos),
            rows: s.rows,
            service: s.service,
            trace_id: s.trace_id,
            time_ms: s.time_ms,
        })
        .collect();
    Ok((entries, slow))
}
