//! The message gate (skynet's `snax.msgserver`): the players' sessions and
//! connections, on tokio.
//!
//! [`MsgGate`] owns the sessions the login server places on this gate,
//! accepts client connections ([`MsgGate::serve`]) and runs them until they
//! end. The rules live in the `gate-core` crate, as state machines without
//! I/O: [`gate_core::session`] (how a player is treated) and
//! [`gate_core::connection`] (how a connection is treated). Here, each part
//! has one job:
//!
//! * `core`: the session tables and the one place that carries out what a
//!   session asks for;
//! * `driver`: the one connection driver, pumping both machines over any
//!   transport; `tcp` and `ws`: the two transports; `requests`: the
//!   request path from a request to the agent and back;
//! * `handle`: how other tasks wake a connection's task or ask it to close;
//! * `timers`: the gate's one timer facility and clock (session and
//!   connection deadlines).
//!
//! What a client sees — framing, status texts, the handshake's check order,
//! the cache rules, pushes, kicks, heartbeats, every difference from
//! skynet — is written down in `docs/PROTOCOL.md`.

mod core;
mod driver;
mod handle;
pub(crate) mod handoff;
mod metrics;
mod opening;
mod read_ahead;
mod requests;
mod rest;
mod restored;
mod tcp;
mod timers;
mod tls_tcp;
mod transport;
mod user;
mod ws;
mod ws_plain;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::net::SocketAddr;

use bytes::Bytes;
use codec::message::MAX_RESPONSE_CONTENT;
use gate_core::End;
use gate_core::session::PushRefused;
use loginproto::handshake::{self, SessionSecret};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use self::core::GateCore;
pub use self::handoff::{Forward, Forwarded, HandedConn, ParkedConn, Prepared};
use self::metrics::bump;
pub use self::metrics::{GateMetrics, RefusedStatus, SESSION_ENDS};
use self::user::User;
pub use self::ws_plain::WsState;
use crate::agent::Agent;
use crate::config::GateConfig;
use crate::login::placement::{LoginLink, LoginRefusal};
use crate::net::web::WebPolicy;
use crate::net::{self, AtCapacity, RefusalLog};

/// Counts over every session of a gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Sessions bound to a connection.
    pub online: usize,
    /// The others (away, or placed and not connected yet).
    pub away: usize,
    /// Bytes queued for clients (pushes and answers made by other tasks)
    /// and not yet taken by their connections.
    pub queued_bytes: usize,
}

/// One session, as the operations API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The uid.
    pub uid: Bytes,
    /// Its subid on this gate.
    pub subid: Bytes,
    /// This gate's server name.
    pub server: String,
    /// Online (connected), away, placed (never connected) or ended.
    pub phase: gate_core::session::Phase,
    /// The last accepted handshake index (as text).
    pub index: String,
    /// Requests running.
    pub inflight: u32,
    /// Answers kept for re-sends.
    pub cached_answers: usize,
    /// Their bytes.
    pub cached_bytes: usize,
    /// The sequence number of the last push (0: none yet).
    pub last_push: u32,
}

/// At most one line per this interval summarises the connections refused
/// at accept.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long a kick waits for the kicked connection to close.
const KICK_WAIT: Duration = Duration::from_secs(5);

/// The message gate. Cheap to clone (one `Arc`); all clones are the same
/// gate.
#[derive(Clone, Debug)]
pub struct MsgGate {
    core: Arc<GateCore>,
}

impl MsgGate {
    /// A gate named `cfg.name`, answering requests with `agent` and
    /// reporting ended sessions to `login`. Nothing listens until
    /// [`MsgGate::serve`].
    pub fn new(cfg: GateConfig, agent: Arc<dyn Agent>, login: Arc<dyn LoginLink>) -> MsgGate {
        MsgGate {
            core: Arc::new(GateCore::new(cfg, agent, login)),
        }
    }

    /// The gate's server name.
    pub fn name(&self) -> &str {
        &self.core.cfg.name
    }

    /// The gate's configuration as it applies now: the one it started
    /// with, with the limits of the last reload ([`MsgGate::reconfigure`]).
    pub fn config(&self) -> Arc<GateConfig> {
        self.core.current.load()
    }

    /// Applies the limits of `cfg` while the gate runs (a configuration
    /// reload): sessions placed from now on live by its session limits
    /// (`reconnect_window`, `max_inflight_per_user`, `send_queue_bytes`,
    /// `expired_number`, `cache_bytes`, `push_backlog`,
    /// `push_backlog_bytes`, `idle_timeout`), connections accepted from now
    /// on by its connection limits (`handshake_timeout`, `idle_timeout`,
    /// `plain_idle_timeout`, `send_queue_bytes`); sessions and connections
    /// already there keep theirs, so none is cut by a change it did not
    /// start under. `maxclient` and the per-source bounds hold for the
    /// next connection: none open is closed, and while more are open than
    /// a lowered bound allows, new ones are refused. The name, the listen
    /// address and the shutdown grace are not changed.
    pub fn reconfigure(&self, cfg: &GateConfig) {
        self.core.apply(cfg);
    }

    /// skynet's `login_handler`: registers `uid` with the session `secret`
    /// and returns the subid (decimal text; 1, 2, 3… per gate).
    ///
    /// If the uid is already logged in on this gate, that session is kicked
    /// first ([`End::Relogin`]) and this waits until its connection is
    /// closed. The old session's late events can never remove the new one.
    /// The new session has the reconnect window to connect.
    pub async fn login(&self, uid: Bytes, secret: SessionSecret) -> Result<Bytes, LoginRefusal> {
        self.login_as(uid.clone(), uid, secret).await
    }

    /// [`MsgGate::login`] of a user who logged in as `user` and was given
    /// another `uid` by the authenticator: its handshakes may name either
    /// (the client does not know the uid).
    pub async fn login_as(
        &self,
        uid: Bytes,
        user: Bytes,
        secret: SessionSecret,
    ) -> Result<Bytes, LoginRefusal> {
        loop {
            if self.core.draining.is_cancelled() {
                return Err(LoginRefusal::Unavailable(
                    "gate is shutting down".to_owned(),
                ));
            }
            if self.core.drained.load(Ordering::Acquire) {
                return Err(LoginRefusal::Unavailable("gate is draining".to_owned()));
            }
            match self.core.place(&uid, &user, &secret) {
                Ok(user) => return Ok(user.subid.clone()),
                Err(old) => self.kick_user(&old, End::Relogin).await,
            }
        }
    }

    /// Ends session `(uid, subid)` for `reason` (a session ending of
    /// [`End`]: a kick, a relogin...): its connection is closed, the agent
    /// and the login server are told. Resolves once the connection is
    /// closed (at most a few seconds). Does nothing if there is no such
    /// session.
    pub async fn kick(&self, uid: &[u8], subid: &[u8], reason: End) {
        let username = handshake::username(uid, self.core.cfg.name.as_bytes(), subid);
        if let Some(user) = self.core.user_by_username(&username) {
            self.kick_user(&user, reason).await;
        }
    }

    async fn kick_user(&self, user: &Arc<User>, reason: End) {
        if let Some(conn) = self.core.end(user, reason) {
            let _ = tokio::time::timeout(KICK_WAIT, conn.finished()).await;
        }
    }

    /// Pushes `payload` to the session of `uid` and returns the push's
    /// sequence number (1, 2, 3… per session). Refused when `uid` has no
    /// session on this gate or the payload is larger than 65530 bytes (a
    /// push is never cut or split).
    ///
    /// The push is kept in the session's backlog for replay and sent at
    /// once to its connection if that opted in to the extensions (a plain
    /// skynet connection is never sent a push). Never waits: a client whose
    /// send queue overflows is disconnected.
    pub fn push(&self, uid: &[u8], payload: Bytes) -> Result<u32, PushRefused> {
        match self.core.user_by_uid(uid) {
            Some(user) => self.core.push_to(&user, payload),
            None => {
                bump(&self.core.metrics.pushes_refused);
                Err(PushRefused::Ended)
            }
        }
    }

    /// Pushes `payload` to every session of this gate (as [`MsgGate::push`]
    /// to each) and returns how many sessions took it. The payload is
    /// shared, not copied, between all of them.
    pub fn push_all(&self, payload: Bytes) -> usize {
        if payload.len() > MAX_RESPONSE_CONTENT {
            bump(&self.core.metrics.pushes_refused);
            return 0;
        }
        self.core
            .users()
            .iter()
            .filter(|user| self.core.push_to(user, payload.clone()).is_ok())
            .count()
    }

    /// The `(uid, subid)` of every session on this gate (a snapshot).
    pub fn session_ids(&self) -> Vec<(Bytes, Bytes)> {
        self.core
            .users()
            .iter()
            .map(|u| (u.uid.clone(), u.subid.clone()))
            .collect()
    }

    /// Whether the gate refuses new sessions: it is shutting down, or an
    /// operator drained it ([`MsgGate::set_drained`]).
    pub fn is_draining(&self) -> bool {
        self.core.draining.is_cancelled() || self.core.drained.load(Ordering::Acquire)
    }

    /// Drains the gate (or undoes it): new logins are refused (`403` on the
    /// login line, "gate is draining"), while established sessions go on
    /// and may reconnect. For rolling restarts: drain, wait for the users
    /// to leave or move, then stop it.
    pub fn set_drained(&self, drained: bool) {
        self.core.drained.store(drained, Ordering::Release);
    }

    /// Sessions bound to a connection, and the others (away, or placed and
    /// not connected yet). Walks every session: for scrapes, not for hot
    /// paths.
    pub fn sessions_by_phase(&self) -> (usize, usize) {
        let stats = self.session_stats();
        (stats.online, stats.away)
    }

    /// [`MsgGate::sessions_by_phase`] and the bytes queued for clients, in
    /// one walk over the sessions.
    pub fn session_stats(&self) -> SessionStats {
        let users = self.core.users();
        let mut stats = SessionStats::default();
        for user in &users {
            let state = user.lock();
            if state.session.phase() == gate_core::session::Phase::Online {
                stats.online += 1;
            }
            stats.queued_bytes += state.session.queued_bytes();
        }
        stats.away = users.len() - stats.online;
        stats
    }

    /// What the gate knows of the session of `uid`, if it has one.
    pub fn session_info(&self, uid: &[u8]) -> Option<SessionInfo> {
        let user = self.core.user_by_uid(uid)?;
        let state = user.lock();
        let session = &state.session;
        Some(SessionInfo {
            uid: user.uid.clone(),
            subid: user.subid.clone(),
            server: self.core.cfg.name.clone(),
            phase: session.phase(),
            index: match session.index() {
                codec::message::LuaNumber::Int(n) => n.to_string(),
                codec::message::LuaNumber::Float(f) => f.to_string(),
            },
            inflight: session.inflight(),
            cached_answers: session.cache().len(),
            cached_bytes: session.cache().bytes(),
            last_push: session.pushes().last_seq(),
        })
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> GateMetrics {
        let m = &self.core.metrics;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GateMetrics {
            connections: m.connections.load(Ordering::Relaxed),
            sessions: self.core.sessions(),
            refused_at_accept: get(&m.refused_at_accept),
            refused_per_source: get(&m.refused_per_source),
            handshakes_ok: get(&m.handshakes_ok),
            handshakes_refused: get(&m.handshakes_refused),
            resends: get(&m.resends),
            lost: get(&m.lost),
            absorbed: get(&m.absorbed),
            conflicts: get(&m.conflicts),
            slow_readers_cut: get(&m.slow_readers_cut),
            sessions_ended: get(&m.sessions_ended),
            pushes: get(&m.pushes),
            pushes_refused: get(&m.pushes_refused),
            push_gaps: get(&m.push_gaps),
            idle_timeouts: get(&m.idle_timeouts),
            sealed_handshakes: get(&m.sealed_handshakes),
            bad_seals: get(&m.bad_seals),
            timers: self.core.timers.len(),
            requests: m.requests.get(),
            responses: m.responses.get(),
            error_responses: m.error_responses.get(),
            ended_by: std::array::from_fn(|i| get(&m.ended_by[i])),
            inflight_cut: get(&m.inflight_cut),
            pushes_replayed: get(&m.pushes_replayed),
            handshake_timeouts: get(&m.handshake_timeouts),
            refused_by: std::array::from_fn(|i| get(&m.refused_by[i])),
            websocket_connections: m.ws_connections.load(Ordering::Relaxed),
            websocket_origin_refused: get(&m.ws_origin_refused),
            websocket_upgrades_failed: get(&m.ws_upgrades_failed),
            websocket_protocol_closes: get(&m.ws_protocol_closes),
            resting_connections: m.resting.load(Ordering::Relaxed),
            rest_wakes: get(&m.rest_wakes),
        }
    }

    /// Accepts clients on `listener` until `shutdown` is cancelled, then
    /// shuts the gate down and returns once it is done:
    ///
    /// 1. stop accepting (the listener is closed) and refuse new logins and
    ///    handshakes;
    /// 2. connections stop reading new requests; each closes once the
    ///    requests in flight of its user are answered and written;
    /// 3. after `cfg.shutdown_grace`, the remaining connections are closed;
    /// 4. every session ends with [`End::Shutdown`].
    ///
    /// At most `cfg.maxclient` connections are open at once: a connection
    /// permit is taken before `accept` and moved into the connection's task;
    /// when none is left, the accepted connection is closed at once.
    ///
    /// Call it once per gate.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        self.serve_with_web(listener, None, shutdown).await
    }

    /// [`MsgGate::serve`], plus WebSocket clients on `web`
    /// (`docs/PROTOCOL.md` §9): the same sessions, limits and shutdown;
    /// `maxclient` and the per-source bound count both listeners together.
    pub async fn serve_with_web(
        &self,
        listener: TcpListener,
        web: Option<(TcpListener, Arc<WebPolicy>)>,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        self.serve_listeners(listener, web, None, shutdown).await
    }

    /// [`MsgGate::serve_with_web`], plus TLS clients on `tls` (the same
    /// packages inside TLS, `[tls] gate_listen`).
    pub async fn serve_listeners(
        &self,
        listener: TcpListener,
        web: Option<(TcpListener, Arc<WebPolicy>)>,
        tls: Option<(TcpListener, crate::tls::ServerTls)>,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let core = &self.core;
        if let Some(addr) = tls.as_ref().and_then(|(l, _)| l.local_addr().ok()) {
            tracing::info!(%addr, name = %core.cfg.name, "message gate listening for TLS clients");
        }
        if let Some(addr) = web.as_ref().and_then(|(l, _)| l.local_addr().ok()) {
            tracing::info!(%addr, name = %core.cfg.name, "message gate listening for WebSocket clients");
        }
        tracing::info!(
            addr = ?listener.local_addr().ok(),
            name = %core.cfg.name,
            maxclient = core.cfg.maxclient,
            "message gate listening"
        );
        let timers_stop = CancellationToken::new();
        let timers = tokio::spawn({
            let core = Arc::clone(core);
            let stop = timers_stop.clone();
            async move {
                core.timers
                    .run(stop, |timer, now| core.fire(timer, now))
                    .await
            }
        });
        // Resting connections' sockets wait in a set of their own.
        let rest_stop = CancellationToken::new();
        let resting = tokio::spawn(rest::watch(Arc::clone(core), rest_stop.clone()));
        let per_source = &core.per_source;
        let refusals = RefusalLog::new("gate", REFUSAL_LOG_EVERY);
        let start = |stream: TcpStream,
                     addr: SocketAddr,
                     permit: Option<OwnedSemaphorePermit>,
                     via: &Via| {
            let Some(permit) = permit else {
                bump(&core.metrics.refused_at_accept);
                refusals.refused("maxclient");
                return;
            };
            let source = match per_source.enter(addr.ip()) {
                Ok(source) => source,
                Err(refused) => {
                    bump(&core.metrics.refused_per_source);
                    refusals.refused(refused.label());
                    return;
                }
            };
            let slots = (permit, source);
            match via {
                Via::Tcp => {
                    core.tracker
                        .spawn(driver::run_tcp(Arc::clone(core), stream, addr, slots))
                }
                Via::Web(policy) if policy.is_tls() => core.tracker.spawn(driver::run_ws_tls(
                    Arc::clone(core),
                    stream,
                    addr,
                    slots,
                    Arc::clone(policy),
                )),
                Via::Web(policy) => core.tracker.spawn(driver::run_ws_plain(
                    Arc::clone(core),
                    stream,
                    addr,
                    slots,
                    Arc::clone(policy),
                )),
                Via::Tls(tls) => core.tracker.spawn(driver::run_tls(
                    Arc::clone(core),
                    stream,
                    addr,
                    slots,
                    tls.clone(),
                )),
            };
        };
        // One accept loop per listener, each until the shutdown or a drain.
        let serve = |listener: TcpListener, what: &'static str, via: Via| {
            let stop = async {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = core.draining.cancelled() => {}
                }
            };
            net::accept_loop(
                listener,
                Arc::clone(&core.permits),
                AtCapacity::Close,
                stop,
                what,
                move |stream, addr, permit| start(stream, addr, permit, &via),
            )
        };
        let tcp = serve(listener, "gate", Via::Tcp);
        let web_loop = async {
            if let Some((listener, policy)) = web {
                serve(listener, "gate (WebSocket)", Via::Web(policy)).await;
            }
        };
        let tls_loop = async {
            if let Some((listener, tls)) = tls {
                serve(listener, "gate (TLS)", Via::Tls(tls)).await;
            }
        };
        tokio::join!(tcp, web_loop, tls_loop);
        self.drain().await;
        timers_stop.cancel();
        let _ = timers.await;
        rest_stop.cancel();
        let _ = resting.await;
        Ok(())
    }

    /// Steps 2–4 of [`MsgGate::serve`]'s shutdown.
    async fn drain(&self) {
        let core = &self.core;
        tracing::info!(name = %core.cfg.name, "message gate shutting down");
        core.draining.cancel();
        core.drain_all();
        core.tracker.close();
        let grace = core.cfg.shutdown_grace;
        if tokio::time::timeout(grace, core.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace = ?grace,
                "shutdown grace over: closing the remaining connections"
            );
            core.hard.cancel();
            core.close_all_now();
            core.tracker.wait().await;
        }
        for user in core.users() {
            core.end(&user, End::Shutdown);
        }
        tracing::info!(name = %core.cfg.name, "message gate stopped");
    }
}

/// Which listener a connection came in on.
enum Via {
    /// The plain TCP listener.
    Tcp,
    /// The WebSocket listener, with its policy.
    Web(Arc<WebPolicy>),
    /// The TLS listener, with its certificate.
    Tls(crate::tls::ServerTls),
}
