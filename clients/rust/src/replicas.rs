//! Several gantry replicas behind one client: each call goes round-robin to
//! a replica that is up; a replica whose connection fails is left out until a
//! background probe reaches it again, as gRPC's `round_robin` picks only
//! among ready subchannels. A `dns:///name:port` target is resolved again
//! every 30 s.
//!
//! Written here rather than tonic's balanced channel: that one (tower's p2c
//! over tonic's reconnecting connection) keeps sending a share of the calls to
//! a replica that refuses connections — the connection reports itself ready
//! and fails the call — so a killed replica would fail calls until it is back.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Request;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint};

use crate::proto::gantry::v1 as pb;
use crate::resilience::unanswered;

/// How often a `dns:///` target is resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Member {
    addr: SocketAddr,
    channel: Channel,
    down: AtomicBool,
}

#[derive(Debug, Default)]
struct Set {
    members: RwLock<Arc<Vec<Arc<Member>>>>,
    next: AtomicUsize,
}

impl Set {
    fn snapshot(&self) -> Arc<Vec<Arc<Member>>> {
        // Only ever replaced whole, so a poisoned lock still holds a whole list.
        self.members
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The next replica that is up, round-robin; when none is, the next one
    /// (the call fails as it would have, and the policy answers). Also
    /// whether it is the only one.
    fn pick(&self) -> Option<(Arc<Member>, bool)> {
        let members = self.snapshot();
        let n = members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &members[(start + i) % n])
            .find(|m| !m.down.load(Ordering::Relaxed))
            .or_else(|| members.get(start % n))
            .map(|m| (m.clone(), n == 1))
    }
}

/// The replicas a client's calls are spread over: a tower `Service` the
/// generated clients run on (cheap to clone).
#[derive(Clone, Debug)]
pub struct Replicas {
    set: Arc<Set>,
}

impl Replicas {
    /// One channel, as it is (no probing: there is nowhere else to go).
    pub fn single(channel: Channel) -> Self {
        let member = Member {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            channel,
            down: AtomicBool::new(false),
        };
        Self::from_members(vec![Arc::new(member)])
    }

    fn from_members(members: Vec<Arc<Member>>) -> Self {
        let set = Set::default();
        *set.members
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(members);
        Self { set: Arc::new(set) }
    }

    /// Lazily connected channels to `addrs`, each from `endpoint(addr)`.
    pub(crate) fn lazy(
        addrs: &[SocketAddr],
        endpoint: &impl Fn(SocketAddr) -> Result<Endpoint, String>,
    ) -> Result<Self, String> {
        if addrs.is_empty() {
            return Err("no address to connect to".into());
        }
        Ok(Self::from_members(members(addrs, endpoint, &[])?))
    }

    /// [`Self::lazy`] over what `host:port` resolves to, resolved again every
    /// 30 s (members kept for addresses that stay).
    pub(crate) fn resolving(
        host_port: String,
        addrs: &[SocketAddr],
        endpoint: impl Fn(SocketAddr) -> Result<Endpoint, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let replicas = Self::lazy(addrs, &endpoint)?;
        let set = Arc::downgrade(&replicas.set);
        tokio::spawn(resolve_again(set, host_port, endpoint));
        Ok(replicas)
    }

    /// How many replicas there are, and how many are up.
    pub fn counts(&self) -> (usize, usize) {
        let members = self.set.snapshot();
        let up = members
            .iter()
            .filter(|m| !m.down.load(Ordering::Relaxed))
            .count();
        (members.len(), up)
    }
}

fn members(
    addrs: &[SocketAddr],
    endpoint: &impl Fn(SocketAddr) -> Result<Endpoint, String>,
    keep: &[Arc<Member>],
) -> Result<Vec<Arc<Member>>, String> {
    addrs
        .iter()
        .map(|&addr| match keep.iter().find(|m| m.addr == addr) {
            Some(kept) => Ok(kept.clone()),
            None => Ok(Arc::new(Member {
                addr,
                channel: endpoint(addr)?.connect_lazy(),
                down: AtomicBool::new(false),
            })),
        })
        .collect()
}

async fn resolve_again(
    set: Weak<Set>,
    host_port: String,
    endpoint: impl Fn(SocketAddr) -> Result<Endpoint, String>,
) {
    loop {
        tokio::time::sleep(RESOLVE_EVERY).await;
        let Ok(found) = tokio::net::lookup_host(host_port.as_str()).await else {
            continue; // DNS hiccup: keep what we have
        };
        let found: Vec<SocketAddr> = found.collect::<HashSet<_>>().into_iter().collect();
        let Some(set) = set.upgrade() else { return };
        let current = set.snapshot();
        let same = found.len() == current.len() && current.iter().all(|m| found.contains(&m.addr));
        if found.is_empty() || same {
            continue;
        }
        if let Ok(next) = members(&found, &endpoint, &current) {
            *set.members
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        }
    }
}

/// Marks `member` down and probes it in the background until it answers.
fn mark_down(member: &Arc<Member>, alone: bool) {
    if alone || member.down.swap(true, Ordering::Relaxed) {
        return; // a single replica is never left out; or a probe already runs
    }
    let member = member.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::time::sleep(backoff).await;
            if Arc::strong_count(&member) == 1 {
                return; // the client is gone
            }
            let mut probe = pb::rate_limiter_client::RateLimiterClient::new(member.channel.clone());
            let mut request = Request::new(pb::ListLimitsRequest {});
            request.set_timeout(Duration::from_secs(1));
            match probe.list_limits(request).await {
                // Any answer (even "unauthenticated") means it is up.
                Err(status) if unanswered(status.code()) => {}
                _ => {
                    member.down.store(false, Ordering::Relaxed);
                    return;
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

impl Service<http::Request<Body>> for Replicas {
    type Response = http::Response<Body>;
    /// A connection's failure as gRPC says it: UNAVAILABLE, naming the
    /// replica (tonic would call a bare transport error UNKNOWN).
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the chosen replica's, awaited in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let set = self.set.clone();
        Box::pin(async move {
            let Some((member, alone)) = set.pick() else {
                // Not made by this module's constructors, which need one.
                let status = tonic::Status::unavailable("no gantry replica to call");
                return Err(Box::new(status) as BoxError);
            };
            let mut channel = member.channel.clone();
            let result = match std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                Ok(()) => channel.call(request).await,
                Err(e) => Err(e),
            };
            let result: Result<_, tonic::transport::Error> = result;
            result.map_err(|e| {
                mark_down(&member, alone);
                let replica = if alone {
                    String::new()
                } else {
                    format!(" (replica {})", member.addr)
                };
                Box::new(tonic::Status::unavailable(format!(
                    "{e}{replica}: {}",
                    source_text(&e)
                ))) as BoxError
            })
        })
    }
}

/// The innermost cause of a transport error ("Connection refused"), which
/// its own text ("transport error") leaves out.
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}
