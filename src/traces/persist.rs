//! Spans in the store (`traces.persist`), so GetTrace finds a trace after it
//! left memory or the server restarted, until the retention has passed.
//!
//! Layout in the `traces` tree:
//! - `s` trace_id(16) span_id(8) → the span as gantry's protobuf `Span`
//! - `r` arrival_secs(8, big-endian) trace_id span_id → empty: the retention
//!   index, in arrival order, so the sweep reads only what has expired.

use prost::Message;

use super::convert::{from_gantry, to_gantry};
use super::span::{Span, SpanLimits, TraceId};
use crate::proto::gantry::v1 as pb;
use crate::store::{BatchOp, StoreError, Tree};

const SPAN: u8 = b's';
const RETENTION: u8 = b'r';

fn span_key(span: &Span) -> Vec<u8> {
    let mut key = Vec::with_capacity(25);
    key.push(SPAN);
    key.extend_from_slice(&span.trace_id);
    key.extend_from_slice(&span.span_id);
    key
}

fn retention_key(arrival_secs: u64, span: &Span) -> Vec<u8> {
    let mut key = Vec::with_capacity(33);
    key.push(RETENTION);
    key.extend_from_slice(&arrival_secs.to_be_bytes());
    key.extend_from_slice(&span.trace_id);
    key.extend_from_slice(&span.span_id);
    key
}

/// The writes that persist `spans`, arrived at `arrival_secs`.
pub fn write_ops(spans: &[&Span], arrival_secs: u64) -> Vec<BatchOp> {
    let mut ops = Vec::with_capacity(spans.len() * 2);
    for span in spans {
        let encoded = to_gantry((*span).clone()).encode_to_vec();
        ops.push(BatchOp::Insert(span_key(span), encoded));
        ops.push(BatchOp::Insert(
            retention_key(arrival_secs, span),
            Vec::new(),
        ));
    }
    ops
}

/// The persisted spans of one trace, in key (span id) order. Entries that no
/// longer decode are skipped: one damaged span must not hide its trace.
pub fn read_trace(tree: &dyn Tree, trace_id: &TraceId) -> Result<Vec<Span>, StoreError> {
    let mut prefix = Vec::with_capacity(17);
    prefix.push(SPAN);
    prefix.extend_from_slice(trace_id);
    let mut decoded = Vec::new();
    for item in tree.scan_prefix(&prefix) {
        let (_, value) = item?;
        if let Ok(span) = pb::Span::decode(value.as_slice()) {
            decoded.push(span);
        }
    }
    // Stored spans passed the checks once; do not apply today's limits again.
    let limits = SpanLimits {
        max_name_bytes: usize::MAX,
        max_attributes: usize::MAX,
        max_attribute_bytes: usize::MAX,
    };
    Ok(from_gantry(decoded, &limits).spans)
}

/// Removes up to `max` spans that arrived before `cutoff_secs`; returns how
/// many went. Call again while it returns `max`.
pub fn sweep(tree: &dyn Tree, cutoff_secs: u64, max: usize) -> Result<usize, StoreError> {
    let mut ops = Vec::new();
    let mut removed = 0;
    for item in tree.scan_prefix(&[RETENTION]) {
        if removed >= max {
            break;
        }
        let (key, _) = item?;
        let Some(secs) = key.get(1..9).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
            ops.push(BatchOp::Remove(key));
            continue;
        };
        if u64::from_be_bytes(secs) >= cutoff_secs {
            break;
        }
        let mut span = Vec::with_capacity(25);
        span.push(SPAN);
        span.extend_from_slice(&key[9..]);
        ops.push(BatchOp::Remove(span));
        ops.push(BatchOp::Remove(key));
        removed += 1;
    }
    if !ops.is_empty() {
        tree.apply_batch(ops)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Domain, temp_store};
    use crate::traces::span::sample;

    #[test]
    fn spans_are_read_back_by_trace_and_swept_after_retention() {
        let (_dir, store) = temp_store();
        let tree = store.tree(Domain::Traces);
        let a1 = sample(1, 1, None, 10);
        let a2 = sample(1, 2, Some(1), 20);
        let b1 = sample(2, 1, None, 30);
        tree.apply_batch(write_ops(&[&a1, &a2], 100)).unwrap();
        tree.apply_batch(write_ops(&[&b1], 200)).unwrap();

        let mut trace = read_trace(&*tree, &[1; 16]).unwrap();
        trace.sort_by_key(|s| s.span_id);
        assert_eq!(trace, vec![a1, a2]);
        assert!(read_trace(&*tree, &[3; 16]).unwrap().is_empty());

        // Retention: everything that arrived before 150 s goes, in steps of 1.
        assert_eq!(sweep(&*tree, 150, 1).unwrap(), 1);
        assert_eq!(sweep(&*tree, 150, 1).unwrap(), 1);
        assert_eq!(sweep(&*tree, 150, 1).unwrap(), 0);
        assert!(read_trace(&*tree, &[1; 16]).unwrap().is_empty());
        assert_eq!(read_trace(&*tree, &[2; 16]).unwrap(), vec![b1]);
        assert_eq!(tree.len(), 2);
    }
}
