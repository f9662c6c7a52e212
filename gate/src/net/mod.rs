//! Listening sockets (the login, gate, backend, control and operations
//! listeners), all set up the same way, and the one accept loop they all
//! run, with one policy for capacity and for accept errors.
//!
//! [`web`] serves WebSocket clients on top of these sockets.

pub mod budget;
pub mod capacity;
mod source;
pub mod tap;
pub mod web;

pub use capacity::Capacity;
pub use source::{PerSource, Prefixes, Refused, SourceSlot};

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Pause after an accept error that means "out of resources" (too many
/// open files, no buffer space), so the loop does not spin while it lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What [`accept_loop`] does when every permit is taken.
#[derive(Clone)]
pub enum AtCapacity {
    /// Wait for a permit before accepting: further clients wait in the
    /// kernel's accept queue (a crowd queues, nobody is refused).
    Wait,
    /// Accept and hand the connection over without a permit (the gate
    /// closes it at once: `maxclient` is exact).
    Close,
    /// Accept, then ask this to free a permit (the login server evicts a
    /// silent dialogue; `false`: nothing to evict) and wait for one; a
    /// newcomer is never refused, and idle sockets cannot keep it out.
    Evict(Arc<dyn Fn() -> bool + Send + Sync>),
}

impl std::fmt::Debug for AtCapacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AtCapacity::Wait => "Wait",
            AtCapacity::Close => "Close",
            AtCapacity::Evict(_) => "Evict",
        })
    }
}

/// Whether every accept loop of the process is paused (a live upgrade
/// hands the listeners over: connections wait in the kernel's backlog
/// meanwhile, refused by nobody).
static PAUSED: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(false));

/// Pauses (`true`) or resumes every [`accept_loop`] of the process.
pub fn pause_accepting(paused: bool) {
    PAUSED.send_replace(paused);
}

/// How long a connection accepted at capacity waits for the slot an
/// eviction frees before the loop asks again.
const EVICT_WAIT: Duration = Duration::from_millis(100);

/// Accepts connections on `listener` until `stop` resolves, handing each to
/// `on_accept` with its permit (taken *before* `accept`, so it is released
/// however the connection ends). With [`AtCapacity::Close`] a connection
/// accepted while every permit is taken comes with `None`; with
/// [`AtCapacity::Evict`] it waits for a slot to be freed.
///
/// While [`pause_accepting`] holds, nothing is accepted.
///
/// Accept errors are logged; those that mean "out of resources" pause the
/// loop for a moment; others (a client that reset before it was accepted)
/// concern one connection only. `stop` is checked first, so a flood of
/// connections cannot delay shutdown. The listener is closed on return.
pub async fn accept_loop(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    at_capacity: AtCapacity,
    stop: impl Future<Output = ()>,
    what: &'static str,
    mut on_accept: impl FnMut(TcpStream, SocketAddr, Option<OwnedSemaphorePermit>),
) {
    tokio::pin!(stop);
    let mut paused = PAUSED.subscribe();
    loop {
        if *paused.borrow_and_update() {
            tokio::select! {
                biased;
                () = &mut stop => break,
                _ = paused.wait_for(|p| !p) => continue,
            }
        }
        let mut permit = match &at_capacity {
            AtCapacity::Wait => tokio::select! {
                biased;
                () = &mut stop => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => Some(permit),
                    Err(_) => break,
                },
            },
            AtCapacity::Close | AtCapacity::Evict(_) => {
                Arc::clone(&permits).try_acquire_owned().ok()
            }
        };
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            _ = paused.changed() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                if is_resource_error(&e) {
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        () = &mut stop => break,
                    }
                }
                continue;
            }
        };
        if permit.is_none() {
            // A connection may have closed while we waited in accept.
            permit = Arc::clone(&permits).try_acquire_owned().ok();
        }
        if let (None, AtCapacity::Evict(evict)) = (&permit, &at_capacity) {
            // Free a slot for this one, and wait for it (one accepted
            // connection waits here at most: the loop accepts no other).
            while permit.is_none() {
                let wait = if evict() { EVICT_WAIT } else { ACCEPT_BACKOFF };
                tokio::select! {
                    biased;
                    () = &mut stop => return,
                    acquired = tokio::time::timeout(wait, Arc::clone(&permits).acquire_owned()) => {
                        match acquired {
                            Ok(Ok(acquired)) => permit = Some(acquired),
                            Ok(Err(_)) => return,
                            Err(_) => {}
                        }
                    }
                }
            }
        }
        on_accept(stream, addr, permit);
    }
}

/// Refusals at accept, logged as a summary at most once per interval per
/// listener instead of one line each: a flood must not turn into a flood
/// of log lines (the counts are in the metrics as they happen).
#[derive(Debug)]
pub struct RefusalLog {
    what: &'static str,
    every: Duration,
    state: std::sync::Mutex<RefusalCounts>,
}

#[derive(Debug)]
struct RefusalCounts {
    since: Option<tokio::time::Instant>,
    counts: Vec<(&'static str, u64)>,
}

impl RefusalLog {
    /// A summary for listener `what`, at most one line per `every`.
    pub fn new(what: &'static str, every: Duration) -> RefusalLog {
        RefusalLog {
            what,
            every,
            state: std::sync::Mutex::new(RefusalCounts {
                since: None,
                counts: Vec::new(),
            }),
        }
    }

    /// Notes a connection refused for `cause`; writes a summary line when
    /// the last one is at least the interval old.
    pub fn refused(&self, cause: &'static str) {
        let now = tokio::time::Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match state.counts.iter_mut().find(|(c, _)| *c == cause) {
            Some((_, n)) => *n += 1,
            None => state.counts.push((cause, 1)),
        }
        let due = state
            .since
            .is_none_or(|since| now.duration_since(since) >= self.every);
        if due {
            // The first refusal after a quiet interval is told at once; the
            // rest of an interval in one line with the next refusal after
            // it (the metrics count every one as it happens).
            let summary: Vec<String> = state
                .counts
                .iter()
                .map(|(cause, n)| format!("{cause}={n}"))
                .collect();
            tracing::warn!(
                listener = self.what,
                refused = %summary.join(","),
                "connections refused at accept (per cause, since the last such line)"
            );
            state.counts.clear();
            state.since = Some(now);
        }
    }
}

/// Accept errors that mean "out of resources, try again later" (ENOMEM,
/// ENFILE, EMFILE, ENOBUFS have no stable `ErrorKind`).
fn is_resource_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(12 | 23 | 24 | 105))
}

/// Accept queue length of [`listen`]. A load generator or a crowd of
/// players reconnecting after a restart opens hundreds of connections at
/// once; with the usual 128, the connections that do not fit wait for a
/// SYN retransmission (about a second) before they are even accepted. The
/// kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with `SO_REUSEADDR` (a restarted server
/// binds again while old connections linger in TIME_WAIT), `TCP_NODELAY`
/// (on Linux, accepted sockets inherit it, which spares a system call per
/// connection) and an accept queue of `backlog`.
///
/// Must be called from within a tokio runtime.
pub fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), LISTEN_BACKLOG).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        if cfg!(target_os = "linux") {
            assert!(server.nodelay().unwrap());
        }
        server.write_all(b"hi").await.unwrap();
        let mut got = [0; 2];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
    }

    #[tokio::test]
    async fn rebinding_a_port_in_time_wait_works() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // The server closes first: its side goes to TIME_WAIT.
        drop(server);
        drop(client);
        drop(listener);
        listen(addr, 16).unwrap();
    }
}
