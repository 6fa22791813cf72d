//! Resident memory of one million live (non-full) buckets with 16-byte keys.
//! Run: `cargo bench --bench bucket_memory` (prints, asserts nothing timed).

use std::time::Duration;

use gantry::config::{HumanDuration, LimitConfig, LimitScopeConfig, RateLimitConfig};
use gantry::ratelimit::metrics::RateLimitMetrics;
use gantry::ratelimit::{AcquireRequest, RateLimiter};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    // `cargo bench` passes --bench; any other invocation (cargo test --benches) is a no-op.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let buckets: usize = std::env::var("BUCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let config = RateLimitConfig {
        max_buckets: buckets as u64 + 1,
        limits: vec![LimitConfig {
            name: "api".into(),
            rate: 1,
            period: HumanDuration(Duration::from_secs(3600)),
            burst: Some(100),
            scope: LimitScopeConfig::PerKey,
            overrides: vec![],
        }],
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let before = rss_bytes();
    let rl = RateLimiter::new(&config, RateLimitMetrics::default());
    for i in 0..buckets {
        let key = format!("k-{i:014}");
        let o = rl
            .try_acquire(&AcquireRequest {
                limit: "api",
                key: &key,
                tokens: 1,
                ..Default::default()
            })
            .expect("acquire");
        assert!(o.allowed);
    }
    assert_eq!(rl.bucket_count(), buckets);
    let after = rss_bytes();
    let delta = after.saturating_sub(before);
    println!(
        "bucket_memory: {buckets} live buckets, 16-byte keys: {:.1} MB resident ({:.0} bytes per bucket); process RSS {:.1} MB",
        delta as f64 / 1e6,
        delta as f64 / buckets as f64,
        after as f64 / 1e6
    );
}
