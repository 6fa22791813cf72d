//! The load generator's command line.

use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioName {
    /// grpc.health.v1.Health/Check: the transport's own limit.
    Health,
    Acquire,
    AcquireBatch,
    EnvoyRls,
    CacheGet,
    CachePut,
    CacheGetMany,
    /// Analyze, one of ten statements (after the first calls, texts seen before).
    Analyze,
    /// Analyze of a text never seen before: a 150-byte join whose literal
    /// differs every call, so each one is parsed and checked.
    AnalyzeNew,
    Record,
    Ingest,
    OtlpExport,
    /// Leases Acquire then Release.
    Lease,
    /// throttlecrab-server's Throttle (a peer, for side-by-side runs).
    Throttlecrab,
}

/// How calls are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Wire {
    /// tonic's generated clients: every scenario.
    Tonic,
    /// Requests encoded before the run, one per key, written with the `h2`
    /// crate: far less CPU per call (health and envoy-rls only).
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    Uniform,
    Zipf,
}

#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(
    name = "gantry-load",
    version,
    about = "Load generator for gantry and its peers"
)]
pub struct LoadArgs {
    /// What to call.
    #[arg(long, value_enum)]
    pub scenario: ScenarioName,
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub target: String,
    /// Closed loop: requests in flight at all times.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Open loop: requests per second (overrides --concurrency).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Open loop: most requests in flight before further ones are counted as skipped.
    #[arg(long, default_value_t = 10_000)]
    pub max_inflight: usize,
    /// Measured duration.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde_compat")]
    pub duration: Duration,
    /// Warm-up before measuring.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde_compat")]
    pub warmup: Duration,
    /// How calls are written: tonic's clients, or pre-encoded requests on
    /// raw HTTP/2 (a lean client, like h2load, but a request per key).
    #[arg(long, value_enum, default_value = "tonic")]
    pub wire: Wire,
    /// HTTP/2 connections to spread the calls over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// How keys are drawn.
    #[arg(long, value_enum, default_value = "uniform")]
    pub distribution: Distribution,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    /// Items per batch call (acquire-batch, cache-get-many, record, ingest, otlp-export).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Value size in bytes (cache-put).
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// cache-put values of random bytes (as encrypted or compressed payloads
    /// are: gzip cannot shrink them) instead of one repeated byte.
    #[arg(long)]
    pub random_values: bool,
    /// Attributes per span (ingest, otlp-export).
    #[arg(long, default_value_t = 10)]
    pub span_attributes: usize,
    /// Rate limit name (acquire, acquire-batch), Envoy domain (envoy-rls), lease pool (lease).
    #[arg(long, default_value = "bench")]
    pub name: String,
    /// Bucket parameters for throttlecrab: tokens per period, period (s), burst.
    #[arg(long, default_value_t = 1_000_000)]
    pub bucket_rate: i32,
    #[arg(long, default_value_t = 1)]
    pub bucket_period_secs: i32,
    #[arg(long, default_value_t = 1_000_000)]
    pub bucket_burst: i32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

mod humantime_serde_compat {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}
