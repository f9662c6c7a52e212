//! A gate node's control listener: login nodes dial it, prove the
//! cluster's link secret, then send `Place` and `Kick`
//! (`proto/control.proto`), which the node answers ([`GateNode`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use proto::control::{
    Challenge, ControlFrame, LoginFrame, Pong, Refused, Welcome, control_frame, login_frame,
};
use proto::framing::ControlCodec;
use proto::link_auth::{self, Proof};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, timeout_at};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::gate_node::GateNode;
use crate::backend::pending::{Cause, PendingLinks, PendingSlot, Refusals};
use crate::logging::esc;
use crate::net::{self, AtCapacity};
use crate::tls::{self, BoxIo};

/// Deadline for a login node's `Hello`.
const HELLO_DEADLINE: Duration = Duration::from_secs(5);
/// Most control calls running at once per link; the link is not read
/// further until one finishes.
const MAX_CALLS_PER_LINK: usize = 4096;
/// Frames queued for one link's writer.
const LINK_QUEUE: usize = 1024;
/// Accepts login nodes on `listener` until `stop`. A link holds a slot of
/// `pending` (taken before `accept`, bounded per source address) until it
/// proves the cluster secret, all within `HELLO_DEADLINE` (5s); refusals
/// before the proof are counted and summarised once a second, since
/// anyone who reaches the port can cause them.
pub async fn serve_control(
    node: Arc<GateNode>,
    listener: TcpListener,
    pending: PendingLinks,
    stop: CancellationToken,
) {
    let tasks = TaskTracker::new();
    let refusals = Arc::clone(pending.refusals());
    let accepting = net::accept_loop(
        listener,
        pending.budget(),
        AtCapacity::Close,
        stop.cancelled(),
        "control",
        |stream, peer, permit| match pending.admit(peer.ip(), permit) {
            Some(slot) => {
                let _ = stream.set_nodelay(true);
                super::login_node::keepalive(&stream);
                tasks.spawn(control_link(
                    Arc::clone(&node),
                    stream,
                    peer,
                    slot,
                    Arc::clone(&refusals),
                    stop.clone(),
                    tasks.clone(),
                ));
            }
            // Counted; the summary says it, not a line per refusal.
            None => drop(stream),
        },
    );
    tokio::select! {
        () = accepting => {}
        () = Arc::clone(&refusals).summarise(stop.clone()) => {}
    }
    tasks.close();
    tasks.wait().await;
    refusals.flush();
}

async fn control_link(
    node: Arc<GateNode>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: PendingSlot,
    refusals: Arc<Refusals>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    // One deadline for everything before the proof (TLS included).
    let deadline = Instant::now() + HELLO_DEADLINE;
    let io = match timeout_at(deadline, tls::accept(node.tls.as_ref(), stream)).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "control link: TLS handshake failed");
            return refusals.count(Cause::Tls);
        }
        Err(_) => return refusals.count(Cause::Deadline),
    };
    let mut framed = Framed::new(io, ControlCodec::new());
    let gate_nonce: [u8; link_auth::NONCE_LEN] = rand::random();
    let challenge = ControlFrame {
        kind: Some(control_frame::Kind::Challenge(Challenge {
            gate_nonce: Bytes::copy_from_slice(&gate_nonce),
            server: node.gate.name().to_owned(),
            epoch: node.epoch,
        })),
    };
    if framed.send(challenge).await.is_err() {
        return refusals.count(Cause::Unauthenticated);
    }
    let hello = match timeout_at(deadline, framed.next()).await {
        Ok(Some(Ok(LoginFrame {
            kind: Some(login_frame::Kind::Hello(hello)),
        }))) => hello,
        Ok(Some(Ok(_))) => {
            refusals.count(Cause::Unauthenticated);
            return refuse_link(framed, "the first frame must be Hello").await;
        }
        Ok(Some(Err(_)) | None) => return refusals.count(Cause::Unauthenticated),
        Err(_) => {
            refusals.count(Cause::Deadline);
            return refuse_link(framed, "no Hello within the deadline").await;
        }
    };
    // The proof first: only a peer that holds the secret gets a log line
    // of its own (a version mismatch names a misconfigured node).
    if !link_auth::verify(
        node.secret.bytes(),
        &gate_nonce,
        &hello.login_nonce,
        Proof::Login {
            node: &hello.node_id,
        },
        &hello.proof,
    ) {
        refusals.count(Cause::Unauthenticated);
        return refuse_link(framed, "wrong or missing proof of the link secret").await;
    }
    if hello.protocol_version != proto::CONTROL_VERSION {
        let why = format!(
            "login node speaks control protocol {}, this gate {}",
            hello.protocol_version,
            proto::CONTROL_VERSION
        );
        warn!(%peer, reason = %why, "control link refused");
        return refuse_link(framed, &why).await;
    }
    if hello.node_id.is_empty() {
        warn!(%peer, "control link refused: empty node id");
        return refuse_link(framed, "empty node id").await;
    }
    // Authenticated: the pending slot goes back to the budget.
    drop(slot);
    let welcome = ControlFrame {
        kind: Some(control_frame::Kind::Welcome(Welcome {
            proof: link_auth::control_gate_proof(
                node.secret.bytes(),
                &gate_nonce,
                &hello.login_nonce,
            )
            .into(),
        })),
    };
    if framed.send(welcome).await.is_err() {
        return;
    }
    let login_node = hello.node_id;
    info!(%peer, node = %esc(login_node.as_bytes()), "login node linked");

    let (mut sink, mut frames) = framed.split();
    let (tx, mut rx) = mpsc::channel::<ControlFrame>(LINK_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.feed(frame).await.is_err() {
                return;
            }
            while let Ok(frame) = rx.try_recv() {
                if sink.feed(frame).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let calls = Arc::new(Semaphore::new(MAX_CALLS_PER_LINK));
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => break,
            frame = frames.next() => frame,
        };
        let kind = match frame {
            Some(Ok(LoginFrame { kind: Some(kind) })) => kind,
            // A frame kind this version does not know: skipped.
            Some(Ok(LoginFrame { kind: None })) => continue,
            Some(Err(e)) => {
                warn!(%peer, error = %e, "control link: bad frame; closing");
                break;
            }
            None => break,
        };
        let Ok(permit) = Arc::clone(&calls).acquire_owned().await else {
            break;
        };
        let (node, tx) = (Arc::clone(&node), tx.clone());
        match kind {
            login_frame::Kind::Place(p) => {
                tasks.spawn(async move {
                    let _busy = node.enter_call().await;
                    let reply = node.place(p).await;
                    let _ = tx.send(reply).await;
                    drop(permit);
                });
            }
            login_frame::Kind::Kick(k) => {
                tasks.spawn(async move {
                    let _busy = node.enter_call().await;
                    let reply = node.kick(k).await;
                    let _ = tx.send(reply).await;
                    drop(permit);
                });
            }
            login_frame::Kind::Ping(_) => {
                let pong = ControlFrame {
                    kind: Some(control_frame::Kind::Pong(Pong {})),
                };
                if tx.send(pong).await.is_err() {
                    break;
                }
            }
            login_frame::Kind::Hello(_) => {
                warn!(%peer, "control link: a second Hello; closing");
                break;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    info!(%peer, node = %esc(login_node.as_bytes()), "login node link closed");
}

/// Tells the peer why its link is refused (the caller has counted or
/// logged it), then closes.
async fn refuse_link(mut framed: Framed<BoxIo, ControlCodec>, why: &str) {
    let refused = ControlFrame {
        kind: Some(control_frame::Kind::Refused(Refused {
            message: why.to_owned(),
        })),
    };
    let _ = framed.send(refused).await;
}
