//! Spans in the store (`traces.persist`), so GetTrace finds a trace after it
//! left memory or the server restarted, until the retention has passed.
//!
//! One record per trace per stored group (the spans the worker stored
//! together), so the store sees one write per trace rather than per span,
//! and one retention entry per group:
//! - `s` trace_id(16) group(8) → gantry's protobuf `Trace` with those spans
//! - `r` arrival_secs(8) group(8) → the group's span count (4) and trace ids
//!   (16 bytes each), in arrival order, so the sweep reads only what has expired.
//!
//! Integers are big-endian, so keys sort by time and group.

use std::collections::BTreeMap;

use prost::Message;

use super::convert::{from_gantry, to_gantry};
use super::span::{Span, SpanLimits, TraceId};
use crate::proto::gantry::v1 as pb;
use crate::store::{BatchOp, StoreError, Tree};

const SPANS: u8 = b's';
const RETENTION: u8 = b'r';

fn record_key(trace_id: &TraceId, group: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(25);
    key.push(SPANS);
    key.extend_from_slice(trace_id);
    key.extend_from_slice(&group.to_be_bytes());
    key
}

/// The spans the worker stored together, converted once as they are stored
/// (no copy of the domain span is kept for the disk).
#[derive(Debug, Default)]
pub struct Group {
    by_trace: BTreeMap<TraceId, Vec<pb::Span>>,
    spans: usize,
}

impl Group {
    pub fn add(&mut self, span: &Span) {
        self.by_trace
            .entry(span.trace_id)
            .or_default()
            .push(to_gantry(span));
        self.spans += 1;
    }

    pub fn len(&self) -> usize {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// The writes that persist the group, arrived at `arrival_secs`. `group`
    /// must be unique for the store's lifetime (the store's id generator).
    pub fn into_ops(self, group: u64, arrival_secs: u64) -> Vec<BatchOp> {
        let mut ops = Vec::with_capacity(self.by_trace.len() + 1);
        let mut index = Vec::with_capacity(4 + self.by_trace.len() * 16);
        index.extend_from_slice(&u32::try_from(self.spans).unwrap_or(u32::MAX).to_be_bytes());
        for (trace_id, spans) in self.by_trace {
            index.extend_from_slice(&trace_id);
            let record = pb::Trace {
                trace_id: trace_id.to_vec().into(),
                spans,
            };
            ops.push(BatchOp::Insert(
                record_key(&trace_id, group),
                record.encode_to_vec(),
            ));
        }
        let mut key = Vec::with_capacity(17);
        key.push(RETENTION);
        key.extend_from_slice(&arrival_secs.to_be_bytes());
        key.extend_from_slice(&group.to_be_bytes());
        ops.push(BatchOp::Insert(key, index));
        ops
    }
}

#[cfg(test)]
fn write_ops(spans: &[Span], group: u64, arrival_secs: u64) -> Vec<BatchOp> {
    let mut g = Group::default();
    spans.iter().for_each(|s| g.add(s));
    g.into_ops(group, arrival_secs)
}

/// The persisted spans of one trace. Records that no longer decode are
/// skipped: one damaged record must not hide the rest of its trace.
pub fn read_trace(tree: &dyn Tree, trace_id: &TraceId) -> Result<Vec<Span>, StoreError> {
    let mut prefix = Vec::with_capacity(17);
    prefix.push(SPANS);
    prefix.extend_from_slice(trace_id);
    let mut records = Vec::new();
    for item in tree.scan_prefix(&prefix) {
        records.push(item?.1);
    }
    Ok(decode_records(records))
}

/// The spans of stored `gantry.v1.Trace` records (sled's or Redis's); a
/// record that does not decode is skipped.
pub fn decode_records<R: AsRef<[u8]>>(records: impl IntoIterator<Item = R>) -> Vec<Span> {
    let mut decoded = Vec::new();
    for record in records {
        if let Ok(trace) = pb::Trace::decode(record.as_ref()) {
            decoded.extend(trace.spans);
        }
    }
    // Stored spans passed the checks once; do not apply today's limits again.
    let limits = SpanLimits {
        max_name_bytes: usize::MAX,
        max_attributes: usize::MAX,
        max_attribute_bytes: usize::MAX,
    };
    from_gantry(decoded, &limits).spans
}

/// Removes up to `max_groups` groups that arrived before `cutoff_secs`;
/// returns how many groups and spans went. Call again while the first
/// number is `max_groups`.
pub fn sweep(
    tree: &dyn Tree,
    cutoff_secs: u64,
    max_groups: usize,
) -> Result<(usize, usize), StoreError> {
    let mut ops = Vec::new();
    let (mut groups, mut spans) = (0, 0);
    for item in tree.scan_prefix(&[RETENTION]) {
        if groups >= max_groups {
            break;
        }
        let (key, value) = item?;
        let parsed = key.get(1..9).zip(key.get(9..17)).and_then(|(secs, group)| {
            Some((
                <[u8; 8]>::try_from(secs).ok()?,
                <[u8; 8]>::try_from(group).ok()?,
            ))
        });
        let Some((secs, group)) = parsed else {
            ops.push(BatchOp::Remove(key));
            continue;
        };
        if u64::from_be_bytes(secs) >= cutoff_secs {
            break;
        }
        let (count, traces) = value.split_first_chunk::<4>().unwrap_or((&[0; 4], &[]));
        spans += u32::from_be_bytes(*count) as usize;
        for trace_id in traces.chunks_exact(16) {
            if let Ok(trace_id) = <TraceId>::try_from(trace_id) {
                ops.push(BatchOp::Remove(record_key(
                    &trace_id,
                    u64::from_be_bytes(group),
                )));
            }
        }
        ops.push(BatchOp::Remove(key));
        groups += 1;
    }
    if !ops.is_empty() {
        tree.apply_batch(ops)?;
    }
    Ok((groups, spans))
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
        let a3 = sample(1, 3, Some(1), 30);
        let b1 = sample(2, 1, None, 30);
        // Two traces in group 7 (one record each), a late span of trace 1 in group 8.
        let ops = write_ops(&[a1.clone(), b1.clone(), a2.clone()], 7, 100);
        assert_eq!(ops.len(), 3);
        tree.apply_batch(ops).unwrap();
        tree.apply_batch(write_ops(std::slice::from_ref(&a3), 8, 200))
            .unwrap();

        let mut trace = read_trace(&*tree, &[1; 16]).unwrap();
        trace.sort_by_key(|s| s.span_id);
        assert_eq!(trace, vec![a1, a2, a3.clone()]);
        assert_eq!(read_trace(&*tree, &[2; 16]).unwrap(), vec![b1]);
        assert!(read_trace(&*tree, &[3; 16]).unwrap().is_empty());

        // Retention: group 7 arrived before 150 s and goes, in steps of one group.
        assert_eq!(sweep(&*tree, 150, 1).unwrap(), (1, 3));
        assert_eq!(sweep(&*tree, 150, 1).unwrap(), (0, 0));
        assert_eq!(read_trace(&*tree, &[1; 16]).unwrap(), vec![a3]);
        assert!(read_trace(&*tree, &[2; 16]).unwrap().is_empty());
        assert_eq!(sweep(&*tree, 250, 10).unwrap(), (1, 1));
        assert!(tree.is_empty());
    }
}
