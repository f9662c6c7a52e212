//! The life of one player's session, as a sans-IO state machine: the one
//! place to read how the gate treats a player.
//!
//! A [`Session`] is created when the login server places a user on the
//! gate, and ends once (logout, kick, reconnect window over, shutdown). In
//! between it takes events — a handshake on a new connection, that
//! connection going away, a request, a handler's answer, a push, a kick,
//! the clock passing a deadline — each with `now` passed in, and answers
//! with what must happen: the packages to send, the [`Effect`]s for the
//! driver to carry out (close a connection, wake one, tell the agent,
//! unregister the session), and the next deadline ([`Session::poll_timeout`]).
//! It never touches a socket, a task or the clock, so every transition and
//! race is tested in memory (`tests.rs`).
//!
//! The driver (the `gate` crate's `players` module) keeps each session behind a lock: it locks,
//! calls, releases, then performs the effects. Connections are whatever
//! handle type the driver uses ([`Conn`]); the session only compares their
//! ids and hands them back in effects.
//!
//! # States
//!
//! ```text
//!            login                 handshake                 connection gone
//!   (new) ─────────▶ Placed ───────────────────▶ Online ─────────────────────▶ Away
//!                      │  ▲                      │  ▲  handshake (supersedes)   │
//!                      │  └──────────────────────┼──┴──────────────────────────┘
//!                      │        deadline, kick, logout, shutdown (any state)
//!                      └─────────────────────────┴──────────────▶ Ended
//! ```
//!
//! * **Placed**: logged in, no connection yet; ends at the reconnect
//!   window's deadline unless a handshake comes.
//! * **Online**: bound to exactly one connection. A newer handshake binds
//!   the new connection and closes the old one ([`End::Superseded`]).
//! * **Away**: the connection went; ends at the deadline (`now` + the
//!   reconnect window) unless a handshake comes. A handshake at or after the
//!   deadline is refused as if the session were gone.
//! * **Ended**: final; every later event is refused or ignored.
//!
//! # What carries over between connections
//!
//! The handshake index (each handshake must be above the last accepted
//! one), the response cache ([`cache`]: re-sent requests are answered, never
//! run twice), the push backlog ([`push`]: pushes are numbered per session
//! and replayed from the client's last seen one), and the requests still
//! running: an answer that completes after its connection went goes to the
//! newest connection, or waits in the cache.

pub mod cache;
mod hello;
mod lua_number;
mod outbox;
pub mod push;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::ext::{Ext, Welcome};
use codec::message::{LuaNumber, ResponseFlag};
use codec::status::GateStatus;
use serde::{Deserialize, Serialize};

pub use self::cache::{ConnId, ExecId, OnRequest, ResponseCache};
pub use self::hello::{HandshakeRefusal, Hello, check_handshake, seal_channel};
pub use self::outbox::{OUTBOX_KEPT, Outgoing};
pub use self::push::PushBacklog;
use crate::End;
use crate::time::Time;
use crate::wire::{self, Package};

/// What a session needs of a driver's connection handle: a stable id.
pub trait Conn: Clone {
    /// The connection's id, unique per gate and never reused.
    fn id(&self) -> ConnId;
}

impl Conn for ConnId {
    fn id(&self) -> ConnId {
        *self
    }
}

/// A connection handle a driver shares behind an [`Arc`]: the `Arc` is
/// the [`Conn`].
pub trait SharedConn {
    /// The connection's id (see [`Conn::id`]).
    fn conn_id(&self) -> ConnId;
}

impl<T: SharedConn + ?Sized> Conn for Arc<T> {
    fn id(&self) -> ConnId {
        (**self).conn_id()
    }
}

/// Session events, in the order a session lives them; the agent and the
/// services hear them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The login server placed the user on this gate (no connection yet).
    Login,
    /// An authenticated connection is bound to the session (the first one
    /// or a reconnect).
    Back {
        /// The client's address.
        addr: SocketAddr,
    },
    /// The session's connection went away (skynet's `disconnect_handler`,
    /// "AFK"). The session stays for the reconnect window.
    Away,
    /// The session ended. Its connection, if any, is being closed; nothing
    /// follows.
    Ended(End),
}

/// The settings a session lives by (from the gate's configuration).
#[derive(Debug, Clone)]
pub struct Limits {
    /// How long a session without a connection lives.
    pub reconnect_window: Duration,
    /// Most requests running at once; one more closes the connection.
    pub max_inflight: usize,
    /// Most bytes queued for the bound connection before it is cut.
    pub send_queue_bytes: usize,
    /// Most pushes kept for replay.
    pub push_backlog: usize,
    /// Most payload bytes of the pushes kept for replay.
    pub push_backlog_bytes: usize,
    /// skynet's `expired_number`.
    pub expired_number: u32,
    /// Most bytes of cached answers (see [`cache`]).
    pub cache_bytes: usize,
    /// The idle timeout announced in the welcome, in milliseconds (0: none).
    pub idle_ms: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            reconnect_window: Duration::from_secs(300),
            max_inflight: 128,
            send_queue_bytes: 1 << 20,
            push_backlog: 64,
            push_backlog_bytes: 64 * 1024,
            expired_number: 128,
            cache_bytes: 256 * 1024,
            idle_ms: 60_000,
        }
    }
}

/// Where a session is in its life (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Logged in, never connected.
    Placed,
    /// Bound to a connection.
    Online,
    /// Its connection went; waiting for a reconnect.
    Away,
    /// Over.
    Ended,
}

/// Something the driver must do after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<C> {
    /// Tell the agent and the services.
    Notify(SessionEvent),
    /// Close this connection for `cause`, after writing `farewell` (what was
    /// still queued for an opted-in connection, then its kick package).
    Close {
        /// The connection.
        conn: C,
        /// Why.
        cause: End,
        /// Packages to write before closing.
        farewell: Option<Bytes>,
    },
    /// Packages wait in this connection's outbox ([`Session::write_outbox`]).
    Wake(C),
    /// The session is over: remove it from the gate's tables and the session
    /// directory, and report the end to the login server.
    Unregister(End),
}

/// A successful handshake.
#[derive(Debug)]
pub struct Accepted<C> {
    /// What the new connection is sent first: `200 OK`, then for an
    /// opted-in client the welcome, the push-gap notice and the pushes it
    /// has not seen.
    pub greeting: BytesMut,
    /// The older connection to close, and the `Back` event.
    pub effects: Vec<Effect<C>>,
    /// The replay starts with a push-gap notice: pushes up to this one
    /// were dropped from the backlog before the client saw them.
    pub push_gap: Option<u32>,
    /// Pushes replayed in the greeting.
    pub replayed: u32,
}

/// Why a request is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestRefused {
    /// The connection is no longer the session's (superseded, or the
    /// session ended): close it.
    NotBound {
        /// Whether the session is over.
        ended: bool,
    },
    /// The request would exceed `max_inflight`: close the connection.
    TooManyInflight,
}

/// Where a handler's answer went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion<C> {
    /// Appended to the calling connection's buffer (it is the bound one).
    Written,
    /// Queued for this connection (or it must re-check its state): wake it.
    Wake(C),
    /// Nothing to send now (cached for a re-send, or dropped).
    Nothing,
}

/// Why a push was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushRefused {
    /// The payload does not fit in one package (over 65530 bytes).
    #[error("push payload larger than a package")]
    TooLarge,
    /// The session is over.
    #[error("session ended")]
    Ended,
    /// The session made 2^32 − 1 pushes already.
    #[error("push sequence exhausted")]
    Exhausted,
}

/// The connection a session is bound to.
#[derive(Debug, Serialize, Deserialize)]
struct Binding<C> {
    conn: C,
    /// Opted in to the extensions: may be sent pushes and a kick package.
    ext: bool,
    /// Late answers and pushes for the connection's task to pick up.
    outbox: Vec<Outgoing>,
    /// Wire bytes in `outbox`.
    outbox_bytes: u32,
}

#[derive(Debug, Serialize, Deserialize)]
enum State<C> {
    Placed { expires: Time },
    Online(Binding<C>),
    Away { expires: Time },
    Ended(End),
}

/// One user's session on this gate (see the module docs).
/// Its state is plain data (`serde`): written out with each connection
/// handle turned into its id ([`Session::map_conn`]) and read back with
/// the gate's limits given again ([`Session::with_limits`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct Session<C> {
    #[serde(skip)]
    limits: Arc<Limits>,
    /// Last accepted handshake index (skynet's `version`), initially 0.
    #[serde(with = "crate::session::lua_number")]
    index: LuaNumber,
    cache: ResponseCache,
    pushes: PushBacklog,
    state: State<C>,
    /// Handlers running, including those whose connection went.
    inflight: u32,
}

impl<C: Conn> Session<C> {
    /// A session the login server just placed at `now`; it has the
    /// reconnect window to connect. The driver announces
    /// [`SessionEvent::Login`].
    pub fn new(now: Time, limits: Arc<Limits>) -> Session<C> {
        Session {
            index: LuaNumber::Int(0),
            cache: ResponseCache::new(limits.expired_number, limits.cache_bytes),
            pushes: PushBacklog::new(),
            state: State::Placed {
                expires: now + limits.reconnect_window,
            },
            inflight: 0,
            limits,
        }
    }

    /// A handshake that passed [`check_handshake`], on connection `conn`.
    /// Refused when the session is over or past its deadline (`404`), the
    /// index is not above the last one (`403`), the gate is `draining`
    /// (closed without status), or the client claims a push this session
    /// never made (`400`). Accepted, `conn` becomes the session's
    /// connection and an older one is closed.
    pub fn handshake(
        &mut self,
        now: Time,
        conn: C,
        hello: Hello,
        draining: bool,
    ) -> Result<Accepted<C>, HandshakeRefusal> {
        match &self.state {
            State::Ended(_) => return Err(HandshakeRefusal::UnknownUser),
            State::Placed { expires } | State::Away { expires } if now >= *expires => {
                return Err(HandshakeRefusal::UnknownUser);
            }
            _ => {}
        }
        if hello.index.partial_cmp(&self.index) != Some(std::cmp::Ordering::Greater) {
            return Err(HandshakeRefusal::IndexExpired);
        }
        if draining {
            return Err(HandshakeRefusal::ShuttingDown);
        }
        let mut greeting = BytesMut::new();
        wire::write_status(&mut greeting, GateStatus::OK);
        let mut push_gap = None;
        let mut replayed = 0u32;
        if let Some(ext) = hello.ext {
            let replay = self
                .pushes
                .replay(ext.last_push)
                .map_err(|_| HandshakeRefusal::PushAhead)?;
            let welcome = Welcome {
                version: Ext::VERSION,
                idle_ms: self.limits.idle_ms,
            };
            wire::write_flagged(
                &mut greeting,
                welcome.encode().as_bytes(),
                ResponseFlag::WELCOME,
                self.pushes.last_seq(),
            );
            if let Some(lost) = replay.lost_through {
                wire::write_flagged(&mut greeting, &[], ResponseFlag::PUSH_GAP, lost);
                push_gap = Some(lost);
            }
            for (seq, payload) in replay.pushes() {
                wire::write_flagged(&mut greeting, &payload, ResponseFlag::PUSH, seq);
                replayed += 1;
            }
        }
        self.index = hello.index;
        let mut effects = Vec::with_capacity(2);
        let new = Binding {
            conn,
            ext: hello.ext.is_some(),
            outbox: Vec::new(),
            outbox_bytes: 0,
        };
        if let State::Online(old) = std::mem::replace(&mut self.state, State::Online(new)) {
            // What was queued for the old connection never left: its
            // pushes are in the replay, its answers wait for a re-send.
            self.undeliver(&old);
            effects.push(Effect::Close {
                conn: old.conn,
                cause: End::Superseded,
                farewell: None,
            });
        }
        effects.push(Effect::Notify(SessionEvent::Back { addr: hello.addr }));
        Ok(Accepted {
            greeting,
            effects,
            push_gap,
            replayed,
        })
    }

    /// Connection `conn` is gone (closed by either side, for any reason).
    /// If it was the session's, the session is away until `now` plus the
    /// reconnect window. A connection that was superseded, or whose session
    /// ended, changes nothing: its late end never touches a newer one.
    pub fn connection_gone(&mut self, now: Time, conn: ConnId) -> Vec<Effect<C>> {
        if !self.is_bound_to(conn) {
            return Vec::new();
        }
        let away = State::Away {
            expires: now + self.limits.reconnect_window,
        };
        if let State::Online(old) = std::mem::replace(&mut self.state, away) {
            self.undeliver(&old);
        }
        vec![Effect::Notify(SessionEvent::Away)]
    }

    /// A request numbered `number` arrived on `conn`. On
    /// [`OnRequest::Execute`] the handler must run and its answer come back
    /// through [`Session::complete`] (or [`Session::abandon`]).
    pub fn request(&mut self, conn: ConnId, number: u32) -> Result<OnRequest, RequestRefused> {
        if !self.is_bound_to(conn) {
            return Err(RequestRefused::NotBound {
                ended: matches!(self.state, State::Ended(_)),
            });
        }
        let outcome = self.cache.request(conn, number);
        if let OnRequest::Execute(exec) = outcome {
            if self.inflight as usize >= self.limits.max_inflight {
                self.cache.abandon(number, exec);
                return Err(RequestRefused::TooManyInflight);
            }
            self.inflight += 1;
        }
        Ok(outcome)
    }

    /// The handler of `(number, exec)` answered with `package` (a complete
    /// response package, [`wire::response_in`]). `caller` is the connection
    /// completing it inline, if any, with its write buffer: an answer for
    /// it is appended there ([`Completion::Written`]), without a copy kept
    /// apart from the cache's.
    pub fn complete(
        &mut self,
        number: u32,
        exec: ExecId,
        package: Package,
        caller: Option<(ConnId, &mut BytesMut)>,
    ) -> Completion<C> {
        self.inflight = self.inflight.saturating_sub(1);
        let live = match &self.state {
            State::Online(b) => Some(b.conn.id()),
            State::Ended(_) => return Completion::Nothing,
            _ => None,
        };
        // Delivered to the caller, it goes out now; to any other
        // connection, through its outbox.
        let queued = caller.as_ref().map(|(conn, _)| *conn) != live;
        match self
            .cache
            .complete_queued(number, exec, package, live, queued)
        {
            Some(delivery) => match caller {
                Some((conn, out)) if conn == delivery.conn => {
                    out.extend_from_slice(delivery.package);
                    Completion::Written
                }
                _ => {
                    let package = delivery.package.clone();
                    match self.queue(Outgoing::Response { number, package }) {
                        Some(conn) => Completion::Wake(conn),
                        None => Completion::Nothing,
                    }
                }
            },
            None => match &self.state {
                // A connection waiting for the last running request (to
                // drain, or after the client's FIN) re-checks.
                State::Online(b) if self.inflight == 0 => Completion::Wake(b.conn.clone()),
                _ => Completion::Nothing,
            },
        }
    }

    /// A request classified [`OnRequest::Execute`] will not be answered
    /// after all (its agent panicked): it no longer counts as running and
    /// its request number is free again.
    pub fn abandon(&mut self, number: u32, exec: ExecId) {
        self.inflight = self.inflight.saturating_sub(1);
        self.cache.abandon(number, exec);
    }

    /// Ends the session (kick, logout, shutdown, expiry): its connection is
    /// closed (an opted-in one after a farewell: what was still queued,
    /// then the kick package with the reason), the driver unregisters it
    /// and tells the agent. Nothing if it already ended.
    pub fn end(&mut self, reason: End) -> Vec<Effect<C>> {
        if matches!(self.state, State::Ended(_)) {
            return Vec::new();
        }
        let old = std::mem::replace(&mut self.state, State::Ended(reason.clone()));
        self.cache.clear();
        let mut effects = Vec::with_capacity(3);
        if let State::Online(b) = old {
            let farewell = b.ext.then(|| {
                let mut out = BytesMut::new();
                for item in &b.outbox {
                    item.write_to(&mut out);
                }
                wire::write_kick(&mut out, reason.kick_text().unwrap_or_default());
                out.freeze()
            });
            effects.push(Effect::Close {
                conn: b.conn,
                cause: reason.clone(),
                farewell,
            });
        }
        effects.push(Effect::Unregister(reason.clone()));
        effects.push(Effect::Notify(SessionEvent::Ended(reason)));
        effects
    }

    /// The clock reached `now`: a session without a connection past its
    /// deadline ends ([`End::Expired`]).
    pub fn handle_timeout(&mut self, now: Time) -> Vec<Effect<C>> {
        match self.poll_timeout() {
            Some(deadline) if now >= deadline => self.end(End::Expired),
            _ => Vec::new(),
        }
    }

    /// When [`Session::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Time> {
        match self.state {
            State::Placed { expires } | State::Away { expires } => Some(expires),
            State::Online(_) | State::Ended(_) => None,
        }
    }

    /// Where the session is in its life.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Placed { .. } => Phase::Placed,
            State::Online(_) => Phase::Online,
            State::Away { .. } => Phase::Away,
            State::Ended(_) => Phase::Ended,
        }
    }

    /// Whether `conn` is the session's connection.
    pub fn is_bound_to(&self, conn: ConnId) -> bool {
        matches!(&self.state, State::Online(b) if b.conn.id() == conn)
    }

    /// The connection the session is bound to.
    pub fn conn(&self) -> Option<&C> {
        match &self.state {
            State::Online(b) => Some(&b.conn),
            _ => None,
        }
    }

    /// Whether the session is over.
    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended(_))
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<&End> {
        match &self.state {
            State::Ended(reason) => Some(reason),
            _ => None,
        }
    }

    /// The last accepted handshake index.
    pub fn index(&self) -> LuaNumber {
        self.index
    }

    /// Handlers running now.
    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// The response cache (read-only).
    pub fn cache(&self) -> &ResponseCache {
        &self.cache
    }

    /// The push backlog (read-only).
    pub fn pushes(&self) -> &PushBacklog {
        &self.pushes
    }

    /// The session's state with each connection handle turned into
    /// another type by `f` (for example into its [`ConnId`], to write the
    /// state out).
    pub fn map_conn<D>(self, f: impl FnOnce(C) -> D) -> Session<D> {
        let state = match self.state {
            State::Placed { expires } => State::Placed { expires },
            State::Away { expires } => State::Away { expires },
            State::Ended(end) => State::Ended(end),
            State::Online(b) => State::Online(Binding {
                conn: f(b.conn),
                ext: b.ext,
                outbox: b.outbox,
                outbox_bytes: b.outbox_bytes,
            }),
        };
        Session {
            limits: self.limits,
            index: self.index,
            cache: self.cache,
            pushes: self.pushes,
            state,
            inflight: self.inflight,
        }
    }

    /// A session read back from its written-out state, living by `limits`
    /// from now on.
    pub fn with_limits(mut self, limits: Arc<Limits>) -> Session<C> {
        self.limits = limits;
        self
    }

    /// The connection of `old` is going: what it carried (and what was
    /// still queued for it) may not have reached the client.
    fn undeliver(&mut self, old: &Binding<C>) {
        self.cache.connection_ended(old.conn.id());
    }
}
