//! What crosses the upgrade socket: the messages, and the gate's state as
//! plain data in a versioned format.
//!
//! The state is JSON (serde): every session as the `gate-core` machine
//! writes it out ([`gate_core::session::Session`] with its connection as
//! an id), every handed-over connection's machine
//! ([`gate_core::connection::Connection`]) with its unread input and
//! unwritten output, and the counters that must not go back (subids and
//! connection ids are never reused). [`STATE_VERSION`] names the format; a
//! process refuses a state of a version it does not read ([`READS`]), and the old
//! process then serves on.

use bytes::Bytes;
use gate_core::connection::Connection;
use gate_core::session::{ConnId, Session};
use serde::{Deserialize, Serialize};

/// The version of the state format this build writes. Version 2 added
/// plain WebSocket connections ([`ConnState::websocket`]); a build of
/// version 1 would take them for TCP ones, so it is refused. Version 3
/// added sealed connections (the channel in the connection's machine); a
/// build of version 2 would serve them in the clear, so to such a build
/// this one writes version 2 without its sealed connections (they are
/// closed, and their clients reconnect: [`writes_for`]).
pub const STATE_VERSION: u32 = 3;

/// The state versions this build reads: a version 1 state is a version 2
/// one without WebSocket connections, a version 2 one a version 3 one
/// without sealed connections.
pub const READS: &[u32] = &[1, 2, 3];

/// The version to write for a new process that reads `reads`: the highest
/// this build writes that it reads, if any (2 means without sealed
/// connections).
pub fn writes_for(reads: &[u32]) -> Option<u32> {
    [STATE_VERSION, 2].into_iter().find(|v| reads.contains(v))
}

/// One message on the upgrade socket (descriptors travel with
/// [`Message::Listeners`] and [`Message::Conns`]). Externally tagged
/// (`{"hello": {...}}`): an internally tagged enum would buffer the state,
/// and the buffer loses the integer keys of the sessions' caches.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// New → old: a new process wants to take over; it reads these state
    /// versions.
    Hello {
        /// The state versions the new process reads.
        reads: Vec<u32>,
        /// Its process id (for the logs).
        pid: u32,
    },
    /// Either way: the handoff does not happen, and why. The old process
    /// serves on.
    Refused {
        /// Why, for the log of the other side.
        why: String,
    },
    /// Old → new: the listening sockets, in this order.
    Listeners {
        /// Which listener each descriptor is (`login`, `gate`, ...).
        names: Vec<String>,
    },
    /// Old → new: some of the handed-over connections, their descriptors
    /// in this order.
    Conns {
        /// Each connection's state.
        conns: Vec<ConnState>,
    },
    /// Old → new: the sessions; the last message of the handover.
    State(Box<GateState>),
    /// New → old: the new process serves; the old one may go.
    Ready,
    /// Old → new: the old process lets go and exits.
    Committed,
    /// Old → new: a push that reached the old process after its state was
    /// written out, for the new one to deliver.
    Push {
        /// The user.
        uid: Bytes,
        /// Its session.
        subid: Bytes,
        /// What to push.
        payload: Bytes,
    },
    /// Old → new: a kick (the end of a session) that reached the old
    /// process after its state was written out, for the new one to carry
    /// out.
    End {
        /// The user.
        uid: Bytes,
        /// Its session.
        subid: Bytes,
        /// How the session ends.
        end: gate_core::End,
    },
}

/// The gate's sessions and counters.
#[derive(Debug, Serialize, Deserialize)]
pub struct GateState {
    /// [`STATE_VERSION`] of the writer.
    pub version: u32,
    /// The gate's server name (the new process must serve the same).
    pub server: String,
    /// The old process's clock (its time since its epoch) when the state
    /// was written: the new process starts its clock there, so every
    /// deadline in the state holds.
    pub now_ns: u64,
    /// The last subid given out.
    pub next_subid: u64,
    /// The last connection id given out.
    pub next_conn: u64,
    /// Every session.
    pub users: Vec<UserState>,
    /// A cluster gate node's boot epoch (`None`: an all-in-one process).
    /// The new process registers under the same one, so the directory's
    /// records of the moved sessions stay valid.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// Written by a cluster login node: no session, only its listeners
    /// move (its dialogues finish in the old process).
    #[serde(default)]
    pub login_node: bool,
}

/// One user's session.
#[derive(Debug, Serialize, Deserialize)]
pub struct UserState {
    /// The uid.
    pub uid: Bytes,
    /// The subid.
    pub subid: Bytes,
    /// The gate username the client signs with.
    pub username: Bytes,
    /// The username with the name the client logged in with, if the
    /// authenticator gave another uid.
    pub alias: Option<Bytes>,
    /// The session secret: 8 bytes (skynet suite) or 32 (x25519).
    pub secret: Bytes,
    /// The session machine, its connection named by id.
    pub session: Session<ConnId>,
}

/// One handed-over connection (its descriptor travels beside it).
#[derive(Debug, Serialize, Deserialize)]
pub struct ConnState {
    /// The connection's id (the session names it).
    pub id: ConnId,
    /// The gate username of its session.
    pub username: Bytes,
    /// The connection machine.
    pub machine: Connection,
    /// Input read from the socket and not yet served (a partial package,
    /// or packages behind a pause).
    pub unread: Bytes,
    /// Output made and not yet written to the socket (packages).
    pub unwritten: Bytes,
    /// A plain WebSocket connection's frame state (`None`: TCP).
    #[serde(default)]
    pub websocket: Option<crate::players::WsState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_written_is_the_highest_both_know() {
        assert_eq!(writes_for(&[1, 2, 3]), Some(3));
        // A build before sealed connections: version 2, without them.
        assert_eq!(writes_for(&[1, 2]), Some(2));
        assert_eq!(writes_for(&[1]), None);
        assert_eq!(writes_for(&[4]), None);
    }
}
