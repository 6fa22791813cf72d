"""The synchronous client and its helpers."""

from __future__ import annotations

import functools
import queue
import threading
import time
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

import grpc

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

F = TypeVar("F", bound=Callable)
T = TypeVar("T")


class Client:
    """One channel to gantry (every call multiplexed over it) and the stubs.

    `target` is one address, a list of them (or a comma-separated string) or
    a `dns:///` name with several addresses: calls are balanced round-robin.
    Calls without a timeout get `timeout` seconds; idempotent calls are
    retried by gRPC on UNAVAILABLE. The helpers raise GantryError (with the
    gRPC code) for every failure but NotGranted, and go through a circuit
    breaker (`circuit_breaker`: failures in a row, first and longest back-off
    in seconds). Limiters answer by `failure_policy` when gantry does not
    ("fail_open", "fail_closed" or "local" with `local_share` instances
    sharing each limit) and call `on_decision(limit, decision)` for each
    decision. `channel` uses a channel you built; `credentials` any
    grpc.ChannelCredentials; `tls` and `token` build them.
    """

    def __init__(self, target: Union[str, Sequence[str]], *, timeout: float = 5.0,
                 channel: Optional[grpc.Channel] = None,
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
        if channel is not None:
            self.channel = channel
        elif creds is None:
            self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS + options)
        else:
            self.channel = grpc.secure_channel(target, creds, options=CHANNEL_OPTIONS + options)
        self.timeout = timeout
        self.rate_limiter = ratelimit_pb2_grpc.RateLimiterStub(self.channel)
        self.cache = cache_pb2_grpc.CacheStub(self.channel)
        self.query = query_pb2_grpc.QueryAnalyzerStub(self.channel)
        self.traces = traces_pb2_grpc.TracesStub(self.channel)
        self.leases = leases_pb2_grpc.LeasesStub(self.channel)
        # What close() ends with the channel: recorders (flushed), near
        # caches' watches, leases' renewals.
        self._owned: set = set()
        self._owned_lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _own(self, thing: Any) -> bool:
        """Registers what close() ends; False once the client is closed."""
        with self._owned_lock:
            if self._closed:
                return False
            self._owned.add(thing)
            return True

    def _forget(self, thing: Any) -> None:
        with self._owned_lock:
            self._owned.discard(thing)

    @property
    def decisions(self) -> Dict[str, int]:
        """How many limiter decisions each source made: server, fail_open, fail_closed, local."""
        return dict(self._policy.counts)

    def _call(self, method: Callable[..., T], request: Any, timeout: Optional[float] = None) -> T:
        """A helper's call: refused after close(), through the breaker, failures as GantryError."""
        if self._closed:
            raise closed_error()
        go, probe = self._breaker.admit()
        if not go:
            raise GantryError(grpc.StatusCode.UNAVAILABLE, self._breaker.refusal())
        try:
            result = method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as e:
            error = GantryError.of(e)
            self._breaker.record(probe, outcome_of(error.code()))
            raise error from e
        except ValueError as e:  # grpc's "Cannot invoke RPC on closed channel!"
            self._breaker.record(probe, "neither")
            if self._closed:
                raise closed_error() from e
            raise
        self._breaker.record(probe, "answered")
        return result

    def close(self) -> None:
        """Flushes the recorders this client made, ends its near caches'
        watches and its leases' renewals (their units return when the TTL
        ends; release() first to return them at once), then closes the
        channel. Helpers' calls after it raise GantryError (CANCELLED)."""
        with self._owned_lock:
            if self._closed:
                return
            owned, self._owned = list(self._owned), set()
        for thing in owned:
            thing._shut_down()
        self._closed = True
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def limiter(self, limit: str, key: str = "", *, client: str = "", wait: float = 0.0,
                failure_policy: Optional[str] = None) -> "RateLimiter":
        return RateLimiter(self, limit, key, client=client, wait=wait, failure_policy=failure_policy)

    def namespace(self, name: str) -> "Cache":
        return Cache(self, name)

    def lease(self, pool: str, holder: str, count: int = 1, *, ttl: float = 0.0, wait: float = 0.0,
              on_lost: Optional[Callable[["Lease"], None]] = None) -> "Lease":
        return Lease(self, pool, holder, count, ttl=ttl, wait=wait, on_lost=on_lost)

    def recorder(self, service: str, dialect: str = "", **kwargs) -> "QueryRecorder":
        return QueryRecorder(self, service, dialect, **kwargs)

    def top_queries(self, *, order_by: str = "total_time", limit: int = 0, service: str = "") -> List[QueryStats]:
        """The heaviest statements recorded: order_by is total_time, mean_time,
        p99, calls or rows; limit 0 means 20; service "" the whole fleet."""
        return query_stats(self._call(self.query.TopQueries, top_queries_request(order_by, limit, service)))

    def slow_queries(self, *, since: Optional[datetime] = None, limit: int = 0) -> List[SlowQuery]:
        """Executions over the slow threshold, newest first: since an aware
        datetime (None: all that are kept), at most limit (0: 50)."""
        return slow_queries(self._call(self.query.SlowQueries, slow_queries_request(since, limit)))


class RateLimiter:
    """Tokens from one of gantry's limits, shared by the fleet.

    `with limiter:` and `@limiter` take one token, waiting fairly up to
    `wait` seconds; NotGranted when the wait runs out.
    """

    def __init__(self, gantry: Client, limit: str, key: str = "", *, client: str = "", wait: float = 0.0,
                 failure_policy: Optional[str] = None):
        self._gantry = gantry
        self.limit = limit
        self.key = key
        self.client = client
        self.wait = wait
        # What to answer when gantry does not: the client's unless told.
        self.policy = gantry._policy.policy if failure_policy is None else failure_policy

    def acquire(self, tokens: int = 1, *, key: Optional[str] = None, wait: Optional[float] = None,
                dry_run: bool = False) -> Decision:
        """Takes tokens now, or waits up to `wait` seconds in the bucket's fair queue.
        A wait that runs out is `allowed=False`, not an error."""
        wait = self.wait if wait is None else wait
        request = ratelimit_pb2.AcquireRequest(
            limit=self.limit, key=self.key if key is None else key, tokens=tokens,
            max_wait=duration(wait), client=self.client, dry_run=dry_run,
        )
        gantry, policy = self._gantry, self._gantry._policy
        deadline = time.monotonic() + wait
        while True:
            try:
                # The call may last the wait plus the usual timeout.
                d = decision(gantry._call(gantry.rate_limiter.Acquire, request, wait + gantry.timeout))
            except GantryError as e:
                if gantry.closed:
                    raise
                # A policy's denial waits its retry-after within `wait`, then asks again.
                d, pause = policy_decision(policy, gantry._breaker, self.policy, self.limit, request.key, tokens, e,
                                           deadline)
                if pause is None:
                    return d
                time.sleep(pause)
                continue
            policy.count(self.limit, d)
            if self.policy == LOCAL and policy.needs_learning(self.limit, time.monotonic()):
                threading.Thread(target=self._learn, name="gantry-learn-limits", daemon=True).start()
            return d

    def _learn(self) -> None:
        """Asks gantry for the limits' parameters, for the local policy."""
        try:
            self._gantry._policy.learn(self._gantry._call(self._gantry.rate_limiter.ListLimits,
                                                          ratelimit_pb2.ListLimitsRequest()))
        except GantryError:
            pass  # asked again at the next decision by gantry, a second on

    def __enter__(self) -> Decision:
        d = self.acquire()
        if not d.allowed:
            why = f" ({d.source}: {d.reason})" if d.source != SERVER else ""
            raise NotGranted(f"{self.limit}/{self.key}: no token within {self.wait}s{why}", d.retry_after)
        return d

    def __exit__(self, *exc) -> None:
        return None

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def limited(*args, **kwargs):
            with self:
                return fn(*args, **kwargs)

        return limited  # type: ignore[return-value]


class Cache:
    """One namespace of the shared cache."""

    def __init__(self, gantry: Client, namespace: str):
        self._gantry = gantry
        self.namespace = namespace

    def get(self, key: str) -> Tuple[Optional[bytes], int]:
        """(value, version); value is None for a missing or expired key."""
        resp = self._gantry._call(self._gantry.cache.Get, cache_pb2.GetRequest(namespace=self.namespace, key=key))
        return (resp.value if resp.found else None), resp.version

    def put(self, key: str, value: bytes, *, ttl: float = 0.0, if_version: Optional[int] = None,
            if_absent: bool = False) -> int:
        """Writes a key and returns its version; a condition that does not hold
        raises GantryError with FAILED_PRECONDITION."""
        request = cache_pb2.PutRequest(namespace=self.namespace, key=key, value=value, ttl=duration(ttl))
        if if_version is not None:
            request.if_version = if_version
        elif if_absent:
            request.if_absent = True
        return self._gantry._call(self._gantry.cache.Put, request).version

    def delete(self, key: str) -> bool:
        resp = self._gantry._call(self._gantry.cache.Delete, cache_pb2.DeleteRequest(namespace=self.namespace, key=key))
        return resp.deleted

    def near_cache(self, prefix: str = "", max_entries: int = 10_000, *, max_stale: float = 5.0) -> "NearCache":
        return NearCache(self, prefix, max_entries, max_stale=max_stale)


class NearCache:
    """Recently read keys kept in process and coherent through Watch: puts,
    deletes and expiries from any instance update or drop the local copy; a
    RESYNC clears it. While the stream is down it answers from what it holds
    for at most `max_stale` seconds, then drops it (reads go to gantry); when
    the stream is back it starts over. Use as a context manager, or call close()."""

    def __init__(self, cache: Cache, prefix: str = "", max_entries: int = 10_000, *, max_stale: float = 5.0):
        self._cache = cache
        self._prefix = prefix
        self._near = NearItems(max_entries, max_stale)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._call = None
        self._thread = threading.Thread(target=self._watch, name="gantry-near-cache", daemon=True)
        if cache._gantry._own(self):
            self._thread.start()
        else:
            self._closed.set()

    def _watch(self) -> None:
        backoff = 0.05
        while not self._closed.is_set():
            try:
                self._call = self._cache._gantry.cache.Watch(
                    cache_pb2.WatchRequest(namespace=self._cache.namespace, key_prefix=self._prefix, include_values=True)
                )
                # Headers arrive once gantry has subscribed: from then on every change reaches us.
                # (A call that failed instead returns from initial_metadata() too, inactive.)
                self._call.initial_metadata()
                if self._call.is_active():
                    with self._lock:
                        self._near.resync()
                for event in self._call:
                    with self._lock:
                        self._near.apply(event)
                    backoff = 0.05
            except grpc.RpcError:
                pass
            with self._lock:
                self._near.down(time.monotonic())
            self._closed.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def get(self, key: str) -> Optional[bytes]:
        with self._lock:
            self._near.expire_stale(time.monotonic())
            held = self._near.items.get(key)
            generation, live = self._near.generation, self._near.live
        if held is not None:
            return held[0]
        value, version = self._cache.get(key)
        if value is not None:
            with self._lock:
                self._near.remember(key, value, version, generation, live)
        return value

    def __len__(self) -> int:
        with self._lock:
            self._near.expire_stale(time.monotonic())
            return len(self._near.items)

    def _shut_down(self) -> None:
        self._closed.set()
        if self._call is not None:
            self._call.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def close(self) -> None:
        self._cache._gantry._forget(self)
        self._shut_down()

    def __enter__(self) -> "NearCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Lease:
    """Units of a global budget, held by a context manager that renews them
    in the background at a third of the TTL and releases them on exit.

        with client.lease("orders-db", holder=hostname, count=10, ttl=30, wait=5,
                          on_lost=lambda lease: shrink_pool()) as lease:
            ...

    If it cannot be renewed (gantry unreachable until a tenth of the TTL —
    50 ms to 5 s — before its expiry, or the lease gone), `lost` is set and
    `on_lost(lease)` runs before the units return: stop using them.
    `lost_error` says why."""

    def __init__(self, gantry: Client, pool: str, holder: str, count: int = 1, *, ttl: float = 0.0, wait: float = 0.0,
                 on_lost: Optional[Callable[["Lease"], None]] = None):
        self._gantry = gantry
        self.pool, self.holder, self.count = pool, holder, count
        self.ttl, self.wait = ttl, wait
        self.lease_id = ""
        self.expires_at = 0.0
        self.lost = threading.Event()
        self.lost_error: Optional[GantryError] = None
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def acquire(self) -> "Lease":
        resp = self._gantry._call(
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
            self._thread = threading.Thread(target=self._renew, name="gantry-lease", daemon=True)
            self._thread.start()
        return self

    def _renew(self) -> None:
        schedule = RenewSchedule(self.ttl, time.time(), self.expires_at)
        while True:
            if self._stop.wait(schedule.sleep_for(time.time())):
                return
            if time.time() >= schedule.lost_at():
                self._mark_lost(GantryError(grpc.StatusCode.UNAVAILABLE,
                                            f"lease {self.lease_id} of {self.pool} {schedule.why_lost()}"))
                return
            try:
                resp = self._gantry._call(self._gantry.leases.Renew,
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

    def _shut_down(self) -> None:
        """Stops renewing (release(), or the client's close())."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def release(self) -> bool:
        self._gantry._forget(self)
        self._shut_down()
        if not self.lease_id:
            return False
        resp = self._gantry._call(self._gantry.leases.Release, leases_pb2.ReleaseLeaseRequest(lease_id=self.lease_id))
        self.lease_id = ""
        return resp.released

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class QueryRecorder:
    """Sends executed queries to gantry's statistics from a background thread,
    in batches by size and time. record() never blocks: beyond `queue_size`
    pending executions it drops and counts."""

    def __init__(self, gantry: Client, service: str, dialect: str = "", *, batch: int = 500,
                 interval: float = 1.0, queue_size: int = 10_000):
        self._gantry = gantry
        self.service, self.dialect = service, dialect
        self._batch, self._interval = batch, interval
        self._queue: "queue.Queue" = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self.failed = 0
        # Guards the queue's end: a record() after close() is dropped and
        # says so (False), never left behind the end marker unsent.
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="gantry-recorder", daemon=True)
        if gantry._own(self):
            self._thread.start()
        else:
            self._closed = True  # the client is closed: record() refuses

    def record(self, sql: str, seconds_taken: float, rows: int = 0, trace_id: str = "") -> bool:
        with self._lock:
            if self._closed:
                self.dropped += 1
                return False
            try:
                self._queue.put_nowait(execution(sql, seconds_taken, rows, trace_id, self.service, self.dialect))
                return True
            except queue.Full:
                self.dropped += 1
                return False

    def _send(self, pending) -> None:
        if not pending:
            return
        try:
            resp = self._gantry._call(self._gantry.query.Record, query_pb2.RecordRequest(executions=pending))
            self.failed += resp.rejected
        except GantryError:
            self.failed += len(pending)

    def _run(self) -> None:
        pending = []
        deadline = time.monotonic() + self._interval
        while True:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                item = ...
            if item is None:
                self._send(pending)
                return
            if item is not ...:
                pending.append(item)
            if len(pending) >= self._batch or time.monotonic() >= deadline:
                self._send(pending)
                pending = []
                deadline = time.monotonic() + self._interval

    def _shut_down(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._thread.join()

    def close(self) -> None:
        """Sends what is queued and stops; later record() calls return False."""
        self._gantry._forget(self)
        self._shut_down()

    def __enter__(self) -> "QueryRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
