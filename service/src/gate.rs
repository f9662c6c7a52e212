//! Handles for talking to gates outside a request/response: pushes, kicks,
//! logouts.
//!
//! A [`GateHandle`] names one gate (one configured address) and outlives
//! its connections: while the link is down its calls fail with
//! [`SendError::NotConnected`] instead of queueing, because a push queued
//! across a reconnect may reach a session that no longer exists, and a game
//! usually prefers to know. [`Gates`] is all of a service's gates at once;
//! a push to a user goes to every connected gate, and the gates that do not
//! have the user skip it (the service need not track who is where).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use prost::Message;
use proto::backend::{Kick, Logout, Push, ServiceFrame};

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
/// Each call goes to every connected gate and returns how many took it;
/// `Err(NotConnected)` only when none is connected.
#[derive(Debug, Clone)]
pub struct Gates {
    gates: Arc<[GateHandle]>,
}

impl Gates {
    pub(crate) fn new(gates: Vec<GateHandle>) -> Self {
        Gates {
            gates: gates.into(),
        }
    }

    /// Every gate, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &GateHandle> {
        self.gates.iter()
    }

    /// How many gates are registered right now.
    pub fn connected(&self) -> usize {
        self.gates.iter().filter(|g| g.is_connected()).count()
    }

    /// Sends a frame to every connected gate.
    pub async fn send(&self, frame: impl Into<ServiceFrame>) -> Result<usize, SendError> {
        let frame = frame.into();
        let mut reached = 0;
        let mut last_err = None;
        for gate in self.gates.iter() {
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

    /// Pushes `payload` to one user, wherever they are.
    pub async fn push(
        &self,
        uid: impl Into<Bytes>,
        payload: impl Into<Bytes>,
    ) -> Result<usize, SendError> {
        self.send(Push::to_user(uid.into(), payload.into())).await
    }

    /// Pushes one `payload` to several users, wherever they are.
    pub async fn push_many(
        &self,
        uids: Vec<Bytes>,
        payload: impl Into<Bytes>,
    ) -> Result<usize, SendError> {
        self.send(Push::to_users(uids, payload.into())).await
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
        self.send(Kick::user(uid.into(), reason)).await
    }

    /// Logs the user out quietly, wherever they are.
    pub async fn logout(&self, uid: impl Into<Bytes>) -> Result<usize, SendError> {
        self.send(Logout {
            uid: uid.into(),
            subid: Bytes::new(),
        })
        .await
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
}
