//! Links that have not proved the link secret yet (backend service links,
//! cluster control links), kept apart from the authenticated ones.
//!
//! Anyone who reaches a link listener can open connections that never
//! prove anything. Counted against `max_links`, a few hundred of them held
//! and refilled keep every real service out. So a link starts in a small
//! pending budget of its own ([`PendingLinks`]), bounded per source
//! address, and only moves to the authenticated bound once its proof
//! checks. Every refusal is counted by cause (bounded labels, for the
//! metrics) and written as one summary line per second at most
//! ([`Refusals::flush`]), never one line each: a flood must not turn into
//! a flood of log.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::net::{PerSource, SourceSlot};

/// How often the refusals of one listener are summarised in the log.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// Why a link was refused or closed before it proved the secret. The
/// names are the metric's `cause` label, so the set is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Every pending slot was taken: closed at accept.
    PendingFull,
    /// Its source address had its pending links already: closed at accept.
    PerSource,
    /// No proof (or no TLS handshake) within the deadline.
    Deadline,
    /// The TLS handshake failed.
    Tls,
    /// A missing or wrong proof of the secret, or a broken first frame.
    Unauthenticated,
    /// Authenticated, but every authenticated slot (`max_links`) was taken.
    MaxLinks,
}

impl Cause {
    /// Every cause, in the order of [`Refusals::totals`].
    pub const ALL: [Cause; 6] = [
        Cause::PendingFull,
        Cause::PerSource,
        Cause::Deadline,
        Cause::Tls,
        Cause::Unauthenticated,
        Cause::MaxLinks,
    ];

    /// The metric label and log field name.
    pub fn name(self) -> &'static str {
        match self {
            Cause::PendingFull => "pending_full",
            Cause::PerSource => "per_source",
            Cause::Deadline => "deadline",
            Cause::Tls => "tls",
            Cause::Unauthenticated => "unauthenticated",
            Cause::MaxLinks => "max_links",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Refusals of one listener: totals since start (for the metrics) and the
/// counts of the current summary window (for the log).
#[derive(Debug)]
pub struct Refusals {
    listener: &'static str,
    totals: [AtomicU64; Cause::ALL.len()],
    window: Mutex<[u64; Cause::ALL.len()]>,
}

impl Refusals {
    /// The refusals of the listener named `listener` in the log.
    pub fn new(listener: &'static str) -> Arc<Refusals> {
        Arc::new(Refusals {
            listener,
            totals: Default::default(),
            window: Mutex::new([0; Cause::ALL.len()]),
        })
    }

    /// Counts one refusal; it reaches the log with the next summary.
    pub fn count(&self, cause: Cause) {
        self.totals[cause.index()].fetch_add(1, Ordering::Relaxed);
        self.window.lock().unwrap_or_else(PoisonError::into_inner)[cause.index()] += 1;
    }

    /// Refusals since start, by cause.
    pub fn totals(&self) -> [(&'static str, u64); Cause::ALL.len()] {
        Cause::ALL.map(|c| (c.name(), self.totals[c.index()].load(Ordering::Relaxed)))
    }

    /// Writes one line for the refusals counted since the last call, if
    /// there were any; returns how many it reported.
    pub fn flush(&self) -> u64 {
        let window =
            std::mem::take(&mut *self.window.lock().unwrap_or_else(PoisonError::into_inner));
        let refused: u64 = window.iter().sum();
        if refused > 0 {
            let n = |c: Cause| window[c.index()];
            warn!(
                listener = self.listener,
                refused,
                pending_full = n(Cause::PendingFull),
                per_source = n(Cause::PerSource),
                deadline = n(Cause::Deadline),
                tls = n(Cause::Tls),
                unauthenticated = n(Cause::Unauthenticated),
                max_links = n(Cause::MaxLinks),
                "refused {refused} unauthenticated links in the last second"
            );
        }
        refused
    }

    /// Summarises every [`SUMMARY_EVERY`] until `stop`, then once more so
    /// the last refusals are not lost.
    pub async fn summarise(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(SUMMARY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => { self.flush(); }
            }
        }
        self.flush();
    }
}

/// The budget of links that have not proved the secret yet.
#[derive(Debug)]
pub struct PendingLinks {
    budget: Arc<Semaphore>,
    per_source: Arc<PerSource>,
    refusals: Arc<Refusals>,
}

/// One pending link's place; given back when the link authenticates (it
/// then holds an authenticated slot instead) or ends.
#[derive(Debug)]
pub struct PendingSlot {
    _budget: OwnedSemaphorePermit,
    _source: SourceSlot,
}

impl PendingLinks {
    /// At most `max` pending links, `per_source` of them from one address
    /// (0: no per-address bound), refusals counted in `refusals`.
    pub fn new(max: usize, per_source: usize, refusals: Arc<Refusals>) -> PendingLinks {
        PendingLinks {
            budget: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            per_source: PerSource::new(per_source),
            refusals,
        }
    }

    /// The budget's semaphore, for an accept loop that takes the permit
    /// before `accept`.
    pub fn budget(&self) -> Arc<Semaphore> {
        Arc::clone(&self.budget)
    }

    /// The refusal counters.
    pub fn refusals(&self) -> &Arc<Refusals> {
        &self.refusals
    }

    /// Admits a connection from `ip` that came with `permit` from
    /// [`PendingLinks::budget`] (none: the budget was full), or counts its
    /// refusal; the caller closes a refused connection at once.
    pub fn admit(&self, ip: IpAddr, permit: Option<OwnedSemaphorePermit>) -> Option<PendingSlot> {
        let Some(permit) = permit else {
            self.refusals.count(Cause::PendingFull);
            return None;
        };
        let Ok(source) = self.per_source.enter(ip) else {
            self.refusals.count(Cause::PerSource);
            return None;
        };
        Some(PendingSlot {
            _budget: permit,
            _source: source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_is_bounded_overall_and_per_source() {
        let pending = PendingLinks::new(3, 2, Refusals::new("test"));
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let take = || pending.budget().try_acquire_owned().ok();
        let first = pending.admit(a, take()).expect("first");
        let _second = pending.admit(a, take()).expect("second");
        assert!(pending.admit(a, take()).is_none(), "third from one address");
        let _third = pending.admit(b, take()).expect("another address");
        assert!(pending.admit(b, take()).is_none(), "budget full");
        drop(first);
        assert!(pending.admit(a, take()).is_some(), "a slot given back");
        let totals = pending.refusals().totals();
        assert_eq!(totals[0], ("pending_full", 1));
        assert_eq!(totals[1], ("per_source", 1));
        assert_eq!(pending.refusals().flush(), 2);
        assert_eq!(pending.refusals().flush(), 0, "the window starts again");
    }
}
