// The package as a newcomer installs it: `npm pack` (which builds through
// prepack), then `npm install <tarball>` in a fresh project, then require it.
// Runs on a copy of the package, so the checkout's dist/ is left alone.
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";

const PACKAGE = join(__dirname, "..", "..");
const npm = (args: string[], cwd: string) =>
  execFileSync("npm", args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, npm_config_update_notifier: "false" } });

test("npm pack yields a package a fresh project installs and requires", { timeout: 180_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), "gantry-ts-pack-"));
  process.on("exit", () => rmSync(work, { recursive: true, force: true }));
  const copy = join(work, "client");
  for (const f of ["package.json", "package-lock.json", "tsconfig.json", "README.md", "src"]) cpSync(join(PACKAGE, f), join(copy, f), { recursive: true });
  symlinkSync(join(PACKAGE, "node_modules"), join(copy, "node_modules"), "dir");

  const packed = JSON.parse(npm(["pack", "--json", "--pack-destination", work], copy))[0];
  const files: string[] = packed.files.map((f: { path: string }) => f.path);
  for (const needed of ["dist/index.js", "dist/index.d.ts", "dist/pb.js", "dist/errors.js", "dist/queries.js", "dist/gen/gantry/v1/query.js", "README.md"]) {
    assert.ok(files.includes(needed), `${needed} is not in the package: ${files.join(", ")}`);
  }
  assert.deepEqual(files.filter((f) => f.startsWith("dist/test") || f.startsWith("src/")), [], "tests and sources stay out");

  const fresh = join(work, "fresh");
  mkdirSync(fresh);
  writeFileSync(join(fresh, "package.json"), JSON.stringify({ name: "fresh-project", version: "1.0.0", private: true }));
  npm(["install", "--no-audit", "--no-fund", "--prefer-offline", join(work, packed.filename)], fresh);
  writeFileSync(join(fresh, "main.js"), `
    const { Gantry, GantryError, NotGranted, pb } = require("@gantry/client");
    const gantry = new Gantry("127.0.0.1:1");
    console.log(JSON.stringify({ gantry: typeof gantry.limiter, error: typeof GantryError, notGranted: typeof NotGranted, order: pb.QueryOrder.QUERY_ORDER_P99 }));
    gantry.close();`);
  const out = execFileSync(process.execPath, ["main.js"], { cwd: fresh, encoding: "utf8" });
  assert.deepEqual(JSON.parse(out), { gantry: "function", error: "function", notGranted: "function", order: 3 });
  assert.ok(readdirSync(join(fresh, "node_modules", "@grpc")).includes("grpc-js"), "dependencies come with it");
});
