//! The lease table: every pool's leases, holders and wait queue, as a pure
//! state machine. Time is passed in (wall-clock milliseconds since the Unix
//! epoch, because expiry times are shown to clients and survive restarts);
//! waiters are an opaque payload `W` (the async shell's reply channel).
//!
//! The invariant: a lease is granted only while the units of the pool's
//! unexpired leases plus the new ones stay within the capacity. Expired
//! leases are removed before every decision, so their units count as free
//! the moment they expire, whether or not a timer has fired yet.
//!
//! Waiting is fair: a pool's queue rotates between holders (see
//! [`crate::waitqueue`]) and only the first eligible head is granted, so
//! small requests never overtake a large one indefinitely. A head whose own
//! holder is at its per-holder maximum is passed over (only that holder's
//! releases can unblock it) without losing its place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::LeaseError;
use super::pool::PoolSpec;
use crate::error::FieldError;
use crate::waitqueue::{WaitQueue, Waiter};

/// One granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub pool: String,
    pub holder: String,
    pub count: u32,
    /// Wall-clock milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// What a call asks for.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub pool: &'a str,
    pub holder: &'a str,
    /// Units; 0 means 1.
    pub count: u32,
    /// None: the pool's default.
    pub ttl: Option<Duration>,
}

/// Settings that apply to every pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_waiters: usize,
    pub max_holder_bytes: usize,
}

/// The immediate answer to an acquisition.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Granted now.
    Granted(Lease),
    /// Not available now, and the caller does not wait.
    Denied(Denial),
    /// In the pool's queue; the grant (or end) arrives through the payload.
    Queued { waiter: u64 },
}

/// Why a lease was not granted, as the caller is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The pool's units are all leased.
    PoolFull,
    /// The holder already has the pool's `max_per_holder` units (with this ask, more).
    HolderLimit,
    /// There would be room, but callers who came first are waiting for it.
    QueueAhead,
}

/// Why a waiter was answered without a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitEnd {
    /// Its pool was removed by a reload.
    PoolRemoved,
    /// A reload shrank the pool below the count it asked for.
    NoLongerPossible,
}

/// Why a lease ended without a Release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Expired,
    PoolRemoved,
}

/// What a table operation did besides its own answer; the shell writes
/// the changes to the store and answers the waiters.
#[derive(Debug)]
pub struct Effects<W> {
    /// Waiters granted: write each lease, then hand it over.
    pub granted: Vec<(W, Lease)>,
    /// Leases that ended by themselves: delete them from the store.
    pub ended: Vec<(Lease, EndReason)>,
    /// Waiters answered without a lease.
    pub dropped: Vec<(W, WaitEnd)>,
}

impl<W> Default for Effects<W> {
    fn default() -> Self {
        Self {
            granted: Vec::new(),
            ended: Vec::new(),
            dropped: Vec::new(),
        }
    }
}

impl<W> Effects<W> {
    pub fn is_empty(&self) -> bool {
        self.granted.is_empty() && self.ended.is_empty() && self.dropped.is_empty()
    }
}

/// A waiter's payload and the TTL its lease will get.
#[derive(Debug)]
struct Pending<W> {
    holder: String,
    pool_ttl: Duration,
    payload: W,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct HolderUse {
    units: u64,
    leases: u32,
}

#[derive(Debug)]
struct PoolState<W> {
    spec: PoolSpec,
    /// Units of the pool's leases. u64: restored leases may exceed a shrunk capacity.
    in_use: u64,
    holders: BTreeMap<String, HolderUse>,
    queue: WaitQueue<Pending<W>>,
}

impl<W> PoolState<W> {
    fn new(spec: PoolSpec) -> Self {
        Self {
            spec,
            in_use: 0,
            holders: BTreeMap::new(),
            queue: WaitQueue::default(),
        }
    }

    fn holder_units(&self, holder: &str) -> u64 {
        self.holders.get(holder).map_or(0, |h| h.units)
    }

    fn holder_may_take(&self, holder: &str, count: u32) -> bool {
        self.holder_units(holder) + u64::from(count) <= u64::from(self.spec.max_per_holder)
    }

    fn fits(&self, count: u32) -> bool {
        self.in_use + u64::from(count) <= u64::from(self.spec.capacity)
    }

    /// Why `count` units are not the holder's now: its own maximum first
    /// (freed units would not help), then the pool, then the queue.
    fn denial(&self, holder: &str, count: u32) -> Denial {
        if !self.holder_may_take(holder, count) {
            Denial::HolderLimit
        } else if !self.fits(count) {
            Denial::PoolFull
        } else {
            Denial::QueueAhead
        }
    }

    fn take(&mut self, holder: &str, count: u32) {
        self.in_use += u64::from(count);
        let entry = self.holders.entry(holder.to_string()).or_default();
        entry.units += u64::from(count);
        entry.leases += 1;
    }

    fn give_back(&mut self, holder: &str, count: u32) {
        self.in_use = self.in_use.saturating_sub(u64::from(count));
        if let Some(entry) = self.holders.get_mut(holder) {
            entry.units = entry.units.saturating_sub(u64::from(count));
            entry.leases = entry.leases.saturating_sub(1);
            if entry.leases == 0 {
                self.holders.remove(holder);
            }
        }
    }
}

/// A pool as PoolStatus reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub pool: String,
    pub capacity: u32,
    pub in_use: u64,
    pub waiting: usize,
    /// (holder, units, leases), sorted by holder.
    pub holders: Vec<(String, u64, u32)>,
}

/// A pool's numbers for the gauges on /metrics (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGauges {
    pub capacity: u32,
    pub in_use: u64,
    pub waiting: usize,
    pub holders: usize,
}

/// What restoring saved leases found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    pub restored: usize,
    /// Ids of leases that expired while the server was down, or whose pool
    /// is no longer configured: to delete from the store.
    pub stale: Vec<String>,
}

#[derive(Debug)]
pub struct Table<W> {
    pools: HashMap<String, PoolState<W>>,
    leases: HashMap<String, Lease>,
    /// (expires_at_ms, lease id), soonest first.
    expiry: BTreeSet<(u64, String)>,
    limits: Limits,
    /// Secret and random per process: ids never repeat across restarts and
    /// cannot be guessed from one another.
    id_prefix: u64,
    next_id: u64,
}

fn expires_at(now_ms: u64, ttl: Duration) -> u64 {
    now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// Longest lease id accepted before lookup (ids we issue are 32 hex digits).
const MAX_ID_BYTES: usize = 64;
use crate::config::MAX_POOL_NAME_BYTES as MAX_POOL_BYTES;

impl<W> Table<W> {
    pub fn new(specs: impl IntoIterator<Item = PoolSpec>, limits: Limits, id_prefix: u64) -> Self {
        Self {
            pools: specs
                .into_iter()
                .map(|spec| (spec.name.clone(), PoolState::new(spec)))
                .collect(),
            leases: HashMap::new(),
            expiry: BTreeSet::new(),
            limits,
            id_prefix,
            next_id: 1,
        }
    }

    /// 128 bits that cannot be guessed from other ids: holding an id is
    /// what lets a caller renew or release the lease (docs/security.md), so
    /// a sequence number would let one caller release another's lease.
    /// SipHash of the secret per-process key and a counter, twice.
    fn new_id(&mut self) -> String {
        use std::hash::{Hash, Hasher};
        let half = |part: u8| {
            let mut h = std::hash::DefaultHasher::new();
            (self.id_prefix, self.next_id, part).hash(&mut h);
            h.finish()
        };
        let id = format!("{:016x}{:016x}", half(0), half(1));
        self.next_id += 1;
        id
    }

    /// Grants now, queues the caller (`waiter` given), or denies.
    pub fn acquire(
        &mut self,
        ask: Ask<'_>,
        now_ms: u64,
        waiter: Option<W>,
        fx: &mut Effects<W>,
    ) -> Result<Admission, LeaseError> {
        FieldError::check_text("pool", ask.pool, MAX_POOL_BYTES, "pool names")?;
        FieldError::check_text(
            "holder",
            ask.holder,
            self.limits.max_holder_bytes,
            "leases.max_holder_bytes",
        )?;
        self.expire(now_ms, fx);
        let count = ask.count.max(1);
        let pool = self
            .pools
            .get(ask.pool)
            .ok_or_else(|| LeaseError::UnknownPool(ask.pool.to_string()))?;
        pool.spec.check_count(count)?;
        let ttl = pool.spec.ttl(ask.ttl);
        let line_ahead = pool
            .queue
            .first_head_where(|holder, w| {
                pool.holder_may_take(holder, u32::try_from(w.tokens).unwrap_or(u32::MAX))
            })
            .is_some();
        if !line_ahead && pool.fits(count) && pool.holder_may_take(ask.holder, count) {
            let lease = self.grant(ask.pool, ask.holder, count, ttl, now_ms);
            return Ok(Admission::Granted(lease));
        }
        let Some(payload) = waiter else {
            return Ok(Admission::Denied(pool.denial(ask.holder, count)));
        };
        let max_waiters = self.limits.max_waiters;
        let id = self.next_id;
        self.next_id += 1;
        let Some(pool) = self.pools.get_mut(ask.pool) else {
            return Err(LeaseError::UnknownPool(ask.pool.to_string()));
        };
        if pool.queue.len() >= max_waiters {
            return Err(LeaseError::QueueFull {
                pool: ask.pool.to_string(),
                max: max_waiters,
            });
        }
        pool.queue.push(
            ask.holder,
            Waiter {
                id,
                tokens: u64::from(count),
                payload: Pending {
                    holder: ask.holder.to_string(),
                    pool_ttl: ttl,
                    payload,
                },
            },
        );
        // A head passed over for its holder's maximum may leave room for us.
        self.dispatch(ask.pool, now_ms, fx);
        Ok(Admission::Queued { waiter: id })
    }

    /// Why `count` units of `pool` are not `holder`'s now (for a wait that ran out).
    pub fn denial(&self, pool: &str, holder: &str, count: u32) -> Denial {
        self.pools
            .get(pool)
            .map_or(Denial::PoolFull, |p| p.denial(holder, count.max(1)))
    }

    /// Records a lease; the caller has checked that it fits.
    fn grant(&mut self, pool: &str, holder: &str, count: u32, ttl: Duration, now_ms: u64) -> Lease {
        let id = self.new_id();
        let lease = Lease {
            id: id.clone(),
            pool: pool.to_string(),
            holder: holder.to_string(),
            count,
            expires_at_ms: expires_at(now_ms, ttl),
        };
        if let Some(state) = self.pools.get_mut(pool) {
            state.take(holder, count);
        }
        self.expiry.insert((lease.expires_at_ms, id.clone()));
        self.leases.insert(id, lease.clone());
        lease
    }

    /// Grants waiters of `pool` while the first eligible head fits.
    fn dispatch(&mut self, pool_name: &str, now_ms: u64, fx: &mut Effects<W>) {
        loop {
            let Some(pool) = self.pools.get_mut(pool_name) else {
                return;
            };
            let next = pool
                .queue
                .first_head_where(|holder, w| {
                    pool.holder_may_take(holder, u32::try_from(w.tokens).unwrap_or(u32::MAX))
                })
                .map(|(at, w)| (at, u32::try_from(w.tokens).unwrap_or(u32::MAX)));
            let Some((at, count)) = next else { return };
            if !pool.fits(count) {
                // No overtaking: the first eligible head waits for room.
                return;
            }
            let Some(waiter) = pool.queue.pop_group_head(at) else {
                return;
            };
            let Pending {
                holder,
                pool_ttl,
                payload,
            } = waiter.payload;
            let lease = self.grant(pool_name, &holder, count, pool_ttl, now_ms);
            fx.granted.push((payload, lease));
        }
    }

    /// Extends a live lease to `ttl` (None: the pool's default) from now.
    pub fn renew(
        &mut self,
        id: &str,
        ttl: Option<Duration>,
        now_ms: u64,
        fx: &mut Effects<W>,
    ) -> Result<Lease, LeaseError> {
        FieldError::check_text("lease_id", id, MAX_ID_BYTES, "lease ids")?;
        self.expire(now_ms, fx);
        let Some(lease) = self.leases.get_mut(id) else {
            return Err(LeaseError::UnknownLease(id.to_string()));
        };
        let ttl = self
            .pools
            .get(&lease.pool)
            .map_or(Duration::ZERO, |p| p.spec.ttl(ttl));
        self.expiry.remove(&(lease.expires_at_ms, id.to_string()));
        lease.expires_at_ms = expires_at(now_ms, ttl);
        self.expiry.insert((lease.expires_at_ms, id.to_string()));
        Ok(lease.clone())
    }

    /// Ends a lease at once. None when it had already ended (idempotent).
    pub fn release(
        &mut self,
        id: &str,
        now_ms: u64,
        fx: &mut Effects<W>,
    ) -> Result<Option<Lease>, LeaseError> {
        FieldError::check_text("lease_id", id, MAX_ID_BYTES, "lease ids")?;
        self.expire(now_ms, fx);
        let Some(lease) = self.remove_lease(id) else {
            return Ok(None);
        };
        self.dispatch(&lease.pool.clone(), now_ms, fx);
        Ok(Some(lease))
    }

    fn remove_lease(&mut self, id: &str) -> Option<Lease> {
        let lease = self.leases.remove(id)?;
        self.expiry.remove(&(lease.expires_at_ms, lease.id.clone()));
        if let Some(pool) = self.pools.get_mut(&lease.pool) {
            pool.give_back(&lease.holder, lease.count);
        }
        Some(lease)
    }

    /// Takes a waiter out of its pool's queue (its time ran out, or it went
    /// away). None when it is no longer queued: it was granted or dropped.
    pub fn leave(
        &mut self,
        pool: &str,
        waiter: u64,
        now_ms: u64,
        fx: &mut Effects<W>,
    ) -> Option<W> {
        let state = self.pools.get_mut(pool)?;
        let removed = state.queue.remove(waiter)?;
        // It may have been the head that others waited behind.
        self.dispatch(pool, now_ms, fx);
        Some(removed.payload.payload)
    }

    /// Ends every lease whose time has come and grants the waiters that fit.
    pub fn expire(&mut self, now_ms: u64, fx: &mut Effects<W>) {
        let mut touched = BTreeSet::new();
        while let Some((at, id)) = self.expiry.first().cloned() {
            if at > now_ms {
                break;
            }
            if let Some(lease) = self.remove_lease(&id) {
                touched.insert(lease.pool.clone());
                fx.ended.push((lease, EndReason::Expired));
            } else {
                self.expiry.remove(&(at, id));
            }
        }
        for pool in touched {
            self.dispatch(&pool, now_ms, fx);
        }
    }

    /// When the next lease expires.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiry.first().map(|(at, _)| *at)
    }

    pub fn status(&self, pool: &str) -> Result<PoolStatus, LeaseError> {
        let state = self
            .pools
            .get(pool)
            .ok_or_else(|| LeaseError::UnknownPool(pool.to_string()))?;
        Ok(PoolStatus {
            pool: pool.to_string(),
            capacity: state.spec.capacity,
            in_use: state.in_use,
            waiting: state.queue.len(),
            holders: state
                .holders
                .iter()
                .map(|(h, u)| (h.clone(), u.units, u.leases))
                .collect(),
        })
    }

    pub fn gauges(&self, pool: &str) -> Option<PoolGauges> {
        self.pools.get(pool).map(|p| PoolGauges {
            capacity: p.spec.capacity,
            in_use: p.in_use,
            waiting: p.queue.len(),
            holders: p.holders.len(),
        })
    }

    /// Configured pool names, sorted.
    pub fn pool_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.pools.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Applies a new configuration. Existing leases keep their units until
    /// they end, even above a smaller capacity (nothing new is granted until
    /// usage is under it); waiters that can no longer be granted are answered;
    /// a removed pool ends its leases and answers its waiters.
    pub fn reload(
        &mut self,
        specs: impl IntoIterator<Item = PoolSpec>,
        limits: Limits,
        now_ms: u64,
        fx: &mut Effects<W>,
    ) {
        self.limits = limits;
        let specs: HashMap<String, PoolSpec> =
            specs.into_iter().map(|s| (s.name.clone(), s)).collect();
        let removed: Vec<String> = self
            .pools
            .keys()
            .filter(|name| !specs.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(mut state) = self.pools.remove(&name) {
                for waiter in state.queue.drain() {
                    fx.dropped
                        .push((waiter.payload.payload, WaitEnd::PoolRemoved));
                }
            }
            let ids: Vec<String> = self
                .leases
                .values()
                .filter(|l| l.pool == name)
                .map(|l| l.id.clone())
                .collect();
            for id in ids {
                if let Some(lease) = self.leases.remove(&id) {
                    self.expiry.remove(&(lease.expires_at_ms, id));
                    fx.ended.push((lease, EndReason::PoolRemoved));
                }
            }
        }
        for (name, spec) in specs {
            let state = self
                .pools
                .entry(name.clone())
                .or_insert_with(|| PoolState::new(spec.clone()));
            state.spec = spec;
            let (capacity, per_holder) = (state.spec.capacity, state.spec.max_per_holder);
            let impossible: Vec<u64> = state
                .queue
                .iter()
                .filter(|w| w.tokens > u64::from(capacity.min(per_holder)))
                .map(|w| w.id)
                .collect();
            for id in impossible {
                if let Some(waiter) = state.queue.remove(id) {
                    fx.dropped
                        .push((waiter.payload.payload, WaitEnd::NoLongerPossible));
                }
            }
            self.dispatch(&name, now_ms, fx);
        }
    }

    /// Puts back leases saved before a restart. Leases above a (now smaller)
    /// capacity are kept: they were granted, and their holders use them.
    pub fn restore(&mut self, saved: Vec<Lease>, now_ms: u64) -> Restored {
        let mut report = Restored::default();
        for lease in saved {
            let live = lease.expires_at_ms > now_ms && lease.count > 0;
            match self.pools.get_mut(&lease.pool) {
                Some(pool) if live && !self.leases.contains_key(&lease.id) => {
                    pool.take(&lease.holder, lease.count);
                    self.expiry.insert((lease.expires_at_ms, lease.id.clone()));
                    self.leases.insert(lease.id.clone(), lease);
                    report.restored += 1;
                }
                _ => report.stale.push(lease.id),
            }
        }
        report
    }

    /// Checks the bookkeeping against the leases themselves (for tests).
    pub fn check_consistency(&self) -> Result<(), String> {
        for (name, pool) in &self.pools {
            let leases: Vec<&Lease> = self.leases.values().filter(|l| &l.pool == name).collect();
            let units: u64 = leases.iter().map(|l| u64::from(l.count)).sum();
            if units != pool.in_use {
                return Err(format!(
                    "{name}: in_use {} but leases hold {units}",
                    pool.in_use
                ));
            }
            let holders: u64 = pool.holders.values().map(|h| h.units).sum();
            if holders != units {
                return Err(format!("{name}: holders hold {holders}, leases {units}"));
            }
        }
        if self.expiry.len() != self.leases.len() {
            return Err(format!(
                "{} expiry entries for {} leases",
                self.expiry.len(),
                self.leases.len()
            ));
        }
        Ok(())
    }
}
