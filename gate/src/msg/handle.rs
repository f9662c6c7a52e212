//! [`ConnHandle`]: the shared half of one authenticated connection — how
//! the rest of the gate wakes its task, asks it to close, and waits for it
//! to be closed.
//!
//! The wake-up is an atomic flag plus an [`AtomicWaker`] rather than a
//! `Notify`: polling it needs no lock and no waiter stored in the task, and
//! the task of every idle connection waits on it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::task::AtomicWaker;
use tokio::sync::Notify;

use crate::session::{self, Conn, ConnId};

/// Why another party wants a connection task to stop; a stronger cause
/// (higher value) replaces a weaker one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum CloseCause {
    /// Keep going.
    Open = 0,
    /// Gate shutdown: stop reading, finish in-flight requests, then close.
    Drain = 1,
    /// Nothing received within the idle timeout.
    Idle = 2,
    /// A newer connection of the same user completed its handshake.
    Superseded = 3,
    /// Pushes queued for it exceeded the send queue limit.
    SlowReader = 4,
    /// The session ended (logout, kick, expiry, shutdown).
    SessionEnded = 5,
    /// Shutdown grace is over: close now.
    ShutdownNow = 6,
}

impl CloseCause {
    fn from_u8(v: u8) -> CloseCause {
        match v {
            1 => CloseCause::Drain,
            2 => CloseCause::Idle,
            3 => CloseCause::Superseded,
            4 => CloseCause::SlowReader,
            5 => CloseCause::SessionEnded,
            6 => CloseCause::ShutdownNow,
            _ => CloseCause::Open,
        }
    }
}

impl From<session::Close> for CloseCause {
    fn from(close: session::Close) -> CloseCause {
        match close {
            session::Close::Superseded => CloseCause::Superseded,
            session::Close::SlowReader => CloseCause::SlowReader,
            session::Close::SessionEnded => CloseCause::SessionEnded,
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    pub(crate) id: ConnId,
    /// The client opted in to the extensions (which idle timeout applies).
    pub(crate) ext: bool,
    /// Packages to write before closing because the session ended (what
    /// was still queued, then the kick package); set once.
    farewell: OnceLock<Bytes>,
    /// Something to do: outbox not empty, or a close was requested.
    woken: AtomicBool,
    waker: AtomicWaker,
    close: AtomicU8,
    finished: AtomicBool,
    done: Notify,
    /// When the client last sent something, as a tick of the gate's timers
    /// (they read it; only connections with an idle timeout write it).
    last_input: AtomicU32,
}

impl Conn for std::sync::Arc<ConnHandle> {
    fn id(&self) -> ConnId {
        self.id
    }
}

impl ConnHandle {
    pub(crate) fn new(id: ConnId, ext: bool) -> ConnHandle {
        ConnHandle {
            id,
            ext,
            farewell: OnceLock::new(),
            woken: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            close: AtomicU8::new(CloseCause::Open as u8),
            finished: AtomicBool::new(false),
            done: Notify::new(),
            last_input: AtomicU32::new(0),
        }
    }

    /// Wakes the connection's task (it then checks its close cause and its
    /// outbox).
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

    /// Asks the task to close for `cause`. A stronger cause replaces a
    /// weaker one (`Drain` only applies to an open connection).
    pub(crate) fn close(&self, cause: CloseCause) {
        let new = cause as u8;
        let _ = self
            .close
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                (old < new && !(cause == CloseCause::Drain && old != 0)).then_some(new)
            });
        self.wake();
    }

    /// Closes after writing `farewell` (the session ended).
    pub(crate) fn close_with(&self, cause: CloseCause, farewell: Option<Bytes>) {
        if let Some(farewell) = farewell {
            let _ = self.farewell.set(farewell);
        }
        self.close(cause);
    }

    pub(crate) fn close_cause(&self) -> CloseCause {
        CloseCause::from_u8(self.close.load(Ordering::Acquire))
    }

    /// The packages to write before the close, if the session ended.
    pub(crate) fn farewell(&self) -> Option<&Bytes> {
        self.farewell.get()
    }

    /// Notes input at `tick` (of the gate's timers).
    pub(crate) fn note_input(&self, tick: u32) {
        self.last_input.store(tick, Ordering::Relaxed);
    }

    /// When the client last sent something (see [`ConnHandle::note_input`]).
    pub(crate) fn last_input(&self) -> u32 {
        self.last_input.load(Ordering::Relaxed)
    }

    /// Called by the task when its socket is closed.
    pub(crate) fn set_finished(&self) {
        self.finished.store(true, Ordering::Release);
        self.done.notify_waiters();
    }

    /// Resolves once the task has closed the socket.
    pub(crate) async fn finished(&self) {
        let notified = self.done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}
