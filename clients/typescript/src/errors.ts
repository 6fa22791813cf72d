/**
 * The client's errors: NotGranted when a wait for tokens or lease units runs
 * out, GantryError (with the gRPC code) for every other failure of a call,
 * and TypeError for an argument of the wrong type, before anything is sent.
 */
import { ServiceError, status } from "@grpc/grpc-js";

/** A wait for tokens or lease units ran out before they were granted. */
export class NotGranted extends Error {
  constructor(message: string, readonly retryAfterMs = 0) {
    super(message);
    this.name = "NotGranted";
  }
}

/** A call gantry (or the channel) refused: `code` is the gRPC status code, `codeName` its name. */
export class GantryError extends Error {
  readonly codeName: string;

  constructor(readonly code: status, readonly details: string, options?: { cause?: unknown }) {
    super(`gantry answered ${status[code] ?? code}: ${details}`, options);
    this.name = "GantryError";
    this.codeName = status[code] ?? String(code);
  }

  /** A grpc-js error as a GantryError; anything else unchanged. */
  static from(err: unknown): unknown {
    const e = err as Partial<ServiceError>;
    if (err instanceof GantryError || typeof e?.code !== "number") return err;
    return new GantryError(e.code, e.details ?? e.message ?? "", { cause: err });
  }
}

/** What a call after `close()` gets (gRPC's own clients say CANCELLED too). */
export const closedError = () => new GantryError(status.CANCELLED, "this gantry client is closed");

const describe = (value: unknown): string =>
  value === null ? "null" : Array.isArray(value) ? "an array" : typeof value === "string" ? `the string ${JSON.stringify(value)}` : `${typeof value} ${String(value)}`;

/** Checks plain-JS callers' arguments so that a mistake names the argument, not a serialization failure. */
export const check = {
  text(where: string, name: string, value: unknown): string {
    if (typeof value !== "string") throw new TypeError(`${where}: ${name} must be a string, got ${describe(value)}`);
    return value;
  },
  count(where: string, name: string, value: unknown, min = 1): number {
    if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > 0xffffffff) {
      throw new TypeError(`${where}: ${name} must be a whole number from ${min} to 4294967295, got ${describe(value)}`);
    }
    return value;
  },
  millis(where: string, name: string, value: unknown): number {
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
      throw new TypeError(`${where}: ${name} must be a number of milliseconds, 0 or more, got ${describe(value)}`);
    }
    return value;
  },
  /** A value to store: bytes as they are, a string as UTF-8. */
  bytes(where: string, name: string, value: unknown): Buffer {
    if (Buffer.isBuffer(value)) return value;
    if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    if (typeof value === "string") return Buffer.from(value, "utf8");
    throw new TypeError(`${where}: ${name} must be a Buffer, a Uint8Array or a string, got ${describe(value)}`);
  },
};
