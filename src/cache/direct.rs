//! `Get`, `Put` and `Delete` answered by gantry's transport from their
//! request bytes (src/transport/direct.rs), with the service path's checks,
//! decisions and errors: on the embedded store at once, otherwise (a write
//! in `sync` durability, entries in Redis) through the service's own steps
//! when they are done. A Get or Put
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

    /// Whether a write is decided and answered in the calling task: an
    /// embedded store whose writes need no flush before the answer
    /// (`periodic`). Otherwise the service's own path, awaited.
    fn writes_at_once(&self) -> bool {
        self.service.decides_in_place() && !self.service.engine().answers_after_flush()
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
        if direct.writes_at_once() {
            let written = put_one(direct.service.engine(), r);
            log_put(&written);
            return Some(Answer::Now(direct.encode(written)));
        }
        let direct = direct.clone();
        Some(Answer::Later(Box::pin(async move {
            let written = direct.service.put_durably(r).await;
            log_put(&written);
            direct.encode(written)
        })))
    }
}

fn log_put(written: &Result<pb::PutResponse, CacheError>) {
    if let Ok(answer) = written {
        tracing::debug!(version = answer.version, "cache.put");
    }
}

struct DirectDelete(Direct);

impl DirectUnary for DirectDelete {
    fn answer(&self, message: &[u8], begin: Begin<'_>) -> Option<Answer> {
        let r = pb::DeleteRequest::decode(message).ok()?;
        if let Err(refused) = self.0.admit(&r.namespace, begin) {
            return Some(Answer::Now(Err(refused)));
        }
        let answer = |deleted: Result<bool, CacheError>| {
            tracing::debug!(deleted = matches!(deleted, Ok(true)), "cache.delete");
            deleted.map(|deleted| pb::DeleteResponse { deleted })
        };
        let direct = &self.0;
        if direct.writes_at_once() {
            let deleted = direct
                .service
                .engine()
                .delete(&r.namespace, &r.key, r.if_version);
            return Some(Answer::Now(direct.encode(answer(deleted))));
        }
        let direct = direct.clone();
        Some(Answer::Later(Box::pin(async move {
            let deleted = direct
                .service
                .delete_durably(&r.namespace, &r.key, r.if_version);
            direct.encode(answer(deleted.await))
        })))
    }
}
