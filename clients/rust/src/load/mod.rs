//! gantry-load: drives one gantry RPC scenario (or a peer's) at a fixed
//! concurrency (closed loop) or a fixed request rate (open loop, latency
//! measured from each request's intended start so queueing is not hidden),
//! with warm-up, hdrhistogram percentiles, errors by status code, and JSON.

pub mod args;
pub mod keys;
pub mod raw;
pub mod report;
pub mod runner;
pub mod scenario;
