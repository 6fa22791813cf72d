//! The storage boundary. Services reach persistent state only through the
//! [`Store`] and [`Tree`] traits, so a Redis backend can be added later
//! without touching them. The embedded default is sled: one `sled::Db`, one
//! tree per domain.

pub mod config;
pub mod fleet;
pub mod flush;
pub mod health;
pub mod redis;
mod sled_store;

use std::path::PathBuf;
use std::sync::Arc;

pub use sled_store::SledStore;

use crate::config::{OnCorruption, StorageBackend, StorageConfig};

/// The areas that keep state, one tree (keyspace) each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain {
    RateLimit,
    Cache,
    Query,
    Traces,
    Leases,
    /// Gantry's own bookkeeping (format version, start counts).
    Meta,
}

impl Domain {
    pub const ALL: [Domain; 6] = [
        Domain::RateLimit,
        Domain::Cache,
        Domain::Query,
        Domain::Traces,
        Domain::Leases,
        Domain::Meta,
    ];

    /// The name of the domain's tree (and its label on metrics).
    pub fn name(self) -> &'static str {
        match self {
            Domain::RateLimit => "ratelimit",
            Domain::Cache => "cache",
            Domain::Query => "query",
            Domain::Traces => "traces",
            Domain::Leases => "leases",
            Domain::Meta => "meta",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another process (another gantry) holds the data directory.
    #[error(
        "data directory {dir} is in use by another process (is another gantry running with the same --data-dir?)"
    )]
    Locked { dir: PathBuf },
    /// The files in the data directory are damaged.
    #[error("data directory {dir} is corrupt: {detail}")]
    Corrupt { dir: PathBuf, detail: String },
    /// A read or write failed.
    #[error("{0}")]
    Io(String),
    /// An earlier write or flush failed and the store has not recovered:
    /// writes are refused at once with that cause.
    #[error("store is not writable: {cause}")]
    Unwritable { cause: String },
}

/// A compare-and-swap whose expected value did not match; carries the current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasConflict {
    pub current: Option<Vec<u8>>,
}

/// One write of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Insert(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One domain's ordered keyspace.
pub trait Tree: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes `value`, returning the previous value.
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes `value` without reading the previous one (cheaper for large values).
    fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`, returning the previous value.
    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Atomically replaces `expected` (None: absent) by `new` (None: remove).
    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), CasConflict>, StoreError>;
    /// Applies every operation or none.
    fn apply_batch(&self, ops: Vec<BatchOp>) -> Result<(), StoreError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix<'a>(
        &'a self,
        prefix: &[u8],
    ) -> Box<dyn Iterator<Item = Result<KeyValue, StoreError>> + Send + 'a>;
    /// Number of entries (may be O(n)).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A whole backend: one tree per domain plus durability controls.
pub trait Store: Send + Sync {
    /// `"sled"`, later `"redis"`.
    fn backend(&self) -> &'static str;
    fn tree(&self, domain: Domain) -> Arc<dyn Tree>;
    /// Makes every acknowledged write durable. Blocking: call from `spawn_blocking`.
    fn flush(&self) -> Result<(), StoreError>;
    /// Bytes on disk, for metrics.
    fn size_on_disk(&self) -> Result<u64, StoreError>;
    /// A number larger than every number it returned before, across restarts
    /// (cache versions come from it, so a re-created key never reuses one).
    fn next_id(&self) -> Result<u64, StoreError>;
    /// Whether the store takes writes, and why not.
    fn health(&self) -> &health::StoreHealth;
    /// Tries to make an unwritable store take writes again (blocking); Ok
    /// once a write and a flush went through.
    fn recover(&self) -> Result<(), StoreError>;
}

/// Opens the configured backend. A damaged data directory stops the start,
/// or with `storage.on_corruption = "quarantine"` is moved aside (to
/// `<dir>.corrupt-<unix seconds>`) and an empty one is started instead.
pub fn open(config: &StorageConfig) -> Result<Arc<dyn Store>, StoreError> {
    match config.backend {
        // With Redis, capabilities that do not keep their state there yet
        // still use sled in data_dir (docs/cluster.md lists which).
        StorageBackend::Sled | StorageBackend::Redis => match SledStore::open(config) {
            Ok(store) => Ok(Arc::new(store)),
            Err(StoreError::Corrupt { dir, detail })
                if config.on_corruption == OnCorruption::Quarantine =>
            {
                let moved = quarantine(&dir)?;
                tracing::error!(
                    dir = %dir.display(),
                    moved_to = %moved.display(),
                    %detail,
                    "DATA DIRECTORY CORRUPT: moved aside and starting EMPTY (storage.on_corruption = quarantine); \
                     cached entries, leases and bucket levels are gone"
                );
                Ok(Arc::new(SledStore::open(config)?))
            }
            Err(e) => Err(e),
        },
    }
}

fn quarantine(dir: &std::path::Path) -> Result<PathBuf, StoreError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut target = dir.as_os_str().to_owned();
    target.push(format!(".corrupt-{stamp}"));
    let target = PathBuf::from(target);
    std::fs::rename(dir, &target).map_err(|e| {
        StoreError::Io(format!(
            "cannot move the corrupt data directory {} aside to {}: {e}",
            dir.display(),
            target.display()
        ))
    })?;
    Ok(target)
}

/// A sled store in a fresh temporary directory (tests).
#[cfg(test)]
pub(crate) fn temp_store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SledStore::open(&StorageConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .expect("a sled store in a temporary directory");
    (dir, Arc::new(store))
}

/// The behaviour every backend must share, run against each one (as limitador does).
#[cfg(test)]
pub(crate) fn conformance(store: &dyn Store) {
    let tree = store.tree(Domain::Cache);
    let other = store.tree(Domain::Leases);

    assert_eq!(tree.get(b"k").unwrap(), None);
    assert_eq!(tree.insert(b"k", b"v1").unwrap(), None);
    assert_eq!(tree.insert(b"k", b"v2").unwrap(), Some(b"v1".to_vec()));
    tree.set(b"s", b"first").unwrap();
    tree.set(b"s", b"second").unwrap();
    assert_eq!(tree.get(b"s").unwrap(), Some(b"second".to_vec()));
    assert_eq!(tree.remove(b"s").unwrap(), Some(b"second".to_vec()));
    assert_eq!(tree.get(b"k").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(
        other.get(b"k").unwrap(),
        None,
        "domains are separate keyspaces"
    );

    // compare-and-swap: a wrong expectation reports the current value and changes nothing
    let conflict = tree
        .compare_and_swap(b"k", Some(b"v1"), Some(b"v3"))
        .unwrap();
    assert_eq!(
        conflict,
        Err(CasConflict {
            current: Some(b"v2".to_vec())
        })
    );
    assert_eq!(
        tree.compare_and_swap(b"k", Some(b"v2"), Some(b"v3"))
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        tree.compare_and_swap(b"new", None, Some(b"n")).unwrap(),
        Ok(())
    );
    assert_eq!(
        tree.compare_and_swap(b"new", Some(b"n"), None).unwrap(),
        Ok(())
    );
    assert_eq!(tree.get(b"new").unwrap(), None);

    tree.apply_batch(vec![
        BatchOp::Insert(b"p/1".to_vec(), b"a".to_vec()),
        BatchOp::Insert(b"p/2".to_vec(), b"b".to_vec()),
        BatchOp::Insert(b"q/1".to_vec(), b"c".to_vec()),
        BatchOp::Remove(b"k".to_vec()),
    ])
    .unwrap();
    let scanned: Vec<KeyValue> = tree.scan_prefix(b"p/").collect::<Result<_, _>>().unwrap();
    assert_eq!(
        scanned,
        vec![
            (b"p/1".to_vec(), b"a".to_vec()),
            (b"p/2".to_vec(), b"b".to_vec())
        ]
    );
    assert_eq!(tree.get(b"k").unwrap(), None);
    assert_eq!(tree.len(), 3);
    assert_eq!(tree.remove(b"q/1").unwrap(), Some(b"c".to_vec()));
    assert_eq!(tree.remove(b"q/1").unwrap(), None);
    store.flush().unwrap();
}
