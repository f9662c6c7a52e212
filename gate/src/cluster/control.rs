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
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::gate_node::GateNode;
use crate::logging::esc;
use crate::tls::{self, BoxIo};

/// Deadline for a login node's `Hello`.
const HELLO_DEADLINE: Duration = Duration::from_secs(5);
/// Most control calls running at once per link; the link is not read
/// further until one finishes.
const MAX_CALLS_PER_LINK: usize = 4096;
/// Frames queued for one link's writer.
const LINK_QUEUE: usize = 1024;
/// Accepts login nodes on `listener` until `stop`.
pub async fn serve_control(node: Arc<GateNode>, listener: TcpListener, stop: CancellationToken) {
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        super::login_node::keepalive(&stream);
        tasks.spawn(control_link(
            Arc::clone(&node),
            stream,
            peer,
            stop.clone(),
            tasks.clone(),
        ));
    }
    tasks.close();
    tasks.wait().await;
}

async fn control_link(
    node: Arc<GateNode>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let io =
        match tokio::time::timeout(HELLO_DEADLINE, tls::accept(node.tls.as_ref(), stream)).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                warn!(%peer, error = %e, "control link: TLS handshake failed");
                return;
            }
            Err(_) => {
                warn!(%peer, "control link: no TLS handshake within the deadline");
                return;
            }
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
        return;
    }
    let hello = match tokio::time::timeout(HELLO_DEADLINE, framed.next()).await {
        Ok(Some(Ok(LoginFrame {
            kind: Some(login_frame::Kind::Hello(hello)),
        }))) => hello,
        Ok(Some(Ok(_))) => {
            return refuse_link(framed, peer, "the first frame must be Hello").await;
        }
        Ok(Some(Err(e))) => {
            warn!(%peer, error = %e, "control link: bad frame before Hello");
            return;
        }
        Ok(None) => return,
        Err(_) => {
            return refuse_link(framed, peer, "no Hello within the deadline").await;
        }
    };
    if hello.protocol_version != proto::CONTROL_VERSION {
        let why = format!(
            "login node speaks control protocol {}, this gate {}",
            hello.protocol_version,
            proto::CONTROL_VERSION
        );
        return refuse_link(framed, peer, &why).await;
    }
    if hello.node_id.is_empty() {
        return refuse_link(framed, peer, "empty node id").await;
    }
    if !link_auth::verify(
        node.secret.bytes(),
        &gate_nonce,
        &hello.login_nonce,
        Proof::Login {
            node: &hello.node_id,
        },
        &hello.proof,
    ) {
        return refuse_link(framed, peer, "wrong or missing proof of the link secret").await;
    }
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
                    let reply = node.place(p).await;
                    let _ = tx.send(reply).await;
                    drop(permit);
                });
            }
            login_frame::Kind::Kick(k) => {
                tasks.spawn(async move {
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

async fn refuse_link(mut framed: Framed<BoxIo, ControlCodec>, peer: SocketAddr, why: &str) {
    warn!(%peer, reason = %why, "control link refused");
    let refused = ControlFrame {
        kind: Some(control_frame::Kind::Refused(Refused {
            message: why.to_owned(),
        })),
    };
    let _ = framed.send(refused).await;
}
