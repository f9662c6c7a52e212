//! The one connection driver: pumps a [`Connection`] machine and the
//! player's session over any [`Transport`] (TCP, WebSocket), on one task
//! per connection, from accept to close; a TCP connection with nothing to
//! do gives its task up while it rests (`players::rest`) and gets a new
//! one when it wakes.
//!
//! It is a thin pump: wait for input, the handle (wake-ups, close
//! requests, deadlines) or room to write; feed what arrived to the
//! machine; serve each input (the handshake, then requests); write; arm
//! the gate's one timer facility for the machine's next deadline. Every
//! decision (when to stop reading, when to close, with which code, what
//! to say first) is the machine's or the session's.

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use bytes::BytesMut;
use gate_core::connection::{CLOSE_LINGER, Connection, Input, Mapping};
use gate_core::{End, Time};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::core::GateCore;
use super::handle::{Asked, ConnHandle};
use super::metrics::{Metrics, bump};
use super::requests::PlayerConn;
use super::tcp::Tcp;
use super::tls_tcp::TlsTcp;
use super::transport::{Flow, Read, Transport};
use super::ws::Ws;
use super::ws_plain::WsPlain;
use crate::logging::esc;
use crate::net::SourceSlot;
use crate::net::web::{UpgradeError, WebPolicy};

/// The slots an accepted connection holds: its maxclient permit and its
/// place in its source address's count.
pub(super) type Slots = (OwnedSemaphorePermit, SourceSlot);

/// Runs one accepted TCP connection to its end.
pub(super) fn run_tcp(
    core: Arc<GateCore>,
    stream: TcpStream,
    addr: SocketAddr,
    slots: Slots,
) -> impl Future<Output = ()> + Send {
    drive(
        core,
        addr,
        slots,
        std::future::ready(Some(Tcp::new(stream))),
    )
}

/// Runs one accepted plain WebSocket connection to its end: the upgrade
/// within the handshake deadline, then as any connection, its frames the
/// gate's own ([`WsPlain`]).
///
/// A plain and a TLS WebSocket connection are separate tasks of separate
/// types (not one `Either`), so an idle plain one does not carry the room
/// the TLS stream needs.
pub(super) fn run_ws_plain(
    core: Arc<GateCore>,
    stream: TcpStream,
    addr: SocketAddr,
    slots: Slots,
    policy: Arc<WebPolicy>,
) -> impl Future<Output = ()> + Send {
    run_ws(core, stream, addr, slots, async move |stream| {
        let stream = policy.upgrade_plain(stream, addr).await?;
        Ok(WsPlain::new(
            stream,
            codec::package::MAX_PAYLOAD + codec::package::SEAL_TAG_LEN,
            policy.read_buffer(),
        ))
    })
}

/// Runs one accepted WebSocket connection over TLS to its end: TLS and the
/// upgrade within the handshake deadline, then as any connection, its
/// frames the WebSocket library's ([`Ws`]).
pub(super) fn run_ws_tls(
    core: Arc<GateCore>,
    stream: TcpStream,
    addr: SocketAddr,
    slots: Slots,
    policy: Arc<WebPolicy>,
) -> impl Future<Output = ()> + Send {
    run_ws(core, stream, addr, slots, async move |stream| {
        Ok(Ws::new(policy.upgrade(stream, addr).await?))
    })
}

/// A WebSocket connection: `upgrade` makes the transport (a failure is
/// counted and logged), then as any connection.
fn run_ws<T, F>(
    core: Arc<GateCore>,
    stream: TcpStream,
    addr: SocketAddr,
    slots: Slots,
    upgrade: impl FnOnce(TcpStream) -> F + Send + 'static,
) -> impl Future<Output = ()> + Send
where
    T: Transport + 'static,
    F: Future<Output = Result<T, UpgradeError>> + Send,
{
    let _ = stream.set_nodelay(true);
    let metrics = Arc::clone(&core.metrics);
    let opening = async move {
        match upgrade(stream).await {
            Ok(transport) => Some(transport),
            Err(e) => {
                upgrade_failed(&metrics, addr, &e);
                None
            }
        }
    };
    drive(core, addr, slots, opening)
}

/// Counts and logs a failed WebSocket upgrade.
fn upgrade_failed(metrics: &Metrics, addr: SocketAddr, e: &UpgradeError) {
    bump(match e {
        UpgradeError::Origin(_) => &metrics.ws_origin_refused,
        UpgradeError::Handshake(_) => &metrics.ws_upgrades_failed,
    });
    tracing::debug!(%addr, error = %e, "WebSocket upgrade failed");
}

/// Runs one connection accepted on the gate's TLS listener to its end: the
/// TLS handshake within the handshake deadline, then as any connection.
pub(super) fn run_tls(
    core: Arc<GateCore>,
    stream: TcpStream,
    addr: SocketAddr,
    slots: Slots,
    tls: crate::tls::ServerTls,
) -> impl Future<Output = ()> + Send {
    let opening = async move {
        match tls.accept(stream).await {
            Ok(stream) => Some(TlsTcp::new(stream)),
            Err(e) => {
                tracing::debug!(%addr, error = %esc(e.to_string().as_bytes()), "TLS handshake failed");
                None
            }
        }
    };
    drive(core, addr, slots, opening)
}

/// Counts the connection as open (and a WebSocket one as such) and holds
/// its slots; all released when the connection ends, however it ends (a
/// resting connection keeps it: see `players::rest`).
pub(super) struct OpenConn<T: Transport> {
    pub(super) core: Arc<GateCore>,
    _slots: Slots,
    _transport: PhantomData<fn() -> T>,
}

impl<T: Transport> OpenConn<T> {
    pub(super) fn new(core: Arc<GateCore>, slots: Slots) -> OpenConn<T> {
        core.metrics.connections.fetch_add(1, Ordering::Relaxed);
        if T::MAPPING == Mapping::Messages {
            core.metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
        }
        OpenConn {
            core,
            _slots: slots,
            _transport: PhantomData,
        }
    }
}

impl<T: Transport> Drop for OpenConn<T> {
    fn drop(&mut self) {
        let metrics = &self.core.metrics;
        metrics.connections.fetch_sub(1, Ordering::Relaxed);
        if T::MAPPING == Mapping::Messages {
            metrics.ws_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One connection from accept to close (see the module docs).
///
/// Every idle connection is one of these futures, so what it holds while
/// the session loop waits is kept small: the handshake phase (with the
/// opening and the address) and the close are boxed futures of their own.
fn drive<T: Transport + 'static>(
    core: Arc<GateCore>,
    addr: SocketAddr,
    slots: Slots,
    opening: impl Future<Output = Option<T>> + Send + 'static,
) -> impl Future<Output = ()> + Send {
    let open = OpenConn::<T>::new(core, slots);
    let handle = Arc::new(ConnHandle::new(open.core.next_conn_id()));
    let conn = Connection::new(
        open.core.timers.now(),
        T::MAPPING,
        open.core.conn_limits.load(),
    );
    let handshaking = Box::pin(super::opening::handshake(
        Arc::clone(&open.core),
        conn,
        Arc::clone(&handle),
        addr,
        opening,
    ));
    async move {
        let core = &open.core;
        let Some((mut opened, player)) = handshaking.await.map(|(opened, bound)| {
            let player = PlayerConn::new(core, &bound, handle);
            (opened, player)
        }) else {
            return;
        };
        let exit = {
            // Unbinds when the session loop ends, however it ends (even if
            // the agent panics inside it), unless the connection rests.
            let unbind = Unbind(&player);
            let Opened {
                transport,
                conn,
                pending,
            } = &mut opened;
            let exit = session(transport, conn, pending, &player, true).await;
            if exit == Exit::Rest {
                std::mem::forget(unbind);
            }
            exit
        };
        match exit {
            Exit::End(end) => Box::pin(finish(core, opened, &player, end)).await,
            Exit::Rest => {
                let (user, handle) = (Arc::clone(&player.user), Arc::clone(&player.handle));
                drop(player);
                T::rest(open, opened, user, handle);
            }
        }
    }
}

/// How the session loop ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Exit {
    /// The connection ends so.
    End(End),
    /// The connection rests (see `players::rest`): its task ends, the
    /// connection does not.
    Rest,
}

/// How the authenticated connection ended: counted, logged, closed.
pub(super) async fn finish<T: Transport>(
    core: &GateCore,
    opened: Opened<T>,
    player: &PlayerConn<'_>,
    end: End,
) {
    let Opened {
        mut transport,
        conn,
        mut pending,
    } = opened;
    if end == End::HandedOff {
        // The new process serves this socket: let go of it as it is.
        return;
    }
    core.metrics.connection_ended(&end);
    tracing::debug!(
        uid = %esc(&player.user.uid),
        subid = %esc(&player.user.subid),
        cause = end.label(),
        %end,
        "connection closed"
    );
    if end.graceful() {
        let mut conn = conn;
        match player.handle.farewell() {
            Some(farewell) => {
                let start = pending.len();
                pending.extend_from_slice(&farewell);
                // A channel that cannot seal any more says nothing.
                if conn.seal_from(&mut pending, start).is_err() {
                    pending.truncate(start);
                }
            }
            None => conn.farewell(&end, &mut pending),
        }
        close(core, &mut transport, pending, &end, Some(&player.handle)).await;
    } else {
        player.handle.set_finished();
        let _ = tokio::time::timeout(CLOSE_LINGER, transport.abort(&end)).await;
    }
}

/// What a successful handshake phase hands the session loop (with the
/// [`Bound`] session).
pub(super) struct Opened<T> {
    pub(super) transport: T,
    pub(super) conn: Connection,
    /// The greeting, if the transport could not write it at once.
    pub(super) pending: BytesMut,
}

/// The authenticated part of the connection; returns how it ends, or that
/// it rests (see `players::rest`). `fresh`: the handshake was just
/// answered, or the connection was just handed over (one with nothing to
/// do rests at once).
pub(super) async fn session<T: Transport>(
    transport: &mut T,
    conn: &mut Connection,
    pending: &mut BytesMut,
    player: &PlayerConn<'_>,
    fresh: bool,
) -> Exit {
    let core = player.core;
    let mut quiet = super::rest::Quiet::new::<T>(core, fresh);
    arm(player, conn, quiet.deadline());
    loop {
        // Waking up for the handle does not count against tokio's
        // cooperative budget: spend one unit per round so a busy
        // connection cannot starve the others.
        tokio::task::consume_budget().await;
        // Boxed: a rare step, kept out of every idle connection's future.
        if core.handoff.is_requested()
            && let Some(end) = Box::pin(hand_off(transport, conn, pending, player)).await
        {
            return Exit::End(end);
        }
        if conn.reading() && transport.has_buffered() {
            match read(transport, conn, pending, player) {
                Ok(Read::Data) => {
                    if quiet.busy(core) {
                        arm(player, conn, quiet.deadline());
                    }
                }
                Ok(_) => {}
                Err(end) => return Exit::End(end),
            }
        }
        if let Err(end) = transport.flush(pending) {
            return Exit::End(end);
        }
        let inflight = if conn.reading() { 0 } else { player.inflight() };
        if let Some(end) = conn.check(pending.len() + transport.queued(), inflight) {
            return Exit::End(end);
        }
        // Looked at only once quiet long enough (rare).
        let rest = quiet.due() && super::rest::may_rest(transport, conn, pending, player);
        // A hand-written wait instead of `select!`: no waiter or
        // sub-future is stored in the task, which keeps every idle
        // connection small.
        let reading = conn.reading();
        let (transport_, pending_) = (&mut *transport, &mut *pending);
        // `move`: the two flags are kept by value, not by reference.
        let event = std::future::poll_fn(move |cx| {
            let (transport, pending) = (&mut *transport_, &mut *pending_);
            if player.handle.poll_woken(cx).is_ready() {
                return Poll::Ready(Ok(Event::Woken));
            }
            if transport.wants_write(pending)
                && let Err(end) = transport.poll_write(cx, pending)
            {
                return Poll::Ready(Err(end));
            }
            if reading && let Poll::Ready(ready) = transport.poll_input(cx) {
                return Poll::Ready(ready.map(|()| Event::Input));
            }
            if rest {
                return Poll::Ready(Ok(Event::Rest));
            }
            Poll::Pending
        })
        .await;
        match event {
            Err(end) => return Exit::End(end),
            Ok(Event::Rest) => return Exit::Rest,
            Ok(Event::Woken) => {
                match player.handle.asked() {
                    Asked::Close(end) => return Exit::End(end),
                    Asked::Drain => {
                        if let Some(end) = conn.drain() {
                            return Exit::End(end);
                        }
                    }
                    Asked::Nothing => {}
                }
                // The quiet first: a deadline armed below must not be a
                // look that is already due.
                let mut rearm = quiet.look(core);
                if conn.poll_timeout().is_some() {
                    if let Some(end) = conn.handle_timeout(core.timers.now()) {
                        return Exit::End(end);
                    }
                    rearm = true;
                }
                let before = pending.len();
                if let Err(end) = take_outbox(player, conn, pending) {
                    return Exit::End(end);
                }
                if pending.len() > before {
                    rearm |= quiet.busy(core);
                }
                // An entry of the timers fired for another deadline leaves
                // nothing armed.
                if rearm || !player.handle.armed() {
                    arm(player, conn, quiet.deadline());
                }
            }
            Ok(Event::Input) => match read(transport, conn, pending, player) {
                Ok(Read::Eof) => {
                    if let Some(end) = conn.input_ended(core.timers.now()) {
                        return Exit::End(end);
                    }
                    arm(player, conn, quiet.deadline());
                }
                Ok(Read::Data) => {
                    if quiet.busy(core) {
                        arm(player, conn, quiet.deadline());
                    }
                    if conn.tracks_input() {
                        conn.input_at(core.timers.now());
                    }
                }
                Ok(Read::Nothing) => {}
                Err(end) => return Exit::End(end),
            },
        }
    }
}

/// A live upgrade asks this connection to move (see `players::handoff`):
/// stop reading, let the requests in flight finish and their answers go
/// out, then park a TCP or plain WebSocket connection (a TLS one is
/// closed with 1012).
/// `None`: serve on (the upgrade was called off).
async fn hand_off<T: Transport>(
    transport: &mut T,
    conn: &mut Connection,
    pending: &mut BytesMut,
    player: &PlayerConn<'_>,
) -> Option<End> {
    let core = player.core;
    loop {
        if let Err(end) = take_outbox(player, conn, pending) {
            return Some(end);
        }
        if let Err(end) = transport.flush(pending) {
            return Some(end);
        }
        if player.inflight() == 0 {
            break;
        }
        if !core.handoff.is_requested() {
            return None;
        }
        if let Asked::Close(end) = player.handle.asked() {
            return Some(end);
        }
        // A completion wakes the handle; the upgrade's end is looked at
        // every few milliseconds.
        let woken = std::future::poll_fn(|cx| player.handle.poll_woken(cx));
        let _ = tokio::time::timeout(std::time::Duration::from_millis(20), woken).await;
    }
    // A sealed connection moves only to a process whose state format
    // carries its channel.
    let movable = !conn.sealed() || core.handoff.moves_sealed();
    let parked = match transport.as_movable().filter(|_| movable) {
        Some(moving) => {
            super::handoff::park(core, moving, conn, pending, &player.handle, &player.user).await
        }
        None => Some(End::Upgrade),
    };
    if parked.is_none() {
        // Whatever was asked meanwhile (a kick, a deadline) is looked at.
        player.handle.wake();
    }
    parked
}

/// What woke the session loop.
enum Event {
    /// The handle: a close request, a deadline, or the outbox.
    Woken,
    /// Input to read.
    Input,
    /// Nothing, and the connection may rest.
    Rest,
}

/// Reads and serves what arrived on an authenticated connection.
fn read<T: Transport>(
    transport: &mut T,
    conn: &mut Connection,
    pending: &mut BytesMut,
    player: &PlayerConn<'_>,
) -> Result<Read, End> {
    // One clock read for the whole batch, if a request needs the time.
    crate::clock::batch(|| {
        transport.read(conn, pending, |conn, input, out| match input {
            Input::Request(request) => {
                let start = out.len();
                player.request(request, out)?;
                conn.seal_from(out, start)?;
                Ok(Flow::More)
            }
            // The machine gives a handshake only before `accepted`.
            Input::Handshake(_) => Ok(Flow::More),
        })
    })
}

/// Moves what other tasks queued for the connection (late answers,
/// pushes) into `pending`, sealed if the connection is.
fn take_outbox(
    player: &PlayerConn<'_>,
    conn: &mut Connection,
    pending: &mut BytesMut,
) -> Result<(), End> {
    let start = pending.len();
    player.take_outbox(pending);
    conn.seal_from(pending, start)
}

/// Arms the gate's timers for the connection's next deadline, or for the
/// next look at its quiet (`quiet`) if that is earlier.
fn arm(player: &PlayerConn<'_>, conn: &Connection, quiet: Option<Time>) {
    let deadline = match (conn.poll_timeout(), quiet) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(deadline) = deadline {
        player.core.arm_conn(&player.handle, deadline);
    }
}

/// Closes gracefully (see [`Transport::close`]) within [`CLOSE_LINGER`],
/// or at once when the shutdown grace is over; then tells `handle`, if
/// any, that the connection is closed (a kick waits for that).
pub(super) async fn close<T: Transport>(
    core: &GateCore,
    transport: &mut T,
    pending: BytesMut,
    end: &End,
    handle: Option<&Arc<ConnHandle>>,
) {
    let closed = || {
        if let Some(handle) = handle {
            handle.set_finished();
        }
    };
    let closing = transport.close(pending, end.close_code(), closed, core.draining.cancelled());
    tokio::select! {
        _ = tokio::time::timeout(CLOSE_LINGER, closing) => {}
        () = core.hard.cancelled() => {}
    }
    if let Some(handle) = handle {
        handle.set_finished();
    }
}

/// After the session loop: if the session is still bound to this
/// connection, the user is now away (skynet's `disconnect_handler`) and
/// its reconnect window starts. A connection that was superseded or whose
/// session ended changes nothing, so its late close can never touch a
/// newer connection or session.
pub(super) struct Unbind<'a, 'b>(pub(super) &'a PlayerConn<'b>);

impl Drop for Unbind<'_, '_> {
    fn drop(&mut self) {
        // No call into the agent while unwinding from its panic.
        let notify = !std::thread::panicking();
        let player = self.0;
        player
            .core
            .connection_gone(&player.user, player.handle.id, notify);
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::agent::EchoAgent;
    use crate::config::GateConfig;
    use crate::login::placement::LoginLink;

    struct NoLogin;

    impl LoginLink for NoLogin {
        fn session_ended(&self, _: &[u8], _: &[u8], _: &[u8], _: &End) {}
    }

    /// Every idle connection is one of these futures: keep it small (the
    /// budget is 4 KB of user-space memory per idle session, all in; the
    /// sealed channel's pointer took it from 400 to 408 bytes).
    #[tokio::test]
    async fn connection_task_is_small() {
        let core = Arc::new(GateCore::new(
            GateConfig::default(),
            Arc::new(EchoAgent),
            Arc::new(NoLogin),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let source = crate::net::PerSource::new(1).enter(peer.ip()).unwrap();
        let task = run_tcp(core, stream, peer, (permit, source));
        let size = std::mem::size_of_val(&task);
        println!(
            "connection task future: {size} bytes; ConnHandle {} Connection {} Tcp {} PlayerConn {} OpenConn {} End {}",
            std::mem::size_of::<ConnHandle>(),
            std::mem::size_of::<Connection>(),
            std::mem::size_of::<Tcp>(),
            std::mem::size_of::<PlayerConn<'_>>(),
            std::mem::size_of::<OpenConn<Tcp>>(),
            std::mem::size_of::<End>(),
        );
        assert!(size <= 408, "connection task future is {size} bytes");
        drop(client);
    }
}
