//! Rate-limit hot paths in process: one GCRA decision, one decision on an
//! existing bucket through the limiter (hash, shard lock, arithmetic), a
//! denial on a spent bucket, and a batch of 100. Run: `cargo bench --bench ratelimit`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gantry::config::{HumanDuration, LimitConfig, LimitScopeConfig, RateLimitConfig};
use gantry::ratelimit::gcra::{BucketState, Params};
use gantry::ratelimit::metrics::RateLimitMetrics;
use gantry::ratelimit::{AcquireRequest, RateLimiter};

fn limiter() -> RateLimiter {
    limiter_of(1_000_000_000, Duration::from_secs(1))
}

fn limiter_of(rate: u64, period: Duration) -> RateLimiter {
    let config = RateLimitConfig {
        limits: vec![LimitConfig {
            name: "bench".into(),
            rate,
            period: HumanDuration(period),
            burst: Some(rate),
            scope: LimitScopeConfig::PerKey,
            overrides: vec![],
        }],
        ..Default::default()
    };
    RateLimiter::new(&config, RateLimitMetrics::default())
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k-{i:014}")).collect()
}

fn acquire_one(key: &str) -> AcquireRequest<'_> {
    AcquireRequest {
        limit: "bench",
        key,
        tokens: 1,
        ..Default::default()
    }
}

/// One token from every key's bucket, so each bucket exists.
fn one_each(rl: &RateLimiter, keys: &[String]) {
    for key in keys {
        let _ = rl.try_acquire(&acquire_one(key));
    }
}

/// One decision per iteration, the keys taken in turn.
fn bench_each_key(c: &mut Criterion, name: &str, rl: &RateLimiter, keys: &[String]) {
    let mut i = 0usize;
    c.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(rl.try_acquire(&acquire_one(&keys[i])))
        })
    });
}

fn benches(c: &mut Criterion) {
    let params = Params {
        rate: 1_000_000,
        period_ns: 1_000_000_000,
        burst: 1_000_000,
    };
    let mut state = BucketState::default();
    let mut now = 0u64;
    c.bench_function("gcra_decide", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(state.decide(&params, black_box(now), 1, true))
        })
    });

    let rl = limiter();
    let keys = keys(10_000);
    one_each(&rl, &keys);
    bench_each_key(c, "try_acquire_existing_bucket", &rl, &keys);

    // Every key spent (one token an hour): each call is a denial, over
    // 10,000 keys — more than the denied-keys tally holds, its worst case.
    let spent = limiter_of(1, Duration::from_secs(3600));
    one_each(&spent, &keys);
    bench_each_key(c, "try_acquire_denied_10k_keys", &spent, &keys);

    let mut group = c.benchmark_group("acquire_batch");
    group.throughput(Throughput::Elements(100));
    for (name, all_or_nothing) in [("100_items", false), ("100_items_all_or_nothing", true)] {
        let mut start = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                start = (start + 100) % (keys.len() - 100);
                let batch: Vec<AcquireRequest<'_>> = keys[start..start + 100]
                    .iter()
                    .map(|key| acquire_one(key))
                    .collect();
                black_box(rl.acquire_batch(&batch, all_or_nothing))
            })
        });
    }
    group.finish();
}

criterion_group!(ratelimit, benches);
criterion_main!(ratelimit);
