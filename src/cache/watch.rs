//! Change events for watchers. One broadcast channel per watched namespace,
//! holding at most `cache.watch_buffer` events: a watcher that falls further
//! behind loses the oldest ones and is told to resync (drop its near cache),
//! instead of the server buffering without bound or losing events silently.
//! Unwatched namespaces cost one map lookup per change.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;
use prost::bytes::Bytes;
use tokio::sync::broadcast;

use super::CacheError;

/// Values larger than this are left out of PUT events (the event still has
/// the version; the watcher Gets the value), so a watch buffer's memory is
/// bounded by `watch_buffer` x 64 KiB per namespace, not by the value limit.
pub const MAX_EVENT_VALUE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
    Expire,
    /// Events may have been lost (the shared store's subscription dropped):
    /// every watcher drops its near cache.
    Resync,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub namespace: String,
    pub key: String,
    pub version: u64,
    /// For puts with values up to [`MAX_EVENT_VALUE_BYTES`].
    pub value: Option<Bytes>,
    pub at_ms: u64,
}

pub struct WatchHub {
    channels: RwLock<HashMap<String, broadcast::Sender<Arc<Change>>>>,
    capacity: usize,
    max_watchers: usize,
    watchers: Arc<AtomicUsize>,
    pub resyncs: Arc<AtomicU64>,
}

/// A watcher's subscription; counts as a watcher until dropped.
pub struct Subscription {
    pub rx: broadcast::Receiver<Arc<Change>>,
    pub guard: WatcherGuard,
}

pub struct WatcherGuard(Arc<AtomicUsize>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WatchHub {
    pub fn new(capacity: usize, max_watchers: usize) -> Self {
        Self {
            channels: RwLock::new(HashMap::new()),
            capacity: capacity.max(1),
            max_watchers,
            watchers: Arc::new(AtomicUsize::new(0)),
            resyncs: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }

    pub fn subscribe(&self, namespace: &str) -> Result<Subscription, CacheError> {
        let previous = self.watchers.fetch_add(1, Ordering::Relaxed);
        let guard = WatcherGuard(self.watchers.clone());
        if previous >= self.max_watchers {
            return Err(CacheError::TooManyWatchers {
                max: self.max_watchers,
            });
        }
        let mut channels = self.channels.write();
        let tx = channels
            .entry(namespace.to_string())
            .or_insert_with(|| broadcast::channel(self.capacity).0);
        Ok(Subscription {
            rx: tx.subscribe(),
            guard,
        })
    }

    /// Sends a change to the namespace's watchers; `make` runs only when
    /// someone watches.
    pub fn publish(&self, namespace: &str, make: impl FnOnce() -> Change) {
        let channels = self.channels.read();
        if let Some(tx) = channels.get(namespace)
            && tx.receiver_count() > 0
        {
            let _ = tx.send(Arc::new(make()));
        }
    }

    /// Drops the channels of namespaces nobody watches any more.
    /// Tells every watcher to resync.
    pub fn resync_all(&self, at_ms: u64) {
        let channels = self.channels.read();
        for (namespace, tx) in channels.iter() {
            if tx.receiver_count() > 0 {
                let _ = tx.send(Arc::new(Change {
                    kind: ChangeKind::Resync,
                    namespace: namespace.clone(),
                    key: String::new(),
                    version: 0,
                    value: None,
                    at_ms,
                }));
            }
        }
    }

    pub fn prune(&self) {
        self.channels
            .write()
            .retain(|_, tx| tx.receiver_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str) -> Change {
        Change {
            kind: ChangeKind::Put,
            namespace: "ns".into(),
            key: key.into(),
            version: 1,
            value: None,
            at_ms: 0,
        }
    }

    #[test]
    fn a_slow_watcher_lags_instead_of_growing_the_buffer() {
        let hub = WatchHub::new(4, 10);
        let mut sub = hub.subscribe("ns").unwrap();
        let mut made = 0;
        hub.publish("other", || {
            made += 1;
            change("x")
        });
        assert_eq!(made, 0, "no event is built for an unwatched namespace");
        for i in 0..10 {
            hub.publish("ns", || change(&format!("k{i}")));
        }
        assert!(matches!(
            sub.rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(6))
        ));
        assert_eq!(
            sub.rx.try_recv().unwrap().key,
            "k6",
            "the newest four remain"
        );
    }

    #[test]
    fn watchers_are_bounded_and_counted() {
        let hub = WatchHub::new(4, 2);
        let a = hub.subscribe("ns").unwrap();
        let _b = hub.subscribe("ns").unwrap();
        assert!(matches!(
            hub.subscribe("ns"),
            Err(CacheError::TooManyWatchers { max: 2 })
        ));
        assert_eq!(hub.watchers(), 2);
        drop(a);
        assert_eq!(hub.watchers(), 1);
        hub.subscribe("ns").unwrap();
    }
}
