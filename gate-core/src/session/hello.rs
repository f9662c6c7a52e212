//! The checks of a handshake that need no session state, and why a
//! handshake is refused (with the one mapping to wire statuses).

use std::net::SocketAddr;

use codec::ext::Ext;
use codec::message::{Handshake, LuaNumber};
use codec::status::GateStatus;
use loginproto::handshake::{self, HandshakeError, SessionSecret};
use loginproto::seal::Channel;

#[cfg(doc)]
use super::Session;

/// Why a handshake was refused. [`HandshakeRefusal::status`] is the one
/// place that maps it to a wire status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeRefusal {
    /// Not `username:index:mac`, no such user, or its session is over.
    #[error("unknown user")]
    UnknownUser,
    /// The index is not a (finite) Lua number.
    #[error("index is not a finite number")]
    BadIndex,
    /// The MAC field is not base64.
    #[error("MAC is not valid base64")]
    BadMacEncoding,
    /// The extension field (after a third `:`) is malformed.
    #[error("malformed extension field")]
    BadExt,
    /// The extension field claims a push this session never made.
    #[error("last seen push is ahead of the session's pushes")]
    PushAhead,
    /// The MAC does not verify.
    #[error("MAC mismatch")]
    MacMismatch,
    /// The index is not above the last accepted one.
    #[error("index expired")]
    IndexExpired,
    /// The gate is shutting down or draining: closed without a status.
    #[error("gate is not taking new connections")]
    ShuttingDown,
    /// The gate serves sealed sessions only and this handshake did not
    /// ask for the sealed channel.
    #[error("the gate requires the sealed channel")]
    SealRequired,
}

impl HandshakeRefusal {
    /// The status package to send, if any.
    pub fn status(self) -> Option<GateStatus> {
        match self {
            HandshakeRefusal::UnknownUser => Some(GateStatus::NOT_FOUND),
            HandshakeRefusal::BadIndex
            | HandshakeRefusal::BadMacEncoding
            | HandshakeRefusal::BadExt
            | HandshakeRefusal::PushAhead => Some(GateStatus::BAD_REQUEST),
            HandshakeRefusal::MacMismatch => Some(GateStatus::UNAUTHORIZED),
            HandshakeRefusal::IndexExpired => Some(GateStatus::INDEX_EXPIRED),
            HandshakeRefusal::ShuttingDown => None,
            HandshakeRefusal::SealRequired => Some(GateStatus::SEAL_REQUIRED),
        }
    }
}

/// A handshake that passed the checks that need no session state.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// The handshake's index.
    pub index: LuaNumber,
    /// The extension field, if the client opted in.
    pub ext: Option<Ext>,
    /// The client's address.
    pub addr: SocketAddr,
}

/// The stateless checks of a handshake, in the documented order (skynet
/// checks the index before the MAC; see `docs/PROTOCOL.md`): the index
/// (`400`), the extension field (`400`; `seal=1` only for an x25519
/// session) and the MAC's base64 (`400`), the MAC (`401`; over
/// `username ":" index ":seal"` when sealing is asked), then, if the gate
/// serves sealed sessions only (`require_sealed`), that it is asked
/// (`426`). The caller has already found the user by the handshake's
/// username (else `404`); [`Session::handshake`] does the rest (`404` for a
/// session that is over, `403`, the push check).
pub fn check_handshake(
    secret: &SessionSecret,
    hs: &Handshake,
    addr: SocketAddr,
    require_sealed: bool,
) -> Result<Hello, HandshakeRefusal> {
    let index = hs
        .index_number()
        .filter(|n| n.as_f64().is_finite())
        .ok_or(HandshakeRefusal::BadIndex)?;
    let ext = match &hs.ext {
        Some(text) => Ext::parse(text).map_err(|_| HandshakeRefusal::BadExt)?,
        None => None,
    };
    let sealed = ext.is_some_and(|ext| ext.seal);
    if sealed && !matches!(secret, SessionSecret::X25519(_)) {
        // skynet's 64-bit secret is no key for a cipher.
        return Err(HandshakeRefusal::BadExt);
    }
    handshake::verify(secret, hs, sealed).map_err(|e| match e {
        HandshakeError::BadMacEncoding => HandshakeRefusal::BadMacEncoding,
        HandshakeError::MacMismatch => HandshakeRefusal::MacMismatch,
    })?;
    if require_sealed && !sealed {
        return Err(HandshakeRefusal::SealRequired);
    }
    Ok(Hello { index, ext, addr })
}

/// The gate's side of the sealed channel a checked handshake asked for
/// (`None`: a plain connection): keys of this index, counters at 0.
pub fn seal_channel(secret: &SessionSecret, hs: &Handshake, hello: &Hello) -> Option<Channel> {
    match secret {
        SessionSecret::X25519(key) if hello.ext.is_some_and(|ext| ext.seal) => {
            Some(Channel::gate(key, &hs.index))
        }
        _ => None,
    }
}
