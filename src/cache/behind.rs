//! Write-behind for `durability = "periodic"`: the writes a Put or Delete
//! makes are staged here (the value as put, not copied) and answered at
//! once; a drain packs what is staged and writes it to the store in one
//! batch, then the store is flushed. The server drains every half
//! `storage.flush_interval`, so an acknowledged write is still on disk within
//! one flush interval, as `periodic` promises. A key rewritten between two
//! drains is packed and written once, with its last value.
//!
//! This module only keeps the records; the engine decides what a record
//! means and holds a key's stripe lock around every change of its record,
//! so a record and the store never disagree about what the store holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use prost::bytes::Bytes;

/// What a key becomes in the store at the next drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    Put {
        version: u64,
        /// 0: never expires.
        expires_at_ms: u64,
        value: Bytes,
    },
    Delete,
}

/// An entry as the store holds it: what a drain replaces (its expiry index
/// entry, its stored bytes in the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InStore {
    pub expires_at_ms: u64,
    pub stored_len: usize,
}

/// One staged key, as a drain takes it.
#[derive(Debug, Clone)]
pub struct Pending {
    pub name: Vec<u8>,
    pub staged: Staged,
    /// Tells a drain whether the key was staged again while it wrote.
    pub generation: u64,
    /// The entry the store holds now (None: none).
    pub in_store: Option<InStore>,
}

struct Record {
    staged: Staged,
    generation: u64,
    in_store: Option<InStore>,
}

fn weight(name: &[u8], staged: &Staged) -> usize {
    name.len()
        + match staged {
            Staged::Put { value, .. } => value.len(),
            Staged::Delete => 0,
        }
}

#[derive(Default)]
struct Records {
    by_name: HashMap<Vec<u8>, Record, foldhash::fast::RandomState>,
    /// Names and values staged, in bytes.
    bytes: usize,
    next_generation: u64,
    /// Whether a drain wrote since the last flush.
    unflushed: bool,
}

pub struct WriteBehind {
    records: Mutex<Records>,
    /// One drain at a time: two would race to write one key's records.
    draining: Mutex<()>,
    max_bytes: usize,
    /// Keys drains wrote, and drains the store refused (for /metrics).
    written_keys: AtomicU64,
    failed_drains: AtomicU64,
}

impl WriteBehind {
    /// `max_bytes`: staged bytes beyond which a write drains first.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            records: Mutex::new(Records::default()),
            draining: Mutex::new(()),
            max_bytes,
            written_keys: AtomicU64::new(0),
            failed_drains: AtomicU64::new(0),
        }
    }

    /// What is staged for `name`, if anything.
    pub fn staged(&self, name: &[u8]) -> Option<Staged> {
        self.records
            .lock()
            .by_name
            .get(name)
            .map(|r| r.staged.clone())
    }

    /// What the store holds for `name` as its record knows it; None when
    /// nothing is staged for it (then the store itself says).
    pub fn in_store(&self, name: &[u8]) -> Option<Option<InStore>> {
        self.records.lock().by_name.get(name).map(|r| r.in_store)
    }

    /// Stages `staged` for `name`. `in_store` is what the store holds now
    /// and is used only when nothing was staged for the key before (a
    /// record already knows it). Call under the key's stripe lock.
    pub fn stage(&self, name: &[u8], staged: Staged, in_store: Option<InStore>) {
        let mut records = self.records.lock();
        let records = &mut *records;
        records.next_generation += 1;
        let generation = records.next_generation;
        let added = weight(name, &staged);
        match records.by_name.get_mut(name) {
            Some(record) => {
                let removed = weight(name, &record.staged);
                records.bytes = records.bytes.saturating_sub(removed) + added;
                record.staged = staged;
                record.generation = generation;
            }
            None => {
                records.bytes += added;
                records.by_name.insert(
                    name.to_vec(),
                    Record {
                        staged,
                        generation,
                        in_store,
                    },
                );
            }
        }
    }

    /// Whether staging `more` bytes would pass the bound: then the writer
    /// drains first, on its own thread (backpressure instead of memory).
    pub fn full(&self, more: usize) -> bool {
        self.records.lock().bytes.saturating_add(more) > self.max_bytes
    }

    pub fn staged_bytes(&self) -> usize {
        self.records.lock().bytes
    }

    pub fn staged_keys(&self) -> usize {
        self.records.lock().by_name.len()
    }

    /// Held for the whole of a drain.
    pub fn drain_turn(&self) -> MutexGuard<'_, ()> {
        self.draining.lock()
    }

    /// Everything staged now, for a drain to write (values are not copied).
    pub fn snapshot(&self) -> Vec<Pending> {
        let records = self.records.lock();
        records
            .by_name
            .iter()
            .map(|(name, r)| Pending {
                name: name.clone(),
                staged: r.staged.clone(),
                generation: r.generation,
                in_store: r.in_store,
            })
            .collect()
    }

    /// After a drain wrote `pending`, the store holds `written` for its key:
    /// the record goes unless the key was staged again meanwhile (then it
    /// stays, knowing what the store holds now). Call under the key's
    /// stripe lock.
    pub fn written(&self, pending: &Pending, written: Option<InStore>) {
        self.written_keys.fetch_add(1, Ordering::Relaxed);
        let mut records = self.records.lock();
        let records = &mut *records;
        records.unflushed = true;
        let Some(record) = records.by_name.get_mut(&pending.name) else {
            return;
        };
        if record.generation == pending.generation {
            let removed = weight(&pending.name, &record.staged);
            records.bytes = records.bytes.saturating_sub(removed);
            records.by_name.remove(&pending.name);
        } else {
            record.in_store = written;
        }
    }

    /// Counts a drain the store refused (what it held stays staged).
    pub fn drain_failed(&self) {
        self.failed_drains.fetch_add(1, Ordering::Relaxed);
    }

    /// Keys written by drains so far, and drains the store refused.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.written_keys.load(Ordering::Relaxed),
            self.failed_drains.load(Ordering::Relaxed),
        )
    }

    /// Whether a drain wrote since the last call (so a flush is due).
    pub fn take_unflushed(&self) -> bool {
        std::mem::take(&mut self.records.lock().unflushed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(version: u64, value: &'static [u8]) -> Staged {
        Staged::Put {
            version,
            expires_at_ms: 0,
            value: Bytes::from_static(value),
        }
    }

    const OLD: InStore = InStore {
        expires_at_ms: 7,
        stored_len: 3,
    };

    #[test]
    fn a_rewrite_replaces_the_staged_value_and_keeps_what_the_store_holds() {
        let wb = WriteBehind::new(1 << 20);
        wb.stage(b"ns\0k", put(1, b"one"), Some(OLD));
        wb.stage(b"ns\0k", put(2, b"three"), None);
        assert_eq!(wb.staged(b"ns\0k"), Some(put(2, b"three")));
        assert_eq!(wb.in_store(b"ns\0k"), Some(Some(OLD)));
        assert_eq!(wb.in_store(b"ns\0other"), None);
        assert_eq!((wb.staged_keys(), wb.staged_bytes()), (1, 4 + 5));
        wb.stage(b"ns\0k", Staged::Delete, None);
        assert_eq!(wb.staged_bytes(), 4);
    }

    #[test]
    fn a_drained_record_goes_unless_it_was_staged_again_meanwhile() {
        let wb = WriteBehind::new(1 << 20);
        wb.stage(b"a", put(1, b"x"), None);
        wb.stage(b"b", put(2, b"y"), Some(OLD));
        let mut taken = wb.snapshot();
        taken.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(taken.len(), 2);
        // b is written again while the drain writes.
        wb.stage(b"b", put(3, b"zz"), None);
        let now = InStore {
            expires_at_ms: 0,
            stored_len: 1,
        };
        wb.written(&taken[0], Some(now));
        wb.written(&taken[1], Some(now));
        assert_eq!(wb.staged(b"a"), None, "written and unchanged: gone");
        assert_eq!(
            wb.staged(b"b"),
            Some(put(3, b"zz")),
            "kept for the next drain"
        );
        assert_eq!(
            wb.in_store(b"b"),
            Some(Some(now)),
            "the store holds what was written"
        );
        assert_eq!(wb.staged_bytes(), 1 + 2);
        assert!(wb.take_unflushed());
        assert!(!wb.take_unflushed());
        wb.drain_failed();
        assert_eq!(wb.totals(), (2, 1));
    }

    #[test]
    fn staged_bytes_are_bounded() {
        let wb = WriteBehind::new(10);
        assert!(!wb.full(10));
        wb.stage(b"k", put(1, b"12345"), None);
        assert!(!wb.full(4));
        assert!(wb.full(5));
    }
}
