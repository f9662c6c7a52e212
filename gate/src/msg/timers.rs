//! The gate's one timer facility: every reconnect-window deadline and every
//! idle deadline of the gate in one [`DelayQueue`], served by one task,
//! instead of a task or a `Sleep` per user.
//!
//! Timers are lazy: an entry only says "look at this session (connection)
//! at this time". Whoever it names checks its own deadline when it fires
//! and re-arms if it moved, so nothing is ever removed from the queue and a
//! stale entry is a no-op. Callers add an entry only when the new deadline
//! is earlier than the one already armed, which keeps about one entry per
//! session or connection.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::handle::ms_since;

/// See the module docs; `T` says what an entry names.
#[derive(Debug)]
pub(crate) struct Timers<T> {
    queue: Mutex<DelayQueue<T>>,
    /// The origin of [`ConnHandle::note_input`]'s milliseconds.
    epoch: Instant,
}

impl<T> Timers<T> {
    pub(crate) fn new() -> Timers<T> {
        Timers {
            queue: Mutex::new(DelayQueue::new()),
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DelayQueue<T>> {
        // One insert or one pop per critical section: never inconsistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Arms `timer` for `when`.
    pub(crate) fn at(&self, when: Instant, timer: T) {
        self.lock().insert_at(timer, when);
    }

    /// Milliseconds since the facility's epoch (for idle bookkeeping).
    pub(crate) fn ms(&self, now: Instant) -> u64 {
        ms_since(self.epoch, now)
    }

    /// The instant `ms` milliseconds after the epoch.
    pub(crate) fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Entries armed (live or stale).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Fires entries as they come due, calling `fire` with the entry and
    /// the time, until `stop` is cancelled. Never holds the queue's lock
    /// while `fire` runs.
    pub(crate) async fn run(&self, stop: CancellationToken, fire: impl Fn(T, Instant)) {
        loop {
            let next = std::future::poll_fn(|cx| match self.lock().poll_expired(cx) {
                Poll::Ready(Some(expired)) => Poll::Ready(expired.into_inner()),
                // Empty: the queue keeps the waker and an insert wakes it.
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            });
            let timer = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                timer = next => timer,
            };
            fire(timer, Instant::now());
        }
    }
}
