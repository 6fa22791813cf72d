//! OTLP over HTTP (`POST /v1/traces` on `traces.otlp_http_listen`, the
//! Collector's port 4318): what browsers, serverless runtimes and many SDK
//! defaults speak. Protobuf or JSON (the OTLP JSON mapping: hex ids,
//! camelCase), optionally gzipped; into the same pipeline as OTLP/gRPC. The
//! port has the gRPC port's TLS and tokens. Answers follow the OTLP/HTTP
//! specification: the request's content type, `partial_success` on 200,
//! a `google.rpc.Status` body on errors, 429/503 for "retry later".

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::metrics::Protocol;
use super::service::OtlpTraceService;
use crate::auth::{Auth, AuthError};
use crate::error::ApiError;
use crate::tls::Peer;

/// The path an OTLP/HTTP trace exporter posts to.
pub const TRACES_PATH: &str = "/v1/traces";
/// The gRPC method whose grant covers this port (`traces: ingest`).
const AUTH_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    /// From the request's Content-Type (parameters such as charset ignored).
    fn of(req: &Request<Incoming>) -> Option<Self> {
        let value = req.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
        let media = value.split(';').next()?.trim();
        if media.eq_ignore_ascii_case("application/x-protobuf") {
            Some(Encoding::Protobuf)
        } else if media.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else {
            None
        }
    }
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error.
#[derive(Clone, PartialEq, Message, serde::Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// Why a request was not exported: the HTTP status and the message.
struct Refusal(StatusCode, tonic::Code, String);

impl Refusal {
    fn new(status: StatusCode, code: tonic::Code, message: impl Into<String>) -> Self {
        Self(status, code, message.into())
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        let code = e.code();
        let status = match code {
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            // OTLP/HTTP's "retry later" answers.
            tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, code, e.to_string())
    }
}

/// The OTLP/HTTP port's handler.
pub struct OtlpHttp {
    export: OtlpTraceService,
    auth: Option<Arc<Auth>>,
    /// `traces.max_message_bytes`: the body, and the body after gunzip.
    max_bytes: usize,
}

impl OtlpHttp {
    pub fn new(export: OtlpTraceService, auth: Option<Arc<Auth>>, max_bytes: usize) -> Self {
        Self {
            export,
            auth,
            max_bytes,
        }
    }

    async fn export(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
        encoding: Encoding,
    ) -> Result<Vec<u8>, Refusal> {
        if let Some(auth) = &self.auth {
            auth.check(AUTH_PATH, req.headers(), Some(peer))
                .map_err(refusal_of_auth)?;
        }
        let gzipped = match req.headers().get(header::CONTENT_ENCODING) {
            None => false,
            Some(v) if v.as_bytes().eq_ignore_ascii_case(b"gzip") => true,
            Some(v) if v.as_bytes().eq_ignore_ascii_case(b"identity") => false,
            Some(v) => {
                return Err(Refusal::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    tonic::Code::InvalidArgument,
                    format!(
                        "Content-Encoding {:?} is not supported; send gzip or none",
                        String::from_utf8_lossy(v.as_bytes())
                    ),
                ));
            }
        };
        let too_large = |what: &str| {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                tonic::Code::ResourceExhausted,
                format!(
                    "the {what} is larger than traces.max_message_bytes ({} bytes)",
                    self.max_bytes
                ),
            )
        };
        let body = Limited::new(req.into_body(), self.max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large("body")
                } else {
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        tonic::Code::InvalidArgument,
                        format!("reading the body failed: {e}"),
                    )
                }
            })?
            .to_bytes();
        let body = if gzipped {
            let mut out = Vec::new();
            let limit = u64::try_from(self.max_bytes).unwrap_or(u64::MAX);
            flate2::read::GzDecoder::new(&body[..])
                .take(limit.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| {
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        tonic::Code::InvalidArgument,
                        format!("the body is not valid gzip: {e}"),
                    )
                })?;
            if out.len() > self.max_bytes {
                return Err(too_large("unzipped body"));
            }
            Bytes::from(out)
        } else {
            body
        };
        let request = match encoding {
            Encoding::Protobuf => ExportTraceServiceRequest::decode(body).map_err(|e| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    tonic::Code::InvalidArgument,
                    format!("the body is not an OTLP ExportTraceServiceRequest (protobuf): {e}"),
                )
            })?,
            Encoding::Json => serde_json::from_slice(&body).map_err(|e| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    tonic::Code::InvalidArgument,
                    format!("the body is not an OTLP ExportTraceServiceRequest (JSON): {e}"),
                )
            })?,
        };
        let answer = self
            .export
            .export_spans(request, Protocol::OtlpHttp)
            .await?;
        if answer.partial_success.is_none() && encoding == Encoding::Json {
            // All kept: `{}`, as the Collector answers (no `null` fields).
            return Ok(b"{}".to_vec());
        }
        Ok(match encoding {
            Encoding::Protobuf => answer.encode_to_vec(),
            Encoding::Json => serde_json::to_vec(&answer).map_err(|e| {
                Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    tonic::Code::Internal,
                    format!("encoding the answer failed: {e}"),
                )
            })?,
        })
    }
}

fn refusal_of_auth(e: AuthError) -> Refusal {
    let status = match &e {
        AuthError::Denied { .. } => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let api = ApiError::from(e);
    Refusal(status, api.code(), api.to_string())
}

fn respond(status: StatusCode, encoding: Encoding, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(encoding.content_type()),
    );
    resp
}

/// An error in the request's encoding, as OTLP/HTTP asks.
fn refused(refusal: Refusal, encoding: Encoding) -> Response<Full<Bytes>> {
    let Refusal(status, code, message) = refusal;
    let body = RpcStatus {
        code: code as i32,
        message,
    };
    let bytes = match encoding {
        Encoding::Protobuf => body.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&body).unwrap_or_default(),
    };
    let mut resp = respond(status, encoding, bytes);
    match status {
        StatusCode::UNAUTHORIZED => {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    resp
}

impl crate::http1::Handler for OtlpHttp {
    async fn handle(&self, req: Request<Incoming>, peer: Peer) -> Response<Full<Bytes>> {
        use crate::http1::plain;
        if req.uri().path() != TRACES_PATH {
            return plain(
                StatusCode::NOT_FOUND,
                "not found; OTLP/HTTP traces are posted to /v1/traces\n",
            );
        }
        if req.method() != Method::POST {
            let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "POST to /v1/traces\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        let Some(encoding) = Encoding::of(&req) else {
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send Content-Type application/x-protobuf or application/json\n",
            );
        };
        match self.export(req, &peer, encoding).await {
            Ok(body) => respond(StatusCode::OK, encoding, body),
            Err(refusal) => refused(refusal, encoding),
        }
    }
}
