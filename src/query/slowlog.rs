//! The slow-query log: executions at or above the threshold, newest last,
//! bounded (the oldest go first).

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
        if self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(query);
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
}
