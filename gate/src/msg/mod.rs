//! The message gate: skynet's `snax.msgserver` (spec §5) on tokio.
//!
//! [`MsgGate`] owns the users the login server placed on this gate, accepts
//! client connections ([`MsgGate::serve`]), checks their handshake, and then
//! runs requests through the [`Agent`] and the per-user response cache
//! ([`cache`]). One task per connection does everything for it (read,
//! handshake, requests, writes); the only locks on the request path are the
//! user's own.
//!
//! # Handshake order (differs from skynet on purpose)
//!
//! The first package of a connection is checked in this order; the first
//! failing check answers its status package, flushes it and closes the
//! connection (packages pipelined behind it are discarded):
//!
//! 1. split `username:index:mac[:ext]`; fewer than two `:` or an unknown
//!    username → `404 User Not Found`;
//! 2. the index is not a number for Lua's `tonumber`, or is NaN/±inf
//!    (e.g. `1e999`) → `400 Bad Request`;
//! 3. the extension field is malformed (see [Extensions](#extensions)), or
//!    the MAC field is not valid base64 → `400 Bad Request`;
//! 4. the MAC does not verify → `401 Unauthorized`;
//! 5. only now, the index is not above the last accepted one →
//!    `403 Index Expired`;
//! 6. the extension field's `push` is above the last push this session
//!    made → `400 Bad Request`;
//! 7. `200 OK`: the index becomes the user's version, the connection is bound
//!    to the user, and requests pipelined behind the handshake are processed
//!    (for an opted-in client, after the push replay).
//!
//! skynet checks the index (step 5) *before* the MAC, which tells anyone
//! who knows a username whether an index is expired without knowing the
//! secret (spec §7.7). Here an unauthenticated client only ever learns 404,
//! 400 or 401. The only observable change for a real client: a stale index
//! with a *wrong* MAC answers 401 where skynet answered 403.
//!
//! # Other differences from skynet, each on purpose
//!
//! * **A new handshake closes the user's older connection** (skynet keeps
//!   both open, `two_live_connections`, and later loses track of the newer
//!   one, spec §5.3 / §7.10). Responses of the older connection's requests
//!   then go to the new one (next point). Requests still unread on the older
//!   connection when the new handshake wins are not run; the client re-sends
//!   them on the new connection, as it does for any unanswered session.
//! * **A response that completes after its connection is gone goes to the
//!   user's newest connection**, and is stamped with the connection it was
//!   delivered on, so a re-send is answered from the cache and never
//!   executed twice (skynet: lost, then re-executed on re-send, spec §5.5
//!   "completed after reconnect"). Remaining edge: the first request for
//!   that session on the connection that got the late answer is answered
//!   from the cache — a re-send that crossed the delivery on the wire gets
//!   the answer twice, never a second execution; a client that instead
//!   reuses that session number for a new request there gets the cached
//!   answer once (the next reuse runs). See [`cache`].
//! * **A login of a uid already on this gate kicks the old session**
//!   (reason `relogin`) instead of failing (skynet's `gated` raises), so a
//!   login server without multilogin never sees a stale session block a
//!   user; the old connection's late close never touches the new session.
//! * **An oversize response (content > 65530 bytes) becomes an error
//!   response** (`ok = 0`), instead of closing the connection and leaving the
//!   session's cache entry stuck "in progress" (spec §5.6).
//! * **maxclient is exact**: at most `maxclient` connections are open; the
//!   next one is accepted and closed at once without data (skynet serves
//!   `maxclient − 1`, spec §5.8).
//! * **Limits skynet does not have**: a handshake deadline (which also bounds
//!   a partial package buffered before authentication), a per-connection
//!   send queue bounded in bytes (responses the socket did not take yet; a
//!   client that stops reading is cut once they exceed
//!   `send_queue_bytes`), a cap on requests in flight per user (a request
//!   that would exceed `max_inflight_per_user` closes the connection), and a
//!   reconnect window after which an away user is logged out
//!   ([`EndReason::Expired`]; a user that never connects after its login
//!   too).
//! * **Graceful shutdown**: stop accepting, stop reading new requests, let
//!   requests in flight finish within the grace period, then close.
//!
//! Everything else — framing, status texts, response layout, the cache's
//! resend/absorb/conflict/retirement rules, subids 1, 2, 3… per gate — is
//! byte for byte skynet's.
//!
//! # Extensions
//!
//! A client opts in to the gate's extensions — server push with replay,
//! kick reasons, heartbeat — in its handshake; without that, it is served
//! exactly as by skynet and never receives a byte skynet would not send
//! (pushes to it are kept for a later opted-in connection, kicks just
//! close it, an empty package closes it, and by default no idle timeout
//! applies). Everything an opted-in connection receives is a package of
//! skynet's response layout `content ‖ u8(flag) ‖ BE32(n)`, with flags
//! 2 to 5 added to skynet's 0 (error) and 1 (ok), plus the empty package
//! of the heartbeat. All numbers are big-endian.
//!
//! | flag | package | when |
//! |---|---|---|
//! | 5 `WELCOME` | `v=1,idle=<ms>` ‖ 05 ‖ BE32(last push seq) | once, right after `200 OK` |
//! | 4 `PUSH_GAP` | 04 ‖ BE32(last lost seq) (no content) | in the replay, before the kept pushes |
//! | 2 `PUSH` | payload ‖ 02 ‖ BE32(seq) | replay after the welcome, then live |
//! | 3 `KICK` | reason ‖ 03 ‖ BE32(0) | last package before a close that ends the session |
//! | — | `00 00` (empty package) | answer to each empty package the client sends |
//!
//! ## Opting in: the handshake extension field
//!
//! The client appends `":" ext` to the handshake payload (skynet ignores
//! anything after a third `:`, so a skynet gate still accepts it):
//!
//! ```text
//! username ":" index ":" base64(mac) ":" ext
//! ext   = item *( "," item )
//! item  = key "=" value
//! key   = 1*( "a"-"z" / "0"-"9" / "_" / "-" )
//! value = *( visible ASCII %x21-7E except "," )
//! ```
//!
//! * `v` (required, once): the extension version, decimal ≥ 1; this is
//!   version `1`. A higher `v` is served as version 1.
//! * `push` (optional, once): the sequence number of the last push the
//!   client has seen **in this session** (decimal u32). Absent or `0`:
//!   none.
//! * Unknown keys are ignored. An empty field (`…:mac:`) is a plain
//!   handshake.
//! * Anything else is malformed → `400 Bad Request` (step 3 above): an
//!   empty item, no `=`, a character outside the grammar, no `v`, `v=0`,
//!   `v` or `push` not a 32-bit decimal integer, `v` or `push` twice.
//! * `push` above the session's last push (the client mixed up sessions)
//!   → `400 Bad Request`, after the MAC and index checks (step 6).
//!
//! The field is not covered by the MAC: it selects what the connection is
//! sent, never who it is. Parser: [`codec::ext::Ext`]. Example:
//! `aGVsbG8=@c2FtcGxl#MQ==:2:<mac>:v=1,push=17`.
//!
//! ## Welcome: `v=1,idle=<ms> ‖ 05 ‖ BE32(last push seq)`
//!
//! Right after `200 OK`, an opted-in connection gets one welcome package:
//! its content (same grammar; clients ignore unknown keys) gives the
//! extension version served (`v`) and the idle timeout of the connection in
//! milliseconds (`idle`, 0 = none); its session field is the sequence
//! number of the session's last push (0 if none), which is where the
//! replay that follows ends. A skynet gate ignores the extension field and
//! never sends this package, so a client knows from it whether the
//! extensions are on — in particular, it must not send heartbeats before
//! (skynet closes the connection on an empty package). Parser:
//! [`codec::ext::Welcome`].
//!
//! ## Push: `payload ‖ 02 ‖ BE32(seq)`
//!
//! The backend pushes with [`MsgGate::push`], [`MsgGate::push_all`] or
//! [`SessionCtx::push`]; payloads up to 65530 bytes (larger ones are
//! refused, never cut). Each session numbers its pushes 1, 2, 3… (`seq`,
//! in the session field), across all its connections; a new login starts
//! again at 1. The gate keeps the last `push_backlog` pushes (default 64,
//! at most `push_backlog_bytes` payload bytes, default 64 KiB) of each
//! session, also while the user is away or on a plain connection.
//!
//! * On an opted-in connection, a push is sent at once, through the same
//!   bounded send queue as responses (a client that does not read is
//!   disconnected; the push stays in the backlog for its reconnect).
//! * On a successful opted-in handshake with `push=K`, right after
//!   `200 OK` and the welcome, before anything else, the gate sends every
//!   kept push with `seq > K`, oldest first, each exactly once (a push made
//!   during the handshake is either in that replay or sent after it, never
//!   both). The client then remembers the highest `seq` it received and
//!   sends it as `push=` on its next handshake.
//!
//! ## Push gap: `04 ‖ BE32(last lost seq)` (empty content)
//!
//! When pushes after `K` were already dropped from the backlog, the replay
//! starts with one package of flag 4 (`PUSH_GAP`) whose session field is
//! the last lost sequence number `L` (pushes `K+1 ..= L` are lost); the
//! kept pushes `L+1 …` follow. A client sets its last seen push to `L`
//! (for flags 2 and 4 alike: "last seen = session field"), so a client
//! that ignores the notice still counts right. A distinct flag rather than
//! an empty push keeps empty push payloads legal and unambiguous, and
//! keeps "every flag-2 package is exactly one push" true.
//!
//! ## Kick: `reason ‖ 03 ‖ BE32(0)`
//!
//! When the session of an opted-in connection ends, the gate sends what
//! was still queued for it, then this package, flushes, and closes the
//! connection. The reason is UTF-8 text: the kick's reason
//! ([`MsgGate::kick`], [`SessionCtx::kick`]; `logged in again` when the
//! login server placed a new login of the same uid, `relogin` when the
//! gate itself replaced the session), `logout` when the agent logged the
//! user out, `shutdown` when the gate shuts down. After a kick the session
//! is gone (a new handshake gets 404): log in again. A plain connection is
//! just closed, as skynet's logout does. A connection closed while the
//! session lives on (superseded by a newer handshake, idle timeout, slow
//! reader, protocol error) gets no kick package: reconnect with index+1.
//!
//! ## Heartbeat: the empty package `00 00`, both ways
//!
//! An opted-in client may send an empty package (length 0; never a valid
//! request, skynet closes the connection on it) at any time; the gate
//! answers with an empty package, in order with the responses. An
//! opted-in connection that sends nothing at all for `idle_timeout_ms`
//! (default 60000; 0 = off) is closed without a package; the user becomes
//! away and may reconnect within the reconnect window. Clients ping when
//! they have sent nothing for a third of the welcome's `idle` (20 s by
//! default), and only once welcomed. Plain connections have their own
//! `plain_idle_timeout_ms`, default 0 (off), since skynet clients send
//! nothing while idle.
//!
//! # Session events
//!
//! The agent hears [`SessionEvent::Login`] when the login server places a
//! user, [`SessionEvent::Back`] on every successful handshake (the first
//! one too), [`SessionEvent::Away`] when the bound connection goes away
//! (skynet's "AFK"; not when it was closed because a newer one took over),
//! and [`SessionEvent::Ended`] once, whatever ends the session.

pub mod cache;
mod conn;
pub mod push;
pub(crate) mod user;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::ext::{Ext, Welcome};
use codec::message::{Handshake, MAX_RESPONSE_CONTENT, Response, ResponseFlag};
use codec::package::HEADER_LEN;
use codec::status::GateStatus;
use loginproto::handshake::{self, HandshakeError, SessionSecret};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::user::{Bound, CloseCause, ConnLink, Outgoing, User, push_wire_len, write_flagged};
use crate::agent::{Agent, SessionCtx, SessionEvent};
use crate::config::GateConfig;
use crate::link::{EndReason, LoginLink, LoginRefusal};

/// How long a kick waits for the kicked connection to close.
const KICK_WAIT: Duration = Duration::from_secs(5);

/// Pause after an accept error such as "too many open files", so the
/// accept loop does not spin while the process is out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Number of shards of the username table.
const SHARDS: usize = 64;

/// Why a handshake was refused. [`HandshakeRefusal::status`] is the one
/// place that maps it to a wire status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeRefusal {
    /// Not `username:index:mac`, or no such user on this gate.
    #[error("unknown user")]
    UnknownUser,
    /// The index is not a (finite) Lua number.
    #[error("index is not a finite number")]
    BadIndex,
    /// The MAC field is not base64.
    #[error("MAC is not valid base64")]
    BadMacEncoding,
    /// The extension field (after a third `:`) is malformed.
    #[error("malformed extension field")]
    BadExt,
    /// The extension field claims a push this session never made.
    #[error("last seen push is ahead of the session's pushes")]
    PushAhead,
    /// The MAC does not verify.
    #[error("MAC mismatch")]
    MacMismatch,
    /// The index is not above the last accepted one.
    #[error("index expired")]
    IndexExpired,
    /// The gate is shutting down: closed without a status.
    #[error("gate is shutting down")]
    ShuttingDown,
}

impl HandshakeRefusal {
    /// The status package to send, if any.
    pub fn status(self) -> Option<GateStatus> {
        match self {
            HandshakeRefusal::UnknownUser => Some(GateStatus::NOT_FOUND),
            HandshakeRefusal::BadIndex
            | HandshakeRefusal::BadMacEncoding
            | HandshakeRefusal::BadExt
            | HandshakeRefusal::PushAhead => Some(GateStatus::BAD_REQUEST),
            HandshakeRefusal::MacMismatch => Some(GateStatus::UNAUTHORIZED),
            HandshakeRefusal::IndexExpired => Some(GateStatus::INDEX_EXPIRED),
            HandshakeRefusal::ShuttingDown => None,
        }
    }
}

/// A snapshot of the gate's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateMetrics {
    /// Connections open now (authenticated or not).
    pub connections: usize,
    /// Users logged in now.
    pub sessions: usize,
    /// Connections closed at accept because maxclient were open.
    pub refused_at_accept: u64,
    /// Successful handshakes.
    pub handshakes_ok: u64,
    /// Refused handshakes (any status, or none at shutdown).
    pub handshakes_refused: u64,
    /// Re-sent sessions answered from the cache.
    pub resends: u64,
    /// Re-sent sessions absorbed by a handler still running.
    pub absorbed: u64,
    /// "Conflict session" closes.
    pub conflicts: u64,
    /// Connections cut because their send queue was full.
    pub slow_readers_cut: u64,
    /// Sessions ended (any reason).
    pub sessions_ended: u64,
    /// Pushes accepted (numbered and kept), one per user reached.
    pub pushes: u64,
    /// Pushes refused (payload too large, or no such session).
    pub pushes_refused: u64,
    /// Push-gap notices sent to reconnecting clients that were too far
    /// behind.
    pub push_gaps: u64,
    /// Connections closed for sending nothing within the idle timeout.
    pub idle_timeouts: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) connections: AtomicUsize,
    pub(crate) refused_at_accept: AtomicU64,
    pub(crate) handshakes_ok: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) resends: AtomicU64,
    pub(crate) absorbed: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) slow_readers_cut: AtomicU64,
    pub(crate) sessions_ended: AtomicU64,
    pub(crate) pushes: AtomicU64,
    pub(crate) pushes_refused: AtomicU64,
    pub(crate) push_gaps: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Users by username (or by uid).
type UserMap = HashMap<Bytes, Arc<User>>;

/// The username table, sharded so handshakes of different users do not
/// contend on one lock.
#[derive(Debug)]
struct Registry {
    shards: Box<[Mutex<UserMap>]>,
    hasher: RandomState,
}

impl Registry {
    fn new() -> Registry {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, username: &[u8]) -> MutexGuard<'_, UserMap> {
        let hash = self.hasher.hash_one(username);
        // `as usize` keeps the low bits, which is all a modulo needs.
        let shard = &self.shards[(hash as usize) % self.shards.len()];
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, username: &[u8]) -> Option<Arc<User>> {
        self.shard(username).get(username).cloned()
    }

    fn insert(&self, user: Arc<User>) {
        self.shard(&user.username)
            .insert(user.username.clone(), user);
    }

    fn remove_if(&self, user: &Arc<User>) {
        let mut shard = self.shard(&user.username);
        if shard
            .get(&user.username)
            .is_some_and(|u| Arc::ptr_eq(u, user))
        {
            shard.remove(&user.username);
        }
    }

    fn all(&self) -> Vec<Arc<User>> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Everything the connection tasks, users and completers share.
pub(crate) struct Shared {
    pub(crate) cfg: GateConfig,
    pub(crate) agent: Arc<dyn Agent>,
    login: Arc<dyn LoginLink>,
    sessions: Registry,
    uids: Mutex<UserMap>,
    next_subid: AtomicU64,
    next_conn: AtomicU64,
    permits: Arc<Semaphore>,
    pub(crate) tracker: TaskTracker,
    /// Cancelled when shutdown starts: no new sessions or handshakes.
    pub(crate) draining: CancellationToken,
    /// Cancelled when the shutdown grace is over.
    pub(crate) hard: CancellationToken,
    pub(crate) metrics: Metrics,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock_uids(&self) -> MutexGuard<'_, UserMap> {
        self.uids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks a handshake in the documented order (module docs) and, on
    /// success, binds a new connection to the user, closing the older one.
    /// For a client that opted in, also returns the packages to send right
    /// after `200 OK`: the welcome, the push-gap notice and the pushes it
    /// has not seen.
    pub(crate) fn handshake(
        self: &Arc<Self>,
        payload: &Bytes,
        addr: SocketAddr,
    ) -> Result<(Arc<User>, Arc<ConnLink>, BytesMut), HandshakeRefusal> {
        let hs = Handshake::parse(payload).ok_or(HandshakeRefusal::UnknownUser)?;
        let user = self
            .sessions
            .get(&hs.username)
            .ok_or(HandshakeRefusal::UnknownUser)?;
        let index = hs
            .index_number()
            .filter(|n| n.as_f64().is_finite())
            .ok_or(HandshakeRefusal::BadIndex)?;
        let ext = match &hs.ext {
            Some(text) => Ext::parse(text).map_err(|_| HandshakeRefusal::BadExt)?,
            None => None,
        };
        handshake::verify(&user.secret, &hs).map_err(|e| match e {
            HandshakeError::BadMacEncoding => HandshakeRefusal::BadMacEncoding,
            HandshakeError::MacMismatch => HandshakeRefusal::MacMismatch,
        })?;
        let link = Arc::new(ConnLink::new(
            self.next_conn.fetch_add(1, Ordering::Relaxed) + 1,
            ext.is_some(),
        ));
        let mut replay = BytesMut::new();
        let old = {
            let mut st = user.lock();
            if st.ended {
                return Err(HandshakeRefusal::UnknownUser);
            }
            if index.partial_cmp(&st.version) != Some(std::cmp::Ordering::Greater) {
                return Err(HandshakeRefusal::IndexExpired);
            }
            // Checked under the user lock: shutdown marks every bound
            // connection after cancelling `draining`, so a handshake either
            // sees the cancellation here or is seen by the shutdown.
            if self.draining.is_cancelled() {
                return Err(HandshakeRefusal::ShuttingDown);
            }
            if let Some(ext) = ext {
                // Under the lock that pushes take: every push is either in
                // this replay or queued to the new connection, never both.
                let pending = st
                    .pushes
                    .replay(ext.last_push)
                    .map_err(|_| HandshakeRefusal::PushAhead)?;
                let welcome = Welcome {
                    version: Ext::VERSION,
                    idle_ms: u32::try_from(self.cfg.idle_timeout_ms).unwrap_or(u32::MAX),
                };
                write_flagged(
                    &mut replay,
                    welcome.encode().as_bytes(),
                    ResponseFlag::WELCOME,
                    st.pushes.last_seq(),
                );
                if let Some(lost) = pending.lost_through {
                    bump(&self.metrics.push_gaps);
                    write_flagged(&mut replay, &[], ResponseFlag::PUSH_GAP, lost);
                }
                for (seq, payload) in pending.pushes() {
                    write_flagged(&mut replay, &payload, ResponseFlag::PUSH, seq);
                }
            }
            st.version = index;
            st.away_gen += 1;
            if let Some(timer) = st.away_timer.take() {
                timer.abort();
            }
            st.bound.replace(Bound::new(Arc::clone(&link)))
        };
        if let Some(old) = old {
            tracing::debug!(
                uid = %String::from_utf8_lossy(&user.uid),
                subid = %String::from_utf8_lossy(&user.subid),
                "newer handshake: closing the older connection"
            );
            old.link.close(CloseCause::Superseded);
        }
        self.agent.event(
            &SessionCtx::new(Arc::clone(&user)),
            SessionEvent::Back { addr },
        );
        Ok((user, link, replay))
    }

    /// Numbers a push to `user`, keeps it in the backlog and queues it to
    /// an opted-in bound connection (see [`MsgGate::push`]).
    pub(crate) fn push_to(&self, user: &User, payload: Bytes) -> Option<u32> {
        if payload.len() > MAX_RESPONSE_CONTENT {
            bump(&self.metrics.pushes_refused);
            tracing::debug!(
                uid = %String::from_utf8_lossy(&user.uid),
                len = payload.len(),
                "push does not fit in a package: refused"
            );
            return None;
        }
        let mut st = user.lock();
        if st.ended {
            bump(&self.metrics.pushes_refused);
            return None;
        }
        let seq = st.pushes.push(
            payload.clone(),
            self.cfg.push_backlog,
            self.cfg.push_backlog_bytes,
        );
        let Some(seq) = seq else {
            bump(&self.metrics.pushes_refused);
            return None;
        };
        bump(&self.metrics.pushes);
        if let Some(bound) = st.bound.as_mut().filter(|b| b.link.ext) {
            if bound.outbox_bytes + push_wire_len(payload.len()) > self.cfg.send_queue_bytes {
                // The task has not even taken what is queued: the client
                // does not read. The push stays in the backlog for its
                // reconnect.
                bound.link.close(CloseCause::SlowReader);
            } else {
                bound.queue(Outgoing::Push { seq, payload });
            }
        }
        Some(seq)
    }

    /// Ends a session: unregisters the user, closes its connection, tells
    /// the agent and the login server. Returns the closed connection's link
    /// (to wait for it), or `None` if there was none. Idempotent.
    pub(crate) fn end_session(
        self: &Arc<Self>,
        user: &Arc<User>,
        reason: EndReason,
    ) -> Option<Arc<ConnLink>> {
        let (bound, timer) = {
            let mut st = user.lock();
            if st.ended {
                return None;
            }
            st.ended = true;
            st.cache.clear();
            let bound = st.bound.take();
            if let Some(bound) = bound.as_ref().filter(|b| b.link.ext) {
                // Under the lock: the connection's task learns that the
                // session ended either from the link or from this state,
                // and finds the farewell set either way.
                bound.link.set_farewell(farewell(&bound.outbox, &reason));
            }
            (bound, st.away_timer.take())
        };
        if let Some(timer) = timer {
            timer.abort();
        }
        if let Some(bound) = &bound {
            bound.link.close(CloseCause::SessionEnded);
        }
        self.sessions.remove_if(user);
        {
            let mut uids = self.lock_uids();
            if uids.get(&user.uid).is_some_and(|u| Arc::ptr_eq(u, user)) {
                uids.remove(&user.uid);
            }
        }
        bump(&self.metrics.sessions_ended);
        tracing::info!(
            uid = %String::from_utf8_lossy(&user.uid),
            subid = %String::from_utf8_lossy(&user.subid),
            reason = ?reason,
            "session ended"
        );
        self.agent.event(
            &SessionCtx::new(Arc::clone(user)),
            SessionEvent::Ended(reason.clone()),
        );
        self.login
            .session_ended(self.cfg.name.as_bytes(), &user.uid, &user.subid, &reason);
        bound.map(|b| b.link)
    }

    /// Ends a session and waits (bounded) until its connection is closed.
    async fn kick_user(self: &Arc<Self>, user: &Arc<User>, reason: EndReason) {
        if let Some(link) = self.end_session(user, reason) {
            let _ = tokio::time::timeout(KICK_WAIT, link.finished()).await;
        }
    }

    /// Starts the reconnect-window timer of a user that has no connection.
    pub(crate) fn start_away_timer(self: &Arc<Self>, user: &Arc<User>, generation: u64) {
        let window = self.cfg.reconnect_window();
        let draining = self.draining.clone();
        let timer_user = Arc::clone(user);
        let handle = self.tracker.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(window) => {}
                () = draining.cancelled() => return,
            }
            let expired = {
                let st = timer_user.lock();
                !st.ended && st.bound.is_none() && st.away_gen == generation
            };
            if expired {
                timer_user.end(EndReason::Expired);
            }
        });
        let mut st = user.lock();
        if !st.ended && st.bound.is_none() && st.away_gen == generation {
            if let Some(old) = st.away_timer.replace(handle.abort_handle()) {
                old.abort();
            }
        } else {
            handle.abort();
        }
    }

    /// Marks every bound connection with `cause` (shutdown phases).
    fn close_all(&self, cause: CloseCause) {
        for user in self.sessions.all() {
            if let Some(bound) = user.lock().bound.as_ref() {
                bound.link.close(cause);
            }
        }
    }
}

/// The kick reason text an opted-in client is sent when its session ends.
pub(crate) fn kick_reason(reason: &EndReason) -> &str {
    match reason {
        EndReason::Kicked(reason) => reason,
        EndReason::Logout => "logout",
        EndReason::Expired => "expired",
        EndReason::Shutdown => "shutdown",
    }
}

/// Appends the kick package `reason ‖ 03 ‖ BE32(0)`, the reason cut to
/// what fits in a package (at a character boundary).
pub(crate) fn write_kick(out: &mut BytesMut, reason: &str) {
    let mut end = reason.len().min(MAX_RESPONSE_CONTENT);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    write_flagged(out, &reason.as_bytes()[..end], ResponseFlag::KICK, 0);
}

/// What an opted-in connection is sent when its session ends: what was
/// still queued for it, then the kick package.
fn farewell(outbox: &[Outgoing], reason: &EndReason) -> Bytes {
    let mut out = BytesMut::new();
    for item in outbox {
        item.write_to(&mut out);
    }
    write_kick(&mut out, kick_reason(reason));
    out.freeze()
}

/// Builds a response package (spec §5.4). An error, or content too large
/// for one package, gives the error response `00 ‖ BE32(session)`.
pub(crate) fn response_package(session: u32, result: Result<Bytes, String>, uid: &[u8]) -> Bytes {
    let (content, flag) = match result {
        Ok(content) if content.len() <= MAX_RESPONSE_CONTENT => (content, ResponseFlag::OK),
        Ok(content) => {
            tracing::debug!(
                uid = %String::from_utf8_lossy(uid),
                session,
                len = content.len(),
                "response does not fit in a package: sent as an error response"
            );
            (Bytes::new(), ResponseFlag::ERROR)
        }
        Err(reason) => {
            tracing::debug!(
                uid = %String::from_utf8_lossy(uid),
                session,
                %reason,
                "handler error"
            );
            (Bytes::new(), ResponseFlag::ERROR)
        }
    };
    let mut buf = BytesMut::with_capacity(HEADER_LEN + content.len() + 5);
    if Response::encode(&content, flag, session, &mut buf).is_err() {
        // Unreachable: the content length was checked above.
        buf.clear();
        let _ = Response::encode(&[], ResponseFlag::ERROR, session, &mut buf);
    }
    buf.freeze()
}

/// The message gate. Cheap to clone (one `Arc`); all clones are the same
/// gate.
#[derive(Clone, Debug)]
pub struct MsgGate {
    inner: Arc<Shared>,
}

impl MsgGate {
    /// A gate named `cfg.name`, answering requests with `agent` and
    /// reporting ended sessions to `login`. Nothing listens until
    /// [`MsgGate::serve`].
    pub fn new(cfg: GateConfig, agent: Arc<dyn Agent>, login: Arc<dyn LoginLink>) -> MsgGate {
        let permits = Arc::new(Semaphore::new(cfg.maxclient.min(Semaphore::MAX_PERMITS)));
        MsgGate {
            inner: Arc::new(Shared {
                cfg,
                agent,
                login,
                sessions: Registry::new(),
                uids: Mutex::new(HashMap::new()),
                next_subid: AtomicU64::new(0),
                next_conn: AtomicU64::new(0),
                permits,
                tracker: TaskTracker::new(),
                draining: CancellationToken::new(),
                hard: CancellationToken::new(),
                metrics: Metrics::default(),
            }),
        }
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.inner)
    }

    /// The gate's server name.
    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    /// The gate's configuration.
    pub fn config(&self) -> &GateConfig {
        &self.inner.cfg
    }

    /// skynet's `login_handler`: registers `uid` with the session `secret`
    /// and returns the subid (decimal text; 1, 2, 3… per gate).
    ///
    /// If the uid is already logged in on this gate, that session is kicked
    /// first (reason `relogin`) and this waits until its connection is
    /// closed. The old session's late events can never remove the new one:
    /// every removal checks it removes that very session.
    ///
    /// The new user has the reconnect window to connect, like an away user.
    pub async fn login(&self, uid: Bytes, secret: SessionSecret) -> Result<Bytes, LoginRefusal> {
        let sh = &self.inner;
        let user = loop {
            if sh.draining.is_cancelled() {
                return Err(LoginRefusal::Unavailable(
                    "gate is shutting down".to_owned(),
                ));
            }
            let old = {
                let mut uids = sh.lock_uids();
                match uids.get(&uid) {
                    Some(old) => Arc::clone(old),
                    None => {
                        let n = sh.next_subid.fetch_add(1, Ordering::Relaxed) + 1;
                        let subid = Bytes::from(n.to_string());
                        let username =
                            Bytes::from(handshake::username(&uid, sh.cfg.name.as_bytes(), &subid));
                        let user = Arc::new(User::new(
                            Arc::downgrade(sh),
                            uid.clone(),
                            subid,
                            username,
                            secret.clone(),
                            sh.cfg.expired_number,
                        ));
                        uids.insert(uid.clone(), Arc::clone(&user));
                        sh.sessions.insert(Arc::clone(&user));
                        break user;
                    }
                }
            };
            sh.kick_user(&old, EndReason::Kicked("relogin".to_owned()))
                .await;
        };
        tracing::info!(
            uid = %String::from_utf8_lossy(&user.uid),
            subid = %String::from_utf8_lossy(&user.subid),
            "login"
        );
        sh.agent
            .event(&SessionCtx::new(Arc::clone(&user)), SessionEvent::Login);
        let generation = user.lock().away_gen;
        sh.start_away_timer(&user, generation);
        Ok(user.subid.clone())
    }

    /// Ends session `(uid, subid)` with [`EndReason::Kicked`]`(reason)`:
    /// its connection is closed, the agent and the login server are told.
    /// Resolves once the connection is closed (at most a few seconds).
    /// Does nothing if there is no such session.
    pub async fn kick(&self, uid: &[u8], subid: &[u8], reason: String) {
        let sh = &self.inner;
        let username = handshake::username(uid, sh.cfg.name.as_bytes(), subid);
        let Some(user) = sh.sessions.get(&username) else {
            return;
        };
        sh.kick_user(&user, EndReason::Kicked(reason)).await;
    }

    /// Pushes `payload` to the session of `uid` and returns the push's
    /// sequence number (1, 2, 3… per session), or `None` if `uid` has no
    /// session on this gate or the payload is larger than 65530 bytes (a
    /// push is never cut or split).
    ///
    /// The push is kept in the user's push backlog (`push_backlog`,
    /// `push_backlog_bytes`) and sent at once to the user's connection if
    /// it opted in to the extensions; a plain skynet connection is never
    /// sent a push, and a user that is away gets it replayed when it
    /// reconnects (module docs). Never waits: the push is queued like a
    /// late response, and a client whose queue overflows is disconnected.
    pub fn push(&self, uid: &[u8], payload: Bytes) -> Option<u32> {
        let user = self.inner.lock_uids().get(uid).cloned();
        match user {
            Some(user) => self.inner.push_to(&user, payload),
            None => {
                bump(&self.inner.metrics.pushes_refused);
                None
            }
        }
    }

    /// Pushes `payload` to every session of this gate (as [`MsgGate::push`]
    /// to each) and returns how many sessions took it. The payload is
    /// shared, not copied, between all of them.
    pub fn push_all(&self, payload: Bytes) -> usize {
        if payload.len() > MAX_RESPONSE_CONTENT {
            bump(&self.inner.metrics.pushes_refused);
            return 0;
        }
        let users: Vec<Arc<User>> = self.inner.lock_uids().values().cloned().collect();
        users
            .iter()
            .filter(|user| self.inner.push_to(user, payload.clone()).is_some())
            .count()
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> GateMetrics {
        let m = &self.inner.metrics;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GateMetrics {
            connections: m.connections.load(Ordering::Relaxed),
            sessions: self.inner.lock_uids().len(),
            refused_at_accept: get(&m.refused_at_accept),
            handshakes_ok: get(&m.handshakes_ok),
            handshakes_refused: get(&m.handshakes_refused),
            resends: get(&m.resends),
            absorbed: get(&m.absorbed),
            conflicts: get(&m.conflicts),
            slow_readers_cut: get(&m.slow_readers_cut),
            sessions_ended: get(&m.sessions_ended),
            pushes: get(&m.pushes),
            pushes_refused: get(&m.pushes_refused),
            push_gaps: get(&m.push_gaps),
            idle_timeouts: get(&m.idle_timeouts),
        }
    }

    /// Accepts clients on `listener` until `shutdown` is cancelled, then
    /// shuts the gate down and returns once it is done:
    ///
    /// 1. stop accepting (the listener is closed) and refuse new logins and
    ///    handshakes;
    /// 2. connections stop reading new requests; each closes once the
    ///    requests in flight of its user are answered and written;
    /// 3. after `cfg.shutdown_grace_ms`, the remaining connections are
    ///    closed;
    /// 4. every session ends with [`EndReason::Shutdown`].
    ///
    /// At most `cfg.maxclient` connections are open at once: a connection
    /// permit is taken before `accept` and moved into the connection's task,
    /// so it is released on every way a connection can end; when none is
    /// left, the accepted connection is closed at once without data.
    ///
    /// Call it once per gate.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let sh = &self.inner;
        tracing::info!(
            addr = ?listener.local_addr().ok(),
            name = %sh.cfg.name,
            maxclient = sh.cfg.maxclient,
            "message gate listening"
        );
        loop {
            let mut permit = Arc::clone(&sh.permits).try_acquire_owned().ok();
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sh.draining.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, addr) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    if is_resource_error(&e) {
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            };
            if permit.is_none() {
                // A connection may have closed while we waited in accept.
                permit = Arc::clone(&sh.permits).try_acquire_owned().ok();
            }
            let Some(permit) = permit else {
                bump(&sh.metrics.refused_at_accept);
                tracing::debug!(%addr, "maxclient connections open: closed at accept");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            sh.tracker
                .spawn(conn::run(Arc::clone(sh), stream, addr, permit));
        }
        drop(listener);
        self.drain().await;
        Ok(())
    }

    /// Steps 2–4 of [`MsgGate::serve`]'s shutdown.
    async fn drain(&self) {
        let sh = &self.inner;
        tracing::info!(name = %sh.cfg.name, "message gate shutting down");
        sh.draining.cancel();
        sh.close_all(CloseCause::Drain);
        sh.tracker.close();
        let grace = sh.cfg.shutdown_grace();
        if tokio::time::timeout(grace, sh.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = sh.cfg.shutdown_grace_ms,
                "shutdown grace over: closing the remaining connections"
            );
            sh.hard.cancel();
            sh.close_all(CloseCause::ShutdownNow);
            sh.tracker.wait().await;
        }
        for user in sh.sessions.all() {
            sh.end_session(&user, EndReason::Shutdown);
        }
        tracing::info!(name = %sh.cfg.name, "message gate stopped");
    }
}

/// Accept errors that mean "out of resources, try again later".
fn is_resource_error(e: &io::Error) -> bool {
    // EMFILE / ENFILE / ENOBUFS / ENOMEM have no stable ErrorKind.
    matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12))
}

#[cfg(test)]
mod tests {
    use codec::message::{Response, ResponseFlag};
    use codec::package::PackageCodec;
    use tokio_util::codec::Decoder;

    use super::*;

    #[test]
    fn extension_refusals_are_400() {
        for refusal in [HandshakeRefusal::BadExt, HandshakeRefusal::PushAhead] {
            assert_eq!(refusal.status(), Some(GateStatus::BAD_REQUEST));
        }
    }

    #[test]
    fn kick_package_layout_and_long_reasons() {
        let mut out = BytesMut::new();
        write_kick(&mut out, "bye");
        assert_eq!(&out[..], b"\x00\x08bye\x03\x00\x00\x00\x00");

        // A reason too long for one package is cut at a character boundary.
        let reason = "é".repeat(40_000);
        let mut out = BytesMut::new();
        write_kick(&mut out, &reason);
        let payload = PackageCodec.decode(&mut out).unwrap().unwrap();
        let kick = Response::parse(payload).unwrap();
        assert_eq!((kick.flag, kick.session), (ResponseFlag::KICK, 0));
        assert_eq!(kick.content.len(), MAX_RESPONSE_CONTENT);
        assert!(std::str::from_utf8(&kick.content).is_ok());
        assert_eq!(kick_reason(&EndReason::Logout), "logout");
        assert_eq!(kick_reason(&EndReason::Kicked("x".into())), "x");
    }

    #[test]
    fn farewell_flushes_the_outbox_first() {
        let outbox = vec![
            Outgoing::Package(Bytes::from_static(b"\x00\x07ok\x01\x00\x00\x00\x07")),
            Outgoing::Push {
                seq: 3,
                payload: Bytes::from_static(b"p"),
            },
        ];
        let bytes = farewell(&outbox, &EndReason::Kicked("bye".into()));
        let mut buf = BytesMut::from(&bytes[..]);
        let mut seen = Vec::new();
        while let Some(payload) = PackageCodec.decode(&mut buf).unwrap() {
            let r = Response::parse(payload).unwrap();
            seen.push((r.content.to_vec(), r.flag, r.session));
        }
        assert_eq!(
            seen,
            vec![
                (b"ok".to_vec(), ResponseFlag::OK, 7),
                (b"p".to_vec(), ResponseFlag::PUSH, 3),
                (b"bye".to_vec(), ResponseFlag::KICK, 0),
            ]
        );
    }
}
