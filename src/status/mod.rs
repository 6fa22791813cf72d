//! The live status page: `/status` (one HTML file with its script, embedded
//! in the binary) and its data, `/status.json`, on the metrics port and under
//! its access settings.
//!
//! Each capability hands the server a [`Source`] that asks its own RPC
//! handlers (the same calls `grpcurl` would make: ListLimits, HotKeys,
//! PoolStatus, Stats, TopQueries, SlowQueries, EndpointStats) and adds the
//! replica's counters a trend is drawn from; the [`Board`] puts the sections
//! together with the server's own facts. Rates over time are the page's
//! work: it keeps the last few minutes of snapshots and differentiates the
//! counters, so gantry keeps no history for it.

pub mod json;
pub mod page;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde_json::{Map, Value, json};
use tracing::Instrument;

use crate::store::Store;

/// How long one section may take before the page gets `{"error": …}`
/// for it instead (a store that does not answer must not stall the page).
const SECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// What the page asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The spans section's window (EndpointStats' `window`: 1m, 5m or 1h).
    pub window: Duration,
}

impl Default for Ask {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
        }
    }
}

impl Ask {
    /// From `/status.json`'s query string: `window=1m|5m|1h` (anything
    /// else is refused with the values allowed).
    pub fn from_query(query: Option<&str>) -> Result<Self, String> {
        let mut ask = Self::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "window" => {
                    ask.window = match value {
                        "1m" => Duration::from_secs(60),
                        "5m" => Duration::from_secs(300),
                        "1h" => Duration::from_secs(3600),
                        other => {
                            return Err(format!("window must be 1m, 5m or 1h, not {other:?}"));
                        }
                    }
                }
                other => return Err(format!("unknown parameter {other:?}; known: window")),
            }
        }
        Ok(ask)
    }
}

/// A request to a capability's own RPC handler, made by the status page:
/// it is the operator's view (the metrics port's access settings guard
/// it), so it sees every limit, pool and namespace whatever `[auth]` grants.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .extensions_mut()
        .insert(crate::auth::Caller::anyone());
    request
}

/// A section's JSON, computed off the caller's borrow.
pub type Section = Pin<Box<dyn Future<Output = Value> + Send + 'static>>;

/// One capability's part of the page: a closure over what it asks.
pub trait Source: Send + Sync {
    fn section(&self, ask: Ask) -> Section;
}

impl<F> Source for F
where
    F: Fn(Ask) -> Section + Send + Sync,
{
    fn section(&self, ask: Ask) -> Section {
        self(ask)
    }
}

/// The server's own facts.
pub struct ServerFacts {
    pub started: Instant,
    pub started_at: SystemTime,
    pub transport: &'static str,
    pub backend: &'static str,
    pub data_dir: String,
    /// The configuration file, or how the configuration was assembled.
    pub config_source: String,
    pub store: Arc<dyn Store>,
    pub inflight: Gauge,
    pub connections: Gauge,
}

impl ServerFacts {
    async fn section(&self) -> Value {
        let store = self.store.clone();
        // A stalled disk must not hold the page (nor the callers waiting
        // for the same snapshot).
        let size = tokio::time::timeout(
            SECTION_TIMEOUT,
            tokio::task::spawn_blocking(move || store.size_on_disk()),
        )
        .await;
        let size_bytes = match size {
            Ok(Ok(Ok(bytes))) => json!(bytes),
            Ok(Ok(Err(e))) => json!(e.to_string()),
            Ok(Err(e)) => json!(e.to_string()),
            Err(_) => json!(format!("no answer within {SECTION_TIMEOUT:?}")),
        };
        let started_at = self
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "started_at_unix": started_at,
            "transport": self.transport,
            "backend": self.backend,
            "data_dir": self.data_dir,
            "config_source": self.config_source,
            "connections": self.connections.get(),
            "inflight": self.inflight.get(),
            "store": {
                "backend": self.store.backend(),
                "size_bytes": size_bytes,
                "writable": self.store.health().check_writable().is_ok(),
            },
        })
    }
}

/// How long a snapshot is handed to every page and `gantry top` that asks
/// for the same window: ten open tabs cost one snapshot a second, not ten.
const REUSE_FOR: Duration = Duration::from_secs(1);

/// Everything `/status.json` shows.
pub struct Board {
    server: ServerFacts,
    sources: Vec<(&'static str, Arc<dyn Source>)>,
    /// `gantry_status_snapshot_seconds`: what open pages cost the server.
    took: Histogram,
    /// The latest snapshot; held while one is made, so callers arriving
    /// meanwhile wait for it instead of making their own.
    latest: tokio::sync::Mutex<Option<(tokio::time::Instant, Ask, Arc<Value>)>>,
}

impl Board {
    pub fn new(server: ServerFacts, sources: Vec<(&'static str, Arc<dyn Source>)>) -> Self {
        Self {
            server,
            sources,
            took: crate::telemetry::metrics::latency_histogram(),
            latest: tokio::sync::Mutex::new(None),
        }
    }

    /// Registers `gantry_status_snapshot_seconds` (one count per snapshot made).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "gantry_status_snapshot_seconds",
            "Time to make one /status.json snapshot (made at most once a second per window, however many pages are open)",
            self.took.clone(),
        );
    }

    /// A snapshot at most [`REUSE_FOR`] old.
    pub async fn current(&self, ask: Ask) -> Arc<Value> {
        let mut latest = self.latest.lock().await;
        if let Some((taken, asked, snapshot)) = &*latest
            && *asked == ask
            && taken.elapsed() < REUSE_FOR
        {
            return snapshot.clone();
        }
        let started = Instant::now();
        let snapshot = Arc::new(
            self.snapshot(ask)
                .instrument(tracing::debug_span!(
                    "status.snapshot",
                    window_s = ask.window.as_secs()
                ))
                .await,
        );
        self.took.observe(started.elapsed().as_secs_f64());
        *latest = Some((tokio::time::Instant::now(), ask, snapshot.clone()));
        snapshot
    }

    /// One snapshot: `{"time_unix_ms", "window_seconds", "server", <capability>…}`;
    /// the sections are asked at once, each within [`SECTION_TIMEOUT`].
    pub async fn snapshot(&self, ask: Ask) -> Value {
        let sections = self.sources.iter().map(|(name, source)| {
            let section = source.section(ask);
            async move {
                let value = tokio::time::timeout(SECTION_TIMEOUT, section)
                    .await
                    .unwrap_or_else(|_| {
                        json::error_value(
                            "DeadlineExceeded",
                            &format!(
                                "the {name} section did not answer within {SECTION_TIMEOUT:?}"
                            ),
                        )
                    });
                (*name, value)
            }
        });
        let (server, sections) = tokio::join!(
            self.server.section(),
            futures_util::future::join_all(sections)
        );
        let mut out = Map::new();
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        out.insert("time_unix_ms".into(), json!(now_ms));
        out.insert("window_seconds".into(), json!(ask.window.as_secs()));
        out.insert("server".into(), server);
        for (name, value) in sections {
            out.insert(name.into(), value);
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_one_of_the_endpoint_windows() {
        assert_eq!(Ask::from_query(None).unwrap().window.as_secs(), 60);
        assert_eq!(
            Ask::from_query(Some("window=5m")).unwrap().window.as_secs(),
            300
        );
        assert_eq!(
            Ask::from_query(Some("window=1h")).unwrap().window.as_secs(),
            3600
        );
        let wrong = Ask::from_query(Some("window=2d")).unwrap_err();
        assert!(wrong.contains("1m, 5m or 1h"), "{wrong}");
        let unknown = Ask::from_query(Some("limit=3")).unwrap_err();
        assert!(unknown.contains("unknown parameter \"limit\""), "{unknown}");
    }

    fn facts(store: Arc<dyn Store>) -> ServerFacts {
        ServerFacts {
            started: Instant::now(),
            started_at: SystemTime::now(),
            transport: "h2",
            backend: "sled",
            data_dir: "./data".into(),
            config_source: "defaults".into(),
            store,
            inflight: Gauge::default(),
            connections: Gauge::default(),
        }
    }

    struct Slow;
    impl Source for Slow {
        fn section(&self, _: Ask) -> Section {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                json!({})
            })
        }
    }

    struct Fixed;
    impl Source for Fixed {
        fn section(&self, ask: Ask) -> Section {
            Box::pin(async move { json!({ "window": ask.window.as_secs() }) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_section_that_does_not_answer_becomes_an_error_and_the_rest_still_show() {
        let (_dir, store) = crate::store::temp_store();
        let board = Board::new(
            facts(store),
            vec![("slow", Arc::new(Slow)), ("fixed", Arc::new(Fixed))],
        );
        let snapshot = board.current(Ask::default()).await;
        assert_eq!(snapshot["fixed"]["window"], 60);
        assert_eq!(snapshot["slow"]["error"]["code"], "DeadlineExceeded");
        assert_eq!(snapshot["server"]["store"]["writable"], true);
        assert_eq!(snapshot["server"]["version"], env!("CARGO_PKG_VERSION"));
    }

    struct Counting(std::sync::atomic::AtomicU64);
    impl Source for Arc<Counting> {
        fn section(&self, _: Ask) -> Section {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            Box::pin(async move { json!(n) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pages_asking_within_a_second_share_one_snapshot_per_window() {
        let (_dir, store) = crate::store::temp_store();
        let counting = Arc::new(Counting(Default::default()));
        let board = Board::new(facts(store), vec![("n", Arc::new(counting.clone()))]);
        let one = Ask::default();
        let (a, b) = tokio::join!(board.current(one), board.current(one));
        assert_eq!((a["n"].clone(), b["n"].clone()), (json!(1), json!(1)));
        let hour = Ask {
            window: Duration::from_secs(3600),
        };
        assert_eq!(
            board.current(hour).await["n"],
            2,
            "another window: a new one"
        );
        tokio::time::advance(REUSE_FOR).await;
        assert_eq!(
            board.current(hour).await["n"],
            3,
            "older than a second: a new one"
        );
    }
}
