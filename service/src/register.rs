//! Setting up one connection to a gate: dial (within
//! `connect_timeout`), TLS when configured, wait for the gate's challenge,
//! register with a proof of the link secret, check the gate's proof in its
//! acknowledgement, then hand the connection to [`crate::connection`].
//!
//! Every way this can fail is sorted here into "try again" (a lost link,
//! with backoff) or "give up" (a permanent refusal such as another
//! protocol version), because only this step knows which answer it got.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use proto::PROTOCOL_VERSION;
use proto::backend::{GateFrame, Pong, RefuseReason, Register, RegisterRefused, gate_frame::Kind};
use proto::framing::ServiceCodec;
use proto::link_auth::{self, Proof};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::connection::Connection;
use crate::error::ServiceError;
use crate::gate::GateHandle;
use crate::handler::Handler;
use crate::uplink::{End, ServiceState, lost};

/// A link's read half: TCP's own, or TLS's.
pub(crate) type LinkRead = Box<dyn AsyncRead + Send + Unpin>;
/// A link's write half.
pub(crate) type LinkWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Connects to `gate`, registers, and serves the connection until it ends.
pub(crate) async fn connect_and_serve<H: Handler>(
    shared: &Arc<ServiceState<H>>,
    gate: &GateHandle,
    shutdown: &CancellationToken,
) -> End {
    let config = &shared.config;
    let deadline = Instant::now() + config.connect_timeout;
    let connected = tokio::select! {
        _ = shutdown.cancelled() => return End::Shutdown,
        connected = timeout_at(deadline, TcpStream::connect(gate.addr())) => connected,
    };
    let stream = match connected {
        Err(_) => return lost(false, "connect timed out"),
        Ok(Err(err)) => return lost(false, format!("connect failed: {err}")),
        Ok(Ok(stream)) => stream,
    };
    // Frames are small and latency-bound; the writer batches on its own.
    if let Err(err) = stream.set_nodelay(true) {
        debug!(%err, "cannot set TCP_NODELAY");
    }
    let (read, write): (LinkRead, LinkWrite) = match &config.tls {
        None => {
            let (read, write) = stream.into_split();
            (Box::new(read), Box::new(write))
        }
        Some(tls) => {
            let handshake = tokio::select! {
                _ = shutdown.cancelled() => return End::Shutdown,
                handshake = timeout_at(deadline, tls.connect(gate.addr(), stream)) => handshake,
            };
            match handshake {
                Err(_) => return lost(false, "TLS handshake timed out"),
                Ok(Err(err)) => return lost(false, format!("TLS handshake failed: {err}")),
                Ok(Ok(io)) => {
                    let (read, write) = tokio::io::split(io);
                    (Box::new(read), Box::new(write))
                }
            }
        }
    };
    let mut reader = FramedRead::new(read, ServiceCodec::with_max_frame_len(config.max_frame_len));
    let mut writer = FramedWrite::new(
        write,
        ServiceCodec::with_max_frame_len(config.max_frame_len),
    );

    // The gate speaks first: its challenge.
    let gate_nonce = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return End::Shutdown,
            next = timeout_at(deadline, reader.next()) => next,
        };
        match next {
            Err(_) => return lost(false, "no link challenge from the gate in time"),
            Ok(None) => return lost(false, "gate closed the link before its challenge"),
            Ok(Some(Err(err))) => return lost(false, format!("bad frame from gate: {err}")),
            Ok(Some(Ok(GateFrame {
                kind: Some(Kind::LinkChallenge(challenge)),
            }))) => break challenge.gate_nonce,
            // A gate of protocol version 1 sends nothing first; ours then
            // waits here until the deadline, and reconnects.
            Ok(Some(Ok(_))) => debug!("frame before the link challenge; ignored"),
        }
    };
    let Some(secret) = config.secret.as_ref() else {
        return End::Fatal(ServiceError::Config("no link secret".into()));
    };
    let service_nonce: [u8; link_auth::NONCE_LEN] = rand::random();
    let register = Register {
        protocol_version: PROTOCOL_VERSION,
        service: config.service.clone(),
        instance_id: config.instance_id.clone(),
        routes: config.routes.clone(),
        all_session_events: config.all_session_events,
        max_in_flight: u32::try_from(config.max_in_flight).unwrap_or(u32::MAX),
        service_nonce: Bytes::copy_from_slice(&service_nonce),
        proof: link_auth::service_proof(
            secret.bytes(),
            &gate_nonce,
            &service_nonce,
            &config.service,
            &config.instance_id,
        )
        .into(),
    };
    match timeout_at(deadline, writer.send(register.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return lost(false, format!("cannot send the registration: {err}")),
        Err(_) => return lost(false, "sending the registration timed out"),
    }

    let ack = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return End::Shutdown,
            next = timeout_at(deadline, reader.next()) => next,
        };
        let kind = match next {
            Err(_) => return lost(false, "no answer to the registration in time"),
            Ok(None) => {
                return lost(
                    false,
                    "gate closed the link before answering the registration",
                );
            }
            Ok(Some(Err(err))) => return lost(false, format!("bad frame from gate: {err}")),
            Ok(Some(Ok(GateFrame { kind }))) => kind,
        };
        match kind {
            Some(Kind::RegisterAck(ack)) => break ack,
            Some(Kind::RegisterRefused(refused)) => return refusal(gate.addr(), refused),
            Some(Kind::Ping(ping)) => {
                if let Err(err) = writer.send(Pong::answer(&ping).into()).await {
                    return lost(false, format!("write failed: {err}"));
                }
            }
            _ => debug!("frame before the registration answer; ignored"),
        }
    };
    if let Err(mismatch) = proto::check_version(ack.protocol_version) {
        return End::Fatal(ServiceError::IncompatibleVersion {
            gate: gate.addr().to_owned(),
            gate_version: mismatch.theirs,
            service_version: mismatch.ours,
            message: "the gate acknowledged the registration with another version".into(),
        });
    }
    let gate_proved = link_auth::verify(
        secret.bytes(),
        &gate_nonce,
        &service_nonce,
        Proof::Gate,
        &ack.proof,
    );
    if !gate_proved {
        error!(
            gate = %gate.addr(),
            "the gate did not prove the link secret: not serving it"
        );
        return lost(false, "the gate did not prove the link secret");
    }
    info!(gate_name = %ack.gate_name, link_id = ack.link_id, "registered");

    Connection::new(shared.clone(), gate.clone(), &ack)
        .serve(reader, writer, shutdown)
        .await
}

fn refusal(addr: &str, refused: RegisterRefused) -> End {
    let reason = refused.reason();
    match reason {
        RefuseReason::IncompatibleVersion => End::Fatal(ServiceError::IncompatibleVersion {
            gate: addr.to_owned(),
            gate_version: refused.gate_protocol_version,
            service_version: PROTOCOL_VERSION,
            message: refused.message,
        }),
        reason if reason.is_permanent() => End::Fatal(ServiceError::Refused {
            gate: addr.to_owned(),
            reason,
            message: refused.message,
        }),
        reason => lost(
            false,
            format!(
                "gate refused the registration ({reason:?}): {}",
                refused.message
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_sort_into_fatal_and_retry() {
        let refused = |reason: RefuseReason| RegisterRefused {
            reason: reason as i32,
            message: "because".into(),
            gate_protocol_version: PROTOCOL_VERSION + 1,
        };
        assert!(matches!(
            refusal("g", refused(RefuseReason::IncompatibleVersion)),
            End::Fatal(ServiceError::IncompatibleVersion { gate_version, .. })
                if gate_version == PROTOCOL_VERSION + 1
        ));
        assert!(matches!(
            refusal("g", refused(RefuseReason::Invalid)),
            End::Fatal(ServiceError::Refused { .. })
        ));
        assert!(matches!(
            refusal("g", refused(RefuseReason::ShuttingDown)),
            End::Lost {
                registered: false,
                ..
            }
        ));
    }
}
