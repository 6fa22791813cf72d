//! Whether the store can take writes. The first write or flush that fails
//! (a full disk, a failing device) or does not finish in time marks the store
//! unwritable with its cause: from then on writes fail at once with that
//! cause instead of queueing behind a store that cannot answer, health turns
//! the services that write NOT_SERVING, and a watchdog tries to bring the
//! store back (for sled: reopening it once space returns). Reads go on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::StoreError;

/// Why the store stopped taking writes, and since when.
#[derive(Debug, Clone)]
pub struct Fault {
    pub cause: String,
    pub since: Instant,
}

#[derive(Debug, Default, Clone)]
struct Metrics {
    writable: Gauge,
    faults: Counter,
    recoveries: Counter,
}

/// Shared by the store, its trees and the watchdog; cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreHealth {
    fault: Arc<Mutex<Option<Fault>>>,
    /// Longest wait for a flush before the store counts as unwritable.
    flush_timeout: Duration,
    writable: watch::Sender<bool>,
    metrics: Metrics,
}

impl Default for StoreHealth {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl StoreHealth {
    pub fn new(flush_timeout: Duration) -> Self {
        let metrics = Metrics::default();
        metrics.writable.set(1);
        Self {
            fault: Arc::default(),
            flush_timeout,
            writable: watch::Sender::new(true),
            metrics,
        }
    }

    /// `storage.flush_timeout`: how long a caller waits for a flush.
    pub fn flush_timeout(&self) -> Duration {
        self.flush_timeout
    }

    /// Waits for a flush's answer at most [`Self::flush_timeout`]; one that
    /// does not come in time marks the store unwritable.
    pub async fn bounded<T>(
        &self,
        what: &str,
        answer: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.flush_timeout, answer).await {
            Ok(result) => self.observe(result),
            Err(_) => {
                let cause = format!(
                    "{what} did not finish within {:?} (storage.flush_timeout)",
                    self.flush_timeout
                );
                self.fault(&cause);
                Err(StoreError::Unwritable { cause })
            }
        }
    }
    /// `gantry_store_writable`, `gantry_store_faults_total`, `gantry_store_recoveries_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gantry_store_writable",
            "1 while the store takes writes; 0 after a write or flush failed (full disk, failing device) until it recovers",
            self.metrics.writable.clone(),
        );
        registry.register(
            "gantry_store_faults",
            "Times the store stopped taking writes",
            self.metrics.faults.clone(),
        );
        registry.register(
            "gantry_store_recoveries",
            "Times the store took writes again after a fault, without a restart",
            self.metrics.recoveries.clone(),
        );
    }

    /// Fails at once while the store is unwritable, naming the cause.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        match &*self.fault.lock() {
            None => Ok(()),
            Some(fault) => Err(StoreError::Unwritable {
                cause: fault.cause.clone(),
            }),
        }
    }

    /// Passes a write's result through, marking the store unwritable when it failed.
    pub fn observe<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Io(cause)) = &result {
            self.fault(cause);
        }
        result
    }

    /// Marks the store unwritable (once; the first cause is kept).
    pub fn fault(&self, cause: &str) {
        let mut fault = self.fault.lock();
        if fault.is_some() {
            return;
        }
        *fault = Some(Fault {
            cause: cause.to_string(),
            since: Instant::now(),
        });
        drop(fault);
        self.metrics.writable.set(0);
        self.metrics.faults.inc();
        self.writable.send_replace(false);
        tracing::error!(
            cause,
            "store is not writable: writes answer UNAVAILABLE and the services that write report NOT_SERVING until it recovers"
        );
    }

    /// The store takes writes again.
    pub fn recovered(&self) {
        let Some(fault) = self.fault.lock().take() else {
            return;
        };
        self.metrics.writable.set(1);
        self.metrics.recoveries.inc();
        self.writable.send_replace(true);
        tracing::warn!(
            cause = %fault.cause,
            unwritable_ms = fault.since.elapsed().as_millis() as u64,
            "store is writable again"
        );
    }

    /// Follows writability (true: writable).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.writable.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_kept_until_recovery() {
        let health = StoreHealth::default();
        let mut writable = health.subscribe();
        assert!(health.check_writable().is_ok());
        let failed: Result<(), _> = health.observe(Err(StoreError::Io("No space left".into())));
        assert!(failed.is_err());
        health.fault("a later cause");
        assert_eq!(
            health.check_writable(),
            Err(StoreError::Unwritable {
                cause: "No space left".into()
            })
        );
        assert!(writable.has_changed().unwrap());
        assert!(!*writable.borrow_and_update());
        health.recovered();
        assert!(health.check_writable().is_ok());
        assert!(*writable.borrow_and_update());
        assert_eq!(health.metrics.faults.get(), 1);
        assert_eq!(health.metrics.recoveries.get(), 1);
    }

    #[test]
    fn conflicts_and_successes_do_not_mark_a_fault() {
        let health = StoreHealth::default();
        let _ = health.observe(Ok::<_, StoreError>(()));
        let _ = health.observe::<()>(Err(StoreError::Locked { dir: "d".into() }));
        assert!(health.check_writable().is_ok());
    }
}
