//! Forwarding accepted spans to an OTLP/gRPC endpoint (a Collector, Jaeger,
//! Tempo): a bounded queue (full: spans are dropped and counted, ingestion
//! never waits), batches by size and time, retry with doubling backoff on the
//! codes OTLP calls retryable. Exports are gzip-compressed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::convert::to_otlp;
use super::metrics::TracesMetrics;
use super::span::Span;
use crate::config::TracesConfig;

/// Accepted spans on their way out: OTLP exports are forwarded as they came
/// (resource, scope, events and links intact); Ingest spans are converted.
#[derive(Debug)]
pub enum ForwardItem {
    Spans(Vec<Span>),
    Otlp(Vec<ResourceSpans>),
}

impl ForwardItem {
    fn into_otlp(self) -> Vec<ResourceSpans> {
        match self {
            ForwardItem::Spans(spans) => to_otlp(spans),
            ForwardItem::Otlp(rs) => rs,
        }
    }
}

/// Where forwarded spans go and how.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    pub endpoint: String,
    /// `traces.forward_ca_file` (empty: webpki roots, with https).
    pub ca_file: std::path::PathBuf,
    /// `traces.forward_headers_file` (empty: none).
    pub headers_file: std::path::PathBuf,
    pub queue_spans: usize,
    pub batch_spans: usize,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_backoff: Duration,
    pub max_message_bytes: usize,
}

impl ForwardSettings {
    /// None when `traces.forward_endpoint` is empty.
    pub fn from_config(c: &TracesConfig) -> Option<Self> {
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        (!c.forward_endpoint.is_empty()).then(|| Self {
            endpoint: c.forward_endpoint.clone(),
            ca_file: c.forward_ca_file.clone(),
            headers_file: c.forward_headers_file.clone(),
            queue_spans: size(c.forward_queue_spans),
            batch_spans: size(c.forward_batch_spans),
            interval: c.forward_interval.get(),
            timeout: c.forward_timeout.get(),
            max_backoff: c.forward_max_backoff.get(),
            max_message_bytes: size(c.max_message_bytes),
        })
    }
}

/// The sending side, cloned into the ingestion path.
#[derive(Debug, Clone)]
pub struct Forwarder {
    tx: mpsc::UnboundedSender<(ForwardItem, usize)>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    metrics: TracesMetrics,
}

impl Forwarder {
    /// The forwarder and the task that sends (spawn it); the task ends when
    /// `stop` is cancelled, after one last attempt for what is queued.
    pub fn start(
        settings: ForwardSettings,
        metrics: TracesMetrics,
        stop: CancellationToken,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), String> {
        let mut endpoint = Endpoint::from_shared(settings.endpoint.clone())
            .map_err(|e| format!("traces.forward_endpoint {:?}: {e}", settings.endpoint))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if settings.endpoint.starts_with("https://") {
            let tls = if crate::tls::is_set(&settings.ca_file) {
                let ca = std::fs::read(&settings.ca_file).map_err(|e| {
                    format!(
                        "cannot read traces.forward_ca_file {}: {e}",
                        settings.ca_file.display()
                    )
                })?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca))
            } else {
                ClientTlsConfig::new().with_webpki_roots()
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("traces.forward_endpoint TLS: {e}"))?;
        }
        let headers = read_headers(&settings.headers_file)?;
        let channel = endpoint.connect_lazy();
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let forwarder = Self {
            tx,
            queued: queued.clone(),
            capacity: settings.queue_spans,
            metrics: metrics.clone(),
        };
        let sender = Sender {
            headers,
            client: TraceServiceClient::new(channel)
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_encoding_message_size(settings.max_message_bytes),
            settings,
            queued,
            metrics,
            stop,
        };
        Ok((forwarder, sender.run(rx)))
    }

    /// Queues accepted spans; false (and counted) when the queue is full.
    pub fn offer(&self, item: ForwardItem, count: usize) -> bool {
        if count == 0 {
            return true;
        }
        let before = self.queued.fetch_add(count, Ordering::AcqRel);
        if before + count > self.capacity || self.tx.send((item, count)).is_err() {
            self.queued.fetch_sub(count, Ordering::AcqRel);
            self.metrics.drop_spans("forward_queue_full", count);
            return false;
        }
        self.metrics
            .forward_queue_spans
            .set((before + count) as i64);
        true
    }
}

struct Sender {
    /// `traces.forward_headers_file`, sent with every export.
    headers: tonic::metadata::MetadataMap,
    client: TraceServiceClient<Channel>,
    settings: ForwardSettings,
    queued: Arc<AtomicUsize>,
    metrics: TracesMetrics,
    stop: CancellationToken,
}

/// The `name: value` lines of `traces.forward_headers_file` as gRPC
/// metadata; an error names the file and line (never the value: it is a
/// secret).
fn read_headers(path: &std::path::Path) -> Result<tonic::metadata::MetadataMap, String> {
    let mut headers = tonic::metadata::MetadataMap::new();
    if !crate::tls::is_set(path) {
        return Ok(headers);
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read traces.forward_headers_file {}: {e}",
            path.display()
        )
    })?;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| {
            format!(
                "traces.forward_headers_file {} line {}: {what}",
                path.display(),
                i + 1
            )
        };
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("expected `name: value`"))?;
        let name = tonic::metadata::AsciiMetadataKey::from_bytes(
            name.trim().to_ascii_lowercase().as_bytes(),
        )
        .map_err(|_| bad("not a valid header name"))?;
        let value = value
            .trim()
            .parse::<tonic::metadata::AsciiMetadataValue>()
            .map_err(|_| bad("not a valid header value"))?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// The codes after which OTLP exporters send the same data again.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
    )
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<(ForwardItem, usize)>) {
        let mut batch: Vec<ResourceSpans> = Vec::new();
        let mut count = 0;
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            let timer = async move {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = timer => {
                    self.send(std::mem::take(&mut batch), std::mem::take(&mut count), true).await;
                    due = None;
                }
                item = rx.recv() => {
                    let Some((item, n)) = item else { break };
                    batch.extend(item.into_otlp());
                    count += n;
                    due.get_or_insert_with(|| tokio::time::Instant::now() + self.settings.interval);
                    if count >= self.settings.batch_spans {
                        self.send(std::mem::take(&mut batch), std::mem::take(&mut count), true).await;
                        due = None;
                    }
                }
            }
        }
        // Shutting down: one attempt for everything still queued, no retries.
        while let Ok((item, n)) = rx.try_recv() {
            batch.extend(item.into_otlp());
            count += n;
        }
        self.send(batch, count, false).await;
    }

    async fn send(&mut self, batch: Vec<ResourceSpans>, count: usize, retry: bool) {
        if count == 0 {
            return;
        }
        let request = ExportTraceServiceRequest {
            resource_spans: batch,
        };
        let mut backoff = Duration::from_millis(100);
        let outcome = loop {
            let mut call = tonic::Request::new(request.clone());
            for entry in self.headers.iter() {
                if let tonic::metadata::KeyAndValueRef::Ascii(name, value) = entry {
                    call.metadata_mut().insert(name.clone(), value.clone());
                }
            }
            call.set_timeout(self.settings.timeout);
            match self.client.export(call).await {
                Ok(response) => break Ok(response.into_inner()),
                Err(status) if retry && retryable(status.code()) => {
                    self.metrics.forward_retries.inc();
                    tracing::debug!(code = ?status.code(), backoff_ms = backoff.as_millis() as u64, "forward export refused; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stop.cancelled() => break Err(status),
                    }
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                }
                Err(status) => break Err(status),
            }
        };
        match outcome {
            Ok(response) => {
                let refused = response
                    .partial_success
                    .map_or(0, |p| {
                        usize::try_from(p.rejected_spans).unwrap_or(usize::MAX)
                    })
                    .min(count);
                self.metrics
                    .forwarded_spans
                    .inc_by((count - refused) as u64);
                if refused > 0 {
                    self.metrics.drop_spans("forward_failed", refused);
                }
            }
            Err(status) => {
                tracing::warn!(spans = count, code = ?status.code(), message = status.message(), "forwarding spans failed; dropped");
                self.metrics.drop_spans("forward_failed", count);
            }
        }
        let left = self.queued.fetch_sub(count, Ordering::AcqRel) - count;
        self.metrics.forward_queue_spans.set(left as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_come_from_name_value_lines_and_a_bad_line_is_named_without_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("headers");
        std::fs::write(
            &file,
            "# comment\n\nX-Api-Key:  k-123 \nauthorization: Bearer t\n",
        )
        .unwrap();
        let headers = read_headers(&file).unwrap();
        assert_eq!(headers.get("x-api-key").unwrap(), "k-123");
        assert_eq!(headers.get("authorization").unwrap(), "Bearer t");
        assert!(read_headers(std::path::Path::new("")).unwrap().is_empty());

        std::fs::write(&file, "x-api-key: ok\nsecret-without-colon\n").unwrap();
        let error = read_headers(&file).unwrap_err();
        assert!(error.ends_with("line 2: expected `name: value`"), "{error}");
        std::fs::write(&file, "x-key: bad\u{7f}value-s3cret\n").unwrap();
        let error = read_headers(&file).unwrap_err();
        assert!(
            error.contains("line 1") && !error.contains("s3cret"),
            "{error}"
        );
    }
}
