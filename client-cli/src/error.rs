//! The one error type of the client library.
//!
//! Every failure a client can meet on the network is a variant here, with a
//! message a QA engineer can act on. Refusals by a server (a login status
//! other than 200, a handshake status other than `200 OK`) are variants of
//! their own so callers can tell "the server said no" from "the network
//! broke".

use std::io;
use std::time::Duration;

use codec::{FrameError, GateStatus, LineError, LoginStatus};
use loginproto::login::LoginError;

/// Everything that can go wrong while talking to a login server or a gate.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// A step did not finish in time.
    #[error("{what} timed out after {}", crate::text::duration(*.after))]
    Timeout {
        /// What was being waited for.
        what: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
    /// The login server answered with a status other than 200.
    #[error("login refused: {0} ({meaning})", meaning = crate::text::login_status_meaning(*.0))]
    LoginRefused(LoginStatus),
    /// The login dialogue failed on our side (a malformed server line, failed
    /// crypto).
    #[error("login failed: {0}")]
    Login(LoginError),
    /// The login server closed the connection before its status line.
    #[error("the login server closed the connection before sending a status line")]
    LoginClosed,
    /// The gate refused the handshake.
    #[error("handshake refused: {0} ({meaning})", meaning = crate::text::gate_status_meaning(*.0))]
    HandshakeRefused(GateStatus),
    /// The gate's handshake reply is not one of the five status texts.
    #[error("unexpected handshake reply {0}")]
    BadHandshakeReply(String),
    /// The gate closed the connection where an answer was expected.
    #[error("the gate closed the connection")]
    Closed,
    /// A package from the gate is too short to be a response.
    #[error("malformed response package of {0} bytes (a response has at least 5)")]
    MalformedResponse(usize),
    /// The gate's welcome package (its answer to the extension opt-in)
    /// does not parse.
    #[error("malformed welcome package from the gate: {0}")]
    BadWelcome(String),
    /// A request needs a gate connection and there is none.
    #[error("not connected to the gate")]
    NotConnected,
    /// A request needs a login and there is none.
    #[error("not logged in")]
    NotLoggedIn,
    /// Line framing failed (the login server sent an over-long line).
    #[error("login line: {0}")]
    Line(#[from] LineError),
    /// Package framing failed (a request too large for one package).
    #[error("package: {0}")]
    Frame(#[from] FrameError),
    /// Any other I/O error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<LoginError> for ClientError {
    fn from(err: LoginError) -> Self {
        match err {
            LoginError::Status(status) => ClientError::LoginRefused(status),
            other => ClientError::Login(other),
        }
    }
}

impl ClientError {
    /// The login status, when this is a login refusal.
    pub fn login_status(&self) -> Option<LoginStatus> {
        match self {
            ClientError::LoginRefused(status) => Some(*status),
            _ => None,
        }
    }

    /// The handshake status, when this is a handshake refusal.
    pub fn gate_status(&self) -> Option<GateStatus> {
        match self {
            ClientError::HandshakeRefused(status) => Some(*status),
            _ => None,
        }
    }
}
