//! The token-bucket arithmetic: GCRA (the generic cell rate algorithm), exact
//! to the nanosecond.
//!
//! A bucket refills `rate` tokens per `period` up to `burst`. GCRA stores one
//! number per bucket, the theoretical arrival time (TAT): the moment the
//! bucket will be full again. Taking `n` tokens pushes the TAT `n * T` later
//! (T = period / rate, the time one token takes to accrue); a request fits
//! when the pushed TAT is at most `burst * T` ahead of now.
//!
//! T is rarely a whole number of nanoseconds (3 per second is 333,333,333.3 ns),
//! so times are computed in units of 1/rate ns, where T is exactly `period_ns`.
//! The TAT is stored as whole nanoseconds plus the remainder in those units, so
//! no rounding error accumulates however many tokens are taken.
//!
//! All times are nanoseconds on a monotonic clock chosen by the caller.

/// A bucket's parameters, validated by the configuration (rate ≥ 1, period ≥ 1 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Params {
    /// Tokens added per period.
    pub rate: u64,
    /// The period, in nanoseconds.
    pub period_ns: u64,
    /// The capacity.
    pub burst: u64,
}

/// One bucket: its theoretical arrival time. A default state is a full bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketState {
    /// Whole nanoseconds of the TAT.
    tat_ns: u64,
    /// The TAT's remainder below one nanosecond, in units of 1/rate ns (< rate).
    frac: u64,
}

/// The outcome of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Whole tokens left after the decision.
    pub remaining: u64,
    /// When denied: nanoseconds until the requested tokens will have accrued.
    pub retry_after_ns: u64,
    /// Nanoseconds until the bucket is full again.
    pub reset_after_ns: u64,
    /// The bucket's capacity.
    pub limit: u64,
}

/// `a / b` and `a % b`, on native 64-bit division when both fit (the common
/// case), since 128-bit division is a slow library call.
#[inline]
fn divmod(a: u128, b: u64) -> (u128, u64) {
    match u64::try_from(a) {
        Ok(a) => (u128::from(a / b), a % b),
        // The remainder of a division by a u64 is below it.
        Err(_) => (a / u128::from(b), (a % u128::from(b)) as u64),
    }
}

#[inline]
fn div_ceil(a: u128, b: u64) -> u128 {
    let (q, r) = divmod(a, b);
    q + u128::from(r > 0)
}

impl Params {
    /// Nanoseconds one token takes to accrue, rounded up (for reporting).
    /// How long an empty bucket takes to fill: `burst` tokens at `rate` per `period`.
    pub fn full_ns(&self) -> u64 {
        let full = u128::from(self.burst) * u128::from(self.period_ns) / u128::from(self.rate);
        u64::try_from(full).unwrap_or(u64::MAX)
    }

    pub fn token_interval_ns(&self) -> u64 {
        self.period_ns.div_ceil(self.rate)
    }

    fn scaled(&self, ns: u64) -> u128 {
        u128::from(ns) * u128::from(self.rate)
    }

    /// Scaled units back to nanoseconds, rounded up so waits are never short.
    fn ns_ceil(&self, scaled: u128) -> u64 {
        u64::try_from(div_ceil(scaled, self.rate)).unwrap_or(u64::MAX)
    }

    fn tau(&self) -> u128 {
        u128::from(self.burst) * u128::from(self.period_ns)
    }

    fn cost(&self, tokens: u64) -> u128 {
        u128::from(tokens) * u128::from(self.period_ns)
    }
}

impl BucketState {
    fn tat_scaled(&self, params: &Params) -> u128 {
        params.scaled(self.tat_ns) + u128::from(self.frac.min(params.rate.saturating_sub(1)))
    }

    fn set_scaled(&mut self, params: &Params, scaled: u128) {
        let (q, r) = divmod(scaled, params.rate);
        self.tat_ns = u64::try_from(q).unwrap_or(u64::MAX);
        self.frac = r;
    }

    /// A bucket whose TAT is not after `now` is full: it can be forgotten.
    pub fn is_full(&self, now_ns: u64) -> bool {
        self.tat_ns < now_ns || (self.tat_ns == now_ns && self.frac == 0)
    }

    /// Nanoseconds until full (0 when full).
    pub fn deficit_ns(&self, now_ns: u64) -> u64 {
        if self.is_full(now_ns) {
            0
        } else {
            self.tat_ns - now_ns + u64::from(self.frac > 0)
        }
    }

    /// A bucket that will be full `deficit_ns` after `now_ns` (used to restore saved state).
    pub fn with_deficit(now_ns: u64, deficit_ns: u64) -> Self {
        Self {
            tat_ns: now_ns.saturating_add(deficit_ns),
            frac: 0,
        }
    }

    /// Whole tokens available now.
    pub fn available(&self, params: &Params, now_ns: u64) -> u64 {
        let now = params.scaled(now_ns);
        let tat = self.tat_scaled(params).max(now);
        let level = (now + params.tau()).saturating_sub(tat);
        u64::try_from(divmod(level, params.period_ns).0).unwrap_or(u64::MAX)
    }

    /// Decides whether `tokens` can be taken now, and takes them when
    /// `consume` is set. Callers reject `tokens > burst` beforehand; here it is
    /// simply never allowed.
    pub fn decide(&mut self, params: &Params, now_ns: u64, tokens: u64, consume: bool) -> Decision {
        let now = params.scaled(now_ns);
        let tau = params.tau();
        let tat = self.tat_scaled(params).max(now);
        let new_tat = tat + params.cost(tokens);
        let allowed = new_tat <= now + tau;
        let final_tat = if allowed && consume {
            self.set_scaled(params, new_tat);
            new_tat
        } else {
            tat
        };
        let level = (now + tau).saturating_sub(final_tat);
        let remaining = u64::try_from(divmod(level, params.period_ns).0).unwrap_or(u64::MAX);
        let retry_after_ns = if allowed {
            0
        } else {
            params.ns_ceil(new_tat - (now + tau))
        };
        Decision {
            allowed,
            remaining,
            retry_after_ns,
            reset_after_ns: params.ns_ceil(final_tat - now),
            limit: params.burst,
        }
    }

    /// Gives back tokens taken by a grant nobody received (a waiter that went
    /// away at the moment it was granted). Never makes the bucket fuller than full.
    pub fn refund(&mut self, params: &Params, now_ns: u64, tokens: u64) {
        let now = params.scaled(now_ns);
        let tat = self
            .tat_scaled(params)
            .saturating_sub(params.cost(tokens))
            .max(now);
        self.set_scaled(params, tat);
    }

    /// Carries the bucket's level (tokens available now) over to new
    /// parameters, capped at the new burst: a reload changes the refill, not
    /// what a client has already spent.
    pub fn rescale(&mut self, old: &Params, new: &Params, now_ns: u64) {
        if old == new {
            return;
        }
        let now_old = old.scaled(now_ns);
        let tat_old = self.tat_scaled(old).max(now_old);
        // Level in tokens as a fraction: (now + tau - tat) / period_ns, in old units.
        let level_scaled = (now_old + old.tau()).saturating_sub(tat_old);
        // New TAT = now + tau_new - level * T_new. In new units, level * T_new
        // = level_scaled / period_old * period_new.
        let level_new = level_scaled * u128::from(new.period_ns) / u128::from(old.period_ns);
        let now_new = new.scaled(now_ns);
        let tat_new = (now_new + new.tau()).saturating_sub(level_new).max(now_new);
        self.set_scaled(new, tat_new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    fn params(rate: u64, period_ns: u64, burst: u64) -> Params {
        Params {
            rate,
            period_ns,
            burst,
        }
    }

    #[test]
    fn divmod_matches_128_bit_division_on_both_paths() {
        for (a, b) in [
            (10u128, 3u64),
            (u128::from(u64::MAX), 7),
            (u128::from(u64::MAX) * 5 + 3, 11),
            (0, 1),
        ] {
            assert_eq!(
                divmod(a, b),
                (a / u128::from(b), (a % u128::from(b)) as u64),
                "{a} / {b}"
            );
            assert_eq!(div_ceil(a, b), a.div_ceil(u128::from(b)));
        }
    }

    #[test]
    fn a_new_bucket_is_full_and_grants_its_burst() {
        let p = params(10, SEC, 5);
        let mut b = BucketState::default();
        let now = 1000 * SEC;
        for left in (0..5).rev() {
            let d = b.decide(&p, now, 1, true);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
            assert_eq!(d.limit, 5);
        }
        let d = b.decide(&p, now, 1, true);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_ns, 100 * MS, "one token accrues every 100 ms");
        assert_eq!(d.reset_after_ns, 500 * MS, "five tokens to refill");
    }

    #[test]
    fn refill_is_exact_to_the_nanosecond() {
        let p = params(10, SEC, 10);
        let mut b = BucketState::default();
        let t0 = 50 * SEC;
        assert!(b.decide(&p, t0, 10, true).allowed);
        assert!(!b.decide(&p, t0 + 100 * MS - 1, 1, true).allowed);
        let d = b.decide(&p, t0 + 100 * MS - 1, 1, false);
        assert_eq!(d.retry_after_ns, 1, "exactly one nanosecond short");
        assert!(b.decide(&p, t0 + 100 * MS, 1, true).allowed);
        // Half a second later: 5 tokens are back.
        assert_eq!(b.available(&p, t0 + 600 * MS), 5);
    }

    #[test]
    fn fractional_token_intervals_do_not_drift() {
        // 3 per second: T = 333,333,333.33 ns.
        let p = params(3, SEC, 3);
        let mut b = BucketState::default();
        let t0 = 10 * SEC;
        assert!(b.decide(&p, t0, 3, true).allowed);
        // Take a token every T for a million tokens: each must be granted
        // exactly on time, with no accumulated rounding.
        let mut granted = 0u64;
        for i in 1..=1_000_000u64 {
            let at = t0 + (u128::from(i) * u128::from(SEC)).div_ceil(3) as u64;
            let d = b.decide(&p, at, 1, true);
            assert!(d.allowed, "token {i} at {at} refused");
            granted += 1;
        }
        assert_eq!(granted, 1_000_000);
        let end = t0 + 1_000_000 * SEC / 3;
        assert!(
            !b.decide(&p, end, 1, false).allowed,
            "no extra token appeared"
        );
    }

    #[test]
    fn retry_after_is_exact_for_several_tokens() {
        let p = params(100, SEC, 100);
        let mut b = BucketState::default();
        let now = SEC;
        assert!(b.decide(&p, now, 100, true).allowed);
        let d = b.decide(&p, now, 25, true);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ns, 250 * MS);
        assert_eq!(d.reset_after_ns, SEC);
        assert!(b.decide(&p, now + 250 * MS, 25, true).allowed);
    }

    #[test]
    fn more_than_the_burst_is_never_allowed() {
        let p = params(10, SEC, 5);
        let mut b = BucketState::default();
        let d = b.decide(&p, SEC, 6, true);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 5);
        assert_eq!(b, BucketState::default(), "nothing was consumed");
    }

    #[test]
    fn dry_run_consumes_nothing() {
        let p = params(10, SEC, 5);
        let mut b = BucketState::default();
        for _ in 0..100 {
            let d = b.decide(&p, SEC, 5, false);
            assert!(d.allowed);
            assert_eq!(d.remaining, 5);
        }
        assert!(b.decide(&p, SEC, 5, true).allowed);
        let d = b.decide(&p, SEC, 1, false);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ns, 100 * MS);
    }

    #[test]
    fn a_bucket_is_full_again_after_reset_after() {
        let p = params(4, SEC, 4);
        let mut b = BucketState::default();
        let d = b.decide(&p, SEC, 3, true);
        assert_eq!(d.reset_after_ns, 750 * MS);
        assert!(!b.is_full(SEC + 750 * MS - 1));
        assert!(b.is_full(SEC + 750 * MS));
        assert_eq!(b.available(&p, SEC + 750 * MS), 4);
    }

    #[test]
    fn idle_time_never_overfills() {
        let p = params(10, SEC, 5);
        let mut b = BucketState::default();
        assert!(b.decide(&p, SEC, 5, true).allowed);
        assert_eq!(b.available(&p, 1_000_000 * SEC), 5);
    }

    #[test]
    fn clock_at_zero_and_far_future_are_safe() {
        let p = params(1_000_000_000, 1_000 * SEC, 1_000_000_000_000);
        let mut b = BucketState::default();
        assert!(b.decide(&p, 0, 1_000_000_000_000, true).allowed);
        assert!(!b.decide(&p, 0, 1, true).allowed);
        let far = u64::MAX / 4;
        assert!(b.decide(&p, far, 1, true).allowed);
    }

    #[test]
    fn refund_returns_tokens_but_never_overfills() {
        let p = params(10, SEC, 10);
        let mut b = BucketState::default();
        assert!(b.decide(&p, SEC, 4, true).allowed);
        b.refund(&p, SEC, 4);
        assert_eq!(b.available(&p, SEC), 10);
        b.refund(&p, SEC, 4);
        assert_eq!(b.available(&p, SEC), 10);
        assert!(b.is_full(SEC));
    }

    #[test]
    fn rescale_keeps_the_level_and_caps_at_the_new_burst() {
        let old = params(10, SEC, 10);
        let mut b = BucketState::default();
        assert!(b.decide(&old, SEC, 6, true).allowed); // 4 left
        let bigger = params(100, SEC, 100);
        let mut grown = b;
        grown.rescale(&old, &bigger, SEC);
        assert_eq!(grown.available(&bigger, SEC), 4, "level kept, not refilled");
        let smaller = params(1, SEC, 2);
        let mut shrunk = b;
        shrunk.rescale(&old, &smaller, SEC);
        assert_eq!(
            shrunk.available(&smaller, SEC),
            2,
            "capped at the new burst"
        );
        assert!(shrunk.is_full(SEC));
    }

    #[test]
    fn deficit_round_trips_through_with_deficit() {
        let p = params(10, SEC, 10);
        let mut b = BucketState::default();
        assert!(b.decide(&p, 5 * SEC, 7, true).allowed);
        let deficit = b.deficit_ns(5 * SEC);
        assert_eq!(deficit, 700 * MS);
        // Restored after 300 ms of downtime on a new clock starting at 0.
        let restored = BucketState::with_deficit(0, deficit - 300 * MS);
        assert_eq!(restored.available(&p, 0), 6);
    }
}
