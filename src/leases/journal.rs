//! Writes lease changes to the store before they are acknowledged, with
//! group commit: one thread applies whatever has queued up and, in `sync` durability, flushes once for the whole group. Under
//! load, many grants share one flush instead of paying one each.
//!
//! Changes are submitted under the lease table's lock, so the store sees
//! them in the same order as the table did. The writes themselves happen on
//! the journal thread, not under that lock: a sled write waits behind a flush
//! in progress, and writing inline (with the cache's `GroupFlush` for the
//! flushes) made `sync` lease calls stall on the disk (docs/benchmarks.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::LeaseError;
use super::metrics::JournalMetrics;
use crate::config::Durability;
use crate::store::health::StoreHealth;
use crate::store::{BatchOp, Domain, Store, StoreError};

/// Most changes applied as one batch.
const MAX_GROUP: usize = 4096;

enum Msg {
    Write {
        ops: Vec<BatchOp>,
        /// Must be on disk (in `sync` mode) before `done` fires.
        durable: bool,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    Stop(oneshot::Sender<()>),
}

/// Resolves when a submitted change is in the store (and flushed if asked).
pub struct Ticket {
    answer: oneshot::Receiver<Result<(), StoreError>>,
    health: StoreHealth,
}

impl Ticket {
    /// Waits at most `storage.flush_timeout`: a store that does not answer
    /// is unwritable, not a reason to hang.
    pub async fn wait(self) -> Result<(), LeaseError> {
        let answer = async {
            match self.answer.await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Io(
                    "the lease journal stopped (shutting down)".into(),
                )),
            }
        };
        self.health
            .bounded("writing lease changes", answer)
            .await
            .map_err(|e| LeaseError::Unavailable(e.to_string()))
    }
}

pub struct Journal {
    tx: mpsc::Sender<Msg>,
    sync: Arc<AtomicBool>,
    health: StoreHealth,
}

impl Journal {
    /// Starts the journal thread.
    pub fn start(
        store: Arc<dyn Store>,
        durability: Durability,
        metrics: JournalMetrics,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let health = store.health().clone();
        let sync = Arc::new(AtomicBool::new(durability == Durability::Sync));
        let thread_sync = sync.clone();
        std::thread::Builder::new()
            .name("gantry-lease-journal".into())
            .spawn(move || run(store, rx, thread_sync, metrics))?;
        Ok(Self { tx, sync, health })
    }

    pub fn set_durability(&self, durability: Durability) {
        self.sync
            .store(durability == Durability::Sync, Ordering::Relaxed);
    }

    /// Queues changes; the ticket resolves once they are in the store.
    pub fn write(&self, ops: Vec<BatchOp>, durable: bool) -> Ticket {
        let (done, rx) = oneshot::channel();
        // A send error drops `done`, and the ticket reports the journal stopped.
        let _ = self.tx.send(Msg::Write {
            ops,
            durable,
            done: Some(done),
        });
        Ticket {
            answer: rx,
            health: self.health.clone(),
        }
    }

    /// Queues changes nobody waits for (deletions: a lost one only keeps a
    /// lease that will be dropped as expired after a restart).
    pub fn write_detached(&self, ops: Vec<BatchOp>) {
        let _ = self.tx.send(Msg::Write {
            ops,
            durable: false,
            done: None,
        });
    }

    /// Applies everything queued so far, then stops the thread.
    pub async fn stop(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Stop(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

fn run(
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<Msg>,
    sync: Arc<AtomicBool>,
    metrics: JournalMetrics,
) {
    let tree = store.tree(Domain::Leases);
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(msg) => group.push(msg),
                Err(_) => break,
            }
        }
        let mut ops = Vec::new();
        let mut durable = false;
        let mut waiting = Vec::new();
        let mut stop = None;
        for msg in group {
            match msg {
                Msg::Write {
                    ops: mut more,
                    durable: d,
                    done,
                } => {
                    ops.append(&mut more);
                    durable |= d;
                    waiting.extend(done);
                }
                Msg::Stop(ack) => stop = Some(ack),
            }
        }
        let started = Instant::now();
        let count = ops.len() as u64;
        // One write per change rather than one atomic batch: the changes are
        // independent (each is one lease), and sled's batches cost several
        // times more per write.
        let mut result = ops.into_iter().try_for_each(|op| match op {
            BatchOp::Insert(key, value) => tree.insert(&key, &value).map(drop),
            BatchOp::Remove(key) => tree.remove(&key).map(drop),
        });
        if result.is_ok() && durable && sync.load(Ordering::Relaxed) {
            result = store.flush();
        }
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => {
                metrics.writes.inc_by(count);
            }
            Err(e) => {
                metrics.failures.inc();
                tracing::error!(error = %e, changes = count, "writing lease changes to the store failed");
            }
        }
        for done in waiting {
            let _ = done.send(result.clone());
        }
        if let Some(ack) = stop {
            let _ = ack.send(());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_are_in_the_store_when_the_ticket_resolves() {
        let (_dir, store) = crate::store::temp_store();
        let metrics = super::super::metrics::LeaseMetrics::default().journal;
        let journal = Journal::start(store.clone(), Durability::Sync, metrics.clone()).unwrap();
        let tickets: Vec<Ticket> = (0..50u8)
            .map(|i| journal.write(vec![BatchOp::Insert(vec![b'k', i], vec![i])], true))
            .collect();
        for t in tickets {
            t.wait().await.unwrap();
        }
        let tree = store.tree(Domain::Leases);
        assert_eq!(tree.get(&[b'k', 49]).unwrap(), Some(vec![49]));
        journal.write_detached(vec![BatchOp::Remove(vec![b'k', 0])]);
        journal.stop().await;
        assert_eq!(
            tree.get(&[b'k', 0]).unwrap(),
            None,
            "stop applies what was queued"
        );
        assert_eq!(metrics.writes.get(), 51);
        let err = journal.write(vec![], true).wait().await.unwrap_err();
        assert!(err.to_string().contains("stopped"), "{err}");
    }
}
