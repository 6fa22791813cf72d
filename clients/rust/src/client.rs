//! Helpers over the generated clients, as a service uses gantry: calls
//! spread round-robin over the replicas that are up, idempotent calls retried
//! with backoff on UNAVAILABLE, a default deadline, a circuit breaker, a rate
//! limiter that waits its turn and has a policy for when gantry does not
//! answer, a lease that renews itself, a near cache kept coherent through
//! Watch, and a background query recorder (docs/client-resilience.md).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::connect::{ConnectError, Tls, connect_replicas};
use crate::proto::gantry::v1 as pb;
use crate::replicas::Replicas;
use crate::resilience::{
    Admit, Breaker, DecisionCounts, DecisionHook, DecisionSource, FailurePolicy, Fallback, Outcome,
    PolicyState, lost_margin, unanswered,
};

type RateLimiterClient = pb::rate_limiter_client::RateLimiterClient<Replicas>;
type CacheClient = pb::cache_client::CacheClient<Replicas>;
type QueryClient = pb::query_analyzer_client::QueryAnalyzerClient<Replicas>;
type LeasesClient = pb::leases_client::LeasesClient<Replicas>;
type TracesClient = pb::traces_client::TracesClient<Replicas>;

/// Whether a call may be repeated on UNAVAILABLE: only when repeating it
/// cannot make it act twice (docs/client-resilience.md has the list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Repeat {
    Idempotent,
    Never,
}

/// A client's resilience settings (docs/client-resilience.md).
#[derive(Clone)]
struct Settings {
    policy: FailurePolicy,
    share: u32,
    hook: Option<DecisionHook>,
    /// Failures in a row, first back-off, longest back-off.
    breaker: (u32, Duration, Duration),
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            policy: FailurePolicy::FailOpen,
            share: 1,
            hook: None,
            breaker: (5, Duration::from_secs(1), Duration::from_secs(30)),
        }
    }
}

/// What every clone of a client shares: the breaker and the failure policy's state.
pub(crate) struct Shared {
    settings: Settings,
    breaker: Breaker,
    state: Mutex<PolicyState>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("policy", &self.settings.policy)
            .field("share", &self.settings.share)
            .field("breaker", &self.breaker)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn new(settings: Settings) -> Self {
        let (failures, open_for, longest) = settings.breaker;
        Self {
            breaker: Breaker::new(failures, open_for, longest),
            settings,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, PolicyState> {
        // Counters and buckets, whole after every statement.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

/// Frees a probe's turn when its call is dropped before it ends.
struct Admitted<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Admitted<'_> {
    fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker
            .record(Instant::now(), self.probe, Some(outcome));
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(Instant::now(), self.probe, None);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The code by its name (`NotFound`), as gRPC and the docs spell it.
    #[error("gantry answered {:?}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// A wait for tokens or lease units ran out; `retry_after` when gantry
    /// said when to try again (rate limits do, leases cannot know).
    #[error("not granted within the wait{}{}", .retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default(), .reason.map(|r| format!(" ({r})")).unwrap_or_default())]
    NotGranted {
        retry_after: Option<Duration>,
        /// Why a lease was refused, as the server said.
        reason: Option<&'static str>,
    },
}

impl Error {
    /// The gRPC code of a call gantry (or the connection) refused; `None`
    /// for a refused connection and for [`Error::NotGranted`].
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status(status) => Some(status.code()),
            Self::Connect(_) | Self::NotGranted { .. } => None,
        }
    }
}

/// One connection to gantry and the generated clients (cheap to clone).
#[derive(Clone, Debug)]
pub struct Gantry {
    pub rate_limiter: RateLimiterClient,
    pub cache: CacheClient,
    pub query: QueryClient,
    pub leases: LeasesClient,
    pub traces: TracesClient,
    timeout: Duration,
    retries: u32,
    /// `authorization: Bearer …`, sent with every call the helpers make.
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    shared: Arc<Shared>,
    replicas: Replicas,
}

fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub(crate) fn std_duration(d: Option<&prost_types::Duration>) -> Duration {
    d.map_or(Duration::ZERO, |d| {
        Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
    })
}

pub(crate) fn system_time(t: Option<&prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Gantry {
    /// Connects to `target`: one address (`host:port`, waiting up to
    /// `patience` for it to listen), a comma-separated list of them, or
    /// `dns:///host:port` naming several; calls go round-robin to the
    /// replicas that are up.
    pub async fn connect(target: &str, patience: Duration) -> Result<Self, Error> {
        Ok(Self::from_replicas(
            connect_replicas(target, patience, None).await?,
        ))
    }

    /// [`Self::connect`] over TLS (mutual when `tls` has a client
    /// certificate); add a token with [`Self::with_token`].
    pub async fn connect_tls(target: &str, patience: Duration, tls: &Tls) -> Result<Self, Error> {
        Ok(Self::from_replicas(
            connect_replicas(target, patience, Some(tls)).await?,
        ))
    }

    /// Sends `authorization: Bearer <token>` with every call the helpers
    /// make (gantry's `[auth]`); for the generated clients' own calls, build
    /// requests with [`Self::authorized`]. Use it over TLS only.
    pub fn with_token(mut self, token: &str) -> Result<Self, Error> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ConnectError::Tls("the token is not valid metadata".into()))?;
        self.token = Some(value);
        Ok(self)
    }

    /// A request carrying the token, for calls on the generated clients.
    pub fn authorized<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    /// A client on a channel you built.
    pub fn from_channel(channel: Channel) -> Self {
        Self::from_replicas(Replicas::single(channel))
    }

    /// A client over [`Replicas`] ([`crate::connect_replicas`]).
    pub fn from_replicas(replicas: Replicas) -> Self {
        Self {
            rate_limiter: RateLimiterClient::new(replicas.clone()),
            cache: CacheClient::new(replicas.clone()),
            query: QueryClient::new(replicas.clone()),
            leases: LeasesClient::new(replicas.clone()),
            traces: TracesClient::new(replicas.clone()),
            replicas,
            timeout: Duration::from_secs(5),
            retries: 3,
            token: None,
            shared: Arc::default(),
        }
    }

    /// What limiters answer when gantry does not (default
    /// [`FailurePolicy::FailOpen`]). Settings like this one apply to the
    /// clones made after it.
    pub fn with_failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.reshare(|s| s.policy = policy);
        self
    }

    /// For [`FailurePolicy::Local`]: how many instances share each limit (its
    /// local bucket gets rate/share and burst/share); default 1.
    pub fn with_local_share(mut self, share: u32) -> Self {
        self.reshare(|s| s.share = share.max(1));
        self
    }

    /// Calls `hook` with every limiter decision (its `source` says who made
    /// it), e.g. to count them in the service's metrics. Keep it quick.
    pub fn on_decision(mut self, hook: impl Fn(&str, &Decision) + Send + Sync + 'static) -> Self {
        self.reshare(|s| s.hook = Some(Arc::new(hook)));
        self
    }

    /// After `failures` consecutive unanswered calls (UNAVAILABLE,
    /// DEADLINE_EXCEEDED), calls fail at once for `open_for`, then one probe
    /// goes through; a failing probe doubles it up to `longest`. Default 5,
    /// 1 s, 30 s.
    pub fn with_circuit_breaker(
        mut self,
        failures: u32,
        open_for: Duration,
        longest: Duration,
    ) -> Self {
        self.reshare(|s| s.breaker = (failures, open_for, longest));
        self
    }

    /// A fresh shared part with one setting changed (settings are made
    /// before the client is used: breaker and counters start over).
    fn reshare(&mut self, change: impl FnOnce(&mut Settings)) {
        let mut settings = self.shared.settings.clone();
        change(&mut settings);
        self.shared = Arc::new(Shared::new(settings));
    }

    /// How many replicas the client knows, and how many of them are up
    /// (calls go only to those; a single address always counts as up).
    pub fn replicas(&self) -> (usize, usize) {
        self.replicas.counts()
    }

    /// How many limiter decisions each source made.
    pub fn decisions(&self) -> DecisionCounts {
        self.shared.state().counts
    }

    /// Whether the local policy has learned `limit`'s parameters yet.
    pub fn knows_limit(&self, limit: &str) -> bool {
        self.shared.state().knows(limit)
    }

    /// Deadline of calls (beyond any wait they ask for); default 5 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often an idempotent call failing with UNAVAILABLE is tried again
    /// (on the next replica); default 3.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// A call's whole deadline: the wait it asks for plus the timeout.
    pub(crate) fn budget(&self, wait: Duration) -> Duration {
        wait + self.timeout
    }

    pub(crate) fn request<T>(&self, message: T, wait: Duration) -> Request<T> {
        let mut request = self.authorized(message);
        request.set_timeout(wait + self.timeout);
        request
    }

    /// Runs `call` through the circuit breaker; an idempotent one again
    /// after 50 ms, 100 ms, … (up to 2 s) while it fails with UNAVAILABLE,
    /// never past `budget` (the call's whole deadline).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        repeat: Repeat,
        budget: Duration,
        mut call: F,
    ) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let breaker = &self.shared.breaker;
        let admitted = match breaker.admit(Instant::now()) {
            Admit::Go { probe } => Admitted {
                breaker,
                probe,
                recorded: false,
            },
            Admit::Refused { next_try_in } => {
                return Err(Status::unavailable(format!(
                    "circuit open: gantry did not answer the last calls; next try in {next_try_in:?}"
                )));
            }
        };
        let retries = if repeat == Repeat::Idempotent {
            self.retries
        } else {
            0
        };
        let deadline = Instant::now() + budget;
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0;
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = tokio::time::timeout(left, call())
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(
                        "no answer within the call's deadline",
                    ))
                });
            match answer {
                Err(status)
                    if status.code() == Code::Unavailable
                        && attempt < retries
                        && Instant::now() + backoff < deadline =>
                {
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => break other,
            }
        };
        admitted.record(match &result {
            Err(status) if unanswered(status.code()) => Outcome::Failed,
            _ => Outcome::Answered,
        });
        result
    }

    pub fn limiter(&self, limit: &str, key: &str) -> Limiter {
        Limiter {
            gantry: self.clone(),
            limit: limit.to_string(),
            key: key.to_string(),
            client: String::new(),
            policy: self.shared.settings.policy,
        }
    }

    pub fn namespace(&self, name: &str) -> Namespace {
        Namespace {
            gantry: self.clone(),
            name: name.to_string(),
        }
    }

    /// Leases `count` units of `pool` for `holder`, waiting fairly up to
    /// `wait`; renews in the background at a third of the TTL until
    /// [`Lease::release`] (or drop, which stops renewing).
    pub async fn lease(
        &self,
        pool: &str,
        holder: &str,
        count: u32,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Lease, Error> {
        let ask = pb::AcquireLeaseRequest {
            pool: pool.into(),
            holder: holder.into(),
            count,
            ttl: (!ttl.is_zero()).then(|| pb_duration(ttl)),
            max_wait: (!wait.is_zero()).then(|| pb_duration(wait)),
        };
        let lease = self
            .call(Repeat::Never, self.budget(wait), || {
                let mut leases = self.leases.clone();
                let request = self.request(ask.clone(), wait);
                async move { leases.acquire(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        if !lease.granted {
            let reason = match lease.denial_reason() {
                pb::DenialReason::PoolFull => Some("the pool is full"),
                pb::DenialReason::HolderLimit => Some("the holder is at the pool's max_per_holder"),
                pb::DenialReason::QueueAhead => Some("callers that came first are waiting"),
                pb::DenialReason::Unspecified => None,
            };
            return Err(Error::NotGranted {
                retry_after: None,
                reason,
            });
        }
        let expires = system_time(lease.expires_at.as_ref());
        let ttl = if ttl.is_zero() {
            expires
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::from_secs(1))
        } else {
            ttl
        };
        let state = Arc::new(Mutex::new(LeaseState { expires }));
        let (lost_tx, lost) = watch::channel(None);
        let renewer = tokio::spawn(renew(
            self.clone(),
            lease.lease_id.clone(),
            ttl,
            state.clone(),
            lost_tx,
        ));
        Ok(Lease {
            gantry: self.clone(),
            id: lease.lease_id,
            count: lease.count,
            state,
            lost,
            renewer: Some(renewer),
        })
    }

    pub fn recorder(&self, service: &str, dialect: &str) -> Recorder {
        Recorder::start(self.clone(), service, dialect)
    }
}

/// A rate-limit answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u64,
    pub retry_after: Duration,
    pub reset_after: Duration,
    pub waited: Duration,
    /// Who decided: gantry, or the failure policy when gantry did not answer.
    pub source: DecisionSource,
    /// Why the policy decided (e.g. "gantry unreachable: …"); empty for gantry's.
    pub reason: String,
}

/// Tokens of one limit for one key, shared by the fleet.
#[derive(Clone, Debug)]
pub struct Limiter {
    gantry: Gantry,
    limit: String,
    key: String,
    client: String,
    policy: FailurePolicy,
}

impl Limiter {
    /// Names this caller, so waiting grants rotate fairly between callers.
    pub fn client(mut self, client: &str) -> Self {
        self.client = client.to_string();
        self
    }

    /// What this limiter answers when gantry does not (the client's unless told).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Takes `tokens` now, or waits up to `wait` in the bucket's fair queue; a
    /// wait that runs out is `allowed = false`, not an error. When gantry does
    /// not answer, the failure policy decides (`source` says so) — not an
    /// error either; a policy's denial is asked again after its retry-after
    /// while `wait` lasts.
    pub async fn acquire(&self, tokens: u64, wait: Duration) -> Result<Decision, Error> {
        let until = Instant::now() + wait;
        loop {
            let d = match self.ask(tokens, wait).await {
                Ok(d) => {
                    if self.policy == FailurePolicy::Local
                        && self
                            .gantry
                            .shared
                            .state()
                            .needs_learning(&self.limit, Instant::now())
                    {
                        tokio::spawn(learn_limits(self.gantry.clone()));
                    }
                    d
                }
                Err(status) if unanswered(status.code()) => self.fallback(tokens, &status),
                Err(status) => return Err(status.into()),
            };
            let shared = &self.gantry.shared;
            shared.state().count(d.source);
            if let Some(hook) = &shared.settings.hook {
                hook(&self.limit, &d);
            }
            if d.allowed
                || d.source == DecisionSource::Server
                || Instant::now() + d.retry_after > until
            {
                return Ok(d);
            }
            tokio::time::sleep(d.retry_after.max(Duration::from_millis(10))).await;
        }
    }

    /// gantry's decision.
    async fn ask(&self, tokens: u64, wait: Duration) -> Result<Decision, Status> {
        let ask = pb::AcquireRequest {
            limit: self.limit.clone(),
            key: self.key.clone(),
            tokens,
            max_wait: (!wait.is_zero()).then(|| pb_duration(wait)),
            client: self.client.clone(),
            ..Default::default()
        };
        let g = &self.gantry;
        // Never repeated: a second Acquire would take tokens twice.
        let r = g
            .call(Repeat::Never, g.budget(wait), || {
                let mut rl = g.rate_limiter.clone();
                let request = g.request(ask.clone(), wait);
                async move { rl.acquire(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(Decision {
            allowed: r.allowed,
            remaining: r.remaining,
            retry_after: std_duration(r.retry_after.as_ref()),
            reset_after: std_duration(r.reset_after.as_ref()),
            waited: std_duration(r.waited.as_ref()),
            source: DecisionSource::Server,
            reason: String::new(),
        })
    }

    /// The failure policy's decision for a call gantry did not answer.
    fn fallback(&self, tokens: u64, status: &Status) -> Decision {
        let shared = &self.gantry.shared;
        let now = Instant::now();
        let cause = format!("{:?}: {}", status.code(), status.message());
        shared.state().fallback(Fallback {
            policy: self.policy,
            limit: &self.limit,
            key: &self.key,
            tokens,
            share: shared.settings.share,
            breaker_wait: shared.breaker.remaining(now),
            cause: &cause,
            now,
        })
    }

    /// One token, waiting up to `wait`; [`Error::NotGranted`] when it runs out
    /// (its reason says when the failure policy denied).
    pub async fn wait(&self, wait: Duration) -> Result<Decision, Error> {
        let d = self.acquire(1, wait).await?;
        if !d.allowed {
            return Err(Error::NotGranted {
                retry_after: Some(d.retry_after),
                reason: match d.source {
                    DecisionSource::FailClosed => Some("fail_closed: gantry unreachable"),
                    DecisionSource::Local => Some("local: the local bucket is empty"),
                    _ => None,
                },
            });
        }
        Ok(d)
    }

    /// Runs `f` once a token is granted.
    pub async fn run<T, Fut: Future<Output = T>>(
        &self,
        wait: Duration,
        f: impl FnOnce() -> Fut,
    ) -> Result<T, Error> {
        self.wait(wait).await?;
        Ok(f().await)
    }
}

/// Asks gantry for the limits' parameters, for the local policy.
async fn learn_limits(gantry: Gantry) {
    let answer = gantry
        .call(Repeat::Idempotent, gantry.budget(Duration::ZERO), || {
            let mut rl = gantry.rate_limiter.clone();
            let request = gantry.request(pb::ListLimitsRequest {}, Duration::ZERO);
            async move { rl.list_limits(request).await.map(|r| r.into_inner()) }
        })
        .await;
    if let Ok(limits) = answer {
        gantry.shared.state().learn(limits);
    }
}

#[derive(Debug)]
struct LeaseState {
    expires: SystemTime,
}

/// Units of a global budget; renewed in the background until released:
/// every third of the TTL, a tenth after a failed renewal. If it cannot be
/// renewed until a tenth of the TTL (50 ms to 5 s) before its expiry, or
/// gantry no longer knows it, it is lost — reported before the units return:
/// [`Lease::lost`], and [`Lease::watch_lost`] for a task to await.
#[derive(Debug)]
pub struct Lease {
    gantry: Gantry,
    pub id: String,
    pub count: u32,
    state: Arc<Mutex<LeaseState>>,
    lost: watch::Receiver<Option<String>>,
    renewer: Option<JoinHandle<()>>,
}

async fn renew(
    gantry: Gantry,
    id: String,
    ttl: Duration,
    state: Arc<Mutex<LeaseState>>,
    lost: watch::Sender<Option<String>>,
) {
    let every = (ttl / 3).max(Duration::from_millis(100));
    let again = (ttl / 10).max(Duration::from_millis(50));
    let margin = lost_margin(ttl);
    let expires = || state.lock().map_or(SystemTime::UNIX_EPOCH, |s| s.expires);
    // Time left before `at`, zero once it passed.
    let until = |at: SystemTime| at.duration_since(SystemTime::now()).unwrap_or_default();
    let mut next = every;
    let mut last_failure = String::from("no renewal was answered");
    loop {
        let lost_at = expires() - margin;
        let before_loss = until(lost_at);
        tokio::time::sleep(next.min(before_loss)).await;
        let before_loss = until(lost_at);
        if before_loss.is_zero() {
            let _ = lost.send(Some(format!(
                "lease {id} not renewed before its expiry: {last_failure}"
            )));
            return;
        }
        // Never past the moment the lease would be reported lost.
        let renewed = gantry
            .call(Repeat::Idempotent, before_loss, || {
                let mut request = gantry.authorized(pb::RenewLeaseRequest {
                    lease_id: id.clone(),
                    ttl: Some(pb_duration(ttl)),
                });
                request.set_timeout(until(lost_at).max(Duration::from_millis(10)));
                let mut leases = gantry.leases.clone();
                async move { leases.renew(request).await.map(|r| r.into_inner()) }
            })
            .await;
        match renewed {
            Ok(lease) => {
                if let Ok(mut s) = state.lock() {
                    s.expires = system_time(lease.expires_at.as_ref());
                }
                next = every;
            }
            Err(status) if status.code() == Code::NotFound => {
                let _ = lost.send(Some(format!("lease {id} is gone: {}", status.message())));
                return;
            }
            Err(status) => {
                last_failure = format!("{:?}: {}", status.code(), status.message());
                next = again;
            }
        }
    }
}

impl Lease {
    pub fn expires_at(&self) -> SystemTime {
        self.state
            .lock()
            .map_or(SystemTime::UNIX_EPOCH, |s| s.expires)
    }

    /// True once the lease is lost: stop using the units.
    pub fn lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// Why the lease was lost (`None` while it is held).
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// A receiver that changes to `Some(reason)` when the lease is lost:
    /// `watch.wait_for(Option::is_some).await` in the task that uses the units.
    pub fn watch_lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    /// Returns the units at once; `released` is false if gantry no longer had them.
    pub async fn release(mut self) -> Result<bool, Error> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        let mut leases = self.gantry.leases.clone();
        let request = self.gantry.request(
            pb::ReleaseLeaseRequest {
                lease_id: self.id.clone(),
            },
            Duration::ZERO,
        );
        Ok(leases.release(request).await?.into_inner().released)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Without release the units return when the TTL runs out.
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

/// One namespace of the shared cache.
#[derive(Clone, Debug)]
pub struct Namespace {
    gantry: Gantry,
    name: String,
}

impl Namespace {
    /// `(value, version)`; `None` for a missing or expired key.
    pub async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>, Error> {
        let g = &self.gantry;
        let ask = pb::GetRequest {
            namespace: self.name.clone(),
            key: key.into(),
        };
        let r = g
            .call(Repeat::Idempotent, g.budget(Duration::ZERO), || {
                let mut cache = g.cache.clone();
                let request = g.request(ask.clone(), Duration::ZERO);
                async move { cache.get(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(r.found.then_some((r.value, r.version)))
    }

    /// Writes `key` (`ttl` zero: no expiry) and returns its version.
    pub async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<u64, Error> {
        let g = &self.gantry;
        let request = pb::PutRequest {
            namespace: self.name.clone(),
            key: key.into(),
            value,
            ttl: (!ttl.is_zero()).then(|| pb_duration(ttl)),
            ..Default::default()
        };
        let r = g
            .call(Repeat::Never, g.budget(Duration::ZERO), || {
                let mut cache = g.cache.clone();
                let request = g.request(request.clone(), Duration::ZERO);
                async move { cache.put(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(r.version)
    }

    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        let g = &self.gantry;
        let request = pb::DeleteRequest {
            namespace: self.name.clone(),
            key: key.into(),
            ..Default::default()
        };
        let r = g
            .call(Repeat::Never, g.budget(Duration::ZERO), || {
                let mut cache = g.cache.clone();
                let request = g.request(request.clone(), Duration::ZERO);
                async move { cache.delete(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(r.deleted)
    }

    /// Keeps up to `max` recently read keys with `prefix` in process, coherent
    /// through Watch (see [`NearCache`]; at most 5 s stale while the stream is
    /// down unless [`NearCache::max_stale`] says otherwise).
    pub fn near_cache(&self, prefix: &str, max: usize) -> NearCache {
        let shared = Arc::new(Mutex::new(Near {
            max_stale: Duration::from_secs(5),
            ..Near::default()
        }));
        let watcher = tokio::spawn(watch(self.clone(), prefix.to_string(), shared.clone()));
        NearCache {
            ns: self.clone(),
            shared,
            max: max.max(1),
            watcher,
        }
    }
}

#[derive(Debug, Default)]
struct Near {
    items: HashMap<String, (Vec<u8>, u64)>,
    /// Bumped by every event: a read that raced one is not kept.
    generation: u64,
    live: bool,
    /// When the stream broke (`None` while live).
    down_since: Option<Instant>,
    max_stale: Duration,
}

impl Near {
    /// The stream is (back) up: start over, anything may have changed.
    fn resync(&mut self) {
        self.generation += 1;
        self.live = true;
        self.down_since = None;
        self.items.clear();
    }

    /// The stream broke: what is held answers for `max_stale` more.
    fn down(&mut self, now: Instant) {
        self.generation += 1;
        if self.live {
            self.live = false;
            self.down_since = Some(now);
        }
        self.expire_stale(now);
    }

    fn expire_stale(&mut self, now: Instant) {
        let stale = self
            .down_since
            .is_none_or(|since| now.saturating_duration_since(since) >= self.max_stale);
        if !self.live && stale {
            self.items.clear();
        }
    }
}

/// Puts, deletes and expiries from any instance update or drop the local
/// copies; a RESYNC clears them. While the stream is down it answers from
/// what it holds for at most its max staleness, then drops it and reads go
/// to gantry; when the stream is back it starts over.
#[derive(Debug)]
pub struct NearCache {
    ns: Namespace,
    shared: Arc<Mutex<Near>>,
    max: usize,
    watcher: JoinHandle<()>,
}

async fn watch(ns: Namespace, prefix: String, shared: Arc<Mutex<Near>>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut cache = ns.gantry.cache.clone();
        let request = pb::WatchRequest {
            namespace: ns.name.clone(),
            key_prefix: prefix.clone(),
            include_values: true,
        };
        // The response (headers) arrives once gantry has subscribed.
        if let Ok(response) = cache.watch(request).await {
            if let Ok(mut near) = shared.lock() {
                near.resync();
            }
            let mut stream = response.into_inner();
            while let Ok(Some(event)) = stream.message().await {
                backoff = Duration::from_millis(50);
                let Ok(mut near) = shared.lock() else { return };
                near.generation += 1;
                match pb::watch_event::Kind::try_from(event.kind) {
                    Ok(pb::watch_event::Kind::Put) => {
                        if let Some(held) = near.items.get_mut(&event.key)
                            && held.1 < event.version
                        {
                            *held = (event.value, event.version);
                        }
                    }
                    Ok(pb::watch_event::Kind::Delete | pb::watch_event::Kind::Expire) => {
                        near.items.remove(&event.key);
                    }
                    Ok(pb::watch_event::Kind::Resync) => near.items.clear(),
                    _ => {}
                }
            }
        }
        if let Ok(mut near) = shared.lock() {
            near.down(Instant::now());
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl NearCache {
    /// How long it answers from what it holds while its Watch stream is down
    /// (it cannot hear of changes then); zero drops everything at once.
    pub fn max_stale(self, max_stale: Duration) -> Self {
        if let Ok(mut near) = self.shared.lock() {
            near.max_stale = max_stale;
        }
        self
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let (generation, live) = {
            let Ok(mut near) = self.shared.lock() else {
                return Ok(self.ns.get(key).await?.map(|(v, _)| v));
            };
            near.expire_stale(Instant::now());
            if let Some((value, _)) = near.items.get(key) {
                return Ok(Some(value.clone()));
            }
            (near.generation, near.live)
        };
        let Some((value, version)) = self.ns.get(key).await? else {
            return Ok(None);
        };
        if live
            && let Ok(mut near) = self.shared.lock()
            && near.generation == generation
            && near.live
        {
            if near.items.len() >= self.max
                && let Some(evict) = near.items.keys().next().cloned()
            {
                near.items.remove(&evict);
            }
            near.items.insert(key.to_string(), (value.clone(), version));
        }
        Ok(Some(value))
    }

    /// Keys held locally.
    pub fn len(&self) -> usize {
        self.shared.lock().map_or(0, |mut near| {
            near.expire_stale(Instant::now());
            near.items.len()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for NearCache {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Sends executed queries to gantry's statistics from a task, in batches by
/// size (500) and time (1 s). `record` never waits: beyond 10,000 pending
/// executions it drops and counts.
#[derive(Debug)]
pub struct Recorder {
    tx: mpsc::Sender<pb::QueryExecution>,
    service: String,
    dialect: String,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<u64>,
}

impl Recorder {
    fn start(gantry: Gantry, service: &str, dialect: &str) -> Self {
        let (tx, mut rx) = mpsc::channel::<pb::QueryExecution>(10_000);
        let task = tokio::spawn(async move {
            let mut failed = 0u64;
            let mut pending = Vec::new();
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                let closed = tokio::select! {
                    item = rx.recv() => match item {
                        Some(e) => { pending.push(e); false }
                        None => true,
                    },
                    _ = ticker.tick() => false,
                };
                if !pending.is_empty() && (closed || pending.len() >= 500 || rx.is_empty()) {
                    let mut query = gantry.query.clone();
                    let request = gantry.request(
                        pb::RecordRequest {
                            executions: std::mem::take(&mut pending),
                        },
                        Duration::ZERO,
                    );
                    let count = request.get_ref().executions.len() as u64;
                    match query.record(request).await {
                        Ok(r) => failed += u64::from(r.get_ref().rejected),
                        Err(_) => failed += count,
                    }
                }
                if closed {
                    return failed;
                }
            }
        });
        Self {
            tx,
            service: service.to_string(),
            dialect: dialect.to_string(),
            dropped: Arc::default(),
            task,
        }
    }

    /// Queues one execution; false (and counted) when the queue is full.
    pub fn record(&self, sql: &str, took: Duration, rows: u64, trace_id: &str) -> bool {
        let execution = pb::QueryExecution {
            sql: sql.to_string(),
            dialect: self.dialect.clone(),
            duration: Some(pb_duration(took)),
            rows,
            service: self.service.clone(),
            trace_id: trace_id.to_string(),
            time: Some(prost_types::Timestamp::from(SystemTime::now())),
            ..Default::default()
        };
        let queued = self.tx.try_send(execution).is_ok();
        if !queued {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        queued
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends what is queued; returns how many executions gantry did not take.
    pub async fn close(self) -> u64 {
        drop(self.tx);
        self.task.await.unwrap_or(0)
    }
}
