"""Every helper, sync and asyncio, against a real gantry."""

import asyncio
import hashlib
import pathlib
import time

import grpc
import pytest

from gantry import Client, NotGranted
from gantry.aio import AsyncClient
from gantry.v1 import leases_pb2, query_pb2

HERE = pathlib.Path(__file__).resolve().parent


def eventually(what, cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def test_limiter_takes_waits_refuses_as_context_manager_and_decorator(gantry_addr):
    with Client(gantry_addr) as client:
        tight = client.limiter("tight", key="customer-1")
        assert tight.acquire().allowed
        assert tight.acquire().allowed
        refused = tight.acquire()
        assert not refused.allowed and refused.retry_after > 0
        # A wait shorter than the refill: NotGranted, not a gRPC error.
        with pytest.raises(NotGranted):
            with client.limiter("tight", key="customer-1", wait=0.2):
                pass
        steady = client.limiter("steady", key="k", wait=3.0)
        calls = []

        @steady
        def work(n):
            calls.append(n)
            return n * 2

        assert work(1) == 2 and work(2) == 4
        assert calls == [1, 2]
        with steady as decision:
            assert decision.allowed and decision.waited > 0.1
        with pytest.raises(grpc.RpcError) as err:
            client.limiter("nope", key="k").acquire()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_lease_renews_in_the_background_and_releases_on_exit(gantry_addr):
    with Client(gantry_addr) as client:
        with client.lease("db", holder="pod-a", count=2, ttl=1.0) as lease:
            first = lease.expires_at
            time.sleep(2.5)
            status = client.leases.PoolStatus(leases_pb2.PoolStatusRequest(pool="db"))
            assert status.in_use == 2, "the lease outlived its TTL by renewing"
            assert lease.expires_at > first and not lease.lost.is_set()
            with pytest.raises(NotGranted, match=r"\(the pool is full\)"):
                with client.lease("db", holder="pod-b", count=1, wait=0.3):
                    pass
        status = client.leases.PoolStatus(leases_pb2.PoolStatusRequest(pool="db"))
        assert status.in_use == 0, "released on exit"


def test_near_cache_follows_other_instances(gantry_addr):
    with Client(gantry_addr) as client, Client(gantry_addr) as other:
        carts = client.namespace("carts")
        version = carts.put("cart:1", b"v1")
        with pytest.raises(grpc.RpcError) as err:
            carts.put("cart:1", b"lost", if_version=version + 100)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with carts.near_cache("cart:") as near:
            eventually("a local copy", lambda: near.get("cart:1") == b"v1" and len(near) == 1)
            other.namespace("carts").put("cart:1", b"v2")
            eventually("the other instance's put", lambda: near.get("cart:1") == b"v2")
            assert other.namespace("carts").delete("cart:1")
            eventually("the delete", lambda: near.get("cart:1") is None and len(near) == 0)


def test_recorder_batches_in_the_background(gantry_addr):
    with Client(gantry_addr) as client:
        with client.recorder("shop", "postgres", interval=0.2) as recorder:
            for i in range(7):
                assert recorder.record(f"SELECT * FROM items WHERE id = {i}", 0.003, rows=1,
                                       trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
        assert recorder.dropped == 0 and recorder.failed == 0
        # After close: refused and counted, not silently dropped; close again is fine.
        assert not recorder.record("SELECT 1", 0.001)
        assert recorder.dropped == 1
        recorder.close()
        top = client.query.TopQueries(query_pb2.TopQueriesRequest(service="shop"))
        assert len(top.queries) == 1
        assert top.queries[0].calls == 7
        assert top.queries[0].batching.max_per_trace == 7


@pytest.mark.parametrize("zone", ["UTC", "America/Los_Angeles", "Asia/Tokyo", "Australia/Lord_Howe"])
def test_lease_expiry_is_right_in_every_time_zone(gantry_addr, zone, monkeypatch):
    """expires_at is Unix time whatever the machine's zone: a lease with a
    30 s TTL expires 30 s from now, and renews on that rhythm."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        with Client(gantry_addr) as client:
            with client.lease("db", holder=f"tz-{zone}", count=1, ttl=30.0) as lease:
                assert abs(lease.expires_at - time.time() - 30.0) < 2.0, lease.expires_at - time.time()

        async def run():
            async with AsyncClient(gantry_addr) as client:
                async with client.lease("db", holder=f"tz-async-{zone}", count=1, ttl=30.0) as lease:
                    assert abs(lease.expires_at - time.time() - 30.0) < 2.0, lease.expires_at - time.time()

        asyncio.run(run())
    finally:
        monkeypatch.undo()
        time.tzset()


async def test_asyncio_helpers(gantry_addr):
    async with AsyncClient(gantry_addr) as client:
        steady = client.limiter("steady", key="async", wait=3.0)

        @steady
        async def work():
            return "done"

        assert await work() == "done"
        async with steady as decision:
            assert decision.allowed
        with pytest.raises(NotGranted):
            async with client.limiter("tight", key="async", wait=0.0):
                async with client.limiter("tight", key="async", wait=0.0):
                    async with client.limiter("tight", key="async", wait=0.0):
                        pass
        async with client.lease("db", holder="pod-async", count=1, ttl=1.0) as lease:
            await asyncio.sleep(1.5)
            assert not lease.lost.is_set()
            status = await client.leases.PoolStatus(leases_pb2.PoolStatusRequest(pool="db"))
            assert status.in_use == 1
        cache = client.namespace("async")
        await cache.put("k", b"1")
        async with cache.near_cache() as near:
            for _ in range(100):
                if await near.get("k") == b"1" and len(near) == 1:
                    break
                await asyncio.sleep(0.02)
            assert len(near) == 1
            await cache.put("k", b"2")
            for _ in range(250):
                if await near.get("k") == b"2":
                    break
                await asyncio.sleep(0.02)
            assert await near.get("k") == b"2"
        async with client.recorder("async-svc", interval=0.1) as recorder:
            recorder.record("SELECT 1", 0.001)
        assert not recorder.record("SELECT 1", 0.001), "after close: refused"
        assert recorder.dropped == 1
        top = await client.query.TopQueries(query_pb2.TopQueriesRequest(service="async-svc"))
        assert top.queries[0].calls == 1


def test_generated_code_is_current():
    digest = hashlib.sha256()
    for path in sorted((HERE.parents[2] / "proto" / "gantry" / "v1").glob("*.proto")):
        digest.update(path.read_bytes())
    recorded = (HERE.parent / "src" / "gantry" / "v1" / "PROTO_SHA256").read_text().strip()
    assert digest.hexdigest() == recorded, "src/gantry/v1 is stale: run python generate.py"
