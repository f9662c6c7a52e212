//! [`ConnHandle`]: the shared half of one connection — how the rest of the
//! gate wakes its task, asks it to close, tells it a deadline came, and
//! waits for it to be closed.
//!
//! The wake-up is an atomic flag plus an [`AtomicWaker`] rather than a
//! `Notify`: polling it needs no lock and no waiter stored in the task, and
//! the task of every idle connection waits on it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::task::AtomicWaker;
use gate_core::End;
use gate_core::session::{ConnId, SharedConn};
use tokio::sync::Notify;

/// What another party asked of a connection's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Asked {
    /// Nothing: keep going.
    Nothing,
    /// Gate shutdown: stop reading, finish what was asked, then close.
    Drain,
    /// Close for this reason.
    Close(End),
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    pub(crate) id: ConnId,
    /// Something to do: outbox not empty, a deadline, or a close request.
    woken: AtomicBool,
    drain: AtomicBool,
    /// The task has closed the socket.
    finished: AtomicBool,
    /// The connection's deadline armed in the gate's timers, as a tick of
    /// the timers (0: none armed).
    timer_at: AtomicU32,
    waker: AtomicWaker,
    /// What only a connection asked to close, or waited for, needs: boxed,
    /// as most connections never get any of it (every idle connection
    /// carries the handle).
    closing: Mutex<Option<Box<Closing>>>,
}

/// The rarely used part of a [`ConnHandle`].
#[derive(Debug, Default)]
struct Closing {
    /// Why to close, once asked; the strongest reason wins
    /// ([`End::strength`]).
    end: Option<End>,
    /// Packages to write before closing because the session ended (what
    /// was still queued, then the kick package); set once.
    farewell: Option<Bytes>,
    /// Those waiting for the socket to be closed ([`ConnHandle::finished`]).
    done: Option<Arc<Notify>>,
}

impl SharedConn for ConnHandle {
    fn conn_id(&self) -> ConnId {
        self.id
    }
}

impl ConnHandle {
    pub(crate) fn new(id: ConnId) -> ConnHandle {
        ConnHandle {
            id,
            woken: AtomicBool::new(false),
            drain: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            timer_at: AtomicU32::new(0),
            waker: AtomicWaker::new(),
            closing: Mutex::new(None),
        }
    }

    /// Wakes the connection's task (it then checks what it was asked, its
    /// deadline and its outbox).
    pub(crate) fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once after each [`ConnHandle::wake`].
    pub(crate) fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Register first, then check: a wake in between is not lost.
        self.waker.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Asks the task to close for `end`; a stronger reason replaces a
    /// weaker one.
    pub(crate) fn close(&self, end: End) {
        self.close_with(end, None);
    }

    /// Closes after writing `farewell` (the session ended); the first
    /// farewell given is the one written.
    pub(crate) fn close_with(&self, end: End, farewell: Option<Bytes>) {
        {
            let mut closing = self.closing();
            let closing = closing.get_or_insert_with(Box::default);
            if closing.farewell.is_none() {
                closing.farewell = farewell;
            }
            if closing
                .end
                .as_ref()
                .is_none_or(|old| end.strength() > old.strength())
            {
                closing.end = Some(end);
            }
        }
        self.wake();
    }

    fn closing(&self) -> MutexGuard<'_, Option<Box<Closing>>> {
        self.closing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the task to drain (gate shutdown).
    pub(crate) fn drain(&self) {
        self.drain.store(true, Ordering::Release);
        self.wake();
    }

    /// What the task was asked.
    pub(crate) fn asked(&self) -> Asked {
        let closing = self.closing();
        match closing.as_ref().and_then(|c| c.end.as_ref()) {
            Some(end) => Asked::Close(end.clone()),
            None if self.drain.load(Ordering::Acquire) => Asked::Drain,
            None => Asked::Nothing,
        }
    }

    /// The packages to write before the close, if the session ended.
    pub(crate) fn farewell(&self) -> Option<Bytes> {
        self.closing().as_ref().and_then(|c| c.farewell.clone())
    }

    /// Whether a deadline at `tick` needs arming: none is armed, or the
    /// armed one is later. Notes it as armed if so.
    pub(crate) fn arm_at(&self, tick: u32) -> bool {
        self.timer_at
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |armed| {
                (armed == 0 || tick < armed).then_some(tick)
            })
            .is_ok()
    }

    /// Whether a deadline is armed for the connection in the gate's timers.
    pub(crate) fn armed(&self) -> bool {
        self.timer_at.load(Ordering::Acquire) != 0
    }

    /// Arms exactly the deadline at `tick` (0: none), whatever was armed:
    /// entries of the gate's timers for other ticks no longer wake the
    /// task. Whether an entry at `tick` needs adding.
    pub(crate) fn rearm_at(&self, tick: u32) -> bool {
        self.timer_at.swap(tick, Ordering::AcqRel) != tick && tick != 0
    }

    /// The gate's timers reached an entry for this connection's deadline
    /// at `tick`: if that is the deadline armed, it is no longer armed (the
    /// task re-arms what is still to come) and the task is woken to look
    /// at it. An entry for a deadline armed since then (an earlier one, or
    /// another by [`ConnHandle::rearm_at`]) wakes nobody.
    pub(crate) fn timer_fired(&self, tick: u32) {
        if self
            .timer_at
            .compare_exchange(tick, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake();
        }
    }

    /// Called by the task when its socket is closed.
    pub(crate) fn set_finished(&self) {
        self.finished.store(true, Ordering::Release);
        if let Some(done) = self.closing().as_ref().and_then(|c| c.done.as_ref()) {
            done.notify_waiters();
        }
    }

    /// Resolves once the task has closed the socket.
    pub(crate) async fn finished(&self) {
        let done = Arc::clone(
            self.closing()
                .get_or_insert_with(Box::default)
                .done
                .get_or_insert_with(Arc::default),
        );
        let notified = done.notified();
        tokio::pin!(notified);
        {
            // Enabled under the lock `set_finished` notifies under, after
            // setting the flag: either the flag is seen below, or the
            // waiter is woken.
            let _closing = self.closing();
            notified.as_mut().enable();
        }
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}
