//! The embedded backend: one sled database in the data directory.
//!
//! sled keeps the first I/O error it meets (a full disk, a failing device)
//! and refuses every later write with it, even once the cause is gone. So
//! the open database sits behind a swappable handle: after a fault,
//! [`Store::recover`] closes it and opens the directory again, which is how
//! writes come back without restarting gantry. Between the two, calls are
//! answered UNAVAILABLE.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use super::health::StoreHealth;
use super::{BatchOp, CasConflict, Domain, KeyValue, Store, StoreError, Tree};
use crate::config::StorageConfig;

/// How long `open` waits for a lock that is being released (20 x 25 ms).
const LOCK_RETRIES: u32 = 20;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

/// How long a reopen waits for calls still using the old database to finish.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// The key a recovery writes and flushes to prove the store takes writes.
const PROBE_KEY: &[u8] = b"store-probe";

/// An open sled database and its trees, indexed by `Domain as usize`.
struct Open {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

type Handle = Arc<ArcSwapOption<Open>>;

pub struct SledStore {
    config: StorageConfig,
    open: Handle,
    trees: Vec<Arc<SledTree>>,
    health: StoreHealth,
}

impl SledStore {
    pub fn open(config: &StorageConfig) -> Result<Self, StoreError> {
        let open: Handle = Arc::new(ArcSwapOption::from_pointee(open_dir(config)?));
        let health = StoreHealth::new(config.flush_timeout.get());
        let trees = Domain::ALL
            .iter()
            .map(|&domain| {
                Arc::new(SledTree {
                    open: open.clone(),
                    index: domain as usize,
                    health: health.clone(),
                })
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            open,
            trees,
            health,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.config.data_dir
    }

    fn current(&self) -> Result<Arc<Open>, StoreError> {
        current(&self.open)
    }

    /// Closes the database and opens the directory again. Refuses when
    /// calls still hold the old one after [`RELEASE_WAIT`] (a flush that
    /// never returns): then only a restart helps.
    fn reopen(&self) -> Result<(), StoreError> {
        let Some(old) = self.open.swap(None) else {
            return Err(StoreError::Io("the store is being reopened".into()));
        };
        let deadline = Instant::now() + RELEASE_WAIT;
        while Arc::strong_count(&old) > 1 {
            if Instant::now() > deadline {
                self.open.store(Some(old));
                return Err(StoreError::Io(
                    "calls still hold the failed database (a write or flush that never returned); restart gantry".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(old);
        match open_dir(&self.config) {
            Ok(fresh) => {
                self.open.store(Some(Arc::new(fresh)));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

fn current(handle: &ArcSwapOption<Open>) -> Result<Arc<Open>, StoreError> {
    handle
        .load_full()
        .ok_or_else(|| StoreError::Io("the store is being reopened".into()))
}

/// Opens sled in the configured directory (creating it) with every tree.
fn open_dir(config: &StorageConfig) -> Result<Open, StoreError> {
    let dir = config.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|e| {
        StoreError::Io(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    })?;
    let flush_ms = u64::try_from(config.flush_interval.get().as_millis()).unwrap_or(u64::MAX);
    let sled_config = sled::Config::new()
        .path(&dir)
        .cache_capacity(config.cache_capacity_bytes)
        .flush_every_ms(Some(flush_ms.max(1)));
    // sled's flusher thread lets go of the directory lock a moment after
    // a Db is dropped; a restart within the same process (tests, or a
    // supervisor that restarts fast) must not mistake that for another
    // gantry. A lock still held after the grace period is one.
    let mut attempts = 0;
    let db = loop {
        match sled_config.open().map_err(|e| classify_open_error(&dir, e)) {
            Err(StoreError::Locked { .. }) if attempts < LOCK_RETRIES => {
                attempts += 1;
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            other => break other?,
        }
    };
    let mut trees = Vec::with_capacity(Domain::ALL.len());
    for domain in Domain::ALL {
        trees.push(
            db.open_tree(domain.name())
                .map_err(|e| classify_open_error(&dir, e))?,
        );
    }
    Ok(Open { db, trees })
}

/// sled reports a held lock as a generic I/O error; recognise it so the
/// operator is told that another gantry owns the directory.
fn classify_open_error(dir: &Path, err: sled::Error) -> StoreError {
    match err {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked {
                dir: dir.to_path_buf(),
            }
        }
        sled::Error::Corruption { at, .. } => StoreError::Corrupt {
            dir: dir.to_path_buf(),
            detail: format!("sled found damaged data at {at:?}"),
        },
        other => StoreError::Io(format!("cannot open {}: {other}", dir.display())),
    }
}

fn io(err: sled::Error) -> StoreError {
    StoreError::Io(err.to_string())
}

impl Store for SledStore {
    fn backend(&self) -> &'static str {
        "sled"
    }

    fn tree(&self, domain: Domain) -> Arc<dyn Tree> {
        // `open` made one tree per entry of `Domain::ALL`, whose order is
        // the enum's declaration order, so this index is always in bounds.
        self.trees[domain as usize].clone()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.health.check_writable()?;
        let open = self.current()?;
        self.health.observe(open.db.flush().map(|_| ()).map_err(io))
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.current()?.db.size_on_disk().map_err(io)
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        self.health.check_writable()?;
        let open = self.current()?;
        self.health.observe(open.db.generate_id().map_err(io))
    }

    fn health(&self) -> &StoreHealth {
        &self.health
    }

    fn recover(&self) -> Result<(), StoreError> {
        self.reopen()?;
        let open = self.current()?;
        let probe = open.trees[Domain::Meta as usize]
            .insert(PROBE_KEY, b"ok")
            .and_then(|_| open.db.flush())
            .map(drop)
            .map_err(io);
        drop(open);
        probe
    }
}

/// One domain's tree; every call goes to the database open at the moment.
struct SledTree {
    open: Handle,
    index: usize,
    health: StoreHealth,
}

impl SledTree {
    fn read<T>(&self, op: impl FnOnce(&sled::Tree) -> sled::Result<T>) -> Result<T, StoreError> {
        let open = current(&self.open)?;
        op(&open.trees[self.index]).map_err(io)
    }

    /// A write: refused at once while the store is unwritable, and a failure
    /// marks it so.
    fn write<T>(&self, op: impl FnOnce(&sled::Tree) -> sled::Result<T>) -> Result<T, StoreError> {
        self.health.check_writable()?;
        let open = current(&self.open)?;
        self.health.observe(op(&open.trees[self.index]).map_err(io))
    }
}

impl Tree for SledTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read(|t| t.get(key))?.map(|v| v.to_vec()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.write(|t| t.insert(key, value))?.map(|v| v.to_vec()))
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write(|t| t.insert(key, value).map(drop))
    }

    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.write(|t| t.remove(key))?.map(|v| v.to_vec()))
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), CasConflict>, StoreError> {
        match self.write(|t| t.compare_and_swap(key, expected, new))? {
            Ok(()) => Ok(Ok(())),
            Err(conflict) => Ok(Err(CasConflict {
                current: conflict.current.map(|v| v.to_vec()),
            })),
        }
    }

    fn apply_batch(&self, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                BatchOp::Insert(k, v) => batch.insert(k, v),
                BatchOp::Remove(k) => batch.remove(k),
            }
        }
        self.write(|t| t.apply_batch(batch))
    }

    fn scan_prefix<'a>(
        &'a self,
        prefix: &[u8],
    ) -> Box<dyn Iterator<Item = Result<KeyValue, StoreError>> + Send + 'a> {
        match current(&self.open) {
            // The iterator keeps its own handle on the tree it reads.
            Ok(open) => Box::new(
                open.trees[self.index]
                    .scan_prefix(prefix)
                    .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io)),
            ),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn len(&self) -> usize {
        current(&self.open).map_or(0, |open| open.trees[self.index].len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageConfig;

    fn config(dir: &Path) -> StorageConfig {
        StorageConfig {
            data_dir: dir.to_path_buf(),
            ..StorageConfig::default()
        }
    }

    #[test]
    fn sled_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&config(dir.path())).unwrap();
        crate::store::conformance(&store);
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(&config(dir.path())).unwrap();
            store.tree(Domain::Leases).insert(b"lease", b"1").unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open(&config(dir.path())).unwrap();
        assert_eq!(
            store.tree(Domain::Leases).get(b"lease").unwrap(),
            Some(b"1".to_vec())
        );
    }

    #[test]
    fn a_held_directory_is_reported_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(&config(dir.path())).unwrap();
        let err = SledStore::open(&config(dir.path())).err().unwrap();
        assert_eq!(
            err,
            StoreError::Locked {
                dir: dir.path().to_path_buf()
            }
        );
        assert!(err.to_string().contains("in use by another process"));
    }

    #[test]
    fn ids_grow_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let last = {
            let store = SledStore::open(&config(dir.path())).unwrap();
            let a = store.next_id().unwrap();
            let b = store.next_id().unwrap();
            assert!(b > a);
            b
        };
        let store = SledStore::open(&config(dir.path())).unwrap();
        assert!(store.next_id().unwrap() > last);
    }

    /// Damage that sled detects at open: a config file whose checksum fails.
    fn damage(dir: &Path) {
        std::fs::write(
            dir.join("conf"),
            b"not a sled config at all, and no valid crc",
        )
        .unwrap();
    }

    #[test]
    fn a_damaged_directory_fails_or_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        {
            let store = SledStore::open(&config(&data)).unwrap();
            store.tree(Domain::Cache).insert(b"k", b"v").unwrap();
            store.flush().unwrap();
        }
        damage(&data);
        let err = crate::store::open(&config(&data)).err().unwrap();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("corrupt"), "{err}");

        let quarantine = StorageConfig {
            on_corruption: crate::config::OnCorruption::Quarantine,
            ..config(&data)
        };
        let store = crate::store::open(&quarantine).unwrap();
        assert_eq!(
            store.tree(Domain::Cache).get(b"k").unwrap(),
            None,
            "starts empty"
        );
        let moved: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("data.corrupt-"))
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "the damaged directory is kept aside: {moved:?}"
        );
    }

    #[test]
    fn an_uncreatable_directory_is_an_io_error() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = SledStore::open(&config(&file.path().join("sub")))
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Io(_)), "{err}");
    }
}
