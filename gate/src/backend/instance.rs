//! One registered service instance: its link's output buffer, the requests
//! in flight with their deadlines, and the calls the rest of the gate makes
//! on it (requests, events, auth checks). The task that reads and writes
//! the link is `backend::serve`.
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
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proto::RequestRef;
use proto::backend::{
    AuthReply, AuthRequest, GateFrame, Goodbye, Register, Response, auth_reply, response,
};
use proto::framing::{FrameError, GateCodec};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::hash::instance_hash;
use super::inflight::Inflight;
use super::metrics::{Metrics, bump};
use crate::agent::{Completer, RequestError};
use crate::config::BackendConfig;
use crate::logging::esc;

/// Auth request ids have this bit set, so they never collide with the
/// consecutive request ids of the ring.
const AUTH_ID_BIT: u64 = 1 << 63;

/// More expired requests than this in one sweep are logged as one line.
const LOG_EACH_EXPIRED: usize = 8;

/// An auth service's answer, or `None` for a reply with neither result.
pub(crate) type AuthVerdict = Option<auth_reply::Result>;

/// Most answers an [`Answers`] batch holds before they are delivered.
pub(crate) const ANSWERS_PER_BATCH: usize = 64;

/// Answers read from a link together, delivered by
/// [`Instance::answer_all`] with one lock of the link's state for all.
#[derive(Default)]
pub(crate) struct Answers {
    batch: Vec<(Response, Option<(Instant, Pending)>)>,
}

impl Answers {
    /// Adds an answer; `true` when the batch is full and must be
    /// delivered now.
    pub(crate) fn push(&mut self, response: Response) -> bool {
        self.batch.push((response, None));
        self.batch.len() >= ANSWERS_PER_BATCH
    }
}

/// A request waiting for its answer.
pub(crate) struct Pending {
    completer: Completer,
}

pub(crate) struct LinkState {
    codec: GateCodec,
    /// Encoded frames the writer has not taken yet.
    pub(crate) out: BytesMut,
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

    /// [`push`](Self::push) for a request, written from borrowed fields.
    fn push_request(&mut self, request: &RequestRef<'_>) -> Result<bool, FrameError> {
        let was_empty = self.out.is_empty();
        self.codec.encode_request(request, &mut self.out)?;
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
pub(crate) struct Instance {
    /// Unique per gate process (in the ack and every log line).
    pub(crate) id: u64,
    pub(crate) service: String,
    pub(crate) instance: String,
    /// Routes served in route mode; empty: every route of `service`.
    pub(crate) routes: Vec<String>,
    pub(crate) all_events: bool,
    /// [`super::registry::instance_hash`] of this instance.
    pub(crate) hash: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) limits: Limits,
    pub(crate) deadline_ms: u32,
    /// The service's own bound on requests at once (0: none stated).
    pub(crate) max_in_flight: usize,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) closed: AtomicBool,
    /// The service said goodbye: no new work is routed to it.
    pub(crate) goodbye: AtomicBool,
    /// Asks the link's task to close (a newer link of the same instance).
    pub(crate) stop: CancellationToken,
    pub(crate) state: Mutex<LinkState>,
    pub(crate) writer_wake: Notify,
    pub(crate) timer_wake: Notify,
    /// Tells the writer to close the socket once the buffer is written.
    pub(crate) finishing: AtomicBool,
    /// The gate said goodbye on this link already.
    pub(crate) said_goodbye: AtomicBool,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.id)
            .field("service", &self.service)
            .field("instance", &self.instance)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Instance {
    pub(crate) fn new(
        id: u64,
        register: Register,
        peer: SocketAddr,
        cfg: &BackendConfig,
        metrics: Arc<Metrics>,
    ) -> Instance {
        let limits = Limits {
            request_timeout: cfg.request_timeout,
            queue_bytes: cfg.send_queue_bytes,
            max_frame_len: cfg.max_frame_len,
        };
        Instance {
            id,
            hash: instance_hash(&register.service, &register.instance_id),
            service: register.service,
            instance: register.instance_id,
            routes: register.routes,
            max_in_flight: usize::try_from(register.max_in_flight).unwrap_or(usize::MAX),
            all_events: register.all_session_events,
            peer,
            deadline_ms: u32::try_from(cfg.request_timeout.as_millis()).unwrap_or(u32::MAX),
            limits,
            metrics,
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, LinkState> {
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
        let deadline = crate::clock::now() + self.limits.request_timeout;
        let mut st = self.lock();
        if !st.open {
            drop(st);
            completer.complete(Err(RequestError::LinkLost {
                instance: self.name(),
            }));
            return;
        }
        if st.out.len() >= self.limits.queue_bytes {
            drop(st);
            bump(&self.metrics.congested);
            debug!(link = self.id, "send queue full: request refused");
            completer.complete(Err(RequestError::Congested {
                instance: self.name(),
            }));
            return;
        }
        if self.max_in_flight > 0 && st.inflight.waiting() >= self.max_in_flight {
            drop(st);
            bump(&self.metrics.congested);
            completer.complete(Err(RequestError::Congested {
                instance: self.name(),
            }));
            return;
        }
        let id = st.inflight.next_id();
        let frame = RequestRef {
            request_id: id,
            uid,
            subid,
            route,
            payload: &payload,
            deadline_ms: self.deadline_ms,
        };
        match st.push_request(&frame) {
            Ok(wake_writer) => {
                let wake_timer = st.inflight.waiting() == 0;
                st.inflight.push(deadline, Pending { completer });
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
                warn!(link = self.id, %err, "cannot encode a request");
                completer.complete(Err(RequestError::LinkLost {
                    instance: self.name(),
                }));
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

    /// Matches every answer in `answers` to its request under one lock of
    /// the link's state, then completes them in the order they came, and
    /// empties `answers`. Returns how many were answered and how many came
    /// too late (the client already got an error) or never had a request.
    pub(crate) fn answer_all(&self, answers: &mut Answers) -> (u64, u64) {
        if answers.batch.is_empty() {
            return (0, 0);
        }
        {
            let mut st = self.lock();
            for (response, taken) in &mut answers.batch {
                *taken = st.inflight.take_with_deadline(response.request_id);
            }
        }
        let now = crate::clock::now();
        let (mut answered, mut late) = (0, 0);
        let results = answers.batch.drain(..).filter_map(|(response, taken)| {
            let Some((deadline, pending)) = taken else {
                late += 1;
                return None;
            };
            answered += 1;
            // Every request of a link has the same timeout: sent at
            // deadline - timeout.
            let sent = deadline - self.limits.request_timeout;
            let latency = now.saturating_duration_since(sent);
            self.metrics.latency.observe(latency.as_secs_f64());
            let result = match response.result {
                Some(response::Result::Ok(body)) => Ok(body),
                Some(response::Result::Error(reason)) => {
                    debug!(link = self.id, request_id = response.request_id, reason = %esc(reason.as_bytes()), "service answered with an error");
                    Err(RequestError::Handler(reason))
                }
                None => Err(RequestError::Handler(
                    "the service's answer has no result".to_owned(),
                )),
            };
            Some((pending.completer, result))
        });
        Completer::complete_all(results);
        (answered, late)
    }

    pub(crate) fn auth_reply(&self, reply: AuthReply) -> bool {
        let waiter = self.lock().auths.remove(&reply.request_id);
        match waiter {
            // Err: the login gave up meanwhile.
            Some(tx) => tx.send(reply.result).is_ok(),
            None => false,
        }
    }

    /// Fails every request whose deadline passed; returns the deadline of
    /// the next one, if any.
    pub(crate) fn sweep(&self, now: Instant) -> Option<Instant> {
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
            for (id, pending) in expired {
                if count <= LOG_EACH_EXPIRED {
                    warn!(
                        link = self.id,
                        service = %self.name(),
                        request_id = id,
                        uid = %esc(pending.completer.uid()),
                        session = pending.completer.number(),
                        timeout_ms = self.limits.request_timeout.as_millis() as u64,
                        "request passed its deadline: answered with an error"
                    );
                }
                pending.completer.complete(Err(RequestError::Timeout));
            }
        }
        next
    }

    /// Stops all new work and fails everything in flight. Idempotent.
    pub(crate) fn shut(&self, why: &str) -> usize {
        self.closed.store(true, Ordering::Release);
        let (pending, auths) = {
            let mut st = self.lock();
            st.open = false;
            (st.inflight.drain(), std::mem::take(&mut st.auths))
        };
        // Dropping the senders fails the waiting logins (`Unavailable`).
        drop(auths);
        debug!(link = self.id, %why, "failing the link's requests");
        let failed = pending.len();
        // Counted first, so whoever sees an answer also sees the count.
        self.metrics
            .failed_on_close
            .fetch_add(failed as u64, Ordering::Relaxed);
        for pending in pending {
            pending.completer.complete(Err(RequestError::LinkLost {
                instance: self.name(),
            }));
        }
        failed
    }
}
