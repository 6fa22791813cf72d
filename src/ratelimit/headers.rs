//! The rate-limit headers gantry asks Envoy to add to its responses
//! (`[ratelimit] envoy_response_headers`), from the tightest limit of a
//! request: the configured quota and window, what is left, and the time until
//! the next request can succeed — a GCRA bucket has no window that "resets",
//! so that is the honest meaning of a reset.

use std::time::Duration;

use super::gcra::Params;
use crate::config::EnvoyResponseHeaders;

/// The limit that the headers describe, as one descriptor's decision left it.
#[derive(Debug, Clone, Copy)]
pub struct Announced<'a> {
    pub limit: &'a str,
    pub params: Params,
    pub remaining: u64,
    /// How long until a request like this one would be allowed.
    pub next_in: Duration,
    /// The request was refused (a 429 follows).
    pub over: bool,
}

/// The configured quota and its window in whole seconds: `rate` per
/// `period`, or per second when the period is not a whole number of seconds.
pub fn quota_and_window(p: Params) -> (u64, u64) {
    const SECOND: u64 = 1_000_000_000;
    if p.period_ns.is_multiple_of(SECOND) {
        return (p.rate, p.period_ns / SECOND);
    }
    let per_second = (u128::from(p.rate) * u128::from(SECOND)).div_ceil(u128::from(p.period_ns));
    (u64::try_from(per_second).unwrap_or(u64::MAX), 1)
}

/// How long until `hits` tokens fit again. A refusal says so itself
/// (`retry_after`); after an allowed decision the bucket is `reset_after`
/// from full, and `hits` fit once it is within `burst - hits` emission
/// intervals of full (the GCRA condition).
pub fn next_request_in(
    params: Params,
    hits: u64,
    allowed: bool,
    retry_after: Duration,
    reset_after: Duration,
) -> Duration {
    if !allowed {
        return retry_after;
    }
    let interval_ns = u128::from(params.period_ns) / u128::from(params.rate.max(1));
    let room_ns = interval_ns * u128::from(params.burst.saturating_sub(hits.max(1)));
    let wait_ns = reset_after.as_nanos().saturating_sub(room_ns);
    Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX))
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// An sf-string (RFC 8941) for the policy name: printable ASCII, with `"`
/// and `\` escaped; anything else becomes `_`.
fn sf_string(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

/// The headers in the chosen format (none when `Off`).
pub fn headers(format: EnvoyResponseHeaders, a: &Announced<'_>) -> Vec<(&'static str, String)> {
    let (quota, window) = quota_and_window(a.params);
    let reset = whole_seconds(a.next_in);
    let mut out = match format {
        EnvoyResponseHeaders::Off => return Vec::new(),
        // draft-03: the first value is the most a client may send at once
        // (the burst), then the policy: quota per window.
        EnvoyResponseHeaders::Draft03 => vec![
            (
                "X-RateLimit-Limit",
                format!("{}, {quota};w={window}", a.params.burst),
            ),
            ("X-RateLimit-Remaining", a.remaining.to_string()),
            ("X-RateLimit-Reset", reset.to_string()),
        ],
        EnvoyResponseHeaders::Ietf => {
            let name = sf_string(a.limit);
            vec![
                ("RateLimit-Policy", format!("{name};q={quota};w={window}")),
                ("RateLimit", format!("{name};r={};t={reset}", a.remaining)),
            ]
        }
    };
    if a.over {
        out.push(("Retry-After", reset.max(1).to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn five_per_ten_seconds() -> Params {
        Params {
            rate: 5,
            period_ns: 10_000_000_000,
            burst: 5,
        }
    }

    #[test]
    fn the_configured_quota_and_window_are_announced() {
        assert_eq!(quota_and_window(five_per_ten_seconds()), (5, 10));
        let half_second = Params {
            rate: 3,
            period_ns: 500_000_000,
            burst: 3,
        };
        assert_eq!(quota_and_window(half_second), (6, 1));
    }

    #[test]
    fn a_refusal_announces_when_one_token_returns_not_when_the_bucket_is_full() {
        let a = Announced {
            limit: "per-ip",
            params: five_per_ten_seconds(),
            remaining: 0,
            next_in: Duration::from_millis(1_900),
            over: true,
        };
        assert_eq!(
            headers(EnvoyResponseHeaders::Draft03, &a),
            vec![
                ("X-RateLimit-Limit", "5, 5;w=10".to_string()),
                ("X-RateLimit-Remaining", "0".to_string()),
                ("X-RateLimit-Reset", "2".to_string()),
                ("Retry-After", "2".to_string()),
            ]
        );
        assert_eq!(
            headers(EnvoyResponseHeaders::Ietf, &a),
            vec![
                ("RateLimit-Policy", "\"per-ip\";q=5;w=10".to_string()),
                ("RateLimit", "\"per-ip\";r=0;t=2".to_string()),
                ("Retry-After", "2".to_string()),
            ]
        );
        assert!(headers(EnvoyResponseHeaders::Off, &a).is_empty());
    }

    #[test]
    fn the_next_request_waits_only_when_the_bucket_cannot_hold_it() {
        let p = five_per_ten_seconds(); // one token every 2 s
        // Just spent the fourth token: 8 s from full, one token still left.
        let full_in = Duration::from_secs(8);
        assert_eq!(
            next_request_in(p, 1, true, Duration::ZERO, full_in),
            Duration::ZERO
        );
        // Spent the fifth: 10 s from full, the next token in 2 s.
        let full_in = Duration::from_secs(10);
        assert_eq!(
            next_request_in(p, 1, true, Duration::ZERO, full_in),
            Duration::from_secs(2)
        );
        // Two at once need 4 s then.
        assert_eq!(
            next_request_in(p, 2, true, Duration::ZERO, full_in),
            Duration::from_secs(4)
        );
        // A refusal carries its own retry_after.
        let retry = Duration::from_millis(1_500);
        assert_eq!(next_request_in(p, 1, false, retry, full_in), retry);
    }

    #[test]
    fn policy_names_are_valid_structured_field_strings() {
        assert_eq!(sf_string("a\"b\\c é"), "\"a\\\"b\\\\c _\"");
    }
}
