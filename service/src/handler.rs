//! What a service implements: the [`Handler`] trait and the values it is
//! handed.
//!
//! The library owns the link (registration, heartbeats, reconnects,
//! concurrency); a handler only sees requests, session events and, for an
//! `auth` service, credential checks. Its methods return `impl Future + Send`
//! so an implementation can simply be an `async fn`, and so the library can
//! move a request that has to wait to a task of its own.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::gate::{GateHandle, Gates};

/// The game logic of a service.
///
/// Requests run concurrently, up to [`Config::max_in_flight`](crate::Config)
/// at once across all gates; beyond that the gate gets an error answer at
/// once. The library polls a request's future once as soon as the request
/// is read, on the link's reader: if it is done (an echo, a lookup in
/// memory) the answer goes out with no task spawned; if it has to wait, it
/// continues on its own task, so a slow request does not hold up the
/// others. So, as everywhere in async code, do not block the thread in a
/// handler (long computations belong in `tokio::task::spawn_blocking`):
/// before its first `.await` a handler runs on the reader and would hold up
/// the link. Session events of one gate are delivered one at a time, in
/// the order the gate sent them.
pub trait Handler: Send + Sync + 'static {
    /// Answers one client request. `Ok(body)` reaches the client as a
    /// response with ok byte 1; `Err(reason)` as an error response (ok byte
    /// 0), with `reason` in the gate's log.
    ///
    /// If the handler panics the client gets an error response too.
    fn request(
        &self,
        ctx: Context,
        req: Request,
    ) -> impl Future<Output = Result<Bytes, String>> + Send;

    /// A user's session changed. Default: ignored.
    ///
    /// Events reach an instance for the users bound to it in agent mode, and
    /// for every user when it registered with
    /// [`Config::all_session_events`](crate::Config).
    fn session(&self, ctx: Context, event: SessionEvent) -> impl Future<Output = ()> + Send {
        let _ = (ctx, event);
        async {}
    }

    /// Checks credentials for the login server (only a service registered
    /// as `auth` is asked). Default: deny.
    fn auth(&self, ctx: Context, req: AuthRequest) -> impl Future<Output = AuthDecision> + Send {
        let _ = (ctx, req);
        async { AuthDecision::Deny("this service does not check credentials".into()) }
    }
}

/// Where a call came from and how to talk back.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) request_id: u64,
    pub(crate) deadline: Option<Instant>,
    /// Shared by every call of a link: one reference count per call.
    pub(crate) handles: Arc<Handles>,
}

/// The gates a [`Context`] reaches.
#[derive(Debug)]
pub(crate) struct Handles {
    pub(crate) gate: GateHandle,
    pub(crate) gates: Gates,
}

impl Context {
    /// The gate's id of the request or auth request being answered (0 for a
    /// session event). For logs; the library matches the answer itself.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// When the gate stops waiting for the answer, if it said. Work past it
    /// is wasted (the client already got an error), so a long handler can
    /// check it or use `tokio::time::timeout_at`.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The gate this call came from (to push to or kick the caller's user).
    pub fn gate(&self) -> &GateHandle {
        &self.handles.gate
    }

    /// Every gate of the service (to reach users on any gate).
    pub fn gates(&self) -> &Gates {
        &self.handles.gates
    }
}

/// A client request as the gate delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The user's id (skynet uids are byte strings; usually UTF-8).
    pub uid: Bytes,
    /// The session id the gate allocated at login.
    pub subid: Bytes,
    /// Route mode: `service.method` from the client's route envelope.
    /// Agent mode: empty.
    pub route: String,
    /// Route mode: the envelope's body. Agent mode: the client's payload.
    pub payload: Bytes,
}

/// A change of a user's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    /// The user.
    pub uid: Bytes,
    /// The session (a new login gets a new subid).
    pub subid: Bytes,
    /// What happened.
    pub kind: SessionKind,
    /// Why, for [`SessionKind::Logout`] and [`SessionKind::Kicked`].
    pub reason: String,
}

/// What happened to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionKind {
    /// The user logged in (a new session).
    Login,
    /// The user's connection closed; the gate waits for a reconnect.
    Away,
    /// The user reconnected.
    Back,
    /// The session ended without a kick (logout, reconnect window expired,
    /// gate shutdown).
    Logout,
    /// The session was ended by a kick.
    Kicked,
}

impl SessionKind {
    /// `None` for unspecified or unknown values (a newer gate's new kind),
    /// which the library skips.
    pub(crate) fn from_proto(kind: proto::backend::SessionEventKind) -> Option<Self> {
        use proto::backend::SessionEventKind as K;
        match kind {
            K::Unspecified => None,
            K::Login => Some(SessionKind::Login),
            K::Away => Some(SessionKind::Away),
            K::Back => Some(SessionKind::Back),
            K::Logout => Some(SessionKind::Logout),
            K::Kicked => Some(SessionKind::Kicked),
        }
    }

    /// Whether the session is over (the user will not come back with it).
    pub fn is_end(self) -> bool {
        matches!(self, SessionKind::Logout | SessionKind::Kicked)
    }
}

/// The login server's credential check (token `user@server:password`).
#[derive(Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The user name from the token.
    pub user: Bytes,
    /// The gate (server name) the client asked for.
    pub server: Bytes,
    /// The password from the token.
    pub password: Bytes,
    /// The client's address ("ip:port").
    pub peer_addr: String,
}

// By hand, so a password never lands in a log line through `{:?}`.
impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("user", &self.user)
            .field("server", &self.server)
            .field("password", &"<redacted>")
            .field("peer_addr", &self.peer_addr)
            .finish()
    }
}

/// An auth service's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthDecision {
    /// Log the user in with this uid (empty: the request's user name).
    Allow(Bytes),
    /// Refuse (the client sees 401); the reason goes to the login log.
    Deny(String),
}

/// A shared handler is a handler, so a service can keep an `Arc` to its
/// state (for a timer task, or a test) and still hand it to the library.
impl<H: Handler> Handler for std::sync::Arc<H> {
    fn request(
        &self,
        ctx: Context,
        req: Request,
    ) -> impl Future<Output = Result<Bytes, String>> + Send {
        (**self).request(ctx, req)
    }

    fn session(&self, ctx: Context, event: SessionEvent) -> impl Future<Output = ()> + Send {
        (**self).session(ctx, event)
    }

    fn auth(&self, ctx: Context, req: AuthRequest) -> impl Future<Output = AuthDecision> + Send {
        (**self).auth(ctx, req)
    }
}

/// A [`Handler`] made of a closure answering requests (session events and
/// auth keep their defaults). See [`handler_fn`].
pub struct FnHandler<F>(F);

impl<F> fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnHandler")
    }
}

/// Turns `async |ctx, req| -> Result<Bytes, String>` into a [`Handler`],
/// for services that only answer requests.
///
/// ```
/// use service::{handler_fn, Context, Request};
///
/// let echo = handler_fn(|_ctx: Context, req: Request| async move { Ok(req.payload) });
/// # let _ = echo;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Context, Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, String>> + Send + 'static,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Context, Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, String>> + Send + 'static,
{
    fn request(
        &self,
        ctx: Context,
        req: Request,
    ) -> impl Future<Output = Result<Bytes, String>> + Send {
        (self.0)(ctx, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_request_debug_hides_the_password() {
        let req = AuthRequest {
            user: Bytes::from_static(b"hello"),
            server: Bytes::from_static(b"sample"),
            password: Bytes::from_static(b"hunter2"),
            peer_addr: "127.0.0.1:1".into(),
        };
        let shown = format!("{req:?}");
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn unknown_session_kinds_are_skipped() {
        use proto::backend::SessionEventKind as K;
        assert_eq!(SessionKind::from_proto(K::Unspecified), None);
        assert_eq!(
            SessionKind::from_proto(K::Kicked),
            Some(SessionKind::Kicked)
        );
        assert!(SessionKind::Logout.is_end());
        assert!(!SessionKind::Away.is_end());
    }
}
