/**
 * TypeScript client for gantry, the gRPC control plane a fleet of services
 * shares: the generated clients (src/gen, from proto/ by `npm run generate`)
 * and promise-based helpers — a rate limiter that waits its turn, a lease
 * that renews itself, a near cache kept coherent through Watch, a background
 * query recorder — with deadlines and retries on UNAVAILABLE.
 */
import { readFileSync } from "node:fs";

import { CallOptions, ChannelCredentials, Metadata, ServiceError, credentials, status } from "@grpc/grpc-js";

import { CacheClient, WatchEvent, WatchEvent_Kind } from "./gen/gantry/v1/cache";
import { DenialReason, LeasesClient } from "./gen/gantry/v1/leases";
import { QueryAnalyzerClient, QueryExecution } from "./gen/gantry/v1/query";
import { RateLimiterClient } from "./gen/gantry/v1/ratelimit";
import { TracesClient } from "./gen/gantry/v1/traces";
import { Duration } from "./gen/google/protobuf/duration";

export * as pb from "./gen/gantry/v1/ratelimit";
export { CacheClient, LeasesClient, QueryAnalyzerClient, RateLimiterClient, TracesClient };

/** A wait for tokens or lease units ran out before they were granted. */
/** Why the server refused a lease, as its answer says. */
function denialText(reason: DenialReason, holder: string): string {
  switch (reason) {
    case DenialReason.DENIAL_REASON_POOL_FULL: return " (the pool is full)";
    case DenialReason.DENIAL_REASON_HOLDER_LIMIT: return ` (holder ${holder} is at the pool's max_per_holder)`;
    case DenialReason.DENIAL_REASON_QUEUE_AHEAD: return " (callers that came first are waiting)";
    default: return "";
  }
}

export class NotGranted extends Error {
  constructor(message: string, readonly retryAfterMs = 0) {
    super(message);
    this.name = "NotGranted";
  }
}

export interface Decision {
  allowed: boolean;
  remaining: number;
  retryAfterMs: number;
  resetAfterMs: number;
  waitedMs: number;
}

export interface GantryOptions {
  /** Deadline of a call beyond any wait it asks for, in ms (default 5000). */
  timeoutMs?: number;
  /** Tries again on UNAVAILABLE this many times, with backoff (default 3). */
  retries?: number;
  /** Channel credentials as grpc-js makes them; `tls` and `token` build them for you. */
  credentials?: ChannelCredentials;
  /** TLS to gantry's [server.tls]: the CA to trust (PEM file; default: the system's roots), a client certificate and key for mutual TLS, the name the server's certificate must carry. */
  tls?: { caFile?: string; certFile?: string; keyFile?: string; serverName?: string };
  /** Sent as `authorization: Bearer <token>` on every call (gantry's [auth]); needs `tls`. */
  token?: string;
}

/** The channel's credentials and options from `tls` and `token`. */
const security = (options: GantryOptions): { creds: ChannelCredentials; channelOptions: Record<string, string> } => {
  if (options.credentials) return { creds: options.credentials, channelOptions: {} };
  if (!options.tls) {
    if (options.token) throw new Error("a token needs tls: it is never sent in plaintext");
    return { creds: credentials.createInsecure(), channelOptions: {} };
  }
  const read = (file?: string) => (file ? readFileSync(file) : null);
  let creds = credentials.createSsl(read(options.tls.caFile), read(options.tls.keyFile), read(options.tls.certFile));
  if (options.token) {
    const bearer = `Bearer ${options.token}`;
    creds = credentials.combineChannelCredentials(
      creds,
      credentials.createFromMetadataGenerator((_params, callback) => {
        const metadata = new Metadata();
        metadata.set("authorization", bearer);
        callback(null, metadata);
      }),
    );
  }
  const name = options.tls.serverName;
  return { creds, channelOptions: name ? { "grpc.ssl_target_name_override": name, "grpc.default_authority": name } : {} };
};

const duration = (ms?: number): Duration | undefined =>
  ms && ms > 0 ? { seconds: Math.floor(ms / 1000), nanos: Math.round((ms % 1000) * 1e6) } : undefined;
const millis = (d?: Duration): number => (d ? d.seconds * 1000 + d.nanos / 1e6 : 0);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

type Callback<T> = (error: ServiceError | null, response: T) => void;
type Unary<Req, Res> = (request: Req, metadata: Metadata, options: Partial<CallOptions>, callback: Callback<Res>) => unknown;

export class Gantry {
  readonly rateLimiter: RateLimiterClient;
  readonly cache: CacheClient;
  readonly query: QueryAnalyzerClient;
  readonly traces: TracesClient;
  readonly leases: LeasesClient;
  readonly timeoutMs: number;
  private readonly retries: number;

  constructor(target: string, options: GantryOptions = {}) {
    const { creds, channelOptions } = security(options);
    this.rateLimiter = new RateLimiterClient(target, creds, channelOptions);
    // Every client shares the first one's channel: one HTTP/2 connection.
    const channel = { channelOverride: this.rateLimiter.getChannel() };
    this.cache = new CacheClient(target, creds, channel);
    this.query = new QueryAnalyzerClient(target, creds, channel);
    this.traces = new TracesClient(target, creds, channel);
    this.leases = new LeasesClient(target, creds, channel);
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.retries = options.retries ?? 3;
  }

  close(): void {
    this.rateLimiter.close();
  }

  /** Calls a unary method with a deadline (`waitMs` plus `timeoutMs`), retrying UNAVAILABLE with backoff. */
  async call<Req, Res>(client: object, method: Unary<Req, Res>, request: Req, waitMs = 0, timeoutMs = this.timeoutMs): Promise<Res> {
    let backoff = 50;
    for (let attempt = 0; ; attempt++) {
      try {
        return await new Promise<Res>((resolve, reject) =>
          method.call(client, request, new Metadata(), { deadline: Date.now() + waitMs + timeoutMs }, (err, res) =>
            err ? reject(err) : resolve(res),
          ),
        );
      } catch (err) {
        if ((err as ServiceError).code !== status.UNAVAILABLE || attempt >= this.retries) throw err;
        await sleep(backoff / 2 + Math.random() * backoff);
        backoff = Math.min(backoff * 2, 2000);
      }
    }
  }

  limiter(limit: string, key: string, options: { client?: string } = {}): Limiter {
    return new Limiter(this, limit, key, options.client ?? "");
  }

  namespace(name: string): Namespace {
    return new Namespace(this, name);
  }

  /** Leases `count` units of `pool`, waiting fairly up to `waitMs`; renews at a third of the TTL. */
  async lease(pool: string, holder: string, count: number, options: { ttlMs?: number; waitMs?: number } = {}): Promise<Lease> {
    const waitMs = options.waitMs ?? 0;
    const res = await this.call(this.leases, this.leases.acquire, {
      pool, holder, count, ttl: duration(options.ttlMs), maxWait: duration(waitMs),
    }, waitMs);
    if (!res.granted) throw new NotGranted(`${count} units of ${pool} not granted within ${waitMs} ms${denialText(res.denialReason, holder)}`);
    const expires = res.expiresAt ?? new Date();
    const ttlMs = options.ttlMs ?? Math.max(expires.getTime() - Date.now(), 1000);
    return new Lease(this, res.leaseId, res.count, ttlMs, expires);
  }

  recorder(service: string, dialect = "", options: { batch?: number; intervalMs?: number } = {}): Recorder {
    return new Recorder(this, service, dialect, options.batch ?? 500, options.intervalMs ?? 1000);
  }
}

/** Tokens of one limit for one key, shared by the fleet. */
export class Limiter {
  constructor(private readonly gantry: Gantry, readonly limit: string, readonly key: string, readonly client: string) {}

  /** Takes tokens now, or waits up to `waitMs` in the bucket's fair queue; a wait that runs out is `allowed: false`. */
  async acquire(tokens = 1, waitMs = 0): Promise<Decision> {
    const g = this.gantry;
    const r = await g.call(g.rateLimiter, g.rateLimiter.acquire, {
      limit: this.limit, key: this.key, tokens, maxWait: duration(waitMs), dryRun: false, client: this.client,
    }, waitMs);
    return {
      allowed: r.allowed,
      remaining: r.remaining,
      retryAfterMs: millis(r.retryAfter),
      resetAfterMs: millis(r.resetAfter),
      waitedMs: millis(r.waited),
    };
  }

  /** One token, waiting up to `waitMs`; throws NotGranted when the wait runs out. */
  async wait(waitMs: number): Promise<Decision> {
    const d = await this.acquire(1, waitMs);
    if (!d.allowed) throw new NotGranted(`${this.limit}/${this.key}: no token within ${waitMs} ms`, d.retryAfterMs);
    return d;
  }

  /** Wraps an async function so that each call first takes a token. */
  wrap<A extends unknown[], R>(waitMs: number, fn: (...args: A) => Promise<R>): (...args: A) => Promise<R> {
    return async (...args: A) => {
      await this.wait(waitMs);
      return fn(...args);
    };
  }
}

/** Units of a global budget, renewed in the background until release(). */
export class Lease {
  lost = false;
  private timer: NodeJS.Timeout;

  constructor(private readonly gantry: Gantry, readonly id: string, readonly count: number, readonly ttlMs: number, public expiresAt: Date) {
    const every = Math.max(ttlMs / 3, 100);
    this.timer = setInterval(() => void this.renew(every), every);
    this.timer.unref();
  }

  private async renew(every: number): Promise<void> {
    const g = this.gantry;
    try {
      // A renewal that takes longer than its own interval is as good as lost.
      const res = await g.call(g.leases, g.leases.renew, { leaseId: this.id, ttl: duration(this.ttlMs) }, 0, every);
      if (res.expiresAt) this.expiresAt = res.expiresAt;
    } catch (err) {
      if ((err as ServiceError).code === status.NOT_FOUND || Date.now() > this.expiresAt.getTime()) {
        this.lost = true;
        clearInterval(this.timer);
      }
    }
  }

  /** Returns the units at once; false if gantry no longer had them. */
  async release(): Promise<boolean> {
    clearInterval(this.timer);
    const g = this.gantry;
    return (await g.call(g.leases, g.leases.release, { leaseId: this.id })).released;
  }
}

/** One namespace of the shared cache. */
export class Namespace {
  constructor(readonly gantry: Gantry, readonly name: string) {}

  /** The value and version, or undefined for a missing or expired key. */
  async get(key: string): Promise<{ value: Buffer; version: number } | undefined> {
    const g = this.gantry;
    const r = await g.call(g.cache, g.cache.get, { namespace: this.name, key });
    return r.found ? { value: r.value, version: r.version } : undefined;
  }

  /** Writes a key (ttlMs 0: no expiry) and returns its version. */
  async put(key: string, value: Buffer, ttlMs = 0): Promise<number> {
    const g = this.gantry;
    const r = await g.call(g.cache, g.cache.put, { namespace: this.name, key, value, ttl: duration(ttlMs) });
    return r.version;
  }

  async delete(key: string): Promise<boolean> {
    const g = this.gantry;
    return (await g.call(g.cache, g.cache.delete, { namespace: this.name, key })).deleted;
  }

  nearCache(prefix = "", maxEntries = 10_000): NearCache {
    return new NearCache(this, prefix, maxEntries);
  }
}

/**
 * Recently read keys kept in process and coherent through Watch: puts,
 * deletes and expiries from any instance update or drop the local copy; a
 * RESYNC or a broken stream clears it (reads go to gantry until it is back).
 */
export class NearCache {
  private items = new Map<string, { value: Buffer; version: number }>();
  private generation = 0;
  private live = false;
  private closed = false;
  private stream?: ReturnType<CacheClient["watch"]>;

  constructor(private readonly ns: Namespace, private readonly prefix: string, private readonly maxEntries: number) {
    this.connect(50);
  }

  private reset(live: boolean): void {
    this.generation++;
    this.live = live;
    this.items.clear();
  }

  private connect(backoff: number): void {
    if (this.closed) return;
    const stream = this.ns.gantry.cache.watch({ namespace: this.ns.name, keyPrefix: this.prefix, includeValues: true });
    this.stream = stream;
    // Headers arrive once gantry has subscribed: from then on every change reaches us.
    stream.on("metadata", () => this.reset(true));
    stream.on("data", (event: WatchEvent) => this.apply(event));
    stream.on("error", () => undefined);
    stream.on("close", () => {
      this.reset(false);
      if (!this.closed) setTimeout(() => this.connect(Math.min(backoff * 2, 5000)), backoff).unref();
    });
  }

  private apply(event: WatchEvent): void {
    this.generation++;
    switch (event.kind) {
      case WatchEvent_Kind.KIND_PUT: {
        const held = this.items.get(event.key);
        if (held && held.version < event.version) this.items.set(event.key, { value: event.value, version: event.version });
        break;
      }
      case WatchEvent_Kind.KIND_DELETE:
      case WatchEvent_Kind.KIND_EXPIRE:
        this.items.delete(event.key);
        break;
      case WatchEvent_Kind.KIND_RESYNC:
        this.items.clear();
        break;
    }
  }

  async get(key: string): Promise<Buffer | undefined> {
    const held = this.items.get(key);
    if (held) return held.value;
    const { generation, live } = this;
    const found = await this.ns.get(key);
    // Kept only when no event raced the read: never a stale copy.
    if (found && live && this.live && this.generation === generation) {
      if (this.items.size >= this.maxEntries) this.items.delete(this.items.keys().next().value as string);
      this.items.set(key, found);
    }
    return found?.value;
  }

  get size(): number {
    return this.items.size;
  }

  close(): void {
    this.closed = true;
    this.stream?.cancel();
  }
}

/** Sends executed queries to gantry's statistics in batches by size and time; record() never waits. */
export class Recorder {
  dropped = 0;
  failed = 0;
  private pending: QueryExecution[] = [];
  private timer: NodeJS.Timeout;
  private sending: Promise<void> = Promise.resolve();

  constructor(private readonly gantry: Gantry, readonly service: string, readonly dialect: string,
              private readonly batch: number, intervalMs: number, private readonly maxPending = 10_000) {
    this.timer = setInterval(() => this.flush(), intervalMs);
    this.timer.unref();
  }

  record(sql: string, tookMs: number, rows = 0, traceId = ""): boolean {
    if (this.pending.length >= this.maxPending) {
      this.dropped++;
      return false;
    }
    this.pending.push({
      sql, fingerprint: "", dialect: this.dialect, duration: duration(tookMs), rows, service: this.service,
      traceId, time: new Date(),
    });
    if (this.pending.length >= this.batch) this.flush();
    return true;
  }

  private flush(): Promise<void> {
    if (this.pending.length === 0) return this.sending;
    const executions = this.pending;
    this.pending = [];
    const g = this.gantry;
    this.sending = this.sending.then(async () => {
      try {
        this.failed += (await g.call(g.query, g.query.record, { executions })).rejected;
      } catch {
        this.failed += executions.length;
      }
    });
    return this.sending;
  }

  /** Sends what is pending and stops. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.flush();
  }
}
