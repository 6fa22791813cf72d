//! RPC answers as JSON: protobuf's canonical JSON mapping (enum names,
//! `"1.5s"` durations, RFC 3339 timestamps), with the proto's own field
//! names and 64-bit numbers as numbers, so the page reads the very messages
//! the RPCs return. The descriptors are build.rs's encoded set.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Value, json};

fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(crate::server::FILE_DESCRIPTOR_SET).ok())
        .as_ref()
}

/// The page's mapping: every field present (zeros included, so a counter
/// that is still 0 is shown as 0), proto field names, u64 as JSON numbers
/// (counts stay far below 2^53).
const OPTIONS: SerializeOptions = SerializeOptions::new()
    .stringify_64_bit_integers(false)
    .use_proto_field_name(true)
    .skip_default_fields(false);

/// `message` (of the proto type `full_name`, e.g. `gantry.v1.CacheStats`)
/// as JSON; a type missing from the descriptors gives `{"error": …}`.
pub fn message<M: prost::Message>(full_name: &str, message: &M) -> Value {
    let Some(descriptor) = pool().and_then(|p| p.get_message_by_name(full_name)) else {
        return error_value("INTERNAL", &format!("no descriptor for {full_name}"));
    };
    let encoded = message.encode_to_vec();
    match DynamicMessage::decode(descriptor, encoded.as_slice()) {
        Ok(dynamic) => dynamic
            .serialize_with_options(serde_json::value::Serializer, &OPTIONS)
            .unwrap_or_else(|e| error_value("INTERNAL", &e.to_string())),
        Err(e) => error_value("INTERNAL", &e.to_string()),
    }
}

/// An RPC's answer: its message as JSON, or `{"error": {code, message}}`
/// when it failed (e.g. UNAVAILABLE while Redis is down), so one failing
/// section does not blank the page.
pub fn answer<M: prost::Message>(
    full_name: &str,
    result: Result<tonic::Response<M>, tonic::Status>,
) -> Value {
    match result {
        Ok(response) => message(full_name, response.get_ref()),
        Err(status) => status_value(&status),
    }
}

/// A failed call as the page shows it.
pub fn status_value(status: &tonic::Status) -> Value {
    error_value(
        crate::telemetry::metrics::code_label(status.code()),
        status.message(),
    )
}

pub fn error_value(code: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::gantry::v1 as pb;

    #[test]
    fn a_message_maps_with_proto_names_enum_names_durations_and_zeros() {
        let info = pb::LimitInfo {
            name: "api".into(),
            rate: 100,
            period: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            burst: 0,
            scope: pb::LimitScope::Shared as i32,
            overrides: vec![],
        };
        let value = message("gantry.v1.LimitInfo", &info);
        assert_eq!(value["name"], "api");
        assert_eq!(value["rate"], 100, "u64 as a number: {value}");
        assert_eq!(value["burst"], 0, "zeros are present: {value}");
        assert_eq!(value["period"], "1.500s");
        assert_eq!(value["scope"], "LIMIT_SCOPE_SHARED");
        assert_eq!(value["overrides"], json!([]));
    }

    #[test]
    fn a_failed_call_and_an_unknown_type_become_errors_not_panics() {
        let failed: Result<tonic::Response<pb::CacheStats>, _> =
            Err(tonic::Status::unavailable("redis is down"));
        let value = answer("gantry.v1.CacheStats", failed);
        assert_eq!(value["error"]["code"], "Unavailable");
        assert_eq!(value["error"]["message"], "redis is down");
        let unknown = message("gantry.v1.NoSuchThing", &pb::CacheStats::default());
        assert_eq!(unknown["error"]["code"], "INTERNAL");
    }
}
