//! A span as gantry stores it, whichever protocol brought it, and the checks
//! every span passes before it is kept. Pure: no gRPC types.

use std::sync::Arc;

use super::attributes::Attributes;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// The service of spans whose sender did not name one (OpenTelemetry's default).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// OTLP's span kinds (unknown numbers become `Unspecified`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SpanKind {
    #[default]
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    /// The number both gantry's proto and OTLP use.
    pub fn from_i32(value: i32) -> Self {
        match value {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }

    pub fn as_i32(self) -> i32 {
        match self {
            SpanKind::Unspecified => 0,
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        }
    }

    /// The label value the Collector's spanmetrics connector uses.
    pub fn label(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "SPAN_KIND_UNSPECIFIED",
            SpanKind::Internal => "SPAN_KIND_INTERNAL",
            SpanKind::Server => "SPAN_KIND_SERVER",
            SpanKind::Client => "SPAN_KIND_CLIENT",
            SpanKind::Producer => "SPAN_KIND_PRODUCER",
            SpanKind::Consumer => "SPAN_KIND_CONSUMER",
        }
    }

    /// Server and consumer spans are where a request enters a service: the
    /// endpoints of the RED metrics (as the Collector's spanmetrics sees them).
    pub fn is_entry(self) -> bool {
        matches!(self, SpanKind::Server | SpanKind::Consumer)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StatusCode {
    #[default]
    Unset,
    Ok,
    Error,
}

impl StatusCode {
    pub fn from_i32(value: i32) -> Self {
        match value {
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }

    pub fn as_i32(self) -> i32 {
        match self {
            StatusCode::Unset => 0,
            StatusCode::Ok => 1,
            StatusCode::Error => 2,
        }
    }

    /// The label value the Collector's spanmetrics connector uses.
    pub fn label(self) -> &'static str {
        match self {
            StatusCode::Unset => "STATUS_CODE_UNSET",
            StatusCode::Ok => "STATUS_CODE_OK",
            StatusCode::Error => "STATUS_CODE_ERROR",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// Shared by the spans of one resource, so a batch stores its name once.
    pub service: Arc<str>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub status: StatusCode,
    pub status_message: String,
    pub attributes: Attributes,
    /// The resource's attributes, shared by the spans of one resource.
    pub resource: Arc<Attributes>,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
}

/// A timed event within a span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub time_unix_nanos: u64,
    pub name: String,
    pub attributes: Attributes,
}

/// A link to another span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub attributes: Attributes,
}

impl Span {
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nanos.saturating_sub(self.start_unix_nanos)
    }

    /// Memory the span holds, estimated from its fields; what `traces.max_bytes` counts.
    pub fn weight(&self) -> usize {
        let events: usize = self
            .events
            .iter()
            .map(|e| std::mem::size_of::<Event>() + e.name.capacity() + e.attributes.heap_bytes())
            .sum();
        let links: usize = self
            .links
            .iter()
            .map(|l| std::mem::size_of::<Link>() + l.attributes.heap_bytes())
            .sum();
        // The resource is shared; each span counts it, so the bound holds
        // whichever of its spans are evicted last.
        std::mem::size_of::<Span>()
            + self.name.capacity()
            + self.status_message.capacity()
            + self.attributes.heap_bytes()
            + self.resource.heap_bytes()
            + events
            + links
    }
}

/// The bounds every span is checked against (from `[traces]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanLimits {
    pub max_name_bytes: usize,
    pub max_attributes: usize,
    pub max_attribute_bytes: usize,
}

impl Default for SpanLimits {
    fn default() -> Self {
        Self {
            max_name_bytes: 1024,
            max_attributes: 128,
            max_attribute_bytes: 16 * 1024,
        }
    }
}

/// Nanoseconds since the Unix epoch as a time a person reads (RFC 3339, UTC).
pub fn unix_time(nanos: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos);
    humantime::format_rfc3339_nanos(at).to_string()
}

/// Why one span was rejected. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    #[error("trace_id must be 16 bytes, got {0}")]
    TraceIdLength(usize),
    #[error("trace_id must not be all zero")]
    TraceIdZero,
    #[error("span_id must be 8 bytes, got {0}")]
    SpanIdLength(usize),
    #[error("span_id must not be all zero")]
    SpanIdZero,
    #[error("parent_span_id must be 8 bytes or empty, got {0}")]
    ParentLength(usize),
    #[error("name is required")]
    MissingName,
    #[error("start time is required")]
    MissingStart,
    #[error("end time is required")]
    MissingEnd,
    #[error("end ({}) is before start ({})", unix_time(*end), unix_time(*start))]
    EndBeforeStart { start: u64, end: u64 },
    #[error("{field} is {len} bytes, more than the {max} allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{count} attributes, more than the {max} allowed")]
    TooManyAttributes { count: usize, max: usize },
    #[error("{count} {what}, more than the {max} allowed (traces.max_attributes)")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("links[{index}]: {reason}")]
    Link { index: usize, reason: String },
    #[error("attribute {key:?} is {len} bytes (key and value), more than the {max} allowed")]
    AttributeTooLong { key: String, len: usize, max: usize },
}

impl SpanError {
    /// A short, bounded label for the rejection counter.
    pub fn reason(&self) -> &'static str {
        match self {
            SpanError::TraceIdLength(_) | SpanError::TraceIdZero => "trace_id",
            SpanError::SpanIdLength(_) | SpanError::SpanIdZero => "span_id",
            SpanError::ParentLength(_) => "parent_span_id",
            SpanError::MissingName => "name",
            SpanError::MissingStart | SpanError::MissingEnd | SpanError::EndBeforeStart { .. } => {
                "time"
            }
            SpanError::TooLong { .. }
            | SpanError::TooManyAttributes { .. }
            | SpanError::TooMany { .. }
            | SpanError::AttributeTooLong { .. } => "too_large",
            SpanError::Link { .. } => "links",
        }
    }
}

/// A link's ids from their wire bytes (the `index`th link of its span).
pub fn parse_link(
    index: usize,
    trace_id: &[u8],
    span_id: &[u8],
) -> Result<(TraceId, SpanId), SpanError> {
    let link = |reason: String| SpanError::Link { index, reason };
    let trace = parse_trace_id(trace_id).map_err(|e| link(e.to_string()))?;
    let span: SpanId = span_id
        .try_into()
        .map_err(|_| link(format!("span_id must be 8 bytes, got {}", span_id.len())))?;
    if span == [0; 8] {
        return Err(link("span_id must not be all zero".into()));
    }
    Ok((trace, span))
}

/// The three ids of a span from their wire bytes.
pub fn parse_ids(
    trace_id: &[u8],
    span_id: &[u8],
    parent: &[u8],
) -> Result<(TraceId, SpanId, Option<SpanId>), SpanError> {
    let trace_id = parse_trace_id(trace_id)?;
    let span_id: SpanId = span_id
        .try_into()
        .map_err(|_| SpanError::SpanIdLength(span_id.len()))?;
    if span_id == [0; 8] {
        return Err(SpanError::SpanIdZero);
    }
    let parent = match parent.len() {
        0 => None,
        // An all-zero parent is how some senders write "no parent".
        8 if parent.iter().all(|b| *b == 0) => None,
        8 => Some(parent.try_into().map_err(|_| SpanError::ParentLength(8))?),
        n => return Err(SpanError::ParentLength(n)),
    };
    Ok((trace_id, span_id, parent))
}

/// A trace id as a caller may send it to GetTrace: 16 bytes; or the 32 hex
/// digits logs and `traceparent` show, sent as text; or those digits in a
/// JSON request (grpcurl), where the proto3 JSON mapping reads a bytes field
/// as base64, so 32 hex digits arrive as 24 bytes whose base64 is those digits.
pub fn trace_id_as_sent(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use base64::Engine;
    let from_hex = |text: &[u8]| hex::decode(text).ok().filter(|id| id.len() == 16);
    let decoded = match bytes.len() {
        32 => from_hex(bytes),
        24 => from_hex(
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .as_bytes(),
        ),
        _ => None,
    };
    decoded.map_or(std::borrow::Cow::Borrowed(bytes), std::borrow::Cow::Owned)
}

pub fn parse_trace_id(bytes: &[u8]) -> Result<TraceId, SpanError> {
    let id: TraceId = bytes
        .try_into()
        .map_err(|_| SpanError::TraceIdLength(bytes.len()))?;
    if id == [0; 16] {
        return Err(SpanError::TraceIdZero);
    }
    Ok(id)
}

/// Checks what the ids cannot: names, times and sizes.
pub fn check(span: &Span, limits: &SpanLimits) -> Result<(), SpanError> {
    if span.name.is_empty() {
        return Err(SpanError::MissingName);
    }
    for (field, len) in [("name", span.name.len()), ("service", span.service.len())] {
        if len > limits.max_name_bytes {
            return Err(SpanError::TooLong {
                field,
                len,
                max: limits.max_name_bytes,
            });
        }
    }
    if span.status_message.len() > limits.max_attribute_bytes {
        return Err(SpanError::TooLong {
            field: "status.message",
            len: span.status_message.len(),
            max: limits.max_attribute_bytes,
        });
    }
    if span.start_unix_nanos == 0 {
        return Err(SpanError::MissingStart);
    }
    if span.end_unix_nanos == 0 {
        return Err(SpanError::MissingEnd);
    }
    if span.end_unix_nanos < span.start_unix_nanos {
        return Err(SpanError::EndBeforeStart {
            start: span.start_unix_nanos,
            end: span.end_unix_nanos,
        });
    }
    if span.attributes.len() > limits.max_attributes {
        return Err(SpanError::TooManyAttributes {
            count: span.attributes.len(),
            max: limits.max_attributes,
        });
    }
    // Events and links: as many as attributes (the SDKs' limits are 128
    // each too); their sizes count in traces.max_bytes.
    for (what, count) in [("events", span.events.len()), ("links", span.links.len())] {
        if count > limits.max_attributes {
            return Err(SpanError::TooMany {
                what,
                count,
                max: limits.max_attributes,
            });
        }
    }
    for (key, value) in span.attributes.iter() {
        let len = key.len() + value.len();
        if len > limits.max_attribute_bytes {
            return Err(SpanError::AttributeTooLong {
                key: key.chars().take(64).collect(),
                len,
                max: limits.max_attribute_bytes,
            });
        }
    }
    Ok(())
}

/// Lower-case hex, as trace ids are written everywhere else.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Parents before children, siblings by start time; spans whose parent is
/// not in the trace (not arrived, or a different trace's) start their own
/// subtree in start order. Never drops a span, even given a parent cycle.
pub fn order_parents_first(spans: Vec<Span>) -> Vec<Span> {
    use std::collections::HashMap;
    let n = spans.len();
    let index: HashMap<SpanId, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span_id, i))
        .collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s.parent_span_id.and_then(|p| index.get(&p)) {
            Some(&p) if p != i => children[p].push(i),
            _ => roots.push(i),
        }
    }
    let by_start = |list: &mut Vec<usize>| {
        list.sort_by_key(|&i| (spans[i].start_unix_nanos, spans[i].span_id));
    };
    by_start(&mut roots);
    children.iter_mut().for_each(by_start);

    let mut order = Vec::with_capacity(n);
    let mut visited = vec![false; n];
    let visit = |start: usize, order: &mut Vec<usize>, visited: &mut Vec<bool>| {
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut visited[i], true) {
                continue;
            }
            order.push(i);
            // Reversed so the earliest child is visited first.
            stack.extend(children[i].iter().rev().copied());
        }
    };
    for &r in &roots {
        visit(r, &mut order, &mut visited);
    }
    // Spans in a parent cycle are reachable from no root: keep them anyway.
    let mut rest: Vec<usize> = (0..n).filter(|&i| !visited[i]).collect();
    by_start(&mut rest);
    for r in rest {
        visit(r, &mut order, &mut visited);
    }
    let mut slots: Vec<Option<Span>> = spans.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

#[cfg(test)]
pub(crate) fn sample(trace: u8, span: u8, parent: Option<u8>, start: u64) -> Span {
    Span {
        trace_id: [trace; 16],
        span_id: [span; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        service: Arc::from("checkout"),
        name: format!("op-{span}"),
        kind: SpanKind::Server,
        start_unix_nanos: start,
        end_unix_nanos: start + 1_000_000,
        status: StatusCode::Unset,
        status_message: String::new(),
        attributes: Attributes::from_pairs([("http.method", "GET")]),
        resource: Arc::default(),
        events: Vec::new(),
        links: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_for_length_and_zero() {
        assert_eq!(
            parse_ids(&[1; 15], &[1; 8], &[]),
            Err(SpanError::TraceIdLength(15))
        );
        assert_eq!(
            parse_ids(&[0; 16], &[1; 8], &[]),
            Err(SpanError::TraceIdZero)
        );
        assert_eq!(
            parse_ids(&[1; 16], &[1; 9], &[]),
            Err(SpanError::SpanIdLength(9))
        );
        assert_eq!(
            parse_ids(&[1; 16], &[0; 8], &[]),
            Err(SpanError::SpanIdZero)
        );
        assert_eq!(
            parse_ids(&[1; 16], &[1; 8], &[2; 4]),
            Err(SpanError::ParentLength(4))
        );
        assert_eq!(
            parse_ids(&[1; 16], &[1; 8], &[0; 8]),
            Ok(([1; 16], [1; 8], None))
        );
        assert_eq!(
            parse_ids(&[1; 16], &[1; 8], &[2; 8]),
            Ok(([1; 16], [1; 8], Some([2; 8])))
        );
    }

    #[test]
    fn names_times_and_sizes_are_checked() {
        let limits = SpanLimits {
            max_name_bytes: 8,
            max_attributes: 2,
            max_attribute_bytes: 16,
        };
        let ok = sample(1, 1, None, 10);
        assert_eq!(check(&ok, &limits), Ok(()));
        let with = |f: &dyn Fn(&mut Span)| {
            let mut s = ok.clone();
            f(&mut s);
            check(&s, &limits).unwrap_err()
        };
        assert_eq!(with(&|s| s.name.clear()), SpanError::MissingName);
        assert_eq!(with(&|s| s.start_unix_nanos = 0), SpanError::MissingStart);
        assert_eq!(with(&|s| s.end_unix_nanos = 0), SpanError::MissingEnd);
        assert_eq!(
            with(&|s| s.end_unix_nanos = 5),
            SpanError::EndBeforeStart { start: 10, end: 5 }
        );
        assert!(matches!(
            with(&|s| s.name = "x".repeat(9)),
            SpanError::TooLong {
                field: "name",
                len: 9,
                max: 8
            }
        ));
        assert!(matches!(
            with(&|s| s.service = Arc::from("y".repeat(9))),
            SpanError::TooLong {
                field: "service",
                ..
            }
        ));
        assert!(matches!(
            with(&|s| s.attributes = Attributes::from_pairs([("a", "b"); 3])),
            SpanError::TooManyAttributes { count: 3, max: 2 }
        ));
        assert!(matches!(
            with(&|s| s.attributes = Attributes::from_pairs([("key", "12345678901234")])),
            SpanError::AttributeTooLong {
                len: 17,
                max: 16,
                ..
            }
        ));
        // A span that takes no time is valid.
        let mut instant = ok.clone();
        instant.end_unix_nanos = instant.start_unix_nanos;
        assert_eq!(check(&instant, &limits), Ok(()));
    }

    #[test]
    fn parents_come_before_children_and_siblings_by_start() {
        // root(1) -> a(2, start 30), b(3, start 20); b -> c(4); orphan 9 -> parent 8 missing.
        let spans = vec![
            sample(1, 4, Some(3), 25),
            sample(1, 2, Some(1), 30),
            sample(1, 9, Some(8), 5),
            sample(1, 3, Some(1), 20),
            sample(1, 1, None, 10),
        ];
        let order: Vec<u8> = order_parents_first(spans)
            .iter()
            .map(|s| s.span_id[0])
            .collect();
        assert_eq!(order, vec![9, 1, 3, 4, 2]);
    }

    #[test]
    fn a_parent_cycle_loses_no_span() {
        let spans = vec![
            sample(1, 1, Some(2), 10),
            sample(1, 2, Some(1), 20),
            sample(1, 3, Some(3), 5),
        ];
        let mut ids: Vec<u8> = order_parents_first(spans)
            .iter()
            .map(|s| s.span_id[0])
            .collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x0a, 0xff, 0x10]), "0aff10");
    }

    #[test]
    fn trace_ids_are_taken_as_people_write_them() {
        let id = hex::decode("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(&*trace_id_as_sent(&id), &id[..], "16 bytes as they are");
        assert_eq!(
            &*trace_id_as_sent(b"4bf92f3577b34da6a3ce929d0e0e4736"),
            &id[..],
            "32 hex digits as text"
        );
        // {"trace_id": "4bf92f35..."} in JSON: base64-decoded to 24 bytes.
        use base64::Engine;
        let json = base64::engine::general_purpose::STANDARD
            .decode("4bf92f3577b34da6a3ce929d0e0e4736")
            .unwrap();
        assert_eq!(json.len(), 24);
        assert_eq!(
            &*trace_id_as_sent(&json),
            &id[..],
            "hex through JSON's base64"
        );
        // Anything else is left for parse_trace_id to refuse.
        assert_eq!(&*trace_id_as_sent(b"short"), b"short");
        assert_eq!(
            parse_trace_id(&trace_id_as_sent(&[1; 24]))
                .unwrap_err()
                .to_string(),
            "trace_id must be 16 bytes, got 24"
        );
    }

    #[test]
    fn times_in_messages_read_as_times() {
        let e = SpanError::EndBeforeStart {
            start: 1_700_000_001_000_000_000,
            end: 1_700_000_000_500_000_000,
        };
        assert_eq!(
            e.to_string(),
            "end (2023-11-14T22:13:20.500000000Z) is before start (2023-11-14T22:13:21.000000000Z)"
        );
    }
}
