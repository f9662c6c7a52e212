//! The per-user push backlog, as a plain data structure: sequence numbers,
//! the last pushes kept for replay, and what a reconnecting client must be
//! sent (see [`crate::wire`] for the packages).
//!
//! Pushes of one session are numbered 1, 2, 3… without gaps. The backlog
//! keeps the most recent ones, bounded both by count and by payload bytes,
//! and drops the oldest first; what it keeps is always a contiguous run
//! ending at the last push, so only the payloads are stored (a push to
//! every user shares one payload allocation between all their backlogs).

use std::collections::VecDeque;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A session's pushes: the last sequence number and the kept payloads.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PushBacklog {
    /// The last sequence number assigned (0 before the first push).
    last_seq: u32,
    /// Payloads of pushes `last_seq - kept.len() + 1 ..= last_seq`.
    kept: VecDeque<Bytes>,
    /// Sum of the kept payloads' lengths.
    bytes: usize,
}

/// The client claims to have seen a push the session never made (it
/// mixed up sessions): refused, since replaying "nothing" would make it
/// drop the next pushes as duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AheadOfBacklog;

/// What a client that has seen pushes up to some number must be sent.
#[derive(Debug)]
pub struct Replay<'a> {
    /// `Some(n)`: pushes after the client's last seen up to `n` were
    /// dropped from the backlog; the client is told so before the rest.
    pub lost_through: Option<u32>,
    /// Sequence number of the first push of `payloads`.
    pub first_seq: u32,
    /// The kept pushes the client has not seen, oldest first.
    pub payloads: std::collections::vec_deque::Iter<'a, Bytes>,
}

impl Replay<'_> {
    /// The pushes to send, as `(seq, payload)`, oldest first.
    pub fn pushes(self) -> impl Iterator<Item = (u32, Bytes)> {
        let first = self.first_seq;
        self.payloads
            .cloned()
            .zip(0u32..)
            .map(move |(payload, i)| (first.wrapping_add(i), payload))
    }
}

impl PushBacklog {
    /// An empty backlog (no allocation until the first push).
    pub fn new() -> PushBacklog {
        PushBacklog::default()
    }

    /// Records a push and returns its sequence number, then drops the
    /// oldest kept pushes until at most `max_count` are kept and their
    /// payloads total at most `max_bytes` (the new one may go at once if
    /// it alone is larger). `None` once 2^32 − 1 pushes were made.
    pub fn push(&mut self, payload: Bytes, max_count: usize, max_bytes: usize) -> Option<u32> {
        let seq = self.last_seq.checked_add(1)?;
        self.last_seq = seq;
        self.bytes += payload.len();
        self.kept.push_back(payload);
        while self.kept.len() > max_count || self.bytes > max_bytes {
            match self.kept.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
        if self.kept.is_empty() && self.kept.capacity() > 0 {
            // A backlog of 0 keeps no allocation either.
            self.kept = VecDeque::new();
        }
        Some(seq)
    }

    /// What to send a client that has seen every push up to `last_seen`.
    pub fn replay(&self, last_seen: u32) -> Result<Replay<'_>, AheadOfBacklog> {
        if last_seen > self.last_seq {
            return Err(AheadOfBacklog);
        }
        let first_kept = self.first_kept();
        let wanted = u64::from(last_seen) + 1;
        let (lost_through, skip) = if wanted < first_kept {
            (u32::try_from(first_kept - 1).ok(), 0)
        } else {
            (
                None,
                usize::try_from(wanted - first_kept).unwrap_or(usize::MAX),
            )
        };
        let mut payloads = self.kept.iter();
        if skip > 0 {
            payloads.nth(skip - 1);
        }
        Ok(Replay {
            lost_through,
            first_seq: last_seen.max(lost_through.unwrap_or(0)).wrapping_add(1),
            payloads,
        })
    }

    /// The last sequence number assigned (0 before the first push).
    pub fn last_seq(&self) -> u32 {
        self.last_seq
    }

    /// Number of pushes kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether no push is kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Payload bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The sequence number of the oldest kept push (`last_seq + 1` when
    /// none is kept), as a `u64` so `u32::MAX + 1` fits.
    fn first_kept(&self) -> u64 {
        u64::from(self.last_seq) + 1 - self.kept.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    fn replayed(b: &PushBacklog, last_seen: u32) -> (Option<u32>, Vec<(u32, String)>) {
        let r = b.replay(last_seen).unwrap();
        let lost = r.lost_through;
        let pushes = r
            .pushes()
            .map(|(seq, payload)| (seq, String::from_utf8(payload.to_vec()).unwrap()))
            .collect();
        (lost, pushes)
    }

    fn seqs(b: &PushBacklog, last_seen: u32) -> (Option<u32>, Vec<u32>) {
        let (lost, pushes) = replayed(b, last_seen);
        (lost, pushes.into_iter().map(|(s, _)| s).collect())
    }

    #[test]
    fn numbers_from_one_and_replays_in_order() {
        let mut b = PushBacklog::new();
        assert_eq!(seqs(&b, 0), (None, vec![]));
        for (i, text) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(b.push(p(text), 64, 1 << 16), Some(i as u32 + 1));
        }
        assert_eq!(
            replayed(&b, 0),
            (
                None,
                vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]
            )
        );
        assert_eq!(replayed(&b, 2), (None, vec![(3, "c".into())]));
        assert_eq!(replayed(&b, 3), (None, vec![]));
        assert_eq!(b.replay(4).unwrap_err(), AheadOfBacklog);
    }

    #[test]
    fn count_cap_drops_oldest_and_reports_the_gap() {
        let mut b = PushBacklog::new();
        for i in 1..=10u32 {
            assert_eq!(b.push(p(&i.to_string()), 4, 1 << 16), Some(i));
        }
        assert_eq!(b.len(), 4);
        // 7..=10 kept.
        assert_eq!(seqs(&b, 6), (None, vec![7, 8, 9, 10]));
        assert_eq!(seqs(&b, 8), (None, vec![9, 10]));
        // 6 was dropped: lost through 6, then 7..=10.
        assert_eq!(seqs(&b, 5), (Some(6), vec![7, 8, 9, 10]));
        assert_eq!(seqs(&b, 0), (Some(6), vec![7, 8, 9, 10]));
        assert_eq!(
            replayed(&b, 0).1.first(),
            Some(&(7, "7".to_owned())),
            "payload matches its number"
        );
    }

    #[test]
    fn byte_cap_drops_oldest() {
        let mut b = PushBacklog::new();
        b.push(p("aaaa"), 64, 10);
        b.push(p("bbbb"), 64, 10);
        assert_eq!((b.len(), b.bytes()), (2, 8));
        b.push(p("cccc"), 64, 10);
        assert_eq!((b.len(), b.bytes()), (2, 8));
        assert_eq!(seqs(&b, 0), (Some(1), vec![2, 3]));
        // A push larger than the cap is numbered but not kept.
        assert_eq!(b.push(p("0123456789ab"), 64, 10), Some(4));
        assert_eq!((b.len(), b.bytes()), (0, 0));
        assert_eq!(seqs(&b, 2), (Some(4), vec![]));
        assert_eq!(seqs(&b, 4), (None, vec![]));
    }

    #[test]
    fn zero_backlog_keeps_nothing_but_numbers() {
        let mut b = PushBacklog::new();
        assert_eq!(b.push(p("x"), 0, 1 << 16), Some(1));
        assert_eq!(b.push(p("y"), 0, 1 << 16), Some(2));
        assert!(b.is_empty());
        assert_eq!(b.kept.capacity(), 0);
        assert_eq!(seqs(&b, 0), (Some(2), vec![]));
        assert_eq!(seqs(&b, 1), (Some(2), vec![]));
        assert_eq!(seqs(&b, 2), (None, vec![]));
        assert_eq!(b.last_seq(), 2);
    }

    #[test]
    fn sequence_numbers_never_wrap() {
        let mut b = PushBacklog {
            last_seq: u32::MAX - 1,
            ..PushBacklog::default()
        };
        assert_eq!(b.push(p("last"), 4, 100), Some(u32::MAX));
        assert_eq!(b.push(p("more"), 4, 100), None);
        assert_eq!(b.last_seq(), u32::MAX);
        assert_eq!(seqs(&b, u32::MAX - 1), (None, vec![u32::MAX]));
        assert_eq!(seqs(&b, 0), (Some(u32::MAX - 1), vec![u32::MAX]));
        assert_eq!(seqs(&b, u32::MAX), (None, vec![]));
    }
}
