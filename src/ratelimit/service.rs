//! `gantry.v1.RateLimiter` over gRPC: converts and validates, then asks the limiter.

use crate::auth::{Area, AuthError, Caller};
use prost::Message;
use tonic::{Request, Response, Status};

use super::coalesce::{Coalescer, OwnedAcquire};
use super::limits::Scope;
use super::{AcquireRequest, Outcome, RateLimiter};
use crate::error::ApiError;
use crate::grpc::{duration_from_pb, duration_to_pb, grpc_timeout, wait_within_deadline};
use crate::proto::gantry::v1 as pb;
use crate::routes::{Answer, Begin, DirectUnary, encode_within};

pub struct RateLimiterService {
    limiter: RateLimiter,
    /// Decides immediate acquisitions and batches in groups (`ratelimit.coalesce`).
    coalescer: Option<Coalescer>,
}

impl RateLimiterService {
    pub fn new(limiter: RateLimiter, coalescer: Option<Coalescer>) -> Self {
        Self { limiter, coalescer }
    }
}

fn decide_batch(
    limiter: &RateLimiter,
    r: &pb::AcquireBatchRequest,
) -> Result<pb::AcquireBatchResponse, ApiError> {
    let reqs = batch_requests(r)?;
    let outcomes = limiter
        .acquire_batch(&reqs, r.all_or_nothing)
        .map_err(ApiError::from)?;
    Ok(batch_response(&reqs, r.all_or_nothing, outcomes))
}

/// Every limit a batch names must be granted (checked before any is
/// looked up, so a refusal says nothing about which limits exist).
fn may_use_all(caller: &Caller, r: &pb::AcquireBatchRequest) -> Result<(), AuthError> {
    r.requests
        .iter()
        .try_for_each(|item| caller.may(Area::RateLimit, &item.limit))
}

/// [`decide_batch`] on whichever backend holds the buckets.
async fn decide_batch_anywhere(
    limiter: &RateLimiter,
    r: &pb::AcquireBatchRequest,
) -> Result<pb::AcquireBatchResponse, ApiError> {
    let reqs = batch_requests(r)?;
    let outcomes = limiter
        .acquire_many(&reqs, r.all_or_nothing)
        .await
        .map_err(ApiError::from)?;
    Ok(batch_response(&reqs, r.all_or_nothing, outcomes))
}

fn batch_requests(r: &pb::AcquireBatchRequest) -> Result<Vec<AcquireRequest<'_>>, ApiError> {
    r.requests
        .iter()
        .enumerate()
        .map(|(i, item)| to_domain(item, Some(i)))
        .collect()
}

fn batch_response(
    reqs: &[AcquireRequest<'_>],
    all_or_nothing: bool,
    outcomes: Vec<Outcome>,
) -> pb::AcquireBatchResponse {
    tracing::debug!(
        items = reqs.len(),
        all_or_nothing,
        allowed = outcomes.iter().filter(|o| o.allowed).count(),
        "ratelimit.acquire_batch"
    );
    pb::AcquireBatchResponse {
        responses: outcomes.into_iter().map(to_pb).collect(),
    }
}

/// Immediate `Acquire` calls, answered by the transport from their request
/// bytes (src/transport/direct.rs) with the same validation, decision and
/// errors as [`RateLimiterService`]'s `acquire`. Calls that may wait go the
/// service path.
pub struct DirectAcquire {
    limiter: RateLimiter,
}

impl DirectAcquire {
    pub fn new(limiter: RateLimiter) -> Self {
        Self { limiter }
    }
}

impl DirectUnary for DirectAcquire {
    fn answer(&self, message: &[u8], begin: Begin<'_>) -> Option<Answer> {
        // Undecodable requests get tonic's own error on the service path.
        let r = pb::AcquireRequest::decode(message).ok()?;
        if r.max_wait.is_some_and(|d| d.seconds != 0 || d.nanos != 0) {
            return None;
        }
        let caller = match begin() {
            Ok(caller) => caller,
            Err(shed) => return Some(Answer::Now(Err(shed))),
        };
        if let Err(denied) = caller.may(Area::RateLimit, &r.limit) {
            return Some(Answer::Now(Err(denied.into())));
        }
        // An AcquireResponse is a few dozen bytes; the message limit is at least 1 KiB.
        if !self.limiter.is_shared() {
            return Some(Answer::Now(
                acquire_now(&self.limiter, &r)
                    .and_then(|answer| encode_within(&answer, usize::MAX)),
            ));
        }
        let limiter = self.limiter.clone();
        Some(Answer::Later(Box::pin(async move {
            let req = to_domain(&r, None)?;
            let outcome = limiter.acquire_now(&req).await.map_err(ApiError::from)?;
            encode_within(&to_pb(outcome), usize::MAX)
        })))
    }
}

/// `AcquireBatch` calls, answered by the transport from their request bytes
/// with the same decisions and errors as the service path (a batch never
/// waits). Decoding from and encoding to plain memory, instead of tonic's
/// buffers, is most of the difference for a batch.
pub struct DirectAcquireBatch {
    limiter: RateLimiter,
    /// The response limit the service path enforces (`server.max_message_bytes`).
    max_message_bytes: usize,
}

impl DirectAcquireBatch {
    pub fn new(limiter: RateLimiter, max_message_bytes: usize) -> Self {
        Self {
            limiter,
            max_message_bytes,
        }
    }
}

impl DirectUnary for DirectAcquireBatch {
    fn answer(&self, message: &[u8], begin: Begin<'_>) -> Option<Answer> {
        let r = pb::AcquireBatchRequest::decode(message).ok()?;
        let caller = match begin() {
            Ok(caller) => caller,
            Err(shed) => return Some(Answer::Now(Err(shed))),
        };
        if let Err(denied) = may_use_all(&caller, &r) {
            return Some(Answer::Now(Err(denied.into())));
        }
        let max = self.max_message_bytes;
        if !self.limiter.is_shared() {
            return Some(Answer::Now(
                decide_batch(&self.limiter, &r)
                    .map_err(Status::from)
                    .and_then(|answer| encode_within(&answer, max)),
            ));
        }
        let limiter = self.limiter.clone();
        Some(Answer::Later(Box::pin(async move {
            let answer = decide_batch_anywhere(&limiter, &r).await?;
            encode_within(&answer, max)
        })))
    }
}

/// An immediate decision (no `max_wait`).
fn acquire_now(
    limiter: &RateLimiter,
    r: &pb::AcquireRequest,
) -> Result<pb::AcquireResponse, Status> {
    let req = to_domain(r, None)?;
    let outcome = limiter.try_acquire(&req).map_err(ApiError::from)?;
    Ok(to_pb(outcome))
}

fn to_pb(o: Outcome) -> pb::AcquireResponse {
    pb::AcquireResponse {
        allowed: o.allowed,
        remaining: o.remaining,
        retry_after: Some(duration_to_pb(o.retry_after)),
        reset_after: Some(duration_to_pb(o.reset_after)),
        limit: o.limit,
        waited: Some(duration_to_pb(o.waited)),
    }
}

/// `item`: the position in a batch, named in errors (`requests[3].max_wait`).
fn to_domain(r: &pb::AcquireRequest, item: Option<usize>) -> Result<AcquireRequest<'_>, ApiError> {
    // The field name is built only for an error: a batch of 100 must not
    // format 100 strings to say nothing went wrong.
    let max_wait = match r.max_wait.as_ref() {
        None => std::time::Duration::ZERO,
        Some(d) => duration_from_pb("max_wait", Some(d)).map_err(|e| match item {
            Some(i) => e.in_item("requests", i),
            None => e,
        })?,
    };
    Ok(AcquireRequest {
        limit: &r.limit,
        key: &r.key,
        tokens: r.tokens,
        max_wait,
        dry_run: r.dry_run,
        client: &r.client,
        params: None,
    })
}

#[tonic::async_trait]
impl pb::rate_limiter_server::RateLimiter for RateLimiterService {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let deadline = grpc_timeout(request.metadata());
        let r = request.get_ref();
        Caller::of(&request)?.may(Area::RateLimit, &r.limit)?;
        let mut req = to_domain(r, None)?;
        // A wait must end in an answer before the caller's deadline does.
        req.max_wait = wait_within_deadline(req.max_wait, deadline);
        if req.max_wait.is_zero()
            && let Some(coalescer) = &self.coalescer
        {
            let r = request.into_inner();
            let outcome = coalescer
                .decide(OwnedAcquire {
                    limit: r.limit,
                    key: r.key,
                    tokens: r.tokens,
                    dry_run: r.dry_run,
                    client: r.client,
                })
                .await
                .map_err(ApiError::from)?;
            return Ok(Response::new(to_pb(outcome)));
        }
        let span = tracing::debug_span!(
            "ratelimit.acquire",
            limit = %r.limit,
            tokens = r.tokens,
            max_wait_ms = req.max_wait.as_millis() as u64,
            dry_run = r.dry_run,
            allowed = tracing::field::Empty,
        );
        let outcome = tracing::Instrument::instrument(self.limiter.acquire(&req), span.clone())
            .await
            .map_err(ApiError::from)?;
        span.record("allowed", outcome.allowed);
        Ok(Response::new(to_pb(outcome)))
    }

    async fn acquire_batch(
        &self,
        request: Request<pb::AcquireBatchRequest>,
    ) -> Result<Response<pb::AcquireBatchResponse>, Status> {
        may_use_all(Caller::of(&request)?, request.get_ref())?;
        let r = request.into_inner();
        let response = match &self.coalescer {
            Some(coalescer) => coalescer
                .run(move |limiter| decide_batch(limiter, &r))
                .await
                .map_err(ApiError::from)??,
            None => decide_batch_anywhere(&self.limiter, &r).await?,
        };
        Ok(Response::new(response))
    }

    async fn inspect_bucket(
        &self,
        request: Request<pb::InspectBucketRequest>,
    ) -> Result<Response<pb::BucketState>, Status> {
        let r = request.get_ref();
        Caller::of(&request)?.may(Area::RateLimit, &r.limit)?;
        let view = self
            .limiter
            .inspect(&r.limit, &r.key)
            .await
            .map_err(ApiError::from)?;
        tracing::debug!(limit = %r.limit, tokens = view.tokens, "ratelimit.inspect_bucket");
        Ok(Response::new(bucket_state(&r.limit, view)))
    }

    async fn hot_keys(
        &self,
        request: Request<pb::HotKeysRequest>,
    ) -> Result<Response<pb::HotKeysResponse>, Status> {
        let r = request.get_ref();
        Caller::of(&request)?.may(Area::RateLimit, &r.limit)?;
        let count = if r.count == 0 { 10 } else { r.count as usize };
        let (views, scanned) = self
            .limiter
            .hottest(&r.limit, count)
            .await
            .map_err(ApiError::from)?;
        tracing::debug!(limit = %r.limit, scanned, listed = views.len(), "ratelimit.hot_keys");
        Ok(Response::new(pb::HotKeysResponse {
            buckets: views
                .into_iter()
                .map(|v| bucket_state(&r.limit, v))
                .collect(),
            scanned: scanned as u64,
        }))
    }

    async fn list_limits(
        &self,
        request: Request<pb::ListLimitsRequest>,
    ) -> Result<Response<pb::ListLimitsResponse>, Status> {
        // Only the limits the caller may use are listed.
        let caller = Caller::of(&request)?;
        let set = self.limiter.limits();
        let limits = set
            .sorted()
            .into_iter()
            .filter(|limit| caller.sees(Area::RateLimit, &limit.name))
            .map(|limit| {
                let mut overrides: Vec<pb::LimitOverride> = limit
                    .overrides
                    .iter()
                    .map(|(key, p)| pb::LimitOverride {
                        key: key.clone(),
                        rate: p.rate,
                        period: Some(duration_to_pb(std::time::Duration::from_nanos(p.period_ns))),
                        burst: p.burst,
                    })
                    .collect();
                overrides.sort_by(|a, b| a.key.cmp(&b.key));
                pb::LimitInfo {
                    name: limit.name.clone(),
                    rate: limit.params.rate,
                    period: Some(duration_to_pb(std::time::Duration::from_nanos(
                        limit.params.period_ns,
                    ))),
                    burst: limit.params.burst,
                    scope: match limit.scope {
                        Scope::PerKey => pb::LimitScope::PerKey,
                        Scope::Shared => pb::LimitScope::Shared,
                    } as i32,
                    overrides,
                }
            })
            .collect();
        Ok(Response::new(pb::ListLimitsResponse {
            limits,
            default_limit: set
                .default_limit()
                .map(|l| l.name.clone())
                .unwrap_or_default(),
        }))
    }
}

/// A bucket as the API shows it.
fn bucket_state(limit: &str, v: super::limiter::inspect::BucketView) -> pb::BucketState {
    pb::BucketState {
        limit: limit.to_string(),
        key: v.key,
        tokens: v.tokens,
        burst: v.burst,
        next_token: v.next_token_in.map(duration_to_pb),
        full_in: Some(duration_to_pb(v.full_in)),
        waiters: u32::try_from(v.waiters).unwrap_or(u32::MAX),
    }
}
