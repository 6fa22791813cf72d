/**
 * What keeps a caller running when gantry does not answer: the limiter's
 * failure policy and its local token bucket, the circuit breaker, the calls a
 * retry cannot make act twice, the endpoints' channel target.
 * docs/client-resilience.md describes them for all four clients.
 */
import { status } from "@grpc/grpc-js";
import { isIP } from "node:net";

import { LimitInfo, LimitScope, ListLimitsResponse } from "./gen/gantry/v1/ratelimit";
import { Duration } from "./gen/google/protobuf/duration";

/** What a limiter answers when gantry does not. */
export type FailurePolicy = "fail_open" | "fail_closed" | "local";
/** Who made a decision: gantry, or the failure policy. */
export type DecisionSource = "server" | FailurePolicy;

export const POLICIES: readonly FailurePolicy[] = ["fail_open", "fail_closed", "local"];

/** The calls a retry cannot make act twice: the only ones retried on UNAVAILABLE. */
export const IDEMPOTENT: ReadonlySet<string> = new Set([
  "/gantry.v1.RateLimiter/ListLimits", "/gantry.v1.RateLimiter/InspectBucket", "/gantry.v1.RateLimiter/HotKeys",
  "/gantry.v1.Cache/Get", "/gantry.v1.Cache/GetMany", "/gantry.v1.Cache/Stats",
  "/gantry.v1.Leases/Renew", "/gantry.v1.Leases/PoolStatus",
  "/gantry.v1.QueryAnalyzer/Analyze", "/gantry.v1.QueryAnalyzer/TopQueries", "/gantry.v1.QueryAnalyzer/SlowQueries",
  "/gantry.v1.Traces/GetTrace", "/gantry.v1.Traces/EndpointStats",
]);

/** Whether a call's code means gantry did not answer. */
export const unanswered = (code: number | undefined): boolean =>
  code === status.UNAVAILABLE || code === status.DEADLINE_EXCEEDED;

/**
 * One address, a comma-separated list or an array of them, or a dns:///
 * name, as grpc-js's target and channel options: round-robin over every
 * address; a list of IP addresses becomes grpc-js's `ipv4:`/`ipv6:` list with
 * the first as the :authority (the list is not a valid one).
 */
export const channelTarget = (target: string | readonly string[]): { target: string; options: Record<string, string> } => {
  const parts = (typeof target === "string" ? target.split(",") : [...target]).map((p) => p.trim()).filter(Boolean);
  if (parts.length === 0) throw new TypeError("new Gantry: no address given");
  const options: Record<string, string> = { "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }) };
  if (parts.length === 1) return { target: parts[0], options };
  const hosts = parts.map((p) => {
    const at = p.lastIndexOf(":");
    const host = p.slice(0, at).replace(/^\[|\]$/g, "");
    if (at < 0 || !/^\d+$/.test(p.slice(at + 1)) || !isIP(host)) {
      throw new TypeError(`new Gantry: ${JSON.stringify(p)} in a list must be ip:port (use dns:///name:port for a name)`);
    }
    return { host, port: p.slice(at + 1) };
  });
  const v6 = hosts.some((h) => isIP(h.host) === 6);
  const list = hosts.map((h) => (v6 ? `[${isIP(h.host) === 6 ? h.host : `::ffff:${h.host}`}]:${h.port}` : `${h.host}:${h.port}`));
  return { target: `${v6 ? "ipv6" : "ipv4"}:${list.join(",")}`, options: { ...options, "grpc.default_authority": parts[0] } };
};

/**
 * The client's circuit breaker: closed until `failures` consecutive calls go
 * unanswered, then open for a back-off, then one probe; a failed probe
 * doubles the back-off up to `longestMs`. Pure but for the clock it is given.
 */
export class Breaker {
  private failures = 0;
  private backoffMs: number;
  private openUntil: number | undefined;
  private probing = false;

  constructor(readonly threshold = 5, readonly shortestMs = 1000, readonly longestMs = 30_000, private readonly now: () => number = Date.now) {
    this.threshold = Math.max(1, threshold);
    this.backoffMs = shortestMs;
  }

  /** May a call go now, and is it the probe. */
  admit(): { go: boolean; probe: boolean } {
    if (this.openUntil === undefined) return { go: true, probe: false };
    if (this.now() < this.openUntil || this.probing) return { go: false, probe: false };
    this.probing = true;
    return { go: true, probe: true };
  }

  /** Milliseconds until the next probe may go (0 when closed). */
  remainingMs(): number {
    return this.openUntil === undefined ? 0 : Math.max(0, this.openUntil - this.now());
  }

  record(probe: boolean, outcome: "answered" | "failed" | "neither"): void {
    if (probe) this.probing = false;
    if (outcome === "answered") {
      this.failures = 0;
      this.backoffMs = this.shortestMs;
      this.openUntil = undefined;
    } else if (outcome === "failed") {
      this.failures++;
      if (probe) {
        this.backoffMs = Math.min(this.backoffMs * 2, Math.max(this.longestMs, this.shortestMs));
        this.openUntil = this.now() + this.backoffMs;
      } else if (this.openUntil === undefined && this.failures >= this.threshold) {
        this.openUntil = this.now() + this.backoffMs;
      }
    }
  }

  refusal(): string {
    const wait = this.remainingMs();
    return `circuit open: gantry did not answer the last calls${wait ? `; next try in ${Math.round(wait)} ms` : ""}`;
  }
}

/** The local policy's bucket: `perMs` tokens a millisecond up to `burst`, starting full. */
export class TokenBucket {
  private tokens: number;
  private last: number | undefined;

  constructor(readonly perMs: number, readonly burst: number) {
    this.tokens = burst;
  }

  take(now: number, n: number): { allowed: boolean; remaining: number; retryAfterMs: number } {
    if (this.last !== undefined && now > this.last) this.tokens = Math.min(this.burst, this.tokens + (now - this.last) * this.perMs);
    this.last = now;
    if (n <= this.tokens) {
      this.tokens -= n;
      return { allowed: true, remaining: Math.floor(this.tokens), retryAfterMs: 0 };
    }
    if (n > this.burst || this.perMs <= 0) return { allowed: false, remaining: Math.floor(this.tokens), retryAfterMs: 3_600_000 };
    return { allowed: false, remaining: Math.floor(this.tokens), retryAfterMs: (n - this.tokens) / this.perMs };
  }
}

const MAX_LOCAL_KEYS = 10_000;
const RELEARN_EVERY_MS = 60_000;
const ms = (d?: Duration): number => (d ? d.seconds * 1000 + d.nanos / 1e6 : 0);

/** One limit's parameters (from ListLimits) and its local buckets. */
export class LocalLimit {
  private readonly buckets = new Map<string, TokenBucket>();

  constructor(readonly info: LimitInfo) {}

  take(now: number, key: string, n: number, share: number): { allowed: boolean; remaining: number; retryAfterMs: number } {
    if (this.info.scope === LimitScope.LIMIT_SCOPE_SHARED) key = "";
    let bucket = this.buckets.get(key);
    if (!bucket) {
      if (this.buckets.size >= MAX_LOCAL_KEYS) this.buckets.clear();
      const o = this.info.overrides.find((o) => o.key === key);
      const [rate, period, burst] = o ? [o.rate, ms(o.period), o.burst] : [this.info.rate, ms(this.info.period), this.info.burst];
      const s = Math.max(1, share);
      bucket = new TokenBucket(period > 0 ? rate / period / s : 0, Math.max(1, Math.floor(burst / s)));
      this.buckets.set(key, bucket);
    }
    return bucket.take(now, n);
  }
}

/** The failure policy's answer. */
export interface Fallback {
  allowed: boolean;
  remaining: number;
  retryAfterMs: number;
  source: DecisionSource;
  reason: string;
}

/**
 * What one client's limiters share to answer without gantry: the limits
 * learned, their local buckets and the decision counters.
 */
export class PolicyState {
  readonly counts: Record<DecisionSource, number> = { server: 0, fail_open: 0, fail_closed: 0, local: 0 };
  private readonly limits = new Map<string, LocalLimit>();
  private learnedAt = -Infinity;

  constructor(readonly policy: FailurePolicy, readonly share: number) {
    if (!POLICIES.includes(policy)) throw new TypeError(`new Gantry: failurePolicy must be one of ${POLICIES.join(", ")}, got ${JSON.stringify(policy)}`);
    this.share = Math.max(1, share);
  }

  knows(limit: string): boolean {
    return this.limits.has(limit);
  }

  /** Whether ListLimits should be asked now (claims the turn). */
  needsLearning(limit: string, now: number): boolean {
    if (this.limits.has(limit) && now - this.learnedAt < RELEARN_EVERY_MS) return false;
    if (now - this.learnedAt < 1000) return false;
    this.learnedAt = now;
    return true;
  }

  learn(resp: ListLimitsResponse): void {
    const byName = new Map(resp.limits.map((l) => [l.name, l] as const));
    const fallback = byName.get(resp.defaultLimit);
    if (fallback) byName.set("", fallback);
    for (const [name, info] of byName) {
      const held = this.limits.get(name);
      if (!held || JSON.stringify(LimitInfo.toJSON(held.info)) !== JSON.stringify(LimitInfo.toJSON(info))) this.limits.set(name, new LocalLimit(info));
    }
  }

  fallback(policy: FailurePolicy, limit: string, key: string, tokens: number, retryMs: number, cause: string): Fallback {
    if (policy === "fail_closed") return { allowed: false, remaining: 0, retryAfterMs: Math.max(retryMs, 100), source: "fail_closed", reason: `gantry unreachable: ${cause}` };
    if (policy === "local") {
      const local = this.limits.get(limit) ?? this.limits.get("");
      if (local) return { ...local.take(Date.now(), key, tokens, this.share), source: "local", reason: "" };
      return { allowed: true, remaining: 0, retryAfterMs: 0, source: "fail_open", reason: `limit ${limit} not learned yet` };
    }
    return { allowed: true, remaining: 0, retryAfterMs: 0, source: "fail_open", reason: "" };
  }
}

/** How long before its expiry a lease that could not be renewed is reported lost. */
export const lostMarginMs = (ttlMs: number): number => Math.min(Math.max(ttlMs / 10, 50), 5000);
