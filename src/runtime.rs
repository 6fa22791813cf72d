//! What the capabilities' runtimes share: the context each is built from,
//! the task set their background work runs on, and the [`Capability`] each
//! hands the server — its services, its reload hook and how it stops.
//!
//! A capability folder exports one concrete `Runtime` whose `start` restores
//! its saved state from the store, registers its metrics, spawns its
//! background work and returns a [`Capability`]. The server composes them in
//! start-up order (src/server.rs) and stops them in that order at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ServerConfig, Transport};
use crate::lanes::{Lanes, default_lanes};
use crate::routes::Served;
use crate::store::redis::RedisStore;
use crate::store::{Store, StoreError};

/// Queue depth of each lane; a full lane makes callers run their work in place.
const COALESCE_DEPTH: usize = 4096;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the lease journal thread: {0}")]
    Journal(std::io::Error),
    #[error("cannot start the span ingestion thread: {0}")]
    TracesWorker(std::io::Error),
    #[error("{0}")]
    Forward(String),
    #[error(transparent)]
    Redis(crate::store::redis::RedisStoreError),
    #[error(transparent)]
    Tls(crate::tls::TlsError),
    #[error("{0}")]
    Auth(String),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What every capability is built from.
pub struct Context<'a> {
    pub store: Arc<dyn Store>,
    pub registry: &'a mut Registry,
    pub server: &'a ServerConfig,
    pub background: &'a mut Background,
    /// The shared store, with `storage.backend = "redis"`.
    pub redis: Option<RedisStore>,
    lanes: Option<Lanes>,
}

impl<'a> Context<'a> {
    pub fn new(
        store: Arc<dyn Store>,
        registry: &'a mut Registry,
        server: &'a ServerConfig,
        background: &'a mut Background,
    ) -> Self {
        Self {
            store,
            registry,
            server,
            background,
            redis: None,
            lanes: None,
        }
    }

    /// `server.max_message_bytes`, as tonic takes it.
    pub fn max_message_bytes(&self) -> usize {
        usize::try_from(self.server.max_message_bytes).unwrap_or(usize::MAX)
    }

    /// The lanes (a task per core, shared by every capability that asks),
    /// when the capability wants them (`coalesce`) and they help: lanes group
    /// the replies of hyper's task-per-call server; gantry's own transport
    /// already answers short calls together per connection, and there the
    /// extra hop only costs (docs/benchmarks.md).
    pub fn lanes(&mut self, coalesce: bool) -> Option<Lanes> {
        if !coalesce || self.server.transport != Transport::Hyper {
            return None;
        }
        Some(
            self.lanes
                .get_or_insert_with(|| Lanes::spawn(default_lanes(), COALESCE_DEPTH))
                .clone(),
        )
    }

    /// Whether the h2 transport answers this capability's direct calls.
    pub fn direct_calls(&self) -> bool {
        self.server.direct_calls && self.server.transport == Transport::H2
    }
}

/// Runs a blocking store operation off the async workers; a panic in it
/// becomes a store error.
pub async fn blocking<T: Send + 'static>(
    what: &str,
    job: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| StoreError::Io(format!("{what} panicked: {e}")))?
}

/// The capabilities' background work: one task set, one cancellation token.
#[derive(Default)]
pub struct Background {
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

impl Background {
    /// The token every background task ends on.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Runs `save` every `every` (not at once: state was just restored)
    /// until the stop; a failure is logged and the next tick tries again.
    pub fn save_every<F, Fut>(&mut self, every: Duration, what: &'static str, save: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<usize, String>> + Send,
    {
        let stop = self.token();
        self.spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticker.tick() => {
                        if let Err(e) = save().await {
                            tracing::warn!(error = %e, "periodic save of {what} failed");
                        }
                    }
                }
            }
        });
    }

    /// Runs `job` every `every` on the blocking pool until the stop; logs its
    /// count at debug level when it did something.
    pub fn every_off_the_workers<F>(&mut self, every: Duration, what: &'static str, job: F)
    where
        F: Fn() -> usize + Clone + Send + 'static,
    {
        let stop = self.token();
        self.spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticker.tick() => {
                        if let Ok(count) = tokio::task::spawn_blocking(job.clone()).await
                            && count > 0
                        {
                            tracing::debug!(count, "{what}");
                        }
                    }
                }
            }
        });
    }

    /// Cancels every task and waits for them to end, until `deadline`: a
    /// task still inside a blocking call then (a flush on a stalled disk)
    /// is aborted, so shutdown never waits on the disk.
    pub async fn stop_by(&mut self, deadline: tokio::time::Instant) {
        self.stop.cancel();
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => {
                    tracing::error!(
                        still_running = self.tasks.len(),
                        "background work did not stop within storage.flush_timeout; abandoning it"
                    );
                    // Aborted tasks end at their next await point.
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    return;
                }
            }
        }
    }
}

/// Applies a reloaded configuration to what a capability runs.
pub type ReloadHook = Box<dyn Fn(&Config) + Send + Sync>;

/// Saves and flushes what a capability owns, at shutdown.
pub type StopFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A started capability, as the server composes it.
pub struct Capability {
    /// For logs: `ratelimit`, `cache`, …
    pub name: &'static str,
    pub served: Served,
    /// What a hot reload changes; `None` for sections that need a restart.
    pub reload: Option<ReloadHook>,
    /// Its calls write to the store, so they cannot be served while the
    /// store is unwritable (health reports its services NOT_SERVING then).
    pub needs_store: bool,
    /// Its calls need the shared store (Redis): health reports its services
    /// NOT_SERVING while Redis does not answer.
    pub needs_redis: bool,
    /// Runs once the gRPC side has drained and the background work stopped.
    pub stop: StopFuture,
    /// The traces capability's OTLP export, for the OTLP/HTTP port.
    pub otlp_export: Option<crate::traces::service::OtlpTraceService>,
    /// Its section of the status page (`/status.json`).
    pub status: Option<Arc<dyn crate::status::Source>>,
}

impl Capability {
    pub fn new(name: &'static str, served: Served, stop: StopFuture) -> Self {
        Self {
            name,
            served,
            reload: None,
            needs_store: false,
            needs_redis: false,
            stop,
            otlp_export: None,
            status: None,
        }
    }

    pub fn reloads(mut self, hook: ReloadHook) -> Self {
        self.reload = Some(hook);
        self
    }

    pub fn needs_store(mut self, needs: bool) -> Self {
        self.needs_store = needs;
        self
    }

    pub fn needs_redis(mut self, needs: bool) -> Self {
        self.needs_redis = needs;
        self
    }

    pub fn status(mut self, source: Arc<dyn crate::status::Source>) -> Self {
        self.status = Some(source);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn stopping_abandons_a_task_stuck_in_a_blocking_call_at_the_deadline() {
        let mut background = Background::default();
        let polite_ended = Arc::new(AtomicBool::new(false));
        let ended = polite_ended.clone();
        let stop = background.token();
        background.spawn(async move {
            stop.cancelled().await;
            ended.store(true, Ordering::SeqCst);
        });
        // A flush on a stalled disk: ignores the stop, blocks a thread.
        let (release, stalled) = std::sync::mpsc::channel::<()>();
        background.spawn(async move {
            let _ = tokio::task::spawn_blocking(move || stalled.recv()).await;
        });

        let started = std::time::Instant::now();
        background
            .stop_by(tokio::time::Instant::now() + Duration::from_millis(200))
            .await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(polite_ended.load(Ordering::SeqCst));
        assert!(background.tasks.is_empty());
        let _ = release.send(());
    }

    #[tokio::test]
    async fn stopping_returns_as_soon_as_every_task_ended() {
        let mut background = Background::default();
        let stop = background.token();
        background.spawn(async move { stop.cancelled().await });
        let started = std::time::Instant::now();
        background
            .stop_by(tokio::time::Instant::now() + Duration::from_secs(30))
            .await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
