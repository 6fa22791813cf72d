//! Fuzzing on stable Rust: random bytes and structured random input (via
//! proptest) for every decoder that reads untrusted bytes — the direct-call
//! decoders (which must also answer exactly as the service path does), the
//! SQL lexer and fingerprint, OTLP conversion, and the configuration loader.
//! Each target runs for `GANTRY_FUZZ_SECONDS` (2 by default; `.ci/run` gives
//! each 20). A finding becomes a regression test beside the code it broke.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use gantry::config::{
    Config, EnvoyDescriptorConfig, EnvoyDomainConfig, EnvoyEntryConfig, FlagOverrides,
    HumanDuration, LimitConfig, LimitScopeConfig, RateLimitConfig,
};
use gantry::proto::gantry::v1 as pb;
use gantry::proto::gantry::v1::rate_limiter_server::RateLimiter as _;
use gantry::query::analyze::analyze;
use gantry::query::dialect::Dialect;
use gantry::query::fingerprint::fingerprint;
use gantry::query::rules::RuleSettings;
use gantry::ratelimit::RateLimiter;
use gantry::ratelimit::envoy::{DirectShouldRateLimit, EnvoyRateLimitService};
use gantry::ratelimit::metrics::RateLimitMetrics;
use gantry::ratelimit::service::{DirectAcquire, DirectAcquireBatch, RateLimiterService};
use gantry::routes::{Answer, DirectUnary};
use gantry::traces::convert::from_otlp;
use gantry::traces::span::SpanLimits;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};
use proptest::prelude::*;
use proptest::test_runner::{
    Config as RunnerConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner,
};
use prost::Message;

/// How long each target runs.
fn budget() -> Duration {
    let seconds = std::env::var("GANTRY_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(seconds)
}

/// Runs `check` on values of `strategy` until the budget is spent (at least
/// one round of 64 cases); a failure is shrunk and reported by proptest.
fn fuzz<S>(name: &str, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let started = Instant::now();
    let deadline = started + budget();
    // A runner stops after `cases` successes: a fresh one, with a fresh
    // seed, each round.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut cases = 0u64;
    for round in 0u128.. {
        let mut seed = [0u8; 32];
        seed[..16].copy_from_slice(&base.wrapping_add(round).to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
        let config = RunnerConfig {
            cases: 64,
            failure_persistence: None,
            ..RunnerConfig::default()
        };
        let mut runner = TestRunner::new_with_rng(config, rng);
        if let Err(e) = runner.run(&strategy, &check) {
            panic!("fuzz target {name} failed after {cases} cases (round seed {seed:?}): {e}");
        }
        cases += 64;
        if Instant::now() >= deadline {
            break;
        }
    }
    eprintln!(
        "fuzz target {name}: {cases} cases in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Text that looks like what a hostile or careless client sends: ASCII,
/// control characters, U+001E, quotes, multi-byte characters.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => proptest::char::range('a', 'z'),
            1 => proptest::char::range('\u{0}', '\u{1f}'),
            1 => Just('\u{1e}'),
            1 => prop_oneof![Just('\''), Just('"'), Just('$'), Just('\\'), Just('/'), Just('*')],
            1 => any::<char>(),
        ],
        0..max,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn limiter() -> RateLimiter {
    let config = RateLimitConfig {
        max_key_bytes: 24,
        max_batch: 8,
        limits: vec![LimitConfig {
            name: "api".into(),
            rate: 1,
            period: HumanDuration::from_secs(3600),
            burst: Some(50),
            scope: LimitScopeConfig::PerKey,
            overrides: vec![],
        }],
        envoy: vec![EnvoyDomainConfig {
            domain: "edge".into(),
            descriptors: vec![EnvoyDescriptorConfig {
                entries: vec![EnvoyEntryConfig {
                    key: "generic_key".into(),
                    value: None,
                }],
                limit: Some("api".into()),
                ..Default::default()
            }],
        }],
        ..RateLimitConfig::default()
    };
    RateLimiter::new(&config, RateLimitMetrics::default())
}

fn acquire_request() -> impl Strategy<Value = pb::AcquireRequest> {
    (
        prop_oneof![
            Just("api".to_string()),
            Just(String::new()),
            text(8),
            Just("x".repeat(300))
        ],
        text(30),
        prop_oneof![0..60u64, any::<u64>()],
        any::<bool>(),
        text(30),
    )
        .prop_map(|(limit, key, tokens, dry_run, client)| pb::AcquireRequest {
            limit,
            key,
            tokens,
            dry_run,
            client,
            ..Default::default()
        })
}

/// An answer of the embedded store, always ready at once.
fn ready(answer: Answer) -> Result<Bytes, tonic::Status> {
    match answer {
        Answer::Now(answer) => answer,
        Answer::Later(_) => panic!("an embedded direct answer waited"),
    }
}

/// What a direct answer means, to compare with the service path's: the
/// status, or the response's fields that do not depend on the clock.
fn direct_outcome<M: Message + Default>(
    answer: Option<Answer>,
) -> Option<Result<M, (tonic::Code, String)>> {
    answer.map(|a| match ready(a) {
        Ok(framed) => Ok(M::decode(&framed[5..]).expect("a direct answer decodes")),
        Err(s) => Err((s.code(), s.message().to_string())),
    })
}

fn status_of<M>(r: Result<tonic::Response<M>, tonic::Status>) -> Result<M, (tonic::Code, String)> {
    r.map(tonic::Response::into_inner)
        .map_err(|s| (s.code(), s.message().to_string()))
}

fn same_acquire(a: &pb::AcquireResponse, b: &pb::AcquireResponse) -> bool {
    (a.allowed, a.remaining, a.limit) == (b.allowed, b.remaining, b.limit)
}

#[test]
fn direct_acquire_answers_as_the_service_path() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (direct_limiter, service_limiter) = (limiter(), limiter());
    let direct = DirectAcquire::new(direct_limiter);
    let service = RateLimiterService::new(service_limiter, None);
    fuzz("direct Acquire", acquire_request(), |request| {
        let bytes = request.encode_to_vec();
        let Some(direct) = direct_outcome::<pb::AcquireResponse>(
            direct.answer(&bytes, &mut || Ok(gantry::auth::Caller::anyone())),
        ) else {
            return Ok(()); // served the long way: nothing to compare
        };
        let served = status_of(runtime.block_on(service.acquire(as_any_caller(request))));
        match (&direct, &served) {
            (Ok(a), Ok(b)) => prop_assert!(same_acquire(a, b), "{a:?} vs {b:?}"),
            _ => prop_assert_eq!(direct.err(), served.err()),
        }
        Ok(())
    });
}

#[test]
fn direct_acquire_batch_answers_as_the_service_path() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (direct_limiter, service_limiter) = (limiter(), limiter());
    let direct = DirectAcquireBatch::new(direct_limiter, 1 << 20);
    let service = RateLimiterService::new(service_limiter, None);
    let batch = (
        prop::collection::vec(acquire_request(), 0..10),
        any::<bool>(),
    )
        .prop_map(|(requests, all_or_nothing)| pb::AcquireBatchRequest {
            requests,
            all_or_nothing,
        });
    fuzz("direct AcquireBatch", batch, |request| {
        let bytes = request.encode_to_vec();
        let Some(direct) = direct_outcome::<pb::AcquireBatchResponse>(
            direct.answer(&bytes, &mut || Ok(gantry::auth::Caller::anyone())),
        ) else {
            return Ok(());
        };
        let served = status_of(runtime.block_on(service.acquire_batch(as_any_caller(request))));
        match (&direct, &served) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(a.responses.len(), b.responses.len());
                for (x, y) in a.responses.iter().zip(&b.responses) {
                    prop_assert!(same_acquire(x, y), "{x:?} vs {y:?}");
                }
            }
            _ => prop_assert_eq!(direct.err(), served.err()),
        }
        Ok(())
    });
}

#[test]
fn direct_should_rate_limit_answers_as_the_service_path() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (direct_limiter, service_limiter) = (limiter(), limiter());
    let direct = DirectShouldRateLimit::new(direct_limiter, 1 << 20);
    let service = EnvoyRateLimitService::new(service_limiter);
    let entry = (
        prop_oneof![Just("generic_key".to_string()), text(10)],
        text(20),
    )
        .prop_map(|(key, value)| Entry { key, value });
    let descriptor = (prop::collection::vec(entry, 0..3), any::<bool>()).prop_map(
        |(entries, is_negative_hits)| RateLimitDescriptor {
            entries,
            is_negative_hits,
            ..Default::default()
        },
    );
    let request = (
        prop_oneof![Just("edge".to_string()), Just(String::new()), text(10)],
        prop::collection::vec(descriptor, 0..4),
        prop_oneof![0..5u32, any::<u32>()],
    )
        .prop_map(|(domain, descriptors, hits_addend)| RateLimitRequest {
            domain,
            descriptors,
            hits_addend,
        });
    fuzz("direct ShouldRateLimit", request, |request| {
        let bytes = request.encode_to_vec();
        let Some(direct) =
            direct_outcome::<envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse>(
                direct.answer(&bytes, &mut || Ok(gantry::auth::Caller::anyone())),
            )
        else {
            return Ok(());
        };
        let served = status_of(runtime.block_on(service.should_rate_limit(as_any_caller(request))));
        match (&direct, &served) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(a.overall_code, b.overall_code);
                let codes =
                    |r: &envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse| {
                        r.statuses
                            .iter()
                            .map(|s| (s.code, s.limit_remaining))
                            .collect::<Vec<_>>()
                    };
                prop_assert_eq!(codes(a), codes(b));
            }
            _ => prop_assert_eq!(direct.err(), served.err()),
        }
        Ok(())
    });
}

#[test]
fn direct_decoders_survive_random_bytes() {
    let limiter = limiter();
    let handlers: Vec<Box<dyn DirectUnary>> = vec![
        Box::new(DirectAcquire::new(limiter.clone())),
        Box::new(DirectAcquireBatch::new(limiter.clone(), 1 << 20)),
        Box::new(DirectShouldRateLimit::new(limiter, 1 << 20)),
    ];
    let cache_dir = tempfile::tempdir().unwrap();
    let handlers: Vec<std::sync::Arc<dyn DirectUnary>> = handlers
        .into_iter()
        .map(std::sync::Arc::from)
        .chain(
            gantry::cache::direct::handlers(cache_service(cache_dir.path()), 1 << 20)
                .map(|(_, handler)| handler),
        )
        .collect();
    fuzz(
        "direct decoders, random bytes",
        prop::collection::vec(any::<u8>(), 0..256),
        |bytes| {
            for handler in &handlers {
                if let Some(Ok(framed)) = handler
                    .answer(&bytes, &mut || Ok(gantry::auth::Caller::anyone()))
                    .map(ready)
                {
                    prop_assert!(framed.len() >= 5);
                }
            }
            Ok(())
        },
    );
}

/// SQL-shaped token soup: keywords, identifiers, literals of every quoting,
/// comments (closed or not), parameters, operators, stray bytes.
fn sql() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "SELECT",
            "FROM",
            "WHERE",
            "IN",
            "(",
            ")",
            ",",
            "=",
            "?",
            "$1",
            ":name",
            "@v",
            "'a''b'",
            "E'\\x'",
            "$$body$$",
            "$tag$",
            "\"quoted\"",
            "`tick`",
            "[br]",
            "--",
            "/*",
            "*/",
            "#",
            "0x1F",
            "1e-5",
            "-",
            "+",
            "::",
            "ARRAY[",
            "]",
            "VALUES",
            "UNION",
            "ALL",
            "LIMIT",
            "OFFSET",
            "JOIN",
            "ON",
            "GROUP BY",
            "ORDER BY",
            ";",
            "\\",
            "\n",
            "NULL",
            "TRUE",
        ])
        .prop_map(str::to_string),
        text(6),
        any::<u64>().prop_map(|n| n.to_string()),
    ];
    prop::collection::vec(token, 0..60).prop_map(|tokens| tokens.join(" "))
}

#[test]
fn sql_lexer_fingerprint_and_rules_never_panic() {
    let settings = RuleSettings::default();
    let dialects = [
        Dialect::Generic,
        Dialect::Postgres,
        Dialect::Mysql,
        Dialect::Sqlite,
    ];
    fuzz(
        "SQL lexer, fingerprint and rules",
        prop_oneof![sql(), any::<String>()],
        |sql| {
            for dialect in dialects {
                let first = fingerprint(&sql, dialect);
                let again = fingerprint(&sql, dialect);
                prop_assert_eq!(first.fingerprint, again.fingerprint, "deterministic");
                let _ = analyze(&sql, dialect, &settings);
            }
            Ok(())
        },
    );
}

fn otlp_span() -> impl Strategy<Value = OtlpSpan> {
    let attribute = (
        text(12),
        prop_oneof![
            text(40).prop_map(any_value::Value::StringValue),
            any::<i64>().prop_map(any_value::Value::IntValue)
        ],
    )
        .prop_map(|(key, value)| KeyValue {
            key,
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        });
    (
        prop::collection::vec(any::<u8>(), 0..20),
        prop::collection::vec(any::<u8>(), 0..10),
        prop::collection::vec(any::<u8>(), 0..10),
        text(40),
        any::<i32>(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(attribute, 0..6),
    )
        .prop_map(
            |(trace_id, span_id, parent_span_id, name, kind, start, end, attributes)| OtlpSpan {
                trace_id,
                span_id,
                parent_span_id,
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                ..Default::default()
            },
        )
}

/// A remembered Analyze answered from its bytes equals the service path's
/// answer, for SQL-shaped text in every dialect (and refusals are left to
/// the service path).
#[test]
fn direct_analyze_answers_as_the_service_path() {
    use gantry::proto::gantry::v1::query_analyzer_server::QueryAnalyzer as _;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = gantry::store::open(&gantry::config::StorageConfig {
        data_dir: dir.path().join("data"),
        ..Default::default()
    })
    .unwrap();
    let config = gantry::config::QueryConfig::default();
    let metrics = gantry::query::metrics::QueryMetrics::register(
        &mut prometheus_client::registry::Registry::default(),
    );
    let engine = gantry::query::QueryEngine::new(&config, store, metrics);
    let service = gantry::query::service::QueryService::new(engine.clone(), &config);
    let direct = gantry::query::service::DirectAnalyze::new(engine, &config, 1 << 20);
    let request = (
        prop_oneof![sql(), any::<String>()],
        prop::sample::select(vec!["postgres", "mysql", "sqlite", "generic", "", "oracle"]),
    )
        .prop_map(|(sql, dialect)| pb::AnalyzeRequest {
            sql,
            dialect: dialect.to_string(),
        });
    fuzz("direct Analyze", request, |request| {
        let bytes = request.encode_to_vec();
        let served = status_of(runtime.block_on(service.analyze(tonic::Request::new(request))));
        match direct_outcome::<pb::AnalyzeResponse>(
            direct.answer(&bytes, &mut || Ok(gantry::auth::Caller::anyone())),
        ) {
            // Remembered now: the same answer, to the byte.
            Some(Ok(answer)) => prop_assert_eq!(Ok(answer), served),
            Some(Err(status)) => prop_assert!(false, "a direct refusal: {status:?}"),
            // Declined: only what the service path refused (or could not remember).
            None => prop_assert!(served.is_err(), "a valid text was not remembered"),
        }
        Ok(())
    });
}

#[test]
fn otlp_conversion_never_panics() {
    let limits = SpanLimits {
        max_name_bytes: 32,
        max_attributes: 4,
        max_attribute_bytes: 64,
    };
    let structured = prop::collection::vec(otlp_span(), 0..8).prop_map(|spans| {
        vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }]
    });
    fuzz(
        "OTLP conversion, structured",
        structured,
        |resource_spans| {
            let count: usize = resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            let converted = from_otlp(resource_spans, &limits);
            prop_assert_eq!(converted.spans.len() + converted.rejected.len(), count);
            Ok(())
        },
    );
    fuzz(
        "OTLP conversion, random bytes",
        prop::collection::vec(any::<u8>(), 0..512),
        |bytes| {
            if let Ok(request) = ExportTraceServiceRequest::decode(bytes.as_slice()) {
                let _ = from_otlp(request.resource_spans, &limits);
            }
            Ok(())
        },
    );
}

#[test]
fn the_config_loader_never_panics() {
    let keys: Vec<String> = Config::documented_keys()
        .into_iter()
        .map(|(key, _, _)| key)
        .collect();
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        text(12).prop_map(|s| format!("{s:?}")),
        prop::sample::select(vec![
            "true",
            "\"1s\"",
            "\"0s\"",
            "\"-1s\"",
            "\"9999999999999h\"",
            "[]",
            "{}",
            "1.5",
            "\"127.0.0.1:0\"",
            "\"\"",
            "[[",
            "\"redis://x\"",
        ])
        .prop_map(str::to_string),
    ];
    let line =
        (prop::sample::select(keys.clone()), value.clone()).prop_map(|(key, value)| {
            match key.rsplit_once('.') {
                Some((section, name)) => format!("[{section}]\n{name} = {value}\n"),
                None => format!("{key} = {value}\n"),
            }
        });
    let file = prop::collection::vec(prop_oneof![4 => line, 1 => text(20)], 0..8)
        .prop_map(|lines| lines.concat());
    let env = prop::collection::vec((prop::sample::select(keys), value), 0..3).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(key, value)| {
                let name = format!("GANTRY_{}", key.replace('.', "_").to_uppercase());
                (name, value.trim_matches('"').to_string())
            })
            .collect::<BTreeMap<_, _>>()
    });
    fuzz("config loader", (file, env), |(text, env)| {
        let _ = Config::load(
            Some((Path::new("fuzz.toml"), &text)),
            &env,
            &FlagOverrides::default(),
        );
        Ok(())
    });
}

/// A service-path request as the per-call layer passes it with `[auth]` off.
fn as_any_caller<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .extensions_mut()
        .insert(gantry::auth::Caller::anyone());
    request
}

/// One cache call of a random sequence.
#[derive(Debug, Clone)]
enum CacheCall {
    Get(pb::GetRequest),
    Put(pb::PutRequest),
    Delete(pb::DeleteRequest),
}

fn cache_call() -> impl Strategy<Value = CacheCall> {
    // Few names, so calls meet each other's entries; a few bad ones.
    let namespace = prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(str::to_string),
        1 => text(6),
    ];
    let key = prop_oneof![
        4 => prop::sample::select(vec!["k1", "k2", "k3"]).prop_map(str::to_string),
        1 => text(12),
    ];
    let ttl = prop_oneof![
        2 => Just(None),
        1 => (-2i64..100_000, -2i32..1_000_000_001)
            .prop_map(|(seconds, nanos)| Some(prost_types::Duration { seconds, nanos })),
    ];
    let condition = prop_oneof![
        2 => Just(None),
        1 => any::<bool>().prop_map(|b| Some(pb::put_request::Condition::IfAbsent(b))),
        1 => (0u64..12).prop_map(|v| Some(pb::put_request::Condition::IfVersion(v))),
    ];
    let value = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80),
        (0usize..300).prop_map(|n| b"{\"plan\":\"pro\"}".repeat(n / 14 + 1)),
    ];
    prop_oneof![
        (namespace.clone(), key.clone())
            .prop_map(|(namespace, key)| CacheCall::Get(pb::GetRequest { namespace, key })),
        (namespace.clone(), key.clone(), value, ttl, condition).prop_map(
            |(namespace, key, value, ttl, condition)| CacheCall::Put(pb::PutRequest {
                namespace,
                key,
                value: value.into(),
                ttl,
                condition,
            })
        ),
        (namespace, key, prop::option::of(0u64..12)).prop_map(|(namespace, key, if_version)| {
            CacheCall::Delete(pb::DeleteRequest {
                namespace,
                key,
                if_version,
            })
        }),
    ]
}

/// A cache over a sled directory of its own, with small limits so random
/// calls meet them.
fn cache_service(dir: &Path) -> std::sync::Arc<gantry::cache::service::CacheService> {
    let store = gantry::store::open(&gantry::config::StorageConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    let config = gantry::config::CacheConfig {
        max_namespaces: 3,
        max_key_bytes: 8,
        max_value_bytes: 2_000,
        compress_min_bytes: 64,
        ..Default::default()
    };
    let engine = gantry::cache::CacheEngine::open(&config, store).unwrap();
    std::sync::Arc::new(gantry::cache::service::CacheService::new(engine, None))
}

/// Get, Put and Delete answered from their bytes leave the cache exactly as
/// the service path does, call after call: the same answers (values,
/// versions, whether a TTL runs), the same refusals.
#[test]
fn direct_cache_calls_answer_as_the_service_path() {
    use gantry::proto::gantry::v1::cache_server::Cache as _;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (left, right) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let service = cache_service(left.path());
    let [get, put, delete] =
        gantry::cache::direct::handlers(cache_service(right.path()), 1 << 20).map(|(_, h)| h);
    let _entered = runtime.enter();
    fuzz("direct cache calls", cache_call(), |call| {
        let (handler, bytes) = match &call {
            CacheCall::Get(r) => (&get, r.encode_to_vec()),
            CacheCall::Put(r) => (&put, r.encode_to_vec()),
            CacheCall::Delete(r) => (&delete, r.encode_to_vec()),
        };
        let answer = handler.answer(&bytes, &mut || Ok(gantry::auth::Caller::anyone()));
        let Some(answer) = answer else {
            return Err(TestCaseError::fail("a valid message was declined"));
        };
        let direct = ready(answer).map_err(|s| (s.code(), s.message().to_string()));
        let (direct, served) = match call {
            CacheCall::Get(r) => {
                let served = status_of(runtime.block_on(service.get(as_any_caller(r))));
                let unclocked = |mut g: pb::GetResponse| {
                    // The time left depends on the clock; whether it runs does not.
                    g.ttl_remaining = g.ttl_remaining.map(|_| Default::default());
                    g
                };
                let direct = direct.map(|f| unclocked(pb::GetResponse::decode(&f[5..]).unwrap()));
                (
                    format!("{direct:?}"),
                    format!("{:?}", served.map(unclocked)),
                )
            }
            CacheCall::Put(r) => {
                let served = status_of(runtime.block_on(service.put(as_any_caller(r))));
                let direct = direct.map(|f| pb::PutResponse::decode(&f[5..]).unwrap());
                (format!("{direct:?}"), format!("{served:?}"))
            }
            CacheCall::Delete(r) => {
                let served = status_of(runtime.block_on(service.delete(as_any_caller(r))));
                let direct = direct.map(|f| pb::DeleteResponse::decode(&f[5..]).unwrap());
                (format!("{direct:?}"), format!("{served:?}"))
            }
        };
        prop_assert_eq!(direct, served);
        Ok(())
    });
}
