//! A gate node: the gate, its registration in Redis, and the control
//! listener login nodes place users through.
//!
//! * [`GateNode::register`] and [`GateNode::heartbeat`] keep the registry
//!   entry alive: the heartbeat renews the lease
//!   every third of it with the online count and the draining flag. When
//!   the entry was gone (its lease lapsed during a Redis outage, or Redis
//!   lost its data), it is written again and every session of this gate is
//!   written back into the directory ([`Directory::restore`]); a session
//!   whose uid meanwhile logged in elsewhere is kicked (`logged in again`).
//! * [`DirectoryLink`] is the gate's [`LoginLink`]: an ended session's
//!   record is removed with a compare-and-delete, so the late end of an old
//!   session never removes a newer one.
//! * [`serve_control`] answers `Place` and `Kick` from authenticated login
//!   nodes (`proto/control.proto`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use loginproto::handshake::SessionSecret;
use proto::control::{
    Challenge, ControlFrame, Kick, Kicked, LoginFrame, Place, PlaceRefusal, PlaceRefused, Placed,
    Pong, Refused, Welcome, control_frame, login_frame,
};
use proto::framing::ControlCodec;
use proto::link_auth::{self, LinkSecret, Proof};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::directory::{Commit, Directory, GateEntry, Registered};
use super::record::Record;
use crate::logging::esc;
use crate::login::online::RELOGIN_KICK_REASON;
use crate::login::placement::{EndReason, LoginLink, LoginRefusal};
use crate::msg::MsgGate;
use crate::tls::{self, BoxIo};

/// Deadline for a login node's `Hello`.
const HELLO_DEADLINE: Duration = Duration::from_secs(5);
/// Most control calls running at once per link; the link is not read
/// further until one finishes.
const MAX_CALLS_PER_LINK: usize = 4096;
/// Frames queued for one link's writer.
const LINK_QUEUE: usize = 1024;
/// Keys per `SCAN` step when sweeping an earlier boot's records.
const SWEEP_BATCH: usize = 1000;
/// How many directory writes a restore keeps in flight.
const RESTORE_BATCH: usize = 256;

/// A fresh boot epoch: the wall clock in milliseconds times 1000, plus
/// three random digits, so two boots of one server name never share an
/// epoch (even within a millisecond, or across a Redis that lost its data).
pub fn new_epoch() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 1000)
        });
    ms.saturating_mul(1000) + rand::random_range(0..1000u64)
}

/// The gate's [`LoginLink`] in a cluster: removes the directory record of
/// each ended session (if it is still that session's).
#[derive(Debug, Clone)]
pub struct DirectoryLink {
    dir: Directory,
    epoch: u64,
    tasks: TaskTracker,
}

impl DirectoryLink {
    /// A link for the gate booted as `epoch`.
    pub fn new(dir: Directory, epoch: u64) -> DirectoryLink {
        DirectoryLink {
            dir,
            epoch,
            tasks: TaskTracker::new(),
        }
    }

    /// Waits (at most `limit`) for the record removals in flight, so a node
    /// that stops leaves no record of its own behind when Redis is up.
    pub async fn flush(&self, limit: Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
    }
}

impl LoginLink for DirectoryLink {
    fn session_ended(&self, server: &[u8], uid: &[u8], subid: &[u8], reason: &EndReason) {
        let record = Record {
            epoch: self.epoch,
            subid: Bytes::copy_from_slice(subid),
            server: Bytes::copy_from_slice(server),
        };
        let uid = Bytes::copy_from_slice(uid);
        let reason = reason.text().to_string();
        let dir = self.dir.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.tasks.spawn_on(
            async move {
                match dir.end(&uid, &record).await {
                    Ok(removed) => debug!(
                        uid = %esc(&uid),
                        subid = %esc(&record.subid),
                        reason = %esc(reason.as_bytes()),
                        removed,
                        "session ended"
                    ),
                    // The record stays: the next login of the uid finds its
                    // gate has no such session and replaces it.
                    Err(e) => warn!(
                        uid = %esc(&uid),
                        error = %e,
                        "cannot remove an ended session from the directory"
                    ),
                }
            },
            &runtime,
        );
    }
}

/// What a gate node needs to answer control calls and keep its entry.
#[derive(Debug, Clone)]
pub struct GateNode {
    /// The gate.
    pub gate: MsgGate,
    /// The directory.
    pub dir: Directory,
    /// Node id.
    pub node: String,
    /// Boot epoch.
    pub epoch: u64,
    /// Control link secret.
    pub secret: LinkSecret,
    /// Published client address.
    pub client_addr: String,
    /// Published control address.
    pub control_addr: String,
    /// Published operations address (empty: none), where other nodes
    /// forward admin calls for this gate's users.
    pub ops_addr: String,
    /// Registration lease.
    pub lease: Duration,
    /// Whether this node holds its server name in the registry now (for
    /// `/readyz`).
    pub registered: Arc<std::sync::atomic::AtomicBool>,
    /// TLS on the control listener (`cluster.tls_cert_file`), if configured.
    pub tls: Option<crate::tls::ServerTls>,
}

impl GateNode {
    fn entry(&self, draining: bool) -> GateEntry {
        GateEntry {
            node: self.node.clone(),
            epoch: self.epoch,
            client: self.client_addr.clone(),
            control: self.control_addr.clone(),
            ops: self.ops_addr.clone(),
            online: u64::try_from(self.gate.metrics().sessions).unwrap_or(u64::MAX),
            draining: draining || self.gate.is_draining(),
        }
    }

    fn server(&self) -> &[u8] {
        self.gate.name().as_bytes()
    }

    /// The first registration: returns once this node holds its server
    /// name, or `stop` is cancelled (`false`). A live entry of another boot
    /// of the same node id is taken over at once (this node restarted);
    /// one of another node id is waited out, with a warning, until its
    /// lease lapses. Redis unreachable: logged, retried.
    pub async fn register(&self, stop: &CancellationToken) -> bool {
        let period = (self.lease / 3).max(Duration::from_millis(50));
        loop {
            let registered = self
                .dir
                .register(self.server(), &self.entry(false), self.lease, true)
                .await;
            match registered {
                Ok(Registered::Taken { node, epoch }) => warn!(
                    server = %self.gate.name(),
                    other = %esc(node.as_bytes()),
                    other_epoch = epoch,
                    "another gate node holds this server name; waiting for its lease to lapse"
                ),
                Ok(_) => {
                    self.set_registered(true);
                    info!(
                        server = %self.gate.name(),
                        node = %self.node,
                        epoch = self.epoch,
                        client = %self.client_addr,
                        control = %self.control_addr,
                        "registered in the cluster"
                    );
                    // Records an earlier boot of this name left (it
                    // crashed) are dead: remove them in the background.
                    let (dir, server, epoch) = (
                        self.dir.clone(),
                        Bytes::copy_from_slice(self.server()),
                        self.epoch,
                    );
                    tokio::spawn(async move {
                        match dir.sweep_stale(&server, epoch, SWEEP_BATCH).await {
                            Ok(0) => {}
                            Ok(n) => info!(records = n, "removed the records of an earlier boot"),
                            Err(e) => warn!(error = %e, "cannot sweep an earlier boot's records"),
                        }
                    });
                    return true;
                }
                Err(e) => {
                    warn!(error = %e, "cannot register in the cluster yet (Redis unreachable?); retrying")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = stop.cancelled() => return false,
            }
        }
    }

    /// Renews the registration every third of the lease until `stop`; then
    /// marks the entry draining.
    pub async fn heartbeat(&self, stop: CancellationToken) {
        let period = (self.lease / 3).max(Duration::from_millis(50));
        let mut healthy = true;
        // `register` ran first.
        let mut registered = true;
        loop {
            match self
                .dir
                .register(self.server(), &self.entry(false), self.lease, false)
                .await
            {
                Ok(Registered::Renewed) => {
                    registered = true;
                    self.set_registered(true);
                }
                Ok(Registered::Created) => {
                    self.set_registered(true);
                    if registered {
                        warn!(
                            server = %self.gate.name(),
                            "the registry entry was gone (lease lapsed or Redis lost its data): registered again, restoring the directory"
                        );
                        self.restore().await;
                    }
                    registered = true;
                }
                Ok(Registered::Taken { node, epoch }) => {
                    self.set_registered(false);
                    error!(
                        server = %self.gate.name(),
                        other = %node,
                        other_epoch = epoch,
                        "another gate node took this server name after our lease lapsed; \
                         no new logins will reach this node"
                    );
                }
                Err(e) => {
                    self.set_registered(false);
                    if healthy {
                        warn!(error = %e, "cannot renew the registration (Redis unreachable?)");
                    }
                    healthy = false;
                    tokio::select! {
                        () = tokio::time::sleep(period) => continue,
                        () = stop.cancelled() => break,
                    }
                }
            }
            if !healthy {
                info!("Redis reachable again: registration renewed");
                healthy = true;
            }
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = stop.cancelled() => break,
            }
        }
        let _ = self
            .dir
            .register(self.server(), &self.entry(true), self.lease, false)
            .await;
    }

    fn set_registered(&self, held: bool) {
        self.registered
            .store(held, std::sync::atomic::Ordering::Release);
    }

    /// Writes every session of this gate back into the directory; kicks
    /// those whose uid has another session's record now.
    async fn restore(&self) {
        let ids = self.gate.session_ids();
        let total = ids.len();
        let mut restored = 0usize;
        let mut superseded = Vec::new();
        for chunk in ids.chunks(RESTORE_BATCH) {
            let results = futures::future::join_all(chunk.iter().map(|(uid, subid)| {
                let record = Record {
                    epoch: self.epoch,
                    subid: subid.clone(),
                    server: Bytes::copy_from_slice(self.server()),
                };
                async move { (uid, subid, self.dir.restore(uid, &record).await) }
            }))
            .await;
            for (uid, subid, result) in results {
                match result {
                    Ok(true) => restored += 1,
                    Ok(false) => superseded.push((uid.clone(), subid.clone())),
                    Err(e) => {
                        warn!(error = %e, "restoring the directory failed; retrying at the next renewal");
                        return;
                    }
                }
            }
        }
        for (uid, subid) in &superseded {
            self.gate
                .kick(uid, subid, RELOGIN_KICK_REASON.to_owned())
                .await;
        }
        info!(
            total,
            restored,
            superseded = superseded.len(),
            "directory restored"
        );
    }

    /// Deletes the registry entry (at the end of a shutdown).
    pub async fn unregister(&self) {
        if let Err(e) = self.dir.unregister(self.server(), self.epoch).await {
            warn!(error = %e, "cannot remove the registration; it lapses with its lease");
        }
    }

    async fn place(&self, p: Place) -> ControlFrame {
        let refuse = |reason: PlaceRefusal, message: String| ControlFrame {
            kind: Some(control_frame::Kind::PlaceRefused(PlaceRefused {
                id: p.id,
                reason: reason.into(),
                message,
            })),
        };
        if p.epoch != self.epoch {
            return refuse(
                PlaceRefusal::WrongEpoch,
                format!("this gate booted as epoch {}", self.epoch),
            );
        }
        let secret = match p.secret.len() {
            8 => {
                let mut key = [0u8; 8];
                key.copy_from_slice(&p.secret);
                SessionSecret::Skynet(key)
            }
            32 => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&p.secret);
                SessionSecret::X25519(key)
            }
            n => return refuse(PlaceRefusal::Invalid, format!("a secret of {n} bytes")),
        };
        if p.uid.is_empty() {
            return refuse(PlaceRefusal::Invalid, "empty uid".to_owned());
        }
        let user = if p.user.is_empty() {
            p.uid.clone()
        } else {
            p.user.clone()
        };
        let subid = match self.gate.login_as(p.uid.clone(), user, secret).await {
            Ok(subid) => subid,
            Err(LoginRefusal::AlreadyOnline) => {
                return refuse(PlaceRefusal::AlreadyOnline, "user is still online".into());
            }
            Err(e) => return refuse(PlaceRefusal::Unavailable, e.to_string()),
        };
        let record = Record {
            epoch: self.epoch,
            subid: subid.clone(),
            server: Bytes::copy_from_slice(self.server()),
        };
        let undo = |why: &'static str| {
            let gate = self.gate.clone();
            let (uid, subid) = (p.uid.clone(), subid.clone());
            async move { gate.kick(&uid, &subid, why.to_owned()).await }
        };
        match self
            .dir
            .commit(&p.uid, &record, &p.expected, &p.lock_token)
            .await
        {
            Ok(Commit::Done) => ControlFrame {
                kind: Some(control_frame::Kind::Placed(Placed { id: p.id, subid })),
            },
            Ok(Commit::Taken | Commit::LockLost) => {
                undo("login refused").await;
                refuse(
                    PlaceRefusal::AlreadyOnline,
                    "another login of the user won".to_owned(),
                )
            }
            Err(e) => {
                undo("login failed").await;
                refuse(PlaceRefusal::DirectoryDown, e.to_string())
            }
        }
    }

    async fn kick(&self, k: Kick) -> ControlFrame {
        if k.epoch == self.epoch {
            self.gate.kick(&k.uid, &k.subid, k.reason).await;
        }
        ControlFrame {
            kind: Some(control_frame::Kind::Kicked(Kicked { id: k.id })),
        }
    }
}

/// Accepts login nodes on `listener` until `stop`.
pub async fn serve_control(node: Arc<GateNode>, listener: TcpListener, stop: CancellationToken) {
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        super::login_node::keepalive(&stream);
        tasks.spawn(control_link(
            Arc::clone(&node),
            stream,
            peer,
            stop.clone(),
            tasks.clone(),
        ));
    }
    tasks.close();
    tasks.wait().await;
}

async fn control_link(
    node: Arc<GateNode>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let io =
        match tokio::time::timeout(HELLO_DEADLINE, tls::accept(node.tls.as_ref(), stream)).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                warn!(%peer, error = %e, "control link: TLS handshake failed");
                return;
            }
            Err(_) => {
                warn!(%peer, "control link: no TLS handshake within the deadline");
                return;
            }
        };
    let mut framed = Framed::new(io, ControlCodec::new());
    let gate_nonce: [u8; link_auth::NONCE_LEN] = rand::random();
    let challenge = ControlFrame {
        kind: Some(control_frame::Kind::Challenge(Challenge {
            gate_nonce: Bytes::copy_from_slice(&gate_nonce),
            server: node.gate.name().to_owned(),
            epoch: node.epoch,
        })),
    };
    if framed.send(challenge).await.is_err() {
        return;
    }
    let hello = match tokio::time::timeout(HELLO_DEADLINE, framed.next()).await {
        Ok(Some(Ok(LoginFrame {
            kind: Some(login_frame::Kind::Hello(hello)),
        }))) => hello,
        Ok(Some(Ok(_))) => {
            return refuse_link(framed, peer, "the first frame must be Hello").await;
        }
        Ok(Some(Err(e))) => {
            warn!(%peer, error = %e, "control link: bad frame before Hello");
            return;
        }
        Ok(None) => return,
        Err(_) => {
            return refuse_link(framed, peer, "no Hello within the deadline").await;
        }
    };
    if hello.protocol_version != proto::CONTROL_VERSION {
        let why = format!(
            "login node speaks control protocol {}, this gate {}",
            hello.protocol_version,
            proto::CONTROL_VERSION
        );
        return refuse_link(framed, peer, &why).await;
    }
    if hello.node_id.is_empty() {
        return refuse_link(framed, peer, "empty node id").await;
    }
    if !link_auth::verify(
        node.secret.bytes(),
        &gate_nonce,
        &hello.login_nonce,
        Proof::Login {
            node: &hello.node_id,
        },
        &hello.proof,
    ) {
        return refuse_link(framed, peer, "wrong or missing proof of the link secret").await;
    }
    let welcome = ControlFrame {
        kind: Some(control_frame::Kind::Welcome(Welcome {
            proof: link_auth::control_gate_proof(
                node.secret.bytes(),
                &gate_nonce,
                &hello.login_nonce,
            )
            .into(),
        })),
    };
    if framed.send(welcome).await.is_err() {
        return;
    }
    let login_node = hello.node_id;
    info!(%peer, node = %esc(login_node.as_bytes()), "login node linked");

    let (mut sink, mut frames) = framed.split();
    let (tx, mut rx) = mpsc::channel::<ControlFrame>(LINK_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.feed(frame).await.is_err() {
                return;
            }
            while let Ok(frame) = rx.try_recv() {
                if sink.feed(frame).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let calls = Arc::new(Semaphore::new(MAX_CALLS_PER_LINK));
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => break,
            frame = frames.next() => frame,
        };
        let kind = match frame {
            Some(Ok(LoginFrame { kind: Some(kind) })) => kind,
            // A frame kind this version does not know: skipped.
            Some(Ok(LoginFrame { kind: None })) => continue,
            Some(Err(e)) => {
                warn!(%peer, error = %e, "control link: bad frame; closing");
                break;
            }
            None => break,
        };
        let Ok(permit) = Arc::clone(&calls).acquire_owned().await else {
            break;
        };
        let (node, tx) = (Arc::clone(&node), tx.clone());
        match kind {
            login_frame::Kind::Place(p) => {
                tasks.spawn(async move {
                    let reply = node.place(p).await;
                    let _ = tx.send(reply).await;
                    drop(permit);
                });
            }
            login_frame::Kind::Kick(k) => {
                tasks.spawn(async move {
                    let reply = node.kick(k).await;
                    let _ = tx.send(reply).await;
                    drop(permit);
                });
            }
            login_frame::Kind::Ping(_) => {
                let pong = ControlFrame {
                    kind: Some(control_frame::Kind::Pong(Pong {})),
                };
                if tx.send(pong).await.is_err() {
                    break;
                }
            }
            login_frame::Kind::Hello(_) => {
                warn!(%peer, "control link: a second Hello; closing");
                break;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    info!(%peer, node = %esc(login_node.as_bytes()), "login node link closed");
}

async fn refuse_link(mut framed: Framed<BoxIo, ControlCodec>, peer: SocketAddr, why: &str) {
    warn!(%peer, reason = %why, "control link refused");
    let refused = ControlFrame {
        kind: Some(control_frame::Kind::Refused(Refused {
            message: why.to_owned(),
        })),
    };
    let _ = framed.send(refused).await;
}
