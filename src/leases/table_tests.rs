//! The lease table's rules, without gRPC or a clock: time is passed in.

use std::time::Duration;

use super::LeaseError;
use super::pool::PoolSpec;
use super::table::{Admission, Ask, Effects, EndReason, Lease, Limits, Table, WaitEnd};
use crate::error::FieldError;

const T0: u64 = 1_700_000_000_000;

fn spec(name: &str, capacity: u32, max_per_holder: u32) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        capacity,
        max_per_holder,
        default_ttl: Duration::from_secs(30),
        max_ttl: Duration::from_secs(60),
    }
}

const LIMITS: Limits = Limits {
    max_waiters: 100,
    max_holder_bytes: 16,
};

fn table(capacity: u32) -> Table<&'static str> {
    Table::new([spec("db", capacity, capacity)], LIMITS, 7)
}

fn ask<'a>(holder: &'a str, count: u32) -> Ask<'a> {
    Ask {
        pool: "db",
        holder,
        count,
        ttl: None,
    }
}

/// Acquires without waiting; the lease or None.
fn take(t: &mut Table<&'static str>, holder: &str, count: u32, now: u64) -> Option<Lease> {
    let mut fx = Effects::default();
    match t.acquire(ask(holder, count), now, None, &mut fx).unwrap() {
        Admission::Granted(lease) => Some(lease),
        Admission::Denied(_) => None,
        Admission::Queued { .. } => panic!("queued without a waiter"),
    }
}

/// Queues a waiter tagged `tag`; panics unless it was queued.
fn wait(t: &mut Table<&'static str>, holder: &str, count: u32, tag: &'static str) -> u64 {
    let mut fx = Effects::default();
    match t
        .acquire(ask(holder, count), T0, Some(tag), &mut fx)
        .unwrap()
    {
        Admission::Queued { waiter } => {
            assert!(fx.granted.is_empty(), "nothing granted when {tag} queued");
            waiter
        }
        other => panic!("{tag}: expected to queue, got {other:?}"),
    }
}

fn granted_tags(fx: &Effects<&'static str>) -> Vec<&'static str> {
    fx.granted.iter().map(|(tag, _)| *tag).collect()
}

fn in_use(t: &Table<&'static str>) -> u64 {
    t.status("db").unwrap().in_use
}

#[test]
fn grants_up_to_the_capacity_and_not_beyond() {
    let mut t = table(10);
    let a = take(&mut t, "a", 6, T0).unwrap();
    assert_eq!(
        (a.pool.as_str(), a.holder.as_str(), a.count),
        ("db", "a", 6)
    );
    assert_eq!(a.expires_at_ms, T0 + 30_000, "the pool's default TTL");
    assert_eq!(a.id.len(), 32);
    let b = take(&mut t, "b", 4, T0).unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(take(&mut t, "c", 1, T0), None, "the pool is full");
    assert_eq!(in_use(&t), 10);
    t.check_consistency().unwrap();
}

#[test]
fn a_count_of_zero_means_one() {
    let mut t = table(2);
    assert_eq!(take(&mut t, "a", 0, T0).unwrap().count, 1);
    assert_eq!(in_use(&t), 1);
}

#[test]
fn bad_asks_name_the_problem() {
    let mut t: Table<&'static str> = Table::new([spec("db", 10, 3)], LIMITS, 7);
    let mut fx = Effects::default();
    let mut try_ask = |a: Ask<'_>| t.acquire(a, T0, None, &mut fx).unwrap_err();
    assert_eq!(
        try_ask(ask("a", 11)).to_string(),
        "count: 11 exceeds the capacity of 10 of pool \"db\"; it could never be granted"
    );
    assert_eq!(
        try_ask(ask("a", 4)).to_string(),
        "count: 4 exceeds the per-holder maximum of 3 of pool \"db\""
    );
    assert_eq!(
        try_ask(Ask {
            pool: "nope",
            ..ask("a", 1)
        }),
        LeaseError::UnknownPool("nope".into())
    );
    let empty = |field| LeaseError::Invalid(FieldError::empty(field));
    assert_eq!(try_ask(ask("", 1)), empty("holder"));
    assert_eq!(
        try_ask(Ask {
            pool: "",
            ..ask("a", 1)
        }),
        empty("pool")
    );
    assert_eq!(
        try_ask(ask("a-holder-name-longer-than-16", 1)),
        LeaseError::Invalid(FieldError::too_long(
            "holder",
            28,
            16,
            "leases.max_holder_bytes"
        ))
    );
    assert_eq!(
        t.release("", T0, &mut Effects::default()).unwrap_err(),
        empty("lease_id")
    );
}

#[test]
fn release_returns_the_units_and_is_idempotent() {
    let mut t = table(5);
    let a = take(&mut t, "a", 5, T0).unwrap();
    let mut fx = Effects::default();
    assert_eq!(t.release(&a.id, T0, &mut fx).unwrap(), Some(a.clone()));
    assert_eq!(t.release(&a.id, T0, &mut fx).unwrap(), None);
    assert_eq!(t.release("never-issued", T0, &mut fx).unwrap(), None);
    assert_eq!(in_use(&t), 0);
    assert!(take(&mut t, "b", 5, T0).is_some());
    t.check_consistency().unwrap();
}

#[test]
fn a_holder_is_held_to_its_maximum_over_all_its_leases() {
    let mut t: Table<&'static str> = Table::new([spec("db", 10, 4)], LIMITS, 7);
    assert!(take(&mut t, "greedy", 3, T0).is_some());
    assert_eq!(take(&mut t, "greedy", 2, T0), None, "3 + 2 > 4");
    assert!(take(&mut t, "greedy", 1, T0).is_some());
    assert!(take(&mut t, "other", 4, T0).is_some());
    let status = t.status("db").unwrap();
    assert_eq!(
        status.holders,
        vec![("greedy".to_string(), 4, 2), ("other".to_string(), 4, 1)]
    );
}

#[test]
fn leases_expire_on_time_and_free_their_units() {
    let mut t = table(3);
    let a = take(&mut t, "a", 3, T0).unwrap();
    assert_eq!(t.next_expiry(), Some(a.expires_at_ms));
    assert_eq!(
        take(&mut t, "b", 1, a.expires_at_ms - 1),
        None,
        "1 ms before"
    );
    let b = take(&mut t, "b", 1, a.expires_at_ms).unwrap();
    assert_eq!(in_use(&t), 1, "a's units came back");
    let mut fx = Effects::default();
    assert_eq!(t.release(&a.id, a.expires_at_ms, &mut fx).unwrap(), None);
    assert_eq!(t.next_expiry(), Some(b.expires_at_ms));
    t.check_consistency().unwrap();
}

#[test]
fn expiry_wakes_waiters_at_once() {
    let mut t = table(2);
    let a = take(&mut t, "a", 2, T0).unwrap();
    wait(&mut t, "b", 1, "b1");
    let mut fx = Effects::default();
    t.expire(a.expires_at_ms, &mut fx);
    assert_eq!(fx.ended, vec![(a.clone(), EndReason::Expired)]);
    assert_eq!(granted_tags(&fx), vec!["b1"]);
    let (_, lease) = &fx.granted[0];
    assert_eq!(lease.expires_at_ms, a.expires_at_ms + 30_000);
}

#[test]
fn renew_extends_a_live_lease_and_refuses_an_ended_one() {
    let mut t = table(2);
    let a = take(&mut t, "a", 1, T0).unwrap();
    let mut fx = Effects::default();
    let renewed = t
        .renew(&a.id, Some(Duration::from_secs(10)), T0 + 25_000, &mut fx)
        .unwrap();
    assert_eq!(renewed.expires_at_ms, T0 + 35_000);
    assert_eq!(t.next_expiry(), Some(T0 + 35_000));
    let capped = t
        .renew(&a.id, Some(Duration::from_secs(3600)), T0 + 25_000, &mut fx)
        .unwrap();
    assert_eq!(capped.expires_at_ms, T0 + 85_000, "capped at max_ttl");
    assert_eq!(
        t.renew(&a.id, None, T0 + 85_000, &mut fx).unwrap_err(),
        LeaseError::UnknownLease(a.id.clone()),
        "expired"
    );
    let b = take(&mut t, "b", 1, T0 + 85_000).unwrap();
    t.release(&b.id, T0 + 85_000, &mut fx).unwrap();
    assert_eq!(
        t.renew(&b.id, None, T0 + 85_000, &mut fx).unwrap_err(),
        LeaseError::UnknownLease(b.id.clone()),
        "released"
    );
    t.check_consistency().unwrap();
}

#[test]
fn waiters_are_served_in_turn_between_holders() {
    let mut t = table(1);
    let first = take(&mut t, "x", 1, T0).unwrap();
    // A greedy holder queues three, then two others arrive.
    wait(&mut t, "greedy", 1, "g1");
    wait(&mut t, "greedy", 1, "g2");
    wait(&mut t, "greedy", 1, "g3");
    wait(&mut t, "b", 1, "b1");
    wait(&mut t, "c", 1, "c1");
    let mut order = Vec::new();
    let mut held = first;
    for _ in 0..5 {
        let mut fx = Effects::default();
        t.release(&held.id, T0, &mut fx).unwrap();
        assert_eq!(fx.granted.len(), 1);
        let (tag, lease) = fx.granted.pop().unwrap();
        order.push(tag);
        held = lease;
    }
    assert_eq!(order, vec!["g1", "b1", "c1", "g2", "g3"]);
    assert_eq!(t.status("db").unwrap().waiting, 0);
}

#[test]
fn a_large_request_at_the_head_is_not_overtaken() {
    let mut t = table(4);
    let a = take(&mut t, "a", 3, T0).unwrap();
    let _b = take(&mut t, "b", 1, T0).unwrap();
    wait(&mut t, "big", 4, "big");
    wait(&mut t, "small", 1, "small");
    let mut fx = Effects::default();
    t.release(&a.id, T0, &mut fx).unwrap();
    assert!(fx.granted.is_empty(), "3 free, but the head wants 4");
    // Nor does a caller who does not wait jump the line.
    assert_eq!(take(&mut t, "c", 1, T0), None);
    assert_eq!(in_use(&t), 1);
    assert_eq!(t.status("db").unwrap().waiting, 2);
}

#[test]
fn a_head_held_back_by_its_own_holder_does_not_block_others() {
    let mut t: Table<&'static str> = Table::new([spec("db", 10, 2)], LIMITS, 7);
    let g = take(&mut t, "greedy", 2, T0).unwrap();
    // greedy is at its maximum: its waiter waits for greedy's own release…
    wait(&mut t, "greedy", 1, "g");
    // …and others are served meanwhile, waiting or not.
    let mut fx = Effects::default();
    let admission = t.acquire(ask("b", 1), T0, Some("b"), &mut fx).unwrap();
    assert!(matches!(admission, Admission::Granted(_)), "{admission:?}");
    assert!(take(&mut t, "c", 1, T0).is_some());
    assert_eq!(t.status("db").unwrap().waiting, 1);
    // Once greedy releases, its waiter is next.
    let mut fx = Effects::default();
    t.release(&g.id, T0, &mut fx).unwrap();
    assert_eq!(granted_tags(&fx), vec!["g"]);
}

#[test]
fn a_waiter_that_leaves_consumes_nothing_and_unblocks_the_line() {
    let mut t = table(2);
    let _a = take(&mut t, "a", 1, T0).unwrap();
    let big = wait(&mut t, "big", 2, "big");
    wait(&mut t, "small", 1, "small");
    let mut fx = Effects::default();
    assert_eq!(t.leave("db", big, T0, &mut fx), Some("big"));
    assert_eq!(granted_tags(&fx), vec!["small"]);
    assert_eq!(t.leave("db", big, T0, &mut fx), None, "leaving twice");
    assert_eq!(in_use(&t), 2);
    t.check_consistency().unwrap();
}

#[test]
fn the_queue_is_bounded() {
    let mut t: Table<&'static str> = Table::new(
        [spec("db", 1, 1)],
        Limits {
            max_waiters: 2,
            ..LIMITS
        },
        7,
    );
    take(&mut t, "a", 1, T0).unwrap();
    wait(&mut t, "b", 1, "b");
    wait(&mut t, "c", 1, "c");
    let err = t
        .acquire(ask("d", 1), T0, Some("d"), &mut Effects::default())
        .unwrap_err();
    assert_eq!(
        err,
        LeaseError::QueueFull {
            pool: "db".into(),
            max: 2
        }
    );
}

#[test]
fn shrinking_keeps_leases_and_grants_nothing_until_under_the_new_capacity() {
    let mut t = table(10);
    let a = take(&mut t, "a", 6, T0).unwrap();
    let b = take(&mut t, "b", 4, T0).unwrap();
    wait(&mut t, "c", 2, "c2");
    wait(&mut t, "d", 6, "d6");
    let mut fx = Effects::default();
    t.reload([spec("db", 5, 5)], LIMITS, T0, &mut fx);
    assert_eq!(in_use(&t), 10, "existing leases are kept");
    assert_eq!(
        fx.dropped,
        vec![("d6", WaitEnd::NoLongerPossible)],
        "6 can never fit in 5"
    );
    let mut fx = Effects::default();
    t.release(&a.id, T0, &mut fx).unwrap();
    assert!(fx.granted.is_empty(), "4 in use + 2 > 5");
    t.release(&b.id, T0, &mut fx).unwrap();
    assert_eq!(granted_tags(&fx), vec!["c2"]);
    assert_eq!(take(&mut t, "e", 4, T0), None, "2 + 4 > 5");
    assert!(take(&mut t, "e", 3, T0).is_some());
    t.check_consistency().unwrap();
}

#[test]
fn growing_a_pool_grants_its_waiters() {
    let mut t = table(1);
    take(&mut t, "a", 1, T0).unwrap();
    wait(&mut t, "b", 1, "b");
    let mut fx = Effects::default();
    t.reload([spec("db", 2, 2)], LIMITS, T0, &mut fx);
    assert_eq!(granted_tags(&fx), vec!["b"]);
}

#[test]
fn removing_a_pool_ends_its_leases_and_answers_its_waiters() {
    let mut t: Table<&'static str> = Table::new([spec("db", 1, 1), spec("other", 1, 1)], LIMITS, 7);
    let a = take(&mut t, "a", 1, T0).unwrap();
    wait(&mut t, "b", 1, "b");
    let mut fx = Effects::default();
    t.reload([spec("other", 1, 1)], LIMITS, T0, &mut fx);
    assert_eq!(fx.dropped, vec![("b", WaitEnd::PoolRemoved)]);
    assert_eq!(fx.ended, vec![(a.clone(), EndReason::PoolRemoved)]);
    assert_eq!(
        t.status("db").unwrap_err(),
        LeaseError::UnknownPool("db".into())
    );
    assert_eq!(t.pool_names(), vec!["other".to_string()]);
    t.check_consistency().unwrap();
}

#[test]
fn restore_keeps_live_leases_even_above_a_smaller_capacity() {
    let lease = |id: &str, pool: &str, count, expires_at_ms| Lease {
        id: id.into(),
        pool: pool.into(),
        holder: "h".into(),
        count,
        expires_at_ms,
    };
    let mut t = table(3);
    let report = t.restore(
        vec![
            lease("live1", "db", 2, T0 + 1000),
            lease("live2", "db", 2, T0 + 5000),
            lease("expired", "db", 1, T0),
            lease("orphan", "gone", 1, T0 + 1000),
        ],
        T0,
    );
    assert_eq!(report.restored, 2);
    assert_eq!(report.stale, vec!["expired".to_string(), "orphan".into()]);
    assert_eq!(
        in_use(&t),
        4,
        "above the capacity of 3: nothing new is granted"
    );
    assert_eq!(take(&mut t, "x", 1, T0), None);
    assert_eq!(t.next_expiry(), Some(T0 + 1000));
    assert!(take(&mut t, "x", 1, T0 + 1000).is_some(), "2 + 1 <= 3");
    t.check_consistency().unwrap();
}

/// Random acquisitions, waits, leaves, releases and expiries: after every
/// step the bookkeeping matches the leases and the capacity holds.
#[test]
fn random_operations_never_exceed_the_capacity() {
    const CAPACITY: u32 = 7;
    let mut t: Table<u32> = Table::new([spec("db", CAPACITY, 5)], LIMITS, 7);
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut held: Vec<String> = Vec::new();
    let mut queued: Vec<u64> = Vec::new();
    let mut now = T0;
    let holders = ["a", "b", "c", "d"];
    for step in 0..20_000u32 {
        let mut fx = Effects::default();
        now += next(200);
        let holder = holders[next(4) as usize];
        match next(5) {
            0 | 1 => {
                let count = 1 + next(4) as u32;
                let waiter = (next(2) == 0).then_some(step);
                let ttl = Some(Duration::from_millis(500 + next(5_000)));
                let a = Ask {
                    pool: "db",
                    holder,
                    count,
                    ttl,
                };
                match t.acquire(a, now, waiter, &mut fx) {
                    Ok(Admission::Granted(l)) => held.push(l.id),
                    Ok(Admission::Queued { waiter }) => queued.push(waiter),
                    Ok(Admission::Denied(_)) | Err(LeaseError::QueueFull { .. }) => {}
                    Err(e) => panic!("step {step}: {e}"),
                }
            }
            2 if !held.is_empty() => {
                let id = held.swap_remove(next(held.len() as u64) as usize);
                t.release(&id, now, &mut fx).unwrap();
            }
            3 if !queued.is_empty() => {
                let w = queued.swap_remove(next(queued.len() as u64) as usize);
                t.leave("db", w, now, &mut fx);
            }
            _ => t.expire(now, &mut fx),
        }
        held.extend(fx.granted.into_iter().map(|(_, l)| l.id));
        let status = t.status("db").unwrap();
        assert!(
            status.in_use <= u64::from(CAPACITY),
            "step {step}: {} in use",
            status.in_use
        );
        assert!(status.holders.iter().all(|(_, units, _)| *units <= 5));
        t.check_consistency()
            .unwrap_or_else(|e| panic!("step {step}: {e}"));
    }
}
