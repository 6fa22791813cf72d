//! Envoy's `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`:
//! descriptors are mapped to gantry limits by `[[ratelimit.envoy]]` rules
//! (see `descriptors.rs`) and decided by the same buckets as gantry's own API.

use crate::auth::{Area, Caller};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use futures_util::FutureExt;
use prost::Message;
use tonic::{Request, Response, Status};

use super::descriptors::{Action, EnvoyRules};
use super::gcra::Params;
use super::headers::{Announced, headers, next_request_in};
use super::limits::key_with_params;
use super::{AcquireRequest, Outcome, RateLimiter};
use crate::error::ApiError;
use crate::routes::{Answer, Begin, DirectUnary, encode_within};

#[derive(Clone)]
pub struct EnvoyRateLimitService {
    limiter: RateLimiter,
}

impl EnvoyRateLimitService {
    pub fn new(limiter: RateLimiter) -> Self {
        Self { limiter }
    }
}

const UNITS: [(Unit, u64); 4] = [
    (Unit::Second, 1),
    (Unit::Minute, 60),
    (Unit::Hour, 3_600),
    (Unit::Day, 86_400),
];

/// Gantry's `rate per period` as Envoy's `requests_per_unit per unit`: the
/// smallest unit in which the rate is a whole number.
fn as_envoy_limit(name: &str, p: Params) -> RateLimit {
    for (unit, secs) in UNITS {
        let scaled = u128::from(p.rate) * u128::from(secs) * 1_000_000_000;
        if scaled % u128::from(p.period_ns) == 0
            && let Ok(rpu) = u32::try_from(scaled / u128::from(p.period_ns))
            && rpu > 0
        {
            return RateLimit {
                name: name.to_string(),
                requests_per_unit: rpu,
                unit: unit as i32,
            };
        }
    }
    let per_second = (u128::from(p.rate) * 1_000_000_000).div_ceil(u128::from(p.period_ns));
    RateLimit {
        name: name.to_string(),
        requests_per_unit: u32::try_from(per_second).unwrap_or(u32::MAX),
        unit: Unit::Second as i32,
    }
}

fn unit_params(rpu: u32, unit: i32) -> Result<Params, ApiError> {
    let secs = match Unit::try_from(unit) {
        Ok(Unit::Second) => 1,
        Ok(Unit::Minute) => 60,
        Ok(Unit::Hour) => 3_600,
        Ok(Unit::Day) => 86_400,
        Ok(Unit::Week) => 7 * 86_400,
        Ok(Unit::Month) => 30 * 86_400,
        Ok(Unit::Year) => 365 * 86_400,
        _ => {
            return Err(ApiError::invalid(
                "descriptors.limit.unit",
                format!("{unit} is not a known unit"),
            ));
        }
    };
    if rpu == 0 {
        return Err(ApiError::invalid(
            "descriptors.limit.requests_per_unit",
            "must be at least 1, got 0",
        ));
    }
    Ok(Params {
        rate: u64::from(rpu),
        period_ns: secs * 1_000_000_000,
        burst: u64::from(rpu),
    })
}

/// A descriptor's entries as (key, value), without copying.
fn pairs(d: &RateLimitDescriptor) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone + '_ {
    d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()))
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.to_string(),
        value,
        ..Default::default()
    }
}

fn envoy_duration(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

impl EnvoyRateLimitService {
    /// Decides a `ShouldRateLimit` request (the gRPC method, and the
    /// transport's direct call, answer with this).
    pub async fn answer(&self, r: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        if r.domain.is_empty() {
            return Err(ApiError::invalid("domain", "must not be empty").into());
        }
        if r.descriptors.is_empty() {
            return Err(ApiError::invalid("descriptors", "must not be empty").into());
        }
        let max = self.limiter.max_batch();
        if r.descriptors.len() > max {
            return Err(ApiError::invalid(
                "descriptors",
                format!(
                    "{} descriptors exceed the batch limit of {max} (ratelimit.max_batch)",
                    r.descriptors.len()
                ),
            )
            .into());
        }
        // Read the rules and limits once per request, not once per descriptor.
        let rules = self.limiter.envoy_rules();
        let set = self.limiter.limits();
        let request_hits = u64::from(r.hits_addend.max(1));

        let domain = rules.domain(&r.domain);
        // A rule's `replaces` drops the named rules from this request: only
        // a domain that has such a rule looks at every descriptor first.
        let replaced: Vec<&str> = match domain {
            Some(d) if d.has_replaces() => r
                .descriptors
                .iter()
                .filter_map(|descriptor| d.rule(pairs(descriptor)))
                .flat_map(|rule| rule.replaces.iter().map(String::as_str))
                .collect(),
            _ => Vec::new(),
        };

        let mut statuses = Vec::with_capacity(r.descriptors.len());
        // The limit the headers describe: a refusing one, else the one with least left.
        let mut tightest: Option<Announced<'_>> = None;
        let mut over = false;
        for (i, descriptor) in r.descriptors.iter().enumerate() {
            let not_limited = DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            };
            let hits = descriptor
                .hits_addend
                .as_ref()
                .map_or(request_hits, |h| h.value.max(1));
            let rule = match domain.and_then(|d| d.rule(pairs(descriptor))) {
                Some(rule) if !replaced.contains(&rule.label.as_str()) => rule,
                _ => {
                    statuses.push(not_limited);
                    continue;
                }
            };
            let Action::Limit(limit_name) = &rule.action else {
                rule.count(hits, true, u64::MAX, 0);
                statuses.push(not_limited);
                continue;
            };
            let limit_name = limit_name.as_str();
            let base_key = EnvoyRules::bucket_key(&r.domain, pairs(descriptor));
            let explicit = match &descriptor.limit {
                Some(o) => Some(unit_params(o.requests_per_unit, o.unit)?),
                None => None,
            };
            let key = match explicit {
                Some(p) => key_with_params(&base_key, p),
                None => base_key,
            };
            let req = AcquireRequest {
                limit: limit_name,
                key: &key,
                tokens: hits,
                params: explicit,
                ..Default::default()
            };
            let params = explicit.or_else(|| {
                set.by_name(limit_name)
                    .map(|l| l.params_for(l.bucket_key(&key)))
            });
            let Some(params) = params else {
                return Err(ApiError::NotFound {
                    kind: "limit",
                    name: limit_name.to_string(),
                }
                .into());
            };
            let outcome = if descriptor.is_negative_hits {
                self.limiter.give_back_now(&req).await
            } else if hits > params.burst {
                // More hits than the bucket holds can never fit: over limit, not an error.
                self.limiter
                    .acquire_now(&AcquireRequest {
                        dry_run: true,
                        tokens: 1,
                        ..req
                    })
                    .await
                    .map(|o| Outcome {
                        allowed: false,
                        ..o
                    })
            } else {
                self.limiter.acquire_now(&req).await
            }
            .map_err(|e| {
                let api = ApiError::from(e);
                Status::new(api.code(), format!("descriptors[{i}]: {api}"))
            })?;
            if !descriptor.is_negative_hits {
                rule.count(hits, outcome.allowed, outcome.remaining, params.burst);
            }
            // Shadow mode: decided and counted above, never denied.
            let denied = !outcome.allowed && !rule.shadow_mode;
            over |= denied;
            let next_in = next_request_in(
                params,
                hits,
                outcome.allowed,
                outcome.retry_after,
                outcome.reset_after,
            );
            statuses.push(DescriptorStatus {
                code: if denied { Code::OverLimit } else { Code::Ok } as i32,
                current_limit: Some(as_envoy_limit(limit_name, params)),
                limit_remaining: u32::try_from(outcome.remaining).unwrap_or(u32::MAX),
                duration_until_reset: Some(envoy_duration(next_in)),
                ..Default::default()
            });
            let candidate = Announced {
                limit: limit_name,
                params,
                remaining: outcome.remaining,
                next_in,
                over: denied,
            };
            let tighter = |t: &Announced<'_>| {
                (denied, std::cmp::Reverse(outcome.remaining))
                    > (t.over, std::cmp::Reverse(t.remaining))
            };
            if !rule.shadow_mode && tightest.as_ref().is_none_or(tighter) {
                tightest = Some(candidate);
            }
        }

        let response_headers_to_add = tightest
            .map(|t| headers(self.limiter.envoy_response_headers(), &t))
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| header(key, value))
            .collect();
        tracing::debug!(domain = %r.domain, descriptors = r.descriptors.len(), over, "envoy.should_rate_limit");
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            response_headers_to_add,
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl RateLimitService for EnvoyRateLimitService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        // The policy grants Envoy's domains as rate-limit names.
        Caller::of(&request)?.may(Area::RateLimit, &request.get_ref().domain)?;
        self.answer(request.get_ref()).await.map(Response::new)
    }
}

/// `ShouldRateLimit` answered by the transport from its request bytes, with
/// the same decisions and errors as the gRPC method.
pub struct DirectShouldRateLimit {
    service: EnvoyRateLimitService,
    max_message_bytes: usize,
}

impl DirectShouldRateLimit {
    pub fn new(limiter: RateLimiter, max_message_bytes: usize) -> Self {
        Self {
            service: EnvoyRateLimitService::new(limiter),
            max_message_bytes,
        }
    }
}

impl DirectUnary for DirectShouldRateLimit {
    fn answer(&self, message: &[u8], begin: Begin<'_>) -> Option<Answer> {
        let r = RateLimitRequest::decode(message).ok()?;
        let caller = match begin() {
            Ok(caller) => caller,
            Err(shed) => return Some(Answer::Now(Err(shed))),
        };
        if let Err(denied) = caller.may(Area::RateLimit, &r.domain) {
            return Some(Answer::Now(Err(denied.into())));
        }
        let max = self.max_message_bytes;
        if self.service.limiter.is_shared() {
            // Decided in Redis: the answer follows when it replies.
            let service = self.service.clone();
            return Some(Answer::Later(Box::pin(async move {
                let answer = service.answer(&r).await?;
                encode_within(&answer, max)
            })));
        }
        // Embedded buckets never wait: the answer is ready at the first poll.
        let answer = self.service.answer(&r).now_or_never().unwrap_or_else(|| {
            Err(Status::internal(
                "ShouldRateLimit answered directly would have had to wait",
            ))
        });
        Some(Answer::Now(
            answer.and_then(|answer| encode_within(&answer, max)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_expressed_in_the_smallest_whole_unit() {
        // (rate, period in seconds) -> (requests per unit, unit)
        let cases = [
            ((100, 1), (100, Unit::Second)),
            ((10, 6), (100, Unit::Minute)),
            ((1, 3_600), (1, Unit::Hour)),
            ((3, 86_400), (3, Unit::Day)),
        ];
        for ((rate, secs), (rpu, unit)) in cases {
            let p = Params {
                rate,
                period_ns: secs * 1_000_000_000,
                burst: rate,
            };
            let limit = as_envoy_limit("a", p);
            assert_eq!(
                (limit.requests_per_unit, limit.unit),
                (rpu, unit as i32),
                "{rate}/{secs}s"
            );
        }
    }

    #[test]
    fn overrides_become_parameters() {
        let p = unit_params(5, Unit::Minute as i32).unwrap();
        assert_eq!(
            p,
            Params {
                rate: 5,
                period_ns: 60_000_000_000,
                burst: 5
            }
        );
        assert!(unit_params(0, Unit::Second as i32).is_err());
        assert!(unit_params(5, 0).is_err());
    }
}
