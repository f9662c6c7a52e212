//! The driver of the sessions: the gate's tables of [`User`]s (one
//! [`Session`] each, behind its own lock), and the one place that carries
//! out what a session asks for ([`GateCore::perform`]).
//!
//! Every operation has the same shape: lock the user, call its session with
//! `now`, re-arm its timer, release, then perform the effects (close or
//! wake a connection, tell the agent, unregister, report to the login
//! server). No call into the agent or the login server happens under a lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::{Bytes, BytesMut};
use codec::message::Handshake;
use loginproto::handshake::{self, SessionSecret};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handle::{CloseCause, ConnHandle};
use super::metrics::{EndCause, Metrics, bump};
use super::timers::Timers;
use crate::agent::{Agent, RequestError, SessionCtx, SessionHandle};
use crate::config::GateConfig;
use crate::logging::esc;
use crate::login::placement::{EndReason, LoginLink};
use crate::session::{
    Completion, Effect, ExecId, HandshakeRefusal, Limits, PushRefused, Session, SessionEvent,
    check_handshake,
};
use crate::shard::ShardedMap;
use crate::wire;

/// What an entry of the gate's timers names.
#[derive(Debug)]
pub(crate) enum Timer {
    /// A session's deadline ([`Session::poll_timeout`]).
    Session(Weak<User>),
    /// A connection's idle deadline: closed if it sent nothing for its
    /// idle timeout.
    Idle(Weak<ConnHandle>),
}

/// A session's lock holds the session and its armed timer.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) session: Session<Arc<ConnHandle>>,
    /// The earliest deadline armed in the gate's timers for this session,
    /// as a tick of the timers (0: none).
    timer_at: u32,
}

/// One logged-in user: who it is, and its session.
#[derive(Debug)]
pub(crate) struct User {
    pub(crate) uid: Bytes,
    pub(crate) subid: Bytes,
    pub(crate) username: Bytes,
    /// The username with the name the client logged in with, when the
    /// authenticator gave it another uid (the client signs with that one).
    alias: Option<Bytes>,
    pub(crate) secret: SessionSecret,
    core: Weak<GateCore>,
    /// The gate's counters (a user's responses are counted as they are
    /// made, without reaching the gate through `core`).
    metrics: Arc<Metrics>,
    slot: Mutex<Slot>,
}

impl User {
    /// Locks the session. Every critical section leaves it consistent, so a
    /// poisoned lock (a panic elsewhere) is still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn core(&self) -> Option<Arc<GateCore>> {
        self.core.upgrade()
    }
}

impl SessionHandle for User {
    fn uid(&self) -> &Bytes {
        &self.uid
    }

    fn subid(&self) -> &Bytes {
        &self.subid
    }

    fn username(&self) -> &Bytes {
        &self.username
    }

    fn is_active(&self) -> bool {
        !self.lock().session.is_ended()
    }

    fn end(&self, reason: EndReason) {
        if let Some(core) = self.core() {
            core.end_by_handle(self, reason);
        }
    }

    fn push(&self, payload: Bytes) -> Result<u32, PushRefused> {
        match self.core() {
            Some(core) => core.push_to(self, payload),
            None => Err(PushRefused::Ended),
        }
    }

    fn complete(&self, session: u32, exec: ExecId, result: Result<Bytes, RequestError>) {
        let package = response_package(self, session, result);
        let completion = self.lock().session.complete(session, exec, package, None);
        if let Completion::Wake(conn) = completion {
            conn.wake();
        }
    }
}

/// The response package of a handler's result; errors are logged here.
pub(crate) fn response_package(
    user: &User,
    session: u32,
    result: Result<Bytes, RequestError>,
) -> Bytes {
    match &result {
        Ok(content) if content.len() <= codec::message::MAX_RESPONSE_CONTENT => {
            user.metrics.responses.bump();
        }
        _ => user.metrics.error_responses.bump(),
    }
    match result {
        Ok(content) => {
            if content.len() > codec::message::MAX_RESPONSE_CONTENT {
                tracing::debug!(
                    uid = %esc(&user.uid),
                    session,
                    len = content.len(),
                    "response does not fit in a package: sent as an error response"
                );
            }
            wire::response(session, Some(&content))
        }
        Err(error) => {
            let error = error.to_string();
            tracing::debug!(
                uid = %esc(&user.uid),
                session,
                error = %esc(error.as_bytes()),
                "error response"
            );
            wire::error_response(session)
        }
    }
}

/// What the connection tasks, the timers and the public API share.
pub(crate) struct GateCore {
    pub(crate) cfg: GateConfig,
    limits: Arc<Limits>,
    pub(crate) agent: Arc<dyn Agent>,
    login: Arc<dyn LoginLink>,
    by_username: ShardedMap<Bytes, Arc<User>>,
    by_uid: ShardedMap<Bytes, Arc<User>>,
    next_subid: AtomicU64,
    next_conn: AtomicU64,
    pub(crate) timers: Timers<Timer>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) tracker: TaskTracker,
    /// Cancelled when shutdown starts: no new sessions or handshakes.
    pub(crate) draining: CancellationToken,
    /// An operator drained the gate: new logins are refused.
    pub(crate) drained: std::sync::atomic::AtomicBool,
    /// Cancelled when the shutdown grace is over.
    pub(crate) hard: CancellationToken,
    /// Shared with every user (responses are counted where they are made).
    pub(crate) metrics: Arc<Metrics>,
}

impl std::fmt::Debug for GateCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateCore")
            .field("name", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

/// What a successful handshake gives the connection task.
pub(crate) struct Bound {
    pub(crate) user: Arc<User>,
    pub(crate) handle: Arc<ConnHandle>,
    /// The client opted in to the extensions.
    pub(crate) ext: bool,
    /// `200 OK` and, for an opted-in client, the welcome and the replay.
    pub(crate) greeting: BytesMut,
}

impl GateCore {
    pub(crate) fn new(cfg: GateConfig, agent: Arc<dyn Agent>, login: Arc<dyn LoginLink>) -> Self {
        let limits = Arc::new(Limits {
            reconnect_window: cfg.reconnect_window,
            max_inflight: cfg.max_inflight_per_user,
            send_queue_bytes: cfg.send_queue_bytes,
            push_backlog: cfg.push_backlog,
            push_backlog_bytes: cfg.push_backlog_bytes,
            expired_number: cfg.expired_number,
            cache_bytes: cfg.cache_bytes,
            idle_ms: u32::try_from(cfg.idle_timeout.as_millis()).unwrap_or(u32::MAX),
        });
        GateCore {
            permits: Arc::new(Semaphore::new(cfg.maxclient.min(Semaphore::MAX_PERMITS))),
            cfg,
            limits,
            agent,
            login,
            by_username: ShardedMap::new(),
            by_uid: ShardedMap::new(),
            next_subid: AtomicU64::new(0),
            next_conn: AtomicU64::new(0),
            timers: Timers::new(),
            tracker: TaskTracker::new(),
            draining: CancellationToken::new(),
            drained: std::sync::atomic::AtomicBool::new(false),
            hard: CancellationToken::new(),
            metrics: Arc::default(),
        }
    }

    /// The user with this uid.
    pub(crate) fn user_by_uid(&self, uid: &[u8]) -> Option<Arc<User>> {
        self.by_uid.get(uid)
    }

    /// The user with this gate username.
    pub(crate) fn user_by_username(&self, username: &[u8]) -> Option<Arc<User>> {
        self.by_username.get(username)
    }

    /// Every user (a snapshot).
    pub(crate) fn users(&self) -> Vec<Arc<User>> {
        self.by_uid.values()
    }

    /// Number of sessions.
    pub(crate) fn sessions(&self) -> usize {
        self.by_uid.len()
    }

    /// Places `uid` with a new session, unless it has one: then `Err` with
    /// the old user, which the caller ends before trying again.
    pub(crate) fn place(
        self: &Arc<Self>,
        uid: &Bytes,
        user: &Bytes,
        secret: &SessionSecret,
    ) -> Result<Arc<User>, Arc<User>> {
        let name = user;
        let user = {
            let mut by_uid = self.by_uid.shard(uid);
            if let Some(old) = by_uid.get(uid) {
                return Err(Arc::clone(old));
            }
            let subid =
                Bytes::from((self.next_subid.fetch_add(1, Ordering::Relaxed) + 1).to_string());
            let username = Bytes::from(handshake::username(uid, self.cfg.name.as_bytes(), &subid));
            let alias = (name != uid)
                .then(|| Bytes::from(handshake::username(name, self.cfg.name.as_bytes(), &subid)));
            let user = Arc::new(User {
                uid: uid.clone(),
                subid,
                username: username.clone(),
                alias: alias.clone(),
                secret: secret.clone(),
                core: Arc::downgrade(self),
                metrics: Arc::clone(&self.metrics),
                slot: Mutex::new(Slot {
                    session: Session::new(Instant::now(), Arc::clone(&self.limits)),
                    timer_at: 0,
                }),
            });
            by_uid.insert(uid.clone(), Arc::clone(&user));
            self.by_username.insert(username, Arc::clone(&user));
            if let Some(alias) = alias {
                self.by_username.insert(alias, Arc::clone(&user));
            }
            user
        };
        self.arm(&user, &mut user.lock());
        tracing::info!(uid = %esc(&user.uid), subid = %esc(&user.subid), "login");
        self.perform(&user, vec![Effect::Notify(SessionEvent::Login)]);
        Ok(user)
    }

    /// Checks a handshake in the documented order and, on success, binds a
    /// new connection to the user (closing the older one).
    pub(crate) fn handshake(
        self: &Arc<Self>,
        payload: &Bytes,
        addr: SocketAddr,
    ) -> Result<Bound, HandshakeRefusal> {
        let hs = Handshake::parse(payload).ok_or(HandshakeRefusal::UnknownUser)?;
        let user = self
            .user_by_username(&hs.username)
            .ok_or(HandshakeRefusal::UnknownUser)?;
        let hello = check_handshake(&user.secret, &hs, addr)?;
        let ext = hello.ext.is_some();
        let handle = Arc::new(ConnHandle::new(
            self.next_conn.fetch_add(1, Ordering::Relaxed) + 1,
            ext,
        ));
        let accepted = {
            let mut slot = user.lock();
            // Checked under the user lock: shutdown closes every bound
            // connection after cancelling `draining`, so a handshake either
            // sees the cancellation here or is seen by the shutdown.
            let draining = self.draining.is_cancelled();
            let accepted =
                slot.session
                    .handshake(Instant::now(), Arc::clone(&handle), hello, draining)?;
            self.arm(&user, &mut slot);
            accepted
        };
        if accepted.push_gap.is_some() {
            bump(&self.metrics.push_gaps);
        }
        if accepted.replayed > 0 {
            self.metrics.pushes_replayed.fetch_add(
                u64::from(accepted.replayed),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        self.perform(&user, accepted.effects);
        Ok(Bound {
            user,
            handle,
            ext,
            greeting: accepted.greeting,
        })
    }

    /// Connection `conn` of `user` is gone. `notify` is false while
    /// unwinding from an agent's panic: the agent is not called again then.
    pub(crate) fn connection_gone(self: &Arc<Self>, user: &Arc<User>, conn: u64, notify: bool) {
        let effects = {
            let mut slot = user.lock();
            let effects = slot.session.connection_gone(Instant::now(), conn);
            self.arm(user, &mut slot);
            effects
        };
        if notify {
            self.perform(user, effects);
        }
    }

    /// Pushes to `user` (see [`crate::msg::MsgGate::push`]).
    pub(crate) fn push_to(&self, user: &User, payload: Bytes) -> Result<u32, PushRefused> {
        let len = payload.len();
        let pushed = user.lock().session.push(payload);
        match pushed {
            Ok((seq, effect)) => {
                bump(&self.metrics.pushes);
                match effect {
                    Some(Effect::Wake(conn)) => conn.wake(),
                    Some(Effect::Close { conn, cause, .. }) => conn.close(cause.into()),
                    _ => {}
                }
                Ok(seq)
            }
            Err(refused) => {
                bump(&self.metrics.pushes_refused);
                tracing::debug!(uid = %esc(&user.uid), len, %refused, "push refused");
                Err(refused)
            }
        }
    }

    /// Ends `user`'s session; returns its closed connection, if it had one
    /// (to wait for it). Idempotent.
    pub(crate) fn end(
        self: &Arc<Self>,
        user: &Arc<User>,
        reason: EndReason,
    ) -> Option<Arc<ConnHandle>> {
        let effects = user.lock().session.end(reason);
        let closed = effects.iter().find_map(|e| match e {
            Effect::Close { conn, .. } => Some(Arc::clone(conn)),
            _ => None,
        });
        self.perform(user, effects);
        closed
    }

    /// [`GateCore::end`] through a session handle (the agent's call). A
    /// user no longer in the tables has ended already.
    fn end_by_handle(self: &Arc<Self>, user: &User, reason: EndReason) {
        if let Some(registered) = self.user_by_username(&user.username)
            && std::ptr::eq(Arc::as_ptr(&registered), user)
        {
            self.end(&registered, reason);
        }
    }

    /// A timer fired at `now`.
    pub(crate) fn fire(self: &Arc<Self>, timer: Timer, now: Instant) {
        match timer {
            Timer::Session(user) => {
                let Some(user) = user.upgrade() else { return };
                let effects = {
                    let mut slot = user.lock();
                    if slot.timer_at != 0 && slot.timer_at <= self.timers.tick(now) {
                        slot.timer_at = 0;
                    }
                    let effects = slot.session.handle_timeout(now);
                    self.arm(&user, &mut slot);
                    effects
                };
                self.perform(&user, effects);
            }
            Timer::Idle(conn) => {
                let Some(conn) = conn.upgrade() else { return };
                let Some(timeout) = self.cfg.idle_timeout(conn.ext) else {
                    return;
                };
                if conn.close_cause() != CloseCause::Open {
                    return;
                }
                let deadline = self.timers.instant_of(conn.last_input()) + timeout;
                if now >= deadline {
                    conn.close(CloseCause::Idle);
                } else {
                    self.timers.at(deadline, Timer::Idle(Arc::downgrade(&conn)));
                }
            }
        }
    }

    /// Arms the gate's timers for the session's next deadline, if it is
    /// earlier than the one armed (timers are lazy: see `timers`).
    fn arm(&self, user: &Arc<User>, slot: &mut Slot) {
        if let Some(deadline) = slot.session.poll_timeout()
            && let tick = self.timers.tick(deadline)
            && (slot.timer_at == 0 || tick < slot.timer_at)
        {
            slot.timer_at = tick;
            self.timers
                .at(deadline, Timer::Session(Arc::downgrade(user)));
        }
    }

    /// Carries out what a session asked for (see the module docs).
    pub(crate) fn perform(&self, user: &Arc<User>, effects: Vec<Effect<Arc<ConnHandle>>>) {
        for effect in effects {
            match effect {
                Effect::Notify(event) => {
                    let ctx = SessionCtx::new(Arc::clone(user) as Arc<dyn SessionHandle>);
                    self.agent.event(&ctx, event);
                }
                Effect::Close {
                    conn,
                    cause,
                    farewell,
                } => conn.close_with(cause.into(), farewell),
                Effect::Wake(conn) => conn.wake(),
                Effect::Unregister(reason) => self.unregister(user, &reason),
            }
        }
    }

    fn unregister(&self, user: &Arc<User>, reason: &EndReason) {
        let this = |u: &Arc<User>| Arc::ptr_eq(u, user);
        self.by_username.remove_if(&user.username, this);
        if let Some(alias) = &user.alias {
            self.by_username.remove_if(alias, this);
        }
        self.by_uid.remove_if(&user.uid, this);
        bump(&self.metrics.sessions_ended);
        bump(&self.metrics.ended_by[EndCause::of(reason) as usize]);
        tracing::info!(
            uid = %esc(&user.uid),
            subid = %esc(&user.subid),
            reason = %esc(reason.text().as_bytes()),
            "session ended"
        );
        self.login
            .session_ended(self.cfg.name.as_bytes(), &user.uid, &user.subid, reason);
    }

    /// Marks every bound connection with `cause` (shutdown phases).
    pub(crate) fn close_all(&self, cause: CloseCause) {
        for user in self.users() {
            if let Some(conn) = user.lock().session.conn() {
                conn.close(cause);
            }
        }
    }
}
