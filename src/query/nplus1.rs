//! N+1 detection: the same fingerprint executed at least `threshold` times
//! within one trace — or, for executions without a trace, by one service
//! within `window` — is a batching opportunity. Bounded: the oldest traces
//! tracked are forgotten first.

use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Executions of this fingerprint in this trace (or burst) so far.
    pub count: u64,
    /// True exactly once per trace (or burst): when the count reaches the threshold.
    pub reached: bool,
}

#[derive(Debug)]
pub struct NPlusOne {
    threshold: u64,
    window_ms: u64,
    max_tracked: usize,
    traces: HashMap<(String, String), u64>,
    order: VecDeque<(String, String)>,
    /// (service, fingerprint) → (burst start, count).
    bursts: HashMap<(String, String), (u64, u64)>,
}

impl NPlusOne {
    pub fn new(threshold: u64, window_ms: u64, max_tracked: usize) -> Self {
        Self {
            threshold: threshold.max(2),
            window_ms,
            max_tracked: max_tracked.max(1),
            traces: HashMap::new(),
            order: VecDeque::new(),
            bursts: HashMap::new(),
        }
    }

    pub fn observe(
        &mut self,
        trace_id: Option<&str>,
        service: &str,
        fingerprint: &str,
        time_ms: u64,
    ) -> Seen {
        let count = match trace_id {
            Some(trace) => {
                let key = (trace.to_string(), fingerprint.to_string());
                match self.traces.get_mut(&key) {
                    Some(c) => {
                        *c += 1;
                        *c
                    }
                    None => {
                        if self.traces.len() >= self.max_tracked
                            && let Some(old) = self.order.pop_front()
                        {
                            self.traces.remove(&old);
                        }
                        self.order.push_back(key.clone());
                        self.traces.insert(key, 1);
                        1
                    }
                }
            }
            None => {
                if self.bursts.len() >= self.max_tracked {
                    let window = self.window_ms;
                    self.bursts
                        .retain(|_, (start, _)| time_ms.saturating_sub(*start) <= window);
                }
                let burst = self
                    .bursts
                    .entry((service.to_string(), fingerprint.to_string()))
                    .or_insert((time_ms, 0));
                if time_ms.saturating_sub(burst.0) > self.window_ms {
                    *burst = (time_ms, 0);
                }
                burst.1 += 1;
                burst.1
            }
        };
        Seen {
            count,
            reached: count == self.threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_reaching_the_threshold_is_reported_once() {
        let mut n = NPlusOne::new(3, 100, 10);
        let seen: Vec<Seen> = (0..5)
            .map(|_| n.observe(Some("t1"), "s", "fp", 0))
            .collect();
        assert_eq!(seen.iter().filter(|s| s.reached).count(), 1);
        assert!(seen[2].reached);
        assert_eq!(seen[4].count, 5);
        // Another fingerprint, or another trace, counts on its own.
        assert_eq!(n.observe(Some("t1"), "s", "other", 0).count, 1);
        assert_eq!(n.observe(Some("t2"), "s", "fp", 0).count, 1);
    }

    #[test]
    fn bursts_without_a_trace_count_within_the_window() {
        let mut n = NPlusOne::new(3, 100, 10);
        assert_eq!(n.observe(None, "s", "fp", 0).count, 1);
        assert_eq!(n.observe(None, "s", "fp", 50).count, 2);
        // The window ran out: a new burst starts.
        assert_eq!(n.observe(None, "s", "fp", 200).count, 1);
        assert_eq!(n.observe(None, "s", "fp", 210).count, 2);
        assert!(n.observe(None, "s", "fp", 220).reached);
        assert_eq!(n.observe(None, "other", "fp", 220).count, 1);
    }

    #[test]
    fn the_oldest_traces_are_forgotten_beyond_the_bound() {
        let mut n = NPlusOne::new(2, 100, 2);
        n.observe(Some("a"), "s", "fp", 0);
        n.observe(Some("b"), "s", "fp", 0);
        n.observe(Some("c"), "s", "fp", 0);
        assert_eq!(n.traces.len(), 2);
        // "a" was forgotten: it starts again at 1.
        assert_eq!(n.observe(Some("a"), "s", "fp", 0).count, 1);
    }
}
