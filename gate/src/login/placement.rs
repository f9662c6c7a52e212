//! Placement: the calls between the login server and the message gates.
//!
//! The login server never touches a gate's session table directly: it goes
//! through [`GateLink`], and gates report sessions that ended through
//! [`LoginLink`]. In one process both are plain in-memory calls; a multi-node
//! deployment can put the same two traits on an RPC without touching the
//! protocol code on either side.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use loginproto::handshake::SessionSecret;

pub use gate_core::End;

/// A boxed future, so the traits stay object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A user the login server has authenticated and wants to place on a gate.
#[derive(Debug, Clone)]
pub struct LoginRequest {
    /// The gate (server name) the client asked for in its token.
    pub server: Bytes,
    /// The user id the authenticator settled on.
    pub uid: Bytes,
    /// The user name the client logged in with: the same as `uid` unless
    /// the authenticator mapped it. The client does not know a mapped uid,
    /// so it signs its gate handshakes with this name; the gate accepts
    /// either.
    pub user: Bytes,
    /// The key the client will sign its gate handshakes with.
    pub secret: SessionSecret,
}

/// Why a gate did not take a login. Every refusal is answered `403` on the
/// login line; the reason is for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefusal {
    /// No gate of that name is registered with the login server.
    #[error("no gate named {0:?}")]
    UnknownServer(String),
    /// The uid still has a session on that gate (the kick did not finish).
    #[error("user is still online")]
    AlreadyOnline,
    /// The gate is shutting down or at its session limit.
    #[error("gate unavailable: {0}")]
    Unavailable(String),
}

/// Why the login handler refused a login; [`crate::login::LoginServer`]
/// maps each to one status line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// Another login of the uid is in progress (multilogin off): `406`.
    #[error("another login of this uid is in progress")]
    InProgress,
    /// The gate did not take the login, or the old session would not go: `403`.
    #[error(transparent)]
    Refused(#[from] LoginRefusal),
    /// Nobody can be placed now: the session directory is unreachable
    /// (cluster mode): `503`.
    #[error("session directory unavailable: {0}")]
    Unavailable(String),
}

/// skynet's `login_handler`: decides where an authenticated user goes,
/// ends its previous session, and returns the new subid. One process uses
/// [`crate::login::LocalPlacer`] (an in-memory online table); a login node
/// of a cluster uses [`crate::cluster::ClusterPlacer`] (the Redis session
/// directory and control links to the gate nodes).
///
/// The login server runs the returned future to completion once it has
/// started, even if the client's dialogue is dropped meanwhile, so an
/// implementation never stops half-way between the gate's answer and its
/// own bookkeeping.
pub trait Placer: Send + Sync + 'static {
    /// Places `req` and returns the subid (decimal text).
    fn place(&self, req: LoginRequest) -> BoxFuture<'static, Result<Bytes, PlaceError>>;
}

/// The login server's handle on the gates.
pub trait GateLink: Send + Sync + 'static {
    /// Registers `req.uid` on gate `req.server` and returns the subid the gate
    /// allocated (its decimal text, as skynet's `login_handler` returns it).
    /// Refuses a server name that is not one of its gates': the online
    /// table keeps every name a login succeeded with, once, for as long as
    /// the process runs, so the names must be a fixed set, not whatever
    /// spellings clients send.
    fn login(&self, req: LoginRequest) -> BoxFuture<'_, Result<Bytes, LoginRefusal>>;

    /// Ends the session `(uid, subid)` on gate `server`, if it still exists,
    /// and resolves once it is gone (its connection closed, its agent told).
    fn kick(&self, server: Bytes, uid: Bytes, subid: Bytes, reason: End) -> BoxFuture<'_, ()>;

    /// Whether a gate named `server` exists. The login server asks before
    /// it kicks a user's old session, so a login naming an unknown server is
    /// refused (`403`) without logging the user out elsewhere, as skynet's
    /// `logind` checks the server first. Default: `true` (then
    /// [`GateLink::login`] refuses unknown names).
    fn has_server(&self, server: &[u8]) -> bool {
        let _ = server;
        true
    }
}

/// A gate's handle on the login server.
pub trait LoginLink: Send + Sync + 'static {
    /// Session `(uid, subid)` on gate `server` has ended. The login server
    /// must only forget the uid if `subid` is still the one it knows: a late
    /// report about an older session never removes a newer one.
    fn session_ended(&self, server: &[u8], uid: &[u8], subid: &[u8], reason: &End);
}
