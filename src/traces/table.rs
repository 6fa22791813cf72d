//! Recent traces in memory, bounded by spans and bytes. Whole traces are
//! evicted, oldest first (by when their first span arrived), so a trace is
//! either complete as received or gone — never a misleading fragment. Spans
//! that arrive late join their trace; a span sent twice (an exporter's retry)
//! is kept once.

use std::collections::{HashMap, VecDeque};

use super::span::{Span, TraceId, order_parents_first};

type Hasher = foldhash::fast::RandomState;

/// What a trace costs besides its spans: its map slot (key, entry, control
/// byte) and its place in the eviction order. Counted in `max_bytes`.
const TRACE_OVERHEAD: usize =
    std::mem::size_of::<(TraceId, Entry)>() + 1 + std::mem::size_of::<(TraceId, u64)>();

#[derive(Debug)]
struct Entry {
    /// Arrival number of the trace's first span: its place in `order`.
    seq: u64,
    spans: Vec<Span>,
    bytes: usize,
}

/// What one insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inserted {
    /// The span was new (false: same trace and span id already held).
    pub stored: bool,
    pub evicted_traces: u64,
    pub evicted_spans: u64,
}

#[derive(Debug)]
pub struct TraceTable {
    traces: HashMap<TraceId, Entry, Hasher>,
    order: VecDeque<(TraceId, u64)>,
    next_seq: u64,
    spans: usize,
    bytes: usize,
    max_spans: usize,
    max_bytes: usize,
}

/// Sizes for the gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableSize {
    pub traces: usize,
    pub spans: usize,
    pub bytes: usize,
}

impl TraceTable {
    pub fn new(max_spans: usize, max_bytes: usize) -> Self {
        Self {
            traces: HashMap::default(),
            order: VecDeque::new(),
            next_seq: 0,
            spans: 0,
            bytes: 0,
            max_spans: max_spans.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Stores a span unless the trace already holds its id; `on_new` sees
    /// each span that is stored, before it is (one lookup for both).
    pub fn insert(&mut self, span: Span, on_new: impl FnOnce(&Span)) -> Inserted {
        let weight = span.weight();
        let trace_id = span.trace_id;
        let entry = match self.traces.get_mut(&trace_id) {
            Some(entry) => entry,
            None => {
                self.bytes += TRACE_OVERHEAD;
                let seq = self.next_seq;
                self.next_seq += 1;
                self.order.push_back((trace_id, seq));
                // Most traces hold a few spans: start at one slot, not Vec's four.
                self.traces.entry(trace_id).or_insert(Entry {
                    seq,
                    spans: Vec::with_capacity(1),
                    bytes: TRACE_OVERHEAD,
                })
            }
        };
        // Traces are small; a linear scan beats a per-trace set.
        if entry.spans.iter().any(|s| s.span_id == span.span_id) {
            return Inserted::default();
        }
        on_new(&span);
        entry.spans.push(span);
        entry.bytes += weight;
        self.spans += 1;
        self.bytes += weight;
        let (evicted_traces, evicted_spans) = self.evict_over_bounds();
        Inserted {
            stored: true,
            evicted_traces,
            evicted_spans,
        }
    }

    /// Oldest traces go until both bounds hold again.
    fn evict_over_bounds(&mut self) -> (u64, u64) {
        let (mut traces, mut spans) = (0, 0);
        while self.spans > self.max_spans || self.bytes > self.max_bytes {
            let Some((id, seq)) = self.order.pop_front() else {
                break;
            };
            if self.traces.get(&id).is_some_and(|e| e.seq == seq)
                && let Some(entry) = self.traces.remove(&id)
            {
                self.spans -= entry.spans.len();
                self.bytes -= entry.bytes;
                traces += 1;
                spans += entry.spans.len() as u64;
            }
        }
        (traces, spans)
    }

    /// A trace's spans, parents before children; None when unknown.
    pub fn get(&self, trace_id: &TraceId) -> Option<Vec<Span>> {
        self.traces
            .get(trace_id)
            .map(|e| order_parents_first(e.spans.clone()))
    }

    pub fn size(&self) -> TableSize {
        TableSize {
            traces: self.traces.len(),
            spans: self.spans,
            bytes: self.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces::span::sample;

    #[test]
    fn late_spans_join_their_trace_and_retries_are_kept_once() {
        let mut table = TraceTable::new(100, usize::MAX);
        assert!(table.insert(sample(1, 2, Some(1), 20), |_| {}).stored);
        assert!(table.insert(sample(2, 1, None, 5), |_| {}).stored);
        // The root arrives after its child, and the child is sent again.
        assert!(table.insert(sample(1, 1, None, 10), |_| {}).stored);
        assert!(!table.insert(sample(1, 2, Some(1), 20), |_| {}).stored);
        let trace: Vec<u8> = table
            .get(&[1; 16])
            .unwrap()
            .iter()
            .map(|s| s.span_id[0])
            .collect();
        assert_eq!(trace, vec![1, 2]);
        assert_eq!(table.size().spans, 3);
        assert_eq!(table.size().traces, 2);
        assert!(table.get(&[9; 16]).is_none());
    }

    #[test]
    fn whole_traces_are_evicted_oldest_first_by_span_count() {
        let mut table = TraceTable::new(5, usize::MAX);
        for span in 1..=3 {
            table.insert(sample(1, span, None, 1), |_| {});
        }
        table.insert(sample(2, 1, None, 1), |_| {});
        table.insert(sample(3, 1, None, 1), |_| {});
        // A late span of the oldest trace does not make it younger.
        let inserted = table.insert(sample(2, 2, None, 1), |_| {});
        assert_eq!((inserted.evicted_traces, inserted.evicted_spans), (1, 3));
        assert!(table.get(&[1; 16]).is_none());
        assert_eq!(table.get(&[2; 16]).unwrap().len(), 2);
        assert_eq!(
            table.size(),
            TableSize {
                traces: 2,
                spans: 3,
                bytes: table.size().bytes
            }
        );
    }

    #[test]
    fn bytes_bound_evicts_and_accounting_returns_to_zero_sum() {
        let weight = sample(1, 1, None, 1).weight();
        let bound = weight * 10 + TRACE_OVERHEAD * 3;
        let mut table = TraceTable::new(usize::MAX, bound);
        let mut evicted = 0;
        for trace in 1..=50u8 {
            for span in 1..=3 {
                evicted += table
                    .insert(sample(trace, span, None, 1), |_| {})
                    .evicted_spans;
            }
            let size = table.size();
            assert!(size.bytes <= bound, "over the byte bound: {size:?}");
            assert_eq!(
                size.bytes,
                size.spans * weight + size.traces * TRACE_OVERHEAD
            );
        }
        // Three traces of 3 fit; a fourth pushes the oldest out whole.
        assert_eq!(table.size().spans, 9);
        assert_eq!(evicted, 150 - 9);
        assert!(table.get(&[50; 16]).is_some());
        assert!(table.get(&[46; 16]).is_none());
    }

    #[test]
    fn a_trace_bigger_than_the_bound_is_not_kept_forever() {
        let mut table = TraceTable::new(2, usize::MAX);
        for span in 1..=3 {
            table.insert(sample(1, span, None, 1), |_| {});
        }
        assert!(table.size().spans <= 2);
        // The table still works afterwards.
        table.insert(sample(2, 1, None, 1), |_| {});
        assert!(table.get(&[2; 16]).is_some());
    }
}
