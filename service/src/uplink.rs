//! One link to one gate: connect, register, serve, and reconnect when the
//! link is lost.
//!
//! Each connection has a reader (this task: it reads frames, dispatches
//! them, sends pings and watches for a silent gate) and a writer task that
//! writes the link's [`Outbox`], so handler tasks, pushes and pongs never
//! contend for the socket and answers are batched into few writes.
//!
//! # Cost per request
//!
//! A request costs no task, channel message or write of its own when its
//! handler is done at the first poll (an echo, a lookup in memory): the
//! reader polls it once in place and encodes the answer into a batch that
//! goes to the outbox, with the answers to every other request of the same
//! read, in one append. Only a handler that has to wait moves to a task of
//! its own, so a slow request still holds up nobody. Session events go
//! through one queue and task per connection, so a handler sees them in
//! the gate's order.
//!
//! # Reading and writing independently
//!
//! The reader never waits for the writer to send its own frames (pongs,
//! pings — they have an allowance past the outbox's bound): a gate that
//! stops reading fills the outbox, and a reader stuck behind it would stop
//! noticing that the gate went silent. When the outbox is full the reader
//! holds its batch and stops reading (backpressure to the gate) but keeps
//! pinging and watching the clock. The gate must likewise read and write
//! independently.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use proto::PROTOCOL_VERSION;
use proto::backend::{
    AuthReply, GateFrame, Goodbye, Ping, Pong, RefuseReason, Register, RegisterAck,
    RegisterRefused, Response, ServiceFrame, gate_frame::Kind,
};
use proto::framing::ServiceCodec;
use proto::link_auth::{self, Proof};
use tokio::io::AsyncReadExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A link's read half: TCP's own, or TLS's.
type LinkRead = Box<dyn AsyncRead + Send + Unpin>;
/// A link's write half.
type LinkWrite = Box<dyn AsyncWrite + Send + Unpin>;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep, sleep_until, timeout_at};
use tokio_util::codec::{Decoder, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::ServiceError;
use crate::gate::{GateHandle, Gates, Live};
use crate::handler::{
    AuthDecision, AuthRequest, Context, Handler, Handles, Request, SessionEvent, SessionKind,
};
use crate::outbox::{self, Outbox, Refused};

/// Session events queued per connection before the reader waits for the
/// handler (backpressure instead of unbounded memory).
const SESSION_QUEUE: usize = 1024;

/// The reader reads into a buffer with at least `READ_MIN` bytes free,
/// growing it by `READ_CHUNK` when less is. Decoded payloads share the
/// buffer (zero copy), so a request that waits keeps its chunk alive: the
/// chunk is small for that reason, and large enough to take in many
/// requests per read.
const READ_MIN: usize = 2 * 1024;
const READ_CHUNK: usize = 8 * 1024;

/// What every link of a service shares.
#[derive(Debug)]
pub(crate) struct ServiceState<H> {
    pub(crate) config: Config,
    pub(crate) handler: H,
    pub(crate) gates: Gates,
    /// Bounds the requests handled at once across all links.
    pub(crate) permits: Arc<InFlight>,
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
    shared: Arc<ServiceState<H>>,
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

/// One registered connection.
struct Connection<H> {
    shared: Arc<ServiceState<H>>,
    gate: GateHandle,
    gate_name: String,
    link_id: u64,
    /// Dead-gate timeout for this link (the configured one, widened to the
    /// gate's announced ping interval).
    silence_limit: Duration,
    /// The tasks of requests that had to wait, and the session task of
    /// this connection.
    tracker: TaskTracker,
    outbox: Arc<Outbox>,
    /// What every [`Context`] of this link holds.
    handles: Arc<Handles>,
}

/// Answers the reader produced while handling one read, encoded, on their
/// way to the [`Outbox`] in one append.
struct Batch {
    buf: BytesMut,
    frames: usize,
    max_frame_len: usize,
}

impl Batch {
    fn push(&mut self, frame: ServiceFrame) {
        if outbox::encode(frame, &mut self.buf, self.max_frame_len) {
            self.frames += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Moves the batch to the outbox unless it is full; `false` if it is
    /// (the batch stays, and the reader must wait for room before reading
    /// on).
    fn flush(&mut self, outbox: &Outbox) -> bool {
        if self.frames == 0 {
            return true;
        }
        match outbox.try_append(&mut self.buf, self.frames) {
            Err(Refused::Full) => false,
            // Ok, or Closed: the link is ending and its answers go nowhere.
            _ => {
                self.buf.clear();
                self.frames = 0;
                true
            }
        }
    }
}

impl<H: Handler> Connection<H> {
    fn new(shared: Arc<ServiceState<H>>, gate: GateHandle, ack: &RegisterAck) -> Self {
        let announced = Duration::from_millis(u64::from(ack.heartbeat_interval_ms)) * 3;
        let silence_limit = shared.config.heartbeat_timeout.max(announced);
        let outbox = Arc::new(Outbox::new(
            shared.config.send_queue,
            shared.config.max_frame_len,
        ));
        Connection {
            gate: gate.clone(),
            gate_name: ack.gate_name.clone(),
            link_id: ack.link_id,
            silence_limit,
            tracker: TaskTracker::new(),
            outbox,
            handles: Arc::new(Handles {
                gate,
                gates: shared.gates.clone(),
            }),
            shared,
        }
    }

    /// The context of a call that arrived at `now`.
    fn context(&self, request_id: u64, deadline_ms: u32, now: Instant) -> Context {
        Context {
            request_id,
            deadline: (deadline_ms > 0)
                .then(|| now + Duration::from_millis(u64::from(deadline_ms))),
            handles: self.handles.clone(),
        }
    }

    async fn serve(
        self,
        reader: FramedRead<LinkRead, ServiceCodec>,
        writer: FramedWrite<LinkWrite, ServiceCodec>,
        shutdown: &CancellationToken,
    ) -> End {
        let config = &self.shared.config;
        // The registration phase is over: from here on the reader decodes
        // by hand (so it knows when a read's frames are all handled and its
        // answers can go out together) and the writer writes the outbox.
        let parts = reader.into_parts();
        let mut read = parts.io;
        let mut codec = parts.codec;
        let mut rbuf = parts.read_buf;
        let mut writer_task =
            tokio::spawn(outbox::write_loop(self.outbox.clone(), writer.into_inner()));
        let mut batch = Batch {
            buf: BytesMut::new(),
            frames: 0,
            max_frame_len: self.outbox.max_frame_len(),
        };
        // Set while the outbox is full: the batch waits for room and the
        // link reads nothing more (backpressure to the gate), though it
        // still pings and watches for silence.
        let mut stalled = false;

        let (events_tx, events_rx) = mpsc::channel(SESSION_QUEUE);
        let mut events_tx = Some(events_tx);
        self.tracker.spawn(session_loop(
            self.shared.clone(),
            self.context(0, 0, Instant::now()),
            events_rx,
        ));

        self.gate.publish(Some(Live {
            outbox: self.outbox.clone(),
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

        // Frames that arrived with the registration answer.
        let mut ready = !rbuf.is_empty();
        let end = 'serve: loop {
            if ready {
                ready = false;
                loop {
                    match codec.decode(&mut rbuf) {
                        Ok(Some(frame)) => {
                            self.dispatch(frame, last_heard, &mut batch, events_tx.as_ref())
                                .await;
                        }
                        Ok(None) => break,
                        Err(err) => break 'serve lost(true, format!("bad frame from gate: {err}")),
                    }
                }
                stalled = !batch.flush(&self.outbox);
            }
            if rbuf.capacity() - rbuf.len() < READ_MIN {
                rbuf.reserve(READ_CHUNK);
            }
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
                    let _ = self.outbox.push_control(Goodbye { reason: "service stopping".into() }.into());
                    // Ends the session task once its queue is empty.
                    events_tx = None;
                    self.tracker.close();
                    drain_until = Some(Instant::now() + config.drain_timeout);
                }
                _ = self.tracker.wait(), if drain_until.is_some() && !stalled => break End::Shutdown,
                _ = sleep_until(drain_until.unwrap_or_else(Instant::now)), if drain_until.is_some() => {
                    warn!(unanswered = self.tracker.len(), "drain timeout; closing anyway");
                    break End::Shutdown;
                }
                _ = self.outbox.append(&mut batch.buf, batch.frames), if stalled => {
                    batch.frames = 0;
                    stalled = false;
                }
                got = read.read_buf(&mut rbuf), if !stalled => match got {
                    Ok(0) if rbuf.is_empty() => break lost(true, "gate closed the link"),
                    Ok(0) => break lost(true, "bad frame from gate: the link closed inside a frame"),
                    Ok(_) => {
                        last_heard = Instant::now();
                        ready = true;
                    }
                    Err(err) => break lost(true, format!("read failed: {err}")),
                },
                _ = ticker.tick() => {
                    let silent = last_heard.elapsed();
                    if silent >= self.silence_limit {
                        let why = if stalled { "not reading" } else { "silent" };
                        break lost(true, format!("gate {why} for {silent:?}"));
                    }
                    nonce += 1;
                    // Dropped if even the control allowance is used up:
                    // the link is busy then, and a ping would say nothing
                    // the queued frames do not.
                    let _ = self.outbox.push_control(Ping::now(nonce).into());
                }
            }
        };

        // From here on pushes fail fast instead of queueing for a dead link.
        self.gate.publish(None);
        drop(events_tx);
        match end {
            End::Shutdown if !writer_task.is_finished() => {
                // Tasks still running past the drain deadline get a last
                // moment to answer; then the writer writes what is queued
                // and closes our direction, so the gate sees a clean end.
                let grace = drain_until.unwrap_or_else(Instant::now) + Duration::from_secs(1);
                if !batch.is_empty() {
                    let _ =
                        timeout_at(grace, self.outbox.append(&mut batch.buf, batch.frames)).await;
                }
                let _ = timeout_at(grace, self.tracker.wait()).await;
                self.outbox.close();
                if timeout_at(grace, &mut writer_task).await.is_err() {
                    writer_task.abort();
                }
                info!("link closed");
            }
            _ => {
                self.outbox.close();
                writer_task.abort();
            }
        }
        end
    }

    /// Handles one frame from the gate. Answers the reader produces go into
    /// `batch`; requests that do not finish at once go on their own task.
    async fn dispatch(
        &self,
        frame: GateFrame,
        now: Instant,
        batch: &mut Batch,
        events: Option<&mpsc::Sender<SessionEvent>>,
    ) {
        let draining = events.is_none();
        match frame.kind {
            Some(Kind::Request(req)) => {
                let id = req.request_id;
                if let Err(why) = self.admit(draining) {
                    batch.push(Response::error(id, why).into());
                    return;
                }
                let ctx = self.context(id, req.deadline_ms, now);
                let request = Request {
                    uid: req.uid,
                    subid: req.subid,
                    route: req.route,
                    payload: req.payload,
                };
                let shared = self.shared.clone();
                let answer = async move { shared.handler.request(ctx, request).await };
                self.run(answer, batch, move |answer| {
                    match answer {
                        Some(Ok(body)) => Response::ok(id, body),
                        Some(Err(reason)) => Response::error(id, reason),
                        None => {
                            error!(request_id = id, "request handler panicked");
                            Response::error(id, "request handler panicked")
                        }
                    }
                    .into()
                });
            }
            Some(Kind::AuthRequest(req)) => {
                let id = req.request_id;
                if let Err(why) = self.admit(draining) {
                    batch.push(AuthReply::deny(id, why).into());
                    return;
                }
                let ctx = self.context(id, req.deadline_ms, now);
                let auth = AuthRequest {
                    user: req.user,
                    server: req.server,
                    password: req.password,
                    peer_addr: req.peer_addr,
                };
                let shared = self.shared.clone();
                let decision = async move { shared.handler.auth(ctx, auth).await };
                self.run(decision, batch, move |decision| {
                    match decision {
                        Some(AuthDecision::Allow(uid)) => AuthReply::allow(id, uid),
                        Some(AuthDecision::Deny(reason)) => AuthReply::deny(id, reason),
                        None => {
                            error!(request_id = id, "auth handler panicked");
                            AuthReply::deny(id, "auth handler panicked")
                        }
                    }
                    .into()
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
                    match events.try_send(event) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(event)) => {
                            // Backpressure: the handler is behind. Answers
                            // made so far go out first (if the outbox is
                            // full they stay, for the reader to retry).
                            batch.flush(&self.outbox);
                            let _ = events.send(event).await;
                        }
                        // The session task panicked; already logged.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
            Some(Kind::Ping(ping)) => {
                // Not in the batch: a pong never waits behind answers.
                if self
                    .outbox
                    .push_control(Pong::answer(&ping).into())
                    .is_err()
                {
                    warn!("send queue full; pong dropped");
                }
            }
            Some(Kind::Pong(_)) => {}
            Some(Kind::Goodbye(goodbye)) => {
                info!(reason = %goodbye.reason, "gate is going away");
            }
            Some(Kind::RegisterAck(_) | Kind::RegisterRefused(_) | Kind::LinkChallenge(_)) => {
                warn!("registration answer on a registered link; ignored");
            }
            // A frame kind added after this library was built: additive
            // changes keep the protocol version, so skip it.
            None => debug!("frame of an unknown kind; ignored"),
        }
    }

    /// Runs an admitted call: polls `call` once right here, and when it is
    /// done at once (an echo, a lookup in memory) puts the answer in
    /// `batch` — no task, no channel, no wake-up. Otherwise the call goes
    /// on its own task, so it waits without holding up other requests, and
    /// queues its answer when done. The permit taken by
    /// [`admit`](Self::admit) is held until the call is done either way.
    /// `answer` turns the call's result (`None`: it panicked) into a frame.
    fn run<F, T>(
        &self,
        call: F,
        batch: &mut Batch,
        answer: impl FnOnce(Option<T>) -> ServiceFrame + Send + 'static,
    ) where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        // Boxed so it can move to a task after this first poll.
        let mut call = Box::pin(AssertUnwindSafe(call).catch_unwind());
        // A no-op waker: if the call is not done, its task polls it again
        // at once and it registers that task's waker then.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match call.as_mut().poll(&mut cx) {
            Poll::Ready(result) => {
                self.shared.permits.release();
                batch.push(answer(result.ok()));
            }
            Poll::Pending => {
                let permit = Permit(self.shared.permits.clone());
                let outbox = self.outbox.clone();
                self.tracker.spawn(async move {
                    let result = call.await;
                    drop(permit);
                    // Err: the link is gone, and the gate already failed
                    // the request.
                    let _ = outbox.send(answer(result.ok())).await;
                });
            }
        }
    }

    /// Takes a permit to run one more call, unless draining or at the
    /// bound; the refusal says which.
    fn admit(&self, draining: bool) -> Result<(), &'static str> {
        if draining {
            Err("service is stopping")
        } else if self.shared.permits.try_acquire() {
            Ok(())
        } else {
            Err("service overloaded")
        }
    }
}

/// Bounds the requests and auth checks handled at once across all links
/// ([`Config::max_in_flight`]): a counter, as a call that finishes at its
/// first poll takes and returns its permit without ever waiting.
#[derive(Debug)]
pub(crate) struct InFlight {
    now: AtomicUsize,
    max: usize,
}

impl InFlight {
    pub(crate) fn new(max: usize) -> Self {
        InFlight {
            now: AtomicUsize::new(0),
            max,
        }
    }

    fn try_acquire(&self) -> bool {
        self.now
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.now.fetch_sub(1, Ordering::Release);
    }
}

/// A permit held by a call running on its own task; returned on drop, so
/// also when the task is dropped unfinished.
struct Permit(Arc<InFlight>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.release();
    }
}

async fn session_loop<H: Handler>(
    shared: Arc<ServiceState<H>>,
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
