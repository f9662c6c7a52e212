//! One link to one gate: connect, register, serve, and reconnect when the
//! link is lost.
//!
//! Each connection has three parts: this task reading frames and
//! dispatching them (it also sends pings and watches for a silent gate), a
//! writer task draining a bounded queue into the socket (so handler tasks,
//! pushes and pongs never contend for the socket and frames are batched
//! into few writes), and a task per request. Session events go through one
//! queue and task per connection, so a handler sees them in the gate's order.
//!
//! The reader never waits for the writer (its own answers — pongs, refusals
//! — are queued with `try_send`): a gate that stops reading fills the queue,
//! and a reader stuck behind it would stop noticing that the gate went
//! silent. The gate must likewise read and write independently.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, SinkExt, StreamExt};
use prost::Message;
use proto::PROTOCOL_VERSION;
use proto::backend::{
    AuthReply, GateFrame, Goodbye, Ping, Pong, RefuseReason, Register, RegisterAck,
    RegisterRefused, Response, ServiceFrame, gate_frame::Kind,
};
use proto::framing::{FrameError, ServiceCodec};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep, sleep_until, timeout_at};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::ServiceError;
use crate::gate::{GateHandle, Gates, Live};
use crate::handler::{
    AuthDecision, AuthRequest, Context, Handler, Request, SessionEvent, SessionKind,
};

/// Session events queued per connection before the reader waits for the
/// handler (backpressure instead of unbounded memory).
const SESSION_QUEUE: usize = 1024;

/// What every link of a service shares.
#[derive(Debug)]
pub(crate) struct Shared<H> {
    pub(crate) config: Config,
    pub(crate) handler: H,
    pub(crate) gates: Gates,
    /// Bounds the requests handled at once across all links.
    pub(crate) permits: Arc<Semaphore>,
}

/// How one connection ended.
enum End {
    /// Shutdown was requested (and the link drained), or came during a
    /// connect.
    Shutdown,
    /// Stop the whole service.
    Fatal(ServiceError),
    /// Reconnect. `registered` resets the backoff: the gate was reachable,
    /// so the next attempt should be quick.
    Lost { registered: bool, why: String },
}

fn lost(registered: bool, why: impl ToString) -> End {
    End::Lost {
        registered,
        why: why.to_string(),
    }
}

/// Runs the link to `gate` until shutdown (`Ok`) or a permanent refusal.
pub(crate) async fn run<H: Handler>(
    shared: Arc<Shared<H>>,
    gate: GateHandle,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let mut backoff = Backoff::new(shared.config.backoff_initial, shared.config.backoff_max);
    loop {
        match connect_and_serve(&shared, &gate, &shutdown).await {
            End::Shutdown => return Ok(()),
            End::Fatal(err) => {
                error!(%err, "giving up on this gate");
                return Err(err);
            }
            End::Lost { registered, why } => {
                if registered {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                if registered {
                    warn!(%why, ?delay, "link lost; reconnecting");
                } else {
                    warn!(%why, ?delay, "cannot register with the gate; retrying");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = sleep(delay) => {}
                }
            }
        }
    }
}

async fn connect_and_serve<H: Handler>(
    shared: &Arc<Shared<H>>,
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
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, ServiceCodec::with_max_frame_len(config.max_frame_len));
    let mut writer = FramedWrite::new(
        write,
        ServiceCodec::with_max_frame_len(config.max_frame_len),
    );

    let register = Register {
        protocol_version: PROTOCOL_VERSION,
        service: config.service.clone(),
        instance_id: config.instance_id.clone(),
        routes: config.routes.clone(),
        all_session_events: config.all_session_events,
        max_in_flight: u32::try_from(config.max_in_flight).unwrap_or(u32::MAX),
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

/// One registered connection.
struct Connection<H> {
    shared: Arc<Shared<H>>,
    gate: GateHandle,
    gate_name: String,
    link_id: u64,
    /// Dead-gate timeout for this link (the configured one, widened to the
    /// gate's announced ping interval).
    silence_limit: Duration,
    /// Handler tasks and the session task of this connection.
    tracker: TaskTracker,
}

impl<H: Handler> Connection<H> {
    fn new(shared: Arc<Shared<H>>, gate: GateHandle, ack: &RegisterAck) -> Self {
        let announced = Duration::from_millis(u64::from(ack.heartbeat_interval_ms)) * 3;
        let silence_limit = shared.config.heartbeat_timeout.max(announced);
        Connection {
            shared,
            gate,
            gate_name: ack.gate_name.clone(),
            link_id: ack.link_id,
            silence_limit,
            tracker: TaskTracker::new(),
        }
    }

    fn context(&self, request_id: u64, deadline_ms: u32) -> Context {
        Context {
            request_id,
            deadline: (deadline_ms > 0)
                .then(|| Instant::now() + Duration::from_millis(u64::from(deadline_ms))),
            gate: self.gate.clone(),
            gates: self.shared.gates.clone(),
        }
    }

    async fn serve(
        self,
        mut reader: FramedRead<OwnedReadHalf, ServiceCodec>,
        writer: FramedWrite<OwnedWriteHalf, ServiceCodec>,
        shutdown: &CancellationToken,
    ) -> End {
        let config = &self.shared.config;
        let (tx, rx) = mpsc::channel(config.send_queue);
        let stop_writer = CancellationToken::new();
        let mut writer_task = tokio::spawn(write_loop(writer, rx, stop_writer.clone()));

        let (events_tx, events_rx) = mpsc::channel(SESSION_QUEUE);
        let mut events_tx = Some(events_tx);
        self.tracker.spawn(session_loop(
            self.shared.clone(),
            self.context(0, 0),
            events_rx,
        ));

        self.gate.publish(Some(Live {
            tx: tx.clone(),
            gate_name: self.gate_name.clone(),
            link_id: self.link_id,
        }));

        let interval = config.heartbeat_interval;
        let mut ticker = interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut nonce = 0u64;
        // Set once shutdown began: until then, in-flight requests may finish.
        let mut drain_until: Option<Instant> = None;

        let end = loop {
            tokio::select! {
                written = &mut writer_task => {
                    let why = match written {
                        Ok(Err(err)) => format!("write failed: {err}"),
                        _ => "writer stopped".to_owned(),
                    };
                    break lost(true, why);
                }
                _ = shutdown.cancelled(), if drain_until.is_none() => {
                    info!("stopping: telling the gate, finishing in-flight requests");
                    // A full queue would hold the drain up; the close tells
                    // the gate just as well.
                    let _ = tx.try_send(Goodbye { reason: "service stopping".into() }.into());
                    // Ends the session task once its queue is empty.
                    events_tx = None;
                    self.tracker.close();
                    drain_until = Some(Instant::now() + config.drain_timeout);
                }
                _ = self.tracker.wait(), if drain_until.is_some() => break End::Shutdown,
                _ = sleep_until(drain_until.unwrap_or_else(Instant::now)), if drain_until.is_some() => {
                    warn!(unanswered = self.tracker.len(), "drain timeout; closing anyway");
                    break End::Shutdown;
                }
                next = reader.next() => match next {
                    None => break lost(true, "gate closed the link"),
                    Some(Err(err)) => break lost(true, format!("bad frame from gate: {err}")),
                    Some(Ok(frame)) => {
                        last_heard = Instant::now();
                        self.dispatch(frame, &tx, events_tx.as_ref()).await;
                    }
                },
                _ = ticker.tick() => {
                    let silent = last_heard.elapsed();
                    if silent >= self.silence_limit {
                        break lost(true, format!("gate silent for {silent:?}"));
                    }
                    nonce += 1;
                    // If the queue is full the link is busy, and a ping
                    // would say nothing the queued frames do not.
                    let _ = tx.try_send(Ping { nonce, sent_at_ms: unix_ms() }.into());
                }
            }
        };

        // From here on pushes fail fast instead of queueing for a dead link.
        self.gate.publish(None);
        drop(events_tx);
        drop(tx);
        match end {
            End::Shutdown if !writer_task.is_finished() => {
                // The writer ends once every sender is gone, after flushing
                // the answers queued during the drain; tasks still running
                // past the drain deadline hold senders, hence the bound.
                let grace = drain_until.unwrap_or_else(Instant::now) + Duration::from_secs(1);
                if timeout_at(grace, &mut writer_task).await.is_err() {
                    stop_writer.cancel();
                    writer_task.abort();
                }
                info!("link closed");
            }
            _ => {
                stop_writer.cancel();
                writer_task.abort();
            }
        }
        end
    }

    async fn dispatch(
        &self,
        frame: GateFrame,
        tx: &mpsc::Sender<ServiceFrame>,
        events: Option<&mpsc::Sender<SessionEvent>>,
    ) {
        let draining = events.is_none();
        match frame.kind {
            Some(Kind::Request(req)) => {
                let id = req.request_id;
                let Some(permit) = self.admit(draining) else {
                    let why = if draining {
                        "service is stopping"
                    } else {
                        "service overloaded"
                    };
                    answer_now(tx, Response::error(id, why).into());
                    return;
                };
                let ctx = self.context(id, req.deadline_ms);
                let request = Request {
                    uid: req.uid,
                    subid: req.subid,
                    route: req.route,
                    payload: req.payload,
                };
                let shared = self.shared.clone();
                let tx = tx.clone();
                self.tracker.spawn(async move {
                    let answer = AssertUnwindSafe(shared.handler.request(ctx, request))
                        .catch_unwind()
                        .await;
                    drop(permit);
                    let frame = match answer {
                        Ok(Ok(body)) => Response::ok(id, body),
                        Ok(Err(reason)) => Response::error(id, reason),
                        Err(_) => {
                            error!(request_id = id, "request handler panicked");
                            Response::error(id, "request handler panicked")
                        }
                    };
                    let frame = fit_response(frame, shared.config.max_frame_len);
                    // Err: the link is gone, and the gate already failed the
                    // request.
                    let _ = tx.send(frame).await;
                });
            }
            Some(Kind::AuthRequest(req)) => {
                let id = req.request_id;
                let Some(permit) = self.admit(draining) else {
                    let why = if draining {
                        "service is stopping"
                    } else {
                        "service overloaded"
                    };
                    answer_now(tx, AuthReply::deny(id, why).into());
                    return;
                };
                let ctx = self.context(id, req.deadline_ms);
                let auth = AuthRequest {
                    user: req.user,
                    server: req.server,
                    password: req.password,
                    peer_addr: req.peer_addr,
                };
                let shared = self.shared.clone();
                let tx = tx.clone();
                self.tracker.spawn(async move {
                    let decision = AssertUnwindSafe(shared.handler.auth(ctx, auth))
                        .catch_unwind()
                        .await;
                    drop(permit);
                    let frame = match decision {
                        Ok(AuthDecision::Allow(uid)) => AuthReply::allow(id, uid),
                        Ok(AuthDecision::Deny(reason)) => AuthReply::deny(id, reason),
                        Err(_) => {
                            error!(request_id = id, "auth handler panicked");
                            AuthReply::deny(id, "auth handler panicked")
                        }
                    };
                    let _ = tx.send(frame.into()).await;
                });
            }
            Some(Kind::SessionEvent(event)) => {
                let Some(kind) = SessionKind::from_proto(event.kind()) else {
                    debug!(
                        kind = event.kind,
                        "session event of an unknown kind; ignored"
                    );
                    return;
                };
                if let Some(events) = events {
                    let event = SessionEvent {
                        uid: event.uid,
                        subid: event.subid,
                        kind,
                        reason: event.reason,
                    };
                    // Err: the session task panicked; already logged.
                    let _ = events.send(event).await;
                }
            }
            Some(Kind::Ping(ping)) => {
                answer_now(tx, Pong::answer(&ping).into());
            }
            Some(Kind::Pong(_)) => {}
            Some(Kind::Goodbye(goodbye)) => {
                info!(reason = %goodbye.reason, "gate is going away");
            }
            Some(Kind::RegisterAck(_) | Kind::RegisterRefused(_)) => {
                warn!("registration answer on a registered link; ignored");
            }
            // A frame kind added after this library was built: additive
            // changes keep the protocol version, so skip it.
            None => debug!("frame of an unknown kind; ignored"),
        }
    }

    /// A permit to run one more handler, unless draining or at the bound.
    fn admit(&self, draining: bool) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if draining {
            return None;
        }
        self.shared.permits.clone().try_acquire_owned().ok()
    }
}

/// Queues a frame from the reader without waiting: should the gate stop
/// reading, the queue fills, and a reader waiting on it would stop noticing
/// that the gate went silent. A dropped answer costs the gate a deadline
/// (or a pong), not a hang.
fn answer_now(tx: &mpsc::Sender<ServiceFrame>, frame: ServiceFrame) {
    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(frame) {
        warn!("send queue full; immediate answer dropped");
    }
}

/// The frame for `response`, or an error answer when it is too large for a
/// frame, so the client gets an answer now instead of the gate's deadline
/// later.
fn fit_response(response: Response, max_frame_len: usize) -> ServiceFrame {
    let id = response.request_id;
    let frame: ServiceFrame = response.into();
    let len = frame.encoded_len();
    if len <= max_frame_len {
        return frame;
    }
    warn!(
        request_id = id,
        len, max_frame_len, "response too large for a frame"
    );
    Response::error(
        id,
        format!("response of {len} bytes exceeds the frame limit of {max_frame_len} bytes"),
    )
    .into()
}

async fn session_loop<H: Handler>(
    shared: Arc<Shared<H>>,
    ctx: Context,
    mut events: mpsc::Receiver<SessionEvent>,
) {
    while let Some(event) = events.recv().await {
        let handled = AssertUnwindSafe(shared.handler.session(ctx.clone(), event))
            .catch_unwind()
            .await;
        if handled.is_err() {
            error!("session event handler panicked; event dropped");
        }
    }
}

/// Drains the queue into the socket, flushing only when the queue is empty
/// so a burst of answers becomes one write.
async fn write_loop(
    mut writer: FramedWrite<OwnedWriteHalf, ServiceCodec>,
    mut rx: mpsc::Receiver<ServiceFrame>,
    stop: CancellationToken,
) -> Result<(), FrameError> {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            frame = rx.recv() => frame,
        };
        let Some(frame) = first else { break };
        feed(&mut writer, frame).await?;
        while let Ok(frame) = rx.try_recv() {
            feed(&mut writer, frame).await?;
        }
        writer.flush().await?;
    }
    // Every sender is gone (graceful stop): close our direction so the gate
    // sees a clean end of stream.
    writer.close().await
}

async fn feed(
    writer: &mut FramedWrite<OwnedWriteHalf, ServiceCodec>,
    frame: ServiceFrame,
) -> Result<(), FrameError> {
    match writer.feed(frame).await {
        // Senders check sizes first; should one slip through, dropping it
        // beats dropping the link (nothing was written).
        Err(FrameError::TooLarge { len, max }) => {
            error!(len, max, "frame too large; dropped");
            Ok(())
        }
        other => other,
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn oversize_responses_become_errors() {
        use proto::backend::{response, service_frame};

        let small = Response::ok(1, Bytes::from_static(b"hi"));
        assert_eq!(fit_response(small.clone(), 1024), small.into());
        let big = Response::ok(2, Bytes::from(vec![0u8; 2048]));
        let Some(service_frame::Kind::Response(fitted)) = fit_response(big, 1024).kind else {
            panic!("not a response");
        };
        assert_eq!(fitted.request_id, 2);
        assert!(matches!(
            fitted.result,
            Some(response::Result::Error(ref why)) if why.contains("exceeds")
        ));
    }

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
