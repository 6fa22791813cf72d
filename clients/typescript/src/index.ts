/**
 * TypeScript client for gantry, the gRPC control plane a fleet of services
 * shares: the generated clients (src/gen, from proto/ by `npm run generate`)
 * and promise-based helpers — a rate limiter that waits its turn, a lease
 * that renews itself, a near cache kept coherent through Watch, a background
 * query recorder — with deadlines and retries on UNAVAILABLE.
 */
import { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";

import { CallOptions, ChannelCredentials, ClientUnaryCall, Metadata, ServiceError, credentials, status } from "@grpc/grpc-js";

import { CacheClient, WatchEvent, WatchEvent_Kind } from "./gen/gantry/v1/cache";
import { DenialReason, LeasesClient } from "./gen/gantry/v1/leases";
import { QueryAnalyzerClient, QueryExecution } from "./gen/gantry/v1/query";
import { RateLimiterClient } from "./gen/gantry/v1/ratelimit";
import { TracesClient } from "./gen/gantry/v1/traces";
import { Duration } from "./gen/google/protobuf/duration";
import { GantryError, NotGranted, check, closedError } from "./errors";
import { QueryReader, QueryStats, SlowQueriesOptions, SlowQuery, TopQueriesOptions } from "./queries";

export * as pb from "./pb";
export { GantryError, NotGranted } from "./errors";
export { QueryStats, SlowQuery, TopQueriesOptions, SlowQueriesOptions, QueryOrderName } from "./queries";
export { CacheClient, LeasesClient, QueryAnalyzerClient, RateLimiterClient, TracesClient };

/** Why the server refused a lease, as its answer says. */
function denialText(reason: DenialReason, holder: string): string {
  switch (reason) {
    case DenialReason.DENIAL_REASON_POOL_FULL: return " (the pool is full)";
    case DenialReason.DENIAL_REASON_HOLDER_LIMIT: return ` (holder ${holder} is at the pool's max_per_holder)`;
    case DenialReason.DENIAL_REASON_QUEUE_AHEAD: return " (callers that came first are waiting)";
    default: return "";
  }
}

/** Per-call settings every helper takes last. */
export interface CallSettings {
  /** Cancels the call (and any wait or retry it is in); the promise rejects with the signal's reason. */
  signal?: AbortSignal;
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
/** Waits `ms`, or rejects with the signal's reason as soon as it aborts. */
const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });

type Callback<T> = (error: ServiceError | null, response: T) => void;
type Unary<Req, Res> = (request: Req, metadata: Metadata, options: Partial<CallOptions>, callback: Callback<Res>) => ClientUnaryCall;

/** What `call` may be told beyond the request. */
export interface CallOptionsOf extends CallSettings {
  /** How long the server may wait (for tokens or units) before it answers; added to the deadline. */
  waitMs?: number;
  /** The deadline beyond the wait; default the client's `timeoutMs`. */
  timeoutMs?: number;
}

/** Something `Gantry.close()` shuts down with the channel. */
interface Owned {
  shutDown(): void | Promise<void>;
}

export class Gantry {
  readonly rateLimiter: RateLimiterClient;
  readonly cache: CacheClient;
  readonly query: QueryAnalyzerClient;
  readonly traces: TracesClient;
  readonly leases: LeasesClient;
  readonly timeoutMs: number;
  private readonly retries: number;
  private readonly owned = new Set<Owned>();
  private readonly queries = new QueryReader(this);
  private closed = false;

  constructor(target: string, options: GantryOptions = {}) {
    check.text("new Gantry", "target", target);
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

  /** True once `close()` was called: every call after it fails with CANCELLED. */
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Sends what recorders hold, stops near caches' Watch streams and leases'
   * renewals (their units return when the TTL ends; `release()` first to
   * return them at once), then closes the channel, so nothing this client
   * started keeps the process alive. Never rejects.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    const owned = [...this.owned];
    this.owned.clear();
    await Promise.allSettled(owned.map((o) => o.shutDown()));
    this.closed = true;
    this.rateLimiter.close();
  }

  /**
   * Registers what `close()` must shut down; returns a function that forgets
   * it. On a closed client nothing is registered: callers check `isClosed`
   * first and start nothing (a recorder refuses rows, a near cache reads
   * through).
   */
  own(thing: Owned): () => void {
    if (this.closed) return () => undefined;
    this.owned.add(thing);
    return () => this.owned.delete(thing);
  }

  /**
   * Calls a unary method with a deadline (`waitMs` plus `timeoutMs`), retrying
   * UNAVAILABLE with backoff; failures are GantryError with the gRPC code.
   */
  async call<Req, Res>(client: object, method: Unary<Req, Res>, request: Req, options: CallOptionsOf = {}): Promise<Res> {
    const { waitMs = 0, timeoutMs = this.timeoutMs, signal } = options;
    let backoff = 50;
    for (let attempt = 0; ; attempt++) {
      if (this.closed) throw closedError();
      signal?.throwIfAborted();
      try {
        return await new Promise<Res>((resolve, reject) => {
          const onAbort = () => unary.cancel();
          const unary = method.call(client, request, new Metadata(), { deadline: Date.now() + waitMs + timeoutMs }, (err, res) => {
            signal?.removeEventListener("abort", onAbort);
            if (err) reject(err);
            else resolve(res);
          });
          signal?.addEventListener("abort", onAbort, { once: true });
        });
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if ((err as ServiceError).code !== status.UNAVAILABLE || attempt >= this.retries || this.closed) throw GantryError.from(err);
        await sleep(backoff / 2 + Math.random() * backoff, signal);
        backoff = Math.min(backoff * 2, 2000);
      }
    }
  }

  limiter(limit: string, key: string, options: { client?: string } = {}): Limiter {
    return new Limiter(this, check.text("limiter", "limit", limit), check.text("limiter", "key", key), check.text("limiter", "options.client", options.client ?? ""));
  }

  namespace(name: string): Namespace {
    return new Namespace(this, check.text("namespace", "name", name));
  }

  /**
   * Leases `count` units of `pool`, waiting fairly up to `waitMs`; renews at a
   * third of the TTL and emits "lost" if it cannot keep it.
   */
  async lease(pool: string, holder: string, count: number, options: { ttlMs?: number; waitMs?: number } & CallSettings = {}): Promise<Lease> {
    check.text("lease", "pool", pool);
    check.text("lease", "holder", holder);
    check.count("lease", "count", count);
    const waitMs = check.millis("lease", "options.waitMs", options.waitMs ?? 0);
    const ttl = duration(check.millis("lease", "options.ttlMs", options.ttlMs ?? 0));
    const res = await this.call(this.leases, this.leases.acquire, { pool, holder, count, ttl, maxWait: duration(waitMs) }, { waitMs, signal: options.signal });
    if (!res.granted) throw new NotGranted(`${count} units of ${pool} not granted within ${waitMs} ms${denialText(res.denialReason, holder)}`);
    const expires = res.expiresAt ?? new Date();
    const ttlMs = options.ttlMs || Math.max(expires.getTime() - Date.now(), 1000);
    return new Lease(this, res.leaseId, res.count, ttlMs, expires);
  }

  recorder(service: string, dialect = "", options: { batch?: number; intervalMs?: number } = {}): Recorder {
    check.text("recorder", "service", service);
    check.text("recorder", "dialect", dialect);
    const batch = check.count("recorder", "options.batch", options.batch ?? 500);
    const intervalMs = check.millis("recorder", "options.intervalMs", options.intervalMs ?? 1000);
    return new Recorder(this, service, dialect, batch, Math.max(intervalMs, 10));
  }

  /** The heaviest statements recorded (by total time unless `orderBy` says otherwise). */
  topQueries(options: TopQueriesOptions = {}): Promise<QueryStats[]> {
    return this.queries.top(options);
  }

  /** Executions over the slow threshold, newest first. */
  slowQueries(options: SlowQueriesOptions = {}): Promise<SlowQuery[]> {
    return this.queries.slow(options);
  }
}

/** Tokens of one limit for one key, shared by the fleet. */
export class Limiter {
  constructor(private readonly gantry: Gantry, readonly limit: string, readonly key: string, readonly client: string) {}

  /** Takes tokens now, or waits up to `waitMs` in the bucket's fair queue; a wait that runs out is `allowed: false`. */
  async acquire(tokens = 1, waitMs = 0, options: CallSettings = {}): Promise<Decision> {
    check.count("acquire", "tokens", tokens);
    check.millis("acquire", "waitMs", waitMs);
    const g = this.gantry;
    const r = await g.call(g.rateLimiter, g.rateLimiter.acquire, {
      limit: this.limit, key: this.key, tokens, maxWait: duration(waitMs), dryRun: false, client: this.client,
    }, { waitMs, signal: options.signal });
    return {
      allowed: r.allowed,
      remaining: r.remaining,
      retryAfterMs: millis(r.retryAfter),
      resetAfterMs: millis(r.resetAfter),
      waitedMs: millis(r.waited),
    };
  }

  /** One token, waiting up to `waitMs`; throws NotGranted when the wait runs out. */
  async wait(waitMs: number, options: CallSettings = {}): Promise<Decision> {
    const d = await this.acquire(1, waitMs, options);
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

/**
 * Units of a global budget, renewed in the background until release().
 * When gantry says the lease is gone, or its expiry passes without a
 * renewal, it emits "lost" (with the error) once, aborts `signal` (hand it to
 * the work the lease protects) and sets `lost`.
 */
export class Lease extends EventEmitter<{ lost: [Error] }> {
  lost = false;
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout;
  private readonly forget: () => void;

  constructor(private readonly gantry: Gantry, readonly id: string, readonly count: number, readonly ttlMs: number, public expiresAt: Date) {
    super();
    const every = Math.max(ttlMs / 3, 100);
    this.timer = setInterval(() => void this.renew(every), every);
    this.timer.unref();
    if (gantry.isClosed) clearInterval(this.timer); // closed while it was granted: nothing renews it
    this.forget = gantry.own({ shutDown: () => clearInterval(this.timer) });
  }

  /** Aborted (with the reason) when the lease is lost. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  private async renew(every: number): Promise<void> {
    const g = this.gantry;
    try {
      // A renewal that takes longer than its own interval is as good as lost.
      const res = await g.call(g.leases, g.leases.renew, { leaseId: this.id, ttl: duration(this.ttlMs) }, { timeoutMs: every });
      if (res.expiresAt) this.expiresAt = res.expiresAt;
    } catch (err) {
      if ((err as GantryError).code === status.NOT_FOUND) this.lose(new Error(`lease ${this.id} is gone: ${(err as Error).message}`));
      else if (Date.now() > this.expiresAt.getTime()) this.lose(new Error(`lease ${this.id} expired at ${this.expiresAt.toISOString()} without a renewal: ${(err as Error).message}`));
    }
  }

  private lose(reason: Error): void {
    if (this.lost) return;
    this.lost = true;
    clearInterval(this.timer);
    this.forget();
    this.controller.abort(reason);
    this.emit("lost", reason);
  }

  /** Returns the units at once; false if gantry no longer had them. */
  async release(options: CallSettings = {}): Promise<boolean> {
    clearInterval(this.timer);
    this.forget();
    const g = this.gantry;
    return (await g.call(g.leases, g.leases.release, { leaseId: this.id }, options)).released;
  }
}

/** One namespace of the shared cache. */
export class Namespace {
  constructor(readonly gantry: Gantry, readonly name: string) {}

  /** The value and version, or undefined for a missing or expired key. */
  async get(key: string, options: CallSettings = {}): Promise<{ value: Buffer; version: number } | undefined> {
    check.text("get", "key", key);
    const g = this.gantry;
    const r = await g.call(g.cache, g.cache.get, { namespace: this.name, key }, options);
    return r.found ? { value: r.value, version: r.version } : undefined;
  }

  /** Writes a key (a string is stored as UTF-8; ttlMs 0: no expiry) and returns its version. */
  async put(key: string, value: Buffer | Uint8Array | string, ttlMs = 0, options: CallSettings = {}): Promise<number> {
    check.text("put", "key", key);
    const bytes = check.bytes("put", "value", value);
    check.millis("put", "ttlMs", ttlMs);
    const g = this.gantry;
    const r = await g.call(g.cache, g.cache.put, { namespace: this.name, key, value: bytes, ttl: duration(ttlMs) }, options);
    return r.version;
  }

  async delete(key: string, options: CallSettings = {}): Promise<boolean> {
    check.text("delete", "key", key);
    const g = this.gantry;
    return (await g.call(g.cache, g.cache.delete, { namespace: this.name, key }, options)).deleted;
  }

  nearCache(prefix = "", maxEntries = 10_000): NearCache {
    check.text("nearCache", "prefix", prefix);
    check.count("nearCache", "maxEntries", maxEntries);
    return new NearCache(this, prefix, maxEntries);
  }
}

/**
 * Recently read keys kept in process and coherent through Watch: puts,
 * deletes and expiries from any instance update or drop the local copy; a
 * RESYNC or a broken stream clears it (reads go to gantry until it is back).
 * `close()` (or the client's) ends the stream.
 */
export class NearCache {
  private items = new Map<string, { value: Buffer; version: number }>();
  private generation = 0;
  private live = false;
  private closed = false;
  private stream?: ReturnType<CacheClient["watch"]>;
  private readonly forget: () => void;

  constructor(private readonly ns: Namespace, private readonly prefix: string, private readonly maxEntries: number) {
    this.closed = ns.gantry.isClosed;
    this.forget = ns.gantry.own({ shutDown: () => this.stop() });
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

  async get(key: string, options: CallSettings = {}): Promise<Buffer | undefined> {
    const held = this.items.get(key);
    if (held) return held.value;
    const { generation, live } = this;
    const found = await this.ns.get(key, options);
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

  private stop(): void {
    this.closed = true;
    this.stream?.cancel();
    this.items.clear();
  }

  close(): void {
    this.forget();
    this.stop();
  }
}

/**
 * Sends executed queries to gantry's statistics in batches by size and time;
 * record() never waits. After close() (its own or the client's) record()
 * refuses rows (false, counted in `dropped`).
 */
export class Recorder {
  dropped = 0;
  failed = 0;
  private pending: QueryExecution[] = [];
  private readonly timer: NodeJS.Timeout;
  private sending: Promise<void> = Promise.resolve();
  private closed = false;
  private readonly forget: () => void;

  constructor(private readonly gantry: Gantry, readonly service: string, readonly dialect: string,
              private readonly batch: number, intervalMs: number, private readonly maxPending = 10_000) {
    this.timer = setInterval(() => this.flush(), intervalMs);
    this.timer.unref();
    this.forget = gantry.own({ shutDown: () => this.stop() });
    if (gantry.isClosed) {
      // The client is closed: refuse rows, as after close().
      this.closed = true;
      clearInterval(this.timer);
    }
  }

  record(sql: string, tookMs: number, rows = 0, traceId = ""): boolean {
    check.text("record", "sql", sql);
    check.millis("record", "tookMs", tookMs);
    check.count("record", "rows", rows, 0);
    check.text("record", "traceId", traceId);
    if (this.closed || this.pending.length >= this.maxPending) {
      this.dropped++;
      return false;
    }
    this.pending.push({
      sql, fingerprint: "", dialect: this.dialect, duration: duration(tookMs), rows, service: this.service,
      traceId, time: new Date(),
    });
    if (this.pending.length >= this.batch) void this.flush();
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

  private async stop(): Promise<void> {
    if (this.closed) return this.sending;
    this.closed = true;
    clearInterval(this.timer);
    await this.flush();
  }

  /** Sends what is pending and stops. */
  async close(): Promise<void> {
    this.forget();
    await this.stop();
  }
}
