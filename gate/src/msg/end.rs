//! Why a connection ended: for the log line, the metrics, and how it is
//! closed.

use std::io;

/// Why a connection ended (for the log line and the close procedure).
#[derive(Debug)]
pub(super) enum End {
    /// The client closed (or reset).
    PeerClosed,
    /// The client shut down its write side and everything it asked was
    /// answered (or the grace for that passed).
    HalfClosed,
    /// A socket error.
    Io(io::ErrorKind),
    /// No complete handshake package within the deadline.
    HandshakeTimeout,
    /// A request package shorter than its 4-byte session (spec §5.6).
    InvalidPackage,
    /// skynet's "Conflict session" (spec §5.5).
    Conflict,
    /// More requests in flight for the user than allowed.
    TooManyInflight,
    /// The send queue exceeded its byte limit: the client does not read.
    SlowReader,
    /// Nothing received within the idle timeout.
    IdleTimeout,
    /// A newer connection of the user completed its handshake.
    Superseded,
    /// The session ended (logout, kick, expiry).
    SessionEnded,
    /// Gate shutdown, after the in-flight requests were answered.
    Shutdown,
    /// Gate shutdown, grace period over.
    ShutdownNow,
    /// A WebSocket client broke the protocol or the mapping (a text
    /// message, one over the package limit, a bad frame): the close code
    /// it is sent.
    WebSocket(u16),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::PeerClosed => f.write_str("closed by the client"),
            End::HalfClosed => f.write_str("client shut down its side; answers delivered"),
            End::Io(kind) => write!(f, "socket error: {kind}"),
            End::HandshakeTimeout => f.write_str("handshake deadline passed"),
            End::InvalidPackage => f.write_str("invalid package"),
            End::Conflict => f.write_str("conflict session"),
            End::TooManyInflight => f.write_str("too many requests in flight"),
            End::SlowReader => f.write_str("send queue full (client not reading)"),
            End::IdleTimeout => f.write_str("idle timeout (client sent nothing)"),
            End::Superseded => f.write_str("superseded by a newer connection"),
            End::SessionEnded => f.write_str("session ended"),
            End::Shutdown => f.write_str("gate shutdown"),
            End::ShutdownNow => f.write_str("gate shutdown (grace over)"),
            End::WebSocket(code) => {
                write!(f, "WebSocket protocol or mapping broken (close {code})")
            }
        }
    }
}

impl End {
    /// Whether the close should flush what is queued and wait for the
    /// peer's FIN, rather than just drop the socket.
    pub(super) fn graceful(&self) -> bool {
        !matches!(
            self,
            End::PeerClosed | End::Io(_) | End::SlowReader | End::ShutdownNow
        )
    }

    /// The close code a WebSocket connection that ended this way is sent
    /// (`docs/PROTOCOL.md` §9.3).
    pub(super) fn close_code(&self) -> u16 {
        match self {
            End::WebSocket(code) => *code,
            End::InvalidPackage | End::Conflict | End::TooManyInflight | End::SlowReader => 1008,
            End::Shutdown | End::ShutdownNow => 1001,
            _ => 1000,
        }
    }
}
