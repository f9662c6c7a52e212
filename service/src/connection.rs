//! Serving one registered connection to a gate: read and dispatch its
//! frames, answer, ping, and notice a silent gate.
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

use bytes::BytesMut;
use futures::FutureExt;
use proto::backend::{
    AuthReply, GateFrame, Goodbye, Ping, Pong, RegisterAck, Response, ServiceFrame,
    gate_frame::Kind,
};
use proto::framing::ServiceCodec;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout_at};
use tokio_util::codec::{Decoder, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::gate::{GateHandle, Live};
use crate::handler::{
    AuthDecision, AuthRequest, Context, Handler, Handles, Request, SessionEvent, SessionKind,
};
use crate::outbox::{self, Outbox, Refused};
use crate::register::{LinkRead, LinkWrite};
use crate::uplink::{End, ServiceState, lost};

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

/// One registered connection.
pub(crate) struct Connection<H> {
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
    pub(crate) fn new(shared: Arc<ServiceState<H>>, gate: GateHandle, ack: &RegisterAck) -> Self {
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

    pub(crate) async fn serve(
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
                self.shared.gates.note(&event.uid, kind, &self.gate);
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
            Some(Kind::GateList(list)) => {
                let gates: Vec<(String, String)> = list
                    .gates
                    .into_iter()
                    .map(|g| (g.name, g.backend))
                    .collect();
                debug!(gates = gates.len(), "the cluster's gates");
                self.shared.discovered.send_replace(Some(gates));
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
