//! Connections that have their session already: those handed over by an
//! old process in a live upgrade (see `players::handoff`), each straight
//! into the driver's session loop with what the old process had read and
//! not served, and made and not written; and those waking from rest (see
//! `players::rest`), through the same [`serve_bound`].

use std::sync::Arc;

use bytes::BytesMut;
use gate_core::connection::Connection;
use tokio::net::TcpStream;

use super::core::Bound;
use super::core::GateCore;
use super::driver::{Exit, OpenConn, Opened, Slots, Unbind, finish, session};
use super::handle::ConnHandle;
use super::requests::PlayerConn;
use super::tcp::Tcp;
use super::transport::Transport;
use super::user::User;
use super::ws_plain::WsPlain;

/// Runs a connection handed over by an old process (see
/// `players::handoff`): straight into the session loop, with what the old
/// process had read and not served, and made and not written.
pub(super) fn spawn_restored(
    core: &Arc<GateCore>,
    fd: std::os::fd::OwnedFd,
    state: crate::upgrade::state::ConnState,
    user: &Arc<super::user::User>,
    handle: Arc<ConnHandle>,
) -> std::io::Result<()> {
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    let stream = TcpStream::from_std(std)?;
    let addr = stream.peer_addr()?;
    let permit = Arc::clone(&core.permits)
        .try_acquire_owned()
        .map_err(|_| std::io::Error::other("maxclient reached"))?;
    let source = core
        .per_source
        .enter(addr.ip())
        .map_err(|refused| std::io::Error::other(refused.label()))?;
    let slots = (permit, source);
    let crate::upgrade::state::ConnState {
        machine,
        unread,
        unwritten,
        websocket,
        ..
    } = state;
    let conn = machine.with_limits(core.conn_limits.load());
    let pending = BytesMut::from(&unwritten[..]);
    match websocket {
        None => {
            let transport = Tcp::restored(stream, &unread);
            resume(core, slots, transport, conn, pending, user, handle);
        }
        Some(ws) => {
            let transport = WsPlain::restored(stream, &unread, ws);
            resume(core, slots, transport, conn, pending, user, handle);
        }
    }
    Ok(())
}

/// Spawns the session loop of a restored connection.
fn resume<T: Transport + 'static>(
    core: &Arc<GateCore>,
    slots: Slots,
    transport: T,
    conn: Connection,
    pending: BytesMut,
    user: &Arc<super::user::User>,
    handle: Arc<ConnHandle>,
) {
    let open = OpenConn::<T>::new(Arc::clone(core), slots);
    let user = Arc::clone(user);
    core.tracker.spawn(async move {
        // Until the old process has let go, it may resume this connection.
        open.core.handoff.released().await;
        serve_bound(open, transport, conn, pending, (user, handle), true).await;
    });
}

/// The session loop of a connection that has its session already (one
/// handed over by a live upgrade, or waking from rest), to its end.
/// `fresh`: it may rest at once if it has nothing to do (one handed over:
/// most sessions of a game are idle).
pub(super) async fn serve_bound<T: Transport>(
    open: OpenConn<T>,
    transport: T,
    conn: Connection,
    pending: BytesMut,
    (user, handle): (Arc<User>, Arc<ConnHandle>),
    fresh: bool,
) {
    let bound = Bound {
        ext: conn.opted_in(),
        user,
        // A sealed connection's channel is in its machine.
        seal: None,
        greeting: BytesMut::new(),
    };
    let core = &open.core;
    let player = PlayerConn::new(core, &bound, handle);
    drop(bound);
    // What was queued for it meanwhile (a push, a late answer) woke
    // nobody if its outbox was not empty already (a connection is woken
    // when its outbox fills), and what woke it from rest is looked at.
    player.handle.wake();
    // The same steps as at the end of `drive`, which keeps them inline:
    // shared as an async fn they would make every idle connection's future
    // larger.
    let mut opened = Opened {
        transport,
        conn,
        pending,
    };
    let exit = {
        let unbind = Unbind(&player);
        let Opened {
            transport,
            conn,
            pending,
        } = &mut opened;
        let exit = session(transport, conn, pending, &player, fresh).await;
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
