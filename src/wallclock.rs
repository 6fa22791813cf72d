//! Wall-clock time in milliseconds since the Unix epoch: the clock of
//! anything that expires across restarts (cache TTLs, leases), because a
//! monotonic clock does not survive one.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
