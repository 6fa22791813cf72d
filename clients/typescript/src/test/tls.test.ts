// The client over mutual TLS with a token, against a gantry that requires
// both. Certificates are made here with the openssl CLI; none are committed.
import { ChildProcess, execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import { Gantry } from "../index";
import { scratchDir, skip, startGantry } from "./server";

const TOKEN = "ts-suite-token-8e21";

const dir = scratchDir("gantry-ts-tls-");
const path = (name: string) => join(dir, name);
let server: ChildProcess | undefined;
let addr = "";

const openssl = (...args: string[]) => execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });

/** A key and a certificate signed by the CA, with the given subjectAltName. */
const issue = (name: string, san: string) => {
  openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", `/CN=${name}`,
    "-keyout", path(`${name}.key`), "-out", path(`${name}.csr`));
  writeFileSync(path(`${name}.ext`), `subjectAltName=${san}\n`);
  openssl("x509", "-req", "-in", path(`${name}.csr`), "-CA", path("ca.crt"), "-CAkey", path("ca.key"),
    "-CAcreateserial", "-days", "1", "-extfile", path(`${name}.ext`), "-out", path(`${name}.crt`));
};

before(async () => {
  if (skip) return;
  openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
    "-subj", "/CN=ts suite CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign",
    "-keyout", path("ca.key"), "-out", path("ca.crt"));
  issue("server", "DNS:localhost,IP:127.0.0.1");
  issue("client", "URI:spiffe://test/ts-suite");
  const digest = createHash("sha256").update(TOKEN).digest("hex");
  writeFileSync(path("tokens.toml"), `[[token]]\nidentity = "ts-suite"\nsha256 = "${digest}"\n`);
  writeFileSync(path("policy.toml"), `[[grant]]\nidentities = ["ts-suite"]\nratelimit = ["tight"]\ncache = ["ts"]\n`);
  ({ server, addr } = await startGantry(path("data"), {
    GANTRY_SERVER_TLS_CERT_FILE: path("server.crt"),
    GANTRY_SERVER_TLS_KEY_FILE: path("server.key"),
    GANTRY_SERVER_TLS_CLIENT_CA_FILE: path("ca.crt"),
    GANTRY_AUTH_TOKENS_FILE: path("tokens.toml"),
    GANTRY_AUTH_POLICY_FILE: path("policy.toml"),
  }));
});

after(() => {
  server?.kill("SIGTERM");
});

const tls = () => ({ caFile: path("ca.crt"), certFile: path("client.crt"), keyFile: path("client.key"), serverName: "localhost" });

test("mutual TLS with a token", { skip }, async () => {
  const gantry = new Gantry(addr, { tls: tls(), token: TOKEN, retries: 0 });
  try {
    assert.ok((await gantry.limiter("tight", "k").acquire()).allowed);
    await gantry.namespace("ts").put("k", Buffer.from("v"));
    assert.equal((await gantry.namespace("ts").get("k"))?.value.toString(), "v");
    await assert.rejects(gantry.namespace("other").get("k"), (e: Error & { code?: number }) => e.code === 7 && /"other"/.test(e.message));
  } finally {
    gantry.close();
  }
  // The certificate alone names an identity without a grant.
  const certOnly = new Gantry(addr, { tls: tls(), retries: 0 });
  try {
    await assert.rejects(certOnly.limiter("tight", "k").acquire(), (e: Error & { code?: number }) => e.code === 7);
  } finally {
    certOnly.close();
  }
  // Without a client certificate the handshake fails.
  const noCert = new Gantry(addr, { tls: { caFile: path("ca.crt"), serverName: "localhost" }, token: TOKEN, retries: 0 });
  try {
    await assert.rejects(noCert.namespace("ts").get("k"), (e: Error & { code?: number }) => e.code === 14);
  } finally {
    noCert.close();
  }
  assert.throws(() => new Gantry(addr, { token: TOKEN }), /never sent in plaintext/);
});
