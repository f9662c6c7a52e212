//! Handles for talking to gates outside a request/response: pushes, kicks,
//! logouts.
//!
//! A [`GateHandle`] names one gate (one configured address) and outlives
//! its connections: while the link is down its calls fail with
//! [`SendError::NotConnected`] instead of queueing, because a push queued
//! across a reconnect may reach a session that no longer exists, and a game
//! usually prefers to know. [`Gates`] is all of a service's gates at once;
//! a push to a user goes to the gate that holds the user when the service
//! has seen where (from session events), else to every connected gate,
//! and the gates that do not have the user skip it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use prost::Message;
use proto::backend::{Kick, Logout, Push, ServiceFrame};

use crate::handler::SessionKind;
use crate::outbox::Outbox;

/// Why a frame could not be handed to a gate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The link to the gate (or to every gate, for [`Gates`]) is down; the
    /// library is reconnecting.
    #[error("not connected to gate {0}")]
    NotConnected(String),
    /// The frame exceeds the link's frame limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Encoded length of the refused frame.
        len: usize,
        /// The limit ([`Config::max_frame_len`](crate::Config)).
        max: usize,
    },
}

/// What a connected link publishes to handles.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) gate_name: String,
    pub(crate) link_id: u64,
}

#[derive(Debug)]
struct Slot {
    addr: String,
    max_frame_len: usize,
    live: Mutex<Option<Live>>,
}

/// One gate of the service. Cheap to clone.
#[derive(Clone)]
pub struct GateHandle {
    slot: Arc<Slot>,
}

impl fmt::Debug for GateHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateHandle")
            .field("addr", &self.slot.addr)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl GateHandle {
    pub(crate) fn new(addr: String, max_frame_len: usize) -> Self {
        GateHandle {
            slot: Arc::new(Slot {
                addr,
                max_frame_len,
                live: Mutex::new(None),
            }),
        }
    }

    fn live(&self) -> MutexGuard<'_, Option<Live>> {
        // A panic while holding this lock cannot leave the `Option` half
        // written, so a poisoned lock is still usable.
        self.slot
            .live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn publish(&self, live: Option<Live>) {
        *self.live() = live;
    }

    /// The address this handle connects to, as configured.
    pub fn addr(&self) -> &str {
        &self.slot.addr
    }

    /// Whether the link is registered right now.
    pub fn is_connected(&self) -> bool {
        self.live().is_some()
    }

    /// The gate's server name, from its registration ack, while connected.
    pub fn gate_name(&self) -> Option<String> {
        self.live().as_ref().map(|live| live.gate_name.clone())
    }

    /// The gate's id for the current link (as in its logs), while connected.
    pub fn link_id(&self) -> Option<u64> {
        self.live().as_ref().map(|live| live.link_id)
    }

    /// Sends any service frame on the current link. Waits while the link's
    /// send queue is full (backpressure), fails fast while disconnected.
    pub async fn send(&self, frame: impl Into<ServiceFrame>) -> Result<(), SendError> {
        let frame = frame.into();
        let len = frame.encoded_len();
        if len > self.slot.max_frame_len {
            return Err(SendError::TooLarge {
                len,
                max: self.slot.max_frame_len,
            });
        }
        // Clone the outbox out so the lock is not held across the await.
        let outbox = self.live().as_ref().map(|live| live.outbox.clone());
        let not_connected = || SendError::NotConnected(self.slot.addr.clone());
        let outbox = outbox.ok_or_else(not_connected)?;
        outbox.send(frame).await.map_err(|_| not_connected())
    }

    /// Pushes `payload` to one user on this gate.
    pub async fn push(
        &self,
        uid: impl Into<Bytes>,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        self.send(Push::to_user(uid.into(), payload.into())).await
    }

    /// Pushes one `payload` to several users on this gate (one frame).
    pub async fn push_many(
        &self,
        uids: Vec<Bytes>,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        self.send(Push::to_users(uids, payload.into())).await
    }

    /// Pushes `payload` to every user on this gate.
    pub async fn push_all(&self, payload: impl Into<Bytes>) -> Result<(), SendError> {
        self.send(Push::to_all(payload.into())).await
    }

    /// Ends the user's session; the client is told `reason` before the
    /// gate closes its connection.
    pub async fn kick(
        &self,
        uid: impl Into<Bytes>,
        reason: impl Into<String>,
    ) -> Result<(), SendError> {
        self.send(Kick::user(uid.into(), reason)).await
    }

    /// Ends the user's session quietly (skynet's agent logout).
    pub async fn logout(&self, uid: impl Into<Bytes>) -> Result<(), SendError> {
        self.send(Logout {
            uid: uid.into(),
            subid: Bytes::new(),
        })
        .await
    }
}

/// All gates of a service. Cheap to clone.
///
/// The gates are the configured ones and, in a cluster, the ones the gates
/// announce ([`crate::Service`] links to gates that join and drops the
/// ones that leave). A call for one user (push, kick, logout) goes to the
/// gate whose session events said it holds the user, when the service
/// sees them (its agent does; listeners of all session events do), and to
/// every connected gate otherwise, the gates that do not have the user
/// skipping it. Calls for everyone go to every connected gate. Each call
/// returns how many gates took it; `Err(NotConnected)` only when none
/// did.
#[derive(Debug, Clone)]
pub struct Gates {
    inner: Arc<GatesInner>,
}

#[derive(Debug)]
struct GatesInner {
    list: Mutex<Arc<[GateHandle]>>,
    /// Where each user's session is, from session events.
    owners: Mutex<HashMap<Bytes, GateHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Gates {
    pub(crate) fn new(gates: Vec<GateHandle>) -> Self {
        Gates {
            inner: Arc::new(GatesInner {
                list: Mutex::new(gates.into()),
                owners: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn snapshot(&self) -> Arc<[GateHandle]> {
        Arc::clone(&lock(&self.inner.list))
    }

    /// Every gate, configured ones first, then the ones found in the
    /// cluster, in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = GateHandle> {
        self.snapshot().to_vec().into_iter()
    }

    /// How many gates are registered right now.
    pub fn connected(&self) -> usize {
        self.snapshot().iter().filter(|g| g.is_connected()).count()
    }

    /// Adds a gate found in the cluster.
    pub(crate) fn add(&self, gate: GateHandle) {
        let mut list = lock(&self.inner.list);
        let mut gates = list.to_vec();
        gates.push(gate);
        *list = gates.into();
    }

    /// Removes a gate that left the cluster.
    pub(crate) fn remove(&self, gate: &GateHandle) {
        {
            let mut list = lock(&self.inner.list);
            let gates: Vec<GateHandle> = list
                .iter()
                .filter(|g| !Arc::ptr_eq(&g.slot, &gate.slot))
                .cloned()
                .collect();
            *list = gates.into();
        }
        lock(&self.inner.owners).retain(|_, g| !Arc::ptr_eq(&g.slot, &gate.slot));
    }

    /// A session event from `gate`: remembers where the user is.
    pub(crate) fn note(&self, uid: &Bytes, kind: SessionKind, gate: &GateHandle) {
        let mut owners = lock(&self.inner.owners);
        match kind {
            SessionKind::Login | SessionKind::Back => {
                owners.insert(uid.clone(), gate.clone());
            }
            // The session lives on, waiting for its player.
            SessionKind::Away => {}
            SessionKind::Logout | SessionKind::Kicked => {
                // Only if it is still there: the user may have logged in
                // on another gate before this gate's end arrived.
                if owners
                    .get(uid)
                    .is_some_and(|g| Arc::ptr_eq(&g.slot, &gate.slot))
                {
                    owners.remove(uid);
                }
            }
        }
    }

    /// The gate holding `uid`'s session, if known and connected.
    fn owner(&self, uid: &[u8]) -> Option<GateHandle> {
        lock(&self.inner.owners)
            .get(uid)
            .filter(|g| g.is_connected())
            .cloned()
    }

    /// Sends a frame to every connected gate.
    pub async fn send(&self, frame: impl Into<ServiceFrame>) -> Result<usize, SendError> {
        let frame = frame.into();
        let mut reached = 0;
        let mut last_err = None;
        for gate in self.snapshot().iter() {
            match gate.send(frame.clone()).await {
                Ok(()) => reached += 1,
                // Too large for one is too large for all: say so at once.
                Err(e @ SendError::TooLarge { .. }) => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        match (reached, last_err) {
            (0, Some(e)) => Err(e),
            (0, None) => Err(SendError::NotConnected("(no gate configured)".into())),
            (n, _) => Ok(n),
        }
    }

    /// Sends a frame about `uid` to the gate holding it, or to every gate.
    async fn send_for(&self, uid: &[u8], frame: ServiceFrame) -> Result<usize, SendError> {
        if let Some(gate) = self.owner(uid) {
            match gate.send(frame.clone()).await {
                Ok(()) => return Ok(1),
                Err(e @ SendError::TooLarge { .. }) => return Err(e),
                // The link just went down: try everyone.
                Err(SendError::NotConnected(_)) => {}
            }
        }
        self.send(frame).await
    }

    /// Pushes `payload` to one user, wherever they are.
    pub async fn push(
        &self,
        uid: impl Into<Bytes>,
        payload: impl Into<Bytes>,
    ) -> Result<usize, SendError> {
        let uid = uid.into();
        self.send_for(&uid, Push::to_user(uid.clone(), payload.into()).into())
            .await
    }

    /// Pushes one `payload` to several users, wherever they are: one frame
    /// per gate holding some of them, and one to every gate for the users
    /// whose gate is not known.
    pub async fn push_many(
        &self,
        uids: Vec<Bytes>,
        payload: impl Into<Bytes>,
    ) -> Result<usize, SendError> {
        let payload = payload.into();
        let mut by_gate: Vec<(GateHandle, Vec<Bytes>)> = Vec::new();
        let mut unknown = Vec::new();
        for uid in uids {
            match self.owner(&uid) {
                Some(gate) => match by_gate
                    .iter_mut()
                    .find(|(g, _)| Arc::ptr_eq(&g.slot, &gate.slot))
                {
                    Some((_, users)) => users.push(uid),
                    None => by_gate.push((gate, vec![uid])),
                },
                None => unknown.push(uid),
            }
        }
        let mut reached = 0;
        for (gate, users) in by_gate {
            match gate
                .send(Push::to_users(users.clone(), payload.clone()))
                .await
            {
                Ok(()) => reached += 1,
                Err(e @ SendError::TooLarge { .. }) => return Err(e),
                Err(SendError::NotConnected(_)) => unknown.extend(users),
            }
        }
        if !unknown.is_empty() {
            reached += self.send(Push::to_users(unknown, payload)).await?;
        }
        if reached == 0 {
            return Err(SendError::NotConnected("(no gate configured)".into()));
        }
        Ok(reached)
    }

    /// Pushes `payload` to every user of every gate.
    pub async fn push_all(&self, payload: impl Into<Bytes>) -> Result<usize, SendError> {
        self.send(Push::to_all(payload.into())).await
    }

    /// Kicks the user, wherever they are, with `reason`.
    pub async fn kick(
        &self,
        uid: impl Into<Bytes>,
        reason: impl Into<String>,
    ) -> Result<usize, SendError> {
        let uid = uid.into();
        self.send_for(&uid, Kick::user(uid.clone(), reason).into())
            .await
    }

    /// Logs the user out quietly, wherever they are.
    pub async fn logout(&self, uid: impl Into<Bytes>) -> Result<usize, SendError> {
        let uid = uid.into();
        let frame = Logout {
            uid: uid.clone(),
            subid: Bytes::new(),
        };
        self.send_for(&uid, frame.into()).await
    }
}

#[cfg(test)]
mod tests {
    use proto::backend::service_frame::Kind;

    use super::*;

    fn connect(handle: &GateHandle) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox::new(8, 1024));
        handle.publish(Some(Live {
            outbox: outbox.clone(),
            gate_name: "sample".into(),
            link_id: 1,
        }));
        outbox
    }

    #[tokio::test]
    async fn disconnected_handles_fail_fast() {
        let gate = GateHandle::new("127.0.0.1:1".into(), 1024);
        assert_eq!(
            gate.push("u", "hi").await,
            Err(SendError::NotConnected("127.0.0.1:1".into()))
        );
        let gates = Gates::new(vec![gate]);
        assert!(matches!(
            gates.push_all("hi").await,
            Err(SendError::NotConnected(_))
        ));
    }

    #[tokio::test]
    async fn frames_go_to_the_live_link() {
        let gate = GateHandle::new("a".into(), 1024);
        let outbox = connect(&gate);
        assert_eq!(gate.gate_name().as_deref(), Some("sample"));
        gate.kick("u", "bye").await.unwrap();
        let [
            ServiceFrame {
                kind: Some(Kind::Kick(kick)),
            },
        ] = &outbox.queued()[..]
        else {
            panic!("expected a kick");
        };
        assert_eq!(kick.reason, "bye");
        gate.publish(None);
        assert!(!gate.is_connected());
        assert!(gate.logout("u").await.is_err());
    }

    #[tokio::test]
    async fn broadcast_counts_connected_gates() {
        let a = GateHandle::new("a".into(), 1024);
        let b = GateHandle::new("b".into(), 1024);
        let outbox = connect(&a);
        let gates = Gates::new(vec![a, b]);
        assert_eq!(gates.connected(), 1);
        assert_eq!(gates.push_many(vec!["x".into()], "hi").await, Ok(1));
        assert_eq!(outbox.queued().len(), 1);
    }

    #[tokio::test]
    async fn oversize_pushes_are_refused() {
        let gate = GateHandle::new("a".into(), 16);
        let _outbox = connect(&gate);
        assert!(matches!(
            gate.push("u", vec![0u8; 64]).await,
            Err(SendError::TooLarge { max: 16, .. })
        ));
    }

    #[tokio::test]
    async fn a_user_s_calls_go_to_the_gate_holding_it() {
        let (a, b) = (
            GateHandle::new("a".into(), 1024),
            GateHandle::new("b".into(), 1024),
        );
        let (qa, qb) = (connect(&a), connect(&b));
        let gates = Gates::new(vec![a.clone(), b.clone()]);
        let uid = Bytes::from_static(b"u");
        // Unknown: every gate.
        assert_eq!(gates.push(uid.clone(), "1").await, Ok(2));
        gates.note(&uid, SessionKind::Login, &b);
        assert_eq!(gates.push(uid.clone(), "2").await, Ok(1));
        assert_eq!(gates.kick(uid.clone(), "bye").await, Ok(1));
        assert_eq!((qa.queued().len(), qb.queued().len()), (1, 3));
        // A late end from the gate it left does not forget the new one.
        gates.note(&uid, SessionKind::Login, &a);
        gates.note(&uid, SessionKind::Logout, &b);
        assert_eq!(gates.logout(uid.clone()).await, Ok(1));
        // (`queued` takes what it returns.)
        assert_eq!((qa.queued().len(), qb.queued().len()), (1, 0));
        // Grouped: one frame for a's user, one to both for the unknown one.
        assert_eq!(
            gates
                .push_many(vec![uid.clone(), Bytes::from_static(b"x")], "3")
                .await,
            Ok(3)
        );
        assert_eq!((qa.queued().len(), qb.queued().len()), (2, 1));
        gates.remove(&a);
        assert_eq!(gates.iter().count(), 1);
        assert_eq!(gates.push(uid, "4").await, Ok(1), "a's users: everyone");
    }
}
