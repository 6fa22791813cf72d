//! Group commit for "answer after it is on disk": callers that wrote ask for
//! a flush and wait; one thread flushes once for everyone who asked while
//! the previous flush ran. A flush that starts after a request covers the
//! write made before it.

use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::health::StoreHealth;
use super::{Store, StoreError};

type Waiter = oneshot::Sender<Result<(), StoreError>>;

pub struct GroupFlush {
    tx: mpsc::Sender<Waiter>,
    health: StoreHealth,
}

impl GroupFlush {
    pub fn start(store: Arc<dyn Store>, name: &str) -> std::io::Result<Self> {
        let health = store.health().clone();
        let (tx, rx) = mpsc::channel::<Waiter>();
        std::thread::Builder::new()
            .name(format!("gantry-flush-{name}"))
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let result = store.flush();
                    for waiter in waiting {
                        let _ = waiter.send(result.clone());
                    }
                }
            })?;
        Ok(Self { tx, health })
    }

    /// Resolves once everything written before this call is on disk; fails
    /// at once while the store is unwritable, and after
    /// `storage.flush_timeout` when the flush does not come back.
    pub async fn flushed(&self) -> Result<(), StoreError> {
        self.health.check_writable()?;
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .map_err(|_| StoreError::Io("the flusher thread is gone".into()))?;
        let answer = async {
            rx.await
                .map_err(|_| StoreError::Io("the flusher thread is gone".into()))?
        };
        self.health.bounded("a flush", answer).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Domain;

    #[tokio::test]
    async fn concurrent_callers_are_flushed() {
        let (_dir, store) = crate::store::temp_store();
        let flush = Arc::new(GroupFlush::start(store.clone(), "test").unwrap());
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let (store, flush) = (store.clone(), flush.clone());
            tasks.push(tokio::spawn(async move {
                store.tree(Domain::Cache).insert(&[i], &[i]).unwrap();
                flush.flushed().await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(store.tree(Domain::Cache).len(), 20);
    }
}
