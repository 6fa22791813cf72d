//! The limiter without gRPC: decisions, waiting (on tokio's paused clock, so
//! waits are exact and instant), batches, bounds, reload and snapshots.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::{
    HumanDuration, LimitConfig, LimitOverrideConfig, LimitScopeConfig, RateLimitConfig,
};
use crate::ratelimit::metrics::RateLimitMetrics;

const MS: Duration = Duration::from_millis(1);

fn limit(name: &str, rate: u64, period_ms: u64, burst: u64) -> LimitConfig {
    LimitConfig {
        name: name.into(),
        rate,
        period: HumanDuration::from_millis(period_ms),
        burst: Some(burst),
        scope: LimitScopeConfig::PerKey,
        overrides: vec![],
    }
}

fn limiter_with(
    limits: Vec<LimitConfig>,
    adjust: impl FnOnce(&mut RateLimitConfig),
) -> RateLimiter {
    let mut config = RateLimitConfig {
        limits,
        ..Default::default()
    };
    adjust(&mut config);
    RateLimiter::new(&config, RateLimitMetrics::default())
}

fn limiter(limits: Vec<LimitConfig>) -> RateLimiter {
    limiter_with(limits, |_| {})
}

/// Takes `tokens` from `limit`/`key` now.
fn take(rl: &RateLimiter, limit: &str, key: &str, tokens: u64) -> Outcome {
    rl.try_acquire(&AcquireRequest {
        tokens,
        ..req(limit, key)
    })
    .unwrap()
}

/// What `limit`/`key` would answer now, consuming nothing.
fn peek(rl: &RateLimiter, limit: &str, key: &str) -> Outcome {
    rl.try_acquire(&AcquireRequest {
        dry_run: true,
        ..req(limit, key)
    })
    .unwrap()
}

/// Starts a caller that waits up to `max_wait` for `tokens` from `limit`/"k".
fn spawn_waiter(
    rl: &RateLimiter,
    limit: &'static str,
    tokens: u64,
    max_wait: Duration,
) -> tokio::task::JoinHandle<Result<Outcome, RateLimitError>> {
    let rl = rl.clone();
    tokio::spawn(async move {
        rl.acquire(&AcquireRequest {
            tokens,
            max_wait,
            ..req(limit, "k")
        })
        .await
    })
}

/// tokio's timers tick in whole milliseconds: a grant may land up to 1 ms
/// after the exact instant its tokens accrue.
#[track_caller]
fn assert_on_time(actual: Duration, expected: Duration) {
    assert!(
        actual >= expected && actual <= expected + MS,
        "waited {actual:?}, expected {expected:?} (+1 ms timer tick)"
    );
}

fn req<'a>(limit: &'a str, key: &'a str) -> AcquireRequest<'a> {
    AcquireRequest {
        limit,
        key,
        tokens: 1,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn burst_then_exact_retry_after() {
    let rl = limiter(vec![limit("api", 10, 1000, 5)]);
    for left in (0..5).rev() {
        let o = rl.try_acquire(&req("api", "alice")).unwrap();
        assert!(o.allowed);
        assert_eq!(o.remaining, left);
        assert_eq!(o.limit, 5);
    }
    let o = rl.try_acquire(&req("api", "alice")).unwrap();
    assert!(!o.allowed);
    assert_eq!(o.retry_after, 100 * MS);
    assert_eq!(o.reset_after, 500 * MS);
    // Another key has its own bucket.
    assert!(rl.try_acquire(&req("api", "bob")).unwrap().allowed);
    tokio::time::advance(100 * MS).await;
    assert!(rl.try_acquire(&req("api", "alice")).unwrap().allowed);
}

#[tokio::test]
async fn errors_name_the_field_and_value() {
    let rl = limiter_with(vec![limit("api", 10, 1000, 5)], |c| c.max_key_bytes = 8);
    assert_eq!(
        rl.try_acquire(&req("nope", "k")).unwrap_err(),
        RateLimitError::UnknownLimit("nope".into())
    );
    assert_eq!(
        rl.try_acquire(&req("api", "")).unwrap_err(),
        RateLimitError::Invalid(crate::error::FieldError::empty("key"))
    );
    let long = rl.try_acquire(&req("api", "123456789")).unwrap_err();
    assert!(long.to_string().contains("9 bytes"), "{long}");
    let too_many = rl
        .try_acquire(&AcquireRequest {
            tokens: 6,
            ..req("api", "k")
        })
        .unwrap_err();
    assert_eq!(
        too_many.to_string(),
        "tokens: 6 exceeds the burst of 5 of limit \"api\"; it could never be granted"
    );
    let api: crate::error::ApiError = too_many.into();
    assert_eq!(api.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn unknown_names_use_the_default_limit_when_configured() {
    let rl = limiter_with(vec![limit("fallback", 1, 1000, 1)], |c| {
        c.default_limit = "fallback".into()
    });
    assert!(rl.try_acquire(&req("anything", "k")).unwrap().allowed);
    assert!(
        !rl.try_acquire(&req("something-else", "k")).unwrap().allowed,
        "same default bucket"
    );
}

#[tokio::test]
async fn dry_run_consumes_nothing_and_creates_no_bucket() {
    let rl = limiter(vec![limit("api", 1, 1000, 2)]);
    for _ in 0..10 {
        let o = rl
            .try_acquire(&AcquireRequest {
                dry_run: true,
                tokens: 2,
                ..req("api", "k")
            })
            .unwrap();
        assert!(o.allowed);
        assert_eq!(o.remaining, 2);
    }
    assert_eq!(rl.bucket_count(), 0);
    assert!(take(&rl, "api", "k", 2).allowed);
}

#[tokio::test]
async fn shared_scope_is_one_bucket_for_every_key_and_overrides_apply_per_key() {
    let mut shared = limit("svc", 1, 1000, 3);
    shared.scope = LimitScopeConfig::Shared;
    let mut api = limit("api", 1, 1000, 1);
    api.overrides.push(LimitOverrideConfig {
        key: "vip".into(),
        rate: 10,
        period: None,
        burst: Some(10),
    });
    let rl = limiter(vec![shared, api]);
    assert!(rl.try_acquire(&req("svc", "a")).unwrap().allowed);
    assert!(rl.try_acquire(&req("svc", "b")).unwrap().allowed);
    assert!(rl.try_acquire(&req("svc", "c")).unwrap().allowed);
    assert!(!rl.try_acquire(&req("svc", "d")).unwrap().allowed);
    assert_eq!(rl.try_acquire(&req("api", "vip")).unwrap().limit, 10);
    assert_eq!(rl.try_acquire(&req("api", "pleb")).unwrap().limit, 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_granted_exactly_when_its_tokens_accrue() {
    let rl = limiter(vec![limit("api", 10, 1000, 1)]);
    assert!(rl.try_acquire(&req("api", "k")).unwrap().allowed);
    let start = tokio::time::Instant::now();
    let o = rl
        .acquire(&AcquireRequest {
            max_wait: Duration::from_secs(1),
            ..req("api", "k")
        })
        .await
        .unwrap();
    assert!(o.allowed);
    assert_on_time(o.waited, 100 * MS);
    assert_on_time(start.elapsed(), 100 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_wait_that_runs_out_is_a_denial_not_an_error() {
    let rl = limiter(vec![limit("api", 1, 1000, 1)]);
    assert!(rl.try_acquire(&req("api", "k")).unwrap().allowed);
    let o = rl
        .acquire(&AcquireRequest {
            max_wait: 300 * MS,
            ..req("api", "k")
        })
        .await
        .unwrap();
    assert!(!o.allowed);
    assert_on_time(o.waited, 300 * MS);
    assert_eq!(o.retry_after, 700 * MS);
    // The departed waiter does not hold the bucket: the token is still there at 1 s.
    tokio::time::advance(700 * MS).await;
    assert!(rl.try_acquire(&req("api", "k")).unwrap().allowed);
}

/// Spawns waiters in order and returns the order in which they were granted.
async fn grant_order(rl: &RateLimiter, waiters: &[(&'static str, u64)]) -> Vec<usize> {
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, (client, tokens)) in waiters.iter().copied().enumerate() {
        let rl = rl.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let o = rl
                .acquire(&AcquireRequest {
                    limit: "api",
                    key: "k",
                    tokens,
                    max_wait: Duration::from_secs(60),
                    client,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(o.allowed);
            order.lock().push(i);
        }));
        // Let each waiter reach the queue before the next one arrives.
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_micros(1)).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    order.lock().clone()
}

#[tokio::test(start_paused = true)]
async fn waiters_are_first_come_first_served() {
    let rl = limiter(vec![limit("api", 10, 1000, 1)]);
    assert!(rl.try_acquire(&req("api", "k")).unwrap().allowed);
    let order = grant_order(&rl, &[("", 1), ("", 1), ("", 1), ("", 1)]).await;
    assert_eq!(order, vec![0, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn grants_rotate_between_clients() {
    let rl = limiter(vec![limit("api", 10, 1000, 1)]);
    assert!(rl.try_acquire(&req("api", "k")).unwrap().allowed);
    let order = grant_order(
        &rl,
        &[
            ("greedy", 1),
            ("greedy", 1),
            ("greedy", 1),
            ("polite", 1),
            ("polite", 1),
        ],
    )
    .await;
    assert_eq!(order, vec![0, 3, 1, 4, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_large_head_is_not_overtaken_by_small_requests() {
    let rl = limiter(vec![limit("api", 10, 1000, 5)]);
    assert!(take(&rl, "api", "k", 5).allowed);
    let order = grant_order(&rl, &[("", 5), ("", 1), ("", 1)]).await;
    assert_eq!(order, vec![0, 1, 2]);
    // While someone waits, an immediate request is refused even if a token is free.
    let rl = limiter(vec![limit("api", 10, 1000, 5)]);
    assert!(take(&rl, "api", "k", 4).allowed);
    let waiting = spawn_waiter(&rl, "api", 5, Duration::from_secs(10));
    tokio::task::yield_now().await;
    let immediate = rl.try_acquire(&req("api", "k")).unwrap();
    assert!(
        !immediate.allowed,
        "one token is free, but it belongs to the head"
    );
    assert_eq!(
        immediate.retry_after,
        500 * MS,
        "behind the head's 4 missing tokens, then its own"
    );
    let head = waiting.await.unwrap().unwrap();
    assert!(head.allowed);
    assert_on_time(head.waited, 400 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_leaves_without_consuming() {
    let rl = limiter(vec![limit("api", 10, 1000, 2)]);
    assert!(take(&rl, "api", "k", 2).allowed);
    let big = spawn_waiter(&rl, "api", 2, Duration::from_secs(10));
    tokio::task::yield_now().await;
    tokio::time::advance(50 * MS).await;
    big.abort();
    let _ = big.await;
    // The small waiter behind it is now the head and gets its token at 100 ms.
    let small = rl
        .acquire(&AcquireRequest {
            max_wait: Duration::from_secs(10),
            ..req("api", "k")
        })
        .await
        .unwrap();
    assert!(small.allowed);
    assert_on_time(small.waited, 50 * MS);
    tokio::time::advance(100 * MS).await;
    // Nothing was taken by the cancelled waiter: 2 tokens at 200 ms minus the small one.
    let o = rl
        .try_acquire(&AcquireRequest {
            dry_run: true,
            ..req("api", "k")
        })
        .unwrap();
    assert_eq!(o.remaining, 1);
}

#[tokio::test(start_paused = true)]
async fn the_queue_is_bounded() {
    let rl = limiter_with(vec![limit("api", 1, 1000, 1)], |c| c.max_waiters = 2);
    assert!(rl.try_acquire(&req("api", "k")).unwrap().allowed);
    let mut waiting = Vec::new();
    for _ in 0..2 {
        waiting.push(spawn_waiter(&rl, "api", 1, Duration::from_secs(60)));
        tokio::task::yield_now().await;
    }
    let third = rl
        .acquire(&AcquireRequest {
            max_wait: Duration::from_secs(60),
            ..req("api", "k")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(third, RateLimitError::QueueFull { max: 2, .. }),
        "{third}"
    );
    for task in waiting {
        assert!(task.await.unwrap().unwrap().allowed);
    }
}

#[tokio::test]
async fn an_atomic_batch_consumes_everywhere_or_nowhere() {
    let rl = limiter(vec![limit("a", 1, 60_000, 5), limit("b", 1, 60_000, 1)]);
    assert!(rl.try_acquire(&req("b", "k")).unwrap().allowed); // b is now empty
    let batch = [
        AcquireRequest {
            tokens: 3,
            ..req("a", "k")
        },
        req("b", "k"),
    ];
    let out = rl.acquire_batch(&batch, true).unwrap();
    assert!(out.iter().all(|o| !o.allowed));
    assert_eq!(peek(&rl, "a", "k").remaining, 5);

    // The same bucket twice must hold the sum.
    let twice = [
        AcquireRequest {
            tokens: 3,
            ..req("a", "k")
        },
        AcquireRequest {
            tokens: 3,
            ..req("a", "k")
        },
    ];
    assert!(
        rl.acquire_batch(&twice, true)
            .unwrap()
            .iter()
            .all(|o| !o.allowed)
    );
    let fits = [
        AcquireRequest {
            tokens: 2,
            ..req("a", "k")
        },
        AcquireRequest {
            tokens: 3,
            ..req("a", "k")
        },
    ];
    let out = rl.acquire_batch(&fits, true).unwrap();
    assert!(out.iter().all(|o| o.allowed));
    assert_eq!(out[1].remaining, 0);

    // Without all_or_nothing each item stands alone.
    let rl = limiter(vec![limit("a", 1, 60_000, 2)]);
    let items = [req("a", "k"), req("a", "k"), req("a", "k")];
    let out: Vec<bool> = rl
        .acquire_batch(&items, false)
        .unwrap()
        .iter()
        .map(|o| o.allowed)
        .collect();
    assert_eq!(out, vec![true, true, false]);
}

#[tokio::test]
async fn an_invalid_batch_item_fails_the_call_before_anything_is_taken() {
    let rl = limiter_with(vec![limit("a", 1, 60_000, 2)], |c| c.max_batch = 3);
    let items = [req("a", "k"), req("a", "")];
    let err = rl.acquire_batch(&items, false).unwrap_err();
    assert_eq!(err.to_string(), "requests[1].key: must not be empty");
    assert_eq!(rl.bucket_count(), 0);
    let many = [req("a", "k"); 4];
    assert_eq!(
        rl.acquire_batch(&many, false).unwrap_err().to_string(),
        "requests: 4 requests exceed the batch limit of 3 (ratelimit.max_batch)"
    );
}

#[test]
fn concurrent_callers_get_exactly_what_the_bucket_holds() {
    let rl = limiter(vec![limit("api", 1, 3_600_000, 1000)]);
    let granted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..500 {
                    if rl.try_acquire(&req("api", "shared-key")).unwrap().allowed {
                        granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(granted.into_inner(), 1000);
}

#[test]
fn concurrent_atomic_batches_never_half_consume() {
    // Two buckets of 500; each batch takes one from both. Exactly 500 batches
    // succeed and both buckets end empty together.
    let rl = limiter(vec![
        limit("a", 1, 3_600_000, 500),
        limit("b", 1, 3_600_000, 500),
    ]);
    let granted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (rl, granted) = (&rl, &granted);
            scope.spawn(move || {
                for _ in 0..200 {
                    // Alternate the order so lock ordering is exercised.
                    let items = if t % 2 == 0 {
                        [req("a", "k"), req("b", "k")]
                    } else {
                        [req("b", "k"), req("a", "k")]
                    };
                    let out = rl.acquire_batch(&items, true).unwrap();
                    assert_eq!(out[0].allowed, out[1].allowed);
                    if out[0].allowed {
                        granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(granted.into_inner(), 500);
    assert!(!rl.try_acquire(&req("a", "k")).unwrap().allowed);
    assert!(!rl.try_acquire(&req("b", "k")).unwrap().allowed);
}

#[tokio::test(start_paused = true)]
async fn a_full_table_refuses_new_keys_instead_of_resetting_old_ones() {
    let rl = limiter_with(vec![limit("api", 10, 1000, 1)], |c| c.max_buckets = 2);
    assert!(rl.try_acquire(&req("api", "a")).unwrap().allowed);
    assert!(rl.try_acquire(&req("api", "b")).unwrap().allowed);
    let err = rl.try_acquire(&req("api", "c")).unwrap_err();
    assert!(
        matches!(err, RateLimitError::TableFull { max: 2, .. }),
        "{err}"
    );
    assert!(
        !rl.try_acquire(&req("api", "a")).unwrap().allowed,
        "a's spent token was not forgotten"
    );
    // Once a and b are full again they can be dropped, and c fits.
    tokio::time::advance(100 * MS).await;
    assert_eq!(rl.sweep(), 2);
    assert!(rl.try_acquire(&req("api", "c")).unwrap().allowed);
}

#[tokio::test(start_paused = true)]
async fn sweep_drops_only_full_buckets() {
    let rl = limiter(vec![limit("api", 10, 1000, 10)]);
    assert!(rl.try_acquire(&req("api", "a")).unwrap().allowed);
    assert!(take(&rl, "api", "b", 10).allowed);
    tokio::time::advance(100 * MS).await; // a is full again, b is not
    assert_eq!(rl.sweep(), 1);
    assert_eq!(rl.bucket_count(), 1);
    assert_eq!(peek(&rl, "api", "b").remaining, 1);
}

#[tokio::test(start_paused = true)]
async fn reload_keeps_levels_and_drops_removed_limits() {
    let rl = limiter(vec![limit("api", 10, 1000, 10), limit("old", 1, 1000, 1)]);
    assert!(take(&rl, "api", "k", 7).allowed);
    assert!(rl.try_acquire(&req("old", "k")).unwrap().allowed);
    let waiter = spawn_waiter(&rl, "old", 1, Duration::from_secs(60));
    tokio::task::yield_now().await;

    rl.reload(&RateLimitConfig {
        limits: vec![limit("api", 100, 1000, 100), limit("new", 1, 1000, 1)],
        ..Default::default()
    });
    let o = rl
        .try_acquire(&AcquireRequest {
            dry_run: true,
            ..req("api", "k")
        })
        .unwrap();
    assert_eq!(
        (o.remaining, o.limit),
        (3, 100),
        "the level is kept; the burst is new"
    );
    assert_eq!(
        rl.try_acquire(&req("old", "k")).unwrap_err(),
        RateLimitError::UnknownLimit("old".into())
    );
    let answered = waiter.await.unwrap().unwrap();
    assert!(
        !answered.allowed,
        "a waiter on a removed limit is answered, not left hanging"
    );
    assert!(rl.try_acquire(&req("new", "k")).unwrap().allowed);
    assert_eq!(rl.bucket_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn snapshot_and_restore_count_downtime_as_refill() {
    let rl = limiter(vec![limit("api", 10, 1000, 10)]);
    assert!(take(&rl, "api", "a", 10).allowed);
    assert!(take(&rl, "api", "b", 2).allowed);
    assert!(rl.try_acquire(&req("api", "c")).unwrap().allowed);
    let saved = rl.snapshot();
    assert_eq!(saved.len(), 3);

    let fresh = limiter(vec![limit("api", 10, 1000, 10)]);
    // 150 ms of downtime: c (100 ms deficit) is full and not restored.
    assert_eq!(fresh.restore(&saved, 150 * MS), 2);
    let a = fresh
        .try_acquire(&AcquireRequest {
            dry_run: true,
            ..req("api", "a")
        })
        .unwrap();
    assert_eq!(a.remaining, 1, "a refilled 1.5 tokens while down");
    let b = fresh
        .try_acquire(&AcquireRequest {
            dry_run: true,
            ..req("api", "b")
        })
        .unwrap();
    assert_eq!(b.remaining, 9);

    let gone = limiter(vec![limit("other", 1, 1000, 1)]);
    assert_eq!(
        gone.restore(&saved, Duration::ZERO),
        0,
        "unknown limits are skipped"
    );
}

#[tokio::test(start_paused = true)]
async fn after_an_unclean_stop_every_bucket_counts_as_emptied_at_the_crash() {
    // 10 per minute: one token every 6 s.
    let rl = limiter(vec![limit("login", 10, 60_000, 10)]);
    rl.assume_spent(Duration::from_secs(13));
    // 13 s since the crash: two tokens refilled, for any key, batches too.
    assert_eq!(peek(&rl, "login", "alice").remaining, 2);
    assert!(take(&rl, "login", "alice", 2).allowed);
    assert!(!take(&rl, "login", "alice", 1).allowed);
    let batch = rl
        .acquire_batch(
            &[AcquireRequest {
                tokens: 3,
                ..req("login", "bob")
            }],
            true,
        )
        .unwrap();
    assert!(
        !batch[0].allowed,
        "bob's bucket was emptied at the crash too"
    );
    // Refill goes on from there: full a minute after the crash.
    tokio::time::advance(Duration::from_secs(47)).await;
    assert_eq!(peek(&rl, "login", "carol").remaining, 10);
}

#[tokio::test(start_paused = true)]
async fn a_crash_long_ago_leaves_buckets_full() {
    let rl = limiter(vec![limit("login", 10, 60_000, 10)]);
    rl.assume_spent(Duration::from_secs(3600));
    assert_eq!(peek(&rl, "login", "alice").remaining, 10);
}
