/**
 * Every generated message, enum and client of gantry's API in one namespace
 * (`import { pb } from "@gantry/client"`), for the calls the helpers do not
 * wrap. ts-proto emits a few helpers in every file; those are re-exported
 * once, from ratelimit, to keep the names unambiguous.
 */
export * from "./gen/gantry/v1/cache";
export * from "./gen/gantry/v1/leases";
export * from "./gen/gantry/v1/query";
export * from "./gen/gantry/v1/ratelimit";
export * from "./gen/gantry/v1/traces";
export { Duration } from "./gen/google/protobuf/duration";
export { Timestamp } from "./gen/google/protobuf/timestamp";
export { DeepPartial, Exact, MessageFns, protobufFileName, protobufPackage } from "./gen/gantry/v1/ratelimit";
