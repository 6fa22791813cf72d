//! Fair waiting: a caller that cannot be granted now joins the bucket's
//! queue; one dispatcher task per bucket with waiters sleeps exactly until
//! the head's tokens have accrued, grants it, and goes on to the next. A
//! waiter that gives up leaves the queue through its guard.

use super::*;
use crate::waitqueue::{WaitQueue, Waiter};

/// Decides now, or puts the caller in the bucket's queue (starting its
/// dispatcher when the queue was empty). Synchronous, so no lock is ever
/// held across an await.
pub(super) fn enqueue(
    inner: &Arc<Inner>,
    p: &Prepared<'_>,
    client: &str,
) -> Result<Enqueued, RateLimitError> {
    let now = inner.clock.now_ns();
    let mut shard = inner.lock(p.key);
    let outcome = inner.decide_now(&mut shard, p, now, false)?;
    if outcome.allowed {
        return Ok(Enqueued::Decided(outcome));
    }
    // decide_now created the bucket if it was missing.
    let max_waiters = inner.state.load().settings.max_waiters;
    let Some(bucket) = shard.map.get_mut(&p.key) else {
        return Err(RateLimitError::Internal(
            "bucket vanished under its lock".into(),
        ));
    };
    let queue = bucket.queue.get_or_insert_with(|| {
        Box::new(Queue {
            waiters: WaitQueue::default(),
            wake: Arc::new(Notify::new()),
        })
    });
    if queue.waiters.len() >= max_waiters {
        if queue.waiters.is_empty() {
            bucket.queue = None;
        }
        return Err(RateLimitError::QueueFull {
            limit: p.limit.name.clone(),
            key: p.key.key.to_string(),
            max: max_waiters,
        });
    }
    let start_dispatcher = queue.waiters.is_empty();
    let queue_wake = queue.wake.clone();
    let id = inner.next_waiter.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    queue.waiters.push(
        client,
        Waiter {
            id,
            tokens: p.tokens,
            payload: tx,
        },
    );
    drop(shard);
    p.limit.counters.waiting.inc();
    if start_dispatcher {
        tokio::spawn(dispatch(inner.clone(), p.key.owned(), queue_wake));
    }
    Ok(Enqueued::Waiting { id, rx, outcome })
}

/// Grants waiters of one bucket as their tokens accrue; exits when the queue is empty.
/// `own` identifies the queue this dispatcher serves: a queue that emptied and
/// was replaced has a dispatcher of its own.
async fn dispatch(inner: Arc<Inner>, key: BucketKey, own: Arc<Notify>) {
    let key_ref = inner.key_ref(key.limit, &key.key);
    loop {
        let (sleep_ns, wake) = {
            let mut shard = inner.lock(key_ref);
            let state = inner.state.load();
            let set = &*state.limits;
            let Some(bucket) = shard.map.get_mut(&key_ref) else {
                return;
            };
            let Some(limit) = set.by_id(key.limit) else {
                // The limit is gone: dropping the senders answers every waiter.
                bucket.queue = None;
                return;
            };
            let params = limit.params_for(&key.key);
            let Bucket { state, queue } = bucket;
            let Some(q) = queue.as_mut().filter(|q| Arc::ptr_eq(&q.wake, &own)) else {
                return;
            };
            let mut next = None;
            while let Some(head) = q.waiters.head() {
                let now = inner.clock.now_ns();
                if head.tokens > params.burst {
                    // The limit shrank under this waiter: it can never be granted.
                    q.waiters.pop_head();
                    limit.counters.waiting.dec();
                    continue;
                }
                let decision = state.decide(&params, now, head.tokens, false);
                if !decision.allowed {
                    next = Some((decision.retry_after_ns, q.wake.clone()));
                    break;
                }
                let decision = state.decide(&params, now, head.tokens, true);
                if let Some(waiter) = q.waiters.pop_head() {
                    limit.counters.waiting.dec();
                    if waiter.payload.send(Granted(decision)).is_err() {
                        // The waiter left at this very moment: give the tokens back.
                        state.refund(&params, now, waiter.tokens);
                    }
                }
            }
            match next {
                Some(next) => next,
                None => {
                    *queue = None;
                    return;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_nanos(sleep_ns)) => {}
            _ = wake.notified() => {}
        }
    }
}

/// Removes a waiter that stops waiting (time ran out, or the caller went away).
pub(super) struct WaitGuard {
    pub(super) inner: Arc<Inner>,
    pub(super) key: BucketKey,
    pub(super) id: u64,
    pub(super) rx: Option<oneshot::Receiver<Granted>>,
    pub(super) limit: Arc<Limit>,
    pub(super) tokens: u64,
}

impl WaitGuard {
    /// Leaves the queue. Returns a grant that raced with the departure.
    pub(super) fn leave(&mut self) -> Option<Granted> {
        let mut rx = self.rx.take()?;
        let key = self.inner.key_ref(self.key.limit, &self.key.key);
        let mut shard = self.inner.lock(key);
        if let Some(queue) = shard.map.get_mut(&key).and_then(|b| b.queue.as_mut()) {
            let was_head = queue.waiters.head().map(|w| w.id) == Some(self.id);
            if queue.waiters.remove(self.id).is_some() {
                self.limit.counters.waiting.dec();
                if was_head {
                    queue.wake.notify_one();
                }
                if queue.waiters.is_empty()
                    && let Some(bucket) = shard.map.get_mut(&key)
                {
                    // No waiters left: the bucket serves immediate callers again.
                    bucket.queue = None;
                }
                return None;
            }
        }
        drop(shard);
        // Not queued any more: it was granted (or the limit was removed).
        rx.close();
        rx.try_recv().ok()
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        // A caller that went away must not keep tokens it will never use.
        if let Some(Granted(decision)) = self.leave() {
            let key = self.inner.key_ref(self.key.limit, &self.key.key);
            let params = self.limit.params_for(&self.key.key);
            let now = self.inner.clock.now_ns();
            let mut shard = self.inner.lock(key);
            if let Some(bucket) = shard.map.get_mut(&key)
                && decision.allowed
            {
                bucket.state.refund(&params, now, self.tokens);
            }
        }
    }
}
