"""The asyncio client and its helpers: the same as gantry.client, awaitable."""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import datetime
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

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
    GantryError,
    NearItems,
    NotGranted,
    QueryStats,
    SlowQuery,
    denial_text,
    Tls,
    channel_security,
    closed_error,
    decision,
    duration,
    policy_decision,
    execution,
    query_stats,
    slow_queries,
    slow_queries_request,
    top_queries_request,
    unix_seconds,
)
from ._resilience import (
    FAIL_OPEN,
    LOCAL,
    SERVER,
    Breaker,
    PolicyState,
    RenewSchedule,
    channel_target,
    outcome_of,
)

T = TypeVar("T")


class AsyncClient:
    """One grpc.aio channel to gantry and the stubs, as gantry.Client (the
    same target forms, round-robin, retries of idempotent calls, circuit
    breaker, failure policy and decision hook); calls without a timeout get
    `timeout` seconds. The helpers raise GantryError (with the gRPC code) for
    every failure but NotGranted. `channel` uses a grpc.aio channel you
    built; `credentials` any grpc.ChannelCredentials; `tls` and `token` build
    them. It and its helpers may be made outside a running loop; they start
    their tasks when first used in one."""

    def __init__(self, target: Union[str, Sequence[str]], *, timeout: float = 5.0,
                 channel: Optional[grpc.aio.Channel] = None,
                 tls: Optional[Tls] = None, token: Optional[str] = None,
                 credentials: Optional[grpc.ChannelCredentials] = None,
                 failure_policy: str = FAIL_OPEN, local_share: int = 1,
                 on_decision: Optional[Callable[[str, Decision], None]] = None,
                 circuit_breaker: Tuple[int, float, float] = (5, 1.0, 30.0)):
        if credentials is not None and (tls is not None or token is not None):
            raise ValueError("give credentials or tls/token, not both")
        self._policy = PolicyState(failure_policy, local_share, on_decision)
        self._breaker = Breaker(*circuit_breaker)
        target, endpoint_options = channel_target(target) if channel is None else ("", [])
        creds, options = (credentials, []) if credentials is not None else channel_security(tls, token)
        options = endpoint_options + options
        self.timeout = timeout
        self._target, self._creds, self._options = target, creds, options
        self._channel: Optional[grpc.aio.Channel] = channel
        # What close() ends with the channel: recorders (flushed), near
        # caches' watches, leases' renewals.
        self._owned: set = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def channel(self) -> grpc.aio.Channel:
        """The grpc.aio channel, made on first use: a grpc.aio channel belongs
        to the loop it was made in, so the client can be made outside one."""
        if self._channel is None:
            if self._creds is None:
                self._channel = grpc.aio.insecure_channel(self._target, options=CHANNEL_OPTIONS + self._options)
            else:
                self._channel = grpc.aio.secure_channel(self._target, self._creds, options=CHANNEL_OPTIONS + self._options)
        return self._channel

    # The stubs, made with the channel on first use (functools.cached_property).
    @functools.cached_property
    def rate_limiter(self) -> ratelimit_pb2_grpc.RateLimiterStub:
        return ratelimit_pb2_grpc.RateLimiterStub(self.channel)

    @functools.cached_property
    def cache(self) -> cache_pb2_grpc.CacheStub:
        return cache_pb2_grpc.CacheStub(self.channel)

    @functools.cached_property
    def query(self) -> query_pb2_grpc.QueryAnalyzerStub:
        return query_pb2_grpc.QueryAnalyzerStub(self.channel)

    @functools.cached_property
    def traces(self) -> traces_pb2_grpc.TracesStub:
        return traces_pb2_grpc.TracesStub(self.channel)

    @functools.cached_property
    def leases(self) -> leases_pb2_grpc.LeasesStub:
        return leases_pb2_grpc.LeasesStub(self.channel)

    def _own(self, thing: Any) -> bool:
        """Registers what close() ends; False once the client is closed."""
        if self._closed:
            return False
        self._owned.add(thing)
        return True

    def _forget(self, thing: Any) -> None:
        self._owned.discard(thing)

    @property
    def decisions(self) -> Dict[str, int]:
        """How many limiter decisions each source made: server, fail_open, fail_closed, local."""
        return dict(self._policy.counts)

    async def _call(self, method: Callable[..., Any], request: Any, timeout: Optional[float] = None) -> Any:
        """A helper's call: refused after close(), through the breaker, failures as GantryError."""
        if self._closed:
            raise closed_error()
        go, probe = self._breaker.admit()
        if not go:
            raise GantryError(grpc.StatusCode.UNAVAILABLE, self._breaker.refusal())
        try:
            result = await method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as e:
            error = GantryError.of(e)
            self._breaker.record(probe, outcome_of(error.code()))
            raise error from e
        except asyncio.CancelledError:
            self._breaker.record(probe, "neither")
            raise
        self._breaker.record(probe, "answered")
        return result

    async def close(self) -> None:
        """Flushes the recorders this client made, ends its near caches'
        watches and its leases' renewals, then closes the channel. Helpers'
        calls after it raise GantryError (CANCELLED)."""
        if self._closed:
            return
        owned, self._owned = list(self._owned), set()
        for thing in owned:
            await thing._shut_down()
        self._closed = True
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def limiter(self, limit: str, key: str = "", *, client: str = "", wait: float = 0.0,
                failure_policy: Optional[str] = None) -> "AsyncRateLimiter":
        return AsyncRateLimiter(self, limit, key, client=client, wait=wait, failure_policy=failure_policy)

    def namespace(self, name: str) -> "AsyncCache":
        return AsyncCache(self, name)

    def lease(self, pool: str, holder: str, count: int = 1, *, ttl: float = 0.0, wait: float = 0.0,
              on_lost: Optional[Callable[["AsyncLease"], None]] = None) -> "AsyncLease":
        return AsyncLease(self, pool, holder, count, ttl=ttl, wait=wait, on_lost=on_lost)

    def recorder(self, service: str, dialect: str = "", **kwargs) -> "AsyncQueryRecorder":
        return AsyncQueryRecorder(self, service, dialect, **kwargs)

    async def top_queries(self, *, order_by: str = "total_time", limit: int = 0, service: str = "") -> List[QueryStats]:
        """As Client.top_queries."""
        return query_stats(await self._call(self.query.TopQueries, top_queries_request(order_by, limit, service)))

    async def slow_queries(self, *, since: Optional[datetime] = None, limit: int = 0) -> List[SlowQuery]:
        """As Client.slow_queries."""
        return slow_queries(await self._call(self.query.SlowQueries, slow_queries_request(since, limit)))


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class AsyncRateLimiter:
    """`async with limiter:` and `@limiter` (on coroutine functions) take one
    token, waiting fairly up to `wait` seconds; NotGranted when it runs out."""

    def __init__(self, gantry: AsyncClient, limit: str, key: str = "", *, client: str = "", wait: float = 0.0,
                 failure_policy: Optional[str] = None):
        self._gantry = gantry
        self.limit, self.key, self.client, self.wait = limit, key, client, wait
        self.policy = gantry._policy.policy if failure_policy is None else failure_policy
        self._learning: Optional[asyncio.Task] = None

    async def acquire(self, tokens: int = 1, *, key: Optional[str] = None, wait: Optional[float] = None,
                      dry_run: bool = False) -> Decision:
        wait = self.wait if wait is None else wait
        request = ratelimit_pb2.AcquireRequest(
            limit=self.limit, key=self.key if key is None else key, tokens=tokens,
            max_wait=duration(wait), client=self.client, dry_run=dry_run,
        )
        gantry, policy = self._gantry, self._gantry._policy
        deadline = time.monotonic() + wait
        while True:
            try:
                d = decision(await gantry._call(gantry.rate_limiter.Acquire, request, wait + gantry.timeout))
            except GantryError as e:
                if gantry.closed:
                    raise
                # A policy's denial waits its retry-after within `wait`, then asks again.
                d, pause = policy_decision(policy, gantry._breaker, self.policy, self.limit, request.key, tokens, e,
                                           deadline)
                if pause is None:
                    return d
                await asyncio.sleep(pause)
                continue
            policy.count(self.limit, d)
            if self.policy == LOCAL and policy.needs_learning(self.limit, time.monotonic()):
                self._learning = asyncio.get_running_loop().create_task(self._learn())
            return d

    async def _learn(self) -> None:
        """Asks gantry for the limits' parameters, for the local policy."""
        try:
            self._gantry._policy.learn(await self._gantry._call(self._gantry.rate_limiter.ListLimits,
                                                                ratelimit_pb2.ListLimitsRequest()))
        except GantryError:
            pass  # asked again at the next decision by gantry, a second on

    async def __aenter__(self) -> Decision:
        d = await self.acquire()
        if not d.allowed:
            why = f" ({d.source}: {d.reason})" if d.source != SERVER else ""
            raise NotGranted(f"{self.limit}/{self.key}: no token within {self.wait}s{why}", d.retry_after)
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
        resp = await self._gantry._call(self._gantry.cache.Get, cache_pb2.GetRequest(namespace=self.namespace, key=key))
        return (resp.value if resp.found else None), resp.version

    async def put(self, key: str, value: bytes, *, ttl: float = 0.0, if_version: Optional[int] = None,
                  if_absent: bool = False) -> int:
        request = cache_pb2.PutRequest(namespace=self.namespace, key=key, value=value, ttl=duration(ttl))
        if if_version is not None:
            request.if_version = if_version
        elif if_absent:
            request.if_absent = True
        return (await self._gantry._call(self._gantry.cache.Put, request)).version

    async def delete(self, key: str) -> bool:
        resp = await self._gantry._call(self._gantry.cache.Delete, cache_pb2.DeleteRequest(namespace=self.namespace, key=key))
        return resp.deleted

    def near_cache(self, prefix: str = "", max_entries: int = 10_000, *, max_stale: float = 5.0) -> "AsyncNearCache":
        return AsyncNearCache(self, prefix, max_entries, max_stale=max_stale)


class AsyncNearCache:
    """As gantry.client.NearCache, on a task started by the first get() (or
    `async with`), so it may be made outside a running loop; `async with`
    or `await close()`."""

    def __init__(self, cache: AsyncCache, prefix: str = "", max_entries: int = 10_000, *, max_stale: float = 5.0):
        self._cache, self._prefix = cache, prefix
        self._near = NearItems(max_entries, max_stale)
        self._task: Optional[asyncio.Task] = None
        self._closed = not cache._gantry._own(self)
        self._start()

    def _start(self) -> None:
        loop = _running_loop()
        if self._task is None and not self._closed and loop is not None:
            self._task = loop.create_task(self._watch())

    async def _watch(self) -> None:
        backoff = 0.05
        while True:
            try:
                call = self._cache._gantry.cache.Watch(
                    cache_pb2.WatchRequest(namespace=self._cache.namespace, key_prefix=self._prefix, include_values=True))
                # (A call that failed instead returns from initial_metadata() too, done.)
                await call.initial_metadata()
                if not call.done():
                    self._near.resync()
                async for event in call:
                    self._near.apply(event)
                    backoff = 0.05
            except grpc.RpcError:
                pass
            self._near.down(time.monotonic())
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def get(self, key: str) -> Optional[bytes]:
        self._start()
        self._near.expire_stale(time.monotonic())
        held = self._near.items.get(key)
        if held is not None:
            return held[0]
        generation, live = self._near.generation, self._near.live
        value, version = await self._cache.get(key)
        if value is not None:
            self._near.remember(key, value, version, generation, live)
        return value

    def __len__(self) -> int:
        self._near.expire_stale(time.monotonic())
        return len(self._near.items)

    async def _shut_down(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def close(self) -> None:
        self._cache._gantry._forget(self)
        await self._shut_down()

    async def __aenter__(self) -> "AsyncNearCache":
        self._start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class AsyncLease:
    """`async with client.lease(...) as lease:` holds units, renewing them on
    a task at a third of the TTL, and releases them on exit. As
    gantry.client.Lease: `lost` is set (and `on_lost(lease)` runs) before
    the expiry of a lease that could not be renewed; `lost_error` says why."""

    def __init__(self, gantry: AsyncClient, pool: str, holder: str, count: int = 1, *, ttl: float = 0.0, wait: float = 0.0,
                 on_lost: Optional[Callable[["AsyncLease"], None]] = None):
        self._gantry = gantry
        self.pool, self.holder, self.count, self.ttl, self.wait = pool, holder, count, ttl, wait
        self.lease_id = ""
        self.expires_at = 0.0
        self.lost = asyncio.Event()
        self.lost_error: Optional[GantryError] = None
        self._on_lost = on_lost
        self._task: Optional[asyncio.Task] = None

    async def acquire(self) -> "AsyncLease":
        resp = await self._gantry._call(
            self._gantry.leases.Acquire,
            leases_pb2.AcquireLeaseRequest(pool=self.pool, holder=self.holder, count=self.count,
                                           ttl=duration(self.ttl), max_wait=duration(self.wait)),
            self.wait + self._gantry.timeout,
        )
        if not resp.granted:
            raise NotGranted(f"{self.count} units of {self.pool} not granted within {self.wait}s"
                             + denial_text(resp.denial_reason, self.holder))
        self.lease_id = resp.lease_id
        self.expires_at = unix_seconds(resp.expires_at)
        if self.ttl <= 0:
            self.ttl = max(self.expires_at - time.time(), 1.0)
        if self._gantry._own(self):
            self._task = asyncio.get_running_loop().create_task(self._renew())
        return self

    async def _renew(self) -> None:
        schedule = RenewSchedule(self.ttl, time.time(), self.expires_at)
        while True:
            await asyncio.sleep(schedule.sleep_for(time.time()))
            if time.time() >= schedule.lost_at():
                self._mark_lost(GantryError(grpc.StatusCode.UNAVAILABLE,
                                            f"lease {self.lease_id} of {self.pool} {schedule.why_lost()}"))
                return
            try:
                resp = await self._gantry._call(self._gantry.leases.Renew,
                                                leases_pb2.RenewLeaseRequest(lease_id=self.lease_id, ttl=duration(self.ttl)),
                                                max(schedule.lost_at() - time.time(), 0.01))
                self.expires_at = unix_seconds(resp.expires_at)
                schedule.renewed(time.time(), self.expires_at)
            except GantryError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    self._mark_lost(e)
                    return
                schedule.failed(time.time(), f"{e.code().name}: {e.details()}")

    def _mark_lost(self, error: GantryError) -> None:
        self.lost_error = error
        self.lost.set()
        if self._on_lost is not None:
            self._on_lost(self)

    async def _shut_down(self) -> None:
        """Stops renewing (release(), or the client's close())."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def release(self) -> bool:
        self._gantry._forget(self)
        await self._shut_down()
        if not self.lease_id:
            return False
        resp = await self._gantry._call(self._gantry.leases.Release, leases_pb2.ReleaseLeaseRequest(lease_id=self.lease_id))
        self.lease_id = ""
        return resp.released

    async def __aenter__(self) -> "AsyncLease":
        return await self.acquire()

    async def __aexit__(self, *exc) -> None:
        await self.release()


class AsyncQueryRecorder:
    """As gantry.client.QueryRecorder, on a task started by the first
    record() made in a running loop (so it may be made outside one);
    `await close()` flushes."""

    def __init__(self, gantry: AsyncClient, service: str, dialect: str = "", *, batch: int = 500,
                 interval: float = 1.0, queue_size: int = 10_000):
        self._gantry = gantry
        self.service, self.dialect = service, dialect
        self._batch, self._interval = batch, interval
        self._queue: "asyncio.Queue" = asyncio.Queue(maxsize=queue_size)
        self.dropped = 0
        self.failed = 0
        self._task: Optional[asyncio.Task] = None
        self._closed = not gantry._own(self)
        self._start()

    def _start(self) -> None:
        loop = _running_loop()
        if self._task is None and loop is not None:
            self._task = loop.create_task(self._run())

    def record(self, sql: str, seconds_taken: float, rows: int = 0, trace_id: str = "") -> bool:
        if self._closed:
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait(execution(sql, seconds_taken, rows, trace_id, self.service, self.dialect))
            self._start()
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            return False

    async def _send(self, pending) -> None:
        if not pending:
            return
        try:
            resp = await self._gantry._call(self._gantry.query.Record, query_pb2.RecordRequest(executions=pending))
            self.failed += resp.rejected
        except GantryError:
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

    async def _shut_down(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._start()
        await self._queue.put(None)
        if self._task is not None:
            await self._task

    async def close(self) -> None:
        """Sends what is queued and stops; later record() calls return False."""
        self._gantry._forget(self)
        await self._shut_down()

    async def __aenter__(self) -> "AsyncQueryRecorder":
        self._start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
