//! Per-replica snapshots in Redis, for answers about the whole fleet
//! (`storage.backend = "redis"`): each replica publishes an encoded snapshot
//! of its own statistics every [`PUBLISH_EVERY`]; any replica reads the
//! others' latest and merges them with its live numbers (query statistics,
//! endpoint RED metrics: counts add up, latency histograms are added bucket by
//! bucket, so percentiles are those of all the calls, never an average of
//! percentiles). Another replica's numbers are at most [`PUBLISH_EVERY`] old;
//! a replica that stops publishing drops out after [`FORGET_AFTER`].

use std::time::Duration;

use crate::store::StoreError;
use crate::store::redis::RedisStore;

/// How often a replica publishes its statistics.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// How long a replica's last snapshot counts after it stopped publishing.
pub const FORGET_AFTER: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct FleetSnapshots {
    store: RedisStore,
    /// What the snapshots are of: `q` (query statistics), `ep` (endpoints).
    kind: &'static str,
    /// This replica's name among the publishers (random per process).
    replica: String,
}

impl FleetSnapshots {
    pub fn new(store: RedisStore, kind: &'static str) -> Self {
        use std::hash::{BuildHasher, RandomState};
        let replica = format!(
            "{:016x}",
            RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
        );
        Self {
            store,
            kind,
            replica,
        }
    }

    fn members(&self) -> String {
        self.store.key(&format!("{}-replicas", self.kind), "")
    }

    fn snapshot_key(&self, replica: &str) -> String {
        self.store.key(self.kind, replica)
    }

    /// Publishes what `snapshot` encodes every [`PUBLISH_EVERY`], on the
    /// capabilities' background tasks.
    pub fn publish_every(
        &self,
        background: &mut crate::runtime::Background,
        what: &'static str,
        snapshot: impl Fn() -> Vec<u8> + Send + Sync + 'static,
    ) {
        let publisher = self.clone();
        let snapshot = std::sync::Arc::new(snapshot);
        background.save_every(PUBLISH_EVERY, what, move || {
            let (publisher, bytes) = (publisher.clone(), snapshot());
            async move {
                publisher
                    .publish(bytes)
                    .await
                    .map(|()| 1)
                    .map_err(|e| e.to_string())
            }
        });
    }

    /// Publishes this replica's encoded statistics.
    pub async fn publish(&self, snapshot: Vec<u8>) -> Result<(), StoreError> {
        let ttl_ms = FORGET_AFTER.as_millis() as u64;
        let set = redis::cmd("SET")
            .arg(self.snapshot_key(&self.replica))
            .arg(snapshot)
            .arg("PX")
            .arg(ttl_ms)
            .to_owned();
        let join = redis::cmd("SADD")
            .arg(self.members())
            .arg(&self.replica)
            .to_owned();
        // Two keys, two hash slots on a cluster: two commands.
        for cmd in [set, join] {
            let _: redis::Value = self.store.command(&cmd).await.map_err(io)?;
        }
        Ok(())
    }

    /// The other replicas' latest snapshots (encoded); forgets replicas
    /// whose snapshot expired.
    pub async fn others(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let members: Vec<String> = self
            .store
            .command(redis::cmd("SMEMBERS").arg(self.members()))
            .await
            .map_err(io)?;
        let mut snapshots = Vec::new();
        for replica in members.into_iter().filter(|r| *r != self.replica) {
            let snapshot: Option<Vec<u8>> = self
                .store
                .command(redis::cmd("GET").arg(self.snapshot_key(&replica)))
                .await
                .map_err(io)?;
            match snapshot {
                Some(bytes) => snapshots.push(bytes),
                None => {
                    let _: redis::Value = self
                        .store
                        .command(redis::cmd("SREM").arg(self.members()).arg(&replica))
                        .await
                        .map_err(io)?;
                }
            }
        }
        Ok(snapshots)
    }
}

fn io(e: crate::store::redis::RedisStoreError) -> StoreError {
    StoreError::Io(e.to_string())
}
