//! Sans-IO state machines of the login dialogue, server and client side, for
//! both suites (skynet spec §4, x25519 in [`crate::modern`]).
//!
//! One type per state; each transition consumes the old state, so a state
//! cannot be used twice and a finished login cannot be resumed. Every
//! received line is passed **without** its LF (a CR stays, as skynet keeps
//! it); every output is complete line bytes **with** the LF, ready to write.
//! Randomness is passed in; nothing here reads a clock or the OS RNG.
//!
//! Server: [`ServerLogin::start`] → [`AwaitClientKey`] → [`AwaitProof`] →
//! [`AwaitToken`] → [`Authenticate`] → status line.
//! Client: [`ClientLogin::new`] → [`AwaitChallenge`] → [`AwaitServerKey`] →
//! [`AwaitStatus`] → [`LoginSuccess`].
//!
//! [`LoginError`] is the one error type of this layer, on both sides.

mod client;
mod server;

use std::fmt;
use std::str::FromStr;

use codec::status::LoginStatus;

use crate::modern::ModernError;
use crate::skynet::{CryptError, base64_encode_into};

pub use self::client::{
    AwaitChallenge, AwaitServerKey, AwaitStatus, ClientLogin, ClientRandom, LoginSuccess,
};
pub use self::server::{
    Authenticate, AwaitClientKey, AwaitProof, AwaitToken, KeyStep, LoginOutcome, QueueNotice,
    Rejected, ServerConfig, ServerLogin, ServerRandom, StaticKey, parse_queue_notice, queue_notice,
};

/// The crypt suite of one login, chosen by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Suite {
    /// skynet's 64-bit DH, hmac64 and DES (compatibility; weak).
    Skynet,
    /// X25519, HMAC-SHA256 and ChaCha20-Poly1305 (the default for new clients).
    #[default]
    X25519,
}

impl Suite {
    /// The name used in configuration and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Suite::Skynet => "skynet",
            Suite::X25519 => "x25519",
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Suite {
    type Err = LoginError;

    fn from_str(s: &str) -> Result<Suite, LoginError> {
        match s {
            "skynet" => Ok(Suite::Skynet),
            "x25519" => Ok(Suite::X25519),
            other => Err(LoginError::UnknownSuite(other.to_owned())),
        }
    }
}

/// The lines of the dialogue, to say which one an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Line {
    /// Line 1, S→C: `b64(challenge)`.
    Challenge,
    /// Line 2, C→S: `b64(client public key)`.
    ClientKey,
    /// Line 3, S→C: `b64(server public key)`.
    ServerKey,
    /// Line 4, C→S: `b64(proof)`.
    Proof,
    /// Line 5, C→S: `b64(encrypted token)`.
    Token,
    /// Line 6, S→C: the status line.
    Status,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Line::Challenge => "challenge line",
            Line::ClientKey => "client key line",
            Line::ServerKey => "server key line",
            Line::Proof => "proof line",
            Line::Token => "token line",
            Line::Status => "status line",
        })
    }
}

/// Everything that ends a login dialogue early, on either side.
///
/// On the server every variant becomes `401 Unauthorized` (skynet spec
/// §4.2); [`Rejected`] carries the bytes to send. On the client,
/// [`LoginError::Status`] is the server's refusal and the rest are
/// malformed server lines or failed crypto.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// A line is not valid (skynet) base64.
    #[error("{0} is not valid base64")]
    BadBase64(Line),
    /// A key line decoded to a length that selects no suite (server), or
    /// that does not fit the suite in use (client).
    #[error("{line} decoded to {len} bytes")]
    KeyLength {
        /// Which line.
        line: Line,
        /// The decoded length.
        len: usize,
    },
    /// A pinned key line, but this server has no long-term key.
    #[error("pinned login, but the server has no long-term key")]
    NoServerKey,
    /// A pinned key line of a version this server does not speak.
    #[error("pinned key line of unknown version {0}")]
    PinVersion(u8),
    /// The operator requires pinned logins, and this one is not.
    #[error("this server requires logins that pin its key")]
    PinRequired,
    /// The challenge is not 8 bytes.
    #[error("challenge decoded to {0} bytes, expected 8")]
    ChallengeLength(usize),
    /// The client chose the skynet suite and the server has it switched off.
    #[error("the skynet suite is disabled on this server")]
    SkynetDisabled,
    /// A skynet primitive failed (zero DH value, undecryptable token).
    #[error("skynet crypt: {0}")]
    Crypt(#[from] CryptError),
    /// An x25519 primitive failed (low-order point, bad proof or token).
    #[error("x25519 suite: {0}")]
    Modern(#[from] ModernError),
    /// The skynet suite's hmac64 proof does not match.
    #[error("challenge proof mismatch")]
    ProofMismatch,
    /// The server's line is neither what the dialogue expects nor a status.
    #[error("unexpected {0} from the server")]
    Unexpected(Line),
    /// The server answered with a status other than 200.
    #[error("server answered {0}")]
    Status(LoginStatus),
    /// A suite name other than `skynet` or `x25519`.
    #[error("unknown suite {0:?} (expected \"skynet\" or \"x25519\")")]
    UnknownSuite(String),
}

/// `b64(bytes) LF`.
fn b64_line(bytes: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(bytes.len().div_ceil(3) * 4 + 1);
    b64_line_into(bytes, &mut line);
    line
}

/// Appends `b64(bytes) LF` to `out`.
fn b64_line_into(bytes: &[u8], out: &mut Vec<u8>) {
    base64_encode_into(bytes, out);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names_round_trip() {
        for suite in [Suite::Skynet, Suite::X25519] {
            assert_eq!(suite.name().parse::<Suite>(), Ok(suite));
            assert_eq!(suite.to_string(), suite.name());
        }
        assert_eq!(
            "tls".parse::<Suite>(),
            Err(LoginError::UnknownSuite("tls".into()))
        );
        assert_eq!(Suite::default(), Suite::X25519);
    }

    #[test]
    fn lines_are_base64_with_lf() {
        assert_eq!(b64_line(b"1"), b"MQ==\n");
        assert_eq!(b64_line(b""), b"\n");
    }
}
