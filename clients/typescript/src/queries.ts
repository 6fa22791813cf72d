/**
 * Reading back what recorders sent: TopQueries and SlowQueries as plain
 * objects (milliseconds and Dates), so an application needs no generated
 * types to show them.
 */
import { QueryOrder, QueryStats as PbQueryStats, SlowQuery as PbSlowQuery } from "./gen/gantry/v1/query";
import { Duration } from "./gen/google/protobuf/duration";
import { check } from "./errors";
import type { CallSettings, Gantry } from "./index";

/** The orders TopQueries knows; "totalTime" when unset. */
export type QueryOrderName = "totalTime" | "meanTime" | "p99" | "calls" | "rows";

const ORDERS: Record<QueryOrderName, QueryOrder> = {
  totalTime: QueryOrder.QUERY_ORDER_TOTAL_TIME,
  meanTime: QueryOrder.QUERY_ORDER_MEAN_TIME,
  p99: QueryOrder.QUERY_ORDER_P99,
  calls: QueryOrder.QUERY_ORDER_CALLS,
  rows: QueryOrder.QUERY_ORDER_ROWS,
};

export interface TopQueriesOptions extends CallSettings {
  orderBy?: QueryOrderName;
  /** How many fingerprints (default 20). */
  limit?: number;
  /** Only this service (default: the whole fleet). */
  service?: string;
}

export interface SlowQueriesOptions extends CallSettings {
  /** Only executions at or after this time (default: all that are kept). */
  since?: Date;
  /** How many (default 50). */
  limit?: number;
}

/** One fingerprint's statistics; times in milliseconds. */
export interface QueryStats {
  fingerprint: string;
  service: string;
  /** The normalized text (raw only when the server keeps raw samples). */
  sample: string;
  calls: number;
  rows: number;
  totalMs: number;
  meanMs: number;
  minMs: number;
  maxMs: number;
  stddevMs: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  firstSeen?: Date;
  lastSeen?: Date;
  /** Set when the statement ran many times in one trace (N+1). */
  batching?: { maxPerTrace: number; occurrences: number; suggestion: string };
}

/** One execution over the slow threshold. */
export interface SlowQuery {
  fingerprint: string;
  text: string;
  durationMs: number;
  rows: number;
  service: string;
  traceId: string;
  time?: Date;
}

const ms = (d?: Duration): number => (d ? d.seconds * 1000 + d.nanos / 1e6 : 0);

const stats = (q: PbQueryStats): QueryStats => ({
  fingerprint: q.fingerprint, service: q.service, sample: q.sample, calls: q.calls, rows: q.rows,
  totalMs: ms(q.total), meanMs: ms(q.mean), minMs: ms(q.min), maxMs: ms(q.max), stddevMs: ms(q.stddev),
  p50Ms: ms(q.p50), p95Ms: ms(q.p95), p99Ms: ms(q.p99), firstSeen: q.firstSeen, lastSeen: q.lastSeen,
  batching: q.batching ? { ...q.batching } : undefined,
});

const slow = (q: PbSlowQuery): SlowQuery => ({
  fingerprint: q.fingerprint, text: q.text, durationMs: ms(q.duration), rows: q.rows, service: q.service,
  traceId: q.traceId, time: q.time,
});

export class QueryReader {
  constructor(private readonly gantry: Gantry) {}

  async top(options: TopQueriesOptions): Promise<QueryStats[]> {
    const orderBy = options.orderBy ?? "totalTime";
    if (!(orderBy in ORDERS)) throw new TypeError(`topQueries: orderBy must be one of ${Object.keys(ORDERS).join(", ")}, got ${JSON.stringify(orderBy)}`);
    const limit = check.count("topQueries", "limit", options.limit ?? 0, 0);
    const service = check.text("topQueries", "service", options.service ?? "");
    const g = this.gantry;
    const r = await g.call(g.query, g.query.topQueries, { orderBy: ORDERS[orderBy], limit, service }, { signal: options.signal });
    return r.queries.map(stats);
  }

  async slow(options: SlowQueriesOptions): Promise<SlowQuery[]> {
    if (options.since !== undefined && !(options.since instanceof Date)) throw new TypeError("slowQueries: since must be a Date");
    const limit = check.count("slowQueries", "limit", options.limit ?? 0, 0);
    const g = this.gantry;
    const r = await g.call(g.query, g.query.slowQueries, { since: options.since, limit }, { signal: options.signal });
    return r.queries.map(slow);
  }
}
