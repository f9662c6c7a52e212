//! The task of one service link: registration, then reading the service's
//! frames and writing what accumulates in its instance's buffer, heartbeats
//! and deadlines, until the link closes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use proto::backend::{
    GateFrame, LinkChallenge, Ping, Pong, RefuseReason, Register, RegisterAck, RegisterRefused,
    service_frame::Kind,
};
use proto::framing::GateCodec;
use proto::link_auth::{self, LinkSecret, NONCE_LEN, Proof};
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A link's read half: TCP's own, or TLS's.
pub(super) type LinkRead = Box<dyn AsyncRead + Send + Unpin>;
/// A link's write half.
type LinkWrite = Box<dyn AsyncWrite + Send + Unpin>;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout, timeout_at};
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::dispatch::dispatch_ready;
use super::instance::{Answers, Instance};
use super::metrics::bump;
use super::pending::{Cause, PendingSlot};
use super::state::BackendState;
use crate::logging::esc;
use crate::players::MsgGate;

/// How long a link that is being closed on purpose (gate stopping, newer
/// link of the same instance) may take to flush what is queued.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// Initial read buffer of a link.
const READ_CAPACITY: usize = 64 * 1024;

/// What the link tasks of one [`super::Backend::serve`] share. Holds the
/// [`MsgGate`] (for pushes and kicks) only while serving: the gate owns the
/// agent, which owns [`BackendState`], so keeping the gate there would make
/// a reference cycle.
pub(crate) struct Serving {
    pub(crate) state: Arc<BackendState>,
    /// The authenticated links' slots (`max_links`).
    pub(crate) links: Arc<Semaphore>,
    pub(crate) gate: MsgGate,
    pub(crate) draining: CancellationToken,
    pub(crate) stop: CancellationToken,
}

/// Why a service link's task ended.
pub(super) enum LinkEnd {
    /// Closed on purpose (gate stopping, replaced): flush, then close.
    Stopped(&'static str),
    /// The service went away or broke the protocol: close now.
    Lost(String),
}

/// Serves one accepted service connection until it closes. It holds a
/// pending slot (`slot`) until it proves the link secret, all within one
/// deadline (`register_timeout`); then an authenticated slot of
/// `max_links` instead. Failures before the proof are only counted (and
/// summarised in the log once a second): anyone can cause them.
pub(crate) async fn run(
    serve: Arc<Serving>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: PendingSlot,
) {
    // Frames are small and latency-bound; the writer batches on its own.
    let _ = stream.set_nodelay(true);
    let cfg = &serve.state.cfg;
    let refusals = &serve.state.refusals;
    // One deadline for everything before the proof (TLS included), so a
    // pending slot is held at most this long whatever the peer does.
    let deadline = Instant::now() + cfg.register_timeout;
    let (read, mut write): (LinkRead, LinkWrite) = match &serve.state.tls {
        None => {
            let (read, write) = stream.into_split();
            (Box::new(read), Box::new(write))
        }
        Some(tls) => {
            let accepted = tokio::select! {
                () = serve.stop.cancelled() => return,
                accepted = timeout_at(deadline, crate::tls::accept(Some(tls), stream)) => accepted,
            };
            match accepted {
                Ok(Ok(io)) => {
                    let (read, write) = tokio::io::split(io);
                    (Box::new(read), Box::new(write))
                }
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "service link: TLS handshake failed");
                    refusals.count(Cause::Tls);
                    return;
                }
                Err(_) => {
                    refusals.count(Cause::Deadline);
                    return;
                }
            }
        }
    };
    // Room for many small answers per read: a busy link is read in big
    // batches instead of 8 KiB ones.
    let mut reader = FramedRead::with_capacity(
        read,
        GateCodec::with_max_frame_len(cfg.max_frame_len),
        READ_CAPACITY,
    );

    // The challenge goes first: nothing else happens on a link that has
    // not proved the link secret.
    let gate_nonce: [u8; NONCE_LEN] = rand::random();
    let challenge = LinkChallenge {
        gate_nonce: Bytes::copy_from_slice(&gate_nonce),
    };
    let registered = tokio::select! {
        () = serve.stop.cancelled() => return,
        registered = timeout_at(deadline, async {
            send_frame(&mut write, cfg.max_frame_len, challenge.into()).await?;
            registration(&mut reader, &mut write, cfg.max_frame_len).await
        }) => registered,
    };
    let register = match registered {
        Ok(Ok(register)) => register,
        Ok(Err(why)) => {
            debug!(%peer, %why, "service link closed before registering");
            refusals.count(Cause::Unauthenticated);
            return;
        }
        Err(_) => {
            debug!(%peer, "no registration within the deadline: closed");
            refusals.count(Cause::Deadline);
            return;
        }
    };
    let proved = authenticate(&serve.state.secret, &gate_nonce, &register);
    let authenticated = proved.is_ok();
    // Only a link that proved the secret may take an authenticated slot.
    let permit = authenticated
        .then(|| Arc::clone(&serve.links).try_acquire_owned().ok())
        .flatten();
    let checked = check(&register, serve.draining.is_cancelled())
        .and(proved)
        .and_then(|()| permit.ok_or_else(at_max_links));
    let permit = match checked {
        Ok(permit) => permit,
        Err(refused) => {
            bump(&serve.state.metrics.refused);
            match (authenticated, refused.reason()) {
                (false, _) => refusals.count(Cause::Unauthenticated),
                (true, RefuseReason::NotAllowed) => refusals.count(Cause::MaxLinks),
                // Only a peer that holds the secret gets a line of its
                // own: what it sent names a misconfigured service.
                (true, reason) => warn!(
                    %peer,
                    service = %esc(register.service.as_bytes()),
                    instance = %esc(register.instance_id.as_bytes()),
                    ?reason,
                    message = %esc(refused.message.as_bytes()),
                    "service registration refused"
                ),
            }
            let mut codec = GateCodec::with_max_frame_len(cfg.max_frame_len);
            let mut buf = BytesMut::new();
            if codec.encode(refused.into(), &mut buf).is_ok() {
                let _ = timeout(CLOSE_FLUSH, async {
                    let _ = write.write_all(&buf).await;
                    let _ = write.shutdown().await;
                })
                .await;
            }
            return;
        }
    };
    // Authenticated: the link now holds a `max_links` slot, and its
    // pending slot goes back to the unauthenticated budget.
    drop(slot);

    let proof = link_auth::gate_proof(
        serve.state.secret.bytes(),
        &gate_nonce,
        &register.service_nonce,
    );
    let id = serve.state.next_link.fetch_add(1, Ordering::Relaxed) + 1;
    let link = Arc::new(Instance::new(
        id,
        register,
        peer,
        &serve.state.cfg,
        Arc::clone(&serve.state.metrics),
    ));
    let span = info_span!("backend_link", link = id, service = %esc(link.service.as_bytes()), instance = %esc(link.instance.as_bytes()));
    serve_link(serve, link, proof, reader, write, permit)
        .instrument(span)
        .await;
}

/// The refusal of a link that proved the secret while every `max_links`
/// slot was taken. `NOT_ALLOWED` is retryable: a slot may free up.
fn at_max_links() -> RegisterRefused {
    RegisterRefused {
        reason: RefuseReason::NotAllowed as i32,
        message: "the gate has backend.max_links service links already".into(),
        gate_protocol_version: proto::PROTOCOL_VERSION,
    }
}

/// Encodes and writes one frame (before the link's writer exists).
async fn send_frame(
    write: &mut LinkWrite,
    max_frame_len: usize,
    frame: GateFrame,
) -> Result<(), String> {
    let mut buf = BytesMut::new();
    GateCodec::with_max_frame_len(max_frame_len)
        .encode(frame, &mut buf)
        .map_err(|e| e.to_string())?;
    write.write_all(&buf).await.map_err(|e| e.to_string())
}

/// Checks the registration's proof of the link secret (constant time).
fn authenticate(
    secret: &LinkSecret,
    gate_nonce: &[u8],
    register: &Register,
) -> Result<(), RegisterRefused> {
    let proved = link_auth::verify(
        secret.bytes(),
        gate_nonce,
        &register.service_nonce,
        Proof::Service {
            service: &register.service,
            instance: &register.instance_id,
        },
        &register.proof,
    );
    if proved {
        Ok(())
    } else {
        Err(RegisterRefused {
            reason: RefuseReason::Unauthenticated as i32,
            message: if register.proof.is_empty() {
                "no proof of the link secret".into()
            } else {
                "wrong proof of the link secret".into()
            },
            gate_protocol_version: proto::PROTOCOL_VERSION,
        })
    }
}

/// Reads frames until the `Register` (answering pings meanwhile).
async fn registration(
    reader: &mut FramedRead<LinkRead, GateCodec>,
    write: &mut LinkWrite,
    max_frame_len: usize,
) -> Result<Register, String> {
    loop {
        let frame = match reader.next().await {
            None => return Err("closed".into()),
            Some(Err(err)) => return Err(format!("bad frame: {err}")),
            Some(Ok(frame)) => frame,
        };
        match frame.kind {
            Some(Kind::Register(register)) => return Ok(register),
            Some(Kind::Ping(ping)) => {
                send_frame(write, max_frame_len, Pong::answer(&ping).into()).await?;
            }
            _ => return Err("a frame other than Register came first".into()),
        }
    }
}

/// Whether a registration is acceptable; the refusal to send if not.
fn check(register: &Register, draining: bool) -> Result<(), RegisterRefused> {
    proto::check_version(register.protocol_version).map_err(RegisterRefused::incompatible)?;
    let invalid = |message: String| RegisterRefused {
        reason: RefuseReason::Invalid as i32,
        message,
        gate_protocol_version: proto::PROTOCOL_VERSION,
    };
    if register.service.is_empty() || register.service.contains('.') {
        return Err(invalid(format!(
            "service name {:?} must be non-empty and contain no '.'",
            register.service
        )));
    }
    if register.instance_id.is_empty() {
        return Err(invalid("instance id must be non-empty".into()));
    }
    if let Some(route) = register
        .routes
        .iter()
        .find(|r| proto::split_route(r).is_none_or(|(service, _)| service != register.service))
    {
        return Err(invalid(format!(
            "route {route:?} is not of the form {}.method",
            register.service
        )));
    }
    if draining {
        return Err(RegisterRefused {
            reason: RefuseReason::ShuttingDown as i32,
            message: "the gate is shutting down".into(),
            gate_protocol_version: proto::PROTOCOL_VERSION,
        });
    }
    Ok(())
}

async fn serve_link(
    serve: Arc<Serving>,
    link: Arc<Instance>,
    proof: Vec<u8>,
    mut reader: FramedRead<LinkRead, GateCodec>,
    write: LinkWrite,
    _permit: OwnedSemaphorePermit,
) {
    let cfg = &serve.state.cfg;
    // The ack goes first into the buffer, so it precedes any request.
    link.send(
        RegisterAck {
            protocol_version: proto::PROTOCOL_VERSION,
            gate_name: serve.gate.name().to_owned(),
            link_id: link.id,
            heartbeat_interval_ms: u32::try_from(cfg.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            max_frame_len: u32::try_from(cfg.max_frame_len).unwrap_or(u32::MAX),
            proof: proof.into(),
        }
        .into(),
    );
    let mut writer = tokio::spawn(write_loop(Arc::clone(&link), write));
    if let Some(old) = serve.state.registry.insert(Arc::clone(&link)) {
        info!(
            old_link = old.id,
            "instance registered again: closing its older link"
        );
        old.stop.cancel();
    }
    // The cluster's gates, if announced (read after the insert: an
    // announcement made meanwhile reaches this link either way).
    let gates = serve
        .state
        .gate_list
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some(gates) = gates {
        link.send(gates.into());
    }
    // A registration that raced with the start of the shutdown still hears
    // the goodbye.
    if serve.draining.is_cancelled() {
        link.say_goodbye(GOODBYE);
    }
    bump(&serve.state.metrics.registered);
    info!(
        peer = %link.peer,
        routes = ?link.routes,
        all_session_events = link.all_events,
        "service registered"
    );

    let interval = cfg.heartbeat_interval;
    let silence_limit = cfg.heartbeat_timeout;
    let mut ticker = interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Noted per frame as a flag and turned into a time at each tick: no
    // clock read per frame, and the silence is measured to an interval.
    let mut last_heard = Instant::now();
    let mut heard = false;
    let mut nonce = 0u64;
    let timer = sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut armed = false;
    let mut answers = Answers::default();

    let end = loop {
        tokio::select! {
            () = serve.stop.cancelled() => break LinkEnd::Stopped("the gate stopped"),
            () = link.stop.cancelled() => break LinkEnd::Stopped("replaced by a newer link of the instance"),
            written = &mut writer => {
                break LinkEnd::Lost(match written {
                    Ok(Err(err)) => format!("write failed: {err}"),
                    _ => "writer stopped".to_owned(),
                });
            }
            frame = reader.next() => match frame {
                None => break LinkEnd::Lost("closed by the service".into()),
                Some(Err(err)) => break LinkEnd::Lost(format!("bad frame: {err}")),
                Some(Ok(frame)) => {
                    heard = true;
                    if let Some(end) = dispatch_ready(&serve, &link, frame, &mut reader, &mut answers) {
                        break end;
                    }
                }
            },
            () = link.timer_wake.notified(), if !armed => {
                if let Some(next) = link.sweep(Instant::now()) {
                    timer.as_mut().reset(next);
                    armed = true;
                }
            }
            () = &mut timer, if armed => {
                armed = false;
                if let Some(next) = link.sweep(Instant::now()) {
                    timer.as_mut().reset(next);
                    armed = true;
                }
            }
            now = ticker.tick() => {
                if std::mem::take(&mut heard) {
                    last_heard = now;
                }
                let silent = now.saturating_duration_since(last_heard);
                if silent >= silence_limit {
                    break LinkEnd::Lost(format!("silent for {} ms", silent.as_millis()));
                }
                // Every interval, as the ack announced: the service's
                // dead-gate timeout counts on it, whatever else flows.
                nonce += 1;
                link.send(Ping::now(nonce).into());
            }
        }
    };

    serve.state.registry.remove(&link);
    let (graceful, why) = match end {
        LinkEnd::Stopped(why) => (true, why.to_owned()),
        LinkEnd::Lost(why) => (false, why),
    };
    if graceful {
        // Also when the stop overtook the draining goodbye.
        link.say_goodbye(&why);
    }
    let failed = link.shut(&why);
    if graceful {
        info!(%why, failed, "service link closed");
        link.finishing.store(true, Ordering::Release);
        link.writer_wake.notify_one();
        if timeout(CLOSE_FLUSH, &mut writer).await.is_err() {
            writer.abort();
        }
    } else {
        warn!(%why, failed_requests = failed, "service link lost: its in-flight requests failed");
        writer.abort();
    }
}

/// What the gate says to every link when it starts shutting down.
pub(crate) const GOODBYE: &str = "gate shutting down";

/// Writes what accumulates in the link's buffer, one `write` per batch.
async fn write_loop(link: Arc<Instance>, mut write: LinkWrite) -> io::Result<()> {
    let mut spare = BytesMut::new();
    loop {
        link.writer_wake.notified().await;
        // Let the connection tasks that are running now add their requests
        // first: one write then carries many of them, which saves syscalls
        // here and in the service.
        tokio::task::yield_now().await;
        loop {
            std::mem::swap(&mut link.lock().out, &mut spare);
            if spare.is_empty() {
                break;
            }
            write.write_all(&spare).await?;
            spare.clear();
        }
        if link.finishing.load(Ordering::Acquire) {
            return write.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register() -> Register {
        Register::new("chat", "chat-1")
    }

    #[test]
    fn registrations_are_checked() {
        assert!(check(&register(), false).is_ok());
        let mut newer = register();
        newer.protocol_version += 1;
        let refused = check(&newer, false).unwrap_err();
        assert_eq!(refused.reason(), RefuseReason::IncompatibleVersion);
        assert!(refused.message.contains("protocol version"));
        for edit in [
            (|r: &mut Register| r.service.clear()) as fn(&mut Register),
            |r| r.service = "a.b".into(),
            |r| r.instance_id.clear(),
            |r| r.routes = vec!["echo.say".into()],
            |r| r.routes = vec!["chat".into()],
        ] {
            let mut bad = register();
            edit(&mut bad);
            assert_eq!(
                check(&bad, false).unwrap_err().reason(),
                RefuseReason::Invalid
            );
        }
        let mut routed = register();
        routed.routes = vec!["chat.say".into()];
        assert!(check(&routed, false).is_ok());
        assert_eq!(
            check(&register(), true).unwrap_err().reason(),
            RefuseReason::ShuttingDown
        );
    }
}
