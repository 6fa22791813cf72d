//! Spans kept in Redis as well (`storage.backend = "redis"`), so `GetTrace`
//! on any replica returns a trace whose spans arrived through different
//! replicas.
//!
//! Each accepted batch appends, per trace, one encoded `gantry.v1.Trace`
//! record to the list `<prefix>:tr:<trace id hex>`, which expires
//! `traces.retention` after its last append. GetTrace merges those records
//! with what the replica holds in memory, one span per span id. Each replica
//! still keeps its own in-memory table, endpoint statistics and forwarding.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;

use super::convert::to_gantry;
use super::span::{self, Span, TraceId};
use crate::proto::gantry::v1 as pb;
use crate::store::StoreError;
use crate::store::redis::RedisStore;

#[derive(Clone)]
pub struct RedisSpans {
    store: RedisStore,
    retention: Duration,
}

impl RedisSpans {
    pub fn new(store: RedisStore, retention: Duration) -> Self {
        Self { store, retention }
    }

    fn key(&self, trace_id: &TraceId) -> String {
        self.store.key("tr", &span::hex(trace_id))
    }

    /// Appends the spans, one record per trace, in one round trip.
    pub async fn append(&self, spans: &[Span]) -> Result<(), StoreError> {
        let mut by_trace: BTreeMap<TraceId, Vec<pb::Span>> = BTreeMap::new();
        for span in spans {
            by_trace
                .entry(span.trace_id)
                .or_default()
                .push(to_gantry(span));
        }
        let ttl_ms = u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX);
        let mut pipeline = redis::pipe();
        for (trace_id, spans) in by_trace {
            let key = self.key(&trace_id);
            let record = pb::Trace {
                trace_id: trace_id.to_vec().into(),
                spans,
            };
            pipeline
                .cmd("RPUSH")
                .arg(&key)
                .arg(record.encode_to_vec())
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl_ms)
                .ignore();
        }
        // On a cluster each trace's two commands go to its own slot.
        if self.store.is_cluster() {
            let commands: Vec<redis::Cmd> = pipeline.cmd_iter().cloned().collect();
            for pair in commands.chunks(2) {
                let mut one = redis::pipe();
                for cmd in pair {
                    one.add_command(cmd.clone()).ignore();
                }
                self.run(&one).await?;
            }
            return Ok(());
        }
        self.run(&pipeline).await
    }

    async fn run(&self, pipeline: &redis::Pipeline) -> Result<(), StoreError> {
        let () = self
            .store
            .pipeline(pipeline)
            .await
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(())
    }

    /// Every span of a trace that any replica appended.
    pub async fn read(&self, trace_id: &TraceId) -> Result<Vec<Span>, StoreError> {
        let records: Vec<Vec<u8>> = self
            .store
            .command(redis::cmd("LRANGE").arg(self.key(trace_id)).arg(0).arg(-1))
            .await
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(super::persist::decode_records(records))
    }
}
