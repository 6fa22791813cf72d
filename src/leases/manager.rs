//! The async shell around the lease table: one lock over the table (lease
//! traffic is far below what one uncontended lock sustains, and one lock
//! makes the capacity invariant obvious), waiting with deadlines and
//! cancellation, an expiry timer that returns units the moment a lease
//! ends, the journal that writes every grant before it is answered, and
//! the metrics.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::LeaseError;
use super::journal::{Journal, Ticket};
use super::metrics::{AcquireResult, LeaseMetrics};
use super::persist;
use super::pool::PoolSpec;
use super::table::{
    Admission, Ask, Denial, Effects, Lease, Limits, PoolStatus, Restored, Table, WaitEnd,
};
use crate::config::LeasesConfig;
use crate::store::{BatchOp, Domain, Store, StoreError};
use crate::wallclock::now_ms;

/// What a waiter is told.
#[derive(Debug)]
enum Answer {
    Granted(Lease),
    Ended(WaitEnd),
    Failed(LeaseError),
}

type Reply = oneshot::Sender<Answer>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireOutcome {
    /// None: not granted.
    pub lease: Option<Lease>,
    pub waited: Duration,
    /// Why not, when not granted.
    pub denial: Option<Denial>,
}

/// Grants waiting to be written, and waiters to answer, after the lock is gone.
#[derive(Default)]
struct Settlement {
    granted: Vec<(Reply, Lease, Ticket)>,
    dropped: Vec<(Reply, WaitEnd)>,
}

struct Inner {
    table: Mutex<Table<Reply>>,
    journal: Journal,
    metrics: LeaseMetrics,
    /// Wakes the expiry timer when a lease ends sooner than it sleeps.
    timer: Notify,
    /// The expiry the timer sleeps until (u64::MAX: none).
    armed_at: AtomicU64,
}

#[derive(Clone)]
pub struct LeaseManager {
    inner: Arc<Inner>,
}

fn specs(config: &LeasesConfig) -> Vec<PoolSpec> {
    config.pools.iter().map(PoolSpec::from_config).collect()
}

fn limits(config: &LeasesConfig) -> Limits {
    Limits {
        max_waiters: usize::try_from(config.max_waiters).unwrap_or(usize::MAX),
        max_holder_bytes: usize::try_from(config.max_holder_bytes).unwrap_or(usize::MAX),
    }
}

fn insert_op(lease: &Lease) -> BatchOp {
    BatchOp::Insert(persist::key(&lease.id), persist::encode(lease))
}

impl LeaseManager {
    /// Starts the journal thread; the table starts empty (see [`Self::restore`]).
    pub fn new(
        config: &LeasesConfig,
        store: Arc<dyn Store>,
        metrics: LeaseMetrics,
    ) -> std::io::Result<Self> {
        let journal = Journal::start(store, config.durability, metrics.journal.clone())?;
        // Random per process, so lease ids are not guessable and never repeat across restarts.
        let id_prefix = RandomState::new().hash_one(SystemTime::now());
        let table = Table::new(specs(config), limits(config), id_prefix);
        let manager = Self {
            inner: Arc::new(Inner {
                table: Mutex::new(table),
                journal,
                metrics,
                timer: Notify::new(),
                armed_at: AtomicU64::new(u64::MAX),
            }),
        };
        manager.refresh_all_gauges();
        Ok(manager)
    }

    /// Puts back the leases saved before a restart, dropping those that
    /// expired meanwhile. Blocking (reads the store).
    pub fn restore(&self, store: &dyn Store) -> Result<Restored, StoreError> {
        let tree = store.tree(Domain::Leases);
        let (saved, undecodable) = persist::load(&*tree)?;
        let report = self.inner.table.lock().restore(saved, now_ms());
        let stale: Vec<BatchOp> = report
            .stale
            .iter()
            .map(|id| BatchOp::Remove(persist::key(id)))
            .chain(undecodable.into_iter().map(BatchOp::Remove))
            .collect();
        if !stale.is_empty() {
            tree.apply_batch(stale)?;
        }
        self.refresh_all_gauges();
        self.inner.timer.notify_one();
        Ok(report)
    }

    /// Grants now, waits in the pool's fair queue up to `max_wait` (zero:
    /// decide now), or denies.
    pub async fn acquire(
        &self,
        ask: Ask<'_>,
        max_wait: Duration,
    ) -> Result<AcquireOutcome, LeaseError> {
        let started = tokio::time::Instant::now();
        let (reply, rx) = if max_wait.is_zero() {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        let (admission, own_ticket, settlement) = {
            let mut table = self.inner.table.lock();
            let mut fx = Effects::default();
            let admission = table.acquire(ask, now_ms(), reply, &mut fx);
            let own_ticket = match &admission {
                Ok(Admission::Granted(lease)) => {
                    self.inner.arm(lease.expires_at_ms);
                    Some(self.inner.journal.write(vec![insert_op(lease)], true))
                }
                _ => None,
            };
            let settlement = self.inner.record(&table, fx, Some(ask.pool));
            (admission, own_ticket, settlement)
        };
        self.inner.settle(settlement);
        let metrics = &self.inner.metrics;
        match admission? {
            Admission::Granted(lease) => {
                // Until it is written, the grant is ours to undo if the caller goes away.
                let mut undo = ReleaseOnDrop::new(&self.inner, &lease.id);
                if let Some(ticket) = own_ticket {
                    ticket.wait().await?;
                }
                undo.disarm();
                metrics.acquired(ask.pool, AcquireResult::Granted);
                Ok(AcquireOutcome {
                    lease: Some(lease),
                    waited: started.elapsed(),
                    denial: None,
                })
            }
            Admission::Denied(denial) => {
                metrics.acquired(ask.pool, AcquireResult::Denied);
                Ok(AcquireOutcome {
                    lease: None,
                    waited: Duration::ZERO,
                    denial: Some(denial),
                })
            }
            Admission::Queued { waiter } => {
                let Some(rx) = rx else {
                    return Err(LeaseError::Unavailable(
                        "queued without a reply channel".into(),
                    ));
                };
                let mut guard = WaitGuard {
                    inner: self.inner.clone(),
                    pool: ask.pool.to_string(),
                    waiter,
                    rx: Some(rx),
                };
                let result = guard.wait(max_wait).await;
                let waited = started.elapsed();
                metrics.waited(ask.pool, waited.as_secs_f64());
                let lease = result?;
                metrics.acquired(
                    ask.pool,
                    if lease.is_some() {
                        AcquireResult::Granted
                    } else {
                        AcquireResult::TimedOut
                    },
                );
                let denial = lease.is_none().then(|| {
                    self.inner
                        .table
                        .lock()
                        .denial(ask.pool, ask.holder, ask.count)
                });
                Ok(AcquireOutcome {
                    lease,
                    waited,
                    denial,
                })
            }
        }
    }

    /// Extends a live lease to `ttl` from now (None: the pool's default).
    pub async fn renew(&self, id: &str, ttl: Option<Duration>) -> Result<Lease, LeaseError> {
        let (renewed, ticket, settlement) = {
            let mut table = self.inner.table.lock();
            let mut fx = Effects::default();
            let renewed = table.renew(id, ttl, now_ms(), &mut fx);
            let ticket = renewed.as_ref().ok().map(|lease| {
                self.inner.arm(lease.expires_at_ms);
                self.inner.journal.write(vec![insert_op(lease)], true)
            });
            let settlement = self.inner.record(&table, fx, None);
            (renewed, ticket, settlement)
        };
        self.inner.settle(settlement);
        let lease = renewed?;
        if let Some(ticket) = ticket {
            // Answered only once the new expiry is durable: a holder must
            // never believe in a lease that a restart would shorten.
            ticket.wait().await?;
        }
        self.inner.metrics.renewed(&lease.pool);
        Ok(lease)
    }

    /// Ends a lease now. False when it had already ended.
    pub fn release(&self, id: &str) -> Result<bool, LeaseError> {
        self.inner.release(id).map(|lease| lease.is_some())
    }

    pub fn status(&self, pool: &str) -> Result<PoolStatus, LeaseError> {
        let (status, settlement) = {
            let mut table = self.inner.table.lock();
            let mut fx = Effects::default();
            table.expire(now_ms(), &mut fx);
            let status = table.status(pool);
            (status, self.inner.record(&table, fx, None))
        };
        self.inner.settle(settlement);
        status
    }

    /// The pools configured now, sorted.
    pub fn pool_names(&self) -> Vec<String> {
        self.inner.table.lock().pool_names()
    }

    /// Applies a reloaded `[leases]` section.
    pub fn reload(&self, config: &LeasesConfig) {
        self.inner.journal.set_durability(config.durability);
        let settlement = {
            let mut table = self.inner.table.lock();
            let before = table.pool_names();
            let mut fx = Effects::default();
            table.reload(specs(config), limits(config), now_ms(), &mut fx);
            let after = table.pool_names();
            for gone in before.iter().filter(|p| !after.contains(p)) {
                self.inner.metrics.forget(gone);
            }
            let settlement = self.inner.record(&table, fx, None);
            for pool in &after {
                if let Some(g) = table.gauges(pool) {
                    self.inner.metrics.observe(pool, &g);
                }
            }
            settlement
        };
        self.inner.settle(settlement);
    }

    fn refresh_all_gauges(&self) {
        let table = self.inner.table.lock();
        for pool in table.pool_names() {
            if let Some(g) = table.gauges(&pool) {
                self.inner.metrics.observe(&pool, &g);
            }
        }
    }

    /// Ends leases the moment they expire and grants the waiters their
    /// units free, until `stop`. Decisions do not depend on it (every call
    /// expires what is due first); it makes waiting callers wake at once.
    pub async fn run_expiry(self, stop: CancellationToken) {
        loop {
            // Reset before reading the table: a lease granted after the read
            // then finds armed_at above its expiry and wakes us.
            self.inner.armed_at.store(u64::MAX, Ordering::SeqCst);
            let next = self.inner.table.lock().next_expiry();
            self.inner
                .armed_at
                .fetch_min(next.unwrap_or(u64::MAX), Ordering::SeqCst);
            let sleep = next.map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.inner.timer.notified() => {}
                _ = tokio::time::sleep(sleep.unwrap_or(Duration::from_secs(3600))) => {}
            }
            let settlement = {
                let mut table = self.inner.table.lock();
                let mut fx = Effects::default();
                table.expire(now_ms(), &mut fx);
                self.inner.record(&table, fx, None)
            };
            self.inner.settle(settlement);
        }
    }

    /// Writes what is queued for the store and stops the journal (at shutdown).
    pub async fn stop(&self) {
        self.inner.journal.stop().await;
    }
}

impl Inner {
    /// Wakes the timer if `expires_at_ms` is sooner than what it sleeps until.
    fn arm(&self, expires_at_ms: u64) {
        if expires_at_ms < self.armed_at.fetch_min(expires_at_ms, Ordering::SeqCst) {
            self.timer.notify_one();
        }
    }

    /// Under the table lock (so the store sees changes in table order): queues
    /// the effects' writes, counts them, and refreshes the touched pools' gauges.
    fn record(&self, table: &Table<Reply>, fx: Effects<Reply>, pool: Option<&str>) -> Settlement {
        let mut touched: BTreeSet<&str> = pool.into_iter().collect();
        let mut removes = Vec::with_capacity(fx.ended.len());
        for (lease, reason) in &fx.ended {
            self.metrics.ended(&lease.pool, *reason);
            removes.push(BatchOp::Remove(persist::key(&lease.id)));
        }
        if !removes.is_empty() {
            self.journal.write_detached(removes);
        }
        touched.extend(fx.ended.iter().map(|(l, _)| l.pool.as_str()));
        touched.extend(fx.granted.iter().map(|(_, l)| l.pool.as_str()));
        for pool in touched {
            if let Some(g) = table.gauges(pool) {
                self.metrics.observe(pool, &g);
            }
        }
        let granted = fx
            .granted
            .into_iter()
            .map(|(reply, lease)| {
                self.arm(lease.expires_at_ms);
                let ticket = self.journal.write(vec![insert_op(&lease)], true);
                (reply, lease, ticket)
            })
            .collect();
        Settlement {
            granted,
            dropped: fx.dropped,
        }
    }

    /// Answers waiters once their grants are written (on a task of its own,
    /// so the call that freed the units does not wait for other callers' writes).
    fn settle(self: &Arc<Self>, settlement: Settlement) {
        if settlement.granted.is_empty() && settlement.dropped.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.clone();
        runtime.spawn(async move {
            for (reply, end) in settlement.dropped {
                let _ = reply.send(Answer::Ended(end));
            }
            for (reply, lease, ticket) in settlement.granted {
                match ticket.wait().await {
                    Ok(()) => {
                        if let Err(Answer::Granted(lease)) = reply.send(Answer::Granted(lease)) {
                            // The waiter went away meanwhile: its units go back.
                            let _ = inner.release(&lease.id);
                        }
                    }
                    Err(e) => {
                        let _ = inner.release(&lease.id);
                        let _ = reply.send(Answer::Failed(e));
                    }
                }
            }
        });
    }

    fn release(self: &Arc<Self>, id: &str) -> Result<Option<Lease>, LeaseError> {
        let (released, settlement) = {
            let mut table = self.table.lock();
            let mut fx = Effects::default();
            let released = table.release(id, now_ms(), &mut fx)?;
            if let Some(lease) = &released {
                self.metrics.released(&lease.pool);
                self.journal
                    .write_detached(vec![BatchOp::Remove(persist::key(&lease.id))]);
            }
            let pool = released.as_ref().map(|l| l.pool.as_str());
            (released.clone(), self.record(&table, fx, pool))
        };
        self.settle(settlement);
        Ok(released)
    }
}

/// Releases a fresh grant if the call is dropped before it is answered.
struct ReleaseOnDrop {
    inner: Option<Arc<Inner>>,
    id: String,
}

impl ReleaseOnDrop {
    fn new(inner: &Arc<Inner>, id: &str) -> Self {
        Self {
            inner: Some(inner.clone()),
            id: id.to_string(),
        }
    }

    fn disarm(&mut self) {
        self.inner = None;
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let _ = inner.release(&self.id);
        }
    }
}

/// A caller in a pool's queue. Leaving (time ran out, or the caller went
/// away) takes it out of the queue; a grant that raced with leaving is kept
/// when the caller is still there and given back when it is not.
struct WaitGuard {
    inner: Arc<Inner>,
    pool: String,
    waiter: u64,
    rx: Option<oneshot::Receiver<Answer>>,
}

impl WaitGuard {
    /// The lease, None when the wait ran out or the pool can no longer grant it.
    async fn wait(&mut self, max_wait: Duration) -> Result<Option<Lease>, LeaseError> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(None);
        };
        let answer = tokio::time::timeout(max_wait, rx).await;
        match answer {
            Ok(answer) => {
                self.rx = None;
                match answer {
                    Ok(Answer::Granted(lease)) => Ok(Some(lease)),
                    Ok(Answer::Ended(WaitEnd::NoLongerPossible)) => Ok(None),
                    Ok(Answer::Ended(WaitEnd::PoolRemoved)) => {
                        Err(LeaseError::PoolRemoved(self.pool.clone()))
                    }
                    Ok(Answer::Failed(e)) => Err(e),
                    Err(_) => Err(LeaseError::Unavailable(
                        "the lease table dropped a waiter".into(),
                    )),
                }
            }
            Err(_) => Ok(self.leave()),
        }
    }

    /// Leaves the queue. Returns a grant that raced with the departure.
    fn leave(&mut self) -> Option<Lease> {
        let mut rx = self.rx.take()?;
        let (left, settlement) = {
            let mut table = self.inner.table.lock();
            let mut fx = Effects::default();
            let left = table.leave(&self.pool, self.waiter, now_ms(), &mut fx);
            (left, self.inner.record(&table, fx, Some(&self.pool)))
        };
        self.inner.settle(settlement);
        if left.is_some() {
            return None;
        }
        // Not queued any more: granted (maybe not yet written) or dropped.
        // Closing first means a grant still being written finds nobody and is
        // given back by the settler.
        rx.close();
        match rx.try_recv() {
            Ok(Answer::Granted(lease)) => Some(lease),
            _ => None,
        }
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        // A caller that went away must not keep units it will never use.
        if let Some(lease) = self.leave() {
            let _ = self.inner.release(&lease.id);
        }
    }
}
