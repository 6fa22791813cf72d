"""The asyncio client and its helpers: the same as gantry.client, awaitable."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Awaitable, Callable, Optional, Tuple, TypeVar

import grpc
import grpc.aio

from gantry.v1 import (
    cache_pb2,
    cache_pb2_grpc,
    leases_pb2,
    leases_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    ratelimit_pb2,
    ratelimit_pb2_grpc,
    traces_pb2_grpc,
)

from ._common import (
    CHANNEL_OPTIONS,
    Decision,
    NearItems,
    NotGranted,
    denial_text,
    Tls,
    channel_security,
    decision,
    duration,
    execution,
    unix_seconds,
)

T = TypeVar("T")


class AsyncClient:
    """One grpc.aio channel to gantry and the stubs; UNAVAILABLE is retried
    by gRPC with backoff; calls without a timeout get `timeout` seconds."""

    def __init__(self, target: str, *, timeout: float = 5.0, tls: Optional[Tls] = None,
                 token: Optional[str] = None):
        creds, options = channel_security(tls, token)
        if creds is None:
            self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.aio.secure_channel(target, creds, options=CHANNEL_OPTIONS + options)
        self.timeout = timeout
        self.rate_limiter = ratelimit_pb2_grpc.RateLimiterStub(self.channel)
        self.cache = cache_pb2_grpc.CacheStub(self.channel)
        self.query = query_pb2_grpc.QueryAnalyzerStub(self.channel)
        self.traces = traces_pb2_grpc.TracesStub(self.channel)
        self.leases = leases_pb2_grpc.LeasesStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def limiter(self, limit: str, key: str = "", *, client: str = "", wait: float = 0.0) -> "AsyncRateLimiter":
        return AsyncRateLimiter(self, limit, key, client=client, wait=wait)

    def namespace(self, name: str) -> "AsyncCache":
        return AsyncCache(self, name)

    def lease(self, pool: str, holder: str, count: int = 1, *, ttl: float = 0.0, wait: float = 0.0) -> "AsyncLease":
        return AsyncLease(self, pool, holder, count, ttl=ttl, wait=wait)

    def recorder(self, service: str, dialect: str = "", **kwargs) -> "AsyncQueryRecorder":
        return AsyncQueryRecorder(self, service, dialect, **kwargs)


class AsyncRateLimiter:
    """`async with limiter:` and `@limiter` (on coroutine functions) take one
    token, waiting fairly up to `wait` seconds; NotGranted when it runs out."""

    def __init__(self, gantry: AsyncClient, limit: str, key: str = "", *, client: str = "", wait: float = 0.0):
        self._gantry = gantry
        self.limit, self.key, self.client, self.wait = limit, key, client, wait

    async def acquire(self, tokens: int = 1, *, key: Optional[str] = None, wait: Optional[float] = None,
                      dry_run: bool = False) -> Decision:
        wait = self.wait if wait is None else wait
        request = ratelimit_pb2.AcquireRequest(
            limit=self.limit, key=self.key if key is None else key, tokens=tokens,
            max_wait=duration(wait), client=self.client, dry_run=dry_run,
        )
        return decision(await self._gantry.rate_limiter.Acquire(request, timeout=wait + self._gantry.timeout))

    async def __aenter__(self) -> Decision:
        d = await self.acquire()
        if not d.allowed:
            raise NotGranted(f"{self.limit}/{self.key}: no token within {self.wait}s", d.retry_after)
        return d

    async def __aexit__(self, *exc) -> None:
        return None

    def __call__(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def limited(*args, **kwargs):
            async with self:
                return await fn(*args, **kwargs)

        return limited


class AsyncCache:
    def __init__(self, gantry: AsyncClient, namespace: str):
        self._gantry = gantry
        self.namespace = namespace

    async def get(self, key: str) -> Tuple[Optional[bytes], int]:
        resp = await self._gantry.cache.Get(cache_pb2.GetRequest(namespace=self.namespace, key=key), timeout=self._gantry.timeout)
        return (resp.value if resp.found else None), resp.version

    async def put(self, key: str, value: bytes, *, ttl: float = 0.0, if_version: Optional[int] = None,
                  if_absent: bool = False) -> int:
        request = cache_pb2.PutRequest(namespace=self.namespace, key=key, value=value, ttl=duration(ttl))
        if if_version is not None:
            request.if_version = if_version
        elif if_absent:
            request.if_absent = True
        return (await self._gantry.cache.Put(request, timeout=self._gantry.timeout)).version

    async def delete(self, key: str) -> bool:
        resp = await self._gantry.cache.Delete(cache_pb2.DeleteRequest(namespace=self.namespace, key=key), timeout=self._gantry.timeout)
        return resp.deleted

    def near_cache(self, prefix: str = "", max_entries: int = 10_000) -> "AsyncNearCache":
        return AsyncNearCache(self, prefix, max_entries)


class AsyncNearCache:
    """As gantry.client.NearCache, on a task. Create it inside a running loop;
    `async with` or `await close()`."""

    def __init__(self, cache: AsyncCache, prefix: str = "", max_entries: int = 10_000):
        self._cache, self._prefix = cache, prefix
        self._near = NearItems(max_entries)
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        backoff = 0.05
        while True:
            try:
                call = self._cache._gantry.cache.Watch(
                    cache_pb2.WatchRequest(namespace=self._cache.namespace, key_prefix=self._prefix, include_values=True))
                await call.initial_metadata()
                self._near.reset(True)
                async for event in call:
                    self._near.apply(event)
                    backoff = 0.05
            except grpc.RpcError:
                pass
            self._near.reset(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def get(self, key: str) -> Optional[bytes]:
        held = self._near.items.get(key)
        if held is not None:
            return held[0]
        generation, live = self._near.generation, self._near.live
        value, version = await self._cache.get(key)
        if value is not None:
            self._near.remember(key, value, version, generation, live)
        return value

    def __len__(self) -> int:
        return len(self._near.items)

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def __aenter__(self) -> "AsyncNearCache":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class AsyncLease:
    """`async with client.lease(...) as lease:` holds units, renewing them on
    a task at a third of the TTL, and releases them on exit."""

    def __init__(self, gantry: AsyncClient, pool: str, holder: str, count: int = 1, *, ttl: float = 0.0, wait: float = 0.0):
        self._gantry = gantry
        self.pool, self.holder, self.count, self.ttl, self.wait = pool, holder, count, ttl, wait
        self.lease_id = ""
        self.expires_at = 0.0
        self.lost = asyncio.Event()
        self._task: Optional[asyncio.Task] = None

    async def acquire(self) -> "AsyncLease":
        resp = await self._gantry.leases.Acquire(
            leases_pb2.AcquireLeaseRequest(pool=self.pool, holder=self.holder, count=self.count,
                                           ttl=duration(self.ttl), max_wait=duration(self.wait)),
            timeout=self.wait + self._gantry.timeout,
        )
        if not resp.granted:
            raise NotGranted(f"{self.count} units of {self.pool} not granted within {self.wait}s"
                             + denial_text(resp.denial_reason, self.holder))
        self.lease_id = resp.lease_id
        self.expires_at = unix_seconds(resp.expires_at)
        if self.ttl <= 0:
            self.ttl = max(self.expires_at - time.time(), 1.0)
        self._task = asyncio.get_running_loop().create_task(self._renew())
        return self

    async def _renew(self) -> None:
        every = max(self.ttl / 3, 0.1)
        while True:
            await asyncio.sleep(every)
            try:
                resp = await self._gantry.leases.Renew(
                    leases_pb2.RenewLeaseRequest(lease_id=self.lease_id, ttl=duration(self.ttl)), timeout=every)
                self.expires_at = unix_seconds(resp.expires_at)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND or time.time() > self.expires_at:
                    self.lost.set()
                    return

    async def release(self) -> bool:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if not self.lease_id:
            return False
        resp = await self._gantry.leases.Release(leases_pb2.ReleaseLeaseRequest(lease_id=self.lease_id), timeout=self._gantry.timeout)
        self.lease_id = ""
        return resp.released

    async def __aenter__(self) -> "AsyncLease":
        return await self.acquire()

    async def __aexit__(self, *exc) -> None:
        await self.release()


class AsyncQueryRecorder:
    """As gantry.client.QueryRecorder, on a task; `await close()` flushes."""

    def __init__(self, gantry: AsyncClient, service: str, dialect: str = "", *, batch: int = 500,
                 interval: float = 1.0, queue_size: int = 10_000):
        self._gantry = gantry
        self.service, self.dialect = service, dialect
        self._batch, self._interval = batch, interval
        self._queue: "asyncio.Queue" = asyncio.Queue(maxsize=queue_size)
        self.dropped = 0
        self.failed = 0
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    def record(self, sql: str, seconds_taken: float, rows: int = 0, trace_id: str = "") -> bool:
        if self._closed:
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait(execution(sql, seconds_taken, rows, trace_id, self.service, self.dialect))
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            return False

    async def _send(self, pending) -> None:
        if not pending:
            return
        try:
            resp = await self._gantry.query.Record(query_pb2.RecordRequest(executions=pending), timeout=self._gantry.timeout)
            self.failed += resp.rejected
        except grpc.RpcError:
            self.failed += len(pending)

    async def _run(self) -> None:
        pending = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._interval
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                item = ...
            if item is None:
                await self._send(pending)
                return
            if item is not ...:
                pending.append(item)
            if len(pending) >= self._batch or loop.time() >= deadline:
                await self._send(pending)
                pending = []
                deadline = loop.time() + self._interval

    async def close(self) -> None:
        """Sends what is queued and stops; later record() calls return False."""
        if self._closed:
            return
        self._closed = True
        await self._queue.put(None)
        await self._task

    async def __aenter__(self) -> "AsyncQueryRecorder":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
