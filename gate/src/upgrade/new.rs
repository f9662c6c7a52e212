//! The new process's side of a live upgrade: it takes the running one
//! over instead of binding its listeners.
//!
//! [`take_over`] receives the listening sockets (kept here until
//! [`inherited_listener`] hands each to the part that would have bound the
//! same address), the connections and the state. While it sets itself up,
//! accepting stays paused and the restored connections wait: until the old
//! process has committed, it may still resume them, so only one process
//! ever reads a socket. [`Channel::finish`]
//! says `Ready`, delivers the pushes the old process passes on, and
//! releases everything at `Committed`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::info;

use super::frames;
use super::state::{GateState, Message, READS};
use crate::players::MsgGate;
use crate::players::handoff::{Forward, Forwarded, HandedConn};

/// How long each step of the old process may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Listening sockets received from the old process, by local address.
static INHERITED: Mutex<Vec<std::net::TcpListener>> = Mutex::new(Vec::new());

/// The listener received from the old process on `addr`, if any (each is
/// given out once).
pub fn inherited_listener(addr: SocketAddr) -> Option<io::Result<TcpListener>> {
    let mut inherited = INHERITED.lock().unwrap_or_else(PoisonError::into_inner);
    let at = inherited
        .iter()
        .position(|l| l.local_addr().is_ok_and(|a| a == addr))?;
    let listener = inherited.swap_remove(at);
    Some(
        listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener)),
    )
}

/// What the old process handed over.
#[derive(Debug)]
pub struct Inherited {
    /// The sessions and counters.
    pub state: GateState,
    /// The connections.
    pub conns: Vec<HandedConn>,
    /// The socket to the old process.
    pub channel: Channel,
}

/// The socket to the old process, until it has let go.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
}

fn decode(body: &[u8]) -> io::Result<Message> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn send(stream: &mut UnixStream, message: &Message) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    frames::send(stream, &body, &[])
}

/// Takes over the process serving the upgrade socket at `path`: returns
/// what it handed over (its listeners wait in [`inherited_listener`]).
/// Accepting stays paused in this process until [`Channel::finish`].
pub async fn take_over(path: &Path) -> Result<Inherited, String> {
    let path = path.to_owned();
    crate::net::pause_accepting(true);
    tokio::task::spawn_blocking(move || receive(&path))
        .await
        .map_err(|e| e.to_string())?
}

fn receive(path: &Path) -> Result<Inherited, String> {
    // The running process may itself have just taken over and not serve
    // the socket yet: a few seconds of patience.
    let mut attempts = 0;
    let mut stream = loop {
        match UnixStream::connect(path) {
            Ok(stream) => break stream,
            Err(e)
                if attempts < 50
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                    ) =>
            {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(format!(
                    "cannot reach the running gate at {}: {e}",
                    path.display()
                ));
            }
        }
    };
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let io = |e: io::Error| format!("talking to the running gate: {e}");
    send(
        &mut stream,
        &Message::Hello {
            reads: READS.to_vec(),
            pid: std::process::id(),
        },
    )
    .map_err(io)?;
    let mut conns = Vec::new();
    let mut listeners = 0;
    let state = loop {
        let Some((body, fds)) = frames::recv(&mut stream).map_err(io)? else {
            return Err("the running gate closed the upgrade socket".into());
        };
        match decode(&body).map_err(io)? {
            Message::Listeners { names } => {
                listeners += fds.len();
                info!(?names, "listeners received");
                let mut inherited = INHERITED.lock().unwrap_or_else(PoisonError::into_inner);
                inherited.extend(fds.into_iter().map(std::net::TcpListener::from));
            }
            Message::Conns { conns: states } => {
                if states.len() != fds.len() {
                    return Err("connection states and descriptors do not match".into());
                }
                conns.extend(
                    states
                        .into_iter()
                        .zip(fds)
                        .map(|(state, fd): (_, OwnedFd)| HandedConn { state, fd }),
                );
            }
            Message::State(state) => break *state,
            Message::Refused { why } => return Err(format!("the running gate refused: {why}")),
            other => return Err(format!("unexpected message {other:?}")),
        }
    };
    if !READS.contains(&state.version) {
        let why = format!(
            "state version {} (this build reads {READS:?})",
            state.version
        );
        let _ = send(&mut stream, &Message::Refused { why: why.clone() });
        return Err(why);
    }
    info!(
        listeners,
        connections = conns.len(),
        sessions = state.users.len(),
        "state received from the running gate"
    );
    Ok(Inherited {
        state,
        conns,
        channel: Channel { stream },
    })
}

impl Channel {
    /// Tells the old process this one cannot take over (it serves on).
    pub fn refuse(mut self, why: &str) {
        let _ = send(&mut self.stream, &Message::Refused { why: why.into() });
    }

    /// Says `Ready`, delivers the pushes the old process passes on, and
    /// returns once it has let go (`Committed`, or its exit). Then accepting
    /// resumes here. `Err`: the old process did not commit (it resumed, or
    /// the socket failed); this process must not serve.
    pub async fn finish(self, gate: Option<&MsgGate>) -> Result<(), String> {
        let gate = gate.cloned();
        let mut stream = self.stream;
        let committed = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let io = |e: io::Error| format!("talking to the old process: {e}");
            send(&mut stream, &Message::Ready).map_err(io)?;
            loop {
                let Some((body, _)) = frames::recv(&mut stream).map_err(io)? else {
                    return Err("the old process went away before it committed".into());
                };
                match decode(&body).map_err(io)? {
                    Message::Push {
                        uid,
                        subid,
                        payload,
                    } => {
                        if let Some(gate) = &gate {
                            gate.apply_forwarded(&Forwarded {
                                uid,
                                subid,
                                what: Forward::Push(payload),
                            });
                        }
                    }
                    Message::End { uid, subid, end } => {
                        if let Some(gate) = &gate {
                            gate.apply_forwarded(&Forwarded {
                                uid,
                                subid,
                                what: Forward::End(end),
                            });
                        }
                    }
                    Message::Committed => return Ok(()),
                    other => return Err(format!("unexpected message {other:?}")),
                }
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        committed?;
        crate::net::pause_accepting(false);
        info!("live upgrade: this process serves");
        Ok(())
    }
}

/// A session taken over: its uid and subid.
pub type SessionId = (bytes::Bytes, bytes::Bytes);

/// Takes the sessions and connections `inherited` over into `gate`, which
/// must have been made by [`MsgGate::new_restored`] from its state.
/// Returns the uids and subids of the sessions (for the login server's
/// table) and the channel to finish with.
pub fn restore(
    gate: &MsgGate,
    inherited: Inherited,
) -> Result<(Vec<SessionId>, Channel), (String, Channel)> {
    let Inherited {
        state,
        conns,
        channel,
    } = inherited;
    match gate.restore(state, conns) {
        Ok((sessions, connections)) => {
            info!(sessions, connections, "sessions and connections taken over");
            Ok((gate.session_ids(), channel))
        }
        Err(why) => Err((why, channel)),
    }
}

/// The listeners, received or not, are given out once; what is left when
/// the process serves (an address no longer configured) is closed.
pub fn drop_unclaimed() {
    INHERITED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}
