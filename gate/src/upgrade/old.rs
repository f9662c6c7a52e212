//! The running process's side of a live upgrade: it serves the upgrade
//! socket, and hands everything over to the new process that connects.
//!
//! One handoff, step by step (any failure rolls back: the process resumes
//! exactly as it was, says why in its log, and serves on):
//!
//! 1. the new process says which state versions it reads; none that this
//!    one writes: refused;
//! 2. every accept loop pauses (new connections wait in the kernel's
//!    backlogs), and the login dialogues (or, on a cluster gate node, the
//!    login nodes' control calls) in flight finish here; new ones wait;
//! 3. the gate parks its connections and writes its sessions out
//!    (`MsgGate::hand_off_prepare`);
//! 4. the listening sockets, the parked connections (in batches of
//!    descriptors) and the state go to the new process;
//! 5. the new process answers `Ready` once it has taken everything over;
//!    pushes that reached this process meanwhile are passed on, then
//!    `Committed`, and this process exits at once: its connections' other
//!    descriptors live in the new process, so nothing is closed.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::frames::{self, MAX_FDS};
use super::state::{GateState, Message, STATE_VERSION};
use crate::players::MsgGate;
use crate::players::handoff::{Forward, Forwarded, Prepared};

/// How long the new process may take to answer at each step.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the running process hands over.
pub struct Handover {
    /// The gate (`None`: a cluster login node, which hands over only its
    /// listeners and finishes its own dialogues, see [`Handover::finish`]).
    pub gate: Option<MsgGate>,
    /// Duplicates of the listening sockets, named for the logs.
    pub listeners: Vec<(String, OwnedFd)>,
    /// Work in progress that finishes before the handoff: login
    /// dialogues (all-in-one), control calls from login nodes (a cluster
    /// gate node). Work that starts once the handoff is requested waits
    /// for its outcome.
    pub busy: Option<Arc<dyn Fn() -> usize + Send + Sync>>,
    /// A cluster gate node's boot epoch, which the new process keeps.
    pub epoch: Option<u64>,
    /// Work this process finishes after the new one took over, before it
    /// exits (a login node's dialogues, queued logins included), and the
    /// longest it waits for it.
    pub finish: Option<(Arc<dyn Fn() -> usize + Send + Sync>, Duration)>,
    /// How long connections and dialogues get to finish what they are
    /// doing before the handoff is called off.
    pub grace: Duration,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("listeners", &self.listeners.len())
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// Binds the upgrade socket at `path`. A socket file nobody answers on
/// (left by a process that died) is replaced; one a live process serves
/// is an error.
pub async fn bind(path: &Path) -> io::Result<tokio::net::UnixListener> {
    // Right after a handoff the old process is still exiting: give it a
    // moment.
    for _ in 0..100 {
        if !path.exists() {
            break;
        }
        if UnixStream::connect(path).is_err() {
            std::fs::remove_file(path)?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if path.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "a process serves the upgrade socket {} already",
                path.display()
            ),
        ));
    }
    tokio::net::UnixListener::bind(path)
}

/// Serves the upgrade socket at `path` until `stop`: each new process that
/// connects gets a handoff. On success the process exits (status 0); on
/// failure it serves on. The socket file is removed when `stop` ends it.
pub async fn serve(path: PathBuf, handover: Handover, stop: CancellationToken) -> io::Result<()> {
    let listener = bind(&path).await?;
    info!(socket = %path.display(), "serving live upgrades");
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        // Blocking I/O on a thread of its own (see `frames`).
        let stream = match accepted
            .and_then(|(s, _)| s.into_std())
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
        {
            Ok(stream) => stream,
            Err(e) => {
                warn!(error = %e, "upgrade socket: accept failed");
                continue;
            }
        };
        match hand_over(stream, &handover).await {
            Ok(()) => {
                // The new process serves the socket from now on.
                drop(listener);
                if let Some((work, limit)) = &handover.finish {
                    let deadline = tokio::time::Instant::now() + *limit;
                    let left = work();
                    if left > 0 {
                        info!(left, "finishing what this process started before exiting");
                    }
                    while work() > 0 && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                info!("handed over to the new process: exiting");
                std::process::exit(0);
            }
            Err(why) => warn!(%why, "live upgrade failed: serving on"),
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Runs blocking socket I/O off the runtime's threads.
async fn blocking<T: Send + 'static>(
    stream: &mut Option<UnixStream>,
    f: impl FnOnce(&mut UnixStream) -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let mut s = stream
        .take()
        .ok_or_else(|| io::Error::other("stream gone"))?;
    let (s, result) = tokio::task::spawn_blocking(move || {
        let result = f(&mut s);
        (s, result)
    })
    .await
    .map_err(io::Error::other)?;
    *stream = Some(s);
    result
}

fn encode(message: &Message) -> io::Result<Vec<u8>> {
    serde_json::to_vec(message).map_err(io::Error::other)
}

async fn send(
    stream: &mut Option<UnixStream>,
    message: Message,
    fds: Vec<OwnedFd>,
) -> io::Result<()> {
    let body = encode(&message)?;
    blocking(stream, move |s| {
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        frames::send(s, &body, &borrowed)
    })
    .await
}

async fn recv(stream: &mut Option<UnixStream>) -> io::Result<Option<Message>> {
    let frame = blocking(stream, frames::recv).await?;
    match frame {
        None => Ok(None),
        Some((body, _fds)) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

/// One handoff (see the module docs). `Ok`: the new process serves.
async fn hand_over(stream: UnixStream, handover: &Handover) -> Result<(), String> {
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut stream = Some(stream);
    let hello = recv(&mut stream)
        .await
        .map_err(|e| format!("reading the hello: {e}"))?;
    let Some(Message::Hello { reads, pid }) = hello else {
        return Err(format!("expected a hello, got {hello:?}"));
    };
    info!(new_pid = pid, ?reads, "a new process asks to take over");
    let Some(version) = super::state::writes_for(&reads) else {
        let why = format!(
            "the new process reads state versions {reads:?}; this one writes {STATE_VERSION} or 2"
        );
        let _ = send(
            &mut stream,
            Message::Refused { why: why.clone() },
            Vec::new(),
        )
        .await;
        return Err(why);
    };
    crate::net::pause_accepting(true);
    let result = match &handover.gate {
        Some(gate) => transfer(&mut stream, handover, gate, version).await,
        None => transfer_listeners(&mut stream, handover, version).await,
    };
    if result.is_err() {
        if let Some(gate) = &handover.gate {
            gate.hand_off_rollback();
        }
        crate::net::pause_accepting(false);
    }
    result
}

/// A login node's handoff: the listeners only. Once the new process is
/// ready it accepts, and this one finishes its dialogues.
async fn transfer_listeners(
    stream: &mut Option<UnixStream>,
    handover: &Handover,
    version: u32,
) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let state = GateState {
        version,
        server: String::new(),
        now_ns: 0,
        next_subid: 0,
        next_conn: 0,
        users: Vec::new(),
        epoch: None,
        login_node: true,
    };
    send_all(stream, handover, state, Vec::new()).await?;
    let _ = send(stream, Message::Committed, Vec::new()).await;
    info!(
        took_ms = started.elapsed().as_millis() as u64,
        "live upgrade: handed over"
    );
    Ok(())
}

/// Steps 2 to 5 (accepting is paused).
async fn transfer(
    stream: &mut Option<UnixStream>,
    handover: &Handover,
    gate: &MsgGate,
    version: u32,
) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    gate.hand_off_request(version);
    if let Some(busy) = &handover.busy {
        let deadline = started + handover.grace;
        while busy() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "{} login dialogues or control calls still running after {:?}",
                    busy(),
                    handover.grace
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let Prepared {
        mut state,
        conns,
        mut forwarded,
    } = gate.hand_off_prepare(handover.grace).await?;
    state.epoch = handover.epoch;
    let (sessions, connections) = (state.users.len(), conns.len());
    if let Err(why) = send_all(stream, handover, state, conns).await {
        // Serve on: pushes and kicks passed on meanwhile are carried out
        // here after all.
        gate.hand_off_rollback();
        while let Ok(f) = forwarded.try_recv() {
            gate.apply_forwarded(&f);
        }
        return Err(why);
    }
    // From here on the new process serves: nothing may roll back. No push
    // or kick is passed on any more (refused: the session moved); those
    // that were go to the new process.
    gate.hand_off_commit();
    while let Some(Forwarded { uid, subid, what }) = forwarded.recv().await {
        let message = match what {
            Forward::Push(payload) => Message::Push {
                uid,
                subid,
                payload,
            },
            Forward::End(end) => Message::End { uid, subid, end },
        };
        if let Err(e) = send(stream, message, Vec::new()).await {
            warn!(error = %e, "a push or kick could not be passed on to the new process");
        }
    }
    let _ = send(stream, Message::Committed, Vec::new()).await;
    info!(
        sessions,
        connections,
        took_ms = started.elapsed().as_millis() as u64,
        "live upgrade: handed over"
    );
    Ok(())
}

/// Step 4 and the wait for `Ready`.
async fn send_all(
    stream: &mut Option<UnixStream>,
    handover: &Handover,
    state: GateState,
    conns: Vec<crate::players::handoff::ParkedConn>,
) -> Result<(), String> {
    let io = |e: io::Error| format!("sending to the new process: {e}");
    let mut names = Vec::new();
    let mut fds = Vec::new();
    for (name, fd) in &handover.listeners {
        names.push(name.clone());
        fds.push(fd.try_clone().map_err(io)?);
    }
    send(stream, Message::Listeners { names }, fds)
        .await
        .map_err(io)?;
    // Duplicates of one batch of sockets at a time (the parked connections
    // keep theirs until the verdict).
    let mut conns = conns;
    while !conns.is_empty() {
        let batch: Vec<_> = conns.drain(..conns.len().min(MAX_FDS)).collect();
        let mut fds = Vec::with_capacity(batch.len());
        for conn in &batch {
            fds.push(
                conn.lend()
                    .await
                    .ok_or("a parked connection could not lend its socket")?,
            );
        }
        let states = batch.into_iter().map(|c| c.state).collect();
        send(stream, Message::Conns { conns: states }, fds)
            .await
            .map_err(io)?;
    }
    send(stream, Message::State(Box::new(state)), Vec::new())
        .await
        .map_err(io)?;
    let answer = recv(stream)
        .await
        .map_err(|e| format!("waiting for the new process: {e}"))?;
    match answer {
        Some(Message::Ready) => {}
        Some(Message::Refused { why }) => return Err(format!("the new process refused: {why}")),
        None => return Err("the new process went away before it was ready".into()),
        Some(other) => return Err(format!("unexpected answer {other:?}")),
    }
    Ok(())
}
