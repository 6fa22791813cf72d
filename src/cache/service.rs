//! `gantry.v1.Cache` over gRPC: converts and validates, then asks the engine.

use crate::auth::{Area, AuthError, Caller};
use std::pin::Pin;
use std::time::{Duration, UNIX_EPOCH};

use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::shared::RedisCache;
use super::stats::Snapshot;
use super::watch::ChangeKind;
use super::{CacheEngine, CacheError, Condition, Found};
use crate::error::ApiError;
use crate::grpc::{duration_from_pb, duration_to_pb};
use crate::lanes::Lanes;
use crate::proto::gantry::v1 as pb;
use crate::wallclock::now_ms;

/// Longest a Watch waits for the replica's Redis subscription.
const WATCH_SUBSCRIBE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct CacheService {
    engine: CacheEngine,
    /// Answers Get and Put in groups (`cache.coalesce`).
    lanes: Option<Lanes>,
    /// Entries in Redis (`storage.backend = "redis"`); the engine then only
    /// validates, counts and fans out watch events.
    shared: Option<RedisCache>,
}

impl CacheService {
    pub fn new(engine: CacheEngine, lanes: Option<Lanes>) -> Self {
        Self {
            engine,
            lanes,
            shared: None,
        }
    }

    /// A service over entries in Redis.
    pub fn shared(engine: CacheEngine, shared: RedisCache) -> Self {
        Self {
            engine,
            lanes: None,
            shared: Some(shared),
        }
    }

    pub(super) fn engine(&self) -> &CacheEngine {
        &self.engine
    }

    /// Whether Get, Put and Delete are decided in the calling task, without
    /// waiting (entries in the embedded store, no lanes): then a direct call
    /// answers at once.
    pub(super) fn decides_in_place(&self) -> bool {
        self.shared.is_none() && self.lanes.is_none()
    }

    /// Runs `work` on a lane when coalescing, else here.
    async fn on_lane<R: Send + 'static>(
        &self,
        work: impl FnOnce(&CacheEngine) -> Result<R, CacheError> + Send + 'static,
    ) -> Result<R, CacheError> {
        let Some(lanes) = &self.lanes else {
            return work(&self.engine);
        };
        let engine = self.engine.clone();
        lanes.run(move || work(&engine)).await.unwrap_or_else(|_| {
            Err(CacheError::Store(crate::store::StoreError::Io(
                "cache lane task stopped".into(),
            )))
        })
    }

    pub(super) async fn read(
        &self,
        namespace: String,
        key: String,
    ) -> Result<Option<Found>, CacheError> {
        if let Some(shared) = &self.shared {
            return shared.get(&namespace, &key).await;
        }
        self.on_lane(move |engine| engine.get(&namespace, &key))
            .await
    }

    pub(super) async fn write(
        &self,
        request: pb::PutRequest,
    ) -> Result<pb::PutResponse, CacheError> {
        if let Some(shared) = &self.shared {
            let (ttl, condition) = put_args(&request)?;
            let version = shared
                .put(
                    &request.namespace,
                    &request.key,
                    request.value,
                    ttl,
                    condition,
                )
                .await?;
            return Ok(pb::PutResponse {
                stored: true,
                version,
            });
        }
        self.on_lane(move |engine| put_one(engine, request)).await
    }

    async fn remove(
        &self,
        namespace: &str,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<bool, CacheError> {
        match &self.shared {
            Some(shared) => shared.delete(namespace, key, if_version).await,
            None => self.engine.delete(namespace, key, if_version),
        }
    }

    /// A Put as the service answers it: written, and in `sync` on disk.
    pub(super) async fn put_durably(
        &self,
        request: pb::PutRequest,
    ) -> Result<pb::PutResponse, CacheError> {
        let response = self.write(request).await?;
        self.engine.durable().await?;
        Ok(response)
    }

    /// A Delete as the service answers it: false when there was no live
    /// entry; a removal in `sync` on disk.
    pub(super) async fn delete_durably(
        &self,
        namespace: &str,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<bool, CacheError> {
        let deleted = self.remove(namespace, key, if_version).await?;
        if deleted {
            self.engine.durable().await?;
        }
        Ok(deleted)
    }

    fn check_batch(&self, len: usize) -> Result<(), Status> {
        let max = self.engine.max_batch();
        if len > max {
            let reason = format!("{len} items exceed the batch limit of {max} (cache.max_batch)");
            return Err(ApiError::invalid("items", reason).into());
        }
        Ok(())
    }
}

fn timestamp(unix_ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(unix_ms))
}

pub(super) fn get_response(found: Option<Found>) -> pb::GetResponse {
    match found {
        None => pb::GetResponse::default(),
        Some(f) => pb::GetResponse {
            found: true,
            value: f.value,
            version: f.version,
            ttl_remaining: (f.expires_at_ms != 0).then(|| {
                duration_to_pb(Duration::from_millis(
                    f.expires_at_ms.saturating_sub(now_ms()),
                ))
            }),
        },
    }
}

fn item_error(err: CacheError) -> pb::ItemError {
    let api = ApiError::from(err);
    pb::ItemError {
        code: api.code() as i32,
        message: api.to_string(),
    }
}

/// Field errors of a PutRequest that happen before the engine sees it.
fn put_args(r: &pb::PutRequest) -> Result<(Option<Duration>, Condition), CacheError> {
    let ttl = duration_from_pb("ttl", r.ttl.as_ref())?;
    let condition = match r.condition {
        None | Some(pb::put_request::Condition::IfAbsent(false)) => Condition::Always,
        Some(pb::put_request::Condition::IfAbsent(true)) => Condition::IfAbsent,
        Some(pb::put_request::Condition::IfVersion(v)) => Condition::IfVersion(v),
    };
    Ok(((!ttl.is_zero()).then_some(ttl), condition))
}

pub(super) fn put_one(
    engine: &CacheEngine,
    r: pb::PutRequest,
) -> Result<pb::PutResponse, CacheError> {
    let (ttl, condition) = put_args(&r)?;
    let written = engine.put(&r.namespace, &r.key, r.value, ttl, condition)?;
    Ok(pb::PutResponse {
        stored: true,
        version: written.version,
    })
}

fn stats_pb(namespace: String, s: &Snapshot) -> pb::NamespaceStats {
    pb::NamespaceStats {
        namespace,
        hot_hits: s.hot_hits,
        hot_misses: s.hot_misses,
        store_hits: s.store_hits,
        store_misses: s.store_misses,
        entries: s.entries,
        raw_bytes: s.raw_bytes,
        stored_bytes: s.stored_bytes,
        evictions: s.evictions,
        expirations: s.expirations,
    }
}

/// A batch is refused whole when one item names a namespace outside the
/// caller's grant.
fn may_use_all<'a>(
    caller: &Caller,
    mut namespaces: impl Iterator<Item = &'a str>,
) -> Result<(), AuthError> {
    namespaces.try_for_each(|n| caller.may(Area::Cache, n))
}

#[tonic::async_trait]
impl pb::cache_server::Cache for CacheService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        Caller::of(&request)?.may(Area::Cache, &request.get_ref().namespace)?;
        let r = request.into_inner();
        let found = self
            .read(r.namespace, r.key)
            .await
            .map_err(ApiError::from)?;
        tracing::debug!(found = found.is_some(), "cache.get");
        Ok(Response::new(get_response(found)))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        Caller::of(&request)?.may(Area::Cache, &request.get_ref().namespace)?;
        let r = request.into_inner();
        let namespace = r.namespace.clone();
        let response = self.put_durably(r).await.map_err(ApiError::from)?;
        tracing::debug!(%namespace, version = response.version, "cache.put");
        Ok(Response::new(response))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = request.get_ref();
        Caller::of(&request)?.may(Area::Cache, &r.namespace)?;
        let deleted = self
            .delete_durably(&r.namespace, &r.key, r.if_version)
            .await
            .map_err(ApiError::from)?;
        tracing::debug!(namespace = %r.namespace, deleted, "cache.delete");
        Ok(Response::new(pb::DeleteResponse { deleted }))
    }

    async fn get_many(
        &self,
        request: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let items = &request.get_ref().items;
        self.check_batch(items.len())?;
        may_use_all(
            Caller::of(&request)?,
            items.iter().map(|i| i.namespace.as_str()),
        )?;
        let found: Vec<Result<Option<Found>, CacheError>> = match &self.shared {
            // Concurrently: they leave together over the multiplexed connection.
            Some(shared) => {
                futures_util::future::join_all(
                    items
                        .iter()
                        .map(|item| shared.get(&item.namespace, &item.key)),
                )
                .await
            }
            None => items
                .iter()
                .map(|item| self.engine.get(&item.namespace, &item.key))
                .collect(),
        };
        let results: Vec<pb::GetManyResult> = found
            .into_iter()
            .enumerate()
            .map(|(i, found)| match found {
                Ok(found) => pb::GetManyResult {
                    response: Some(get_response(found)),
                    error: None,
                },
                Err(e) => pb::GetManyResult {
                    response: None,
                    error: Some(item_error(e.in_item(i))),
                },
            })
            .collect();
        tracing::debug!(
            items = items.len(),
            found = results
                .iter()
                .filter(|r| r.response.as_ref().is_some_and(|r| r.found))
                .count(),
            "cache.get_many"
        );
        Ok(Response::new(pb::GetManyResponse { results }))
    }

    async fn put_many(
        &self,
        request: Request<pb::PutManyRequest>,
    ) -> Result<Response<pb::PutManyResponse>, Status> {
        may_use_all(
            Caller::of(&request)?,
            request.get_ref().items.iter().map(|i| i.namespace.as_str()),
        )?;
        let items = request.into_inner().items;
        self.check_batch(items.len())?;
        let count = items.len();
        let written: Vec<Result<pb::PutResponse, CacheError>> = match &self.shared {
            Some(_) => {
                futures_util::future::join_all(items.into_iter().map(|item| self.write(item))).await
            }
            None => items
                .into_iter()
                .map(|item| put_one(&self.engine, item))
                .collect(),
        };
        let results: Vec<pb::PutManyResult> = written
            .into_iter()
            .enumerate()
            .map(|(i, written)| match written {
                Ok(response) => pb::PutManyResult {
                    response: Some(response),
                    error: None,
                },
                Err(e) => pb::PutManyResult {
                    response: None,
                    error: Some(item_error(e.in_item(i))),
                },
            })
            .collect();
        let stored = results.iter().filter(|r| r.response.is_some()).count();
        if stored > 0 {
            // One flush for the whole batch in `sync` durability.
            self.engine.durable().await.map_err(ApiError::from)?;
        }
        tracing::debug!(items = count, stored, "cache.put_many");
        Ok(Response::new(pb::PutManyResponse { results }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Caller::of(&request)?.may(Area::Cache, &request.get_ref().namespace)?;
        let r = request.into_inner();
        self.engine
            .check_key_prefix(&r.key_prefix)
            .map_err(ApiError::from)?;
        // With Redis, a watch starts once this replica hears every
        // replica's changes: before that it could miss some unannounced.
        if let Some(shared) = &self.shared
            && !shared.until_listening(WATCH_SUBSCRIBE_WAIT).await
        {
            return Err(ApiError::Unavailable(
                "cache watch: this replica is not subscribed to the Redis change events yet (retry)"
                    .into(),
            )
            .into());
        }
        let subscription = self
            .engine
            .subscribe(&r.namespace)
            .map_err(ApiError::from)?;
        tracing::debug!(namespace = %r.namespace, prefix = %r.key_prefix, "cache.watch started");
        let engine = self.engine.clone();
        let guard = subscription.guard;
        let (namespace, prefix, include_values) = (r.namespace, r.key_prefix, r.include_values);
        let events = BroadcastStream::new(subscription.rx).filter_map(move |item| {
            // The guard lives as long as the stream: the watcher count drops with it.
            let _watching = &guard;
            match item {
                Ok(change)
                    if change.key.starts_with(&prefix) || change.kind == ChangeKind::Resync =>
                {
                    if change.kind == ChangeKind::Resync {
                        engine.count_resync();
                    }
                    Some(Ok(pb::WatchEvent {
                    kind: match change.kind {
                        ChangeKind::Put => pb::watch_event::Kind::Put,
                        ChangeKind::Delete => pb::watch_event::Kind::Delete,
                        ChangeKind::Expire => pb::watch_event::Kind::Expire,
                        ChangeKind::Resync => pb::watch_event::Kind::Resync,
                    } as i32,
                    namespace: change.namespace.clone(),
                    key: change.key.clone(),
                    version: change.version,
                    value: if include_values {
                        change.value.clone().unwrap_or_default()
                    } else {
                        Default::default()
                    },
                    time: Some(timestamp(change.at_ms)),
                }))
                }
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(lost)) => {
                    engine.count_resync();
                    tracing::debug!(namespace = %namespace, lost, "cache watcher fell behind; sending resync");
                    Some(Ok(pb::WatchEvent {
                        kind: pb::watch_event::Kind::Resync as i32,
                        namespace: namespace.clone(),
                        time: Some(timestamp(now_ms())),
                        ..Default::default()
                    }))
                }
            }
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn stats(
        &self,
        request: Request<pb::CacheStatsRequest>,
    ) -> Result<Response<pb::CacheStats>, Status> {
        let caller = Caller::of(&request)?.clone();
        let wanted = request.into_inner().namespace;
        if !wanted.is_empty() {
            caller.may(Area::Cache, &wanted)?;
            self.engine
                .check_namespace(&wanted)
                .map_err(ApiError::from)?;
        }
        let mut all = self.engine.namespaces().snapshot();
        // All namespaces means all the caller may see; the total is theirs.
        all.retain(|(n, _)| caller.sees(Area::Cache, n));
        if !wanted.is_empty() {
            all.retain(|(n, _)| *n == wanted);
            if all.is_empty() {
                all.push((wanted, Snapshot::default()));
            }
        }
        let mut total = Snapshot::default();
        for (_, s) in &all {
            total.add(s);
        }
        Ok(Response::new(pb::CacheStats {
            namespaces: all.into_iter().map(|(n, s)| stats_pb(n, &s)).collect(),
            total: Some(stats_pb(String::new(), &total)),
        }))
    }
}
