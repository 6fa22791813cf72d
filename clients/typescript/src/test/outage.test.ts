// What the client does when gantry does not answer — the failure policy, the
// circuit breaker, several endpoints, leases and the near cache — against a
// real gantry the tests SIGKILL and start again (docs/client-resilience.md).
import { ChildProcess } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";

import { Decision, FailurePolicy, Gantry, GantryError } from "../index";
import { Breaker, IDEMPOTENT, LocalLimit, channelTarget } from "../resilience";
import { LimitScope } from "../gen/gantry/v1/ratelimit";
import { scratchDir, skip, startGantry } from "./server";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const eventually = async (what: string, cond: () => Promise<boolean> | boolean, withinMs = 10_000) => {
  const deadline = Date.now() + withinMs;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`never: ${what}`);
    await sleep(10);
  }
};
const kill = async (server: ChildProcess) => {
  server.kill("SIGKILL");
  if (server.exitCode === null && server.signalCode === null) await once(server, "exit");
};
const tmp = () => scratchDir("gantry-ts-outage-");

test("the breaker opens, probes and closes", () => {
  let now = 1000;
  const b = new Breaker(3, 1000, 4000, () => now);
  const fail = () => {
    const { go, probe } = b.admit();
    assert.ok(go);
    b.record(probe, "failed");
  };
  fail(); fail();
  b.record(b.admit().probe, "answered"); // an answer starts the count again
  fail(); fail(); fail();
  assert.deepEqual(b.admit(), { go: false, probe: false });
  assert.equal(b.remainingMs(), 1000);
  now += 1000;
  assert.deepEqual(b.admit(), { go: true, probe: true });
  assert.deepEqual(b.admit(), { go: false, probe: false }, "one probe at a time");
  b.record(true, "failed");
  assert.equal(b.remainingMs(), 2000, "a failed probe doubles the back-off");
  for (let i = 0; i < 2; i++) {
    now += b.remainingMs();
    b.admit();
    b.record(true, "failed");
  }
  assert.equal(b.remainingMs(), 4000, "up to the longest");
  now += 4000;
  b.admit();
  b.record(true, "neither");
  assert.deepEqual(b.admit(), { go: true, probe: true }, "a cancelled probe lets the next call probe");
  b.record(true, "answered");
  assert.deepEqual(b.admit(), { go: true, probe: false });
});

test("the local bucket takes the limit's share; targets; idempotent calls", () => {
  const second = { seconds: 1, nanos: 0 };
  const limit = new LocalLimit({ name: "api", rate: 100, period: second, burst: 40, scope: LimitScope.LIMIT_SCOPE_PER_KEY,
    overrides: [{ key: "vip", rate: 1000, period: second, burst: 400 }] });
  for (let i = 0; i < 10; i++) assert.ok(limit.take(0, "a", 1, 4).allowed, "a share of 4: a burst of 10");
  const refused = limit.take(0, "a", 1, 4);
  assert.ok(!refused.allowed && Math.abs(refused.retryAfterMs - 40) < 1e-6, "25 tokens a second");
  assert.ok(limit.take(40, "a", 1, 4).allowed);
  assert.ok(limit.take(0, "b", 10, 4).allowed, "each key its own bucket");
  assert.ok(limit.take(0, "vip", 100, 4).allowed, "an override's burst of 400/4");
  assert.ok(!limit.take(0, "c", 11, 4).allowed, "more than the burst, never");
  const shared = new LocalLimit({ name: "s", rate: 1, period: { seconds: 60, nanos: 0 }, burst: 1, scope: LimitScope.LIMIT_SCOPE_SHARED, overrides: [] });
  assert.ok(shared.take(0, "x", 1, 1).allowed && !shared.take(0, "y", 1, 1).allowed, "one bucket for every key");

  assert.equal(channelTarget("gantry:7070").target, "gantry:7070");
  assert.equal(channelTarget("dns:///gantry-headless:7070").target, "dns:///gantry-headless:7070");
  const list = channelTarget(["127.0.0.1:1", "127.0.0.2:2"]);
  assert.equal(list.target, "ipv4:127.0.0.1:1,127.0.0.2:2");
  assert.equal(list.options["grpc.default_authority"], "127.0.0.1:1");
  assert.throws(() => channelTarget("a:1,b:2"), /ip:port/);
  for (const acts of ["/gantry.v1.RateLimiter/Acquire", "/gantry.v1.Cache/Put", "/gantry.v1.Leases/Release", "/gantry.v1.QueryAnalyzer/Record"]) {
    assert.ok(!IDEMPOTENT.has(acts), `${acts} would be retried`);
  }
  const g = new Gantry("127.0.0.1:1");
  for (const path of IDEMPOTENT) {
    const [, service, method] = path.split("/");
    const client = { "gantry.v1.RateLimiter": g.rateLimiter, "gantry.v1.Cache": g.cache, "gantry.v1.Leases": g.leases,
      "gantry.v1.QueryAnalyzer": g.query, "gantry.v1.Traces": g.traces }[service] as unknown as Record<string, { path?: string }>;
    const fn = client[method[0].toLowerCase() + method.slice(1)];
    assert.equal(fn?.path, path, `${path} is a method of the generated client`);
  }
  void g.close();
});

interface Call { at: number; took: number; decision?: Decision; error?: unknown }

/** Calls limiter.acquire every 5 ms with a 300 ms deadline until stopped. */
const stream = (gantry: Gantry, limit: string, key: string) => {
  const calls: Call[] = [];
  let running = true;
  const done = (async () => {
    const limiter = gantry.limiter(limit, key);
    while (running) {
      const at = Date.now();
      try {
        calls.push({ at, took: 0, decision: await limiter.acquire(1, 0, { signal: AbortSignal.timeout(300) }) });
      } catch (error) {
        calls.push({ at, took: 0, error });
      }
      calls[calls.length - 1].took = Date.now() - at;
      await sleep(5);
    }
  })();
  return { calls, stop: async () => { running = false; await done; } };
};

test("limiter policies when gantry is killed and restarted", { skip }, async () => {
  const data = join(tmp(), "data");
  let { server, addr } = await startGantry(data);
  const seen: string[] = [];
  const policies: FailurePolicy[] = ["fail_open", "fail_closed", "local"];
  const clients = new Map(policies.map((p) => [p, new Gantry(addr, { failurePolicy: p, timeoutMs: 300,
    onDecision: p === "local" ? (_limit, d) => seen.push(d.source) : undefined })] as const));
  // "steady": 5 tokens a second, burst 1.
  const streams = new Map(policies.map((p) => [p, stream(clients.get(p)!, "steady", `k-${p}`)] as const));
  try {
    await eventually("the local policy learned the limit", () => clients.get("local")!.policy.knows("steady"));
    await sleep(200);
    await kill(server);
    const killed = Date.now();
    await sleep(1500);
    const restarted = Date.now();
    ({ server } = await startGantry(data, {}, addr));
    for (const p of policies) {
      await eventually(`${p}: gantry decides again, same client`, () =>
        streams.get(p)!.calls.some((c) => c.at > restarted && c.decision?.source === "server"));
    }
    for (const p of policies) {
      const { calls, stop } = streams.get(p)!;
      await stop();
      const during = calls.filter((c) => c.at > killed + 100 && c.at < restarted);
      for (const c of calls) {
        assert.equal(c.error, undefined, `${p}: a call failed instead of answering by the policy`);
        assert.ok(c.took < 350, `${p}: a call took ${c.took} ms, past its 300 ms deadline`);
      }
      assert.ok(during.length > 50, `${p}: ${during.length} calls during the outage`);
      for (const { decision: d } of during) {
        if (p === "fail_open") assert.ok(d!.allowed && d!.source === "fail_open", JSON.stringify(d));
        if (p === "fail_closed") assert.ok(!d!.allowed && d!.source === "fail_closed" && d!.reason.includes("gantry unreachable"), JSON.stringify(d));
        if (p === "local") assert.equal(d!.source, "local");
      }
      if (p === "local") {
        const allowed = during.filter((c) => c.decision!.allowed).length;
        assert.ok(allowed > 0 && allowed <= 1 + 5 * ((restarted - killed) / 1000) + 1, `local allowed ${allowed} during the outage`);
      }
      const took = during.map((c) => c.took).sort((a, b) => a - b);
      assert.ok(took[Math.floor(took.length / 2)] <= 2, `${p}: median answer ${took[Math.floor(took.length / 2)]} ms during the outage`);
      const counts = clients.get(p)!.decisions;
      assert.ok(counts.server > 0 && Object.values(counts).reduce((a, b) => a + b) === calls.length, JSON.stringify(counts));
    }
    const local = clients.get("local")!.decisions;
    assert.equal(seen.filter((s) => s === "local").length, local.local);
    assert.equal(seen.filter((s) => s === "server").length, local.server);
  } finally {
    for (const g of clients.values()) await g.close();
    server.kill("SIGTERM");
  }
});

test("a list of endpoints loses one replica without a failed call", { skip }, async () => {
  const a = await startGantry(join(tmp(), "a"));
  const b = await startGantry(join(tmp(), "b"));
  const gantry = new Gantry([a.addr, b.addr], { failurePolicy: "fail_closed" });
  try {
    // Each replica has its own "tight" bucket of 2: four tokens at once for
    // one key are there only if the calls are spread over both.
    let round = 0;
    await eventually("four tokens from two replicas' buckets of two", async () => {
      const limiter = gantry.limiter("tight", `spread-${round++}`);
      const ds = [];
      for (let i = 0; i < 4; i++) ds.push(await limiter.acquire());
      return ds.every((d) => d.allowed && d.source === "server");
    });
    const limited = stream(gantry, "tight", "both");
    const failures: unknown[] = [];
    let reading = true;
    const reads = (async () => {
      while (reading) {
        try {
          await gantry.namespace("n").get("k");
        } catch (err) {
          failures.push(err);
        }
        await sleep(2);
      }
    })();
    await sleep(300);
    await kill(b.server);
    const killed = Date.now();
    await sleep(1000);
    reading = false;
    await reads;
    await limited.stop();
    assert.deepEqual(failures, [], "reads failed when one replica was killed");
    assert.ok(limited.calls.every((c) => c.error === undefined));
    const after = limited.calls.filter((c) => c.at > killed + 100);
    assert.ok(after.length > 50 && after.every((c) => c.decision!.source === "server"),
      JSON.stringify(after.filter((c) => c.decision!.source !== "server").slice(0, 3)));
  } finally {
    await gantry.close();
    a.server.kill("SIGTERM");
  }
});

test("a lease is reported lost before it expires; the near cache serves bounded stale data, then resyncs", { skip }, async () => {
  const data = join(tmp(), "data");
  let { server, addr } = await startGantry(data);
  const gantry = new Gantry(addr, { timeoutMs: 300 });
  // The lease's and the near cache's timers do not keep a process alive; a service's own work does.
  const keepAlive = setInterval(() => undefined, 1000);
  try {
    const lease = await gantry.lease("db", "pod-outage", 1, { ttlMs: 1000 });
    const carts = gantry.namespace("carts");
    const near = carts.nearCache("", 100, { maxStaleMs: 700 });
    await carts.put("cart:1", "v1");
    await eventually("held locally", async () => (await near.get("cart:1"))?.toString() === "v1" && near.size === 1);
    let lostAt = Infinity;
    lease.once("lost", () => (lostAt = Date.now()));
    const lost = once(lease, "lost");
    await kill(server);
    const killed = Date.now();
    await sleep(100);
    assert.equal((await near.get("cart:1"))?.toString(), "v1", "within maxStaleMs the held value answers");
    const [reason] = (await lost) as [Error];
    assert.ok(lostAt < lease.expiresAt.getTime(), `reported lost ${lostAt - lease.expiresAt.getTime()} ms after its expiry`);
    assert.ok(lease.lost && lease.signal.aborted && /not renewed before its expiry/.test(reason.message), reason.message);
    await sleep(Math.max(0, killed + 750 - Date.now()));
    assert.equal(near.size, 0, "held past maxStaleMs while the stream is down");
    await assert.rejects(near.get("cart:1"), (err: GantryError) => err.codeName === "UNAVAILABLE" || err.codeName === "DEADLINE_EXCEEDED");
    ({ server } = await startGantry(data, {}, addr));
    await sleep(1100); // past the breaker's back-off
    await eventually("gantry back", async () => carts.put("cart:1", "v2").then(() => true, () => false));
    await eventually("live again after the restart", async () =>
      (await near.get("cart:1").catch(() => undefined))?.toString() === "v2" && near.size === 1);
    await carts.put("cart:1", "v3");
    await eventually("the watch follows writes again", async () => (await near.get("cart:1"))?.toString() === "v3");
  } finally {
    clearInterval(keepAlive);
    await gantry.close();
    server.kill("SIGTERM");
  }
});

test("a dns:/// name target is balanced over what it resolves to", { skip }, async () => {
  // localhost may also give ::1, where nothing listens: round-robin skips it.
  const { server, addr } = await startGantry(join(tmp(), "data"));
  const gantry = new Gantry(`dns:///localhost:${addr.split(":").pop()}`);
  try {
    for (let i = 0; i < 10; i++) {
      const limits = await gantry.call(gantry.rateLimiter, gantry.rateLimiter.listLimits, {});
      assert.ok(limits.limits.length > 0);
    }
  } finally {
    await gantry.close();
    server.kill("SIGTERM");
  }
});
