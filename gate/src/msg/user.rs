//! One logged-in user (skynet's per-username state, spec §5.1) and the link
//! between it and its current connection.
//!
//! The state sits behind a mutex of its own, so there is no global lock on
//! the request path: the connection task holds an `Arc<User>` after the
//! handshake and takes this user's lock only, briefly, to classify a request
//! and to store its response. Completions from other tasks (a backend
//! answering later) take the same lock, queue the response in the bound
//! connection's outbox and wake that connection's task. Pushes take the
//! same path, and are also kept in the user's [`PushBacklog`] for replay.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use codec::message::{LuaNumber, Response, ResponseFlag};
use codec::package::HEADER_LEN;
use futures::task::AtomicWaker;
use loginproto::handshake::SessionSecret;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::Shared;
use super::cache::{ConnId, ExecId, ResponseCache};
use super::push::PushBacklog;
use super::response_package;
use crate::link::EndReason;

/// Why another party wants a connection task to stop (stored in
/// [`ConnLink`]; the task reads it when woken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum CloseCause {
    /// Keep going.
    Open = 0,
    /// Gate shutdown: stop reading, finish in-flight requests, then close.
    Drain = 1,
    /// A newer connection of the same user completed its handshake.
    Superseded = 2,
    /// Pushes queued for it exceeded the send queue limit: the client does
    /// not read. Closed at once.
    SlowReader = 3,
    /// The session ended (logout, kick, expiry, shutdown).
    SessionEnded = 4,
    /// Shutdown grace is over: close now.
    ShutdownNow = 5,
}

impl CloseCause {
    fn from_u8(v: u8) -> CloseCause {
        match v {
            1 => CloseCause::Drain,
            2 => CloseCause::Superseded,
            3 => CloseCause::SlowReader,
            4 => CloseCause::SessionEnded,
            5 => CloseCause::ShutdownNow,
            _ => CloseCause::Open,
        }
    }
}

/// The shared half of one authenticated connection: how the rest of the
/// gate wakes its task and asks it to close, and how a kick waits for it.
///
/// The wake-up is an atomic flag plus an [`AtomicWaker`] rather than a
/// `Notify`: polling it needs no lock and no waiter stored in the task, and
/// the task of every idle connection waits on it.
#[derive(Debug)]
pub(crate) struct ConnLink {
    pub(crate) id: ConnId,
    /// The client opted in to the extensions (handshake ext field): it may
    /// be sent pushes, kick packages and heartbeat answers.
    pub(crate) ext: bool,
    /// Packages to write before closing because the session ended (what
    /// was still in the outbox, then the kick package); set once, by
    /// [`super::Shared::end_session`], only for an opted-in connection.
    farewell: OnceLock<Bytes>,
    /// Something to do: outbox not empty, or a close was requested.
    woken: AtomicBool,
    waker: AtomicWaker,
    close: AtomicU8,
    finished: AtomicBool,
    done: Notify,
}

impl ConnLink {
    pub(crate) fn new(id: ConnId, ext: bool) -> ConnLink {
        ConnLink {
            id,
            ext,
            farewell: OnceLock::new(),
            woken: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            close: AtomicU8::new(CloseCause::Open as u8),
            finished: AtomicBool::new(false),
            done: Notify::new(),
        }
    }

    /// Wakes the connection's task (it then checks its close cause and
    /// its outbox).
    pub(crate) fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once after each [`ConnLink::wake`].
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

    pub(crate) fn close_cause(&self) -> CloseCause {
        CloseCause::from_u8(self.close.load(Ordering::Acquire))
    }

    /// Stores the packages to write before the close (first call wins).
    pub(crate) fn set_farewell(&self, packages: Bytes) {
        let _ = self.farewell.set(packages);
    }

    /// The packages to write before the close, if the session ended.
    pub(crate) fn farewell(&self) -> Option<&Bytes> {
        self.farewell.get()
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

/// Something another task queued for a connection.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A complete package (a response).
    Package(Bytes),
    /// A push, framed when written: the payload is shared with the user's
    /// backlog (and, for a push to all, with every other user's).
    Push { seq: u32, payload: Bytes },
}

impl Outgoing {
    /// Bytes it takes on the wire.
    pub(crate) fn wire_len(&self) -> usize {
        match self {
            Outgoing::Package(package) => package.len(),
            Outgoing::Push { payload, .. } => push_wire_len(payload.len()),
        }
    }

    /// Appends it to `out`.
    pub(crate) fn write_to(&self, out: &mut BytesMut) {
        match self {
            Outgoing::Package(package) => out.extend_from_slice(package),
            Outgoing::Push { seq, payload } => {
                write_flagged(out, payload, ResponseFlag::PUSH, *seq);
            }
        }
    }
}

/// Wire size of a push (or kick) package with a `len`-byte payload.
pub(crate) fn push_wire_len(len: usize) -> usize {
    HEADER_LEN + len + 5
}

/// Appends `content ‖ flag ‖ BE32(session)` as one package. The callers
/// check the content fits ([`codec::message::MAX_RESPONSE_CONTENT`]); a
/// content that does not is left out rather than framed wrongly.
pub(crate) fn write_flagged(out: &mut BytesMut, content: &[u8], flag: ResponseFlag, session: u32) {
    if Response::encode(content, flag, session, out).is_err() {
        tracing::warn!(len = content.len(), "package does not fit: not sent");
    }
}

/// The connection a session is bound to, with the responses and pushes
/// waiting for its task to pick them up.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) link: Arc<ConnLink>,
    pub(crate) outbox: Vec<Outgoing>,
    /// Wire bytes in `outbox`: a push that would take it past the send
    /// queue limit cuts the connection instead (the client is not reading).
    pub(crate) outbox_bytes: usize,
}

impl Bound {
    pub(crate) fn new(link: Arc<ConnLink>) -> Bound {
        Bound {
            link,
            outbox: Vec::new(),
            outbox_bytes: 0,
        }
    }

    /// Queues `item` and wakes the connection's task.
    pub(crate) fn queue(&mut self, item: Outgoing) {
        self.outbox_bytes += item.wire_len();
        self.outbox.push(item);
        self.link.wake();
    }
}

/// Mutable per-user state (spec §5.1).
#[derive(Debug)]
pub(crate) struct UserState {
    /// Last accepted handshake index (skynet's `version`), initially 0.
    pub(crate) version: LuaNumber,
    pub(crate) cache: ResponseCache,
    /// Push numbers and the pushes kept for replay; lives as long as the
    /// session, across connections.
    pub(crate) pushes: PushBacklog,
    pub(crate) bound: Option<Bound>,
    /// Handlers running (including orphaned ones).
    pub(crate) inflight: u32,
    pub(crate) ended: bool,
    /// Bumped on every bind/unbind, so a stale away timer does nothing.
    pub(crate) away_gen: u64,
    pub(crate) away_timer: Option<AbortHandle>,
}

impl UserState {
    /// Whether `id` is the connection this session is bound to.
    pub(crate) fn is_bound_to(&self, id: ConnId) -> bool {
        self.bound.as_ref().is_some_and(|b| b.link.id == id)
    }
}

/// A logged-in user.
#[derive(Debug)]
pub(crate) struct User {
    pub(crate) uid: Bytes,
    pub(crate) subid: Bytes,
    pub(crate) username: Bytes,
    pub(crate) secret: SessionSecret,
    gate: Weak<Shared>,
    state: Mutex<UserState>,
}

impl User {
    pub(crate) fn new(
        gate: Weak<Shared>,
        uid: Bytes,
        subid: Bytes,
        username: Bytes,
        secret: SessionSecret,
        expired_number: u32,
    ) -> User {
        User {
            uid,
            subid,
            username,
            secret,
            gate,
            state: Mutex::new(UserState {
                version: LuaNumber::Int(0),
                cache: ResponseCache::new(expired_number),
                pushes: PushBacklog::new(),
                bound: None,
                inflight: 0,
                ended: false,
                away_gen: 0,
                away_timer: None,
            }),
        }
    }

    /// Locks the state. Every critical section leaves it consistent, so a
    /// poisoned lock (a panic elsewhere) is still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, UserState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn gate(&self) -> Option<Arc<Shared>> {
        self.gate.upgrade()
    }

    pub(crate) fn is_active(&self) -> bool {
        !self.lock().ended
    }

    /// A handler finished (from a [`crate::agent::Completer`], any task).
    pub(crate) fn complete(&self, session: u32, exec: ExecId, result: Result<Bytes, String>) {
        let package = response_package(session, result, &self.uid);
        // No calling connection: the response goes to the outbox of the
        // bound connection, or stays cached.
        complete_locked(&mut self.lock(), session, exec, package, None);
    }

    /// Ends the session (see [`Shared::end_session`]).
    pub(crate) fn end(self: &Arc<Self>, reason: EndReason) {
        if let Some(gate) = self.gate() {
            gate.end_session(self, reason);
        }
    }
}

/// Stores a handler's result and routes the response (spec §5.5 + fixes).
///
/// `me` is the calling connection task's id and write buffer, if the caller
/// is one: a response for it is copied straight into that buffer (no
/// second copy of the package is kept). A response for another connection
/// goes to the bound connection's outbox, whose task is woken.
pub(crate) fn complete_locked(
    st: &mut UserState,
    session: u32,
    exec: ExecId,
    package: Bytes,
    me: Option<(ConnId, &mut BytesMut)>,
) {
    st.inflight = st.inflight.saturating_sub(1);
    if st.ended {
        return;
    }
    let live = st.bound.as_ref().map(|b| b.link.id);
    let Some(delivery) = st.cache.complete(session, exec, package, live) else {
        return;
    };
    if delivery.late {
        tracing::debug!(
            session,
            conn = delivery.conn,
            "late response delivered to the newest connection"
        );
    }
    match me {
        Some((id, out)) if id == delivery.conn => out.extend_from_slice(delivery.package),
        _ => {
            let package = delivery.package.clone();
            if let Some(bound) = st.bound.as_mut() {
                bound.queue(Outgoing::Package(package));
            }
        }
    }
}
