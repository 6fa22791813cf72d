//! What keeps a caller running when gantry does not answer: the limiter's
//! failure policy and its local token bucket, the decision counters and the
//! circuit breaker. `docs/client-resilience.md` describes them for all four
//! clients; the numbers here are the ones it gives. Pure: every function takes
//! the time it needs, so the tests move a clock by hand.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;

use crate::client::{Decision, std_duration};
use crate::proto::gantry::v1 as pb;

/// What a limiter answers when gantry does not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Allow (the default, as Envoy's rate-limit filter does).
    #[default]
    FailOpen,
    /// Deny, saying why.
    FailClosed,
    /// Decide with a token bucket in this process: the limit's last known
    /// rate and burst divided by the client's local share.
    Local,
}

/// Who made a [`Decision`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DecisionSource {
    /// gantry decided.
    #[default]
    Server,
    /// gantry did not answer; the policy allowed.
    FailOpen,
    /// gantry did not answer; the policy denied.
    FailClosed,
    /// gantry did not answer; the local bucket decided.
    Local,
}

impl DecisionSource {
    /// The name every client uses: `server`, `fail_open`, `fail_closed`, `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::FailOpen => "fail_open",
            Self::FailClosed => "fail_closed",
            Self::Local => "local",
        }
    }
}

impl fmt::Display for DecisionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many decisions each source made ([`crate::Gantry::decisions`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecisionCounts {
    pub server: u64,
    pub fail_open: u64,
    pub fail_closed: u64,
    pub local: u64,
}

impl DecisionCounts {
    pub fn total(&self) -> u64 {
        self.server + self.fail_open + self.fail_closed + self.local
    }
}

/// Whether a call's code means gantry did not answer (as opposed to answering
/// with a refusal).
pub(crate) fn unanswered(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

/// How an admitted call ended, for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Answered,
    Failed,
}

/// The breaker's answer to "may this call go".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Go { probe: bool },
    Refused { next_try_in: Duration },
}

#[derive(Debug)]
struct BreakerState {
    failures: u32,
    backoff: Duration,
    open_until: Option<Instant>,
    probing: bool,
}

/// The client's circuit breaker: closed until `threshold` consecutive calls
/// go unanswered, then open for a back-off, then one probe; a failed probe
/// doubles the back-off up to `longest`.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    shortest: Duration,
    longest: Duration,
    state: Mutex<BreakerState>,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, shortest: Duration, longest: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            shortest,
            longest: longest.max(shortest),
            state: Mutex::new(BreakerState {
                failures: 0,
                backoff: shortest,
                open_until: None,
                probing: false,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        // The state is a few numbers, consistent after every statement: a
        // panic elsewhere while it was held leaves nothing half-done.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn admit(&self, now: Instant) -> Admit {
        let mut s = self.state();
        let Some(until) = s.open_until else {
            return Admit::Go { probe: false };
        };
        if now < until || s.probing {
            return Admit::Refused {
                next_try_in: until.saturating_duration_since(now),
            };
        }
        s.probing = true;
        Admit::Go { probe: true }
    }

    /// How long until the next probe may go (zero when closed).
    pub(crate) fn remaining(&self, now: Instant) -> Duration {
        self.state()
            .open_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    /// Records how an admitted call ended; `None`: neither (the caller
    /// cancelled it), which only frees the probe's turn.
    pub(crate) fn record(&self, now: Instant, probe: bool, outcome: Option<Outcome>) {
        let mut s = self.state();
        if probe {
            s.probing = false;
        }
        match outcome {
            Some(Outcome::Answered) => {
                s.failures = 0;
                s.backoff = self.shortest;
                s.open_until = None;
            }
            Some(Outcome::Failed) => {
                s.failures += 1;
                if probe {
                    s.backoff = (s.backoff * 2).min(self.longest);
                    s.open_until = Some(now + s.backoff);
                } else if s.open_until.is_none() && s.failures >= self.threshold {
                    s.open_until = Some(now + s.backoff);
                }
            }
            None => {}
        }
    }
}

/// The local policy's bucket: `per_second` tokens up to `burst`, starting full.
#[derive(Debug)]
struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn take(&mut self, now: Instant, n: u64) -> (bool, u64, Duration) {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        }
        self.last = Some(now);
        let want = n as f64;
        if want <= self.tokens {
            self.tokens -= want;
            return (true, self.tokens as u64, Duration::ZERO);
        }
        if want > self.burst || self.per_second <= 0.0 {
            return (false, self.tokens as u64, Duration::from_secs(3600)); // never
        }
        let wait = Duration::from_secs_f64((want - self.tokens) / self.per_second);
        (false, self.tokens as u64, wait)
    }
}

const MAX_LOCAL_KEYS: usize = 10_000;
const RELEARN_EVERY: Duration = Duration::from_secs(60);

/// One limit's parameters (from ListLimits) and its local buckets.
#[derive(Debug)]
pub(crate) struct LocalLimit {
    info: pb::LimitInfo,
    buckets: HashMap<String, TokenBucket>,
}

impl LocalLimit {
    pub(crate) fn new(info: pb::LimitInfo) -> Self {
        Self {
            info,
            buckets: HashMap::new(),
        }
    }

    pub(crate) fn take(
        &mut self,
        now: Instant,
        key: &str,
        n: u64,
        share: u32,
    ) -> (bool, u64, Duration) {
        let key = if self.info.scope() == pb::LimitScope::Shared {
            ""
        } else {
            key
        };
        if !self.buckets.contains_key(key) {
            if self.buckets.len() >= MAX_LOCAL_KEYS {
                self.buckets.clear();
            }
            let (rate, period, burst) = self.info.overrides.iter().find(|o| o.key == key).map_or(
                (self.info.rate, self.info.period.as_ref(), self.info.burst),
                |o| (o.rate, o.period.as_ref(), o.burst),
            );
            let period = std_duration(period).as_secs_f64();
            let share = f64::from(share.max(1));
            let per_second = if period > 0.0 {
                rate as f64 / period
            } else {
                0.0
            };
            let bucket = TokenBucket {
                per_second: per_second / share,
                burst: (burst as f64 / share).floor().max(1.0),
                tokens: (burst as f64 / share).floor().max(1.0),
                last: None,
            };
            self.buckets.insert(key.to_string(), bucket);
        }
        match self.buckets.get_mut(key) {
            Some(bucket) => bucket.take(now, n),
            None => (true, 0, Duration::ZERO), // just inserted
        }
    }
}

/// Called with every limiter decision.
pub type DecisionHook = Arc<dyn Fn(&str, &Decision) + Send + Sync>;

/// What one client's limiters share to answer without gantry.
#[derive(Default)]
pub(crate) struct PolicyState {
    limits: HashMap<String, LocalLimit>,
    learned: Option<Instant>,
    pub(crate) counts: DecisionCounts,
}

impl fmt::Debug for PolicyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyState")
            .field("limits", &self.limits.keys().collect::<Vec<_>>())
            .field("counts", &self.counts)
            .finish()
    }
}

impl PolicyState {
    pub(crate) fn count(&mut self, source: DecisionSource) {
        let c = &mut self.counts;
        match source {
            DecisionSource::Server => c.server += 1,
            DecisionSource::FailOpen => c.fail_open += 1,
            DecisionSource::FailClosed => c.fail_closed += 1,
            DecisionSource::Local => c.local += 1,
        }
    }

    pub(crate) fn knows(&self, limit: &str) -> bool {
        self.limits.contains_key(limit)
    }

    /// Whether ListLimits should be asked now (claims the turn).
    pub(crate) fn needs_learning(&mut self, limit: &str, now: Instant) -> bool {
        let since = self.learned.map(|t| now.saturating_duration_since(t));
        if self.limits.contains_key(limit) && since.is_some_and(|s| s < RELEARN_EVERY) {
            return false;
        }
        if since.is_some_and(|s| s < Duration::from_secs(1)) {
            return false; // asked a moment ago (the limit may not exist)
        }
        self.learned = Some(now);
        true
    }

    /// Keeps what ListLimits answered; buckets of unchanged limits stay.
    pub(crate) fn learn(&mut self, resp: pb::ListLimitsResponse) {
        let mut by_name: HashMap<String, pb::LimitInfo> = resp
            .limits
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect();
        if let Some(default) = by_name.get(&resp.default_limit).cloned() {
            by_name.insert(String::new(), default); // what unknown names are decided by
        }
        for (name, info) in by_name {
            if self.limits.get(&name).is_none_or(|held| held.info != info) {
                self.limits.insert(name, LocalLimit::new(info));
            }
        }
    }

    /// The policy's decision for a call gantry did not answer.
    pub(crate) fn fallback(&mut self, ask: Fallback<'_>) -> Decision {
        let mut d = Decision::default();
        match ask.policy {
            FailurePolicy::FailClosed => {
                d.source = DecisionSource::FailClosed;
                d.retry_after = ask.breaker_wait.max(Duration::from_millis(100));
                d.reason = format!("gantry unreachable: {}", ask.cause);
            }
            FailurePolicy::Local => {
                let limit = match self.limits.contains_key(ask.limit) {
                    true => self.limits.get_mut(ask.limit),
                    false => self.limits.get_mut(""),
                };
                if let Some(limit) = limit {
                    let (allowed, remaining, retry_after) =
                        limit.take(ask.now, ask.key, ask.tokens, ask.share);
                    d.allowed = allowed;
                    d.remaining = remaining;
                    d.retry_after = retry_after;
                    d.source = DecisionSource::Local;
                } else {
                    d.allowed = true;
                    d.source = DecisionSource::FailOpen;
                    d.reason = format!("limit {} not learned yet", ask.limit);
                }
            }
            FailurePolicy::FailOpen => {
                d.allowed = true;
                d.source = DecisionSource::FailOpen;
            }
        }
        d
    }
}

/// What the policy needs to decide a call gantry did not answer.
pub(crate) struct Fallback<'a> {
    pub policy: FailurePolicy,
    pub limit: &'a str,
    pub key: &'a str,
    pub tokens: u64,
    pub share: u32,
    pub breaker_wait: Duration,
    pub cause: &'a str,
    pub now: Instant,
}

/// How long before its expiry a lease that could not be renewed is reported lost.
pub(crate) fn lost_margin(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_probes_and_closes() {
        let t0 = Instant::now();
        let b = Breaker::new(3, Duration::from_secs(1), Duration::from_secs(4));
        let fail = |now| {
            let Admit::Go { probe } = b.admit(now) else {
                panic!("refused while it should be closed")
            };
            b.record(now, probe, Some(Outcome::Failed));
        };
        fail(t0);
        fail(t0);
        b.record(t0, false, Some(Outcome::Answered)); // an answer starts the count again
        fail(t0);
        fail(t0);
        fail(t0);
        assert_eq!(
            b.admit(t0),
            Admit::Refused {
                next_try_in: Duration::from_secs(1)
            }
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.admit(t1), Admit::Go { probe: true });
        assert!(
            matches!(b.admit(t1), Admit::Refused { .. }),
            "one probe at a time"
        );
        b.record(t1, true, Some(Outcome::Failed));
        assert_eq!(b.remaining(t1), Duration::from_secs(2), "doubled");
        let mut now = t1;
        for _ in 0..2 {
            now += b.remaining(now);
            assert_eq!(b.admit(now), Admit::Go { probe: true });
            b.record(now, true, Some(Outcome::Failed));
        }
        assert_eq!(
            b.remaining(now),
            Duration::from_secs(4),
            "up to the longest"
        );
        now += Duration::from_secs(4);
        assert_eq!(b.admit(now), Admit::Go { probe: true });
        b.record(now, true, None);
        assert_eq!(
            b.admit(now),
            Admit::Go { probe: true },
            "a cancelled probe lets the next call probe"
        );
        b.record(now, true, Some(Outcome::Answered));
        assert_eq!(b.admit(now), Admit::Go { probe: false });
        assert_eq!(b.remaining(now), Duration::ZERO);
    }

    fn second() -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        })
    }

    #[test]
    fn local_limit_takes_its_share() {
        let t0 = Instant::now();
        let mut limit = LocalLimit::new(pb::LimitInfo {
            name: "api".into(),
            rate: 100,
            period: second(),
            burst: 40,
            overrides: vec![pb::LimitOverride {
                key: "vip".into(),
                rate: 1000,
                period: second(),
                burst: 400,
            }],
            ..Default::default()
        });
        for i in 0..10 {
            assert!(limit.take(t0, "a", 1, 4).0, "token {i} of a burst of 10");
        }
        let (allowed, _, retry) = limit.take(t0, "a", 1, 4);
        assert!(!allowed);
        assert!(
            retry.abs_diff(Duration::from_millis(40)) < Duration::from_micros(1),
            "25 a second: {retry:?}"
        );
        assert!(limit.take(t0 + Duration::from_millis(40), "a", 1, 4).0);
        assert!(limit.take(t0, "b", 10, 4).0, "each key its own bucket");
        assert!(limit.take(t0, "vip", 100, 4).0, "an override's 400/4");
        let (allowed, _, retry) = limit.take(t0, "c", 11, 4);
        assert!(!allowed && retry >= Duration::from_secs(60), "never");
        let mut shared = LocalLimit::new(pb::LimitInfo {
            rate: 1,
            period: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            burst: 1,
            scope: pb::LimitScope::Shared as i32,
            ..Default::default()
        });
        assert!(shared.take(t0, "x", 1, 1).0);
        assert!(!shared.take(t0, "y", 1, 1).0, "one bucket for every key");
    }

    #[test]
    fn fallbacks_say_who_decided() {
        let mut state = PolicyState::default();
        let ask = |policy| Fallback {
            policy,
            limit: "api",
            key: "k",
            tokens: 1,
            share: 1,
            breaker_wait: Duration::ZERO,
            cause: "Unavailable: connection refused",
            now: Instant::now(),
        };
        let open = state.fallback(ask(FailurePolicy::FailOpen));
        assert!(open.allowed && open.source == DecisionSource::FailOpen);
        let closed = state.fallback(ask(FailurePolicy::FailClosed));
        assert!(!closed.allowed && closed.source == DecisionSource::FailClosed);
        assert_eq!(closed.retry_after, Duration::from_millis(100));
        assert!(closed.reason.contains("gantry unreachable: Unavailable"));
        let unlearned = state.fallback(ask(FailurePolicy::Local));
        assert!(unlearned.allowed && unlearned.source == DecisionSource::FailOpen);
        assert!(unlearned.reason.contains("not learned"));
        state.learn(pb::ListLimitsResponse {
            limits: vec![pb::LimitInfo {
                name: "api".into(),
                rate: 1,
                period: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                burst: 1,
                ..Default::default()
            }],
            default_limit: String::new(),
        });
        let first = state.fallback(ask(FailurePolicy::Local));
        assert!(first.allowed && first.source == DecisionSource::Local);
        let second = state.fallback(ask(FailurePolicy::Local));
        assert!(!second.allowed && second.source == DecisionSource::Local);
    }

    #[test]
    fn lost_margin_is_a_tenth_within_bounds() {
        assert_eq!(
            lost_margin(Duration::from_secs(1)),
            Duration::from_millis(100)
        );
        assert_eq!(
            lost_margin(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
        assert_eq!(
            lost_margin(Duration::from_secs(600)),
            Duration::from_secs(5)
        );
    }
}
