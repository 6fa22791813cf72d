//! Helpers over the generated clients, as a service uses gantry: one
//! connection, calls retried with backoff on UNAVAILABLE, a default
//! deadline, a rate limiter that waits its turn, a lease that renews itself,
//! a near cache kept coherent through Watch, and a background query recorder.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::connect::{ConnectError, Tls, connect_with};
use crate::proto::gantry::v1 as pb;

type RateLimiterClient = pb::rate_limiter_client::RateLimiterClient<Channel>;
type CacheClient = pb::cache_client::CacheClient<Channel>;
type QueryClient = pb::query_analyzer_client::QueryAnalyzerClient<Channel>;
type LeasesClient = pb::leases_client::LeasesClient<Channel>;
type TracesClient = pb::traces_client::TracesClient<Channel>;

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
    /// Connects to `addr` (`host:port`), waiting up to `patience` for it to listen.
    pub async fn connect(addr: &str, patience: Duration) -> Result<Self, Error> {
        let channel = connect_with(addr, patience, None).await?;
        Ok(Self::from_channel(channel))
    }

    /// [`Self::connect`] over TLS (mutual when `tls` has a client
    /// certificate); add a token with [`Self::with_token`].
    pub async fn connect_tls(addr: &str, patience: Duration, tls: &Tls) -> Result<Self, Error> {
        let channel = connect_with(addr, patience, Some(tls)).await?;
        Ok(Self::from_channel(channel))
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

    pub fn from_channel(channel: Channel) -> Self {
        Self {
            rate_limiter: RateLimiterClient::new(channel.clone()),
            cache: CacheClient::new(channel.clone()),
            query: QueryClient::new(channel.clone()),
            leases: LeasesClient::new(channel.clone()),
            traces: TracesClient::new(channel),
            timeout: Duration::from_secs(5),
            retries: 3,
            token: None,
        }
    }

    /// Deadline of calls (beyond any wait they ask for); default 5 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often a call failing with UNAVAILABLE is tried again; default 3.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    pub(crate) fn request<T>(&self, message: T, wait: Duration) -> Request<T> {
        let mut request = self.authorized(message);
        request.set_timeout(wait + self.timeout);
        request
    }

    /// Runs `call`, again after 50 ms, 100 ms, … (up to 2 s) while it fails with UNAVAILABLE.
    pub(crate) async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            match call().await {
                Err(status) if status.code() == Code::Unavailable && attempt < self.retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    pub fn limiter(&self, limit: &str, key: &str) -> Limiter {
        Limiter {
            gantry: self.clone(),
            limit: limit.to_string(),
            key: key.to_string(),
            client: String::new(),
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
            .retry(|| {
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
        let state = Arc::new(Mutex::new(LeaseState {
            expires,
            lost: false,
        }));
        let renewer = tokio::spawn(renew(
            self.clone(),
            lease.lease_id.clone(),
            ttl,
            state.clone(),
        ));
        Ok(Lease {
            gantry: self.clone(),
            id: lease.lease_id,
            count: lease.count,
            state,
            renewer: Some(renewer),
        })
    }

    pub fn recorder(&self, service: &str, dialect: &str) -> Recorder {
        Recorder::start(self.clone(), service, dialect)
    }
}

/// A rate-limit answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u64,
    pub retry_after: Duration,
    pub reset_after: Duration,
    pub waited: Duration,
}

/// Tokens of one limit for one key, shared by the fleet.
#[derive(Clone, Debug)]
pub struct Limiter {
    gantry: Gantry,
    limit: String,
    key: String,
    client: String,
}

impl Limiter {
    /// Names this caller, so waiting grants rotate fairly between callers.
    pub fn client(mut self, client: &str) -> Self {
        self.client = client.to_string();
        self
    }

    /// Takes `tokens` now, or waits up to `wait` in the bucket's fair queue; a
    /// wait that runs out is `allowed = false`, not an error.
    pub async fn acquire(&self, tokens: u64, wait: Duration) -> Result<Decision, Error> {
        let ask = pb::AcquireRequest {
            limit: self.limit.clone(),
            key: self.key.clone(),
            tokens,
            max_wait: (!wait.is_zero()).then(|| pb_duration(wait)),
            client: self.client.clone(),
            ..Default::default()
        };
        let g = &self.gantry;
        let r = g
            .retry(|| {
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
        })
    }

    /// One token, waiting up to `wait`; [`Error::NotGranted`] when it runs out.
    pub async fn wait(&self, wait: Duration) -> Result<Decision, Error> {
        let d = self.acquire(1, wait).await?;
        if !d.allowed {
            return Err(Error::NotGranted {
                retry_after: Some(d.retry_after),
                reason: None,
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

#[derive(Debug)]
struct LeaseState {
    expires: SystemTime,
    lost: bool,
}

/// Units of a global budget; renewed in the background until released.
#[derive(Debug)]
pub struct Lease {
    gantry: Gantry,
    pub id: String,
    pub count: u32,
    state: Arc<Mutex<LeaseState>>,
    renewer: Option<JoinHandle<()>>,
}

async fn renew(gantry: Gantry, id: String, ttl: Duration, state: Arc<Mutex<LeaseState>>) {
    let every = (ttl / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let mut leases = gantry.leases.clone();
        let mut request = gantry.authorized(pb::RenewLeaseRequest {
            lease_id: id.clone(),
            ttl: Some(pb_duration(ttl)),
        });
        request.set_timeout(every);
        let renewed = leases.renew(request).await;
        let Ok(mut s) = state.lock() else { return };
        match renewed {
            Ok(lease) => s.expires = system_time(lease.get_ref().expires_at.as_ref()),
            Err(status) if status.code() == Code::NotFound || SystemTime::now() > s.expires => {
                s.lost = true;
                return;
            }
            Err(_) => {}
        }
    }
}

impl Lease {
    pub fn expires_at(&self) -> SystemTime {
        self.state
            .lock()
            .map_or(SystemTime::UNIX_EPOCH, |s| s.expires)
    }

    /// True once a renewal failed for good: stop using the units.
    pub fn lost(&self) -> bool {
        self.state.lock().map_or(true, |s| s.lost)
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
            .retry(|| {
                let mut cache = g.cache.clone();
                let request = g.request(ask.clone(), Duration::ZERO);
                async move { cache.get(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(r.found.then_some((r.value, r.version)))
    }

    /// Writes `key` (`ttl` zero: no expiry) and returns its version.
    pub async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<u64, Error> {
        let mut cache = self.gantry.cache.clone();
        let request = self.gantry.request(
            pb::PutRequest {
                namespace: self.name.clone(),
                key: key.into(),
                value,
                ttl: (!ttl.is_zero()).then(|| pb_duration(ttl)),
                ..Default::default()
            },
            Duration::ZERO,
        );
        Ok(cache.put(request).await?.into_inner().version)
    }

    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        let mut cache = self.gantry.cache.clone();
        let request = self.gantry.request(
            pb::DeleteRequest {
                namespace: self.name.clone(),
                key: key.into(),
                ..Default::default()
            },
            Duration::ZERO,
        );
        Ok(cache.delete(request).await?.into_inner().deleted)
    }

    /// Keeps up to `max` recently read keys with `prefix` in process, coherent
    /// through Watch (see [`NearCache`]).
    pub fn near_cache(&self, prefix: &str, max: usize) -> NearCache {
        let shared = Arc::new(Mutex::new(Near::default()));
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
}

impl Near {
    fn reset(&mut self, live: bool) {
        self.generation += 1;
        self.live = live;
        self.items.clear();
    }
}

/// Puts, deletes and expiries from any instance update or drop the local
/// copies; a RESYNC or a broken stream clears them, and reads go to gantry
/// until the stream is back.
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
                near.reset(true);
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
            near.reset(false);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl NearCache {
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let (generation, live) = {
            let Ok(near) = self.shared.lock() else {
                return Ok(self.ns.get(key).await?.map(|(v, _)| v));
            };
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
        self.shared.lock().map_or(0, |n| n.items.len())
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
