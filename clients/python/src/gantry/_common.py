"""What the sync and asyncio clients share: channel options, conversions, errors."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Dict, List, Optional, Tuple

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from gantry.v1 import cache_pb2, query_pb2

from ._resilience import SERVER, SERVICE_CONFIG, UNANSWERED, Breaker, PolicyState

CHANNEL_OPTIONS = [
    ("grpc.enable_retries", 1),
    ("grpc.service_config", SERVICE_CONFIG),
    ("grpc.keepalive_time_ms", 30_000),
]


@dataclass(frozen=True)
class Tls:
    """TLS to gantry's [server.tls]: the CA certificates to trust (PEM file;
    None: the system's roots), and for mutual TLS a client certificate and key.
    `server_name` overrides the name the server's certificate must carry."""

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    server_name: Optional[str] = None


def _read(path: Optional[str]) -> Optional[bytes]:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def channel_security(tls: Optional[Tls], token: Optional[str]):
    """The channel's credentials and extra options: None for plaintext.
    A token is sent as `authorization: Bearer <token>` on every call, and
    only over TLS (gRPC refuses call credentials on an insecure channel)."""
    if tls is None:
        if token is not None:
            raise ValueError("a token needs tls=Tls(...): it is never sent in plaintext")
        return None, []
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )
    if token is not None:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return creds, options


def denial_text(reason: int, holder: str) -> str:
    """Why the server refused a lease, as its answer says (DenialReason)."""
    return {
        1: " (the pool is full)",
        2: f" (holder {holder} is at the pool's max_per_holder)",
        3: " (callers that came first are waiting)",
    }.get(reason, "")


class NotGranted(Exception):
    """A wait for tokens or lease units ran out before they were granted."""

    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


class GantryError(grpc.RpcError):
    """Any failure of a helper's call other than NotGranted: gantry's refusal
    or the channel's. `code` is the grpc.StatusCode (`code.name` its name) and
    `details` gantry's message; `code()`/`details()` answer too, as on gRPC's
    own errors (it is a grpc.RpcError, so `except grpc.RpcError` still works)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"gantry answered {code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    @classmethod
    def of(cls, error: grpc.RpcError) -> "GantryError":
        if isinstance(error, GantryError):
            return error
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "")


def closed_error() -> GantryError:
    """What every helper's call after close() raises (CANCELLED, as gRPC's own closed channels answer)."""
    return GantryError(grpc.StatusCode.CANCELLED, "this gantry client is closed")


@dataclass(frozen=True)
class Decision:
    """A rate-limit answer; durations in seconds. `source` says who decided:
    "server" (gantry), or when gantry did not answer the failure policy
    ("fail_open", "fail_closed", "local"), with `reason` saying why."""

    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float
    waited: float
    source: str = SERVER
    reason: str = ""


def policy_decision(state: PolicyState, breaker: Breaker, policy: str, limit: str, key: str, tokens: int,
                    error: "GantryError", deadline: float) -> Tuple[Decision, Optional[float]]:
    """The failure policy's Decision (counted) when `error` means gantry did
    not answer, and how long to pause before asking again (None: answer with
    it: allowed, or its retry-after would pass `deadline`, a monotonic time).
    Raises `error` when gantry answered: it is the caller's."""
    if error.code() not in UNANSWERED:
        raise error
    fb = state.fallback(policy, limit, key, tokens, breaker.remaining(), error.details())
    d = Decision(fb.allowed, fb.remaining, fb.retry_after, 0.0, 0.0, fb.source, fb.reason)
    state.count(limit, d)
    if d.allowed or time.monotonic() + d.retry_after > deadline:
        return d, None
    return d, max(d.retry_after, 0.01)


def unix_seconds(ts) -> float:
    """A protobuf Timestamp as Unix seconds. Not `ToDatetime().timestamp()`:
    that datetime is naive, so `timestamp()` reads it as local time and is off
    by the machine's UTC offset (a 30 s lease renewed every 9,610 s in
    Los Angeles)."""
    return ts.seconds + ts.nanos / 1e9


def duration(seconds: Optional[float]) -> Optional[duration_pb2.Duration]:
    if seconds is None or seconds <= 0:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=seconds))
    return d


def seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def decision(resp) -> Decision:
    return Decision(
        allowed=resp.allowed,
        remaining=resp.remaining,
        retry_after=seconds(resp.retry_after),
        reset_after=seconds(resp.reset_after),
        waited=seconds(resp.waited),
    )


def execution(sql: str, seconds_taken: float, rows: int, trace_id: str, service: str, dialect: str):
    """One executed query, stamped now, as both recorders send it."""
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return query_pb2.QueryExecution(sql=sql, dialect=dialect, duration=duration(seconds_taken),
                                    rows=rows, service=service, trace_id=trace_id, time=now)


# TopQueries orders by name; "total_time" when not given.
QUERY_ORDERS = {
    "total_time": query_pb2.QUERY_ORDER_TOTAL_TIME,
    "mean_time": query_pb2.QUERY_ORDER_MEAN_TIME,
    "p99": query_pb2.QUERY_ORDER_P99,
    "calls": query_pb2.QUERY_ORDER_CALLS,
    "rows": query_pb2.QUERY_ORDER_ROWS,
}


@dataclass(frozen=True)
class BatchingHint:
    """Set when a statement ran many times in one trace (N+1)."""

    max_per_trace: int
    occurrences: int
    suggestion: str


@dataclass(frozen=True)
class QueryStats:
    """One fingerprint's statistics (TopQueries); durations as timedelta."""

    fingerprint: str
    service: str
    sample: str
    calls: int
    rows: int
    total: timedelta
    mean: timedelta
    min: timedelta
    max: timedelta
    stddev: timedelta
    p50: timedelta
    p95: timedelta
    p99: timedelta
    first_seen: Optional[datetime]
    last_seen: Optional[datetime]
    batching: Optional[BatchingHint]


@dataclass(frozen=True)
class SlowQuery:
    """One execution over the slow threshold (SlowQueries)."""

    fingerprint: str
    text: str
    duration: timedelta
    rows: int
    service: str
    trace_id: str
    time: Optional[datetime]


def _when(message, field: str) -> Optional[datetime]:
    if not message.HasField(field):
        return None
    return datetime.fromtimestamp(unix_seconds(getattr(message, field)), tz=timezone.utc)


def top_queries_request(order_by: str, limit: int, service: str) -> query_pb2.TopQueriesRequest:
    if order_by not in QUERY_ORDERS:
        raise ValueError(f"order_by must be one of {', '.join(QUERY_ORDERS)}, got {order_by!r}")
    return query_pb2.TopQueriesRequest(order_by=QUERY_ORDERS[order_by], limit=limit, service=service)


def slow_queries_request(since: Optional[datetime], limit: int) -> query_pb2.SlowQueriesRequest:
    request = query_pb2.SlowQueriesRequest(limit=limit)
    if since is not None:
        if since.tzinfo is None:
            raise ValueError("since must be an aware datetime (e.g. datetime.now(timezone.utc)): a naive one has no zone")
        request.since.FromDatetime(since.astimezone(timezone.utc))
    return request


def query_stats(resp: query_pb2.TopQueriesResponse) -> List[QueryStats]:
    def td(d) -> timedelta:
        return timedelta(seconds=seconds(d))

    return [
        QueryStats(
            fingerprint=q.fingerprint, service=q.service, sample=q.sample, calls=q.calls, rows=q.rows,
            total=td(q.total), mean=td(q.mean), min=td(q.min), max=td(q.max), stddev=td(q.stddev),
            p50=td(q.p50), p95=td(q.p95), p99=td(q.p99),
            first_seen=_when(q, "first_seen"), last_seen=_when(q, "last_seen"),
            batching=BatchingHint(q.batching.max_per_trace, q.batching.occurrences, q.batching.suggestion)
            if q.HasField("batching") else None,
        )
        for q in resp.queries
    ]


def slow_queries(resp: query_pb2.SlowQueriesResponse) -> List[SlowQuery]:
    return [
        SlowQuery(fingerprint=q.fingerprint, text=q.text, duration=timedelta(seconds=seconds(q.duration)),
                  rows=q.rows, service=q.service, trace_id=q.trace_id, time=_when(q, "time"))
        for q in resp.queries
    ]


class NearItems:
    """What both near caches keep: local copies with their versions, a
    generation bumped by every event (a read that raced one is not kept),
    and whether the watch is live. Not locked: the sync cache locks around it."""

    def __init__(self, max_entries: int, max_stale: float = 5.0):
        self.items: Dict[str, Tuple[bytes, int]] = {}
        self.generation = 0
        self.live = False
        self.max = max(1, max_entries)
        self.max_stale = max(0.0, max_stale)
        self.down_since: Optional[float] = None

    def resync(self) -> None:
        """The stream is (back) up: start over, anything may have changed."""
        self.generation += 1
        self.live, self.down_since = True, None
        self.items.clear()

    def down(self, now: float) -> None:
        """The stream broke: what is held answers for max_stale more seconds."""
        self.generation += 1
        if self.live:
            self.live, self.down_since = False, now
        self.expire_stale(now)

    def expire_stale(self, now: float) -> None:
        if not self.live and self.items and (self.down_since is None or now - self.down_since >= self.max_stale):
            self.items.clear()

    def apply(self, event) -> None:
        kinds = cache_pb2.WatchEvent
        self.generation += 1
        if event.kind == kinds.KIND_PUT:
            held = self.items.get(event.key)
            if held is not None and held[1] < event.version:
                self.items[event.key] = (event.value, event.version)
        elif event.kind in (kinds.KIND_DELETE, kinds.KIND_EXPIRE):
            self.items.pop(event.key, None)
        elif event.kind == kinds.KIND_RESYNC:
            self.items.clear()

    def remember(self, key: str, value: bytes, version: int, generation: int, live: bool) -> None:
        """Keeps a value read from gantry, unless the watch was down or an event raced the read."""
        if live and self.live and self.generation == generation:
            if len(self.items) >= self.max:
                self.items.pop(next(iter(self.items)))
            self.items[key] = (value, version)
