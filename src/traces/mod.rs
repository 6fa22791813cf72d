//! Span ingestion: gantry's `Ingest` and OTLP `Export` land in one pipeline —
//! a bounded queue in front of one worker thread that stores spans in the
//! trace table (and the store, with `traces.persist`), counts server and
//! consumer spans per endpoint, and hands accepted spans to the forwarder.
//!
//! A call is answered after its spans are stored, so GetTrace sees them at
//! once. A full queue refuses the call at once (RESOURCE_EXHAUSTED; OTLP
//! exporters retry) rather than letting callers pile up.

pub mod attributes;
pub mod config;
pub mod convert;
pub mod endpoints;
pub mod forward;
pub mod metrics;
pub mod otlp_http;
pub mod persist;
pub mod runtime;
pub mod service;
pub mod shared;
pub mod span;
pub mod status;
pub mod table;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::config::TracesConfig;
use crate::error::FieldError;
use crate::store::{Store, StoreError, Tree};
use endpoints::{EndpointRow, EndpointTable, Window};
use forward::{ForwardItem, Forwarder};
use metrics::TracesMetrics;
use span::{Span, SpanLimits, TraceId};
use table::TraceTable;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TracesError {
    /// A malformed field (a bad trace id, a batch over `traces.max_batch`).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(
        "the ingestion queue is full ({queued} spans waiting, traces.queue_spans = {capacity}); retry with backoff"
    )]
    QueueFull { queued: usize, capacity: usize },
    #[error("trace {0} not found")]
    NotFound(String),
    #[error("the ingestion worker has stopped")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

struct Job {
    spans: Vec<Span>,
    done: oneshot::Sender<usize>,
}

enum Message {
    Spans(Job),
    /// Answered once everything before it is stored.
    Drain(oneshot::Sender<()>),
}

/// Where persisted spans go, and the store's id generator for group ids.
struct Persist {
    tree: Arc<dyn Tree>,
    store: Arc<dyn Store>,
}

struct Shared {
    table: Mutex<TraceTable>,
    endpoints: Arc<Mutex<EndpointTable>>,
    persist: Option<Persist>,
    metrics: TracesMetrics,
    queued: AtomicUsize,
}

/// The handle every adapter shares.
#[derive(Clone)]
pub struct Traces {
    shared: Arc<Shared>,
    /// Spans in Redis too, for GetTrace on any replica (`storage.backend = "redis"`).
    redis: Option<shared::RedisSpans>,
    queue: mpsc::Sender<Message>,
    forwarder: Option<Forwarder>,
    capacity: usize,
    max_batch: usize,
    limits: SpanLimits,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces")
            .field("capacity", &self.capacity)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

fn size(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl Traces {
    /// Starts the worker thread. `forwarder`: where accepted spans also go.
    pub fn start(
        config: &TracesConfig,
        store: &Arc<dyn Store>,
        metrics: TracesMetrics,
        forwarder: Option<Forwarder>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            table: Mutex::new(TraceTable::new(
                size(config.max_spans),
                size(config.max_bytes),
            )),
            endpoints: Arc::new(Mutex::new(EndpointTable::new(size(config.max_endpoints)))),
            persist: config.persist.then(|| Persist {
                tree: store.tree(crate::store::Domain::Traces),
                store: store.clone(),
            }),
            metrics,
            queued: AtomicUsize::new(0),
        });
        let (queue, jobs) = mpsc::channel();
        let worker_shared = shared.clone();
        // The worker ends when the last handle (and so the last sender) is dropped.
        std::thread::Builder::new()
            .name("gantry-traces".into())
            .spawn(move || run_worker(&worker_shared, &jobs))?;
        Ok(Self {
            shared,
            redis: None,
            queue,
            forwarder,
            capacity: size(config.queue_spans),
            max_batch: size(config.max_batch),
            limits: SpanLimits {
                max_name_bytes: size(config.max_name_bytes),
                max_attributes: size(config.max_attributes),
                max_attribute_bytes: size(config.max_attribute_bytes),
            },
        })
    }

    /// Keeps accepted spans in Redis as well, for GetTrace on any replica.
    pub fn with_redis(mut self, spans: shared::RedisSpans) -> Self {
        self.redis = Some(spans);
        self
    }

    /// Whether spans also go to Redis.
    pub fn shared(&self) -> bool {
        self.redis.is_some()
    }

    /// [`Self::get`], merged with the spans every replica put in Redis.
    pub async fn get_anywhere(&self, trace_id: &[u8]) -> Result<Vec<Span>, TracesError> {
        let Some(redis) = &self.redis else {
            return self.get(trace_id);
        };
        let id: TraceId = span::parse_trace_id(trace_id)
            .map_err(|e| FieldError::new("trace_id", e.to_string()))?;
        let mut spans = match self.get(trace_id) {
            Ok(spans) => spans,
            Err(TracesError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        for s in redis.read(&id).await? {
            if !spans.iter().any(|m| m.span_id == s.span_id) {
                spans.push(s);
            }
        }
        if spans.is_empty() {
            return Err(TracesError::NotFound(span::hex(&id)));
        }
        Ok(span::order_parents_first(spans))
    }

    pub fn limits(&self) -> &SpanLimits {
        &self.limits
    }

    pub fn metrics(&self) -> &TracesMetrics {
        &self.shared.metrics
    }

    pub fn forwarding(&self) -> bool {
        self.forwarder.is_some()
    }

    /// The endpoint table, for the /metrics collector.
    pub fn endpoint_table(&self) -> Arc<Mutex<EndpointTable>> {
        self.shared.endpoints.clone()
    }

    /// Refuses a request with more spans than `traces.max_batch`, before any work.
    pub fn check_batch(&self, count: usize) -> Result<(), TracesError> {
        if count > self.max_batch {
            let reason = format!(
                "{count} spans in one request, more than traces.max_batch ({})",
                self.max_batch
            );
            return Err(FieldError::new("spans", reason).into());
        }
        Ok(())
    }

    /// Stores valid spans and answers once they are stored; `forward` is
    /// what goes to the forward endpoint (None: the spans themselves).
    /// Returns how many were new (a retried span is stored once).
    pub async fn submit(
        &self,
        spans: Vec<Span>,
        forward: Option<ForwardItem>,
    ) -> Result<usize, TracesError> {
        let count = spans.len();
        if count == 0 {
            return Ok(0);
        }
        let before = self.shared.queued.fetch_add(count, Ordering::AcqRel);
        if before + count > self.capacity {
            self.shared.queued.fetch_sub(count, Ordering::AcqRel);
            self.shared.metrics.drop_spans("pipeline_full", count);
            return Err(TracesError::QueueFull {
                queued: before,
                capacity: self.capacity,
            });
        }
        self.shared.metrics.queue_spans.set((before + count) as i64);
        if let Some(forwarder) = &self.forwarder {
            let item = forward.unwrap_or_else(|| ForwardItem::Spans(spans.clone()));
            forwarder.offer(item, count);
        }
        // With Redis, the spans go there too before the answer (a failure
        // is UNAVAILABLE: the exporter retries, and the replica's own table
        // stores a retried span once).
        let for_redis = self.redis.as_ref().map(|_| spans.clone());
        let (done, stored) = oneshot::channel();
        if self
            .queue
            .send(Message::Spans(Job { spans, done }))
            .is_err()
        {
            self.shared.queued.fetch_sub(count, Ordering::AcqRel);
            return Err(TracesError::Stopped);
        }
        let new = stored.await.map_err(|_| TracesError::Stopped)?;
        if let (Some(redis), Some(spans)) = (&self.redis, for_redis) {
            redis.append(&spans).await?;
        }
        Ok(new)
    }

    /// A trace, parents before children: the spans in memory together with
    /// the persisted ones (a trace evicted from memory may have late spans there).
    pub fn get(&self, trace_id: &[u8]) -> Result<Vec<Span>, TracesError> {
        let id: TraceId = span::parse_trace_id(trace_id)
            .map_err(|e| FieldError::new("trace_id", e.to_string()))?;
        let mut spans = self.shared.table.lock().get(&id).unwrap_or_default();
        if let Some(p) = &self.shared.persist {
            let persisted = persist::read_trace(&*p.tree, &id)?;
            if !persisted.is_empty() {
                for s in persisted {
                    if !spans.iter().any(|m| m.span_id == s.span_id) {
                        spans.push(s);
                    }
                }
                spans = span::order_parents_first(spans);
            }
        }
        if spans.is_empty() {
            return Err(TracesError::NotFound(span::hex(&id)));
        }
        Ok(spans)
    }

    /// Whether GetTrace reads the store (and so should run off the async workers).
    pub fn persists(&self) -> bool {
        self.shared.persist.is_some()
    }

    /// This replica's endpoint totals over every window, encoded, to publish
    /// for the fleet view.
    pub fn endpoint_snapshot(&self) -> Vec<u8> {
        use prost::Message;
        let rows = self.shared.endpoints.lock().totals(now_nanos());
        endpoints::Published { rows }.encode_to_vec()
    }

    /// `endpoint_stats` over this replica's live totals and other replicas'
    /// snapshots (undecodable ones are skipped).
    pub fn fleet_endpoint_stats(
        &self,
        others: &[Vec<u8>],
        window: Window,
        service: Option<&str>,
    ) -> Vec<EndpointRow> {
        use prost::Message;
        let mut totals = self.shared.endpoints.lock().totals(now_nanos());
        for bytes in others {
            if let Ok(published) = endpoints::Published::decode(&bytes[..]) {
                totals.extend(published.rows);
            }
        }
        endpoints::merge_totals(totals, window, service)
    }

    pub fn endpoint_stats(&self, window: Window, service: Option<&str>) -> Vec<EndpointRow> {
        self.shared
            .endpoints
            .lock()
            .stats(now_nanos(), window, service)
    }

    /// Removes persisted spans that arrived more than `retention` ago, in
    /// steps of `step` groups; returns how many spans went.
    pub fn sweep_persisted(&self, retention: std::time::Duration, step: usize) -> usize {
        let Some(p) = &self.shared.persist else {
            return 0;
        };
        let cutoff = (now_nanos() / 1_000_000_000).saturating_sub(retention.as_secs());
        let mut total = 0;
        loop {
            match persist::sweep(&*p.tree, cutoff, step) {
                Ok((groups, spans)) => {
                    total += spans;
                    if groups < step {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "removing expired persisted spans failed");
                    break;
                }
            }
        }
        self.shared.metrics.retention_removed.inc_by(total as u64);
        total
    }

    /// Waits until every span queued before this call is stored (and
    /// written, with `traces.persist`): the shutdown path calls it before
    /// the store is flushed.
    pub async fn drain(&self) {
        let (done, drained) = oneshot::channel();
        if self.queue.send(Message::Drain(done)).is_ok() {
            let _ = drained.await;
        }
    }
}

/// Takes every job waiting, stores their spans under one lock, answers each.
fn run_worker(shared: &Shared, jobs: &mpsc::Receiver<Message>) {
    const MAX_GROUP_SPANS: usize = 64 * 1024;
    let mut group = Vec::new();
    let mut drained = Vec::new();
    while let Ok(first) = jobs.recv() {
        let mut next = Some(first);
        let mut spans = 0;
        while let Some(message) = next.take() {
            match message {
                Message::Spans(job) => {
                    spans += job.spans.len();
                    group.push(job);
                }
                Message::Drain(done) => drained.push(done),
            }
            if spans < MAX_GROUP_SPANS {
                next = jobs.try_recv().ok();
            }
        }
        if !group.is_empty() {
            let started = Instant::now();
            apply(shared, &mut group, spans);
            shared
                .metrics
                .apply_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        // Everything sent before the drain request is stored now.
        for done in drained.drain(..) {
            let _ = done.send(());
        }
    }
}

fn apply(shared: &Shared, group: &mut Vec<Job>, total: usize) {
    let now = now_nanos();
    let m = &shared.metrics;
    let mut stored_per_job = Vec::with_capacity(group.len());
    let mut to_persist = persist::Group::default();
    {
        let mut table = shared.table.lock();
        let mut endpoints = shared.endpoints.lock();
        for job in group.iter_mut() {
            let mut stored = 0;
            for span in std::mem::take(&mut job.spans) {
                let inserted = table.insert(span, |span| {
                    // Every kind counts in the spanmetrics series; only
                    // server and consumer spans make EndpointStats rows.
                    let sample = endpoints::SpanSample {
                        kind: span.kind,
                        status: span.status,
                        duration_nanos: span.duration_nanos(),
                    };
                    if endpoints.record(now, &span.service, &span.name, sample) {
                        m.overflow_spans.inc();
                    }
                    if shared.persist.is_some() {
                        to_persist.add(span);
                    }
                });
                if inserted.stored {
                    stored += 1;
                } else {
                    // An exporter's retry: already stored and counted.
                    m.duplicates.inc();
                }
                if inserted.evicted_traces > 0 {
                    m.evicted_traces.inc_by(inserted.evicted_traces);
                    m.evicted_spans.inc_by(inserted.evicted_spans);
                }
            }
            stored_per_job.push(stored);
        }
        let size = table.size();
        m.stored_traces.set(size.traces as i64);
        m.stored_spans.set(size.spans as i64);
        m.stored_bytes.set(size.bytes as i64);
        m.endpoints.set(endpoints.len() as i64);
    }
    if let Some(p) = &shared.persist
        && !to_persist.is_empty()
    {
        // Off the table lock: readers are not held up by the disk.
        let spans = to_persist.len();
        let written = p.store.next_id().and_then(|group| {
            p.tree
                .apply_batch(to_persist.into_ops(group, now / 1_000_000_000))
        });
        match written {
            Ok(()) => {
                m.persisted_spans.inc_by(spans as u64);
            }
            Err(e) => {
                m.persist_failures.inc();
                tracing::warn!(error = %e, spans, "persisting spans failed; they are kept in memory only");
            }
        }
    }
    let left = shared.queued.fetch_sub(total, Ordering::AcqRel) - total;
    m.queue_spans.set(left as i64);
    for (job, stored) in group.drain(..).zip(stored_per_job) {
        let _ = job.done.send(stored);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_store;
    use span::sample;

    fn start(config: TracesConfig) -> (tempfile::TempDir, Traces) {
        let (dir, store) = temp_store();
        let metrics =
            TracesMetrics::register(&mut prometheus_client::registry::Registry::default());
        let traces = Traces::start(&config, &store, metrics, None).unwrap();
        (dir, traces)
    }

    #[tokio::test]
    async fn submitted_spans_are_readable_at_once_and_retries_count_once() {
        let (_dir, traces) = start(TracesConfig::default());
        let spans = vec![sample(1, 1, None, 10), sample(1, 2, Some(1), 20)];
        assert_eq!(traces.submit(spans.clone(), None).await, Ok(2));
        assert_eq!(traces.submit(spans, None).await, Ok(0));
        assert_eq!(traces.get(&[1; 16]).unwrap().len(), 2);
        assert_eq!(traces.metrics().duplicates.get(), 2);
        let rows = traces.endpoint_stats(Window::OneMinute, None);
        // Both are server spans; the retry did not count them again.
        assert_eq!(rows.iter().map(|r| r.summary.calls).sum::<u64>(), 2);
        assert_eq!(
            traces.get(&[9; 16]),
            Err(TracesError::NotFound(span::hex(&[9; 16])))
        );
        assert_eq!(
            traces.get(&[1; 3]).unwrap_err().to_string(),
            "trace_id: trace_id must be 16 bytes, got 3"
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_counts() {
        let (_dir, traces) = start(TracesConfig {
            queue_spans: 2,
            ..TracesConfig::default()
        });
        let spans: Vec<Span> = (1..=3).map(|i| sample(1, i, None, 10)).collect();
        assert_eq!(
            traces.submit(spans, None).await,
            Err(TracesError::QueueFull {
                queued: 0,
                capacity: 2
            })
        );
        assert_eq!(traces.metrics().queue_spans.get(), 0);
        // Nothing was half-stored, and the queue is free again.
        assert!(traces.get(&[1; 16]).is_err());
        assert_eq!(
            traces.submit(vec![sample(1, 1, None, 10)], None).await,
            Ok(1)
        );
        assert_eq!(
            traces.check_batch(20_000).unwrap_err().to_string(),
            "spans: 20000 spans in one request, more than traces.max_batch (16384)"
        );
    }

    #[tokio::test]
    async fn persisted_spans_outlive_eviction_and_the_handle() {
        let (dir, store) = temp_store();
        let config = TracesConfig {
            persist: true,
            max_spans: 2,
            ..TracesConfig::default()
        };
        let registry = &mut prometheus_client::registry::Registry::default();
        let traces =
            Traces::start(&config, &store, TracesMetrics::register(registry), None).unwrap();
        traces
            .submit(
                vec![sample(1, 1, None, 10), sample(1, 2, Some(1), 20)],
                None,
            )
            .await
            .unwrap();
        // Trace 2 pushes trace 1 out of memory; the store still has it.
        traces
            .submit(vec![sample(2, 1, None, 10)], None)
            .await
            .unwrap();
        assert_eq!(traces.metrics().evicted_traces.get(), 1);
        let ids: Vec<u8> = traces
            .get(&[1; 16])
            .unwrap()
            .iter()
            .map(|s| s.span_id[0])
            .collect();
        assert_eq!(ids, vec![1, 2]);
        traces.drain().await;
        // A new pipeline over the same store (a restart) finds it too.
        let again =
            Traces::start(&config, &store, TracesMetrics::register(registry), None).unwrap();
        assert_eq!(again.get(&[1; 16]).unwrap().len(), 2);
        drop(dir);
    }
}
