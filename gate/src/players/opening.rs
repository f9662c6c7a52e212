//! The handshake phase of a connection, before its session: the
//! transport's opening (a WebSocket upgrade, TLS) and the first package
//! within the machine's deadline, then the greeting (sealed after its
//! `200 OK` on a sealed connection), or the refusal and the close.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use gate_core::End;
use gate_core::connection::{CLOSE_LINGER, Connection, Input};

use super::core::{Bound, GateCore};
use super::driver::{Opened, close};
use super::handle::ConnHandle;
use super::metrics::{RefusedStatus, bump};
use super::transport::{Flow, Read, Transport};
use crate::logging::esc;

/// The handshake phase: the transport's opening (a WebSocket upgrade) and
/// the first package, within the machine's deadline. Refused, the status
/// is sent and the connection closed here (`None`); accepted, the greeting
/// (`200 OK`, the welcome, the replay) is written or queued first.
pub(super) async fn handshake<T: Transport>(
    core: Arc<GateCore>,
    mut conn: Connection,
    handle: Arc<ConnHandle>,
    addr: SocketAddr,
    opening: impl Future<Output = Option<T>>,
) -> Option<(Opened<T>, Bound)> {
    let (core, handle) = (&core, &handle);
    let mut pending = BytesMut::new();
    let deadline = core.timers.instant(conn.poll_timeout()?);
    let opened = tokio::select! {
        biased;
        () = core.draining.cancelled() => return None,
        opened = tokio::time::timeout_at(deadline, opening) => opened,
    };
    let mut transport = match opened {
        Ok(Some(transport)) => transport,
        Ok(None) => return None,
        Err(_) => {
            let end = End::HandshakeTimeout;
            core.metrics.connection_ended(&end);
            tracing::debug!(%addr, %end, "connection closed");
            return None;
        }
    };
    let mut bound = None;
    let result = loop {
        let ready = tokio::select! {
            biased;
            () = core.draining.cancelled() => Err(conn.drain().unwrap_or(End::Shutdown)),
            () = tokio::time::sleep_until(deadline) => {
                Err(conn.handle_timeout(core.timers.now()).unwrap_or(End::HandshakeTimeout))
            }
            ready = std::future::poll_fn(|cx| transport.poll_input(cx)) => ready,
        };
        if let Err(end) = ready {
            break Err(end);
        }
        let read = transport.read(&mut conn, &mut pending, |conn, input, out| match input {
            Input::Handshake(payload) => match checked_handshake(core, &payload, addr, handle) {
                Ok(mut accepted) => {
                    // `200 OK`, then the welcome and the pushes the
                    // client has not seen, before any answer. A sealed
                    // connection's `200 OK` goes in the clear; the rest
                    // is sealed below, once the transport knows.
                    let seal = accepted.seal.take();
                    let status = if seal.is_some() {
                        gate_core::wire::first_package_len(&accepted.greeting)
                    } else {
                        accepted.greeting.len()
                    };
                    out.extend_from_slice(&accepted.greeting.split_to(status));
                    conn.accepted(core.timers.now(), accepted.ext, seal);
                    bound = Some(accepted);
                    Ok(Flow::Pause)
                }
                Err(status) => Err(conn.refuse(status, out)),
            },
            // The machine gives requests only after `accepted`.
            Input::Request(_) => Ok(Flow::Pause),
        });
        match read {
            Ok(Read::Eof) => {
                break Err(conn
                    .input_ended(core.timers.now())
                    .unwrap_or(End::PeerClosed));
            }
            Ok(_) if bound.is_some() => break Ok(()),
            Ok(_) => {}
            Err(end) => break Err(end),
        }
    };
    let end = match (result, bound) {
        (Ok(()), Some(mut bound)) => {
            // A sealed connection's greeting after its `200 OK`, sealed.
            let sealed = if conn.sealed() {
                transport.begin_sealed(&mut pending);
                let start = pending.len();
                pending.extend_from_slice(&bound.greeting);
                bound.greeting.clear();
                conn.seal_from(&mut pending, start)
                    .map(|()| bump(&core.metrics.sealed_handshakes))
            } else {
                Ok(())
            };
            match sealed {
                Ok(()) => {
                    return Some((
                        Opened {
                            transport,
                            conn,
                            pending,
                        },
                        bound,
                    ));
                }
                Err(end) => end,
            }
        }
        (Err(end), _) => end,
        // The loop ends well only once bound.
        (Ok(()), None) => End::PeerClosed,
    };
    core.metrics.connection_ended(&end);
    tracing::debug!(%addr, cause = end.label(), %end, "connection closed before its session");
    if end.graceful() {
        close(core, &mut transport, pending, &end, None).await;
    } else {
        let _ = tokio::time::timeout(CLOSE_LINGER, transport.abort(&end)).await;
    }
    None
}

/// Checks a handshake package, counts and logs the outcome. Refused: the
/// status to send, if any.
fn checked_handshake(
    core: &Arc<GateCore>,
    payload: &Bytes,
    addr: SocketAddr,
    handle: &Arc<ConnHandle>,
) -> Result<Bound, Option<codec::status::GateStatus>> {
    match core.handshake(payload, addr, handle) {
        Ok(bound) => {
            bump(&core.metrics.handshakes_ok);
            tracing::debug!(
                %addr,
                uid = %esc(&bound.user.uid),
                subid = %esc(&bound.user.subid),
                opted_in = bound.ext,
                conn = handle.id,
                "handshake ok"
            );
            Ok(bound)
        }
        Err(refusal) => {
            bump(&core.metrics.handshakes_refused);
            bump(&core.metrics.refused_by[RefusedStatus::of(refusal.status()) as usize]);
            tracing::debug!(
                %addr,
                status = refusal.status().map(|s| s.code()),
                reason = %refusal,
                "handshake refused"
            );
            Err(refusal.status())
        }
    }
}
