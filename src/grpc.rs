//! Conversions shared by the gRPC adapters: protobuf durations, and the
//! caller's deadline from the `grpc-timeout` header.

use std::time::Duration;

use crate::error::FieldError;

/// The largest `google.protobuf.Duration` (±10,000 years), in seconds.
pub const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

/// A protobuf duration as a std one; unset is zero, negative and beyond
/// protobuf's range are refused.
pub fn duration_from_pb(
    field: &str,
    value: Option<&prost_types::Duration>,
) -> Result<Duration, FieldError> {
    let Some(d) = value else {
        return Ok(Duration::ZERO);
    };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(FieldError::new(
            field,
            format!("must not be negative, got {}s {}ns", d.seconds, d.nanos),
        ));
    }
    if d.seconds > MAX_DURATION_SECONDS {
        return Err(FieldError::new(
            field,
            format!(
                "{}s is beyond protobuf's Duration range (at most {MAX_DURATION_SECONDS}s, about 10,000 years)",
                d.seconds
            ),
        ));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(FieldError::new(
            field,
            format!("nanos must be below 1000000000, got {}", d.nanos),
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

pub fn duration_to_pb(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// The caller's deadline, from `grpc-timeout` (`<digits><unit>`, unit one of H M S m u n).
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value (`100m`, `5S`, …) as a duration.
pub fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// How long a call may wait so that it still answers before the caller's
/// deadline: a wait that runs out must be an answer (`allowed = false`), not
/// DEADLINE_EXCEEDED. Keeps a margin of 5% of the deadline, 2 ms to 50 ms.
pub fn wait_within_deadline(max_wait: Duration, deadline: Option<Duration>) -> Duration {
    match deadline {
        None => max_wait,
        Some(deadline) => {
            let margin = (deadline / 20).clamp(Duration::from_millis(2), Duration::from_millis(50));
            max_wait.min(deadline.saturating_sub(margin))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_convert_and_negative_ones_are_refused() {
        let ok = prost_types::Duration {
            seconds: 1,
            nanos: 500,
        };
        assert_eq!(
            duration_from_pb("max_wait", Some(&ok)).unwrap(),
            Duration::new(1, 500)
        );
        assert_eq!(duration_from_pb("max_wait", None).unwrap(), Duration::ZERO);
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        let err = duration_from_pb("max_wait", Some(&negative)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "max_wait: must not be negative, got -1s 0ns"
        );
        assert_eq!(
            duration_to_pb(Duration::from_millis(1500)),
            prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            }
        );
    }

    #[test]
    fn grpc_timeout_units_parse() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&md), None);
        for (raw, expected) in [
            ("2S", Duration::from_secs(2)),
            ("150m", Duration::from_millis(150)),
            ("1H", Duration::from_secs(3600)),
            ("7u", Duration::from_micros(7)),
        ] {
            md.insert("grpc-timeout", raw.parse().unwrap());
            assert_eq!(grpc_timeout(&md), Some(expected), "{raw}");
        }
        md.insert("grpc-timeout", "12x".parse().unwrap());
        assert_eq!(grpc_timeout(&md), None);
    }

    #[test]
    fn waits_end_before_the_deadline() {
        assert_eq!(
            wait_within_deadline(Duration::from_secs(5), None),
            Duration::from_secs(5)
        );
        assert_eq!(
            wait_within_deadline(Duration::from_secs(5), Some(Duration::from_secs(1))),
            Duration::from_millis(950)
        );
        assert_eq!(
            wait_within_deadline(Duration::from_millis(10), Some(Duration::from_secs(1))),
            Duration::from_millis(10)
        );
        assert_eq!(
            wait_within_deadline(Duration::from_secs(1), Some(Duration::from_millis(1))),
            Duration::ZERO
        );
    }
}
