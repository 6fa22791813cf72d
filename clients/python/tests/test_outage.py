"""What the clients do when gantry does not answer: the failure policy, the
circuit breaker, several endpoints, leases and the near cache — against a real
gantry that the tests SIGKILL and start again (docs/client-resilience.md)."""

import asyncio
import statistics
import threading
import time

import grpc
import pytest

from gantry import FAIL_CLOSED, FAIL_OPEN, LOCAL, Client, GantryError
from gantry._resilience import IDEMPOTENT, Breaker, LocalLimit, RenewSchedule, channel_target
from gantry.aio import AsyncClient
from gantry.v1 import cache_pb2, leases_pb2, query_pb2, ratelimit_pb2, traces_pb2
from google.protobuf import duration_pb2


def eventually(what, cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


# --- the pure parts -----------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_breaker_opens_probes_and_closes():
    clock = FakeClock()
    b = Breaker(3, 1.0, 4.0, clock)

    def fail():
        go, probe = b.admit()
        assert go
        b.record(probe, "failed")

    fail(); fail()
    go, probe = b.admit(); b.record(probe, "answered")  # an answer starts the count again
    fail(); fail(); fail()
    assert b.admit() == (False, False) and b.remaining() == 1.0
    clock.now += 1.0
    assert b.admit() == (True, True)
    assert b.admit() == (False, False), "one probe at a time"
    b.record(True, "failed")
    assert b.remaining() == 2.0, "a failed probe doubles the back-off"
    for _ in range(2):
        clock.now += b.remaining()
        b.admit(); b.record(True, "failed")
    assert b.remaining() == 4.0, "up to the longest"
    clock.now += 4.0
    b.admit(); b.record(True, "neither")
    assert b.admit() == (True, True), "a cancelled probe lets the next call probe"
    b.record(True, "answered")
    assert b.admit() == (True, False) and b.remaining() == 0.0


def test_local_limit_takes_its_share():
    second = duration_pb2.Duration(seconds=1)
    info = ratelimit_pb2.LimitInfo(name="api", rate=100, period=second, burst=40,
                                   overrides=[ratelimit_pb2.LimitOverride(key="vip", rate=1000, period=second, burst=400)])
    limit = LocalLimit(info)
    for _ in range(10):
        assert limit.take(0.0, "a", 1, 4)[0], "a share of 4: a burst of 10"
    allowed, _, retry = limit.take(0.0, "a", 1, 4)
    assert not allowed and retry == pytest.approx(0.04), "25 tokens a second"
    assert limit.take(0.04, "a", 1, 4)[0]
    assert limit.take(0.0, "b", 10, 4)[0], "each key its own bucket"
    assert limit.take(0.0, "vip", 100, 4)[0], "an override's burst of 400/4"
    assert limit.take(0.0, "c", 11, 4)[1:] != (0, 0.0) and not limit.take(0.0, "c", 11, 4)[0]
    shared = LocalLimit(ratelimit_pb2.LimitInfo(rate=1, period=duration_pb2.Duration(seconds=60), burst=1,
                                                scope=ratelimit_pb2.LIMIT_SCOPE_SHARED))
    assert shared.take(0.0, "x", 1, 1)[0] and not shared.take(0.0, "y", 1, 1)[0], "one bucket for every key"


def test_targets_and_the_idempotent_calls():
    assert channel_target("gantry:7070") == ("gantry:7070", [])
    assert channel_target("dns:///gantry-headless:7070") == ("dns:///gantry-headless:7070", [])
    assert channel_target("127.0.0.1:1, 127.0.0.2:2") == ("ipv4:127.0.0.1:1,127.0.0.2:2", [("grpc.default_authority", "127.0.0.1:1")])
    assert channel_target(["127.0.0.1:1", "localhost:2"])[0].startswith("ipv")
    with pytest.raises(ValueError):
        channel_target([])
    services = {}
    for module in (ratelimit_pb2, cache_pb2, leases_pb2, query_pb2, traces_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            services[service.full_name] = {m.name for m in service.methods}
    for service, methods in IDEMPOTENT.items():
        assert set(methods) <= services[service], f"{service}: {set(methods) - services[service]}"
    for service, method in [("gantry.v1.RateLimiter", "Acquire"), ("gantry.v1.Cache", "Put"),
                            ("gantry.v1.Leases", "Release"), ("gantry.v1.QueryAnalyzer", "Record")]:
        assert method not in IDEMPOTENT[service]


def test_renew_schedule():
    s = RenewSchedule(ttl=3.0, now=0.0, expires_at=3.0)
    assert s.sleep_for(0.0) == 1.0, "a third of the TTL"
    s.failed(1.0, "UNAVAILABLE: refused")
    assert s.sleep_for(1.0) == pytest.approx(0.3), "a tenth after a failure"
    assert s.lost_at() == pytest.approx(2.7), "lost a tenth of the TTL before the expiry"
    assert "UNAVAILABLE: refused" in s.why_lost()
    s.renewed(1.3, 4.3)
    assert s.lost_at() == pytest.approx(4.0) and s.sleep_for(1.3) == pytest.approx(1.0)


# --- against a real gantry -------------------------------------------------------

def stream(limiter, stop, out):
    """Calls limiter.acquire every 5 ms until stop: (started, took, decision, error)."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            out.append((started, None, limiter.acquire(), None))
        except GantryError as e:
            out.append((started, None, None, e))
        out[-1] = (started, time.monotonic() - started) + out[-1][2:]
        time.sleep(0.005)


def test_limiter_policies_when_gantry_is_killed_and_restarted(gantry_factory):
    server = gantry_factory()
    seen = []
    clients = {
        FAIL_OPEN: Client(server.addr, timeout=0.3),
        FAIL_CLOSED: Client(server.addr, timeout=0.3, failure_policy=FAIL_CLOSED),
        LOCAL: Client(server.addr, timeout=0.3, failure_policy=LOCAL, on_decision=lambda limit, d: seen.append(d.source)),
    }
    stop, calls, threads = threading.Event(), {p: [] for p in clients}, []
    for policy, client in clients.items():
        # "steady": 5 tokens a second, burst 1.
        t = threading.Thread(target=stream, args=(client.limiter("steady", key=f"k-{policy}"), stop, calls[policy]))
        t.start()
        threads.append(t)
    try:
        eventually("the local policy learned the limit", lambda: clients[LOCAL]._policy.knows("steady"))
        time.sleep(0.2)
        server.kill()
        killed = time.monotonic()
        time.sleep(1.5)
        restarted = time.monotonic()
        server.start()
        for policy, client in clients.items():
            eventually(f"{policy}: gantry decides again, same client",
                       lambda: any(c[0] > restarted and c[2] is not None and c[2].source == "server" for c in calls[policy]))
    finally:
        stop.set()
        for t in threads:
            t.join()
    for policy, client in clients.items():
        during = []
        for started, took, d, err in calls[policy]:
            assert err is None, f"{policy}: a call failed instead of answering by the policy: {err}"
            assert took < 0.35, f"{policy}: a call took {took:.3f}s, past its 0.3 s deadline"
            if killed + 0.1 < started < restarted:
                during.append((took, d))
        assert len(during) > 50, f"{policy}: {len(during)} calls during the outage"
        for _, d in during:
            if policy == FAIL_OPEN:
                assert d.allowed and d.source == "fail_open", d
            elif policy == FAIL_CLOSED:
                assert not d.allowed and d.source == "fail_closed" and "gantry unreachable" in d.reason, d
            else:
                assert d.source == "local", d
        if policy == LOCAL:
            allowed = sum(d.allowed for _, d in during)
            assert 0 < allowed <= 1 + 5 * (restarted - killed) + 1, f"local allowed {allowed} during the outage"
        median = statistics.median(took for took, _ in during)
        assert median < 0.002, f"{policy}: the median answer during the outage took {median:.4f}s"
        counts = client.decisions
        assert counts["server"] > 0 and sum(counts.values()) == len(calls[policy]), counts
        client.close()
    assert seen.count("local") == clients[LOCAL].decisions["local"] > 0
    assert seen.count("server") == clients[LOCAL].decisions["server"]


def test_a_list_of_endpoints_loses_one_replica_without_a_failed_call(gantry_factory):
    a, b = gantry_factory("a"), gantry_factory("b")
    with Client([a.addr, b.addr], failure_policy=FAIL_CLOSED) as client:
        # Each replica has its own "tight" bucket of 2: four tokens at once
        # for one key are there only if the calls are spread over both.
        rounds = iter(range(1000))
        eventually("four tokens from two replicas' buckets of two", lambda: all(
            d.allowed and d.source == "server"
            for d in [client.limiter("tight", key=f"spread-{n}").acquire() for n in [next(rounds)] for _ in range(4)]))
        stop, calls, failures = threading.Event(), [], []
        limiting = threading.Thread(target=stream, args=(client.limiter("tight", key="both"), stop, calls))

        def read():
            while not stop.is_set():
                try:
                    client.namespace("n").get("k")
                except GantryError as e:
                    failures.append(e)
                time.sleep(0.002)

        reading = threading.Thread(target=read)
        limiting.start(); reading.start()
        time.sleep(0.3)
        b.kill()
        killed = time.monotonic()
        time.sleep(1.0)
        stop.set()
        limiting.join(); reading.join()
    assert not failures, f"reads failed when one replica was killed: {failures[:3]}"
    after = [(started, d) for started, _, d, err in calls if started > killed + 0.1]
    assert all(err is None for _, _, _, err in calls)
    assert len(after) > 50 and all(d.source == "server" for _, d in after), \
        [d for _, d in after if d.source != "server"][:3]


def test_a_lease_is_reported_lost_before_it_expires(gantry_factory):
    server = gantry_factory()
    lost_at = []
    with Client(server.addr) as client:
        lease = client.lease("db", "pod-outage", 1, ttl=1.0, on_lost=lambda l: lost_at.append(time.time()))
        lease.acquire()
        server.kill()
        assert lease.lost.wait(3), "never reported lost"
        assert lost_at and lost_at[0] < lease.expires_at, "reported after its expiry"
        assert "not renewed before its expiry" in lease.lost_error.details()


def test_the_near_cache_serves_bounded_stale_data_then_resyncs(gantry_factory):
    server = gantry_factory()
    with Client(server.addr, timeout=0.3) as client:
        carts = client.namespace("carts")
        near = carts.near_cache(max_stale=0.7)
        carts.put("cart:1", b"v1")
        eventually("held locally", lambda: near.get("cart:1") == b"v1" and len(near) == 1)
        server.kill()
        killed = time.monotonic()
        time.sleep(0.1)
        assert near.get("cart:1") == b"v1", "within max_stale the held value answers"
        time.sleep(max(0.0, killed + 0.75 - time.monotonic()))
        assert len(near) == 0, "held past max_stale while the stream is down"
        with pytest.raises(GantryError) as down:
            near.get("cart:1")
        assert down.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        server.start()
        time.sleep(1.1)  # past the breaker's back-off
        eventually("gantry back", lambda: _put(carts, "cart:1", b"v2"))
        eventually("live again after the restart", lambda: _get(near, "cart:1") == b"v2" and len(near) == 1)
        carts.put("cart:1", b"v3")
        eventually("the watch follows writes again", lambda: near.get("cart:1") == b"v3")
        near.close()


def _put(cache, key, value):
    try:
        cache.put(key, value)
        return True
    except GantryError:
        return False


def _get(near, key):
    try:
        return near.get(key)
    except GantryError:
        return None


async def test_asyncio_policy_lease_and_near_cache_through_an_outage(gantry_factory):
    server = gantry_factory()
    async with AsyncClient(server.addr, timeout=0.3, failure_policy=FAIL_CLOSED) as client:
        limiter = client.limiter("steady", key="aio")
        assert (await limiter.acquire()).source == "server"
        lost = asyncio.Event()
        lease = client.lease("db", "pod-aio", 1, ttl=1.0, on_lost=lambda l: lost.set())
        await lease.acquire()
        near = client.namespace("carts").near_cache(max_stale=0.5)
        await client.namespace("carts").put("k", b"v")
        for _ in range(500):
            if await near.get("k") == b"v" and len(near) == 1:
                break
            await asyncio.sleep(0.01)
        assert len(near) == 1
        server.kill()
        killed = time.monotonic()
        took, decisions = [], []
        while time.monotonic() < killed + 0.6:
            started = time.monotonic()
            decisions.append(await limiter.acquire())
            took.append(time.monotonic() - started)
            await asyncio.sleep(0.005)
        assert all(not d.allowed and d.source == "fail_closed" for d in decisions[5:]), decisions[:8]
        assert statistics.median(took) < 0.002 and max(took) < 0.35
        assert len(near) == 0, "past max_stale"
        await asyncio.wait_for(lost.wait(), 3)
        assert time.time() < lease.expires_at and "not renewed" in lease.lost_error.details()
        server.start()
        await asyncio.sleep(1.1)
        for _ in range(500):
            if (await limiter.acquire()).source == "server":
                break
            await asyncio.sleep(0.02)
        assert client.decisions["server"] >= 2 and client.decisions["fail_closed"] > 50
        await near.close()


def test_a_dns_name_target(gantry_factory):
    """A dns:/// name is resolved by gRPC and balanced over what it resolves to
    (localhost may also give ::1, where nothing listens: round-robin skips it)."""
    server = gantry_factory()
    port = server.addr.rsplit(":", 1)[1]
    with Client(f"dns:///localhost:{port}") as client:
        for _ in range(10):
            assert client._call(client.rate_limiter.ListLimits, ratelimit_pb2.ListLimitsRequest()).limits
