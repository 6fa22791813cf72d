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

/// KEYS: buckets, in runs of keys that share parameters. ARGV[1]: mode —
/// `each` (decide every bucket on its own), `all` (all or nothing: take from
/// every bucket only if each can give) or `refund` (give tokens back). Then
/// six numbers per run: rate, period_ns, burst, tokens, dry (1: decide
/// without taking) and how many of the keys, in order, the run holds — so a
/// batch of decisions under one limit sends its parameters once, not once
/// per key (argument parsing was a sixth of Redis's work per decision).
/// Returns one string: 25 bytes per key, in key order — allowed (one byte),
/// then remaining, retry_after_ns and reset_after_ns as little-endian
/// doubles (whole numbers, exact below 2^53) — cheaper for Redis to send and
/// for the client to read than four integers per key.
pub const GCRA_LUA: &str = r#"
local call = redis.call
local floor, ceil, min, max = math.floor, math.ceil, math.min, math.max
local pack, unpack = struct.pack, struct.unpack
local t = call('TIME')
local now_s = tonumber(t[1])
local now_ns = tonumber(t[2]) * 1000
local mode = ARGV[1]

-- The TAT's distance from now in units of 1/rate ns (0: full).
local function distance(key, rate)
  local v = call('GET', key)
  if not v or #v ~= 24 then return 0 end
  local s, ns, frac = unpack('<ddd', v)
  local d = (s - now_s) * 1e9 + (ns - now_ns)
  if d < 0 then return 0 end
  return d * rate + min(frac, rate - 1)
end

local function store(key, rate, d)
  if d <= 0 then
    call('DEL', key)
    return
  end
  local whole = floor(d / rate)
  local frac = d - whole * rate
  local total = now_ns + whole
  call('SET', key, pack('<ddd', now_s + floor(total / 1e9), total % 1e9, frac), 'PX', floor(whole / 1e6) + 1)
end

-- Calls f(first key, last key, rate, period, burst, tokens, dry) for each run.
local function each_run(f)
  local first = 1
  for b = 2, #ARGV - 5, 6 do
    local last = first + tonumber(ARGV[b + 5]) - 1
    f(first, last, tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]),
      tonumber(ARGV[b + 3]), ARGV[b + 4] == '1')
    first = last + 1
  end
end

local all_allowed = true
if mode == 'all' then
  each_run(function(first, last, rate, period, burst, tokens)
    for k = first, last do
      if distance(KEYS[k], rate) + tokens * period > burst * period then all_allowed = false end
    end
  end)
end

local out = {}
each_run(function(first, last, rate, period, burst, tokens, dry)
  local tau = burst * period
  local cost = tokens * period
  for k = first, last do
    local key = KEYS[k]
    local d = distance(key, rate)
    local new, allowed
    if mode == 'refund' then
      d = max(d - cost, 0)
      store(key, rate, d)
      new, allowed = d, true
    else
      new = d + cost
      allowed = new <= tau
      if mode == 'all' then allowed = all_allowed end
      if allowed and not dry then
        store(key, rate, new)
        d = new
      end
    end
    local level = tau - d
    if level < 0 then level = 0 end
    local retry = 0
    if not allowed and new > tau then retry = ceil((new - tau) / rate) end
    out[k] = pack('<Bddd', allowed and 1 or 0, floor(level / period), retry, ceil(d / rate))
  end
end)
return table.concat(out)
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
        let jobs: Vec<(&Job, bool)> = jobs.iter().map(|job| (job, dry_run)).collect();
        let call = Invocation::new(self.script.get_hash(), "all", &jobs);
        let reply = self
            .send(vec![call.cmd])
            .await
            .pop()
            .unwrap_or(Ok(Vec::new()))?;
        Ok(read_reply(&reply, &call.order, &jobs)
            .into_iter()
            .zip(&jobs)
            .map(|(decision, (job, _))| decision.unwrap_or_else(|| refused(job)))
            .collect())
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
            .map(|job| self.invocation("each", &[(job, dry_run)]))
            .collect();
        let mut decisions = Vec::with_capacity(jobs.len());
        for (reply, job) in self.send(commands).await.into_iter().zip(jobs) {
            let decision = read_reply(&reply?, &[0], &[(job, dry_run)]).pop().flatten();
            decisions.push(decision.unwrap_or_else(|| refused(job)));
        }
        if decisions.iter().all(|d| d.allowed) {
            return Ok(decisions);
        }
        if !dry_run {
            let refunds: Vec<redis::Cmd> = jobs
                .iter()
                .zip(&decisions)
                .filter(|(_, d)| d.allowed)
                .map(|(job, _)| self.invocation("refund", &[(job, false)]))
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

    /// An EVALSHA of the script over one job (which needs no reordering).
    fn invocation(&self, mode: &str, job: &[(&Job, bool)]) -> redis::Cmd {
        Invocation::new(self.script.get_hash(), mode, job).cmd
    }

    /// Sends script calls in one round trip: on one server as one pipeline;
    /// on a cluster each call on its own (a cluster pipeline must stay in one
    /// slot), all at once over the client's multiplexed node connections.
    /// Loads the script first where Redis does not know it (first use, a
    /// restarted or failed-over node). One reply per command, in order.
    async fn send(&self, commands: Vec<redis::Cmd>) -> Vec<Result<Vec<u8>, RedisStoreError>> {
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

    async fn run(&self, pipeline: &redis::Pipeline) -> Result<Vec<Vec<u8>>, RedisStoreError> {
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
        let group_jobs: Vec<Vec<(&Job, bool)>> = groups
            .iter()
            .map(|(_, members)| members.iter().map(|&i| (&batch[i].job, false)).collect())
            .collect();
        let (commands, orders): (Vec<redis::Cmd>, Vec<Vec<usize>>) = groups
            .iter()
            .zip(&group_jobs)
            .map(|(((mode, _), _), jobs)| {
                let call = Invocation::new(self.script.get_hash(), mode, jobs);
                (call.cmd, call.order)
            })
            .unzip();
        let replies = self.send(commands).await;
        let mut answers: Vec<Option<Result<Decision, RedisStoreError>>> = vec![None; batch.len()];
        for ((((_, members), jobs), order), reply) in
            groups.iter().zip(&group_jobs).zip(&orders).zip(replies)
        {
            let decisions = match reply {
                Ok(reply) => read_reply(&reply, order, jobs),
                Err(e) => {
                    for &i in members {
                        answers[i] = Some(Err(e.clone()));
                    }
                    continue;
                }
            };
            for (decision, &i) in decisions.into_iter().zip(members) {
                answers[i] = Some(decision.ok_or_else(|| {
                    RedisStoreError::Refused("the rate-limit script answered too little".into())
                }));
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

/// One script call: its command and, for each key in the order the
/// script gets them (grouped into runs that share parameters), the index of
/// the job it answers.
struct Invocation {
    cmd: redis::Cmd,
    order: Vec<usize>,
}

/// What a run of keys shares: rate, period, burst, tokens, dry.
type RunParams = (u64, u64, u64, u64, bool);

impl Invocation {
    fn new(sha: &str, mode: &str, jobs: &[(&Job, bool)]) -> Self {
        let run_of = |&(job, dry): &(&Job, bool)| -> RunParams {
            let p = job.params;
            (
                p.rate,
                p.period_ns,
                p.burst,
                job.tokens,
                dry || job.op == Op::Peek,
            )
        };
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        // Stable, so decisions within a run keep the order they arrived in.
        // Decisions in different runs (say 5 tokens and 1 from one bucket) may
        // be taken in another order than they arrived: they were concurrent, so
        // any order is one they could have had, and each still sees the bucket
        // as the ones before it left it. Waiters never share a call (only a
        // bucket's head waiter asks), so their FIFO order is not touched.
        order.sort_by_key(|&i| run_of(&jobs[i]));
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha).arg(jobs.len());
        for &i in &order {
            cmd.arg(&jobs[i].0.key);
        }
        cmd.arg(mode);
        for run in order.chunk_by(|&a, &b| run_of(&jobs[a]) == run_of(&jobs[b])) {
            let (rate, period_ns, burst, tokens, dry) = run_of(&jobs[run[0]]);
            cmd.arg(rate)
                .arg(period_ns)
                .arg(burst)
                .arg(tokens)
                .arg(u8::from(dry))
                .arg(run.len());
        }
        Self { cmd, order }
    }
}

/// Bytes per key in the script's reply: allowed, then three doubles.
const REPLY_BYTES: usize = 1 + 3 * 8;

/// The decision for each job (by job index) from the script's reply; `None`
/// where the reply is too short to hold it.
fn read_reply(reply: &[u8], order: &[usize], jobs: &[(&Job, bool)]) -> Vec<Option<Decision>> {
    let mut decisions = vec![None; jobs.len()];
    for (key, chunk) in order.iter().zip(reply.chunks_exact(REPLY_BYTES)) {
        let number = |at: usize| {
            let bytes: [u8; 8] = chunk[at..at + 8].try_into().unwrap_or_default();
            // Whole numbers the script computed; `as` saturates (NaN, negatives to 0).
            f64::from_le_bytes(bytes) as u64
        };
        if let Some(slot) = decisions.get_mut(*key) {
            *slot = Some(Decision {
                allowed: chunk[0] == 1,
                remaining: number(1),
                retry_after_ns: number(9),
                reset_after_ns: number(17),
                limit: jobs[*key].0.params.burst,
            });
        }
    }
    decisions
}

/// A refusal for a job the script left unanswered.
fn refused(job: &Job) -> Decision {
    Decision {
        allowed: false,
        remaining: 0,
        retry_after_ns: 0,
        reset_after_ns: 0,
        limit: job.params.burst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(key: &str, burst: u64, tokens: u64, op: Op) -> Job {
        Job {
            key: key.into(),
            params: Params {
                rate: 10,
                period_ns: 1_000_000_000,
                burst,
            },
            tokens,
            op,
        }
    }

    fn args(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<cursor>".into(),
            })
            .collect()
    }

    #[test]
    fn keys_sharing_parameters_form_one_run_and_each_reply_finds_its_job() {
        let jobs = [
            job("a1", 5, 1, Op::Take),
            job("b1", 9, 1, Op::Take),
            job("a2", 5, 1, Op::Take),
            job("a3", 5, 1, Op::Peek),
        ];
        let pairs: Vec<(&Job, bool)> = jobs.iter().map(|j| (j, false)).collect();
        let call = Invocation::new("sha", "each", &pairs);
        // Burst 5 takes before burst 5 peeks before burst 9; arrival order within a run.
        assert_eq!(call.order, vec![0, 2, 3, 1]);
        let second = "1000000000";
        assert_eq!(
            args(&call.cmd),
            [
                "EVALSHA", "sha", "4", "a1", "a2", "a3", "b1", "each", //
                "10", second, "5", "1", "0", "2", //
                "10", second, "5", "1", "1", "1", //
                "10", second, "9", "1", "0", "1",
            ]
        );

        // The script answers in key order: a1, a2, a3, b1.
        let reply: Vec<u8> = [
            (1u8, 4.0, 0.0, 1e8),
            (1, 3.0, 0.0, 2e8),
            (0, 3.0, 5e7, 2e8),
            (1, 8.0, 0.0, 1e8),
        ]
        .iter()
        .flat_map(
            |&(allowed, remaining, retry, reset): &(u8, f64, f64, f64)| {
                let mut bytes = vec![allowed];
                for n in [remaining, retry, reset] {
                    bytes.extend_from_slice(&n.to_le_bytes());
                }
                bytes
            },
        )
        .collect();
        let decisions = read_reply(&reply, &call.order, &pairs);
        let summary: Vec<(bool, u64, u64, u64)> = decisions
            .iter()
            .map(|d| {
                let d = d
                    .as_ref()
                    .map(|d| (d.allowed, d.remaining, d.limit, d.retry_after_ns));
                d.unwrap_or((false, u64::MAX, 0, 0))
            })
            .collect();
        assert_eq!(
            summary,
            [
                (true, 4, 5, 0),
                (true, 8, 9, 0),
                (true, 3, 5, 0),
                (false, 3, 5, 50_000_000)
            ]
        );

        // A reply cut short answers only the keys it holds.
        let short = read_reply(&reply[..REPLY_BYTES * 2 + 3], &call.order, &pairs);
        assert_eq!(
            short.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false, true, false]
        );
    }

    #[test]
    fn a_dry_run_batch_is_one_run_of_peeks() {
        let jobs = [job("a", 5, 2, Op::Take), job("b", 5, 2, Op::Take)];
        let pairs: Vec<(&Job, bool)> = jobs.iter().map(|j| (j, true)).collect();
        let call = Invocation::new("sha", "all", &pairs);
        assert_eq!(call.order, vec![0, 1]);
        assert_eq!(
            args(&call.cmd)[5..],
            ["all", "10", "1000000000", "5", "2", "1", "2"]
        );
    }
}
