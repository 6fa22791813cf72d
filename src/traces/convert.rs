//! Between the wire and the domain: gantry's own `Span` message and OTLP's
//! `ResourceSpans` both become [`Span`]s (checked one by one), and stored
//! spans go back out as either.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;

use super::attributes::Attributes;
use super::span::{
    Event, Link, Span, SpanError, SpanKind, SpanLimits, StatusCode, UNKNOWN_SERVICE, check,
    parse_ids, parse_link,
};
use crate::proto::gantry::v1 as pb;

/// The spans of one request: the valid ones, and each rejected span's
/// position in the request with the reason.
#[derive(Debug, Default)]
pub struct Converted {
    pub spans: Vec<Span>,
    pub rejected: Vec<(usize, SpanError)>,
}

impl Converted {
    fn push(&mut self, index: usize, span: Result<Span, SpanError>, limits: &SpanLimits) {
        match span.and_then(|s| check(&s, limits).map(|()| s)) {
            Ok(s) => self.spans.push(s),
            Err(e) => self.rejected.push((index, e)),
        }
    }

    /// One line per rejected span, at most `max` lines (the count says the rest).
    pub fn error_lines(&self, max: usize) -> Vec<String> {
        let mut lines: Vec<String> = self
            .rejected
            .iter()
            .take(max)
            .map(|(i, e)| format!("span {i}: {e}"))
            .collect();
        if self.rejected.len() > max {
            lines.push(format!("… and {} more", self.rejected.len() - max));
        }
        lines
    }
}

fn unix_nanos(t: Option<&prost_types::Timestamp>) -> u64 {
    t.and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        let nanos = u64::try_from(t.nanos).ok()?;
        secs.checked_mul(1_000_000_000)?.checked_add(nanos)
    })
    .unwrap_or(0)
}

fn timestamp(nanos: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (nanos / 1_000_000_000) as i64,
        nanos: (nanos % 1_000_000_000) as i32,
    }
}

/// What both wire formats carry besides the ids and the service.
struct Fields {
    name: String,
    kind: i32,
    start_unix_nanos: u64,
    end_unix_nanos: u64,
    /// Code and message.
    status: (i32, String),
    attributes: Attributes,
    events: Vec<Event>,
    /// Trace id, span id and attributes, as sent.
    links: Vec<(Vec<u8>, Vec<u8>, Attributes)>,
}

/// A span from its wire ids (checked first: `fields` runs only for valid ids).
fn assemble(
    [trace_id, span_id, parent]: [&[u8]; 3],
    service: &Arc<str>,
    resource: &Arc<Attributes>,
    fields: impl FnOnce() -> Fields,
) -> Result<Span, SpanError> {
    let (trace_id, span_id, parent_span_id) = parse_ids(trace_id, span_id, parent)?;
    let f = fields();
    let links = f
        .links
        .into_iter()
        .enumerate()
        .map(|(i, (trace, span, attributes))| {
            let (trace_id, span_id) = parse_link(i, &trace, &span)?;
            Ok(Link {
                trace_id,
                span_id,
                attributes,
            })
        })
        .collect::<Result<Vec<_>, SpanError>>()?;
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        service: service.clone(),
        name: f.name,
        kind: SpanKind::from_i32(f.kind),
        start_unix_nanos: f.start_unix_nanos,
        end_unix_nanos: f.end_unix_nanos,
        status: StatusCode::from_i32(f.status.0),
        status_message: f.status.1,
        attributes: f.attributes,
        resource: resource.clone(),
        events: f.events,
        links,
    })
}

/// The spans of an Ingest request. The service name is shared between
/// consecutive spans of the same service.
pub fn from_gantry(spans: Vec<pb::Span>, limits: &SpanLimits) -> Converted {
    let mut out = Converted {
        spans: Vec::with_capacity(spans.len()),
        rejected: Vec::new(),
    };
    let mut service: Arc<str> = Arc::from(UNKNOWN_SERVICE);
    let mut resource: Arc<Attributes> = Arc::default();
    for (i, s) in spans.into_iter().enumerate() {
        let name = if s.service.is_empty() {
            UNKNOWN_SERVICE
        } else {
            &s.service
        };
        if *service != *name {
            service = Arc::from(name);
        }
        // Consecutive spans of one resource share its attributes.
        let attributes = Attributes::from_pairs(sorted(s.resource_attributes));
        if *resource != attributes {
            resource = Arc::new(attributes);
        }
        let span = assemble(
            [&s.trace_id, &s.span_id, &s.parent_span_id],
            &service,
            &resource,
            || {
                let status = s.status.unwrap_or_default();
                Fields {
                    name: s.name,
                    kind: s.kind,
                    start_unix_nanos: unix_nanos(s.start.as_ref()),
                    end_unix_nanos: unix_nanos(s.end.as_ref()),
                    status: (status.code, status.message),
                    attributes: Attributes::from_pairs(s.attributes),
                    events: s
                        .events
                        .into_iter()
                        .map(|e| Event {
                            time_unix_nanos: unix_nanos(e.time.as_ref()),
                            name: e.name,
                            attributes: Attributes::from_pairs(sorted(e.attributes)),
                        })
                        .collect(),
                    links: s
                        .links
                        .into_iter()
                        .map(|l| {
                            (
                                l.trace_id.to_vec(),
                                l.span_id.to_vec(),
                                Attributes::from_pairs(sorted(l.attributes)),
                            )
                        })
                        .collect(),
                }
            },
        );
        out.push(i, span, limits);
    }
    out
}

/// A map's pairs in key order, so equal maps give equal attributes.
fn sorted(map: HashMap<String, String>) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = map.into_iter().collect();
    pairs.sort();
    pairs
}

fn text_map(attributes: &Attributes) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn to_gantry(span: &Span) -> pb::Span {
    pb::Span {
        trace_id: span.trace_id.to_vec().into(),
        span_id: span.span_id.to_vec().into(),
        parent_span_id: span
            .parent_span_id
            .map(|p| p.to_vec().into())
            .unwrap_or_default(),
        service: span.service.to_string(),
        name: span.name.clone(),
        kind: span.kind.as_i32(),
        start: Some(timestamp(span.start_unix_nanos)),
        end: Some(timestamp(span.end_unix_nanos)),
        status: Some(pb::SpanStatus {
            code: span.status.as_i32(),
            message: span.status_message.clone(),
        }),
        attributes: text_map(&span.attributes),
        resource_attributes: text_map(&span.resource),
        events: span
            .events
            .iter()
            .map(|e| pb::SpanEvent {
                time: Some(timestamp(e.time_unix_nanos)),
                name: e.name.clone(),
                attributes: text_map(&e.attributes),
            })
            .collect(),
        links: span
            .links
            .iter()
            .map(|l| pb::SpanLink {
                trace_id: l.trace_id.to_vec().into(),
                span_id: l.span_id.to_vec().into(),
                attributes: text_map(&l.attributes),
            })
            .collect(),
    }
}

/// The number of spans in an OTLP request, without converting anything.
pub fn otlp_span_count(resource_spans: &[otlp::ResourceSpans]) -> usize {
    resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

fn service_name(resource: Option<&Resource>) -> Option<&str> {
    resource?
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        })
}

/// An attribute value as text: strings as they are, other scalars as
/// written in JSON, bytes in hex, arrays and maps in a JSON-like form.
pub fn value_text(value: Option<AnyValue>) -> String {
    match value.and_then(|v| v.value) {
        None => String::new(),
        Some(Value::StringValue(s)) => s,
        // An index into a profiles string table: meaningless in a trace.
        Some(Value::StringValueStrindex(i)) => format!("strindex:{i}"),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => super::span::hex(&b),
        Some(Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.into_iter().map(|v| value_text(Some(v))).collect();
            format!("[{}]", items.join(","))
        }
        Some(Value::KvlistValue(kv)) => {
            let items: Vec<String> = kv
                .values
                .into_iter()
                .map(|kv| format!("{}:{}", kv.key, value_text(kv.value)))
                .collect();
            format!("{{{}}}", items.join(","))
        }
    }
}

fn otlp_attributes(attributes: Vec<KeyValue>) -> Attributes {
    Attributes::from_pairs(
        attributes
            .into_iter()
            .map(|kv| (kv.key, value_text(kv.value))),
    )
}

/// The spans of an OTLP Export. Strings are moved, not copied.
pub fn from_otlp(resource_spans: Vec<otlp::ResourceSpans>, limits: &SpanLimits) -> Converted {
    let mut out = Converted {
        spans: Vec::with_capacity(otlp_span_count(&resource_spans)),
        rejected: Vec::new(),
    };
    let mut index = 0;
    for rs in resource_spans {
        let service: Arc<str> =
            Arc::from(service_name(rs.resource.as_ref()).unwrap_or(UNKNOWN_SERVICE));
        let resource = Arc::new(otlp_attributes(
            rs.resource.map(|r| r.attributes).unwrap_or_default(),
        ));
        for ss in rs.scope_spans {
            for s in ss.spans {
                let span = assemble(
                    [&s.trace_id, &s.span_id, &s.parent_span_id],
                    &service,
                    &resource,
                    || {
                        let status = s.status.unwrap_or_default();
                        Fields {
                            name: s.name,
                            kind: s.kind,
                            start_unix_nanos: s.start_time_unix_nano,
                            end_unix_nanos: s.end_time_unix_nano,
                            status: (status.code, status.message),
                            attributes: otlp_attributes(s.attributes),
                            events: s
                                .events
                                .into_iter()
                                .map(|e| Event {
                                    time_unix_nanos: e.time_unix_nano,
                                    name: e.name,
                                    attributes: otlp_attributes(e.attributes),
                                })
                                .collect(),
                            links: s
                                .links
                                .into_iter()
                                .map(|l| (l.trace_id, l.span_id, otlp_attributes(l.attributes)))
                                .collect(),
                        }
                    },
                );
                out.push(index, span, limits);
                index += 1;
            }
        }
    }
    out
}

/// Removes the spans at the given positions (sorted, as `from_otlp` reports
/// them) and the scopes and resources left empty: what is forwarded.
pub fn retain_valid(resource_spans: &mut Vec<otlp::ResourceSpans>, rejected: &[usize]) {
    if rejected.is_empty() {
        return;
    }
    let mut index = 0;
    let mut next = rejected.iter().peekable();
    for rs in resource_spans.iter_mut() {
        for ss in rs.scope_spans.iter_mut() {
            ss.spans.retain(|_| {
                let drop = next.peek() == Some(&&index);
                if drop {
                    next.next();
                }
                index += 1;
                !drop
            });
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    resource_spans.retain(|rs| !rs.scope_spans.is_empty());
}

fn string_kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn otlp_kvs(attributes: &Attributes) -> Vec<KeyValue> {
    attributes
        .iter()
        .map(|(k, v)| string_kv(k, v.to_string()))
        .collect()
}

/// Spans (from Ingest) as OTLP, one resource per service and resource
/// attributes, with their events and links.
pub fn to_otlp(spans: Vec<Span>) -> Vec<otlp::ResourceSpans> {
    type Group = (Arc<str>, Arc<Attributes>, Vec<otlp::Span>);
    let mut groups: Vec<Group> = Vec::new();
    for s in spans {
        let position = groups
            .iter()
            .position(|(svc, res, _)| *svc == s.service && *res == s.resource);
        let i = position.unwrap_or_else(|| {
            groups.push((s.service.clone(), s.resource.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[i].2.push(otlp::Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            name: s.name,
            kind: s.kind.as_i32(),
            start_time_unix_nano: s.start_unix_nanos,
            end_time_unix_nano: s.end_unix_nanos,
            attributes: otlp_kvs(&s.attributes),
            events: s
                .events
                .iter()
                .map(|e| otlp::span::Event {
                    time_unix_nano: e.time_unix_nanos,
                    name: e.name.clone(),
                    attributes: otlp_kvs(&e.attributes),
                    ..Default::default()
                })
                .collect(),
            links: s
                .links
                .iter()
                .map(|l| otlp::span::Link {
                    trace_id: l.trace_id.to_vec(),
                    span_id: l.span_id.to_vec(),
                    attributes: otlp_kvs(&l.attributes),
                    ..Default::default()
                })
                .collect(),
            status: Some(otlp::Status {
                code: s.status.as_i32(),
                message: s.status_message,
            }),
            ..Default::default()
        });
    }
    groups
        .into_iter()
        .map(|(service, resource, spans)| {
            let mut attributes = otlp_kvs(&resource);
            if !attributes.iter().any(|kv| kv.key == "service.name") {
                attributes.push(string_kv("service.name", service.to_string()));
            }
            otlp::ResourceSpans {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "gantry.ingest".into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn otlp_span(span: u8, name: &str) -> otlp::Span {
        otlp::Span {
            trace_id: vec![7; 16],
            span_id: vec![span; 8],
            name: name.into(),
            kind: 2,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000,
            attributes: vec![
                KeyValue {
                    key: "http.status_code".into(),
                    value: Some(AnyValue {
                        value: Some(Value::IntValue(200)),
                    }),
                    ..Default::default()
                },
                KeyValue {
                    key: "tags".into(),
                    value: Some(AnyValue {
                        value: Some(Value::ArrayValue(ArrayValue {
                            values: vec![
                                AnyValue {
                                    value: Some(Value::StringValue("a".into())),
                                },
                                AnyValue {
                                    value: Some(Value::BoolValue(true)),
                                },
                            ],
                        })),
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn resource(service: Option<&str>, spans: Vec<otlp::Span>) -> otlp::ResourceSpans {
        otlp::ResourceSpans {
            resource: Some(Resource {
                attributes: service
                    .map(|s| vec![string_kv("service.name", s.into())])
                    .unwrap_or_default(),
                ..Default::default()
            }),
            scope_spans: vec![otlp::ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn otlp_spans_convert_with_service_and_attribute_text() {
        let mut bad = otlp_span(3, "bad");
        bad.end_time_unix_nano = 10;
        let request = vec![
            resource(Some("cart"), vec![otlp_span(1, "GET /cart"), bad]),
            resource(None, vec![otlp_span(2, "")]),
        ];
        let converted = from_otlp(request, &SpanLimits::default());
        assert_eq!(converted.spans.len(), 1);
        let s = &converted.spans[0];
        assert_eq!(&*s.service, "cart");
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(
            s.attributes.iter().collect::<Vec<_>>(),
            vec![("http.status_code", "200"), ("tags", "[a,true]")]
        );
        let reasons: Vec<(usize, &str)> = converted
            .rejected
            .iter()
            .map(|(i, e)| (*i, e.reason()))
            .collect();
        assert_eq!(reasons, vec![(1, "time"), (2, "name")]);
        assert_eq!(
            converted.error_lines(1),
            vec![
                "span 1: end (1970-01-01T00:00:00.000000010Z) is before start (1970-01-01T00:00:00.000001000Z)".to_string(),
                "… and 1 more".to_string()
            ]
        );
    }

    #[test]
    fn kvlists_and_bytes_have_a_text_form() {
        let kv = AnyValue {
            value: Some(Value::KvlistValue(KeyValueList {
                values: vec![string_kv("a", "b".into())],
            })),
        };
        assert_eq!(value_text(Some(kv)), "{a:b}");
        let bytes = AnyValue {
            value: Some(Value::BytesValue(vec![0xab, 0x01])),
        };
        assert_eq!(value_text(Some(bytes)), "ab01");
        assert_eq!(value_text(None), "");
    }

    #[test]
    fn rejected_spans_are_removed_from_what_is_forwarded() {
        let mut request = vec![
            resource(Some("a"), vec![otlp_span(1, "x"), otlp_span(2, "y")]),
            resource(Some("b"), vec![otlp_span(3, "z")]),
        ];
        retain_valid(&mut request, &[1, 2]);
        assert_eq!(request.len(), 1);
        assert_eq!(otlp_span_count(&request), 1);
        assert_eq!(request[0].scope_spans[0].spans[0].name, "x");
    }

    #[test]
    fn ingest_spans_round_trip_through_otlp() {
        let mut span = crate::traces::span::sample(1, 2, Some(1), 10);
        span.status = StatusCode::Error;
        span.status_message = "boom".into();
        span.resource = Arc::new(Attributes::from_pairs([
            ("host.name", "web-1"),
            ("service.name", "checkout"),
        ]));
        span.events = vec![Event {
            time_unix_nanos: 20,
            name: "retry".into(),
            attributes: Attributes::from_pairs([("attempt", "2")]),
        }];
        span.links = vec![Link {
            trace_id: [7; 16],
            span_id: [8; 8],
            attributes: Attributes::from_pairs([("link.reason", "batch")]),
        }];
        let back = from_otlp(to_otlp(vec![span.clone()]), &SpanLimits::default());
        assert!(back.rejected.is_empty());
        assert_eq!(back.spans, vec![span.clone()]);
        let pb = to_gantry(&span);
        let again = from_gantry(vec![pb], &SpanLimits::default());
        assert_eq!(again.spans, vec![span]);
    }

    #[test]
    fn a_link_with_bad_ids_rejects_its_span_naming_the_link() {
        let mut pb = to_gantry(&crate::traces::span::sample(1, 2, None, 10));
        pb.links = vec![pb::SpanLink {
            trace_id: vec![7; 16].into(),
            span_id: vec![8; 3].into(),
            ..Default::default()
        }];
        let out = from_gantry(vec![pb], &SpanLimits::default());
        assert_eq!(
            out.error_lines(10),
            vec!["span 0: links[0]: span_id must be 8 bytes, got 3"]
        );
    }
}
