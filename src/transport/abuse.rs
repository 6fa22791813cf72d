//! Rapid reset (CVE-2023-44487) on a server that accepts every stream: h2
//! counts only the resets of streams the application has not accepted yet,
//! and this transport accepts each stream as soon as it arrives. So each
//! connection keeps its own budget of client resets of calls not yet
//! answered — a leaky bucket: a burst of [`BURST`], refilled at [`PER_SECOND`]
//! — and a connection that overdraws it is closed with GOAWAY
//! `ENHANCE_YOUR_CALM`. Clients that cancel now and then (deadlines, users
//! going away) never come near it; a flood is cut off after about as many
//! resets as hyper's server allows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// Resets a connection may make at once.
pub const BURST: f64 = 200.0;
/// Resets per second a connection may keep making.
pub const PER_SECOND: f64 = 20.0;

/// How a call ended, as the connection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Answered, or ended by the server (deadline, shutdown).
    Done,
    /// The client reset the stream before the answer was complete.
    Reset,
}

/// One connection's reset budget. Touched only when a client resets a call,
/// so calls that end normally pay nothing.
#[derive(Debug)]
pub struct ResetBudget {
    /// Resets owed, and when that was last brought up to date.
    level: Mutex<(f64, Instant)>,
    exceeded: AtomicBool,
}

impl Default for ResetBudget {
    fn default() -> Self {
        Self {
            level: Mutex::new((0.0, Instant::now())),
            exceeded: AtomicBool::new(false),
        }
    }
}

impl ResetBudget {
    /// Counts a call that ended as `ended`.
    pub fn count(&self, ended: Ended) {
        if ended == Ended::Reset {
            self.reset_at(Instant::now());
        }
    }

    fn reset_at(&self, now: Instant) {
        let mut level = self.level.lock();
        let drained = now.saturating_duration_since(level.1).as_secs_f64() * PER_SECOND;
        level.0 = (level.0 - drained).max(0.0) + 1.0;
        level.1 = now;
        if level.0 > BURST {
            self.exceeded.store(true, Ordering::Relaxed);
        }
    }

    /// The connection made more resets than it may.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_is_allowed_and_a_flood_is_not() {
        let budget = ResetBudget::default();
        let start = Instant::now();
        for _ in 0..200 {
            budget.reset_at(start);
        }
        assert!(!budget.exceeded(), "a burst of 200 is allowed");
        budget.reset_at(start);
        assert!(budget.exceeded(), "the 201st at once is not");
    }

    #[test]
    fn steady_cancellations_never_run_out() {
        let budget = ResetBudget::default();
        let start = Instant::now();
        // 15 resets a second for ten minutes.
        for i in 0..9_000u64 {
            budget.reset_at(start + Duration::from_millis(i * 1000 / 15));
        }
        assert!(!budget.exceeded());
        budget.count(Ended::Done);
        assert!(!budget.exceeded());
    }
}
