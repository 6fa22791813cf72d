//! Work lanes that answer in groups: callers hand a small job to one of a
//! few tasks, each of which runs everything queued in one go. The answers
//! then leave the server together — a handful of write system calls for many
//! calls instead of about one each — which is where a small call's time goes
//! on a busy machine (docs/benchmarks.md). Used for immediate rate-limit
//! decisions and cache reads. A full lane never refuses: the caller gets its
//! job back and runs it in place.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// Most jobs one lane takes off its queue at a time.
const GULP: usize = 256;

pub struct Lanes<J> {
    lanes: Arc<[mpsc::Sender<J>]>,
    next: Arc<AtomicUsize>,
}

impl<J> Clone for Lanes<J> {
    fn clone(&self) -> Self {
        Self {
            lanes: self.lanes.clone(),
            next: self.next.clone(),
        }
    }
}

impl<J: Send + 'static> Lanes<J> {
    /// Starts `lanes` tasks, each with a queue of `depth` jobs, running `run` on every job.
    pub fn spawn<F>(lanes: usize, depth: usize, run: F) -> Self
    where
        F: Fn(J) + Send + Sync + 'static,
    {
        let run = Arc::new(run);
        let lanes: Arc<[mpsc::Sender<J>]> = (0..lanes.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<J>(depth.max(1));
                let run = run.clone();
                tokio::spawn(async move {
                    let mut jobs = Vec::with_capacity(GULP);
                    while rx.recv_many(&mut jobs, GULP).await > 0 {
                        for job in jobs.drain(..) {
                            run(job);
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

    /// Queues a job on the next lane; gives it back when that lane is full.
    pub fn submit(&self, job: J) -> Result<(), J> {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        self.lanes[lane].try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => job,
        })
    }
}

/// One lane per core: enough to keep every core's answers grouped.
pub fn default_lanes() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn jobs_run_and_a_full_lane_gives_the_job_back() {
        let lanes = Lanes::spawn(1, 1, |(n, reply): (u32, oneshot::Sender<u32>)| {
            let _ = reply.send(n * 2);
        });
        let (tx, rx) = oneshot::channel();
        lanes.submit((21, tx)).map_err(|_| ()).unwrap();
        assert_eq!(rx.await.unwrap(), 42);
        // Fill the single slot before the lane runs, then the next comes back.
        let (tx1, rx1) = oneshot::channel();
        let (tx2, _rx2) = oneshot::channel();
        let first = lanes.submit((1, tx1));
        let second = lanes.submit((2, tx2));
        assert!(first.is_ok());
        assert_eq!(second.err().map(|(n, _)| n), Some(2));
        assert_eq!(rx1.await.unwrap(), 2);
    }
}
