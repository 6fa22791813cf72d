// A real gantry for the tests (GANTRY_BIN, or the binary cargo built).
import { ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const ROOT = join(__dirname, "..", "..", "..", "..");
// The configuration every client's tests share.
export const CONFIG = join(ROOT, "clients", "testdata", "gantry.toml");
export const bin = process.env.GANTRY_BIN ?? join(ROOT, "target", "debug", "gantry");
export const skip = !existsSync(bin);
if (skip && process.env.GANTRY_REQUIRE_CLIENT_TESTS) throw new Error(`no gantry binary at ${bin}`);

const scratch: string[] = [];
process.on("exit", () => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

/** A fresh directory under the system's temporary one, removed when the test process exits. */
export const scratchDir = (prefix: string): string => {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  scratch.push(dir);
  return dir;
};

/** Starts gantry with its data in `dataDir`, extra environment and the address to listen on; resolves with it and its gRPC address. */
export const startGantry = async (dataDir: string, env: Record<string, string> = {}, listen = "127.0.0.1:0"): Promise<{ server: ChildProcess; addr: string }> => {
  const server = spawn(bin, ["serve", "--config", CONFIG, "--listen", listen,
    "--metrics-listen", "127.0.0.1:0", "--otlp-http-listen", "127.0.0.1:0", "--data-dir", dataDir], { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, ...env } });
  const addr = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("gantry did not start")), 20_000);
    let buffered = "";
    server.stderr!.on("data", (chunk: Buffer) => {
      buffered += chunk.toString();
      const match = /gantry listening grpc=(\S+)/.exec(buffered);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
  });
  return { server, addr };
};
