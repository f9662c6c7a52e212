//! A login node: the login server with a [`ClusterPlacer`], which places
//! users on gate nodes through the Redis directory and control links.
//!
//! One login, step by step (the round trips to Redis are 1 and 3):
//!
//! 1. [`Directory::begin`]: take the uid's lock (`406` if another login of
//!    it holds it), read the gate serving the requested server name and the
//!    uid's current record;
//! 2. if that record's gate still lives with the record's epoch, `Kick` the
//!    old session there (`logged in again`) and wait until it is gone;
//! 3. `Place` on the target gate, which allocates the session and commits
//!    the new record (replacing the one read in step 1, or none) and
//!    releases the lock in one script;
//! 4. answer `200 subid`.
//!
//! Any failure releases the lock. Redis unreachable: `503`; no such server,
//! a draining gate, an old session that would not end, a gate that cannot
//! be reached: `403`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use proto::control::{
    ControlFrame, Hello, Kick, LoginFrame, Place, PlaceRefusal, control_frame, login_frame,
};
use proto::framing::LoginCodec;
use proto::link_auth::{self, LinkSecret, Proof};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::directory::{Begin, Directory};
use crate::logging::esc;
use crate::login::placement::{BoxFuture, LoginRefusal, LoginRequest, PlaceError, Placer};
use crate::tls::{self, ClientTls};

/// Frames queued for one link's writer.
const LINK_QUEUE: usize = 1024;

/// TCP keepalive on a control link: a gate that vanished without closing
/// (a host gone, a partition) is noticed within about half a minute even
/// while no login goes to it, and its link is dialled again.
pub(crate) fn keepalive(stream: &TcpStream) {
    let probe = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5));
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    let probe = probe.with_retries(3);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&probe);
}

/// Why a control call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// The link closed while a call was on it (the gate went away, or a
    /// live upgrade replaced its process).
    #[error("control link to {0}: the link closed")]
    Closed(String),
    /// Cannot connect.
    #[error("control link to {addr}: {why}")]
    Link {
        /// The gate's control address.
        addr: String,
        /// What happened.
        why: String,
    },
    /// The gate refused the link (wrong secret, version).
    #[error("gate at {addr} refused the control link: {message}")]
    Refused {
        /// The gate's control address.
        addr: String,
        /// Its reason.
        message: String,
    },
    /// No answer within the deadline.
    #[error("no answer from {0} within the deadline")]
    Timeout(String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ControlFrame>>>>;

/// The link to one gate, if open; its lock is held while connecting.
type LinkEntry = Arc<tokio::sync::Mutex<Option<Arc<ControlLink>>>>;

/// One authenticated link to one gate.
#[derive(Debug)]
struct ControlLink {
    tx: mpsc::Sender<LoginFrame>,
    pending: Pending,
    next_id: AtomicU64,
    closed: CancellationToken,
}

/// The login node's control links, one per gate control address, opened
/// on first use and again after they close.
#[derive(Debug)]
pub struct ControlLinks {
    node: String,
    secret: LinkSecret,
    timeout: Duration,
    tls: Option<ClientTls>,
    links: Mutex<HashMap<String, LinkEntry>>,
}

impl ControlLinks {
    /// Links for login node `node`, proving `secret`; every call (connect
    /// included) has `timeout`; over TLS when `tls` is given.
    pub fn new(
        node: String,
        secret: LinkSecret,
        timeout: Duration,
        tls: Option<ClientTls>,
    ) -> ControlLinks {
        ControlLinks {
            node,
            secret,
            timeout,
            tls,
            links: Mutex::new(HashMap::new()),
        }
    }

    async fn link(&self, addr: &str) -> Result<Arc<ControlLink>, ControlError> {
        let slot = {
            let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(links.entry(addr.to_owned()).or_default())
        };
        // One connect at a time per gate; calls to other gates go on.
        let mut slot = slot.lock().await;
        if let Some(link) = slot.as_ref().filter(|l| !l.closed.is_cancelled()) {
            return Ok(Arc::clone(link));
        }
        let link = match tokio::time::timeout(self.timeout, self.connect(addr)).await {
            Ok(link) => Arc::new(link?),
            Err(_) => return Err(ControlError::Timeout(addr.to_owned())),
        };
        *slot = Some(Arc::clone(&link));
        Ok(link)
    }

    async fn connect(&self, addr: &str) -> Result<ControlLink, ControlError> {
        let err = |why: String| ControlError::Link {
            addr: addr.to_owned(),
            why,
        };
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| err(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        keepalive(&stream);
        let io = tls::connect(self.tls.as_ref(), addr, stream)
            .await
            .map_err(|e| err(format!("TLS: {e}")))?;
        let mut framed = Framed::new(io, LoginCodec::new());
        let challenge = match framed.next().await {
            Some(Ok(ControlFrame {
                kind: Some(control_frame::Kind::Challenge(c)),
            })) => c,
            Some(Ok(_)) => return Err(err("the gate did not open with a challenge".into())),
            Some(Err(e)) => return Err(err(e.to_string())),
            None => return Err(err("closed before the challenge".into())),
        };
        let login_nonce: [u8; link_auth::NONCE_LEN] = rand::random();
        let hello = LoginFrame {
            kind: Some(login_frame::Kind::Hello(Hello {
                protocol_version: proto::CONTROL_VERSION,
                node_id: self.node.clone(),
                login_nonce: Bytes::copy_from_slice(&login_nonce),
                proof: link_auth::login_proof(
                    self.secret.bytes(),
                    &challenge.gate_nonce,
                    &login_nonce,
                    &self.node,
                )
                .into(),
            })),
        };
        framed.send(hello).await.map_err(|e| err(e.to_string()))?;
        match framed.next().await {
            Some(Ok(ControlFrame {
                kind: Some(control_frame::Kind::Welcome(w)),
            })) => {
                if !link_auth::verify(
                    self.secret.bytes(),
                    &challenge.gate_nonce,
                    &login_nonce,
                    Proof::ControlGate,
                    &w.proof,
                ) {
                    warn!(%addr, "control link: the gate's proof of the link secret is wrong");
                    return Err(err("the gate does not know the link secret".into()));
                }
            }
            Some(Ok(ControlFrame {
                kind: Some(control_frame::Kind::Refused(r)),
            })) => {
                warn!(%addr, reason = %esc(r.message.as_bytes()), "control link refused by the gate");
                return Err(ControlError::Refused {
                    addr: addr.to_owned(),
                    message: r.message,
                });
            }
            Some(Ok(_)) => return Err(err("unexpected answer to Hello".into())),
            Some(Err(e)) => return Err(err(e.to_string())),
            None => return Err(err("closed after Hello".into())),
        }
        info!(%addr, server = %esc(challenge.server.as_bytes()), epoch = challenge.epoch, "control link up");

        let (mut sink, mut frames) = framed.split();
        let (tx, mut rx) = mpsc::channel::<LoginFrame>(LINK_QUEUE);
        let pending: Pending = Arc::default();
        let closed = CancellationToken::new();
        tokio::spawn({
            let closed = closed.clone();
            async move {
                loop {
                    let frame = tokio::select! {
                        () = closed.cancelled() => break,
                        frame = rx.recv() => frame,
                    };
                    let Some(frame) = frame else { break };
                    if sink.feed(frame).await.is_err() {
                        break;
                    }
                    while let Ok(frame) = rx.try_recv() {
                        if sink.feed(frame).await.is_err() {
                            break;
                        }
                    }
                    if sink.flush().await.is_err() {
                        break;
                    }
                }
                closed.cancel();
            }
        });
        tokio::spawn({
            let (closed, pending, addr) = (closed.clone(), Arc::clone(&pending), addr.to_owned());
            async move {
                loop {
                    let frame = tokio::select! {
                        () = closed.cancelled() => break,
                        frame = frames.next() => frame,
                    };
                    let frame = match frame {
                        Some(Ok(frame)) => frame,
                        Some(Err(e)) => {
                            warn!(%addr, error = %e, "control link: bad frame; closing");
                            break;
                        }
                        None => break,
                    };
                    let id = match &frame.kind {
                        Some(control_frame::Kind::Placed(p)) => p.id,
                        Some(control_frame::Kind::PlaceRefused(p)) => p.id,
                        Some(control_frame::Kind::Kicked(k)) => k.id,
                        _ => continue,
                    };
                    let waiter = pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(frame);
                    }
                }
                closed.cancel();
                // Every call still waiting fails at once.
                pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                info!(%addr, "control link closed");
            }
        });
        Ok(ControlLink {
            tx,
            pending,
            next_id: AtomicU64::new(1),
            closed,
        })
    }

    /// Sends the frame `build(id)` on the link to `addr` and waits for its
    /// answer.
    pub async fn call(
        &self,
        addr: &str,
        build: impl FnOnce(u64) -> login_frame::Kind,
    ) -> Result<ControlFrame, ControlError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let link = self.link(addr).await?;
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        link.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let closed = || ControlError::Closed(addr.to_owned());
        let forget = || {
            link.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        };
        let frame = LoginFrame {
            kind: Some(build(id)),
        };
        match tokio::time::timeout_at(deadline, link.tx.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                forget();
                return Err(closed());
            }
            Err(_) => {
                forget();
                return Err(ControlError::Timeout(addr.to_owned()));
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(closed()),
            Err(_) => {
                forget();
                Err(ControlError::Timeout(addr.to_owned()))
            }
        }
    }
}

/// The login node's [`Placer`] (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ClusterPlacer(Arc<PlacerInner>);

#[derive(Debug)]
struct PlacerInner {
    dir: Directory,
    links: ControlLinks,
    multilogin: bool,
    lock_ttl: Duration,
}

impl ClusterPlacer {
    /// A placer over `dir` and `links`.
    pub fn new(
        dir: Directory,
        links: ControlLinks,
        multilogin: bool,
        lock_ttl: Duration,
    ) -> ClusterPlacer {
        ClusterPlacer(Arc::new(PlacerInner {
            dir,
            links,
            multilogin,
            lock_ttl,
        }))
    }
}

impl PlacerInner {
    /// A control call, made once more on a new link if the link closed
    /// under it: a gate node being upgraded lets its control calls wait
    /// for the outcome and, when the new process takes over, the old one
    /// exits without running them; the new one, on the same address,
    /// runs them. (A placement is a compare-and-set on the directory
    /// record, so a call the old process did run cannot run twice.)
    async fn call(
        &self,
        addr: &str,
        build: impl Fn(u64) -> login_frame::Kind,
    ) -> Result<ControlFrame, ControlError> {
        match self.links.call(addr, &build).await {
            Err(ControlError::Closed(_)) => {
                info!(%addr, "control link closed during a call: calling again");
                self.links.call(addr, &build).await
            }
            other => other,
        }
    }

    async fn place_locked(
        &self,
        req: &LoginRequest,
        token: &str,
        begin: Begin,
    ) -> Result<Bytes, PlaceError> {
        let server_text = || String::from_utf8_lossy(&req.server).into_owned();
        let (target, old) = match begin {
            Begin::Busy => return Err(PlaceError::InProgress),
            Begin::Fenced(left) => {
                return Err(PlaceError::Unavailable(format!(
                    "the session directory is fenced (a new Redis server: a restart, a failover \
                     or a new deployment) while gates restore their sessions; try again in {} ms",
                    left.as_millis()
                )));
            }
            Begin::Ready { target, old } => (target, old),
        };
        let Some(target) = target else {
            return Err(LoginRefusal::UnknownServer(server_text()).into());
        };
        if target.draining {
            return Err(
                LoginRefusal::Unavailable(format!("gate {} is draining", server_text())).into(),
            );
        }
        let expected = old.as_ref().map(|o| o.raw.clone()).unwrap_or_default();
        if let Some(old) = &old
            && let (Some(record), Some(control)) = (&old.record, &old.live_on)
        {
            let (uid, subid, epoch) = (req.uid.clone(), record.subid.clone(), record.epoch);
            let kicked = self
                .call(control, |id| {
                    login_frame::Kind::Kick(Kick {
                        id,
                        epoch,
                        uid: uid.clone(),
                        subid: subid.clone(),
                        reason: gate_core::RELOGIN_TEXT.to_owned(),
                        relogin: true,
                    })
                })
                .await;
            if let Err(e) = kicked {
                warn!(uid = %esc(&req.uid), error = %e, "cannot end the previous session");
                return Err(LoginRefusal::AlreadyOnline.into());
            }
        }
        let secret = match &req.secret {
            loginproto::handshake::SessionSecret::Skynet(k) => Bytes::copy_from_slice(k),
            loginproto::handshake::SessionSecret::X25519(k) => Bytes::copy_from_slice(k),
        };
        let place = Place {
            id: 0,
            epoch: target.epoch,
            uid: req.uid.clone(),
            user: req.user.clone(),
            secret,
            expected,
            lock_token: Bytes::copy_from_slice(token.as_bytes()),
        };
        let answer = self
            .call(&target.control, |id| {
                login_frame::Kind::Place(Place {
                    id,
                    ..place.clone()
                })
            })
            .await
            .map_err(|e| LoginRefusal::Unavailable(e.to_string()))?;
        match answer.kind {
            Some(control_frame::Kind::Placed(p)) => Ok(p.subid),
            Some(control_frame::Kind::PlaceRefused(r)) => Err(match r.reason() {
                PlaceRefusal::AlreadyOnline => LoginRefusal::AlreadyOnline.into(),
                PlaceRefusal::DirectoryDown => PlaceError::Unavailable(r.message),
                _ => LoginRefusal::Unavailable(r.message).into(),
            }),
            _ => Err(LoginRefusal::Unavailable("unexpected answer to Place".into()).into()),
        }
    }
}

impl Placer for ClusterPlacer {
    fn place(&self, req: LoginRequest) -> BoxFuture<'static, Result<Bytes, PlaceError>> {
        let this = Arc::clone(&self.0);
        Box::pin(async move {
            let token = if this.multilogin {
                String::new()
            } else {
                let t: [u8; 16] = rand::random();
                t.iter().map(|b| format!("{b:02x}")).collect()
            };
            let begin = this
                .dir
                .begin(&req.uid, &req.server, &token, this.lock_ttl)
                .await
                .map_err(|e| {
                    warn!(error = %e, "session directory unreachable: login refused");
                    PlaceError::Unavailable(e.to_string())
                })?;
            // Neither took the lock.
            let busy = matches!(begin, Begin::Busy | Begin::Fenced(_));
            let result = this.place_locked(&req, &token, begin).await;
            if result.is_err()
                && !busy
                && let Err(e) = this.dir.release(&req.uid, &token).await
            {
                warn!(error = %e, "cannot release a login lock; it expires with its ttl");
            }
            result
        })
    }
}
