//! [`End`]: why a connection or a session ended, in one type.
//!
//! Everything that reports an ending takes its words from here: the kick
//! text an opted-in client is sent ([`End::kick_text`]), the WebSocket
//! close code ([`End::close_code`]), whether the close flushes and lingers
//! ([`End::graceful`]), the metric label ([`End::label`]) and the log text
//! (`Display`). Nothing anywhere compares kick texts to find out what
//! happened.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kick text of [`End::Relogin`]: what a client whose uid logged in
/// again is told.
pub const RELOGIN_TEXT: &str = "logged in again";

/// Why a connection or a session ended.
///
/// The first group ends a **session** (and with it its connection, if it
/// has one); the rest end only a **connection**, after which the session is
/// away and may reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum End {
    /// Kicked by a service or an operator, with the reason the client is
    /// told.
    Kicked(String),
    /// The uid logged in again (here or on another gate).
    Relogin,
    /// The agent (backend) logged the user out.
    Logout,
    /// Away longer than the reconnect window.
    Expired,
    /// The gate shut down; connections were let finish what they were
    /// asked first.
    Shutdown,
    /// The gate shut down and its grace was over: closed at once.
    ShutdownNow,

    /// The client closed (or reset) the connection.
    PeerClosed,
    /// The client shut down its write side; what it asked was answered (or
    /// the grace for that passed).
    HalfClosed,
    /// A socket error.
    Transport(TransportError),
    /// No complete handshake within the deadline.
    HandshakeTimeout,
    /// The handshake was refused with this status (`None`: closed without
    /// one, the gate is not taking connections).
    HandshakeRefused(Option<u16>),
    /// The client broke the protocol.
    Protocol(ProtocolError),
    /// skynet's "Conflict session": a request number sent again while its
    /// request runs.
    Conflict,
    /// More requests in flight for the user than allowed.
    TooManyInflight,
    /// Bytes queued for the client passed the send queue bound: it does
    /// not read.
    SlowReader,
    /// An opted-in client sent nothing within the idle timeout.
    IdleTimeout,
    /// A newer connection of the same session completed its handshake.
    Superseded,
    /// The gate process is being replaced by a new one (a live upgrade)
    /// and this connection cannot move to it (WebSocket, TLS): closed with
    /// 1012, the client reconnects with its next index, without a login.
    Upgrade,
    /// The connection moved to the new gate process of a live upgrade: the
    /// old one lets go of it without closing it.
    HandedOff,
}

/// How the client broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProtocolError {
    /// A request package shorter than its 4-byte number, or an empty
    /// package from a client that did not opt in to heartbeats.
    InvalidPackage,
    /// A WebSocket text message where the gate carries binary ones.
    TextMessage,
    /// A WebSocket message longer than a package can be.
    TooLarge,
    /// A WebSocket client sent control frames (pings, pongs) or frames
    /// that complete no message, beyond the budget between two data
    /// messages.
    ControlFlood,
    /// A broken WebSocket frame or handshake, with the close code the
    /// WebSocket layer chose.
    WebSocket(u16),
    /// A package on a sealed connection failed to open: altered, dropped,
    /// replayed or reordered on the way.
    BadSeal,
}

/// A socket error, as a plain value (no `io::Error` in the state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransportError {
    /// The connection was reset or aborted by the peer.
    Reset,
    /// A write would not go through (broken pipe, write of zero).
    Broken,
    /// Any other error.
    Other,
}

impl From<std::io::ErrorKind> for TransportError {
    fn from(kind: std::io::ErrorKind) -> TransportError {
        use std::io::ErrorKind as K;
        match kind {
            K::ConnectionReset | K::ConnectionAborted => TransportError::Reset,
            K::BrokenPipe | K::WriteZero | K::UnexpectedEof => TransportError::Broken,
            _ => TransportError::Other,
        }
    }
}

impl From<std::io::ErrorKind> for End {
    fn from(kind: std::io::ErrorKind) -> End {
        End::Transport(kind.into())
    }
}

impl From<ProtocolError> for End {
    fn from(e: ProtocolError) -> End {
        End::Protocol(e)
    }
}

impl End {
    /// Whether this ends the session (not only its connection).
    pub fn ends_session(&self) -> bool {
        matches!(
            self,
            End::Kicked(_)
                | End::Relogin
                | End::Logout
                | End::Expired
                | End::Shutdown
                | End::ShutdownNow
        )
    }

    /// The text an opted-in client is sent in its kick package when its
    /// session ends this way; `None` for endings that are not told.
    pub fn kick_text(&self) -> Option<&str> {
        match self {
            End::Kicked(reason) => Some(reason),
            End::Relogin => Some(RELOGIN_TEXT),
            End::Logout => Some("logout"),
            End::Expired => Some("expired"),
            End::Shutdown | End::ShutdownNow => Some("shutdown"),
            _ => None,
        }
    }

    /// Whether the close writes what is queued and waits a little for the
    /// client to close, rather than dropping the socket at once (nobody
    /// reads, the peer is gone, there is no time left, or a silent client
    /// is owed nothing).
    pub fn graceful(&self) -> bool {
        !matches!(
            self,
            End::PeerClosed
                | End::Transport(_)
                | End::SlowReader
                | End::ShutdownNow
                | End::HandshakeTimeout
                | End::HandedOff
        )
    }

    /// The close code a WebSocket connection that ended this way is sent
    /// (`docs/PROTOCOL.md` §9.3).
    pub fn close_code(&self) -> u16 {
        match self {
            End::Protocol(ProtocolError::WebSocket(code)) => *code,
            End::Protocol(ProtocolError::TextMessage) => 1003,
            End::Protocol(ProtocolError::TooLarge) => 1009,
            End::Protocol(ProtocolError::BadSeal) => 1007,
            End::Protocol(ProtocolError::InvalidPackage | ProtocolError::ControlFlood)
            | End::Conflict
            | End::TooManyInflight
            | End::SlowReader => 1008,
            End::Shutdown | End::ShutdownNow => 1001,
            End::Upgrade => 1012,
            _ => 1000,
        }
    }

    /// How strongly this ending claims a connection that is asked to close
    /// for several reasons at once: the strongest wins (a session that
    /// ended beats an idle timeout; running out of grace beats both).
    pub fn strength(&self) -> u8 {
        match self {
            End::ShutdownNow => 6,
            e if e.ends_session() => 5,
            End::SlowReader => 4,
            End::Superseded => 3,
            End::IdleTimeout => 2,
            _ => 1,
        }
    }

    /// The metric label of this ending: a bounded set, never a client's
    /// text (a kick's own reason stays in the logs).
    pub fn label(&self) -> &'static str {
        match self {
            End::Kicked(_) => "kicked",
            End::Relogin => "relogin",
            End::Logout => "logout",
            End::Expired => "expired",
            End::Shutdown | End::ShutdownNow => "shutdown",
            End::PeerClosed => "peer_closed",
            End::HalfClosed => "half_closed",
            End::Transport(_) => "transport",
            End::HandshakeTimeout => "handshake_timeout",
            End::HandshakeRefused(_) => "handshake_refused",
            End::Protocol(_) => "protocol",
            End::Conflict => "conflict",
            End::TooManyInflight => "inflight_limit",
            End::SlowReader => "slow_reader",
            End::IdleTimeout => "idle",
            End::Superseded => "superseded",
            End::Upgrade => "upgrade",
            End::HandedOff => "handed_off",
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Kicked(reason) => write!(f, "kicked: {}", reason.escape_debug()),
            End::Relogin => f.write_str("logged in again"),
            End::Logout => f.write_str("logged out"),
            End::Expired => f.write_str("reconnect window over"),
            End::Shutdown => f.write_str("gate shutdown"),
            End::ShutdownNow => f.write_str("gate shutdown (grace over)"),
            End::PeerClosed => f.write_str("closed by the client"),
            End::HalfClosed => f.write_str("client shut down its side; answers delivered"),
            End::Transport(e) => write!(f, "socket error ({e:?})"),
            End::HandshakeTimeout => f.write_str("handshake deadline passed"),
            End::HandshakeRefused(Some(code)) => write!(f, "handshake refused ({code})"),
            End::HandshakeRefused(None) => {
                f.write_str("handshake refused (not taking connections)")
            }
            End::Protocol(ProtocolError::InvalidPackage) => f.write_str("invalid package"),
            End::Protocol(ProtocolError::TextMessage) => f.write_str("text message (close 1003)"),
            End::Protocol(ProtocolError::TooLarge) => {
                f.write_str("message over the package limit (close 1009)")
            }
            End::Protocol(ProtocolError::ControlFlood) => {
                f.write_str("control frames without data beyond the budget (close 1008)")
            }
            End::Protocol(ProtocolError::WebSocket(code)) => {
                write!(f, "WebSocket protocol broken (close {code})")
            }
            End::Protocol(ProtocolError::BadSeal) => {
                f.write_str("a sealed package failed to open (close 1007)")
            }
            End::Conflict => f.write_str("conflict session"),
            End::TooManyInflight => f.write_str("too many requests in flight"),
            End::SlowReader => f.write_str("send queue full (client not reading)"),
            End::IdleTimeout => f.write_str("idle timeout (client sent nothing)"),
            End::Superseded => f.write_str("superseded by a newer connection"),
            End::Upgrade => f.write_str("gate upgrade: reconnect (close 1012)"),
            End::HandedOff => f.write_str("handed over to the new gate process"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_endings_carry_their_kick_text() {
        assert_eq!(End::Relogin.kick_text(), Some(RELOGIN_TEXT));
        assert_eq!(End::Kicked("bye".into()).kick_text(), Some("bye"));
        assert_eq!(End::IdleTimeout.kick_text(), None);
        assert!(End::Relogin.ends_session() && !End::Superseded.ends_session());
    }

    #[test]
    fn close_codes_and_strength() {
        assert_eq!(End::Protocol(ProtocolError::TooLarge).close_code(), 1009);
        assert_eq!(End::TooManyInflight.close_code(), 1008);
        assert_eq!(End::Shutdown.close_code(), 1001);
        assert_eq!(End::Logout.close_code(), 1000);
        assert!(End::ShutdownNow.strength() > End::Logout.strength());
        assert!(End::Logout.strength() > End::IdleTimeout.strength());
        assert!(!End::SlowReader.graceful() && End::Conflict.graceful());
    }

    #[test]
    fn a_hostile_kick_reason_stays_one_line() {
        let shown = End::Kicked("a\nstatus=200".into()).to_string();
        assert!(!shown.contains('\n'));
    }
}
