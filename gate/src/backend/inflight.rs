//! The requests in flight on one link, with their deadlines, without a
//! timer per request.
//!
//! Request ids are consecutive per link and every request of a link gets
//! the same timeout, so deadlines are in id order. The requests are a ring
//! (`VecDeque`) indexed by `id - base`: sending is a push at the back,
//! matching an answer is an index, and the front always holds the earliest
//! deadline, so one timer per link (armed for the front) finds every
//! expired request by popping from the front. Answered entries are popped as
//! soon as they reach the front, so on a healthy link the ring is about as
//! long as the number of requests in flight.

use std::collections::VecDeque;

use tokio::time::Instant;

/// One request of the ring: its deadline, and what its answer goes to.
struct Entry<T> {
    deadline: Instant,
    /// `None` once answered (the entry waits to reach the front).
    value: Option<T>,
}

/// Requests in flight, in id order. Ids start at 1 (0 means "no request"
/// to a service).
pub(crate) struct Inflight<T> {
    ring: VecDeque<Entry<T>>,
    /// The id of `ring[0]`.
    base: u64,
    /// Entries still waiting for an answer.
    waiting: usize,
}

impl<T> Inflight<T> {
    pub(crate) fn new() -> Inflight<T> {
        Inflight {
            ring: VecDeque::new(),
            base: 1,
            waiting: 0,
        }
    }

    /// Requests waiting for an answer.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// The id the next [`Inflight::push`] will get.
    pub(crate) fn next_id(&self) -> u64 {
        self.base + self.ring.len() as u64
    }

    /// Adds a request; its id is the [`Inflight::next_id`] before the call.
    /// `deadline` must not be earlier than those already in (equal
    /// timeouts, taken in order).
    pub(crate) fn push(&mut self, deadline: Instant, value: T) -> u64 {
        let id = self.next_id();
        self.ring.push_back(Entry {
            deadline,
            value: Some(value),
        });
        self.waiting += 1;
        id
    }

    /// Takes the request `id` out, if it is still waiting.
    #[cfg(test)]
    pub(crate) fn take(&mut self, id: u64) -> Option<T> {
        self.take_with_deadline(id).map(|(_, value)| value)
    }

    /// [`Inflight::take`], with the request's deadline.
    pub(crate) fn take_with_deadline(&mut self, id: u64) -> Option<(Instant, T)> {
        let taken = id
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.ring.get_mut(i))
            .and_then(|entry| Some((entry.deadline, entry.value.take()?)));
        if taken.is_some() {
            self.waiting -= 1;
        }
        while self.ring.front().is_some_and(|s| s.value.is_none()) {
            self.ring.pop_front();
            self.base += 1;
        }
        taken
    }

    /// Takes every request whose deadline is at or before `now`, with its
    /// id, oldest first.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(u64, T)> {
        let mut expired = Vec::new();
        loop {
            match self.ring.front() {
                None => break,
                Some(entry) if entry.value.is_some() && entry.deadline > now => break,
                Some(_) => {}
            }
            let id = self.base;
            self.base += 1;
            if let Some(Entry {
                value: Some(value), ..
            }) = self.ring.pop_front()
            {
                self.waiting -= 1;
                expired.push((id, value));
            }
        }
        expired
    }

    /// The earliest deadline of a waiting request.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.ring
            .iter()
            .find(|s| s.value.is_some())
            .map(|s| s.deadline)
    }

    /// Takes every waiting request, oldest first; ids go on from where
    /// they were.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.base = self.next_id();
        self.waiting = 0;
        self.ring.drain(..).filter_map(|s| s.value).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn answers_match_by_id_and_the_ring_stays_short() {
        let now = Instant::now();
        let mut inflight = Inflight::new();
        let ids: Vec<u64> = (0..5).map(|i| inflight.push(now, i)).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        assert_eq!(inflight.take(3), Some(2));
        assert_eq!(inflight.take(3), None, "answered twice");
        assert_eq!(inflight.ring.len(), 5, "a hole in the middle stays");
        assert_eq!(inflight.take(1), Some(0));
        assert_eq!(inflight.take(2), Some(1));
        assert_eq!(inflight.ring.len(), 2, "answered front entries are popped");
        assert_eq!(inflight.waiting(), 2);
        assert_eq!(inflight.take(0), None);
        assert_eq!(inflight.take(99), None);
        assert_eq!(inflight.next_id(), 6);
    }

    #[test]
    fn deadlines_expire_from_the_front_only() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut inflight = Inflight::new();
        for i in 0..4u64 {
            inflight.push(t0 + ms(100 * i), i);
        }
        assert_eq!(inflight.take(2), Some(1));
        assert_eq!(inflight.next_deadline(), Some(t0));
        assert!(inflight.expire(t0 - ms(1)).is_empty());
        // t0+250: ids 1 and 3 expire; 2 was answered.
        assert_eq!(inflight.expire(t0 + ms(250)), vec![(1, 0), (3, 2)]);
        assert_eq!(inflight.next_deadline(), Some(t0 + ms(300)));
        assert_eq!(inflight.waiting(), 1);
        // A late answer finds nothing.
        assert_eq!(inflight.take(1), None);
        assert_eq!(inflight.drain(), vec![3]);
        assert_eq!(inflight.waiting(), 0);
        assert_eq!(inflight.next_deadline(), None);
        assert_eq!(inflight.push(t0, 9), 5, "ids never repeat");
    }
}
