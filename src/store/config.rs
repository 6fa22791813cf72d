//! `[storage]`: where state that survives a restart lives.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::values::{Checked, HumanDuration, positive};
use crate::error::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Embedded sled database in `data_dir`: no other service needed.
    Sled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// Where sled keeps its files. Only one gantry may use a directory at a time.
    pub data_dir: PathBuf,
    /// How often sled writes its buffers to disk (the loss window after a crash).
    pub flush_interval: HumanDuration,
    /// sled's page cache, in bytes.
    pub cache_capacity_bytes: u64,
    /// A data directory that fails to open because it is damaged: `fail` stops
    /// with an error; `quarantine` moves it aside, logs loudly and starts empty.
    pub on_corruption: OnCorruption,
    /// Longest wait for a flush (a `sync` Put, a lease grant, shutdown) before
    /// the store counts as unwritable and the caller gets UNAVAILABLE.
    pub flush_timeout: HumanDuration,
    /// While the store is unwritable (a full disk), how often gantry tries to
    /// bring it back (for sled: reopen it and write a probe).
    pub recover_interval: HumanDuration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCorruption {
    #[default]
    Fail,
    Quarantine,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Sled,
            data_dir: PathBuf::from("./data"),
            flush_interval: HumanDuration::from_millis(500),
            cache_capacity_bytes: 128 * 1024 * 1024,
            on_corruption: OnCorruption::Fail,
            flush_timeout: HumanDuration::from_secs(5),
            recover_interval: HumanDuration::from_secs(1),
        }
    }
}

impl StorageConfig {
    pub(crate) fn validate(&self) -> Checked {
        if self.data_dir.as_os_str().is_empty() {
            return Err(FieldError::empty("storage.data_dir"));
        }
        positive(
            "storage",
            [
                ("flush_interval", self.flush_interval),
                ("flush_timeout", self.flush_timeout),
                ("recover_interval", self.recover_interval),
            ],
        )
    }
}
