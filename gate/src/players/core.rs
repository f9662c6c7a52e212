//! The driver of the sessions: the gate's tables of
//! [`User`](super::user::User)s (one [`Session`] each, behind its own
//! lock), and the one place that carries out what a session asks for
//! ([`GateCore::perform`]).
//!
//! Every operation has the same shape: lock the user, call its session with
//! `now`, re-arm its timer, release, then hand the effects to
//! [`GateCore::perform`], the one place that carries them out (close or
//! wake a connection, tell the agent, unregister, report to the login
//! server). No call into the agent or the login server happens under a lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::{Bytes, BytesMut};
use codec::message::Handshake;
use gate_core::End;
use gate_core::connection::ConnLimits;
use gate_core::session::{
    Effect, HandshakeRefusal, Limits, PushRefused, Session, SessionEvent, check_handshake,
    seal_channel,
};
use loginproto::handshake::{self, SessionSecret};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handle::ConnHandle;
use super::metrics::{Metrics, bump};
use super::timers::Timers;
use super::user::{ByUid, ByUsername, User, UserState};
use crate::agent::{Agent, AgentMemo, SessionCtx, SessionHandle};
use crate::config::GateConfig;
use crate::logging::esc;
use crate::login::placement::LoginLink;
use crate::reload::Live;
use crate::shard::{ShardedMap, ShardedSet};

/// What an entry of the gate's timers names.
#[derive(Debug)]
pub(crate) enum Timer {
    /// A session's deadline ([`Session::poll_timeout`]).
    Session(Weak<User>),
    /// A connection's deadline ([`gate_core::connection::Connection::poll_timeout`]):
    /// its task is woken to look at it.
    Conn(Weak<ConnHandle>, u32),
}

/// The session limits of `cfg`.
fn limits(cfg: &GateConfig) -> Limits {
    Limits {
        reconnect_window: cfg.reconnect_window,
        max_inflight: cfg.max_inflight_per_user,
        send_queue_bytes: cfg.send_queue_bytes,
        push_backlog: cfg.push_backlog,
        push_backlog_bytes: cfg.push_backlog_bytes,
        expired_number: cfg.expired_number,
        cache_bytes: cfg.cache_bytes,
        idle_ms: u32::try_from(cfg.idle_timeout.as_millis()).unwrap_or(u32::MAX),
    }
}

/// The connection limits of `cfg`.
fn conn_limits(cfg: &GateConfig) -> ConnLimits {
    ConnLimits {
        handshake_timeout: cfg.handshake_timeout,
        idle_timeout: cfg.idle_timeout,
        plain_idle_timeout: cfg.plain_idle_timeout,
        send_queue_bytes: cfg.send_queue_bytes,
        half_close_grace: cfg.shutdown_grace,
    }
}

/// What the connection tasks, the timers and the public API share.
pub(crate) struct GateCore {
    /// The configuration the gate started with: what cannot change while
    /// it runs (its name, the shutdown grace).
    pub(crate) cfg: GateConfig,
    /// The configuration as last applied ([`GateCore::apply`]): the
    /// started one with the limits of the last reload.
    pub(crate) current: Live<GateConfig>,
    /// What every new session lives by (each keeps the limits it started
    /// with).
    pub(crate) limits: Live<Limits>,
    /// What every new connection lives by (each keeps its own).
    pub(crate) conn_limits: Live<ConnLimits>,
    /// `maxclient`, resizable while connections hold it.
    pub(crate) capacity: crate::net::Capacity,
    pub(crate) agent: Arc<dyn Agent>,
    login: Arc<dyn LoginLink>,
    pub(super) by_username: ShardedSet<ByUsername>,
    /// The users whose client logs in under another name than its uid
    /// (see [`User::alias`]), by the username with that name: few, so kept
    /// apart from `by_username`, whose items are keyed by their own name.
    pub(super) by_alias: ShardedMap<Bytes, Arc<User>>,
    pub(super) by_uid: ShardedSet<ByUid>,
    pub(super) next_subid: AtomicU64,
    pub(super) next_conn: AtomicU64,
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
    /// Connections per source address and network (`gate.max_connections_per_source` ...).
    pub(crate) per_source: Arc<crate::net::PerSource>,
    /// A live upgrade in progress (see `players::handoff`).
    pub(crate) handoff: super::handoff::Handoff,
    /// Connections resting (see `players::rest`).
    pub(crate) rest: super::rest::Rest,
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
    /// The client opted in to the extensions.
    pub(crate) ext: bool,
    /// The gate's side of the sealed channel, if the handshake asked for
    /// it.
    pub(crate) seal: Option<loginproto::seal::Channel>,
    /// `200 OK` and, for an opted-in client, the welcome and the replay.
    pub(crate) greeting: BytesMut,
}

impl GateCore {
    pub(crate) fn new(cfg: GateConfig, agent: Arc<dyn Agent>, login: Arc<dyn LoginLink>) -> Self {
        Self::new_at(cfg, agent, login, tokio::time::Instant::now())
    }

    /// A core whose clock started at `epoch` (see [`Timers::with_epoch`]).
    pub(crate) fn new_at(
        cfg: GateConfig,
        agent: Arc<dyn Agent>,
        login: Arc<dyn LoginLink>,
        epoch: tokio::time::Instant,
    ) -> Self {
        let cfg_per_source = (
            cfg.max_connections_per_source,
            cfg.max_connections_per_network,
            f64::from(cfg.new_connections_per_source),
            cfg.sources,
        );
        let capacity = crate::net::Capacity::new(cfg.maxclient);
        let rest = super::rest::Rest::new(cfg.rest_after);
        GateCore {
            conn_limits: Live::new(conn_limits(&cfg)),
            limits: Live::new(limits(&cfg)),
            current: Live::new(cfg.clone()),
            permits: capacity.permits(),
            capacity,
            cfg,
            agent,
            login,
            by_username: ShardedSet::new(),
            by_alias: ShardedMap::new(),
            by_uid: ShardedSet::new(),
            next_subid: AtomicU64::new(0),
            next_conn: AtomicU64::new(0),
            timers: Timers::with_epoch(epoch),
            tracker: TaskTracker::new(),
            draining: CancellationToken::new(),
            drained: std::sync::atomic::AtomicBool::new(false),
            hard: CancellationToken::new(),
            metrics: Arc::default(),
            per_source: crate::net::PerSource::with(
                cfg_per_source.0,
                cfg_per_source.1,
                cfg_per_source.2,
                cfg_per_source.3,
            ),
            handoff: super::handoff::Handoff::default(),
            rest,
        }
    }

    /// Applies the limits of `cfg` (a configuration reload): new sessions
    /// and connections live by them, sessions and connections already
    /// there keep theirs; `maxclient` and the per-source bounds hold for
    /// the next connection, and none is closed for them. The fields that
    /// cannot change (the name, the addresses, the shutdown grace) are
    /// taken from the configuration the gate started with.
    pub(crate) fn apply(&self, cfg: &GateConfig) {
        let cfg = GateConfig {
            name: self.cfg.name.clone(),
            listen: self.cfg.listen,
            shutdown_grace: self.cfg.shutdown_grace,
            sources: self.cfg.sources,
            ..cfg.clone()
        };
        self.limits.store(limits(&cfg));
        self.conn_limits.store(conn_limits(&cfg));
        self.capacity.resize(cfg.maxclient);
        self.per_source.set_bounds(
            cfg.max_connections_per_source,
            cfg.max_connections_per_network,
            f64::from(cfg.new_connections_per_source),
        );
        self.current.store(cfg);
    }

    /// The user with this uid.
    pub(crate) fn user_by_uid(&self, uid: &[u8]) -> Option<Arc<User>> {
        self.by_uid.get(uid).map(|u| u.0)
    }

    /// The user with this gate username.
    pub(crate) fn user_by_username(&self, username: &[u8]) -> Option<Arc<User>> {
        match self.by_username.get(username) {
            Some(user) => Some(user.0),
            None => self.by_alias.get(username),
        }
    }

    /// Every user (a snapshot).
    pub(crate) fn users(&self) -> Vec<Arc<User>> {
        self.by_uid.items().into_iter().map(|u| u.0).collect()
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
            let mut by_uid = self.by_uid.shard(&uid[..]);
            if let Some(old) = by_uid.get(&uid[..]) {
                return Err(Arc::clone(&old.0));
            }
            let subid =
                Bytes::from((self.next_subid.fetch_add(1, Ordering::Relaxed) + 1).to_string());
            let username = Bytes::from(handshake::username(uid, self.cfg.name.as_bytes(), &subid));
            let alias = (name != uid)
                .then(|| Bytes::from(handshake::username(name, self.cfg.name.as_bytes(), &subid)));
            let session = Session::new(self.timers.now(), self.limits.load());
            let user = self.new_user(
                uid.clone(),
                subid,
                username,
                alias.clone(),
                secret.clone(),
                session,
            );
            by_uid.replace(ByUid(Arc::clone(&user)));
            self.by_username.replace(ByUsername(Arc::clone(&user)));
            if let Some(alias) = alias {
                self.by_alias.insert(alias, Arc::clone(&user));
            }
            user
        };
        self.arm(&user, &mut user.lock());
        tracing::info!(uid = %esc(&user.uid), subid = %esc(&user.subid), "login");
        self.perform(&user, vec![Effect::Notify(SessionEvent::Login)]);
        Ok(user)
    }

    /// Takes a session handed over by an old process into the tables (no
    /// event: the agent knew it already), with its deadline armed.
    pub(crate) fn adopt(
        self: &Arc<Self>,
        uid: Bytes,
        subid: Bytes,
        username: Bytes,
        alias: Option<Bytes>,
        secret: SessionSecret,
        session: Session<Arc<ConnHandle>>,
    ) -> Arc<User> {
        let user = self.new_user(uid, subid, username, alias.clone(), secret, session);
        self.by_uid.replace(ByUid(Arc::clone(&user)));
        self.by_username.replace(ByUsername(Arc::clone(&user)));
        if let Some(alias) = alias {
            self.by_alias.insert(alias, Arc::clone(&user));
        }
        self.arm(&user, &mut user.lock());
        user
    }

    /// A user of this gate with `session` (not in the tables yet).
    fn new_user(
        self: &Arc<Self>,
        uid: Bytes,
        subid: Bytes,
        username: Bytes,
        alias: Option<Bytes>,
        secret: SessionSecret,
        session: Session<Arc<ConnHandle>>,
    ) -> Arc<User> {
        Arc::new_cyclic(|me| User {
            me: me.clone(),
            uid,
            subid,
            username,
            alias: alias.map(Box::new),
            secret,
            core: Arc::downgrade(self),
            metrics: Arc::clone(&self.metrics),
            agent_memo: AgentMemo::default(),
            state: Mutex::new(UserState {
                session,
                slab: BytesMut::new(),
                timer_at: 0,
            }),
        })
    }

    /// A new connection id (unique per gate, never reused).
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Checks a handshake in the documented order and, on success, binds
    /// connection `handle` to the user (closing the older one).
    pub(crate) fn handshake(
        self: &Arc<Self>,
        payload: &Bytes,
        addr: SocketAddr,
        handle: &Arc<ConnHandle>,
    ) -> Result<Bound, HandshakeRefusal> {
        let hs = Handshake::parse(payload).ok_or(HandshakeRefusal::UnknownUser)?;
        let user = self
            .user_by_username(&hs.username)
            .ok_or(HandshakeRefusal::UnknownUser)?;
        let require_sealed = self.current.load().require_sealed;
        let hello = check_handshake(&user.secret, &hs, addr, require_sealed)?;
        let seal = seal_channel(&user.secret, &hs, &hello);
        let ext = hello.ext.is_some();
        let accepted = {
            let mut state = user.lock();
            // Checked under the user lock: shutdown closes every bound
            // connection after cancelling `draining`, so a handshake either
            // sees the cancellation here or is seen by the shutdown. A live
            // upgrade likewise: once it is requested, a handshake is
            // refused without a status and without using its index (the
            // client connects again, to whichever process then serves);
            // one accepted before is parked with the rest.
            let draining = self.draining.is_cancelled() || self.handoff.is_requested();
            let accepted =
                state
                    .session
                    .handshake(self.timers.now(), Arc::clone(handle), hello, draining)?;
            self.arm(&user, &mut state);
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
            ext,
            seal,
            greeting: accepted.greeting,
        })
    }

    /// Connection `conn` of `user` is gone. `notify` is false while
    /// unwinding from an agent's panic: the agent is not called again then.
    pub(crate) fn connection_gone(self: &Arc<Self>, user: &Arc<User>, conn: u64, notify: bool) {
        // A connection that moved to the new process of a live upgrade:
        // its session is that process's now.
        if self.handoff.is_frozen() {
            return;
        }
        let effects = {
            let mut state = user.lock();
            let effects = state.session.connection_gone(self.timers.now(), conn);
            self.arm(user, &mut state);
            effects
        };
        if notify {
            self.perform(user, effects);
        }
    }

    /// Pushes to `user` (see [`crate::players::MsgGate::push`]).
    pub(crate) fn push_to(&self, user: &User, payload: Bytes) -> Result<u32, PushRefused> {
        if self.handoff.is_frozen()
            && let Some(forwarded) = self.handoff.forward(user, payload.clone())
        {
            // The session's state went to the new process: the push goes
            // there too.
            return forwarded;
        }
        let len = payload.len();
        let pushed = user.lock().session.push(payload);
        match pushed {
            Ok((seq, effect)) => {
                bump(&self.metrics.pushes);
                self.perform(user, effect);
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
    pub(crate) fn end(self: &Arc<Self>, user: &Arc<User>, reason: End) -> Option<Arc<ConnHandle>> {
        // The session's state went to the new process: the end goes there
        // too.
        if self.handoff.is_frozen()
            && (self.handoff.forward_end(user, reason.clone()) || self.handoff.is_committed())
        {
            return None;
        }
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
    pub(super) fn end_by_handle(self: &Arc<Self>, user: &User, reason: End) {
        if let Some(registered) = self.user_by_username(&user.username)
            && std::ptr::eq(Arc::as_ptr(&registered), user)
        {
            self.end(&registered, reason);
        }
    }

    /// A timer fired at `now`.
    pub(crate) fn fire(self: &Arc<Self>, timer: Timer, now: tokio::time::Instant) {
        // The sessions belong to the new process now (or will again once
        // a failed handoff is rolled back, which re-arms every session).
        if self.handoff.is_frozen() {
            return;
        }
        let now_tick = self.timers.tick(now);
        match timer {
            Timer::Session(user) => {
                let Some(user) = user.upgrade() else { return };
                let effects = {
                    let mut state = user.lock();
                    if state.timer_at != 0 && state.timer_at <= now_tick {
                        state.timer_at = 0;
                    }
                    let effects = state.session.handle_timeout(self.timers.time(now));
                    self.arm(&user, &mut state);
                    effects
                };
                self.perform(&user, effects);
            }
            // The connection's task looks at its own deadline.
            Timer::Conn(conn, tick) => {
                if let Some(conn) = conn.upgrade() {
                    conn.timer_fired(tick);
                }
            }
        }
    }

    /// Arms the gate's timers for connection `conn`'s next deadline, if it
    /// is earlier than the one armed.
    pub(crate) fn arm_conn(&self, conn: &Arc<ConnHandle>, deadline: gate_core::Time) {
        let when = self.timers.instant(deadline);
        let tick = self.timers.tick(when);
        if conn.arm_at(tick) {
            self.timers
                .at(when, Timer::Conn(Arc::downgrade(conn), tick));
        }
    }

    /// Arms the gate's timers for exactly `deadline` of connection `conn`
    /// (`None`: none), whatever was armed for it before: entries for other
    /// deadlines no longer wake it. For a connection that rests, which
    /// only its own deadline may wake.
    pub(crate) fn rearm_conn(&self, conn: &Arc<ConnHandle>, deadline: Option<gate_core::Time>) {
        let Some(deadline) = deadline else {
            conn.rearm_at(0);
            return;
        };
        let when = self.timers.instant(deadline);
        let tick = self.timers.tick(when);
        if conn.rearm_at(tick) {
            self.timers
                .at(when, Timer::Conn(Arc::downgrade(conn), tick));
        }
    }

    /// Arms the gate's timers for the session's next deadline, if it is
    /// earlier than the one armed (timers are lazy: see `timers`).
    pub(super) fn arm(&self, user: &Arc<User>, state: &mut UserState) {
        if let Some(deadline) = state.session.poll_timeout()
            && let when = self.timers.instant(deadline)
            && let tick = self.timers.tick(when)
            && (state.timer_at == 0 || tick < state.timer_at)
        {
            state.timer_at = tick;
            self.timers.at(when, Timer::Session(Arc::downgrade(user)));
        }
    }

    /// Carries out what a session asked for (see the module docs): the one
    /// place that does.
    pub(crate) fn perform(
        &self,
        user: &User,
        effects: impl IntoIterator<Item = Effect<Arc<ConnHandle>>>,
    ) {
        for effect in effects {
            match effect {
                Effect::Notify(event) => {
                    if let Some(user) = user.me.upgrade() {
                        let ctx = SessionCtx::new(user as Arc<dyn SessionHandle>);
                        self.agent.event(&ctx, event);
                    }
                }
                Effect::Close {
                    conn,
                    cause,
                    farewell,
                } => conn.close_with(cause, farewell),
                Effect::Wake(conn) => conn.wake(),
                Effect::Unregister(reason) => self.unregister(user, &reason),
            }
        }
    }

    fn unregister(&self, user: &User, reason: &End) {
        // The session's deadline entry would keep the user's allocation
        // (through its weak reference) until the reconnect window passed:
        // at thousands of relogins a second, that is the memory of every
        // session of the last minutes.
        let armed = std::mem::take(&mut user.lock().timer_at);
        if armed != 0 {
            self.timers.remove(
                armed,
                |timer| matches!(timer, Timer::Session(weak) if std::ptr::eq(weak.as_ptr(), user)),
            );
        }
        let this = |u: &Arc<User>| std::ptr::eq(Arc::as_ptr(u), user);
        self.by_username
            .remove_if(&user.username[..], |u| this(&u.0));
        if let Some(alias) = &user.alias {
            self.by_alias.remove_if(&**alias, this);
        }
        self.by_uid.remove_if(&user.uid[..], |u| this(&u.0));
        self.metrics.session_ended(reason);
        tracing::info!(
            uid = %esc(&user.uid),
            subid = %esc(&user.subid),
            cause = reason.label(),
            reason = %reason,
            "session ended"
        );
        self.login
            .session_ended(self.cfg.name.as_bytes(), &user.uid, &user.subid, reason);
    }

    /// Asks every bound connection to drain (shutdown begins).
    pub(crate) fn drain_all(&self) {
        for user in self.users() {
            if let Some(conn) = user.lock().session.conn() {
                conn.drain();
            }
        }
    }

    /// Asks every bound connection to close now (the grace is over).
    pub(crate) fn close_all_now(&self) {
        for user in self.users() {
            if let Some(conn) = user.lock().session.conn() {
                conn.close(End::ShutdownNow);
            }
        }
    }
}
