//! Live upgrade, the message gate's part: handing sessions and TCP
//! connections to a new process, and taking them over there.
//!
//! In the old process ([`MsgGate::hand_off_prepare`]): every connection is
//! asked to *park*. A TCP connection stops reading, lets its requests in
//! flight finish and their answers go out, then parks: it hands over a
//! duplicate of its socket with what it read and has not served and what
//! it made and has not written, and waits for the verdict; so does a plain
//! WebSocket one, with its frame state. A TLS WebSocket connection cannot
//! move (its keys live in the TLS layer): it is closed with 1012, and its
//! client reconnects with the next index, without a login. Once every
//! connection is parked or gone, the sessions are *frozen* and written
//! out: timers stop acting, and a push or kick that arrives from then on is
//! forwarded to the new process instead of carried out here (or carried
//! out here after all if the handoff is rolled back). The verdict is then
//! [`MsgGate::hand_off_commit`] (the connections let go of their sockets
//! without closing them; the process exits) or
//! [`MsgGate::hand_off_rollback`] (everything resumes as it was: nothing
//! was changed, only paused).
//!
//! In the new process ([`MsgGate::restore`]): the gate's clock starts at
//! the old one's time ([`MsgGate::new_restored`]), so every deadline in
//! the state holds; each session is read back, each connection's socket
//! gets a connection task that starts in the session loop, with its
//! unread input and unwritten output, as if it had never moved.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gate_core::End;
use gate_core::connection::Connection;
use gate_core::session::{ConnId, PushRefused, Session};
use loginproto::handshake::SessionSecret;
use tokio::sync::{mpsc, watch};

use super::MsgGate;
use super::core::GateCore;
use super::handle::ConnHandle;
use super::transport::Movable;
use super::user::{User, UserState as Locked};
use crate::upgrade::state::{ConnState, GateState, READS, STATE_VERSION, UserState};

/// What parked connections are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Wait.
    Pending,
    /// The handoff failed: serve on.
    Resume,
    /// The new process has them: let go.
    Commit,
}

/// A push or a kick that reached a frozen gate, for the new process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The user.
    pub uid: Bytes,
    /// Its session.
    pub subid: Bytes,
    /// What to do.
    pub what: Forward,
}

/// What a [`Forwarded`] asks of the new process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// Push this payload.
    Push(Bytes),
    /// End the session so (a kick by a service, a login node or an
    /// operator).
    End(End),
}

/// A handed-over connection: its state and a duplicate of its socket.
#[derive(Debug)]
pub struct HandedConn {
    /// What the new process needs besides the socket.
    pub state: ConnState,
    /// The socket.
    pub fd: OwnedFd,
}

/// A parked connection of the old process. Its task keeps the socket and
/// lends a duplicate of it on request ([`ParkedConn::lend`]), so the
/// handoff holds duplicates only for the batch it is sending, not for
/// every connection at once (that would double the descriptors of a gate
/// near its file limit).
#[derive(Debug)]
pub struct ParkedConn {
    /// What the new process needs besides the socket.
    pub state: ConnState,
    lend: mpsc::UnboundedSender<tokio::sync::oneshot::Sender<Option<OwnedFd>>>,
}

impl ParkedConn {
    /// A duplicate of the connection's socket (`None`: the task is gone,
    /// or the descriptor could not be duplicated).
    pub async fn lend(&self) -> Option<OwnedFd> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.lend.send(tx).ok()?;
        rx.await.ok().flatten()
    }
}

/// What [`MsgGate::hand_off_prepare`] gives the upgrade: the state and
/// the connections to send.
#[derive(Debug)]
pub struct Prepared {
    /// The sessions and counters.
    pub state: GateState,
    /// The parked TCP connections.
    pub conns: Vec<ParkedConn>,
    /// Pushes and kicks that reach this process from now on.
    pub forwarded: mpsc::UnboundedReceiver<Forwarded>,
}

/// The handoff state of a gate (see the module docs).
#[derive(Debug)]
pub(crate) struct Handoff {
    requested: AtomicBool,
    frozen: AtomicBool,
    parked: Mutex<Vec<ParkedConn>>,
    verdict: watch::Sender<Verdict>,
    forward: Mutex<Option<mpsc::UnboundedSender<Forwarded>>>,
    /// New process: restored connections wait while this is `true` (the
    /// old process may still resume them).
    held: watch::Sender<bool>,
    /// Old process: the state version the handoff writes (below 3, the
    /// new process does not know sealed connections: they are closed for
    /// a reconnect instead of moved).
    version: std::sync::atomic::AtomicU32,
}

impl Default for Handoff {
    fn default() -> Handoff {
        Handoff {
            requested: AtomicBool::new(false),
            frozen: AtomicBool::new(false),
            parked: Mutex::default(),
            verdict: watch::Sender::new(Verdict::Pending),
            forward: Mutex::default(),
            held: watch::Sender::new(false),
            version: std::sync::atomic::AtomicU32::new(STATE_VERSION),
        }
    }
}

impl Handoff {
    /// Whether a sealed connection can move to the new process (its
    /// state format carries the channel).
    pub(crate) fn moves_sealed(&self) -> bool {
        self.version.load(Ordering::Acquire) >= 3
    }

    /// Whether connections are asked to park.
    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Whether the sessions were written out (timers and pushes go to the
    /// new process).
    pub(crate) fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    /// Forwards a push that reached a frozen gate. `Ok(0)`: the new
    /// process delivers it (its sequence number is the new process's).
    /// `None`: nothing is passed on (the handoff was rolled back: push
    /// here).
    pub(crate) fn forward(&self, user: &User, payload: Bytes) -> Option<Result<u32, PushRefused>> {
        if self.pass_on(user, Forward::Push(payload)) {
            Some(Ok(0))
        } else if self.is_committed() {
            // The session lives in the new process now.
            Some(Err(PushRefused::Ended))
        } else {
            None
        }
    }

    /// Whether the new process took over.
    pub(crate) fn is_committed(&self) -> bool {
        *self.verdict.borrow() == Verdict::Commit
    }

    /// Forwards the end of a session asked of a frozen gate; whether it
    /// was (it is not once the handoff is rolled back).
    pub(crate) fn forward_end(&self, user: &User, reason: End) -> bool {
        self.pass_on(user, Forward::End(reason))
    }

    fn pass_on(&self, user: &User, what: Forward) -> bool {
        let forward = self.forward.lock().unwrap_or_else(PoisonError::into_inner);
        match forward.as_ref() {
            Some(tx) => {
                let _ = tx.send(Forwarded {
                    uid: user.uid.clone(),
                    subid: user.subid.clone(),
                    what,
                });
                true
            }
            None => false,
        }
    }

    /// Waits while restored connections are held.
    pub(super) async fn released(&self) {
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|h| !h).await;
    }

    /// A connection parks; returns the verdict to wait for.
    fn park(&self, conn: ParkedConn) -> watch::Receiver<Verdict> {
        let verdict = self.verdict.subscribe();
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        verdict
    }

    fn parked_ids(&self) -> Vec<ConnId> {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|c| c.state.id)
            .collect()
    }
}

/// The connection task's part: park `moving` (see the module docs). `None`:
/// serve on (the handoff was rolled back); `Some(end)`: the connection
/// ends so (handed over, or closed for a reconnect).
pub(super) async fn park(
    core: &GateCore,
    moving: Movable<'_>,
    conn: &Connection,
    pending: &BytesMut,
    handle: &Arc<ConnHandle>,
    user: &Arc<User>,
) -> Option<End> {
    let (lend, mut asked) = mpsc::unbounded_channel();
    let mut verdict = core.handoff.park(ParkedConn {
        state: ConnState {
            id: handle.id,
            username: user.username.clone(),
            machine: conn.clone(),
            unread: Bytes::copy_from_slice(moving.unread()),
            unwritten: Bytes::copy_from_slice(pending),
            websocket: moving.websocket(),
        },
        lend,
    });
    let verdict = loop {
        tokio::select! {
            v = verdict.wait_for(|v| *v != Verdict::Pending) => {
                break v.map(|v| *v).unwrap_or(Verdict::Resume);
            }
            Some(reply) = asked.recv() => {
                let _ = reply.send(moving.stream_fd().try_clone_to_owned().ok());
            }
        }
    };
    match verdict {
        Verdict::Commit => Some(End::HandedOff),
        _ => None,
    }
}

fn secret_bytes(secret: &SessionSecret) -> Bytes {
    match secret {
        SessionSecret::Skynet(k) => Bytes::copy_from_slice(k),
        SessionSecret::X25519(k) => Bytes::copy_from_slice(k),
    }
}

fn secret_of(bytes: &[u8]) -> Result<SessionSecret, String> {
    if let Ok(k) = <[u8; 8]>::try_from(bytes) {
        Ok(SessionSecret::Skynet(k))
    } else if let Ok(k) = <[u8; 32]>::try_from(bytes) {
        Ok(SessionSecret::X25519(k))
    } else {
        Err(format!("a session secret of {} bytes", bytes.len()))
    }
}

/// The session of `state` written out, left in place as it was.
fn write_out(core: &GateCore, state: &mut Locked) -> Session<ConnId> {
    let placeholder = Session::new(core.timers.now(), core.limits.load());
    let session = std::mem::replace(&mut state.session, placeholder);
    let handle = session.conn().cloned();
    let written = session.map_conn(|c| c.id);
    let copy: Session<ConnId> =
        serde_json::from_value(serde_json::to_value(&written).expect("a session writes out"))
            .expect("a session reads back");
    state.session = written.map_conn(|_| handle.expect("an online session has its connection"));
    copy.with_limits(core.limits.load())
}

impl MsgGate {
    /// A gate taking over `state` from an old process: its clock starts
    /// at the old one's time. Restore the sessions with
    /// [`MsgGate::restore`].
    pub fn new_restored(
        cfg: crate::config::GateConfig,
        agent: Arc<dyn crate::agent::Agent>,
        login: Arc<dyn crate::login::placement::LoginLink>,
        state: &GateState,
    ) -> MsgGate {
        let now = tokio::time::Instant::now();
        let epoch = now
            .checked_sub(Duration::from_nanos(state.now_ns))
            .unwrap_or(now);
        MsgGate {
            core: Arc::new(GateCore::new_at(cfg, agent, login, epoch)),
        }
    }

    /// Old process, first step of a handoff: parks every connection (see
    /// the module docs) and writes the sessions out. Fails (and resumes
    /// everything) if connections are still mid-handshake or running
    /// requests after `wait`.
    pub async fn hand_off_prepare(&self, wait: Duration) -> Result<Prepared, String> {
        let core = &self.core;
        core.handoff.verdict.send_replace(Verdict::Pending);
        core.handoff.requested.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Connections that bound meanwhile are woken too. Those still
            // in their handshake phase are not waited for (a client that
            // sends nothing must not hold an upgrade up): their handshake
            // is refused from now on, and they close with this process.
            let mut waiting = 0;
            let parked = core.handoff.parked_ids();
            for user in core.users() {
                if let Some(conn) = user.lock().session.conn()
                    && !parked.contains(&conn.id)
                {
                    conn.wake();
                    waiting += 1;
                }
            }
            if waiting == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                self.hand_off_rollback();
                return Err(format!(
                    "{waiting} connections still running requests after {wait:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (tx, forwarded) = mpsc::unbounded_channel();
        *core
            .handoff
            .forward
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(tx);
        // Frozen under each user's lock, so a push either lands in the
        // state written out or is forwarded.
        let mut users = Vec::new();
        let mut frozen = false;
        for user in core.users() {
            let mut state = user.lock();
            if !frozen {
                core.handoff.frozen.store(true, Ordering::Release);
                frozen = true;
            }
            if state.session.is_ended() {
                continue;
            }
            users.push(UserState {
                uid: user.uid.clone(),
                subid: user.subid.clone(),
                username: user.username.clone(),
                alias: user.alias.as_deref().cloned(),
                secret: secret_bytes(&user.secret),
                session: write_out(core, &mut state),
            });
        }
        core.handoff.frozen.store(true, Ordering::Release);
        let conns = std::mem::take(
            &mut *core
                .handoff
                .parked
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let state = GateState {
            version: core.handoff.version.load(Ordering::Acquire),
            server: core.cfg.name.clone(),
            now_ns: u64::try_from(core.timers.now().since_epoch().as_nanos()).unwrap_or(u64::MAX),
            next_subid: core.next_subid.load(Ordering::Acquire),
            next_conn: core.next_conn.load(Ordering::Acquire),
            users,
            epoch: None,
            login_node: false,
        };
        Ok(Prepared {
            state,
            conns,
            forwarded,
        })
    }

    /// Old process, before anything else of a handoff: from now on
    /// [`MsgGate::is_handing_off`] holds, so work that would add to the
    /// state (a cluster placement) waits, and the work already running
    /// can be waited for before [`MsgGate::hand_off_prepare`].
    ///
    /// `version` is the state version written (the highest both processes
    /// know, [`crate::upgrade::state::writes_for`]).
    pub fn hand_off_request(&self, version: u32) {
        let handoff = &self.core.handoff;
        handoff.version.store(version, Ordering::Release);
        handoff.verdict.send_replace(Verdict::Pending);
        handoff.requested.store(true, Ordering::SeqCst);
        // Pairs with the fence of whoever checks `is_handing_off` after
        // counting itself busy: one of the two sees the other.
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Whether this gate is handing its sessions over to a new process
    /// (admin calls are refused meanwhile).
    pub fn is_handing_off(&self) -> bool {
        self.core.handoff.is_requested()
    }

    /// Old process: the new one took over; parked connections let go of
    /// their sockets without closing them, and nothing more is passed on
    /// (the receiver of [`Prepared::forwarded`] ends after what was).
    pub fn hand_off_commit(&self) {
        let handoff = &self.core.handoff;
        handoff.verdict.send_replace(Verdict::Commit);
        handoff
            .forward
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Old process: the handoff failed; everything serves on as it was.
    pub fn hand_off_rollback(&self) {
        let core = &self.core;
        *core
            .handoff
            .forward
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        core.handoff.frozen.store(false, Ordering::Release);
        core.handoff.requested.store(false, Ordering::Release);
        core.handoff
            .parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        core.handoff.verdict.send_replace(Verdict::Resume);
        // Deadlines that passed while frozen were skipped: arm them again.
        for user in core.users() {
            let mut state = user.lock();
            state.timer_at = 0;
            core.arm(&user, &mut state);
        }
    }

    /// New process: takes over the sessions of `state` and the connections
    /// `conns` (sockets of the old process), each served from where it
    /// stopped. Returns how many sessions and connections it took.
    pub fn restore(
        &self,
        state: GateState,
        conns: Vec<HandedConn>,
    ) -> Result<(usize, usize), String> {
        let core = &self.core;
        if !READS.contains(&state.version) {
            return Err(format!(
                "state version {} (this build reads {READS:?})",
                state.version
            ));
        }
        if state.server != core.cfg.name {
            return Err(format!(
                "the old process serves {:?}, this one is configured for {:?}",
                state.server, core.cfg.name
            ));
        }
        core.handoff.held.send_replace(true);
        core.next_subid.store(state.next_subid, Ordering::Release);
        core.next_conn.store(state.next_conn, Ordering::Release);
        let mut by_username = std::collections::HashMap::new();
        for conn in conns {
            by_username.insert(conn.state.username.clone(), conn);
        }
        let (mut sessions, mut connections) = (0, 0);
        let now = core.timers.now();
        for u in state.users {
            let secret = secret_of(&u.secret)?;
            let moved = by_username.remove(&u.username);
            let handle = match &moved {
                Some(c) => Arc::new(ConnHandle::new(c.state.id)),
                // Its connection did not move: a placeholder, gone at once.
                None => Arc::new(ConnHandle::new(0)),
            };
            let bound_to = u.session.conn().copied();
            let mut session = u
                .session
                .with_limits(core.limits.load())
                .map_conn(|_| Arc::clone(&handle));
            let mut gone = Vec::new();
            if moved.is_none()
                && let Some(id) = bound_to
            {
                gone = session.connection_gone(now, id);
            }
            let user = core.adopt(u.uid, u.subid, u.username, u.alias, secret, session);
            // Not told to the agent again: only what changed (the
            // connection went) is.
            core.perform(&user, gone);
            sessions += 1;
            if let Some(conn) = moved {
                let HandedConn { state, fd } = conn;
                match super::restored::spawn_restored(core, fd, state, &user, handle) {
                    Ok(()) => connections += 1,
                    Err(e) => {
                        tracing::warn!(error = %e, "a handed-over connection could not be taken over");
                        core.connection_gone(&user, user_conn_id(&user), true);
                    }
                }
            }
        }
        // Connections whose session was not in the state end here (their
        // descriptors close with the map).
        drop(by_username);
        Ok((sessions, connections))
    }

    /// New process: the old one let go; the restored connections start.
    pub fn release_restored(&self) {
        self.core.handoff.held.send_replace(false);
    }

    /// New process: a push or a kick forwarded by the old one.
    pub fn apply_forwarded(&self, forwarded: &Forwarded) {
        let username = loginproto::handshake::username(
            &forwarded.uid,
            self.core.cfg.name.as_bytes(),
            &forwarded.subid,
        );
        if let Some(user) = self.core.user_by_username(&username) {
            match &forwarded.what {
                Forward::Push(payload) => {
                    let _ = self.core.push_to(&user, payload.clone());
                }
                Forward::End(reason) => {
                    self.core.end(&user, reason.clone());
                }
            }
        }
    }
}

fn user_conn_id(user: &User) -> ConnId {
    user.lock().session.conn().map_or(0, |c| c.id)
}
