// Every helper against a real gantry (GANTRY_BIN, or the binary cargo built).
import { ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import { spawn } from "node:child_process";

import { Gantry, GantryError, NotGranted, pb } from "../index";
import { ROOT, scratchDir, skip, startGantry } from "./server";

let server: ChildProcess | undefined;
let addr = "";

before(async () => {
  if (skip) return;
  const dir = scratchDir("gantry-ts-");
  ({ server, addr } = await startGantry(join(dir, "data")));
});

after(() => {
  server?.kill("SIGTERM");
});

const eventually = async (what: string, cond: () => Promise<boolean>) => {
  const deadline = Date.now() + 5000;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`never: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

test("limiter takes, waits and refuses", { skip }, async () => {
  const gantry = new Gantry(addr);
  try {
    const tight = gantry.limiter("tight", "customer-1");
    assert.ok((await tight.acquire()).allowed);
    assert.ok((await tight.acquire()).allowed);
    const refused = await tight.acquire();
    assert.ok(!refused.allowed && refused.retryAfterMs > 0);
    await assert.rejects(tight.wait(200), NotGranted);
    const steady = gantry.limiter("steady", "k", { client: "worker-1" });
    const work = steady.wrap(3000, async (n: number) => n * 2);
    assert.equal(await work(2), 4);
    const waited = await steady.wait(3000);
    assert.ok(waited.waitedMs >= 100, `waited ${waited.waitedMs} ms`);
    await assert.rejects(gantry.limiter("nope", "k").acquire(), /nope/);
  } finally {
    gantry.close();
  }
});

test("lease renews itself and releases", { skip }, async () => {
  const gantry = new Gantry(addr);
  try {
    const lease = await gantry.lease("db", "pod-a", 2, { ttlMs: 1000 });
    const first = lease.expiresAt.getTime();
    await new Promise((r) => setTimeout(r, 2500));
    const status = await gantry.call(gantry.leases, gantry.leases.poolStatus, { pool: "db" });
    assert.equal(status.inUse, 2, "the lease outlived its TTL by renewing");
    assert.ok(lease.expiresAt.getTime() > first && !lease.lost);
    await assert.rejects(gantry.lease("db", "pod-b", 1, { waitMs: 300 }), (e: unknown) => e instanceof NotGranted && /\(the pool is full\)/.test(e.message));
    assert.equal(await lease.release(), true);
    const again = await gantry.lease("db", "pod-b", 2);
    assert.equal(await again.release(), true);
  } finally {
    gantry.close();
  }
});

test("near cache follows other writers", { skip }, async () => {
  const gantry = new Gantry(addr);
  const other = new Gantry(addr);
  const carts = gantry.namespace("carts");
  await carts.put("cart:1", Buffer.from("v1"));
  const near = carts.nearCache("cart:", 100);
  try {
    await eventually("a local copy", async () => (await near.get("cart:1"))?.toString() === "v1" && near.size === 1);
    await other.namespace("carts").put("cart:1", Buffer.from("v2"));
    await eventually("the other instance's put", async () => (await near.get("cart:1"))?.toString() === "v2");
    assert.equal(await other.namespace("carts").delete("cart:1"), true);
    await eventually("the delete", async () => (await near.get("cart:1")) === undefined && near.size === 0);
  } finally {
    near.close();
    gantry.close();
    other.close();
  }
});

test("recorder batches in the background", { skip }, async () => {
  const gantry = new Gantry(addr);
  try {
    const recorder = gantry.recorder("shop", "postgres", { intervalMs: 100 });
    for (let i = 0; i < 6; i++) {
      assert.ok(recorder.record(`SELECT * FROM items WHERE id = ${i}`, 3, 1, "4bf92f3577b34da6a3ce929d0e0e4736"));
    }
    await recorder.close();
    assert.equal(recorder.dropped + recorder.failed, 0);
    const slow = gantry.recorder("shop", "postgres");
    assert.ok(slow.record("SELECT count(*) FROM items", 1500, 1));
    await slow.close();
    assert.equal(slow.record("SELECT 1", 1), false, "a closed recorder refuses rows");
    assert.equal(slow.dropped, 1);
    const top = await gantry.topQueries({ service: "shop", orderBy: "calls" });
    assert.equal(top.length, 2);
    assert.equal(top[0].calls, 6);
    assert.equal(top[0].totalMs, 18);
    assert.equal(top[0].batching?.maxPerTrace, 6);
    assert.match(top[0].sample, /SELECT \* FROM items WHERE id = \$1/);
    assert.ok(top[0].lastSeen instanceof Date);
    const [heaviest] = await gantry.topQueries({ service: "shop", limit: 1 });
    assert.equal(heaviest.totalMs, 1500, "by total time unless told otherwise");
    const logged = await gantry.slowQueries({ limit: 5 });
    assert.ok(logged.some((q) => q.durationMs === 1500 && q.service === "shop"), JSON.stringify(logged));
    await assert.rejects(gantry.topQueries({ orderBy: "fastest" as never }), /orderBy must be one of totalTime/);
  } finally {
    gantry.close();
  }
});

test("every generated type is under pb", () => {
  assert.equal(pb.QueryOrder.QUERY_ORDER_P99, 3);
  assert.equal(pb.WatchEvent_Kind.KIND_EXPIRE, 3);
  assert.equal(pb.DenialReason.DENIAL_REASON_POOL_FULL, 1);
  assert.equal(typeof pb.SpanStatus_Code, "object");
  assert.equal(typeof pb.AcquireRequest.encode, "function");
});

test("arguments are checked before anything is sent", { skip }, async () => {
  const gantry = new Gantry(addr);
  try {
    const ns = gantry.namespace("args");
    await assert.rejects(ns.put("k", 42 as never), (e: unknown) => e instanceof TypeError && /put: value must be a Buffer, a Uint8Array or a string, got number 42/.test(e.message));
    await assert.rejects(ns.get(undefined as never), /get: key must be a string, got undefined/);
    await assert.rejects(gantry.limiter("tight", "k").acquire(0), /acquire: tokens must be a whole number from 1/);
    await assert.rejects(gantry.limiter("tight", "k").acquire(1, -5), /acquire: waitMs must be a number of milliseconds/);
    assert.throws(() => gantry.namespace(7 as never), /namespace: name must be a string/);
    await assert.rejects(gantry.lease("db", "pod", 1.5), /lease: count must be a whole number/);
    // A string is stored as UTF-8.
    await ns.put("text", "héllo");
    assert.equal((await ns.get("text"))?.value.toString("utf8"), "héllo");
  } finally {
    await gantry.close();
  }
});

test("gantry's refusals are GantryError with the gRPC code", { skip }, async () => {
  const gantry = new Gantry(addr);
  try {
    const err = await gantry.limiter("no-such-limit", "k").acquire().catch((e: unknown) => e);
    assert.ok(err instanceof GantryError, String(err));
    assert.equal(err.code, 5);
    assert.equal(err.codeName, "NOT_FOUND");
    assert.match(err.message, /^gantry answered NOT_FOUND: .*no-such-limit/);
  } finally {
    await gantry.close();
  }
  const closed = await gantry.namespace("args").get("k").catch((e: unknown) => e);
  assert.ok(closed instanceof GantryError && closed.codeName === "CANCELLED" && /closed/.test(closed.message), String(closed));
  assert.equal(gantry.isClosed, true);
  // Made after close(): a recorder refuses rows and a near cache reads through (and fails), as in Go and Python.
  const late = gantry.recorder("late");
  assert.equal(late.record("SELECT 1", 1), false);
  assert.equal(late.dropped, 1);
  await assert.rejects(gantry.namespace("args").nearCache().get("k"), /closed/);
});

test("an AbortSignal ends a wait at once", { skip }, async () => {
  const gantry = new Gantry(addr);
  try {
    const tight = gantry.limiter("tight", "abort");
    while ((await tight.acquire()).allowed);
    const started = Date.now();
    const err = await tight.wait(10_000, { signal: AbortSignal.timeout(200) }).catch((e: unknown) => e);
    assert.equal((err as Error).name, "TimeoutError", String(err));
    assert.ok(Date.now() - started < 2000, `took ${Date.now() - started} ms`);
    const aborted = new AbortController();
    aborted.abort(new Error("shutting down"));
    await assert.rejects(gantry.namespace("x").get("k", { signal: aborted.signal }), /shutting down/);
  } finally {
    await gantry.close();
  }
});

test("a lease that is gone emits lost and aborts its signal", { skip }, async () => {
  const gantry = new Gantry(addr);
  try {
    const lease = await gantry.lease("db", "pod-lost", 1, { ttlMs: 600 });
    const lost = new Promise<Error>((resolve) => lease.on("lost", resolve));
    // Someone else returns it behind the lease's back (an operator, a server-side expiry).
    await gantry.call(gantry.leases, gantry.leases.release, { leaseId: lease.id });
    const reason = await lost;
    assert.match(reason.message, /is gone/);
    assert.ok(lease.lost && lease.signal.aborted && lease.signal.reason === reason);
  } finally {
    await gantry.close();
  }
});

test("close() ends what the client started, so the process can exit", { skip }, async () => {
  // An open Watch keeps node alive unless close() ends it: run a script and see it exit.
  const script = `
    const { Gantry } = require(${JSON.stringify(join(__dirname, "..", "index.js"))});
    (async () => {
      const gantry = new Gantry(${JSON.stringify(addr)});
      const near = gantry.namespace("exit").nearCache();
      await near.get("k");
      gantry.lease("db", "pod-exit", 1, { ttlMs: 60000 }).then((l) => l.release());
      const recorder = gantry.recorder("exit");
      recorder.record("SELECT 1", 1);
      await new Promise((r) => setTimeout(r, 200));
      await gantry.close();
      console.log("closed", recorder.dropped + recorder.failed);
    })();`;
  const child = spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      resolve(null);
    }, 10_000);
    child.on("exit", (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  assert.equal(code, 0, `the process did not exit after close(): ${out}`);
  assert.equal(out.trim(), "closed 0");
});

test("generated code is current", () => {
  const dir = join(ROOT, "proto", "gantry", "v1");
  const hash = createHash("sha256");
  for (const f of readdirSync(dir).filter((f) => f.endsWith(".proto")).sort()) hash.update(readFileSync(join(dir, f)));
  const recorded = readFileSync(join(__dirname, "..", "..", "src", "gen", "PROTO_SHA256"), "utf8").trim();
  assert.equal(hash.digest("hex"), recorded, "src/gen is stale: run npm run generate");
});
