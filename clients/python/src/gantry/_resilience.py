"""What keeps a caller running when gantry does not answer, shared by the sync
and asyncio clients: the limiter's failure policy, its local token bucket,
the circuit breaker and the list of calls a retry cannot make act twice.
docs/client-resilience.md describes them for all four clients."""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import grpc

from gantry.v1 import ratelimit_pb2

FAIL_OPEN = "fail_open"
FAIL_CLOSED = "fail_closed"
LOCAL = "local"
POLICIES = (FAIL_OPEN, FAIL_CLOSED, LOCAL)
SERVER = "server"

# The calls a retry cannot make act twice: the only ones retried on UNAVAILABLE.
IDEMPOTENT: Dict[str, Tuple[str, ...]] = {
    "gantry.v1.RateLimiter": ("ListLimits", "InspectBucket", "HotKeys"),
    "gantry.v1.Cache": ("Get", "GetMany", "Stats"),
    "gantry.v1.Leases": ("Renew", "PoolStatus"),
    "gantry.v1.QueryAnalyzer": ("Analyze", "TopQueries", "SlowQueries"),
    "gantry.v1.Traces": ("GetTrace", "EndpointStats"),
}

# gRPC's own round-robin over every address, and its retries of the
# idempotent calls (3 retries, 50 ms to 2 s).
SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": service, "method": method} for service, methods in IDEMPOTENT.items()
                         for method in methods],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)

UNANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def channel_target(target: Union[str, Sequence[str]]) -> Tuple[str, List[Tuple[str, str]]]:
    """One address, a comma-separated list or a list of them, or a dns:///
    name, as a gRPC target and the channel options it needs. A list becomes
    grpc's `ipv4:`/`ipv6:` list (names in it are resolved once, here; use
    dns:/// for a name whose addresses change), with the first address as
    the :authority (the list itself is not a valid one)."""
    parts = [p.strip() for p in (target.split(",") if isinstance(target, str) else target) if p.strip()]
    if not parts:
        raise ValueError("no gantry address given")
    if len(parts) == 1:
        return parts[0], []
    authority = [("grpc.default_authority", parts[0])]
    resolved = [_numeric(p) for p in parts]
    if all(":" not in host for host, _ in resolved):
        return "ipv4:" + ",".join(f"{host}:{port}" for host, port in resolved), authority
    return "ipv6:" + ",".join(f"[{host}]:{port}" if ":" in host else f"[::ffff:{host}]:{port}"
                              for host, port in resolved), authority


def _numeric(address: str) -> Tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"gantry address {address!r} is not host:port")
    host = host.strip("[]")
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        return str(info[0][4][0]), port


class CircuitOpen(Exception):
    """The breaker refused a call without sending it (raised as GantryError UNAVAILABLE)."""


class Breaker:
    """The client's circuit breaker: closed until `failures` consecutive
    calls go unanswered, then open for a back-off, then one probe; a failed
    probe doubles the back-off up to `longest`. Thread-safe; pure but for the
    clock it is given."""

    def __init__(self, failures: int = 5, open_for: float = 1.0, longest: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold = max(1, failures)
        self.shortest, self.longest = open_for, max(longest, open_for)
        self.clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._backoff = open_for
        self._open_until: Optional[float] = None
        self._probing = False

    def admit(self) -> Tuple[bool, bool]:
        """(may the call go, is it the probe)."""
        with self._lock:
            if self._open_until is None:
                return True, False
            if self.clock() < self._open_until or self._probing:
                return False, False
            self._probing = True
            return True, True

    def remaining(self) -> float:
        """Seconds until the next probe may go (0 when closed)."""
        with self._lock:
            return 0.0 if self._open_until is None else max(0.0, self._open_until - self.clock())

    def record(self, probe: bool, outcome: str) -> None:
        """outcome: "answered", "failed" (gantry did not answer) or "neither" (cancelled)."""
        with self._lock:
            if probe:
                self._probing = False
            if outcome == "answered":
                self._failures, self._backoff, self._open_until = 0, self.shortest, None
            elif outcome == "failed":
                self._failures += 1
                if probe:
                    self._backoff = min(self._backoff * 2, self.longest)
                    self._open_until = self.clock() + self._backoff
                elif self._open_until is None and self._failures >= self.threshold:
                    self._open_until = self.clock() + self._backoff

    def refusal(self) -> str:
        wait = self.remaining()
        return "circuit open: gantry did not answer the last calls" + (f"; next try in {wait:.3f}s" if wait else "")


def outcome_of(code: Optional[grpc.StatusCode]) -> str:
    if code is None:
        return "answered"
    if code in UNANSWERED:
        return "failed"
    if code == grpc.StatusCode.CANCELLED:
        return "neither"
    return "answered"


@dataclass
class TokenBucket:
    """The local policy's bucket: `rate` tokens a second up to `burst`, starting full."""

    rate: float
    burst: float
    tokens: float = -1.0
    last: float = 0.0

    def take(self, now: float, n: int) -> Tuple[bool, int, float]:
        """(allowed, remaining, retry_after seconds)."""
        if self.tokens < 0:
            self.tokens = self.burst
        elif now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if n <= self.tokens:
            self.tokens -= n
            return True, int(self.tokens), 0.0
        if n > self.burst or self.rate <= 0:
            return False, int(self.tokens), 3600.0  # can never be granted
        return False, int(self.tokens), (n - self.tokens) / self.rate


MAX_LOCAL_KEYS = 10_000
RELEARN_EVERY = 60.0


class LocalLimit:
    """One limit's parameters (from ListLimits) and its local buckets."""

    def __init__(self, info: ratelimit_pb2.LimitInfo):
        self.info = info
        self.buckets: Dict[str, TokenBucket] = {}

    def take(self, now: float, key: str, n: int, share: int) -> Tuple[bool, int, float]:
        if self.info.scope == ratelimit_pb2.LIMIT_SCOPE_SHARED:
            key = ""
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= MAX_LOCAL_KEYS:
                self.buckets.clear()
            rate, period, burst = self.info.rate, self.info.period.ToTimedelta().total_seconds(), self.info.burst
            for o in self.info.overrides:
                if o.key == key:
                    rate, period, burst = o.rate, o.period.ToTimedelta().total_seconds(), o.burst
            per_second = rate / period if period > 0 else 0.0
            share = max(1, share)
            bucket = TokenBucket(rate=per_second / share, burst=max(1.0, math.floor(burst / share)))
            self.buckets[key] = bucket
        return bucket.take(now, n)


@dataclass(frozen=True)
class Fallback:
    """The policy's answer: allowed, remaining, retry_after, source, reason."""

    allowed: bool
    remaining: int
    retry_after: float
    source: str
    reason: str


class PolicyState:
    """What one client's limiters share to answer without gantry: the limits
    learned, their local buckets, the decision counters and the hook."""

    def __init__(self, policy: str, share: int, hook: Optional[Callable[[str, object], None]]):
        if policy not in POLICIES:
            raise ValueError(f"failure_policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.policy = policy
        self.share = max(1, share)
        self.hook = hook
        self.counts: Dict[str, int] = {SERVER: 0, FAIL_OPEN: 0, FAIL_CLOSED: 0, LOCAL: 0}
        self._lock = threading.Lock()
        self._limits: Dict[str, LocalLimit] = {}
        self._learned = -math.inf

    def count(self, limit: str, decision) -> None:
        with self._lock:
            self.counts[decision.source] += 1
        if self.hook is not None:
            self.hook(limit, decision)

    def needs_learning(self, limit: str, now: float) -> bool:
        """Whether ListLimits should be asked now (claims the turn)."""
        with self._lock:
            if limit in self._limits and now - self._learned < RELEARN_EVERY:
                return False
            if now - self._learned < 1.0:
                return False
            self._learned = now
            return True

    def knows(self, limit: str) -> bool:
        with self._lock:
            return limit in self._limits

    def learn(self, resp: ratelimit_pb2.ListLimitsResponse) -> None:
        by_name = {info.name: info for info in resp.limits}
        if resp.default_limit in by_name:
            by_name[""] = by_name[resp.default_limit]
        with self._lock:
            for name, info in by_name.items():
                held = self._limits.get(name)
                if held is None or held.info != info:
                    self._limits[name] = LocalLimit(info)

    def fallback(self, policy: str, limit: str, key: str, tokens: int, retry: float, cause: str) -> Fallback:
        if policy == FAIL_CLOSED:
            return Fallback(False, 0, max(retry, 0.1), FAIL_CLOSED, f"gantry unreachable: {cause}")
        if policy == LOCAL:
            with self._lock:
                local = self._limits.get(limit) or self._limits.get("")
                if local is not None:
                    allowed, remaining, after = local.take(time.monotonic(), key, tokens, self.share)
                    return Fallback(allowed, remaining, after, LOCAL, "")
            return Fallback(True, 0, 0.0, FAIL_OPEN, f"limit {limit} not learned yet")
        return Fallback(True, 0, 0.0, FAIL_OPEN, "")


def lost_margin(ttl: float) -> float:
    """How long before its expiry a lease that could not be renewed is reported lost."""
    return min(max(ttl / 10, 0.05), 5.0)


class RenewSchedule:
    """When a lease renews: every third of its TTL, a tenth after a failed
    renewal (at least 50 ms), and lost at `lost_margin` before its expiry.
    Times are Unix seconds, as the lease's expiry."""

    def __init__(self, ttl: float, now: float, expires_at: float):
        self.every, self.again, self.margin = max(ttl / 3, 0.1), max(ttl / 10, 0.05), lost_margin(ttl)
        self.expires_at = expires_at
        self.next_try = now + self.every
        self.last_failure: Optional[str] = None

    def lost_at(self) -> float:
        return self.expires_at - self.margin

    def sleep_for(self, now: float) -> float:
        return max(0.0, min(self.next_try, self.lost_at()) - now)

    def renewed(self, now: float, expires_at: float) -> None:
        self.expires_at, self.next_try, self.last_failure = expires_at, now + self.every, None

    def failed(self, now: float, why: str) -> None:
        self.next_try, self.last_failure = now + self.again, why

    def why_lost(self) -> str:
        return "not renewed before its expiry: " + (self.last_failure or "no renewal was answered")

