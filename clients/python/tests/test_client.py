"""Every helper, sync and asyncio, against a real gantry."""

import asyncio
import hashlib
import pathlib
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from gantry import Client, GantryError, NotGranted
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
        with client.recorder("shop", "postgres") as slow:
            slow.record("SELECT count(*) FROM items", 1.5, rows=1)
        top = client.top_queries(service="shop", order_by="calls")
        assert [q.calls for q in top] == [7, 1]
        assert top[0].total == timedelta(milliseconds=21)
        assert top[0].batching is not None and top[0].batching.max_per_trace == 7
        assert "WHERE id = $1" in top[0].sample and top[0].last_seen.tzinfo is not None
        assert client.top_queries(service="shop", limit=1)[0].total == timedelta(seconds=1.5), "total time by default"
        logged = client.slow_queries(since=datetime.now(timezone.utc) - timedelta(minutes=1), limit=5)
        assert [(q.service, q.duration) for q in logged] == [("shop", timedelta(seconds=1.5))]
        with pytest.raises(ValueError, match="order_by must be one of total_time"):
            client.top_queries(order_by="fastest")
        with pytest.raises(ValueError, match="aware datetime"):
            client.slow_queries(since=datetime.now())


def test_errors_carry_the_code_and_close_ends_everything(gantry_addr):
    client = Client(gantry_addr)
    with pytest.raises(GantryError) as refused:
        client.limiter("no-such-limit", key="k").acquire()
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert str(refused.value).startswith("gantry answered NOT_FOUND: ") and "no-such-limit" in str(refused.value)
    assert isinstance(refused.value, grpc.RpcError), "except grpc.RpcError still catches it"
    near = client.namespace("carts").near_cache()
    lease = client.lease("db", holder="pod-close", count=1, ttl=1.0).acquire()
    recorder = client.recorder("close-svc", interval=60)
    assert recorder.record("SELECT 2", 0.001)
    client.close()
    assert not near._thread.is_alive() and not lease._thread.is_alive(), "watch and renewals ended"
    assert recorder.failed == 0 and not recorder.record("SELECT 3", 0.001), "flushed, then refusing"
    with pytest.raises(GantryError, match="closed") as closed:
        client.namespace("carts").get("k")
    assert closed.value.code() == grpc.StatusCode.CANCELLED
    assert not client.recorder("late").record("SELECT 4", 0.001), "a recorder made after close refuses"
    client.close()
    with Client(gantry_addr) as check:
        assert [q.calls for q in check.top_queries(service="close-svc")] == [1]

    async def run():
        aclient = AsyncClient(gantry_addr)
        with pytest.raises(GantryError) as refused:
            await aclient.limiter("no-such-limit", key="k").acquire()
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        recorder = aclient.recorder("close-async", interval=60)
        recorder.record("SELECT 5", 0.001)
        await aclient.close()
        with pytest.raises(GantryError, match="closed"):
            await aclient.namespace("carts").get("k")
        async with AsyncClient(gantry_addr) as check:
            assert [q.calls for q in await check.top_queries(service="close-async")] == [1]

    asyncio.run(run())


def test_async_helpers_can_be_made_outside_a_running_loop(gantry_addr):
    """Made at import time, as module-level singletons are; used later in asyncio.run."""
    client = AsyncClient(gantry_addr)
    cache = client.namespace("outside")
    near = cache.near_cache()
    recorder = client.recorder("outside-svc", interval=60)

    async def run():
        await cache.put("k", b"v")
        assert recorder.record("SELECT 6", 0.001)
        for _ in range(100):
            if await near.get("k") == b"v" and len(near) == 1:
                break
            await asyncio.sleep(0.02)
        assert len(near) == 1, "the near cache watches once used in the loop"
        await client.close()
        async with AsyncClient(gantry_addr) as check:
            assert [q.calls for q in await check.top_queries(service="outside-svc")] == [1]

    asyncio.run(run())


def test_async_client_takes_a_channel_and_credentials(gantry_addr):
    with pytest.raises(ValueError, match="credentials or tls"):
        AsyncClient(gantry_addr, credentials=grpc.local_channel_credentials(), token="t")

    async def run():
        channel = grpc.aio.insecure_channel(gantry_addr)
        async with AsyncClient(gantry_addr, channel=channel) as client:
            assert client.channel is channel
            assert await client.namespace("chan").put("k", b"v") >= 1
        # Any grpc.ChannelCredentials: local credentials speak TLS-less gRPC to a loopback server.
        async with AsyncClient(gantry_addr, credentials=grpc.local_channel_credentials()) as client:
            value, _ = await client.namespace("chan").get("k")
            assert value == b"v"

    asyncio.run(run())


def test_installing_from_the_folder_leaves_the_checkout_as_it_was(tmp_path):
    """pip install ./clients/python builds elsewhere: no build/ or *.egg-info in the checkout."""
    package = HERE.parent

    def files():
        return {p for p in package.rglob("*") if "__pycache__" not in p.parts and ".pytest_cache" not in p.parts}

    before = files()
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                          str(package)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert files() == before, f"build output left in the checkout: {sorted(map(str, files() - before))}"
    installed = tmp_path / "site" / "gantry"
    for needed in ["py.typed", "v1/query_pb2.pyi", "v1/query_pb2_grpc.pyi", "v1/PROTO_SHA256", "aio.py"]:
        assert (installed / needed).is_file(), f"{needed} is not installed"


def test_the_stubs_are_typed_for_mypy(tmp_path):
    """The generated *_pb2_grpc.py have stubs: client.query.TopQueries is not Any."""
    program = tmp_path / "typed.py"
    program.write_text(
        "from gantry import Client\n"
        "from gantry.v1 import query_pb2\n"
        "client = Client('127.0.0.1:1')\n"
        "reveal_type(client.query.TopQueries(query_pb2.TopQueriesRequest()))\n"
        "reveal_type(client.top_queries())\n"
    )
    out = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--strict", str(program)],
                         capture_output=True, text=True)
    assert 'Revealed type is "gantry.v1.query_pb2.TopQueriesResponse"' in out.stdout, out.stdout + out.stderr
    assert 'Revealed type is "list[gantry._common.QueryStats]"' in out.stdout, out.stdout
    assert "Success: no issues found" in out.stdout, out.stdout


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
        top = await client.top_queries(service="async-svc")
        assert top[0].calls == 1


def test_generated_code_is_current():
    digest = hashlib.sha256()
    for path in sorted((HERE.parents[2] / "proto" / "gantry" / "v1").glob("*.proto")):
        digest.update(path.read_bytes())
    recorded = (HERE.parent / "src" / "gantry" / "v1" / "PROTO_SHA256").read_text().strip()
    assert digest.hexdigest() == recorded, "src/gantry/v1 is stale: run python generate.py"
