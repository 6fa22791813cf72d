//! GCRA buckets kept in Redis, so a limit is one bucket for every replica.
//!
//! Each decision runs in Redis as one Lua script ([`GCRA_LUA`]), loaded once
//! and called by its SHA (loaded again after NOSCRIPT), so reading the
//! bucket, deciding and writing it back is atomic and the clock is Redis's
//! own (`TIME`), the same for every replica. The arithmetic is the embedded
//! limiter's (src/ratelimit/gcra.rs): the theoretical arrival time (TAT) in
//! whole nanoseconds plus a remainder in units of 1/rate ns, so no rounding
//! accumulates. Lua has only doubles, so the script works on the TAT's
//! distance from now (exact while burst × period stays below 2^53 ns, 104
//! days); the TAT is stored as three little-endian doubles (seconds,
//! nanoseconds, remainder: Lua's `struct`, cheaper to read and write than
//! text), expiring when the bucket is full again — a missing key is a full bucket.
//!
//! Concurrent decisions are gathered by a few lanes: whatever arrived while
//! the previous round trip was out leaves together — on one server as one
//! script call over all their keys, on a cluster as a pipeline the cluster
//! client splits by node. A lane waits for Redis, never the CPU.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::gcra::{Decision, Params};
use crate::store::redis::{RedisStore, RedisStoreError};

/// Decisions one lane sends in one round trip at most.
const MAX_PER_TRIP: usize = 256;
/// Round trips in flight at once (each lane waits for its own).
const LANES: usize = 4;
/// Decisions queued before callers wait for room.
const QUEUE: usize = 16_384;

/// The Redis keyspace of buckets: `<prefix>:rl:<limit name length>:<limit>:<key>`.
pub const DOMAIN: &str = "rl";

/// KEYS: buckets. ARGV[1]: mode — `each` (decide every bucket on its own),
/// `all` (all or nothing: take from every bucket only if each can give) or
/// `refund` (give tokens back). Then five numbers per key: rate, period_ns,
/// burst, tokens, dry (1: decide without taking).
/// Returns four numbers per key: allowed, remaining, retry_after_ns, reset_after_ns.
pub const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ns = tonumber(t[2]) * 1000
local mode = ARGV[1]
local n = #KEYS

-- The TAT's distance from now in units of 1/rate ns (0: full).
local function distance(key, rate)
  local v = redis.call('GET', key)
  if not v or #v ~= 24 then return 0 end
  local s, ns, frac = struct.unpack('<ddd', v)
  local d = (s - now_s) * 1e9 + (ns - now_ns)
  if d < 0 then return 0 end
  return d * rate + math.min(frac, rate - 1)
end

local function store(key, rate, d)
  if d <= 0 then
    redis.call('DEL', key)
    return
  end
  local whole = math.floor(d / rate)
  local frac = d - whole * rate
  local total = now_ns + whole
  local s = now_s + math.floor(total / 1e9)
  local ns = total % 1e9
  redis.call('SET', key, struct.pack('<ddd', s, ns, frac), 'PX', math.floor(whole / 1e6) + 1)
end

local function params(i)
  local b = 1 + (i - 1) * 5
  return tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]),
         tonumber(ARGV[b + 4]), ARGV[b + 5] == '1'
end

local out = {}
local function report(d, new, tau, period, rate, allowed)
  local level = tau - d
  if level < 0 then level = 0 end
  out[#out + 1] = allowed and 1 or 0
  out[#out + 1] = math.floor(level / period)
  if allowed or new <= tau then out[#out + 1] = 0 else out[#out + 1] = math.ceil((new - tau) / rate) end
  out[#out + 1] = math.ceil(d / rate)
end

local all_allowed = true
if mode == 'all' then
  for i = 1, n do
    local rate, period, burst, tokens = params(i)
    if distance(KEYS[i], rate) + tokens * period > burst * period then all_allowed = false end
  end
end

for i = 1, n do
  local rate, period, burst, tokens, dry = params(i)
  local key = KEYS[i]
  local d = distance(key, rate)
  local tau = burst * period
  local cost = tokens * period
  if mode == 'refund' then
    d = math.max(d - cost, 0)
    store(key, rate, d)
    report(d, d, tau, period, rate, true)
  else
    local new = d + cost
    local allowed = new <= tau
    if mode == 'all' then allowed = all_allowed end
    if allowed and not dry then
      store(key, rate, new)
      report(new, new, tau, period, rate, true)
    else
      report(d, new, tau, period, rate, allowed)
    end
  end
end
return out
"#;

/// The script call a queued decision joins: its mode and (on a cluster) hash slot.
type Group<'a> = (&'a str, Option<redis::cluster_routing::Slot>);

/// What to do with one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Take,
    /// Decide without taking.
    Peek,
    GiveBack,
}

/// One bucket of one call: its Redis key, parameters and tokens.
#[derive(Debug, Clone)]
pub struct Job {
    pub key: String,
    pub params: Params,
    pub tokens: u64,
    pub op: Op,
}

struct Queued {
    job: Job,
    reply: oneshot::Sender<Result<Decision, RedisStoreError>>,
}

/// Buckets in Redis, decided through the lanes.
#[derive(Clone)]
pub struct RedisBuckets {
    store: RedisStore,
    script: Arc<redis::Script>,
    queue: mpsc::Sender<Queued>,
}

impl RedisBuckets {
    pub fn start(store: RedisStore) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let buckets = Self {
            store,
            script: Arc::new(redis::Script::new(GCRA_LUA)),
            queue,
        };
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..LANES {
            let lane = buckets.clone();
            let rx = rx.clone();
            tokio::spawn(async move { lane.run_lane(rx).await });
        }
        buckets
    }

    /// The Redis key of a bucket; the limit's length first, so no limit name
    /// and key can spell another pair's key.
    pub fn key(&self, limit: &str, bucket_key: &str) -> String {
        self.store
            .key(DOMAIN, &format!("{}:{limit}:{bucket_key}", limit.len()))
    }

    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    /// One decision, sent with whatever else is waiting to go.
    pub async fn decide(&self, job: Job) -> Result<Decision, RedisStoreError> {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Queued { job, reply }).await.is_err() {
            return Err(RedisStoreError::Unreachable("gantry is stopping".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(RedisStoreError::Unreachable("gantry is stopping".into())))
    }

    /// All or nothing over distinct buckets: takes from every one only if
    /// each can give (one script call, so atomic), and reports each bucket.
    /// On a cluster whose buckets fall in different hash slots, see
    /// [`Self::decide_all_across_slots`].
    pub async fn decide_all(
        &self,
        jobs: &[Job],
        dry_run: bool,
    ) -> Result<Vec<Decision>, RedisStoreError> {
        let one_slot = jobs
            .windows(2)
            .all(|pair| self.slot_of(&pair[0].key) == self.slot_of(&pair[1].key));
        if !one_slot {
            return self.decide_all_across_slots(jobs, dry_run).await;
        }
        let command = self.invocation("all", jobs.iter().map(|j| (j, dry_run)));
        let reply = self
            .send(vec![command])
            .await
            .pop()
            .unwrap_or(Ok(Vec::new()))?;
        Ok(parse(&reply, jobs))
    }

    /// All or nothing across hash slots (a script cannot span them): take
    /// from each, and if any refused, give back what the others gave. Never
    /// admits more than a bucket holds; in the moment between the two steps,
    /// another caller may be refused tokens that then come back.
    async fn decide_all_across_slots(
        &self,
        jobs: &[Job],
        dry_run: bool,
    ) -> Result<Vec<Decision>, RedisStoreError> {
        let commands = jobs
            .iter()
            .map(|job| self.invocation("each", [(job, dry_run)].into_iter()))
            .collect();
        let mut decisions = Vec::with_capacity(jobs.len());
        for (reply, job) in self.send(commands).await.into_iter().zip(jobs) {
            decisions.extend(parse(&reply?, std::slice::from_ref(job)));
        }
        if decisions.iter().all(|d| d.allowed) {
            return Ok(decisions);
        }
        if !dry_run {
            let refunds: Vec<redis::Cmd> = jobs
                .iter()
                .zip(&decisions)
                .filter(|(_, d)| d.allowed)
                .map(|(job, _)| self.invocation("refund", [(job, false)].into_iter()))
                .collect();
            for reply in self.send(refunds).await {
                reply?;
            }
        }
        for decision in &mut decisions {
            decision.allowed = false;
        }
        Ok(decisions)
    }

    /// The hash slot of a key on a cluster; on one server every key shares one group.
    fn slot_of(&self, key: &str) -> Option<redis::cluster_routing::Slot> {
        self.store
            .is_cluster()
            .then(|| redis::cluster_routing::Slot::for_key(key))
    }

    /// An EVALSHA of the script over `jobs`.
    fn invocation<'a>(
        &self,
        mode: &str,
        jobs: impl Iterator<Item = (&'a Job, bool)>,
    ) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        let jobs: Vec<(&Job, bool)> = jobs.collect();
        cmd.arg(self.script.get_hash()).arg(jobs.len());
        for (job, _) in &jobs {
            cmd.arg(&job.key);
        }
        cmd.arg(mode);
        for (job, dry) in &jobs {
            cmd.arg(job.params.rate)
                .arg(job.params.period_ns)
                .arg(job.params.burst)
                .arg(job.tokens)
                .arg(u8::from(*dry || job.op == Op::Peek));
        }
        cmd
    }

    /// Sends script calls in one round trip: on one server as one pipeline;
    /// on a cluster each call on its own (a cluster pipeline must stay in one
    /// slot), all at once over the client's multiplexed node connections.
    /// Loads the script first where Redis does not know it (first use, a
    /// restarted or failed-over node). One reply per command, in order.
    async fn send(&self, commands: Vec<redis::Cmd>) -> Vec<Result<Vec<i64>, RedisStoreError>> {
        if commands.is_empty() {
            return Vec::new();
        }
        if self.store.is_cluster() {
            let calls = commands.iter().map(|command| async move {
                let mut pipeline = redis::pipe();
                pipeline.add_command(command.clone());
                self.run(&pipeline)
                    .await
                    .map(|mut replies| replies.pop().unwrap_or_default())
            });
            return futures_util::future::join_all(calls).await;
        }
        let count = commands.len();
        let mut pipeline = redis::pipe();
        for command in commands {
            pipeline.add_command(command);
        }
        match self.run(&pipeline).await {
            Ok(replies) => replies.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e); count],
        }
    }

    async fn run(&self, pipeline: &redis::Pipeline) -> Result<Vec<Vec<i64>>, RedisStoreError> {
        self.store.eval_pipeline(&self.script, pipeline).await
    }

    async fn run_lane(self, rx: Arc<Mutex<mpsc::Receiver<Queued>>>) {
        let mut batch: Vec<Queued> = Vec::with_capacity(MAX_PER_TRIP);
        loop {
            {
                let mut rx = rx.lock().await;
                if rx.recv_many(&mut batch, MAX_PER_TRIP).await == 0 {
                    return;
                }
            }
            self.send_batch(&mut batch).await;
        }
    }

    /// One round trip for everything gathered: one script call per mode
    /// (take/peek, give back) and, on a cluster, per hash slot.
    async fn send_batch(&self, batch: &mut Vec<Queued>) {
        // (mode, slot) -> the positions in `batch` it answers, in call order.
        let mut groups: Vec<(Group<'_>, Vec<usize>)> = Vec::new();
        for (i, q) in batch.iter().enumerate() {
            let mode = if q.job.op == Op::GiveBack {
                "refund"
            } else {
                "each"
            };
            let group = (mode, self.slot_of(&q.job.key));
            match groups.iter_mut().find(|(g, _)| *g == group) {
                Some((_, members)) => members.push(i),
                None => groups.push((group, vec![i])),
            }
        }
        let commands = groups
            .iter()
            .map(|((mode, _), members)| {
                self.invocation(mode, members.iter().map(|&i| (&batch[i].job, false)))
            })
            .collect();
        let replies = self.send(commands).await;
        let mut answers: Vec<Option<Result<Decision, RedisStoreError>>> = vec![None; batch.len()];
        for ((_, members), reply) in groups.iter().zip(replies) {
            for (position, &i) in members.iter().enumerate() {
                answers[i] = Some(match &reply {
                    Ok(reply) => decision_at(reply, position, &batch[i].job).ok_or_else(|| {
                        RedisStoreError::Refused("the rate-limit script answered too little".into())
                    }),
                    Err(e) => Err(e.clone()),
                });
            }
        }
        for (q, answer) in batch.drain(..).zip(answers) {
            let _ = q.reply.send(answer.unwrap_or_else(|| {
                Err(RedisStoreError::Refused(
                    "no answer for a queued decision".into(),
                ))
            }));
        }
    }
}

fn decision_at(reply: &[i64], position: usize, job: &Job) -> Option<Decision> {
    let four = reply.get(position * 4..position * 4 + 4)?;
    let number = |v: i64| u64::try_from(v).unwrap_or(0);
    Some(Decision {
        allowed: four[0] == 1,
        remaining: number(four[1]),
        retry_after_ns: number(four[2]),
        reset_after_ns: number(four[3]),
        limit: job.params.burst,
    })
}

fn parse(reply: &[i64], jobs: &[Job]) -> Vec<Decision> {
    jobs.iter()
        .enumerate()
        .map(|(i, job)| {
            decision_at(reply, i, job).unwrap_or(Decision {
                allowed: false,
                remaining: 0,
                retry_after_ns: 0,
                reset_after_ns: 0,
                limit: job.params.burst,
            })
        })
        .collect()
}
