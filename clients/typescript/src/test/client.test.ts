// Every helper against a real gantry (GANTRY_BIN, or the binary cargo built).
import { ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import { Gantry, NotGranted } from "../index";
import { ROOT, skip, startGantry } from "./server";

let server: ChildProcess | undefined;
let addr = "";

before(async () => {
  if (skip) return;
  const dir = mkdtempSync(join(tmpdir(), "gantry-ts-"));
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
    const top = await gantry.call(gantry.query, gantry.query.topQueries, { orderBy: 0, limit: 0, service: "shop" });
    assert.equal(top.queries.length, 1);
    assert.equal(top.queries[0].calls, 6);
    assert.equal(top.queries[0].batching?.maxPerTrace, 6);
  } finally {
    gantry.close();
  }
});

test("generated code is current", () => {
  const dir = join(ROOT, "proto", "gantry", "v1");
  const hash = createHash("sha256");
  for (const f of readdirSync(dir).filter((f) => f.endsWith(".proto")).sort()) hash.update(readFileSync(join(dir, f)));
  const recorded = readFileSync(join(__dirname, "..", "..", "src", "gen", "PROTO_SHA256"), "utf8").trim();
  assert.equal(hash.digest("hex"), recorded, "src/gen is stale: run npm run generate");
});
