//! What a capability hands to the gRPC transports: its services (boxed, so
//! either transport can route them by name) and, per method path, how gantry's
//! own transport runs a call — in the connection's task (`inline`), or
//! answered from its request bytes (`direct`). The transports read this table
//! and know no capability; each capability builds its entries from the
//! generated service names.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{Request, Response};
use tonic::body::Body;
use tower::util::BoxCloneSyncService;

/// A generated gRPC server, type-erased.
pub type BoxedService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// One gRPC service as a capability hands it over.
#[derive(Clone)]
pub struct GrpcService {
    /// The full service name (`gantry.v1.Cache`): routing, health and metrics.
    pub name: &'static str,
    pub service: BoxedService,
    /// The setting that bounds its messages, named in "too large" errors.
    pub size_setting: &'static str,
}

/// Boxes a generated server after applying the message limit (both ways)
/// and gzip (both ways), which every gantry service gets.
#[macro_export]
#[doc(hidden)]
macro_rules! grpc_service {
    ($server:expr, $limit:expr, $setting:expr) => {{
        let server = $server
            .max_decoding_message_size($limit)
            .max_encoding_message_size($limit)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip);
        $crate::routes::GrpcService {
            name: $crate::routes::service_name(&server),
            service: $crate::routes::BoxedService::new(server),
            size_setting: $setting,
        }
    }};
}
pub use crate::grpc_service;

/// The `NamedService` name of a generated server.
pub fn service_name<S: tonic::server::NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// `/package.Service/Method`, the HTTP/2 path of a gRPC method.
pub fn method_path(service: &str, method: &str) -> String {
    format!("/{service}/{method}")
}

/// Starts the call's record (and sheds it when the server is full): called
/// by a [`DirectUnary`] once it knows it will answer, before any side effect.
pub type Begin<'a> = &'a mut dyn FnMut() -> Result<crate::auth::Caller, tonic::Status>;

/// An answer that is not ready at once: it waits for the shared store
/// (Redis) without using the CPU, so it stays on the direct path.
pub type Later = Pin<Box<dyn Future<Output = Result<Bytes, tonic::Status>> + Send>>;

/// A direct call's answer: ready, or on its way.
pub enum Answer {
    Now(Result<Bytes, tonic::Status>),
    Later(Later),
}

impl From<Result<Bytes, tonic::Status>> for Answer {
    fn from(answer: Result<Bytes, tonic::Status>) -> Self {
        Answer::Now(answer)
    }
}

/// A unary method answered from its request bytes.
pub trait DirectUnary: Send + Sync + 'static {
    /// Answers one uncompressed request message with a response message
    /// framed for the wire ([`encode_within`]), or `None` to send the call the
    /// service path (before calling `begin`, and so before any side effect).
    fn answer(&self, message: &[u8], begin: Begin<'_>) -> Option<Answer>;
}

/// Encodes an answer behind gRPC's 5-byte prefix (uncompressed), in one
/// buffer, refusing one larger than the message limit with what the service
/// path answers then (tonic's check, worded by the per-call layer).
pub fn encode_within(
    answer: &impl prost::Message,
    max_message_bytes: usize,
) -> Result<Bytes, tonic::Status> {
    let len = answer.encoded_len();
    if len > max_message_bytes {
        return Err(tonic::Status::resource_exhausted(format!(
            "response message too large: found {len} bytes, the limit is: {max_message_bytes} bytes (server.max_message_bytes)"
        )));
    }
    let mut framed = BytesMut::with_capacity(5 + len);
    framed.put_u8(0);
    framed.put_u32(len as u32);
    // Cannot fail: the buffer holds `len` more bytes.
    let _ = answer.encode(&mut framed);
    Ok(framed.freeze())
}

/// How gantry's own transport runs one method.
#[derive(Clone, Default)]
pub struct Method {
    /// Answers at once from memory (or waits without using CPU): run in the
    /// connection's task, so its reply leaves with the others.
    pub inline: bool,
    /// Answered from its request bytes (`server.direct_calls`).
    pub direct: Option<Arc<dyn DirectUnary>>,
    /// A direct call its handler declines goes the service path in a task
    /// of its own (the handler answers the cheap cases; the rest is heavy).
    pub spawn_fallback: bool,
}

/// Method paths with their [`Method`]; one lookup per call.
pub type MethodTable = HashMap<String, Method, foldhash::fast::RandomState>;

/// What one capability serves.
#[derive(Clone, Default)]
pub struct Served {
    pub services: Vec<GrpcService>,
    pub methods: MethodTable,
}

impl Served {
    pub fn service(mut self, service: GrpcService) -> Self {
        self.services.push(service);
        self
    }

    /// `service`'s `methods` run in the connection's task.
    pub fn inline(mut self, service: &str, methods: &[&str]) -> Self {
        for method in methods {
            self.methods
                .entry(method_path(service, method))
                .or_default()
                .inline = true;
        }
        self
    }

    /// `service`'s `method` is answered directly by `handler` (and inline).
    pub fn direct(mut self, service: &str, method: &str, handler: Arc<dyn DirectUnary>) -> Self {
        let entry = self
            .methods
            .entry(method_path(service, method))
            .or_default();
        entry.inline = true;
        entry.direct = Some(handler);
        self
    }

    /// `service`'s `method` is answered directly by `handler` when it can;
    /// the calls it declines run the service path in a task of their own.
    pub fn direct_or_task(
        mut self,
        service: &str,
        method: &str,
        handler: Arc<dyn DirectUnary>,
    ) -> Self {
        let entry = self
            .methods
            .entry(method_path(service, method))
            .or_default();
        entry.direct = Some(handler);
        entry.spawn_fallback = true;
        self
    }

    /// Adds `other`'s services and methods.
    pub fn merge(&mut self, other: Served) {
        self.services.extend(other.services);
        self.methods.extend(other.methods);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_built_from_service_and_method() {
        assert_eq!(
            method_path("gantry.v1.Cache", "Get"),
            "/gantry.v1.Cache/Get"
        );
        let served = Served::default()
            .inline("gantry.v1.Cache", &["Get", "Put"])
            .inline("gantry.v1.Cache", &["Get"]);
        assert_eq!(served.methods.len(), 2);
        assert!(served.methods["/gantry.v1.Cache/Put"].inline);
        assert!(served.methods["/gantry.v1.Cache/Get"].direct.is_none());
    }

    #[test]
    fn an_answer_over_the_limit_is_refused_with_the_setting() {
        use prost::Message;
        let answer = prost_types::Duration {
            seconds: 1,
            nanos: 0,
        };
        let framed = encode_within(&answer, 100).unwrap();
        assert_eq!(framed[0], 0);
        assert_eq!(framed.len(), 5 + answer.encoded_len());
        let refused = encode_within(&answer, 1).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("server.max_message_bytes"));
    }
}
