//! How requests reach the game logic: the [`Agent`] trait, the per-user
//! [`SessionCtx`] handle, and the built-in [`EchoAgent`].
//!
//! The gate owns connections, authentication and the response cache; an
//! agent only answers requests and hears about session events. The trait
//! is built for two very different agents:
//!
//! * **inline** agents (the echo agent, anything that can answer at once)
//!   return [`Dispatch::Ready`] from [`Agent::request`]. The gate calls them
//!   on the connection's own task, between reading the request and writing
//!   the response: no task, no channel, no allocation beyond the response.
//! * **asynchronous** agents (a backend over RPC) call
//!   [`AgentRequest::defer`], return [`Dispatch::Pending`], and later answer
//!   through the [`Completer`] from any task. The response then follows
//!   skynet's cache rules like any other: it goes to the user's current
//!   connection, or waits in the cache for a re-send.
//!
//! [`SessionCtx`] is a cheap handle (one `Arc`) on one logged-in session: an
//! agent may keep it (e.g. in a table keyed by uid) to push to the user
//! ([`SessionCtx::push`]) or end the session later ([`SessionCtx::logout`],
//! [`SessionCtx::kick`]).
//!
//! Calls into the agent happen without any gate lock held, so an agent may
//! call back into the gate (`logout` from inside `request`, or `complete` a
//! completer from inside `request`). [`Agent::event`] may therefore also be
//! called re-entrantly from such a call.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use gate_core::End;
pub use gate_core::session::SessionEvent;
use gate_core::session::{ExecId, PushRefused};

/// The game logic behind a gate.
pub trait Agent: Send + Sync + 'static {
    /// A request of an authenticated user: answer now with
    /// [`Dispatch::Ready`], or defer it ([`AgentRequest::defer`]) and answer
    /// later. An `Err` becomes an error response (`ok = 0`, empty content,
    /// as skynet's raising handler); the error is only logged.
    ///
    /// Must not block: it runs on the connection's task.
    fn request(&self, ctx: &SessionCtx, req: AgentRequest) -> Dispatch;

    /// A session event (login, connection back, away, end). The default
    /// ignores it. Must not block.
    fn event(&self, ctx: &SessionCtx, event: SessionEvent) {
        let _ = (ctx, event);
    }
}

/// Why a request got an error response instead of an answer. The client
/// only sees the error response (`00 ‖ number`); this goes to the log and
/// the metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The handler failed (skynet: the agent raised), with its message.
    #[error("handler failed: {0}")]
    Handler(String),
    /// In route mode, the payload is not a route envelope or its route is
    /// malformed.
    #[error("not a valid route envelope: {0}")]
    BadEnvelope(String),
    /// No registered service instance serves what the request needs.
    #[error("no instance of service {service:?} serves it")]
    NoInstance {
        /// The service that was needed.
        service: String,
    },
    /// The instance is at its stated limit, or does not read its link.
    #[error("service instance {instance} is congested")]
    Congested {
        /// `service/instance`.
        instance: String,
    },
    /// The instance's link closed before it answered.
    #[error("service instance {instance} went away")]
    LinkLost {
        /// `service/instance`.
        instance: String,
    },
    /// No answer within the request deadline.
    #[error("no answer within the request deadline")]
    Timeout,
    /// The agent dropped the request's completer without answering.
    #[error("request dropped by the agent")]
    Dropped,
}

/// What [`Agent::request`] did with a request.
#[derive(Debug)]
pub enum Dispatch {
    /// The answer: `Ok(content)` or an error (an error response).
    Ready(Result<Bytes, RequestError>),
    /// The answer will come through the [`Completer`] returned by
    /// [`AgentRequest::defer`]; only that call can make this value.
    Pending(Deferred),
}

/// Proof that a request was deferred (see [`Dispatch::Pending`]).
#[derive(Debug)]
pub struct Deferred(());

/// What a [`SessionCtx`] can do with its session; the gate's session table
/// implements it. (A trait, so that this module does not depend on the
/// gate's internals, which depend on it.)
pub(crate) trait SessionHandle: Send + Sync + 'static {
    fn uid(&self) -> &Bytes;
    fn subid(&self) -> &Bytes;
    fn username(&self) -> &Bytes;
    fn is_active(&self) -> bool;
    fn end(&self, reason: End);
    fn push(&self, payload: Bytes) -> Result<u32, PushRefused>;
    /// Answers requests of the session, in order, under one lock of it:
    /// `(number, exec, result)` each.
    fn complete_many(&self, answers: &mut dyn Iterator<Item = Answer>);
    /// The agent's memo of this session.
    fn agent_memo(&self) -> &AgentMemo;
}

/// One value the agent keeps with a session for its own use, so its
/// request path need not look the session up in a table of its own (the
/// backend keeps the instance the user is bound to). Dropped with the
/// session.
#[derive(Default)]
pub(crate) struct AgentMemo(Mutex<Option<Arc<dyn Any + Send + Sync>>>);

impl fmt::Debug for AgentMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentMemo").finish_non_exhaustive()
    }
}

impl AgentMemo {
    /// The value kept, if there is one and it is a `T`.
    pub(crate) fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let kept = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        kept.downcast().ok()
    }

    /// Keeps `value` (or nothing) instead of what was kept.
    pub(crate) fn set(&self, value: Option<Arc<dyn Any + Send + Sync>>) {
        let old = std::mem::replace(
            &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner),
            value,
        );
        // Dropped outside the lock.
        drop(old);
    }
}

/// One answer for [`SessionHandle::complete_many`]: request number,
/// execution, result.
pub(crate) type Answer = (u32, ExecId, Result<Bytes, RequestError>);

/// A request handed to an agent.
pub struct AgentRequest {
    /// The client's request number (echoed in the response).
    pub number: u32,
    /// The request content. It shares the reading thread's buffer: copy it
    /// ([`Bytes::copy_from_slice`]) to keep it after `request` returns
    /// ([`AgentRequest::defer`] does).
    pub content: Bytes,
    exec: ExecId,
}

impl AgentRequest {
    pub(crate) fn new(number: u32, content: Bytes, exec: ExecId) -> AgentRequest {
        AgentRequest {
            number,
            content,
            exec,
        }
    }

    /// Answers later: returns the content (copied out of the read buffer,
    /// so keeping it pins nothing else), the completer to answer with, and
    /// the [`Dispatch::Pending`] to return from [`Agent::request`].
    pub fn defer(self, ctx: &SessionCtx) -> (Bytes, Completer, Dispatch) {
        let (content, completer, pending) = self.defer_shared(ctx);
        (Bytes::copy_from_slice(&content), completer, pending)
    }

    /// [`AgentRequest::defer`] without the copy: the content still shares
    /// the reading thread's buffer, so it is for an agent that is done with
    /// it before `request` returns (the backend link encodes it into its
    /// send buffer). Kept longer, it would keep that whole buffer alive.
    pub fn defer_shared(self, ctx: &SessionCtx) -> (Bytes, Completer, Dispatch) {
        let completer = Completer {
            handle: Some(Arc::clone(&ctx.handle)),
            number: self.number,
            exec: self.exec,
        };
        (self.content, completer, Dispatch::Pending(Deferred(())))
    }
}

impl fmt::Debug for AgentRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentRequest")
            .field("number", &self.number)
            .field("content_len", &self.content.len())
            .finish()
    }
}

/// Answers one deferred request, from any task or thread.
///
/// Dropping it without calling [`Completer::complete`] answers the request
/// with an error response ([`RequestError::Dropped`]), so a backend that
/// loses a request (crash, dropped future) never leaves the client waiting.
pub struct Completer {
    handle: Option<Arc<dyn SessionHandle>>,
    number: u32,
    exec: ExecId,
}

impl Completer {
    /// The number of the request being answered.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The uid of the session the request came from (empty once
    /// answered).
    pub fn uid(&self) -> &[u8] {
        self.handle.as_ref().map_or(&[], |h| h.uid())
    }

    /// Delivers the answer: `Ok(content)` or an error (error response).
    /// If the session ended meanwhile, or the request was orphaned by a
    /// "Conflict session", the answer is dropped (as skynet does).
    pub fn complete(mut self, result: Result<Bytes, RequestError>) {
        if let Some(handle) = self.handle.take() {
            handle.complete_many(&mut std::iter::once((self.number, self.exec, result)));
        }
    }

    /// Delivers several answers, in order, as [`Completer::complete`] would
    /// one by one; consecutive answers of one session are made under one
    /// lock of it (a service answers a player's pipelined requests
    /// together).
    pub(crate) fn complete_all(
        answers: impl IntoIterator<Item = (Completer, Result<Bytes, RequestError>)>,
    ) {
        let mut answers = answers.into_iter().peekable();
        while let Some((mut first, result)) = answers.next() {
            let Some(handle) = first.handle.take() else {
                continue;
            };
            let same = |c: &Completer| {
                c.handle
                    .as_ref()
                    .is_some_and(|h| std::ptr::addr_eq(Arc::as_ptr(h), Arc::as_ptr(&handle)))
            };
            let rest = std::iter::from_fn(|| {
                let (mut next, result) = answers.next_if(|(c, _)| same(c))?;
                next.handle = None;
                Some((next.number, next.exec, result))
            });
            handle.complete_many(
                &mut std::iter::once((first.number, first.exec, result)).chain(rest),
            );
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.complete_many(&mut std::iter::once((
                self.number,
                self.exec,
                Err(RequestError::Dropped),
            )));
        }
    }
}

impl fmt::Debug for Completer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completer")
            .field("number", &self.number)
            .finish()
    }
}

/// A handle on one logged-in session (cheap to clone: one `Arc`).
#[derive(Clone)]
pub struct SessionCtx {
    pub(crate) handle: Arc<dyn SessionHandle>,
}

impl SessionCtx {
    pub(crate) fn new(handle: Arc<dyn SessionHandle>) -> SessionCtx {
        SessionCtx { handle }
    }

    /// The user id the login server gave.
    pub fn uid(&self) -> &Bytes {
        self.handle.uid()
    }

    /// The subid the gate allocated (decimal text).
    pub fn subid(&self) -> &Bytes {
        self.handle.subid()
    }

    /// The gate username `b64(uid)@b64(server)#b64(subid)`.
    pub fn username(&self) -> &Bytes {
        self.handle.username()
    }

    /// The agent's memo of the session.
    pub(crate) fn memo(&self) -> &AgentMemo {
        self.handle.agent_memo()
    }

    /// Whether the session still exists.
    pub fn is_active(&self) -> bool {
        self.handle.is_active()
    }

    /// Ends the session from the agent's side (skynet's
    /// `msgserver.logout`): the user is unregistered, its connection closed,
    /// the login server told ([`End::Logout`]). Does nothing if the
    /// session already ended.
    pub fn logout(&self) {
        self.handle.end(End::Logout);
    }

    /// Ends the session with [`End::Kicked`] and `reason`. A client
    /// that opted in to the extensions is sent the reason in a final kick
    /// package before the close; a plain client is just closed (skynet's
    /// logout).
    pub fn kick(&self, reason: impl Into<String>) {
        self.handle.end(End::Kicked(reason.into()));
    }

    /// Pushes `payload` to this session: the same as
    /// [`MsgGate::push`](crate::players::MsgGate::push) for its uid, without
    /// the lookup. Returns the push's sequence number. Never blocks; may be
    /// called from inside [`Agent::request`].
    pub fn push(&self, payload: Bytes) -> Result<u32, PushRefused> {
        self.handle.push(payload)
    }
}

impl fmt::Debug for SessionCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCtx")
            .field("uid", &crate::logging::esc(self.uid()).to_string())
            .field("subid", &crate::logging::esc(self.subid()).to_string())
            .finish()
    }
}

/// The built-in agent: answers every request with its own content, inline
/// (skynet's example `msgagent` without its 0.1 s sleep).
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoAgent;

impl Agent for EchoAgent {
    fn request(&self, _ctx: &SessionCtx, req: AgentRequest) -> Dispatch {
        Dispatch::Ready(Ok(req.content))
    }
}
