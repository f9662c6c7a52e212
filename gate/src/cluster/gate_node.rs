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
//! * `GateNode::place` and `GateNode::kick` answer the control calls
//!   `control` receives from authenticated login nodes
//!   (`proto/control.proto`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use loginproto::handshake::SessionSecret;
use proto::control::{
    ControlFrame, Kick, Kicked, Place, PlaceRefusal, PlaceRefused, Placed, control_frame,
};
use proto::link_auth::LinkSecret;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::directory::{Commit, Directory, GateEntry, Registered};
use super::record::Record;
use crate::logging::esc;
use crate::login::placement::{End, LoginLink, LoginRefusal};
use crate::players::MsgGate;

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
    fn session_ended(&self, server: &[u8], uid: &[u8], subid: &[u8], reason: &End) {
        let record = Record {
            epoch: self.epoch,
            subid: Bytes::copy_from_slice(subid),
            server: Bytes::copy_from_slice(server),
        };
        let uid = Bytes::copy_from_slice(uid);
        let cause = reason.label();
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
                        cause,
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
    /// Published WebSocket URL (`ws://host:port` or `wss://host:port`;
    /// empty: no WebSocket listener).
    pub web_addr: String,
    /// Published backend address (empty: no backend listener).
    pub backend_addr: String,
    /// The backend, told the cluster's gate list for its services.
    pub backend: Option<crate::backend::Backend>,
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
    /// Control calls (placements, kicks) in progress: a live upgrade lets
    /// them finish before it writes the sessions out.
    pub busy: Arc<std::sync::atomic::AtomicUsize>,
}

/// A control call counted in [`GateNode::busy`] until dropped.
pub(super) struct Busy(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl GateNode {
    /// Counts a control call in; while a live upgrade is under way it
    /// waits for its outcome first: if the upgrade goes through, this
    /// process exits and the login node sends the call again to the new
    /// one; if it is called off, the call runs here.
    pub(super) async fn enter_call(&self) -> Busy {
        use std::sync::atomic::{Ordering, fence};
        loop {
            self.busy.fetch_add(1, Ordering::SeqCst);
            // Pairs with the fence of `MsgGate::hand_off_request`.
            fence(Ordering::SeqCst);
            if !self.gate.is_handing_off() {
                return Busy(Arc::clone(&self.busy));
            }
            self.busy.fetch_sub(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn entry(&self, draining: bool) -> GateEntry {
        GateEntry {
            node: self.node.clone(),
            epoch: self.epoch,
            client: self.client_addr.clone(),
            web: self.web_addr.clone(),
            backend: self.backend_addr.clone(),
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
        let mut server_changes = self.dir.server_changes();
        // A restore that failed is tried again at the next renewal.
        let mut restore_pending = false;
        loop {
            match self
                .dir
                .register(self.server(), &self.entry(false), self.lease, false)
                .await
            {
                Ok(registration @ (Registered::Renewed | Registered::Created)) => {
                    self.set_registered(true);
                    if registration == Registered::Created && registered {
                        warn!(
                            server = %self.gate.name(),
                            "the registry entry was gone (lease lapsed or Redis lost its data): registered again, restoring the directory"
                        );
                        restore_pending = true;
                    }
                    // Another Redis server (a failover, or a restart from
                    // its files): our entry may have survived, but the
                    // last records written before the change may not have.
                    let changes = self.dir.server_changes();
                    if changes != server_changes {
                        server_changes = changes;
                        if !restore_pending {
                            warn!(
                                server = %self.gate.name(),
                                "Redis is another server than before (failover or restart): restoring the directory"
                            );
                        }
                        restore_pending = true;
                    }
                    registered = true;
                    if restore_pending {
                        restore_pending = !self.restore().await;
                    }
                    self.announce_gates().await;
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

    /// Tells the backend's services the cluster's gates that take them
    /// (registered, with a backend address, not draining).
    async fn announce_gates(&self) {
        let Some(backend) = &self.backend else {
            return;
        };
        match self.dir.gates().await {
            Ok(gates) => {
                let mut list: Vec<(String, String)> = gates
                    .into_iter()
                    .filter(|g| !g.backend.is_empty() && !g.draining)
                    .map(|g| (g.server, g.backend))
                    .collect();
                list.sort();
                backend.announce_gates(list);
            }
            Err(e) => debug!(error = %e, "cannot list the cluster's gates; keeping the last list"),
        }
    }

    fn set_registered(&self, held: bool) {
        self.registered
            .store(held, std::sync::atomic::Ordering::Release);
    }

    /// Writes every session of this gate back into the directory; kicks
    /// those whose uid has another session's record now. Returns whether
    /// it got through (else it is tried again at the next renewal).
    async fn restore(&self) -> bool {
        let ids = self.gate.session_ids();
        let total = ids.len();
        let mut restored = 0usize;
        let mut superseded = Vec::new();
        let mut fence_extended = None::<tokio::time::Instant>;
        for chunk in ids.chunks(RESTORE_BATCH) {
            // Logins that need a record wait until ours are back: the
            // fence stays up while we write them (renewed at most every
            // tenth of it).
            if fence_extended.is_none_or(|at| at.elapsed() >= self.lease / 10) {
                if let Err(e) = self.dir.extend_fence().await {
                    warn!(error = %e, "restoring the directory failed; retrying at the next renewal");
                    return false;
                }
                fence_extended = Some(tokio::time::Instant::now());
            }
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
                        return false;
                    }
                }
            }
        }
        for (uid, subid) in &superseded {
            self.gate.kick(uid, subid, End::Relogin).await;
        }
        info!(
            total,
            restored,
            superseded = superseded.len(),
            "directory restored"
        );
        true
    }

    /// Deletes the registry entry (at the end of a shutdown).
    pub async fn unregister(&self) {
        if let Err(e) = self.dir.unregister(self.server(), self.epoch).await {
            warn!(error = %e, "cannot remove the registration; it lapses with its lease");
        }
    }

    pub(super) async fn place(&self, p: Place) -> ControlFrame {
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
            async move { gate.kick(&uid, &subid, End::Kicked(why.to_owned())).await }
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

    pub(super) async fn kick(&self, k: Kick) -> ControlFrame {
        if k.epoch == self.epoch {
            let reason = if k.relogin {
                End::Relogin
            } else {
                End::Kicked(k.reason)
            };
            self.gate.kick(&k.uid, &k.subid, reason).await;
        }
        ControlFrame {
            kind: Some(control_frame::Kind::Kicked(Kicked { id: k.id })),
        }
    }
}
