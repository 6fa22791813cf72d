//! The slow-query log: executions at or above the threshold, kept in order
//! of their own time (not of arrival: a batch recorded late, or a replica's
//! clock, can bring older executions after newer ones), bounded — the oldest
//! go first.

use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowQuery {
    pub fingerprint: String,
    pub text: String,
    pub duration: Duration,
    pub rows: u64,
    pub service: String,
    pub trace_id: String,
    pub time_ms: u64,
}

#[derive(Debug)]
pub struct SlowLog {
    entries: VecDeque<SlowQuery>,
    capacity: usize,
}

impl SlowLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&mut self, query: SlowQuery) {
        // Most executions arrive in time order: the place is found from the back.
        let at = self
            .entries
            .iter()
            .rposition(|q| q.time_ms <= query.time_ms)
            .map_or(0, |i| i + 1);
        if self.entries.len() >= self.capacity {
            if at == 0 {
                // Older than everything kept in a full log.
                return;
            }
            self.entries.pop_front();
            self.entries.insert(at - 1, query);
        } else {
            self.entries.insert(at, query);
        }
    }

    /// Newest first, only those at or after `since_ms`.
    pub fn recent(&self, since_ms: u64, limit: usize) -> Vec<SlowQuery> {
        self.entries
            .iter()
            .rev()
            .filter(|q| q.time_ms >= since_ms)
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &SlowQuery> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(time_ms: u64) -> SlowQuery {
        SlowQuery {
            fingerprint: "f".into(),
            text: "SELECT ?".into(),
            duration: Duration::from_secs(2),
            rows: 1,
            service: "s".into(),
            trace_id: String::new(),
            time_ms,
        }
    }

    #[test]
    fn newest_first_bounded_and_filtered_by_time() {
        let mut log = SlowLog::new(3);
        for t in 1..=5 {
            log.push(q(t));
        }
        let times: Vec<u64> = log.recent(0, 10).iter().map(|q| q.time_ms).collect();
        assert_eq!(times, vec![5, 4, 3]);
        assert_eq!(log.recent(4, 10).len(), 2);
        assert_eq!(log.recent(0, 1)[0].time_ms, 5);
    }

    #[test]
    fn executions_arriving_out_of_order_are_kept_in_time_order() {
        let mut log = SlowLog::new(4);
        for t in [10, 30, 20, 50, 40] {
            log.push(q(t));
        }
        let times: Vec<u64> = log.recent(0, 10).iter().map(|q| q.time_ms).collect();
        assert_eq!(
            times,
            vec![50, 40, 30, 20],
            "newest first by their own time"
        );
        log.push(q(5));
        assert_eq!(
            log.len(),
            4,
            "older than everything in a full log: not kept"
        );
        log.push(q(35));
        let times: Vec<u64> = log.recent(0, 2).iter().map(|q| q.time_ms).collect();
        assert_eq!(times, vec![50, 40]);
        let all: Vec<u64> = log.recent(0, 10).iter().map(|q| q.time_ms).collect();
        assert_eq!(all, vec![50, 40, 35, 30], "the oldest went first");
    }
}
