//! `Get`, `Put` and `Delete` answered by gantry's transport from their
//! request bytes (src/transport/direct.rs), with the service path's checks,
//! decisions and errors: on the embedded store at once (a write in `sync`
//! durability once it is on disk), on Redis when Redis replies. A Get or Put
//! costs about what the transport costs, and tonic's per-call machinery was
//! a third of that (docs/benchmarks.md, issue #23).

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use tonic::Status;

use super::CacheError;
use super::service::{CacheService, get_response, put_one};
use crate::auth::{Area, Caller};
use crate::error::ApiError;
use crate::proto::gantry::v1 as pb;
use crate::routes::{Answer, Begin, DirectUnary, encode_within};

/// What the three methods share: the service they answer for, and the
/// response limit its path enforces (`server.max_message_bytes`).
#[derive(Clone)]
struct Direct {
    service: Arc<CacheService>,
    max_message_bytes: usize,
}

impl Direct {
    /// Starts the call's record and checks the namespace grant; the refusal
    /// is the answer when either says no.
    fn admit(&self, namespace: &str, begin: Begin<'_>) -> Result<(), Status> {
        let caller: Caller = begin()?;
        caller.may(Area::Cache, namespace)?;
        Ok(())
    }

    fn encode(&self, answer: Result<impl Message, CacheError>) -> Result<Bytes, tonic::Status> {
        answer
            .map_err(|e| Status::from(ApiError::from(e)))
            .and_then(|answer| encode_within(&answer, self.max_message_bytes))
    }
}

/// The three handlers, for the runtime to register.
pub fn handlers(
    service: Arc<CacheService>,
    max_message_bytes: usize,
) -> [(&'static str, Arc<dyn DirectUnary>); 3] {
    let direct = Direct {
        service,
        max_message_bytes,
    };
    [
        ("Get", Arc::new(DirectGet(direct.clone()))),
        ("Put", Arc::new(DirectPut(direct.clone()))),
        ("Delete", Arc::new(DirectDelete(direct))),
    ]
}

struct DirectGet(Direct);

impl DirectUnary for DirectGet {
    fn answer(&self, message: &[u8], begin: Begin<'_>) -> Option<Answer> {
        // Undecodable requests get tonic's own error on the service path.
        let r = pb::GetRequest::decode(message).ok()?;
        if let Err(refused) = self.0.admit(&r.namespace, begin) {
            return Some(Answer::Now(Err(refused)));
        }
        let direct = &self.0;
        if direct.service.decides_in_place() {
            let found = direct.service.engine().get(&r.namespace, &r.key);
            tracing::debug!(found = matches!(found, Ok(Some(_))), "cache.get");
            return Some(Answer::Now(direct.encode(found.map(get_response))));
        }
        let direct = direct.clone();
        Some(Answer::Later(Box::pin(async move {
            let found = direct.service.read(r.namespace, r.key).await;
            tracing::debug!(found = matches!(found, Ok(Some(_))), "cache.get");
            direct.encode(found.map(get_response))
        })))
    }
}

struct DirectPut(Direct);

impl DirectUnary for DirectPut {
    fn answer(&self, message: &[u8], begin: Begin<'_>) -> Option<Answer> {
        let r = pb::PutRequest::decode(message).ok()?;
        if let Err(refused) = self.0.admit(&r.namespace, begin) {
            return Some(Answer::Now(Err(refused)));
        }
        let direct = &self.0;
        let engine = direct.service.engine();
        if direct.service.decides_in_place() {
            let written = put_one(engine, r);
            if let Ok(answer) = &written {
                tracing::debug!(version = answer.version, "cache.put");
            }
            if written.is_err() || !engine.answers_after_flush() {
                return Some(Answer::Now(direct.encode(written)));
            }
            // `sync`: answered once the write is on disk.
            let direct = direct.clone();
            return Some(Answer::Later(Box::pin(async move {
                let durable = direct.service.engine().durable().await;
                direct.encode(durable.and(written))
            })));
        }
        let direct = direct.clone();
        Some(Answer::Later(Box::pin(async move {
            let written = direct.service.write(r).await;
            let written = match written {
                Ok(answer) => direct.service.engine().durable().await.map(|()| answer),
                Err(e) => Err(e),
            };
            if let Ok(answer) = &written {
                tracing::debug!(version = answer.version, "cache.put");
            }
            direct.encode(written)
        })))
    }
}

struct DirectDelete(Direct);

impl DirectUnary for DirectDelete {
    fn answer(&self, message: &[u8], begin: Begin<'_>) -> Option<Answer> {
        let r = pb::DeleteRequest::decode(message).ok()?;
        if let Err(refused) = self.0.admit(&r.namespace, begin) {
            return Some(Answer::Now(Err(refused)));
        }
        let direct = &self.0;
        let engine = direct.service.engine();
        if direct.service.decides_in_place() {
            let deleted = engine.delete(&r.namespace, &r.key, r.if_version);
            let answer = deleted.map(|deleted| pb::DeleteResponse { deleted });
            tracing::debug!(
                deleted = matches!(answer, Ok(ref a) if a.deleted),
                "cache.delete"
            );
            if !matches!(answer, Ok(ref a) if a.deleted) || !engine.answers_after_flush() {
                return Some(Answer::Now(direct.encode(answer)));
            }
            // `sync`: answered once the removal is on disk.
            let direct = direct.clone();
            return Some(Answer::Later(Box::pin(async move {
                let durable = direct.service.engine().durable().await;
                direct.encode(durable.and(answer))
            })));
        }
        let direct = direct.clone();
        Some(Answer::Later(Box::pin(async move {
            let deleted = direct
                .service
                .remove(&r.namespace, &r.key, r.if_version)
                .await;
            let answer = match deleted {
                Ok(true) => direct.service.engine().durable().await.map(|()| true),
                other => other,
            };
            tracing::debug!(deleted = matches!(answer, Ok(true)), "cache.delete");
            direct.encode(answer.map(|deleted| pb::DeleteResponse { deleted }))
        })))
    }
}
