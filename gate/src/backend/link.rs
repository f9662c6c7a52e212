//! One service link: registration, the requests in flight with their
//! deadlines, and the task that reads the service's frames.
//!
//! # Cost per request
//!
//! No task, channel or timer per request. A request is encoded straight
//! into the link's output buffer by the connection task that read it (under
//! the link's lock, together with its in-flight slot), and the link's
//! writer task writes whatever accumulated in one `write` — so under load
//! many requests share a syscall. The answer is matched by the link's
//! reader task and handed to the request's [`Completer`].
//!
//! # Deadlines without a timer per request
//!
//! The requests in flight are an [`Inflight`] ring whose front always holds
//! the earliest deadline (see its docs). The reader task sleeps until that
//! deadline (one `Sleep`, re-armed only when the front changes), then fails
//! every expired request at the front. Auth requests have their own
//! deadline (the login server's) and live in a small map instead.
//!
//! # Pacing
//!
//! A service that registered a `max_in_flight` is never sent more requests
//! than that at once: the next one gets an error response at once, where
//! the service would have refused it a round trip later (or, with its
//! queue full, not at all).
//!
//! # Reading and writing independently
//!
//! Nothing on the read side ever waits for the socket's write side (it only
//! appends to the buffer), so a service that stops reading cannot stall the
//! gate's reading of its answers or its silence detection; the buffer is
//! bounded by `backend.send_queue_bytes` (new requests get an error
//! response beyond it, control frames beyond twice that are dropped).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use proto::backend::{
    AuthReply, AuthRequest, GateFrame, Goodbye, Ping, Pong, RefuseReason, Register, RegisterAck,
    RegisterRefused, Request, Response, ServiceFrame, auth_reply, push, response,
    service_frame::Kind,
};
use proto::framing::{FrameError, GateCodec};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, OwnedSemaphorePermit, oneshot};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::inflight::Inflight;
use super::{Metrics, Serve, bump};
use crate::agent::Completer;

/// Auth request ids have this bit set, so they never collide with the
/// consecutive request ids of the ring.
const AUTH_ID_BIT: u64 = 1 << 63;

/// How long a link that is being closed on purpose (gate stopping, newer
/// link of the same instance) may take to flush what is queued.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// Initial read buffer of a link.
const READ_CAPACITY: usize = 64 * 1024;

/// More expired requests than this in one sweep are logged as one line.
const LOG_EACH_EXPIRED: usize = 8;

/// An auth service's answer, or `None` for a reply with neither result.
pub(crate) type AuthVerdict = Option<auth_reply::Result>;

/// A request waiting for its answer.
struct Pending {
    completer: Completer,
    uid: Bytes,
}

struct LinkState {
    codec: GateCodec,
    /// Encoded frames the writer has not taken yet.
    out: BytesMut,
    /// Requests in flight, with their deadlines.
    inflight: Inflight<Pending>,
    auths: HashMap<u64, oneshot::Sender<AuthVerdict>>,
    next_auth: u64,
    /// False once the link is closing: nothing new is queued.
    open: bool,
}

impl LinkState {
    /// Appends `frame` to the output; `Ok(true)` if the writer must be
    /// woken (the buffer was empty, so the writer is waiting).
    fn push(&mut self, frame: GateFrame) -> Result<bool, FrameError> {
        let was_empty = self.out.is_empty();
        self.codec.encode(frame, &mut self.out)?;
        Ok(was_empty)
    }
}

/// Settings a link needs on the request path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) request_timeout: Duration,
    pub(crate) queue_bytes: usize,
    pub(crate) max_frame_len: usize,
}

/// A registered service instance.
pub(crate) struct Link {
    /// Unique per gate process (in the ack and every log line).
    pub(crate) id: u64,
    pub(crate) service: String,
    pub(crate) instance: String,
    /// Routes served in route mode; empty: every route of `service`.
    routes: Vec<String>,
    pub(crate) all_events: bool,
    /// [`super::registry::instance_hash`] of this instance.
    pub(crate) hash: u64,
    peer: SocketAddr,
    limits: Limits,
    deadline_ms: u32,
    /// The service's own bound on requests at once (0: none stated).
    max_in_flight: usize,
    metrics: Arc<Metrics>,
    closed: AtomicBool,
    /// The service said goodbye: no new work is routed to it.
    goodbye: AtomicBool,
    /// Asks the link's task to close (a newer link of the same instance).
    stop: CancellationToken,
    state: Mutex<LinkState>,
    writer_wake: Notify,
    timer_wake: Notify,
    /// Tells the writer to close the socket once the buffer is written.
    finishing: AtomicBool,
    /// The gate said goodbye on this link already.
    said_goodbye: AtomicBool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("id", &self.id)
            .field("service", &self.service)
            .field("instance", &self.instance)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Link {
    fn new(id: u64, register: Register, peer: SocketAddr, serve: &Serve) -> Link {
        let cfg = &serve.shared.cfg;
        let limits = Limits {
            request_timeout: cfg.request_timeout(),
            queue_bytes: cfg.send_queue_bytes,
            max_frame_len: cfg.max_frame_len,
        };
        Link {
            id,
            hash: super::registry::instance_hash(&register.service, &register.instance_id),
            service: register.service,
            instance: register.instance_id,
            routes: register.routes,
            max_in_flight: usize::try_from(register.max_in_flight).unwrap_or(usize::MAX),
            all_events: register.all_session_events,
            peer,
            deadline_ms: u32::try_from(cfg.request_timeout_ms).unwrap_or(u32::MAX),
            limits,
            metrics: Arc::clone(&serve.shared.metrics),
            closed: AtomicBool::new(false),
            goodbye: AtomicBool::new(false),
            stop: CancellationToken::new(),
            state: Mutex::new(LinkState {
                codec: GateCodec::with_max_frame_len(limits.max_frame_len),
                out: BytesMut::new(),
                inflight: Inflight::new(),
                auths: HashMap::new(),
                next_auth: 0,
                open: true,
            }),
            writer_wake: Notify::new(),
            timer_wake: Notify::new(),
            finishing: AtomicBool::new(false),
            said_goodbye: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        // Every critical section leaves the state consistent (a push, a
        // pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether new work may go to this instance.
    pub(crate) fn is_routable(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.goodbye.load(Ordering::Acquire)
    }

    /// Whether this instance answers `route` in route mode.
    pub(crate) fn serves(&self, route: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|r| r == route)
    }

    /// A short name for logs and error reasons.
    pub(crate) fn name(&self) -> String {
        format!("{}/{}", self.service, self.instance)
    }

    /// Sends a client request; its answer (or deadline, or the link's end)
    /// completes `completer`. Never waits; on any failure the completer is
    /// answered with an error at once.
    pub(crate) fn request(
        &self,
        uid: &Bytes,
        subid: &Bytes,
        route: &str,
        payload: Bytes,
        completer: Completer,
    ) {
        let deadline = Instant::now() + self.limits.request_timeout;
        let mut st = self.lock();
        if !st.open {
            drop(st);
            completer.complete(Err(format!("{} is gone", self.name())));
            return;
        }
        if st.out.len() >= self.limits.queue_bytes {
            drop(st);
            bump(&self.metrics.congested);
            completer.complete(Err(format!(
                "{} does not read: send queue full",
                self.name()
            )));
            return;
        }
        if self.max_in_flight > 0 && st.inflight.waiting() >= self.max_in_flight {
            drop(st);
            bump(&self.metrics.congested);
            completer.complete(Err(format!(
                "{} is at its limit of {} requests at once",
                self.name(),
                self.max_in_flight
            )));
            return;
        }
        let id = st.inflight.next_id();
        let frame = Request {
            request_id: id,
            uid: uid.clone(),
            subid: subid.clone(),
            route: route.to_owned(),
            payload,
            deadline_ms: self.deadline_ms,
        };
        match st.push(frame.into()) {
            Ok(wake_writer) => {
                let wake_timer = st.inflight.waiting() == 0;
                st.inflight.push(
                    deadline,
                    Pending {
                        completer,
                        uid: uid.clone(),
                    },
                );
                bump(&self.metrics.requests);
                drop(st);
                if wake_writer {
                    self.writer_wake.notify_one();
                }
                if wake_timer {
                    self.timer_wake.notify_one();
                }
            }
            Err(err) => {
                drop(st);
                completer.complete(Err(format!("cannot send to {}: {err}", self.name())));
            }
        }
    }

    /// Queues a frame that is not a request (event, ping, goodbye). Dropped
    /// (`false`) when the link is closing or badly congested.
    pub(crate) fn send(&self, frame: GateFrame) -> bool {
        let mut st = self.lock();
        if !st.open {
            return false;
        }
        if st.out.len() >= self.limits.queue_bytes.saturating_mul(2) {
            drop(st);
            warn!(link = self.id, service = %self.name(), "send queue full: frame dropped");
            return false;
        }
        match st.push(frame) {
            Ok(wake) => {
                drop(st);
                if wake {
                    self.writer_wake.notify_one();
                }
                true
            }
            Err(err) => {
                drop(st);
                warn!(link = self.id, %err, "cannot encode a frame: dropped");
                false
            }
        }
    }

    /// Tells the service the gate is going away on purpose (once per link).
    pub(crate) fn say_goodbye(&self, reason: &str) {
        if !self.said_goodbye.swap(true, Ordering::AcqRel) {
            self.send(
                Goodbye {
                    reason: reason.to_owned(),
                }
                .into(),
            );
        }
    }

    /// Sends an auth request; the receiver gets the verdict, or an error if
    /// the link closes first. `None` if the link is closing. The caller
    /// must [`Link::forget_auth`] the id if it stops waiting.
    pub(crate) fn auth(
        &self,
        user: Bytes,
        server: Bytes,
        password: Bytes,
        deadline_ms: u32,
    ) -> Option<(u64, oneshot::Receiver<AuthVerdict>)> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        if !st.open {
            return None;
        }
        st.next_auth += 1;
        let id = AUTH_ID_BIT | st.next_auth;
        let frame = AuthRequest {
            request_id: id,
            user,
            server,
            password,
            // The login server does not hand the client's address to
            // authenticators (the `Authenticator` trait takes credentials).
            peer_addr: String::new(),
            deadline_ms,
        };
        let wake = st.push(frame.into()).ok()?;
        st.auths.insert(id, tx);
        drop(st);
        if wake {
            self.writer_wake.notify_one();
        }
        Some((id, rx))
    }

    /// Drops a waiting auth request (its caller gave up).
    pub(crate) fn forget_auth(&self, id: u64) {
        self.lock().auths.remove(&id);
    }

    /// Matches a service's answer to its request. `false` for an answer
    /// that came too late (the client already got an error) or never had
    /// a request.
    fn answer(&self, response: Response) -> bool {
        let pending = self.lock().inflight.take(response.request_id);
        let Some(pending) = pending else {
            return false;
        };
        let result = match response.result {
            Some(response::Result::Ok(body)) => Ok(body),
            Some(response::Result::Error(reason)) => {
                debug!(link = self.id, request_id = response.request_id, %reason, "service answered with an error");
                Err(reason)
            }
            None => Err("the service's answer has no result".to_owned()),
        };
        pending.completer.complete(result);
        true
    }

    fn auth_reply(&self, reply: AuthReply) -> bool {
        let waiter = self.lock().auths.remove(&reply.request_id);
        match waiter {
            // Err: the login gave up meanwhile.
            Some(tx) => tx.send(reply.result).is_ok(),
            None => false,
        }
    }

    /// Fails every request whose deadline passed; returns the deadline of
    /// the next one, if any.
    fn sweep(&self, now: Instant) -> Option<Instant> {
        let (expired, next) = {
            let mut st = self.lock();
            let expired = st.inflight.expire(now);
            (expired, st.inflight.next_deadline())
        };
        if !expired.is_empty() {
            let count = expired.len();
            self.metrics
                .timed_out
                .fetch_add(count as u64, Ordering::Relaxed);
            if count > LOG_EACH_EXPIRED {
                warn!(
                    link = self.id,
                    service = %self.name(),
                    count,
                    first_request_id = expired[0].0,
                    timeout_ms = self.limits.request_timeout.as_millis() as u64,
                    "requests passed their deadline: answered with errors"
                );
            }
            let reason = format!(
                "{} did not answer within {} ms",
                self.name(),
                self.limits.request_timeout.as_millis()
            );
            for (id, pending) in expired {
                if count <= LOG_EACH_EXPIRED {
                    warn!(
                        link = self.id,
                        service = %self.name(),
                        request_id = id,
                        uid = %String::from_utf8_lossy(&pending.uid),
                        session = pending.completer.session(),
                        timeout_ms = self.limits.request_timeout.as_millis() as u64,
                        "request passed its deadline: answered with an error"
                    );
                }
                pending.completer.complete(Err(reason.clone()));
            }
        }
        next
    }

    /// Stops all new work and fails everything in flight. Idempotent.
    fn shut(&self, why: &str) -> usize {
        self.closed.store(true, Ordering::Release);
        let (pending, auths) = {
            let mut st = self.lock();
            st.open = false;
            (st.inflight.drain(), std::mem::take(&mut st.auths))
        };
        // Dropping the senders fails the waiting logins (`Unavailable`).
        drop(auths);
        let reason = format!("{} closed: {why}", self.name());
        let failed = pending.len();
        // Counted first, so whoever sees an answer also sees the count.
        self.metrics
            .failed_on_close
            .fetch_add(failed as u64, Ordering::Relaxed);
        for pending in pending {
            pending.completer.complete(Err(reason.clone()));
        }
        failed
    }
}

/// Why a link's task ended.
enum End {
    /// Closed on purpose (gate stopping, replaced): flush, then close.
    Stopped(&'static str),
    /// The service went away or broke the protocol: close now.
    Lost(String),
}

/// Serves one accepted service connection until it closes.
pub(crate) async fn run(
    serve: Arc<Serve>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    // Frames are small and latency-bound; the writer batches on its own.
    let _ = stream.set_nodelay(true);
    let cfg = &serve.shared.cfg;
    let (read, mut write) = stream.into_split();
    // Room for many small answers per read: a busy link is read in big
    // batches instead of 8 KiB ones.
    let mut reader = FramedRead::with_capacity(
        read,
        GateCodec::with_max_frame_len(cfg.max_frame_len),
        READ_CAPACITY,
    );

    let registered = tokio::select! {
        () = serve.stop.cancelled() => return,
        registered = timeout(cfg.register_timeout(), registration(&mut reader, &mut write, cfg.max_frame_len)) => registered,
    };
    let register = match registered {
        Ok(Ok(register)) => register,
        Ok(Err(why)) => {
            debug!(%peer, %why, "service link closed before registering");
            return;
        }
        Err(_) => {
            debug!(%peer, "no registration within the deadline: closed");
            return;
        }
    };
    if let Err(refused) = check(&register, serve.draining.is_cancelled()) {
        bump(&serve.shared.metrics.refused);
        warn!(
            %peer,
            service = %register.service,
            instance = %register.instance_id,
            reason = ?refused.reason(),
            message = %refused.message,
            "service registration refused"
        );
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

    let id = serve.shared.next_link.fetch_add(1, Ordering::Relaxed) + 1;
    let link = Arc::new(Link::new(id, register, peer, &serve));
    let span =
        info_span!("backend_link", link = id, service = %link.service, instance = %link.instance);
    serve_link(serve, link, reader, write, permit)
        .instrument(span)
        .await;
}

/// Reads frames until the `Register` (answering pings meanwhile).
async fn registration(
    reader: &mut FramedRead<OwnedReadHalf, GateCodec>,
    write: &mut OwnedWriteHalf,
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
                let mut buf = BytesMut::new();
                GateCodec::with_max_frame_len(max_frame_len)
                    .encode(Pong::answer(&ping).into(), &mut buf)
                    .map_err(|e| e.to_string())?;
                write.write_all(&buf).await.map_err(|e| e.to_string())?;
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
    serve: Arc<Serve>,
    link: Arc<Link>,
    mut reader: FramedRead<OwnedReadHalf, GateCodec>,
    write: OwnedWriteHalf,
    _permit: OwnedSemaphorePermit,
) {
    let cfg = &serve.shared.cfg;
    // The ack goes first into the buffer, so it precedes any request.
    link.send(
        RegisterAck {
            protocol_version: proto::PROTOCOL_VERSION,
            gate_name: serve.gate.name().to_owned(),
            link_id: link.id,
            heartbeat_interval_ms: u32::try_from(cfg.heartbeat_interval_ms).unwrap_or(u32::MAX),
            max_frame_len: u32::try_from(cfg.max_frame_len).unwrap_or(u32::MAX),
        }
        .into(),
    );
    let mut writer = tokio::spawn(write_loop(Arc::clone(&link), write));
    if let Some(old) = serve.shared.registry.insert(Arc::clone(&link)) {
        info!(
            old_link = old.id,
            "instance registered again: closing its older link"
        );
        old.stop.cancel();
    }
    // A registration that raced with the start of the shutdown still hears
    // the goodbye.
    if serve.draining.is_cancelled() {
        link.say_goodbye(GOODBYE);
    }
    bump(&serve.shared.metrics.registered);
    info!(
        peer = %link.peer,
        routes = ?link.routes,
        all_session_events = link.all_events,
        "service registered"
    );

    let interval = cfg.heartbeat_interval();
    let silence_limit = cfg.heartbeat_timeout();
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

    let end = loop {
        tokio::select! {
            () = serve.stop.cancelled() => break End::Stopped("the gate stopped"),
            () = link.stop.cancelled() => break End::Stopped("replaced by a newer link of the instance"),
            written = &mut writer => {
                break End::Lost(match written {
                    Ok(Err(err)) => format!("write failed: {err}"),
                    _ => "writer stopped".to_owned(),
                });
            }
            frame = reader.next() => match frame {
                None => break End::Lost("closed by the service".into()),
                Some(Err(err)) => break End::Lost(format!("bad frame: {err}")),
                Some(Ok(frame)) => {
                    heard = true;
                    dispatch(&serve, &link, frame);
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
                    break End::Lost(format!("silent for {} ms", silent.as_millis()));
                }
                // Every interval, as the ack announced: the service's
                // dead-gate timeout counts on it, whatever else flows.
                nonce += 1;
                link.send(Ping { nonce, sent_at_ms: unix_ms() }.into());
            }
        }
    };

    serve.shared.registry.remove(&link);
    let (graceful, why) = match end {
        End::Stopped(why) => (true, why.to_owned()),
        End::Lost(why) => (false, why),
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

/// Handles one frame from the service, without waiting for anything.
fn dispatch(serve: &Arc<Serve>, link: &Arc<Link>, frame: ServiceFrame) {
    let metrics = &serve.shared.metrics;
    match frame.kind {
        Some(Kind::Response(response)) => {
            if link.answer(response) {
                bump(&metrics.answered);
            } else {
                bump(&metrics.late);
                debug!("answer to a request no longer waiting (deadline passed): dropped");
            }
        }
        Some(Kind::AuthReply(reply)) => {
            if !link.auth_reply(reply) {
                debug!("auth reply nobody waits for (deadline passed): dropped");
            }
        }
        Some(Kind::Push(p)) => {
            bump(&metrics.pushes);
            match p.target {
                Some(push::Target::User(uid)) => {
                    let _ = serve.gate.push(&uid, p.payload);
                }
                Some(push::Target::Users(list)) => {
                    for uid in &list.uids {
                        let _ = serve.gate.push(uid, p.payload.clone());
                    }
                }
                Some(push::Target::All(_)) => {
                    let reached = serve.gate.push_all(p.payload);
                    debug!(reached, "push to all users");
                }
                None => debug!("push without a target: ignored"),
            }
        }
        Some(Kind::Kick(kick)) => {
            bump(&metrics.kicks);
            let subid = if kick.subid.is_empty() {
                serve.shared.sessions.subid(&kick.uid)
            } else {
                Some(kick.subid)
            };
            let Some(subid) = subid else {
                debug!(uid = %String::from_utf8_lossy(&kick.uid), "kick of a user without a session: ignored");
                return;
            };
            info!(uid = %String::from_utf8_lossy(&kick.uid), reason = %kick.reason, "service kicks a user");
            let gate = serve.gate.clone();
            // `kick` waits for the connection to close: not on the reader.
            tokio::spawn(async move {
                gate.kick(&kick.uid, &subid, kick.reason).await;
            });
        }
        Some(Kind::Logout(logout)) => {
            debug!(uid = %String::from_utf8_lossy(&logout.uid), "service logs a user out");
            serve.shared.sessions.logout(&logout.uid, &logout.subid);
        }
        Some(Kind::Ping(ping)) => {
            link.send(Pong::answer(&ping).into());
        }
        Some(Kind::Pong(_)) => {}
        Some(Kind::Goodbye(goodbye)) => {
            info!(reason = %goodbye.reason, "service says goodbye: no new work goes to it");
            link.goodbye.store(true, Ordering::Release);
            serve.shared.registry.touch();
        }
        Some(Kind::Register(_)) => warn!("second registration on a link: ignored"),
        // A frame kind newer than this gate: additive changes keep the
        // protocol version, so skip it.
        None => debug!("frame of an unknown kind: ignored"),
    }
}

/// Writes what accumulates in the link's buffer, one `write` per batch.
async fn write_loop(link: Arc<Link>, mut write: OwnedWriteHalf) -> io::Result<()> {
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

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
