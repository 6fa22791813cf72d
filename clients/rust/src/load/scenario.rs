//! One call of each scenario. A `Caller` holds the generated clients of one
//! connection and builds each request; it returns how many items the call
//! carried (a batch of 100 decisions counts 100).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};
use rand::Rng;
use rand::rngs::SmallRng;
use tonic::Status;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::args::{LoadArgs, ScenarioName};
use super::keys::KeyPicker;
use crate::proto::gantry::v1 as pb;
use crate::proto::throttlecrab;

/// A mixed corpus: OLTP statements and analytic (TPC-H-like) queries.
pub const QUERY_CORPUS: &[&str] = &[
    "SELECT id, email FROM users WHERE id = 42",
    "SELECT * FROM orders WHERE customer_id = 7 AND status = 'open' ORDER BY created_at DESC LIMIT 20",
    "UPDATE accounts SET balance = balance - 100 WHERE id = 9",
    "INSERT INTO events (user_id, kind, payload) VALUES (1, 'click', '{}'), (2, 'view', '{}')",
    "DELETE FROM sessions WHERE expires_at < '2026-01-01'",
    "SELECT p.name, SUM(oi.quantity) FROM order_items oi JOIN products p ON p.id = oi.product_id WHERE oi.order_id IN (1, 2, 3) GROUP BY p.name",
    "SELECT l_returnflag, l_linestatus, SUM(l_quantity) AS sum_qty, SUM(l_extendedprice) AS sum_base_price, AVG(l_discount) AS avg_disc, COUNT(*) AS count_order FROM lineitem WHERE l_shipdate <= DATE '1998-12-01' - INTERVAL '90' DAY GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus",
    "SELECT s_acctbal, s_name, n_name, p_partkey, p_mfgr FROM part, supplier, partsupp, nation, region WHERE p_partkey = ps_partkey AND s_suppkey = ps_suppkey AND p_size = 15 AND s_nationkey = n_nationkey AND n_regionkey = r_regionkey AND r_name = 'EUROPE' ORDER BY s_acctbal DESC LIMIT 100",
    "SELECT o_orderpriority, COUNT(*) AS order_count FROM orders WHERE o_orderdate >= DATE '1993-07-01' AND EXISTS (SELECT * FROM lineitem WHERE l_orderkey = o_orderkey AND l_commitdate < l_receiptdate) GROUP BY o_orderpriority ORDER BY o_orderpriority",
    "SELECT c_custkey, c_name, SUM(l_extendedprice * (1 - l_discount)) AS revenue FROM customer, orders, lineitem, nation WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey AND o_orderdate >= DATE '1993-10-01' AND l_returnflag = 'R' AND c_nationkey = n_nationkey GROUP BY c_custkey, c_name ORDER BY revenue DESC LIMIT 20",
];

pub struct Caller {
    scenario: ScenarioName,
    args: std::sync::Arc<LoadArgs>,
    keys: KeyPicker,
    value: Vec<u8>,
    health: HealthClient<Channel>,
    rate: pb::rate_limiter_client::RateLimiterClient<Channel>,
    envoy: RateLimitServiceClient<Channel>,
    cache: pb::cache_client::CacheClient<Channel>,
    query: pb::query_analyzer_client::QueryAnalyzerClient<Channel>,
    traces: pb::traces_client::TracesClient<Channel>,
    otlp: TraceServiceClient<Channel>,
    leases: pb::leases_client::LeasesClient<Channel>,
    throttle: throttlecrab::rate_limiter_client::RateLimiterClient<Channel>,
}

/// The envoy-rls scenario's request: one `generic_key` descriptor entry.
pub fn should_rate_limit(domain: &str, value: String) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "generic_key".into(),
                value,
            }],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

fn attr(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn timestamp(unix_ns: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (unix_ns / 1_000_000_000) as i64,
        nanos: (unix_ns % 1_000_000_000) as i32,
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Caller {
    pub fn new(
        scenario: ScenarioName,
        args: std::sync::Arc<LoadArgs>,
        keys: KeyPicker,
        channel: Channel,
    ) -> Self {
        Self {
            scenario,
            value: if args.random_values {
                (0..args.value_size).map(|_| rand::random::<u8>()).collect()
            } else {
                vec![b'x'; args.value_size]
            },
            keys,
            health: HealthClient::new(channel.clone()),
            rate: pb::rate_limiter_client::RateLimiterClient::new(channel.clone()),
            envoy: RateLimitServiceClient::new(channel.clone()),
            cache: pb::cache_client::CacheClient::new(channel.clone()),
            query: pb::query_analyzer_client::QueryAnalyzerClient::new(channel.clone()),
            traces: pb::traces_client::TracesClient::new(channel.clone()),
            otlp: TraceServiceClient::new(channel.clone())
                .max_encoding_message_size(64 * 1024 * 1024),
            leases: pb::leases_client::LeasesClient::new(channel.clone()),
            throttle: throttlecrab::rate_limiter_client::RateLimiterClient::new(channel),
            args,
        }
    }

    /// Puts every key once before a read scenario, so reads hit (a cache
    /// read benchmark of misses measures nothing).
    pub async fn prefill(&mut self) -> Result<(), Status> {
        if !matches!(
            self.scenario,
            ScenarioName::CacheGet | ScenarioName::CacheGetMany
        ) {
            return Ok(());
        }
        let value = prost::bytes::Bytes::from(self.value.clone());
        let mut start = 0;
        while start < self.args.keys {
            let end = (start + 500).min(self.args.keys);
            let items = (start..end)
                .map(|i| pb::PutRequest {
                    namespace: self.args.name.clone(),
                    key: KeyPicker::nth(i),
                    value: value.clone().into(),
                    ..Default::default()
                })
                .collect();
            self.cache.put_many(pb::PutManyRequest { items }).await?;
            start = end;
        }
        Ok(())
    }

    fn acquire_request(&self, rng: &mut SmallRng) -> pb::AcquireRequest {
        pb::AcquireRequest {
            limit: self.args.name.clone(),
            key: self.keys.key(rng),
            tokens: 1,
            ..Default::default()
        }
    }

    fn span_ids(rng: &mut SmallRng) -> (Vec<u8>, Vec<u8>) {
        let trace: [u8; 16] = rng.random();
        let span: [u8; 8] = rng.random();
        (trace.to_vec(), span.to_vec())
    }

    /// Performs one call; returns the number of items it carried.
    pub async fn call(&mut self, rng: &mut SmallRng) -> Result<u64, Status> {
        let batch = self.args.batch.max(1);
        match self.scenario {
            ScenarioName::Health => {
                self.health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
                Ok(1)
            }
            ScenarioName::Acquire => {
                let request = self.acquire_request(rng);
                self.rate.acquire(request).await?;
                Ok(1)
            }
            ScenarioName::AcquireBatch => {
                let requests = (0..batch).map(|_| self.acquire_request(rng)).collect();
                self.rate
                    .acquire_batch(pb::AcquireBatchRequest {
                        requests,
                        all_or_nothing: false,
                    })
                    .await?;
                Ok(batch as u64)
            }
            ScenarioName::EnvoyRls => {
                let request = should_rate_limit(&self.args.name, self.keys.key(rng));
                self.envoy.should_rate_limit(request).await?;
                Ok(1)
            }
            ScenarioName::CacheGet => {
                let key = self.keys.key(rng);
                self.cache
                    .get(pb::GetRequest {
                        namespace: self.args.name.clone(),
                        key,
                    })
                    .await?;
                Ok(1)
            }
            ScenarioName::CachePut => {
                let key = self.keys.key(rng);
                self.cache
                    .put(pb::PutRequest {
                        namespace: self.args.name.clone(),
                        key,
                        value: self.value.clone(),
                        ..Default::default()
                    })
                    .await?;
                Ok(1)
            }
            ScenarioName::CacheGetMany => {
                let items = (0..batch)
                    .map(|_| pb::GetRequest {
                        namespace: self.args.name.clone(),
                        key: self.keys.key(rng),
                    })
                    .collect();
                self.cache.get_many(pb::GetManyRequest { items }).await?;
                Ok(batch as u64)
            }
            ScenarioName::Analyze => {
                let sql = QUERY_CORPUS[rng.random_range(0..QUERY_CORPUS.len())];
                self.query
                    .analyze(pb::AnalyzeRequest {
                        sql: sql.to_string(),
                        dialect: "postgres".into(),
                    })
                    .await?;
                Ok(1)
            }
            ScenarioName::AnalyzeNew => {
                // ~150 bytes, the shape issue #21 item 7 measures; the
                // literal makes each text new to the server's memo.
                let sql = format!(
                    "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
                     WHERE o.total > {} AND o.status = 'paid' ORDER BY o.created_at DESC LIMIT 25",
                    rng.random::<u64>()
                );
                self.query
                    .analyze(pb::AnalyzeRequest {
                        sql,
                        dialect: "postgres".into(),
                    })
                    .await?;
                Ok(1)
            }
            ScenarioName::Record => {
                let executions = (0..batch)
                    .map(|_| pb::QueryExecution {
                        sql: QUERY_CORPUS[rng.random_range(0..QUERY_CORPUS.len())].to_string(),
                        dialect: "postgres".into(),
                        duration: Some(prost_types::Duration {
                            seconds: 0,
                            nanos: rng.random_range(100_000..50_000_000),
                        }),
                        rows: rng.random_range(0..100),
                        service: "bench".into(),
                        ..Default::default()
                    })
                    .collect();
                self.query.record(pb::RecordRequest { executions }).await?;
                Ok(batch as u64)
            }
            ScenarioName::Ingest => {
                let start = now_nanos();
                let spans = (0..batch)
                    .map(|i| {
                        let (trace_id, span_id) = Self::span_ids(rng);
                        pb::Span {
                            trace_id,
                            span_id,
                            service: "bench".into(),
                            name: format!("GET /items/{}", i % 20),
                            kind: pb::SpanKind::Server as i32,
                            start: Some(timestamp(start)),
                            end: Some(timestamp(start + 1_000_000)),
                            attributes: (0..self.args.span_attributes)
                                .map(|a| (format!("attr.{a}"), format!("value-{a}")))
                                .collect(),
                            ..Default::default()
                        }
                    })
                    .collect();
                self.traces.ingest(pb::IngestRequest { spans }).await?;
                Ok(batch as u64)
            }
            ScenarioName::OtlpExport => {
                let start = now_nanos();
                let spans = (0..batch)
                    .map(|i| {
                        let (trace_id, span_id) = Self::span_ids(rng);
                        OtlpSpan {
                            trace_id,
                            span_id,
                            name: format!("GET /items/{}", i % 20),
                            kind: 2,
                            start_time_unix_nano: start,
                            end_time_unix_nano: start + 1_000_000,
                            attributes: (0..self.args.span_attributes)
                                .map(|a| attr(&format!("attr.{a}"), format!("value-{a}")))
                                .collect(),
                            ..Default::default()
                        }
                    })
                    .collect();
                let request = ExportTraceServiceRequest {
                    resource_spans: vec![ResourceSpans {
                        resource: Some(Resource {
                            attributes: vec![attr("service.name", "bench".into())],
                            ..Default::default()
                        }),
                        scope_spans: vec![ScopeSpans {
                            spans,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                };
                self.otlp.export(request).await?;
                Ok(batch as u64)
            }
            ScenarioName::Lease => {
                let lease = self
                    .leases
                    .acquire(pb::AcquireLeaseRequest {
                        pool: self.args.name.clone(),
                        holder: self.keys.key(rng),
                        count: 1,
                        ttl: Some(prost_types::Duration {
                            seconds: 30,
                            nanos: 0,
                        }),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                if lease.granted {
                    self.leases
                        .release(pb::ReleaseLeaseRequest {
                            lease_id: lease.lease_id,
                        })
                        .await?;
                }
                Ok(1)
            }
            ScenarioName::Throttlecrab => {
                let key = self.keys.key(rng);
                self.throttle
                    .throttle(throttlecrab::ThrottleRequest {
                        key,
                        max_burst: self.args.bucket_burst,
                        count_per_period: self.args.bucket_rate,
                        period: self.args.bucket_period_secs,
                        quantity: 1,
                    })
                    .await?;
                Ok(1)
            }
        }
    }
}

/// How long a duration is in whole microseconds, at least 1 (for the histogram).
pub fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}
