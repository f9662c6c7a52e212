//! Connections handed over by an old process in a live upgrade (see
//! `players::handoff`): each goes straight into the driver's session loop
//! with what the old process had read and not served, and made and not
//! written.

use std::sync::Arc;

use bytes::BytesMut;
use gate_core::connection::Connection;
use tokio::net::TcpStream;

use super::core::GateCore;
use super::driver::{OpenConn, Slots, serve_bound};
use super::handle::ConnHandle;
use super::tcp::Tcp;
use super::transport::Transport;
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
