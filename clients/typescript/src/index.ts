/**
 * TypeScript client for gantry, the gRPC control plane a fleet of services
 * shares: the generated clients (src/gen, from proto/ by `npm run generate`)
 * and promise-based helpers — a rate limiter that waits its turn, a lease
 * that renews itself, a near cache kept coherent through Watch, a background
 * query recorder — with deadlines, round-robin over replicas, retries of
 * idempotent calls on UNAVAILABLE, a circuit breaker and a failure policy for
 * when gantry does not answer (docs/client-resilience.md).
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
import { Breaker, DecisionSource, FailurePolicy, IDEMPOTENT, PolicyState, channelTarget, lostMarginMs, unanswered } from "./resilience";

export * as pb from "./pb";
export { GantryError, NotGranted } from "./errors";
export { QueryStats, SlowQuery, TopQueriesOptions, SlowQueriesOptions, QueryOrderName } from "./queries";
export { DecisionSource, FailurePolicy } from "./resilience";
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
  /** Who decided: "server" (gantry), or the failure policy when gantry did not answer. */
  source: DecisionSource;
  /** Why the policy decided (e.g. "gantry unreachable: …"); "" for gantry's decisions. */
  reason: string;
}

export interface GantryOptions {
  /** Deadline of a call beyond any wait it asks for, in ms (default 5000). */
  timeoutMs?: number;
  /** Tries an idempotent call (docs/client-resilience.md lists them) again on UNAVAILABLE this many times, with backoff (default 3). */
  retries?: number;
  /** What limiters answer when gantry does not: "fail_open" (default), "fail_closed" or "local". */
  failurePolicy?: FailurePolicy;
  /** For "local": how many instances share each limit (its bucket gets rate/share and burst/share; default 1). */
  localShare?: number;
  /** Called with every limiter decision (its `source` says who made it), e.g. for your metrics. */
  onDecision?: (limit: string, decision: Decision) => void;
  /** After `failures` consecutive unanswered calls, fail at once for `openForMs`, then probe; a failing probe doubles it up to `maxOpenForMs` (default 5, 1000, 30000). */
  circuitBreaker?: { failures?: number; openForMs?: number; maxOpenForMs?: number };
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
  /** @internal */ readonly breaker: Breaker;
  /** @internal */ readonly policy: PolicyState;
  /** @internal */ readonly onDecision?: (limit: string, decision: Decision) => void;

  /**
   * `target` is one address, a comma-separated list or an array of `ip:port`,
   * or a `dns:///name:port` with several addresses: calls are balanced
   * round-robin over them.
   */
  constructor(target: string | readonly string[], options: GantryOptions = {}) {
    if (typeof target !== "string") (Array.isArray(target) ? target : [target]).forEach((t, i) => check.text("new Gantry", `target[${i}]`, t));
    const endpoints = channelTarget(target);
    target = endpoints.target;
    const { creds, channelOptions: secure } = security(options);
    const channelOptions = { ...endpoints.options, ...secure };
    const cb = options.circuitBreaker ?? {};
    this.breaker = new Breaker(cb.failures ?? 5, cb.openForMs ?? 1000, cb.maxOpenForMs ?? 30_000);
    this.policy = new PolicyState(options.failurePolicy ?? "fail_open", options.localShare ?? 1);
    this.onDecision = options.onDecision;
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

  /** How many limiter decisions each source made: server, fail_open, fail_closed, local. */
  get decisions(): Record<DecisionSource, number> {
    return { ...this.policy.counts };
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
   * Calls a unary method through the circuit breaker with a deadline
   * (`waitMs` plus `timeoutMs`), retrying an idempotent one on UNAVAILABLE
   * with backoff; failures are GantryError with the gRPC code.
   */
  async call<Req, Res>(client: object, method: Unary<Req, Res>, request: Req, options: CallOptionsOf = {}): Promise<Res> {
    if (this.closed) throw closedError();
    options.signal?.throwIfAborted();
    const { go, probe } = this.breaker.admit();
    if (!go) throw new GantryError(status.UNAVAILABLE, this.breaker.refusal());
    try {
      const res = await this.attempts(client, method, request, options);
      this.breaker.record(probe, "answered");
      return res;
    } catch (err) {
      const code = (err as Partial<GantryError>).code;
      this.breaker.record(probe, options.signal?.aborted ? "neither" : unanswered(code) ? "failed" : "answered");
      throw err;
    }
  }

  private async attempts<Req, Res>(client: object, method: Unary<Req, Res>, request: Req, options: CallOptionsOf): Promise<Res> {
    const { waitMs = 0, timeoutMs = this.timeoutMs, signal } = options;
    const retries = IDEMPOTENT.has((method as { path?: string }).path ?? "") ? this.retries : 0;
    // One deadline for every attempt: retries never take a call past it.
    const deadline = Date.now() + waitMs + timeoutMs;
    let backoff = 50;
    for (let attempt = 0; ; attempt++) {
      if (this.closed) throw closedError();
      signal?.throwIfAborted();
      try {
        return await new Promise<Res>((resolve, reject) => {
          const onAbort = () => unary.cancel();
          const unary = method.call(client, request, new Metadata(), { deadline }, (err, res) => {
            signal?.removeEventListener("abort", onAbort);
            if (err) reject(err);
            else resolve(res);
          });
          signal?.addEventListener("abort", onAbort, { once: true });
        });
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        const pause = backoff / 2 + Math.random() * backoff;
        if ((err as ServiceError).code !== status.UNAVAILABLE || attempt >= retries || this.closed || Date.now() + pause >= deadline) throw GantryError.from(err);
        await sleep(pause, signal);
        backoff = Math.min(backoff * 2, 2000);
      }
    }
  }

  /** A limiter; `failurePolicy` overrides the client's for it. */
  limiter(limit: string, key: string, options: { client?: string; failurePolicy?: FailurePolicy } = {}): Limiter {
    return new Limiter(this, check.text("limiter", "limit", limit), check.text("limiter", "key", key), check.text("limiter", "options.client", options.client ?? ""),
      options.failurePolicy ?? this.policy.policy);
  }

  /** @internal The failure policy's decision, or undefined when `err` is an answer (the caller's to see). */
  fallback(policy: FailurePolicy, limit: string, key: string, tokens: number, err: unknown): Decision | undefined {
    const e = err as Partial<GantryError>;
    if (this.closed || !unanswered(e.code)) return undefined;
    const fb = this.policy.fallback(policy, limit, key, tokens, this.breaker.remainingMs(), `${e.codeName}: ${e.details}`);
    return { ...fb, resetAfterMs: 0, waitedMs: 0 };
  }

  /** @internal Counts a decision and shows it to the hook. */
  decided(limit: string, d: Decision): Decision {
    this.policy.counts[d.source]++;
    this.onDecision?.(limit, d);
    return d;
  }

  /** @internal Asks gantry for the limits' parameters, for the local policy. */
  async learnLimits(): Promise<void> {
    try {
      this.policy.learn(await this.call(this.rateLimiter, this.rateLimiter.listLimits, {}));
    } catch {
      // asked again at the next decision by gantry, a second on
    }
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
  constructor(private readonly gantry: Gantry, readonly limit: string, readonly key: string, readonly client: string,
              /** What it answers when gantry does not. */ readonly failurePolicy: FailurePolicy = "fail_open") {}

  /**
   * Takes tokens now, or waits up to `waitMs` in the bucket's fair queue; a
   * wait that runs out is `allowed: false`. When gantry does not answer, the
   * failure policy decides (`source` says so) — never an error; a policy's
   * denial is asked again after its retry-after while `waitMs` lasts.
   */
  async acquire(tokens = 1, waitMs = 0, options: CallSettings = {}): Promise<Decision> {
    check.count("acquire", "tokens", tokens);
    check.millis("acquire", "waitMs", waitMs);
    const g = this.gantry;
    const until = Date.now() + waitMs;
    for (;;) {
      let r;
      try {
        r = await g.call(g.rateLimiter, g.rateLimiter.acquire, {
          limit: this.limit, key: this.key, tokens, maxWait: duration(waitMs), dryRun: false, client: this.client,
        }, { waitMs, signal: options.signal });
      } catch (err) {
        const d = g.fallback(this.failurePolicy, this.limit, this.key, tokens, err);
        if (!d || options.signal?.aborted) throw err;
        g.decided(this.limit, d);
        if (d.allowed || Date.now() + d.retryAfterMs > until) return d;
        await sleep(Math.max(d.retryAfterMs, 10), options.signal);
        continue;
      }
      if (this.failurePolicy === "local" && g.policy.needsLearning(this.limit, Date.now())) void g.learnLimits();
      return g.decided(this.limit, {
        allowed: r.allowed,
        remaining: r.remaining,
        retryAfterMs: millis(r.retryAfter),
        resetAfterMs: millis(r.resetAfter),
        waitedMs: millis(r.waited),
        source: "server",
        reason: "",
      });
    }
  }

  /** One token, waiting up to `waitMs`; throws NotGranted when the wait runs out. */
  async wait(waitMs: number, options: CallSettings = {}): Promise<Decision> {
    const d = await this.acquire(1, waitMs, options);
    if (!d.allowed) {
      const why = d.source === "server" ? "" : ` (${d.source}: ${d.reason})`;
      throw new NotGranted(`${this.limit}/${this.key}: no token within ${waitMs} ms${why}`, d.retryAfterMs);
    }
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
 * Units of a global budget, renewed in the background until release(): every
 * third of the TTL, a tenth after a failed renewal. When gantry says the
 * lease is gone, or it could not be renewed until a tenth of the TTL (50 ms
 * to 5 s) before its expiry, it emits "lost" (with the error) once, aborts
 * `signal` (hand it to the work the lease protects) and sets `lost` — before
 * the units return to the pool.
 */
export class Lease extends EventEmitter<{ lost: [Error] }> {
  lost = false;
  private readonly controller = new AbortController();
  private timer?: NodeJS.Timeout;
  private readonly forget: () => void;
  private stopped = false;
  private lastFailure = "";

  constructor(private readonly gantry: Gantry, readonly id: string, readonly count: number, readonly ttlMs: number, public expiresAt: Date) {
    super();
    this.stopped = gantry.isClosed; // closed while it was granted: nothing renews it
    this.forget = gantry.own({ shutDown: () => this.stop() });
    this.schedule(Math.max(ttlMs / 3, 100));
  }

  /** Aborted (with the reason) when the lease is lost. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  private lostAt(): number {
    return this.expiresAt.getTime() - lostMarginMs(this.ttlMs);
  }

  /** The next renewal in `inMs`, or the loss if that comes first. */
  private schedule(inMs: number): void {
    if (this.stopped) return;
    const next = Date.now() + inMs;
    this.timer = setTimeout(() => void this.renew(), Math.max(0, Math.min(next, this.lostAt()) - Date.now()));
    this.timer.unref();
  }

  private async renew(): Promise<void> {
    if (this.stopped) return;
    if (Date.now() >= this.lostAt()) {
      this.lose(new Error(`lease ${this.id} not renewed before its expiry at ${this.expiresAt.toISOString()}: ${this.lastFailure || "no renewal was answered"}`));
      return;
    }
    const g = this.gantry;
    try {
      const res = await g.call(g.leases, g.leases.renew, { leaseId: this.id, ttl: duration(this.ttlMs) }, { timeoutMs: Math.max(this.lostAt() - Date.now(), 10) });
      if (res.expiresAt) this.expiresAt = res.expiresAt;
      this.lastFailure = "";
      this.schedule(Math.max(this.ttlMs / 3, 100));
    } catch (err) {
      if ((err as GantryError).code === status.NOT_FOUND) return this.lose(new Error(`lease ${this.id} is gone: ${(err as Error).message}`));
      this.lastFailure = (err as Error).message;
      this.schedule(Math.max(this.ttlMs / 10, 50));
    }
  }

  private stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private lose(reason: Error): void {
    if (this.lost) return;
    this.lost = true;
    this.stop();
    this.forget();
    this.controller.abort(reason);
    this.emit("lost", reason);
  }

  /** Returns the units at once; false if gantry no longer had them. */
  async release(options: CallSettings = {}): Promise<boolean> {
    this.stop();
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

  /** A near cache; `maxStaleMs` bounds how long it answers from what it holds while its stream is down (default 5000). */
  nearCache(prefix = "", maxEntries = 10_000, options: { maxStaleMs?: number } = {}): NearCache {
    check.text("nearCache", "prefix", prefix);
    check.count("nearCache", "maxEntries", maxEntries);
    return new NearCache(this, prefix, maxEntries, check.millis("nearCache", "options.maxStaleMs", options.maxStaleMs ?? 5000));
  }
}

/**
 * Recently read keys kept in process and coherent through Watch: puts,
 * deletes and expiries from any instance update or drop the local copy; a
 * RESYNC clears it. While the stream is down it answers from what it holds
 * for at most `maxStaleMs`, then drops it (reads go to gantry); when the
 * stream is back it starts over. `close()` (or the client's) ends the stream.
 */
export class NearCache {
  private items = new Map<string, { value: Buffer; version: number }>();
  private generation = 0;
  private live = false;
  private downSince: number | undefined;
  private closed = false;
  private stream?: ReturnType<CacheClient["watch"]>;
  private readonly forget: () => void;

  constructor(private readonly ns: Namespace, private readonly prefix: string, private readonly maxEntries: number,
              private readonly maxStaleMs = 5000) {
    this.closed = ns.gantry.isClosed;
    this.forget = ns.gantry.own({ shutDown: () => this.stop() });
    this.connect(50);
  }

  /** The stream is (back) up: start over, anything may have changed. */
  private resync(): void {
    this.generation++;
    this.live = true;
    this.downSince = undefined;
    this.items.clear();
  }

  /** The stream broke: what is held answers for maxStaleMs more. */
  private down(): void {
    this.generation++;
    if (this.live) {
      this.live = false;
      this.downSince = Date.now();
    }
    this.expireStale();
  }

  private expireStale(): void {
    if (!this.live && this.items.size > 0 && (this.downSince === undefined || Date.now() - this.downSince >= this.maxStaleMs)) this.items.clear();
  }

  private connect(backoff: number): void {
    if (this.closed) return;
    const stream = this.ns.gantry.cache.watch({ namespace: this.ns.name, keyPrefix: this.prefix, includeValues: true });
    this.stream = stream;
    // Headers arrive once gantry has subscribed: from then on every change reaches us.
    stream.on("metadata", () => this.resync());
    stream.on("data", (event: WatchEvent) => this.apply(event));
    stream.on("error", () => undefined);
    stream.on("close", () => {
      this.down();
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
    this.expireStale();
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
    this.expireStale();
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
