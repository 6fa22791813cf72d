//! Work lanes that answer in groups: callers hand a small piece of work to
//! one of a few tasks, each of which runs everything queued in one go. The
//! answers then leave the server together — a handful of write system calls
//! for many calls instead of about one each — which is where a small call's
//! time goes on a busy machine (docs/benchmarks.md). One set of lanes serves
//! rate-limit decisions and cache reads and writes. A full lane never
//! refuses: the work then runs in place.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};

/// Most tasks one lane takes off its queue at a time.
const GULP: usize = 256;

type Work = Box<dyn FnOnce() + Send>;

/// The lane's task stopped before answering (its runtime is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneStopped;

#[derive(Clone)]
pub struct Lanes {
    lanes: Arc<[mpsc::Sender<Work>]>,
    next: Arc<AtomicUsize>,
}

impl Lanes {
    /// Starts `lanes` tasks (needs a Tokio runtime), each with a queue of `depth`.
    pub fn spawn(lanes: usize, depth: usize) -> Self {
        let lanes: Arc<[mpsc::Sender<Work>]> = (0..lanes.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Work>(depth.max(1));
                tokio::spawn(async move {
                    let mut queued = Vec::with_capacity(GULP);
                    while rx.recv_many(&mut queued, GULP).await > 0 {
                        for work in queued.drain(..) {
                            work();
                        }
                    }
                });
                tx
            })
            .collect();
        Self {
            lanes,
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs `work` on the next lane and returns its result; when that lane is
    /// full, runs it here instead.
    pub async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, LaneStopped> {
        let (reply, answer) = oneshot::channel();
        // A caller that went away just does not read its answer.
        let task: Work = Box::new(move || drop(reply.send(work())));
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        if let Err(e) = self.lanes[lane].try_send(task) {
            let (mpsc::error::TrySendError::Full(task) | mpsc::error::TrySendError::Closed(task)) =
                e;
            task();
        }
        answer.await.map_err(|_| LaneStopped)
    }
}

/// One lane per core: enough to keep every core's answers grouped.
pub fn default_lanes() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_a_lane_or_in_place_when_the_lane_is_full() {
        let lanes = Lanes::spawn(1, 1);
        assert_eq!(lanes.run(|| 21 * 2).await, Ok(42));
        // Three at once on a queue of one: at least one runs in place, and
        // every caller gets its own answer.
        let (a, b, c) = tokio::join!(lanes.run(|| 1), lanes.run(|| 2), lanes.run(|| 3));
        assert_eq!((a, b, c), (Ok(1), Ok(2), Ok(3)));
    }
}
