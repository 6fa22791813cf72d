//! Lease pools kept in Redis (`storage.backend = "redis"`), so a pool's
//! capacity holds across every replica.
//!
//! A pool is four keys in one hash slot (`{<prefix>:ls:<pool>}`): the leases
//! by expiry (a sorted set), each lease's holder and units (a hash), units per
//! holder (a hash) and units in use (a counter). Every operation is one Lua
//! script ([`LEASES_LUA`]) that first ends the leases whose time has come (on
//! Redis's clock), then decides: reading, checking the capacity and the
//! per-holder maximum, and granting are one atomic step. A replica that dies
//! holds nothing: its leases end when their TTL runs out, as anyone's.
//!
//! Waiting is per replica: a pool's waiters queue in arrival order (a FIFO
//! lock) and only the head asks Redis again — when units come back anywhere
//! (every script that frees units publishes the pool's name, and each
//! replica listens), at the next expiry Redis reported, or at the latest
//! every second.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::LeaseError;
use super::metrics::{AcquireResult, LeaseMetrics};
use super::pool::PoolSpec;
use super::table::{Ask, Denial, EndReason, Lease, PoolGauges, PoolStatus};
use crate::config::{LeasesConfig, MAX_POOL_NAME_BYTES};
use crate::error::FieldError;
use crate::store::redis::{RedisStore, RedisStoreError};

/// Lease ids: 24 hex digits of randomness, then 8 of the pool name's hash
/// (how Renew and Release find the pool's keys) — 32, as embedded ids.
const ID_BYTES: usize = 32;
/// The longest a waiting head sleeps before asking Redis again.
const POLL: Duration = Duration::from_secs(1);
/// Where scripts that free units say so.
const FREED_CHANNEL: &str = "ls-freed";

/// KEYS: the pool's expiry set, lease hash, holder hash, units counter.
/// ARGV[1]: the operation; then its arguments; then the pool's name and the
/// channel freed units are announced on. Every reply starts with the number
/// of leases the expiry sweep ended, the next expiry (ms, 0: none), the units
/// in use and the number of holders after the operation.
pub const LEASES_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp, info, holders, used = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op = ARGV[1]

local function split(v)
  local sep = string.find(v, ':', 1, true)
  return tonumber(string.sub(v, 1, sep - 1)), string.sub(v, sep + 1)
end

local function drop(id)
  local v = redis.call('HGET', info, id)
  redis.call('ZREM', exp, id)
  if not v then return 0, nil end
  local count, holder = split(v)
  redis.call('HDEL', info, id)
  if redis.call('HINCRBY', holders, holder, -count) <= 0 then redis.call('HDEL', holders, holder) end
  redis.call('DECRBY', used, count)
  return count, holder
end

local freed, expired = 0, 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', now)) do
  local count = drop(id)
  freed = freed + count
  if count > 0 then expired = expired + 1 end
end

local function next_expiry()
  local first = redis.call('ZRANGE', exp, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) end
  return 0
end

local function done(reply)
  if freed > 0 then redis.call('PUBLISH', ARGV[#ARGV], ARGV[#ARGV - 1]) end
  table.insert(reply, 1, redis.call('HLEN', holders))
  table.insert(reply, 1, tonumber(redis.call('GET', used) or '0'))
  table.insert(reply, 1, next_expiry())
  table.insert(reply, 1, expired)
  return reply
end

if op == 'acquire' then
  local cap, per_holder, holder, count, ttl, id =
    tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
  local in_use = tonumber(redis.call('GET', used) or '0')
  local mine = tonumber(redis.call('HGET', holders, holder) or '0')
  -- Not granted: why, in the second field (2: the holder's maximum, 1: the pool is full).
  if mine + count > per_holder then return done({0, 2}) end
  if in_use + count > cap then return done({0, 1}) end
  local at = now + ttl
  redis.call('ZADD', exp, at, id)
  redis.call('HSET', info, id, count .. ':' .. holder)
  redis.call('HINCRBY', holders, holder, count)
  redis.call('INCRBY', used, count)
  return done({1, at})
elseif op == 'renew' then
  local id, ttl = ARGV[2], tonumber(ARGV[3])
  local v = redis.call('HGET', info, id)
  if not v then return done({0, 0, 0, ''}) end
  local count, holder = split(v)
  local at = now + ttl
  redis.call('ZADD', exp, at, id)
  return done({1, at, count, holder})
elseif op == 'release' then
  local count, holder = drop(ARGV[2])
  if holder then
    redis.call('PUBLISH', ARGV[#ARGV], ARGV[#ARGV - 1])
    return done({1})
  end
  return done({0})
else
  local reply = {tonumber(redis.call('GET', used) or '0')}
  local leases = {}
  for i, v in ipairs(redis.call('HVALS', info)) do
    local _, holder = split(v)
    leases[holder] = (leases[holder] or 0) + 1
  end
  local all = redis.call('HGETALL', holders)
  for i = 1, #all, 2 do
    table.insert(reply, all[i])
    table.insert(reply, tonumber(all[i + 1]))
    table.insert(reply, leases[all[i]] or 0)
  end
  return done(reply)
end
"#;

struct Pools {
    specs: HashMap<String, PoolSpec>,
    /// The 8 hex digits in lease ids -> pool name.
    by_tag: HashMap<String, String>,
    max_waiters: usize,
    max_holder_bytes: usize,
}

impl Pools {
    fn from(config: &LeasesConfig) -> Self {
        let specs: HashMap<String, PoolSpec> = config
            .pools
            .iter()
            .map(|p| (p.name.clone(), PoolSpec::from_config(p)))
            .collect();
        let by_tag = specs
            .keys()
            .map(|name| (pool_tag(name), name.clone()))
            .collect();
        Self {
            specs,
            by_tag,
            max_waiters: usize::try_from(config.max_waiters).unwrap_or(usize::MAX),
            max_holder_bytes: usize::try_from(config.max_holder_bytes).unwrap_or(usize::MAX),
        }
    }
}

/// A pool's tag in lease ids: stable across replicas and restarts (a fixed
/// hash, not a per-process one), so any replica finds the pool of any id.
fn pool_tag(name: &str) -> String {
    format!("{:08x}", xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as u32)
}

/// A pool's waiters on this replica: the FIFO turn, how many wait, and the
/// wake-up for units that came back.
#[derive(Default)]
struct Queue {
    turn: Arc<tokio::sync::Mutex<()>>,
    waiting: usize,
    freed: Arc<Notify>,
}

struct Inner {
    store: RedisStore,
    script: redis::Script,
    pools: ArcSwap<Pools>,
    queues: Mutex<HashMap<String, Queue>>,
    metrics: LeaseMetrics,
    /// Random per process: lease ids cannot be guessed.
    ids: RandomState,
    next_id: std::sync::atomic::AtomicU64,
}

/// Lease pools in Redis.
#[derive(Clone)]
pub struct SharedLeases {
    inner: Arc<Inner>,
}

/// One script reply, its leading report split off.
struct Reply {
    next_expiry_ms: u64,
    rest: Vec<redis::Value>,
}

/// How many values every reply starts with (see [`LEASES_LUA`]).
const REPORT: usize = 4;

impl SharedLeases {
    /// Starts listening for units freed on any replica (until `stop`).
    pub fn start(
        config: &LeasesConfig,
        store: RedisStore,
        metrics: LeaseMetrics,
        stop: CancellationToken,
    ) -> Self {
        let ids = RandomState::new();
        let leases = Self {
            inner: Arc::new(Inner {
                pools: ArcSwap::from_pointee(Pools::from(config)),
                script: redis::Script::new(LEASES_LUA),
                store,
                queues: Mutex::default(),
                metrics,
                ids,
                next_id: Default::default(),
            }),
        };
        let listener = leases.clone();
        tokio::spawn(async move { listener.listen(stop).await });
        leases
    }

    pub fn reload(&self, config: &LeasesConfig) {
        self.inner.pools.store(Arc::new(Pools::from(config)));
        // Waiters of removed or shrunk pools find out at their next try.
        for queue in self.inner.queues.lock().values() {
            queue.freed.notify_waiters();
        }
    }

    /// Grants now, waits in this replica's queue up to `max_wait`, or denies.
    pub async fn acquire(
        &self,
        ask: Ask<'_>,
        max_wait: Duration,
    ) -> Result<super::AcquireOutcome, LeaseError> {
        let pools = self.inner.pools.load_full();
        FieldError::check_text("pool", ask.pool, MAX_POOL_NAME_BYTES, "pool names")?;
        FieldError::check_text(
            "holder",
            ask.holder,
            pools.max_holder_bytes,
            "leases.max_holder_bytes",
        )?;
        let spec = pools
            .specs
            .get(ask.pool)
            .ok_or_else(|| LeaseError::UnknownPool(ask.pool.to_string()))?;
        let count = ask.count.max(1);
        spec.check_count(count)?;
        let started = tokio::time::Instant::now();
        let metrics = &self.inner.metrics;
        let queued = self.has_waiters(ask.pool);
        if max_wait.is_zero() {
            // Waiters on this replica come first.
            let (lease, denial) = if queued {
                (None, Some(Denial::QueueAhead))
            } else {
                let (granted, _) = self.try_grant(spec, ask, count).await?;
                match granted {
                    Ok(lease) => (Some(lease), None),
                    Err(denial) => (None, Some(denial)),
                }
            };
            let result = if lease.is_some() {
                AcquireResult::Granted
            } else {
                AcquireResult::Denied
            };
            metrics.acquired(ask.pool, result);
            return Ok(super::AcquireOutcome {
                lease,
                waited: Duration::ZERO,
                denial,
            });
        }
        let place = self.join(ask.pool, pools.max_waiters)?;
        let deadline = started + max_wait;
        // Why the wait has not been granted yet: others ahead, until it asks Redis.
        let mut denial = Denial::QueueAhead;
        let granted = async {
            let Ok(_head) = tokio::time::timeout_at(deadline, place.turn.lock()).await else {
                return Ok(None);
            };
            loop {
                // Registered before asking, so a release in between is not missed.
                let notified = place.freed.notified();
                let pools = self.inner.pools.load_full();
                let Some(spec) = pools.specs.get(ask.pool) else {
                    return Err(LeaseError::PoolRemoved(ask.pool.to_string()));
                };
                spec.check_count(count)?;
                let (lease, next_expiry_ms) = self.try_grant(spec, ask, count).await?;
                match lease {
                    Ok(lease) => return Ok(Some(lease)),
                    Err(why) => denial = why,
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Ok(None);
                }
                let until_expiry = (next_expiry_ms > 0)
                    .then(|| Duration::from_millis(next_expiry_ms.saturating_sub(unix_ms())));
                let wake = (now + until_expiry.unwrap_or(POLL).min(POLL)).min(deadline);
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(wake) => {}
                }
            }
        }
        .await;
        let waited = started.elapsed();
        metrics.waited(ask.pool, waited.as_secs_f64());
        let lease = granted?;
        metrics.acquired(
            ask.pool,
            if lease.is_some() {
                AcquireResult::Granted
            } else {
                AcquireResult::TimedOut
            },
        );
        let denial = lease.is_none().then_some(denial);
        Ok(super::AcquireOutcome {
            lease,
            waited,
            denial,
        })
    }

    pub async fn renew(&self, id: &str, ttl: Option<Duration>) -> Result<Lease, LeaseError> {
        let (pool, spec) = self.pool_of(id)?;
        let ttl = spec.ttl(ttl);
        let reply = self
            .run(
                &pool,
                "renew",
                &[id.to_string(), ttl.as_millis().to_string()],
            )
            .await?;
        let granted = int(&reply.rest, 0) == 1;
        if !granted {
            return Err(LeaseError::UnknownLease(id.to_string()));
        }
        self.inner.metrics.renewed(&pool);
        Ok(Lease {
            id: id.to_string(),
            pool: pool.clone(),
            holder: text(&reply.rest, 3),
            count: u32::try_from(int(&reply.rest, 2)).unwrap_or(u32::MAX),
            expires_at_ms: int(&reply.rest, 1),
        })
    }

    pub async fn release(&self, id: &str) -> Result<bool, LeaseError> {
        let Ok((pool, _)) = self.pool_of(id) else {
            // Not an id of a configured pool: nothing to end.
            FieldError::check_text("lease_id", id, 64, "lease ids")?;
            return Ok(false);
        };
        let reply = self.run(&pool, "release", &[id.to_string()]).await?;
        let released = int(&reply.rest, 0) == 1;
        if released {
            self.inner.metrics.released(&pool);
        }
        Ok(released)
    }

    /// The pools configured now, sorted.
    pub fn pool_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.pools.load().specs.keys().cloned().collect();
        names.sort();
        names
    }

    pub async fn status(&self, pool: &str) -> Result<PoolStatus, LeaseError> {
        let pools = self.inner.pools.load_full();
        let spec = pools
            .specs
            .get(pool)
            .ok_or_else(|| LeaseError::UnknownPool(pool.to_string()))?;
        let reply = self.run(pool, "status", &[]).await?;
        let mut holders: Vec<(String, u64, u32)> = reply
            .rest
            .get(1..)
            .unwrap_or_default()
            .chunks(3)
            .map(|c| {
                (
                    text(c, 0),
                    int(c, 1),
                    u32::try_from(int(c, 2)).unwrap_or(u32::MAX),
                )
            })
            .collect();
        holders.sort();
        Ok(PoolStatus {
            pool: pool.to_string(),
            capacity: spec.capacity,
            in_use: int(&reply.rest, 0),
            waiting: self.inner.queues.lock().get(pool).map_or(0, |q| q.waiting),
            holders,
        })
    }

    async fn try_grant(
        &self,
        spec: &PoolSpec,
        ask: Ask<'_>,
        count: u32,
    ) -> Result<(Result<Lease, Denial>, u64), LeaseError> {
        let seq = self
            .inner
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let random = (
            self.inner
                .ids
                .hash_one((SystemTime::now(), ask.holder, seq)),
            self.inner.ids.hash_one((seq, ask.pool)),
        );
        let id = format!(
            "{:016x}{:08x}{}",
            random.0,
            random.1 as u32,
            pool_tag(ask.pool)
        );
        let ttl = spec.ttl(ask.ttl);
        let reply = self
            .run(
                ask.pool,
                "acquire",
                &[
                    spec.capacity.to_string(),
                    spec.max_per_holder.to_string(),
                    ask.holder.to_string(),
                    count.to_string(),
                    ttl.as_millis().to_string(),
                    id.clone(),
                ],
            )
            .await?;
        let lease = match (int(&reply.rest, 0), int(&reply.rest, 1)) {
            (1, expires_at_ms) => Ok(Lease {
                id,
                pool: ask.pool.to_string(),
                holder: ask.holder.to_string(),
                count,
                expires_at_ms,
            }),
            (_, 2) => Err(Denial::HolderLimit),
            _ => Err(Denial::PoolFull),
        };
        Ok((lease, reply.next_expiry_ms))
    }

    /// Runs the script for `pool`; loads it first where Redis does not know it.
    async fn run(&self, pool: &str, op: &str, args: &[String]) -> Result<Reply, LeaseError> {
        let base = self.inner.store.key("ls", pool);
        let tag = format!("{{{base}}}");
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.inner.script.get_hash())
            .arg(4)
            .arg(format!("{tag}:exp"))
            .arg(format!("{tag}:info"))
            .arg(format!("{tag}:holders"))
            .arg(format!("{tag}:used"))
            .arg(op)
            .arg(args)
            .arg(pool)
            .arg(self.freed_channel());
        let values: Vec<redis::Value> = self
            .inner
            .store
            .eval(&self.inner.script, &cmd)
            .await
            .map_err(unavailable)?;
        let metrics = &self.inner.metrics;
        for _ in 0..int(&values, 0) {
            metrics.ended(pool, EndReason::Expired);
        }
        if let Some(spec) = self.inner.pools.load().specs.get(pool) {
            let gauges = PoolGauges {
                capacity: spec.capacity,
                in_use: int(&values, 2),
                waiting: self.inner.queues.lock().get(pool).map_or(0, |q| q.waiting),
                holders: usize::try_from(int(&values, 3)).unwrap_or(usize::MAX),
            };
            metrics.observe(pool, &gauges);
        }
        Ok(Reply {
            next_expiry_ms: int(&values, 1),
            rest: values.get(REPORT..).map(<[_]>::to_vec).unwrap_or_default(),
        })
    }

    fn freed_channel(&self) -> String {
        self.inner.store.key(FREED_CHANNEL, "")
    }

    /// The pool a lease id belongs to.
    fn pool_of(&self, id: &str) -> Result<(String, PoolSpec), LeaseError> {
        FieldError::check_text("lease_id", id, 64, "lease ids")?;
        let pools = self.inner.pools.load_full();
        id.len()
            .checked_sub(8)
            .filter(|_| id.len() == ID_BYTES)
            .and_then(|at| id.get(at..))
            .and_then(|tag| pools.by_tag.get(tag))
            .and_then(|pool| {
                pools
                    .specs
                    .get(pool)
                    .map(|spec| (pool.clone(), spec.clone()))
            })
            .ok_or_else(|| LeaseError::UnknownLease(id.to_string()))
    }

    fn has_waiters(&self, pool: &str) -> bool {
        self.inner
            .queues
            .lock()
            .get(pool)
            .is_some_and(|q| q.waiting > 0)
    }

    /// A place in the pool's queue on this replica.
    fn join(&self, pool: &str, max_waiters: usize) -> Result<QueuePlace, LeaseError> {
        let mut queues = self.inner.queues.lock();
        let queue = queues.entry(pool.to_string()).or_default();
        if queue.waiting >= max_waiters {
            return Err(LeaseError::QueueFull {
                pool: pool.to_string(),
                max: max_waiters,
            });
        }
        queue.waiting += 1;
        Ok(QueuePlace {
            inner: self.inner.clone(),
            pool: pool.to_string(),
            turn: queue.turn.clone(),
            freed: queue.freed.clone(),
        })
    }

    /// Wakes this replica's waiters of every pool whose units came back on
    /// any replica; after a lost subscription, all of them (a release may
    /// have been missed).
    async fn listen(self, stop: CancellationToken) {
        self.inner
            .store
            .listen(
                &self.freed_channel(),
                stop,
                |payload| self.wake(&String::from_utf8_lossy(payload)),
                |_| self.wake_all(),
            )
            .await;
    }

    fn wake(&self, pool: &str) {
        if let Some(queue) = self.inner.queues.lock().get(pool) {
            queue.freed.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for queue in self.inner.queues.lock().values() {
            queue.freed.notify_waiters();
        }
    }
}

/// A place in a pool's queue on this replica; leaving (also by a caller that
/// gave up) removes it.
struct QueuePlace {
    inner: Arc<Inner>,
    pool: String,
    turn: Arc<tokio::sync::Mutex<()>>,
    freed: Arc<Notify>,
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        let mut queues = self.inner.queues.lock();
        if let Some(queue) = queues.get_mut(&self.pool) {
            queue.waiting -= 1;
            if queue.waiting == 0 {
                queues.remove(&self.pool);
            }
        }
    }
}

fn unavailable(e: RedisStoreError) -> LeaseError {
    LeaseError::Unavailable(e.to_string())
}

fn unix_ms() -> u64 {
    crate::wallclock::now_ms()
}

fn int(values: &[redis::Value], i: usize) -> u64 {
    match values.get(i) {
        Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

fn text(values: &[redis::Value], i: usize) -> String {
    match values.get(i) {
        Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}
