//! A fair wait queue, shared by rate-limit buckets and lease pools: first
//! come, first served, rotating between parties (a rate-limit `client`, a
//! lease `holder`).
//!
//! Waiters are grouped by the party they named; the groups form a ring in
//! order of arrival. The head of the queue is the oldest waiter of the first
//! group; once it is granted, its group moves to the back of the ring, so one
//! caller with many waiters cannot starve the others. A waiter without a
//! party is a group of its own, which makes plain callers strictly FIFO.
//! Only a group's head is ever granted: a large request at the head is never
//! overtaken by smaller ones behind it.

use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Group {
    Named(Box<str>),
    Anonymous,
}

#[derive(Debug)]
pub struct Waiter<T> {
    pub id: u64,
    pub tokens: u64,
    pub payload: T,
}

#[derive(Debug)]
struct ClientQueue<T> {
    group: Group,
    waiters: VecDeque<Waiter<T>>,
}

#[derive(Debug)]
pub struct WaitQueue<T> {
    ring: VecDeque<ClientQueue<T>>,
    len: usize,
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        Self {
            ring: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> WaitQueue<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens wanted by every waiter (to tell a newcomer how long the line is).
    pub fn tokens_waiting(&self) -> u64 {
        self.ring
            .iter()
            .flat_map(|c| c.waiters.iter())
            .fold(0u64, |sum, w| sum.saturating_add(w.tokens))
    }

    pub fn push(&mut self, client: &str, waiter: Waiter<T>) {
        self.len += 1;
        if !client.is_empty()
            && let Some(queue) = self
                .ring
                .iter_mut()
                .find(|c| matches!(&c.group, Group::Named(name) if &**name == client))
        {
            queue.waiters.push_back(waiter);
            return;
        }
        let group = if client.is_empty() {
            Group::Anonymous
        } else {
            Group::Named(client.into())
        };
        self.ring.push_back(ClientQueue {
            group,
            waiters: VecDeque::from([waiter]),
        });
    }

    pub fn head(&self) -> Option<&Waiter<T>> {
        self.ring.front().and_then(|c| c.waiters.front())
    }

    /// Removes the head and rotates its client to the back of the ring.
    pub fn pop_head(&mut self) -> Option<Waiter<T>> {
        self.pop_group_head(0)
    }

    /// The first group head, in ring order, that `passes` accepts (given the
    /// group's party, empty for anonymous), with the group's position for
    /// [`WaitQueue::pop_group_head`]. Lets a caller pass over a party that may
    /// not be served now (a lease holder at its own maximum) without letting
    /// anyone overtake the first head that may.
    pub fn first_head_where(
        &self,
        mut passes: impl FnMut(&str, &Waiter<T>) -> bool,
    ) -> Option<(usize, &Waiter<T>)> {
        self.ring.iter().enumerate().find_map(|(i, c)| {
            let head = c.waiters.front()?;
            let party = match &c.group {
                Group::Named(name) => &**name,
                Group::Anonymous => "",
            };
            passes(party, head).then_some((i, head))
        })
    }

    /// Removes the head of the group at `position` and rotates that group to
    /// the back of the ring.
    pub fn pop_group_head(&mut self, position: usize) -> Option<Waiter<T>> {
        let mut queue = self.ring.remove(position)?;
        let waiter = queue.waiters.pop_front();
        if !queue.waiters.is_empty() {
            self.ring.push_back(queue);
        }
        if waiter.is_some() {
            self.len -= 1;
        }
        waiter
    }

    /// Every waiter, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Waiter<T>> {
        self.ring.iter().flat_map(|c| c.waiters.iter())
    }

    /// Takes every waiter out, in no particular order (to answer them all at once).
    pub fn drain(&mut self) -> impl Iterator<Item = Waiter<T>> + '_ {
        self.len = 0;
        self.ring.drain(..).flat_map(|c| c.waiters)
    }

    /// Removes a waiter wherever it is (it cancelled or its time ran out).
    pub fn remove(&mut self, id: u64) -> Option<Waiter<T>> {
        let (ci, wi) = self
            .ring
            .iter()
            .enumerate()
            .find_map(|(ci, c)| c.waiters.iter().position(|w| w.id == id).map(|wi| (ci, wi)))?;
        let queue = &mut self.ring[ci];
        let waiter = queue.waiters.remove(wi);
        if queue.waiters.is_empty() {
            self.ring.remove(ci);
        }
        if waiter.is_some() {
            self.len -= 1;
        }
        waiter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: u64, tokens: u64) -> Waiter<()> {
        Waiter {
            id,
            tokens,
            payload: (),
        }
    }

    fn drain(q: &mut WaitQueue<()>) -> Vec<u64> {
        std::iter::from_fn(|| q.pop_head().map(|w| w.id)).collect()
    }

    #[test]
    fn anonymous_waiters_are_first_come_first_served() {
        let mut q = WaitQueue::default();
        for id in 1..=5 {
            q.push("", w(id, 1));
        }
        assert_eq!(q.len(), 5);
        assert_eq!(drain(&mut q), vec![1, 2, 3, 4, 5]);
        assert!(q.is_empty());
    }

    #[test]
    fn grants_rotate_between_clients() {
        let mut q = WaitQueue::default();
        // A greedy client queues four, then two others arrive.
        for id in 1..=4 {
            q.push("greedy", w(id, 1));
        }
        q.push("b", w(10, 1));
        q.push("c", w(20, 1));
        q.push("b", w(11, 1));
        assert_eq!(drain(&mut q), vec![1, 10, 20, 2, 11, 3, 4]);
    }

    #[test]
    fn the_head_is_not_overtaken() {
        let mut q = WaitQueue::default();
        q.push("", w(1, 100));
        q.push("", w(2, 1));
        assert_eq!(q.head().map(|w| (w.id, w.tokens)), Some((1, 100)));
        assert_eq!(q.tokens_waiting(), 101);
    }

    #[test]
    fn removing_a_waiter_keeps_the_order_of_the_rest() {
        let mut q = WaitQueue::default();
        q.push("a", w(1, 1));
        q.push("b", w(2, 1));
        q.push("a", w(3, 1));
        assert_eq!(q.remove(2).map(|w| w.id), Some(2));
        assert_eq!(
            q.remove(2).map(|w| w.id),
            None,
            "removing twice is harmless"
        );
        assert_eq!(q.len(), 2);
        assert_eq!(drain(&mut q), vec![1, 3]);
    }

    #[test]
    fn a_passed_over_party_keeps_its_place() {
        let mut q = WaitQueue::default();
        q.push("capped", w(1, 1));
        q.push("b", w(2, 1));
        q.push("capped", w(3, 1));
        q.push("c", w(4, 1));
        let (at, head) = q.first_head_where(|party, _| party != "capped").unwrap();
        assert_eq!((at, head.id), (1, 2));
        assert_eq!(q.pop_group_head(at).map(|w| w.id), Some(2));
        // "capped" is still first; "c" is next among the others.
        assert_eq!(q.head().map(|w| w.id), Some(1));
        assert_eq!(
            q.first_head_where(|party, _| party != "capped")
                .map(|(_, w)| w.id),
            Some(4)
        );
        assert!(q.first_head_where(|_, w| w.tokens > 1).is_none());
        assert_eq!(q.len(), 3);
        let mut all: Vec<u64> = q.drain().map(|w| w.id).collect();
        all.sort_unstable();
        assert_eq!(all, vec![1, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn removing_the_head_makes_the_next_one_head() {
        let mut q = WaitQueue::default();
        q.push("", w(1, 5));
        q.push("", w(2, 1));
        q.remove(1);
        assert_eq!(q.head().map(|w| w.id), Some(2));
    }
}
