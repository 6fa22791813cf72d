//! Bucket levels saved in the store, so a restart does not hand every client
//! a fresh burst. A snapshot is written as one atomic batch:
//!
//! - `b/<limit>\0<key>` → how long until the bucket is full (u64 ns, big-endian)
//! - `saved_at` → when the snapshot was taken (u64 ns since the Unix epoch)
//!
//! - `alive_at` → the last heartbeat (u64 ns since the Unix epoch), written
//!   every second while gantry runs
//! - `clean_stop` → present only after a clean shutdown saved the snapshot
//!
//! After a clean stop the wall-clock time since `saved_at` counts as refill
//! time. After an unclean one (a heartbeat and no `clean_stop`: kill -9, a
//! crash, a power loss) the snapshot can be up to `persist_interval` old, so
//! by default every bucket is taken to have been empty at the last heartbeat
//! (`ratelimit.unclean_restart`): a crash loop hands out no fresh bursts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::SavedBucket;
use crate::store::{BatchOp, StoreError, Tree};

const BUCKET_PREFIX: &[u8] = b"b/";
const SAVED_AT: &[u8] = b"saved_at";
const ALIVE_AT: &[u8] = b"alive_at";
const CLEAN_STOP: &[u8] = b"clean_stop";

/// How the previous run ended, as the store remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastStop {
    /// Nothing to go by: a new data directory, or one written before
    /// heartbeats existed.
    Unknown,
    /// A clean shutdown saved the snapshot.
    Clean,
    /// Killed or crashed; the last heartbeat was at this time.
    Unclean { alive_at: SystemTime },
}

/// How the previous run ended.
pub fn last_stop(tree: &dyn Tree) -> Result<LastStop, StoreError> {
    if tree.get(CLEAN_STOP)?.is_some() {
        return Ok(LastStop::Clean);
    }
    Ok(read_time(tree, ALIVE_AT)?
        .map_or(LastStop::Unknown, |alive_at| LastStop::Unclean { alive_at }))
}

/// Records that gantry is running now (and so that a stop from here on is
/// unclean until [`mark_clean_stop`]).
pub fn heartbeat(tree: &dyn Tree, now: SystemTime) -> Result<(), StoreError> {
    tree.apply_batch(vec![
        BatchOp::Insert(ALIVE_AT.to_vec(), unix_ns(now).to_be_bytes().to_vec()),
        BatchOp::Remove(CLEAN_STOP.to_vec()),
    ])
}

/// Records a clean shutdown (after the last snapshot was saved).
pub fn mark_clean_stop(tree: &dyn Tree) -> Result<(), StoreError> {
    tree.set(CLEAN_STOP, b"1")
}

fn read_time(tree: &dyn Tree, key: &[u8]) -> Result<Option<SystemTime>, StoreError> {
    Ok(tree
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(|b| UNIX_EPOCH + Duration::from_nanos(u64::from_be_bytes(b))))
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn bucket_key(bucket: &SavedBucket) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(BUCKET_PREFIX.len() + bucket.limit.len() + 1 + bucket.key.len());
    key.extend_from_slice(BUCKET_PREFIX);
    key.extend_from_slice(bucket.limit.as_bytes());
    key.push(0);
    key.extend_from_slice(bucket.key.as_bytes());
    key
}

/// Replaces the saved snapshot with `buckets`, atomically.
pub fn save(tree: &dyn Tree, buckets: &[SavedBucket], now: SystemTime) -> Result<(), StoreError> {
    let mut ops = Vec::with_capacity(buckets.len() + 1);
    let fresh: std::collections::HashSet<Vec<u8>> = buckets.iter().map(bucket_key).collect();
    for item in tree.scan_prefix(BUCKET_PREFIX) {
        let (key, _) = item?;
        if !fresh.contains(&key) {
            ops.push(BatchOp::Remove(key));
        }
    }
    for bucket in buckets {
        let deficit = u64::try_from(bucket.deficit.as_nanos()).unwrap_or(u64::MAX);
        ops.push(BatchOp::Insert(
            bucket_key(bucket),
            deficit.to_be_bytes().to_vec(),
        ));
    }
    ops.push(BatchOp::Insert(
        SAVED_AT.to_vec(),
        unix_ns(now).to_be_bytes().to_vec(),
    ));
    tree.apply_batch(ops)
}

/// The saved buckets and the downtime since they were saved. Entries that do
/// not decode (written by another version, or damaged) are skipped and counted.
pub fn load(
    tree: &dyn Tree,
    now: SystemTime,
) -> Result<(Vec<SavedBucket>, Duration, usize), StoreError> {
    let saved_at = tree
        .get(SAVED_AT)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes);
    let Some(saved_at) = saved_at else {
        return Ok((Vec::new(), Duration::ZERO, 0));
    };
    // A clock that went backwards counts as no downtime rather than a negative one.
    let downtime = Duration::from_nanos(unix_ns(now).saturating_sub(saved_at));
    let mut buckets = Vec::new();
    let mut skipped = 0;
    for item in tree.scan_prefix(BUCKET_PREFIX) {
        let (key, value) = item?;
        let decoded = key[BUCKET_PREFIX.len()..]
            .iter()
            .position(|&b| b == 0)
            .and_then(|nul| {
                let rest = &key[BUCKET_PREFIX.len()..];
                let limit = std::str::from_utf8(&rest[..nul]).ok()?;
                let bucket_key = std::str::from_utf8(&rest[nul + 1..]).ok()?;
                let deficit = u64::from_be_bytes(<[u8; 8]>::try_from(value.as_slice()).ok()?);
                Some(SavedBucket {
                    limit: limit.to_string(),
                    key: bucket_key.to_string(),
                    deficit: Duration::from_nanos(deficit),
                })
            });
        match decoded {
            Some(bucket) => buckets.push(bucket),
            None => skipped += 1,
        }
    }
    Ok((buckets, downtime, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Domain;

    #[test]
    fn a_snapshot_round_trips_and_replaces_the_previous_one() {
        let (_dir, store) = crate::store::temp_store();
        let tree = store.tree(Domain::RateLimit);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let first = vec![
            SavedBucket {
                limit: "api".into(),
                key: "alice".into(),
                deficit: Duration::from_millis(700),
            },
            SavedBucket {
                limit: "api".into(),
                key: "with\0nul".into(),
                deficit: Duration::from_millis(5),
            },
        ];
        save(&*tree, &first, t0).unwrap();
        let second = vec![SavedBucket {
            limit: "login".into(),
            key: "bob".into(),
            deficit: Duration::from_secs(3),
        }];
        save(&*tree, &second, t0).unwrap();
        let (loaded, downtime, skipped) = load(&*tree, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(loaded, second, "the old snapshot's buckets are gone");
        assert_eq!(downtime, Duration::from_secs(2));
        assert_eq!(skipped, 0);

        tree.insert(b"b/garbage", b"x").unwrap();
        let (_, _, skipped) = load(&*tree, t0).unwrap();
        assert_eq!(skipped, 1);
        let (_, downtime, _) = load(&*tree, t0 - Duration::from_secs(5)).unwrap();
        assert_eq!(downtime, Duration::ZERO, "a clock that went backwards");
    }

    #[test]
    fn the_last_stop_is_clean_only_after_a_mark_following_the_heartbeats() {
        let (_dir, store) = crate::store::temp_store();
        let tree = store.tree(Domain::RateLimit);
        assert_eq!(last_stop(&*tree).unwrap(), LastStop::Unknown);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        heartbeat(&*tree, t0).unwrap();
        assert_eq!(
            last_stop(&*tree).unwrap(),
            LastStop::Unclean { alive_at: t0 }
        );
        mark_clean_stop(&*tree).unwrap();
        assert_eq!(last_stop(&*tree).unwrap(), LastStop::Clean);
        heartbeat(&*tree, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(
            last_stop(&*tree).unwrap(),
            LastStop::Unclean {
                alive_at: t0 + Duration::from_secs(1)
            },
            "running again: a stop from now on is unclean until marked"
        );
    }

    #[test]
    fn nothing_saved_loads_nothing() {
        let (_dir, store) = crate::store::temp_store();
        let (loaded, downtime, _) =
            load(&*store.tree(Domain::RateLimit), SystemTime::now()).unwrap();
        assert!(loaded.is_empty());
        assert_eq!(downtime, Duration::ZERO);
    }
}
