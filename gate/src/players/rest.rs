//! Resting connections: an authenticated plain TCP or WebSocket (`ws://`)
//! connection with nothing to do gives up its task and its place in the
//! runtime's poller, and waits as plain data (its socket, its machine, its
//! user and handle: about 160 bytes) until the client sends something or
//! the gate has something for it.
//!
//! An idle connection costs its task (about 510 bytes with tokio's
//! header) and its socket's registration with the runtime (256 bytes,
//! cache-line aligned) on top of its session. Most players of a game sit
//! idle most of the time (a lobby, a menu, a client left open), so at rest
//! a connection holds neither:
//!
//! - its socket waits in the gate's own epoll set, one-shot, for input
//!   (or a hang-up); the set itself is one descriptor registered with the
//!   runtime, watched by one task ([`watch`]);
//! - its [`ConnHandle`] wakes it as it wakes a running connection (a push,
//!   a late answer, a kick, a deadline of the gate's timers, a drain, a
//!   live upgrade): the handle's waker is the resting connection itself.
//!
//! Whichever comes first takes the connection out of the set and spawns
//! its task again, straight into the session loop, as a connection handed
//! over by a live upgrade resumes. A connection rests:
//!
//! - at once after its handshake if the client sent nothing behind it (a
//!   client that logs in and waits costs no task from the start);
//! - later, at the first look at its quiet (every `gate.rest_after`, in
//!   whole seconds of the gate's clock) that finds nothing read from the
//!   client or written to it since the look before: between once and
//!   about twice `rest_after` after its last traffic. A connection woken
//!   from rest stays up at least that long, so a player who sends every
//!   few seconds is not put to rest and woken at every message.
//!
//! Only what can be set down whole rests: a plain connection with
//! nothing buffered either way, no request of its user running, and no
//! upgrade under way (a WebSocket connection also keeps its frame reader
//! and counters, as a live upgrade moves them). TLS connections stay
//! tasks.

use std::net::TcpStream as StdTcpStream;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use bytes::BytesMut;
use gate_core::connection::Connection;
use gate_core::session::ConnId;
use gate_core::{End, Time};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::core::GateCore;
use super::driver::OpenConn;
use super::handle::ConnHandle;
use super::metrics::bump;
use super::requests::PlayerConn;
use super::restored::serve_bound;
use super::tcp::Tcp;
use super::transport::Transport;
use super::user::User;
use super::ws_plain::{WsPlain, WsState};
use crate::shard::ShardedMap;

/// The gate's resting connections (see the module docs).
#[derive(Debug)]
pub(crate) struct Rest {
    /// `gate.rest_after`; zero: connections never rest.
    after: Duration,
    /// The epoll set the resting sockets wait in (`None`: this platform or
    /// process has none, and connections never rest).
    set: Option<std::os::fd::OwnedFd>,
    /// The runtime resting connections wake up on, once [`watch`] runs.
    runtime: OnceLock<tokio::runtime::Handle>,
    /// [`watch`] runs: input on a resting connection's socket is noticed.
    watched: AtomicBool,
    /// Resting connections by id (the key their socket waits under).
    sleepers: ShardedMap<ConnId, Arc<Sleeper>>,
}

impl Rest {
    /// Resting after `after` of quiet (zero: never).
    pub(crate) fn new(after: Duration) -> Rest {
        let set = if after.is_zero() {
            None
        } else {
            epoll::create()
        };
        Rest {
            after,
            set,
            runtime: OnceLock::new(),
            watched: AtomicBool::new(false),
            sleepers: ShardedMap::new(),
        }
    }

    /// How long a connection stays up with nothing read or written before
    /// it rests; `None` while connections cannot rest (turned off, or
    /// nobody watches the set).
    pub(crate) fn after(&self) -> Option<Duration> {
        (self.set.is_some() && self.watched.load(Ordering::Acquire)).then_some(self.after)
    }
}

/// A resting connection: what its task held, until it wakes.
struct Sleeper {
    id: ConnId,
    asleep: Mutex<Option<Asleep>>,
    /// [`LAYING`], [`ASLEEP`] or [`WOKEN`].
    state: AtomicU8,
}

impl std::fmt::Debug for Sleeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleeper").field("id", &self.id).finish()
    }
}

struct Asleep {
    open: Kept,
    stream: StdTcpStream,
    conn: Connection,
    user: Arc<User>,
    handle: Arc<ConnHandle>,
    /// Counts as a task of the gate's while it rests, so a shutdown waits
    /// for it as for any connection.
    _task: TaskTrackerToken,
}

/// What a resting connection keeps of its transport besides its socket:
/// its slots and count (typed by transport), and a WebSocket's state.
pub(super) enum Kept {
    /// A TCP connection.
    Tcp(OpenConn<Tcp>),
    /// A plain WebSocket connection (its frame reader and counters).
    Ws(OpenConn<WsPlain>, Box<WsState>),
}

impl Kept {
    fn core(&self) -> &Arc<GateCore> {
        match self {
            Kept::Tcp(open) => &open.core,
            Kept::Ws(open, _) => &open.core,
        }
    }
}

/// Puts a connection to rest: its task is ending, and hands over the
/// socket, the machine and what binds it to its user. Nothing may be
/// buffered either way (see the module docs).
pub(super) fn lay_down(
    open: Kept,
    stream: TcpStream,
    conn: Connection,
    user: Arc<User>,
    handle: Arc<ConnHandle>,
) {
    let core = Arc::clone(open.core());
    let rest = &core.rest;
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(e) => {
            // The runtime would not let go of the socket: it is lost.
            tracing::warn!(error = %e, "a connection could not rest: closed");
            core.metrics.connection_ended(&End::from(e.kind()));
            core.connection_gone(&user, handle.id, true);
            handle.set_finished();
            return;
        }
    };
    let (Some(set), Some(_)) = (rest.set.as_ref(), rest.after()) else {
        // The driver asks only while connections can rest; should they no
        // longer, the connection goes on as a task.
        let runtime = tokio::runtime::Handle::current();
        wake_up(open, stream, conn, (user, handle), None, &runtime);
        return;
    };
    // Only its own deadline wakes it (not what the task had armed for
    // its handshake or its quiet).
    core.rearm_conn(&handle, conn.poll_timeout());
    let id = handle.id;
    let sleeper = Arc::new(Sleeper {
        id,
        asleep: Mutex::new(Some(Asleep {
            open,
            stream,
            conn,
            user,
            handle: Arc::clone(&handle),
            _task: core.tracker.token(),
        })),
        state: AtomicU8::new(LAYING),
    });
    // From here the handle wakes the sleeper; a wake since the task last
    // looked is seen here.
    let waker = Waker::from(Arc::clone(&sleeper));
    let mut up = handle
        .poll_woken(&mut Context::from_waker(&waker))
        .is_ready();
    if !up {
        rest.sleepers.insert(id, Arc::clone(&sleeper));
        core.metrics.resting.fetch_add(1, Ordering::Relaxed);
        // Input that came since the task last looked is reported at once:
        // the set is level-triggered.
        let added = match sleeper.lock().as_ref() {
            Some(asleep) => epoll::add(set, &asleep.stream, id),
            None => Ok(()),
        };
        if let Err(e) = added {
            tracing::warn!(error = %e, "a connection could not rest: stays up");
            up = true;
        } else if !rest.watched.load(Ordering::Acquire) {
            // The watcher stopped since this connection chose to rest: it
            // raised those it found filed, which may not have included
            // this one (filed after it looked, under the same shard lock,
            // so the flag it cleared first is seen here).
            up = true;
        }
    }
    // A wake while it was being laid down left it to this thread.
    let laid = sleeper
        .state
        .compare_exchange(LAYING, ASLEEP, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok();
    if up || !laid {
        sleeper.state.store(WOKEN, Ordering::SeqCst);
        sleeper.rise();
    }
}

/// [`Sleeper::state`]: being laid down (a wake leaves it to `lay_down`).
const LAYING: u8 = 0;
/// [`Sleeper::state`]: resting (the first wake raises it).
const ASLEEP: u8 = 1;
/// [`Sleeper::state`]: woken.
const WOKEN: u8 = 2;

impl Sleeper {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Asleep>> {
        self.asleep.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the connection out of the set and runs its task again.
    fn rise(&self) {
        let Some(asleep) = self.lock().take() else {
            return;
        };
        let core = Arc::clone(asleep.open.core());
        let rest = &core.rest;
        let filed = rest
            .sleepers
            .remove_if(&self.id, |s| std::ptr::eq(Arc::as_ptr(s), self));
        if filed.is_some() {
            if let Some(set) = rest.set.as_ref() {
                let _ = epoll::delete(set, &asleep.stream);
            }
            core.metrics.resting.fetch_sub(1, Ordering::Relaxed);
            bump(&core.metrics.rest_wakes);
        }
        // Set before anything rested, and never unset.
        let runtime = rest
            .runtime
            .get()
            .cloned()
            .unwrap_or_else(tokio::runtime::Handle::current);
        let Asleep {
            open,
            stream,
            conn,
            user,
            handle,
            _task,
        } = asleep;
        wake_up(open, stream, conn, (user, handle), Some(_task), &runtime);
    }
}

/// Runs the task of a connection that was resting (or was about to) again,
/// on `runtime`, straight into its session loop.
fn wake_up(
    open: Kept,
    stream: StdTcpStream,
    conn: Connection,
    (user, handle): (Arc<User>, Arc<ConnHandle>),
    task: Option<TaskTrackerToken>,
    runtime: &tokio::runtime::Handle,
) {
    let core = Arc::clone(open.core());
    // Registered with the runtime inside the new task, on its thread.
    core.tracker.spawn_on(
        async move {
            let _task = task;
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "a resting connection could not wake: closed");
                    open.core().metrics.connection_ended(&End::from(e.kind()));
                    open.core().connection_gone(&user, handle.id, true);
                    handle.set_finished();
                    return;
                }
            };
            let bound = (user, handle);
            match open {
                Kept::Tcp(open) => {
                    let transport = Tcp::awake(stream);
                    serve_bound(open, transport, conn, BytesMut::new(), bound, false).await;
                }
                Kept::Ws(open, state) => {
                    let transport = WsPlain::restored(stream, &[], *state);
                    serve_bound(open, transport, conn, BytesMut::new(), bound, false).await;
                }
            }
        },
        runtime,
    );
}

impl Wake for Sleeper {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// The first wake of a resting connection (its socket's or its
    /// handle's) raises it; one while it is being laid down leaves that to
    /// `lay_down`; later ones find it woken.
    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.swap(WOKEN, Ordering::SeqCst) == ASLEEP {
            self.rise();
        }
    }
}

/// Watches the set of resting connections until `stop`: wakes each whose
/// socket has input (or hung up). Connections may rest from the call on
/// (before the returned future first runs: a connection served before
/// then would otherwise never rest), on the runtime it is called on; the
/// future is to be spawned there. Where connections cannot rest it
/// returns at once.
pub(crate) fn watch(
    core: Arc<GateCore>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let armed = core.rest.set.is_some();
    if armed {
        let _ = core.rest.runtime.set(tokio::runtime::Handle::current());
        core.rest.watched.store(true, Ordering::Release);
    }
    // Dropped with the future, run or not: see `LetGo`.
    let unwatched = LetGo { core, armed };
    watch_from(unwatched, stop)
}

async fn watch_from(mut unwatched: LetGo, stop: CancellationToken) {
    if !unwatched.armed {
        return;
    }
    let core = Arc::clone(&unwatched.core);
    let set = core.rest.set.as_ref().and_then(|s| s.try_clone().ok());
    // The set's descriptor is the `AsyncFd`'s own for as long as it is
    // registered (closed only when it is dropped), which is all the
    // I/O safety this constructor's deprecation is about.
    #[allow(deprecated)]
    let set =
        set.map(|set| tokio::io::unix::AsyncFd::with_interest(set, tokio::io::Interest::READABLE));
    match set {
        Some(Ok(set)) => watch_set(&core, &set, stop).await,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "connections cannot rest: the rest set is not watched");
        }
        None => tracing::warn!("connections cannot rest: the rest set is not watched"),
    }
    unwatched.armed = false;
    // Nobody notices input on a resting socket any more: no connection
    // rests from now on, and those resting are raised.
    core.rest.watched.store(false, Ordering::Release);
    for sleeper in core.rest.sleepers.values() {
        sleeper.wake_by_ref();
    }
}

/// Lets go of every resting connection when the watcher is dropped before
/// it returns (or before it ever ran): its runtime shut down under a gate
/// nobody stopped. No task can be spawned any more, so the connections
/// are closed where they rest: their sockets close (their clients see the
/// end), and no gate is kept alive by its own resting connections (each
/// holds the gate, whose rest set holds it).
struct LetGo {
    core: Arc<GateCore>,
    armed: bool,
}

impl Drop for LetGo {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let rest = &self.core.rest;
        rest.watched.store(false, Ordering::Release);
        for sleeper in rest.sleepers.values() {
            // Raised by nobody from now on.
            sleeper.state.store(WOKEN, Ordering::SeqCst);
            rest.sleepers
                .remove_if(&sleeper.id, |s| Arc::ptr_eq(s, &sleeper));
            if let Some(asleep) = sleeper.lock().take() {
                self.core.metrics.resting.fetch_sub(1, Ordering::Relaxed);
                asleep.handle.set_finished();
                drop(asleep);
            }
        }
    }
}

/// Wakes each resting connection whose socket has input, until `stop` or
/// the set fails.
async fn watch_set(
    core: &GateCore,
    set: &tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    stop: CancellationToken,
) {
    let mut ready = Vec::with_capacity(epoll::BATCH);
    loop {
        let mut guard = tokio::select! {
            guard = set.readable() => match guard {
                Ok(guard) => guard,
                Err(e) => {
                    tracing::warn!(error = %e, "the rest set failed: connections stop resting");
                    return;
                }
            },
            () = stop.cancelled() => return,
        };
        // Drained until empty, then the readiness is cleared (by the tick
        // it was seen at: an event since then marks it anew).
        let drained = guard.try_io(|set| {
            loop {
                let n = epoll::ready(set.get_ref(), &mut ready)?;
                for id in ready.drain(..) {
                    if let Some(sleeper) = core.rest.sleepers.get(&id) {
                        sleeper.wake_by_ref();
                    }
                }
                if n < epoll::BATCH {
                    return Err::<(), _>(std::io::ErrorKind::WouldBlock.into());
                }
            }
        });
        if let Ok(Err(e)) = drained {
            tracing::warn!(error = %e, "the rest set failed: connections stop resting");
            return;
        }
    }
}

/// When the session loop lets its connection rest (see `players::rest`).
/// Eight bytes: every connection's task holds one.
pub(super) struct Quiet {
    /// When quiet is looked at next, in whole seconds of the gate's clock,
    /// rounded up (0: this connection never rests).
    check_at: u32,
    /// Something was read or written since the last look.
    busy: bool,
    /// Rest at the next wait with nothing to do.
    due: bool,
}

impl Quiet {
    pub(super) fn new<T: Transport>(core: &GateCore, fresh: bool) -> Quiet {
        let after = core.rest.after().filter(|_| T::RESTS);
        Quiet {
            check_at: after.map_or(0, |after| second_after(core.timers.now() + after)),
            busy: false,
            due: fresh && after.is_some(),
        }
    }

    /// When quiet is looked at next, as a deadline (`None`: never, or
    /// the connection rests as soon as it can).
    pub(super) fn deadline(&self) -> Option<Time> {
        (self.check_at != 0 && !self.due)
            .then(|| Time::from_epoch(std::time::Duration::from_secs(u64::from(self.check_at))))
    }

    /// Rest at the next wait with nothing to do.
    pub(super) fn due(&self) -> bool {
        self.due
    }

    /// Input came, or output went. Returns whether the next look at the
    /// quiet is to be armed (one was due: it starts over from now).
    pub(super) fn busy(&mut self, core: &GateCore) -> bool {
        self.busy = true;
        if !self.due {
            return false;
        }
        self.due = false;
        self.busy = false;
        let after = core.rest.after().unwrap_or_default();
        self.check_at = second_after(core.timers.now() + after);
        true
    }

    /// Looks at the quiet if it is time; returns whether the next look
    /// moved (to be armed).
    pub(super) fn look(&mut self, core: &GateCore) -> bool {
        let Some(at) = self.deadline() else {
            return false;
        };
        let now = core.timers.now();
        if now < at {
            return false;
        }
        if std::mem::take(&mut self.busy) {
            let after = core.rest.after().unwrap_or_default();
            self.check_at = second_after(now + after);
            true
        } else {
            self.due = true;
            false
        }
    }
}

/// `at` in whole seconds of the gate's clock, rounded up, at least 1.
fn second_after(at: Time) -> u32 {
    let since = at.since_epoch();
    let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

/// Whether the connection can be set down whole now: nothing buffered
/// either way, reading, no request of its user running, no upgrade under
/// way.
pub(super) fn may_rest<T: Transport>(
    transport: &T,
    conn: &Connection,
    pending: &BytesMut,
    player: &PlayerConn<'_>,
) -> bool {
    pending.is_empty()
        && transport.can_rest()
        && conn.reading()
        && !player.core.handoff.is_requested()
        && player.inflight() == 0
}

#[cfg(target_os = "linux")]
mod epoll {
    //! The few epoll calls the rest set needs.

    use std::io;
    use std::os::fd::{AsFd, OwnedFd};

    use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};

    /// Most events taken per call.
    pub(super) const BATCH: usize = 256;

    pub(super) fn create() -> Option<OwnedFd> {
        epoll::create(CreateFlags::CLOEXEC).ok()
    }

    /// Adds socket `fd` under `id`: reported once, when it has input or
    /// hangs up.
    pub(super) fn add(set: &OwnedFd, fd: impl AsFd, id: u64) -> io::Result<()> {
        epoll::add(
            set,
            fd,
            EventData::new_u64(id),
            EventFlags::IN | EventFlags::RDHUP | EventFlags::ONESHOT,
        )
        .map_err(io::Error::from)
    }

    pub(super) fn delete(set: &OwnedFd, fd: impl AsFd) -> io::Result<()> {
        epoll::delete(set, fd).map_err(io::Error::from)
    }

    /// The ids of up to [`BATCH`] sockets that are ready, without waiting;
    /// returns how many.
    pub(super) fn ready(set: &OwnedFd, ids: &mut Vec<u64>) -> io::Result<usize> {
        let mut events = Vec::with_capacity(BATCH);
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        epoll::wait(
            set,
            rustix::buffer::spare_capacity(&mut events),
            Some(&zero),
        )
        .map_err(io::Error::from)?;
        ids.extend(events.iter().map(|e| e.data.u64()));
        Ok(events.len())
    }
}

#[cfg(not(target_os = "linux"))]
mod epoll {
    //! No epoll here: connections never rest.

    use std::io;
    use std::os::fd::{AsFd, OwnedFd};

    pub(super) const BATCH: usize = 1;

    pub(super) fn create() -> Option<OwnedFd> {
        None
    }

    pub(super) fn add(_: &OwnedFd, _: impl AsFd, _: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(super) fn delete(_: &OwnedFd, _: impl AsFd) -> io::Result<()> {
        Ok(())
    }

    pub(super) fn ready(_: &OwnedFd, _: &mut Vec<u64>) -> io::Result<usize> {
        Ok(0)
    }
}

#[cfg(test)]
#[path = "rest_tests.rs"]
mod tests;
