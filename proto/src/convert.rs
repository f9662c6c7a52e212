//! Small conveniences over the generated types: `From` each message into
//! its frame, constructors for the answers both sides build all the time
//! (a ping stamped with the clock among them),
//! the version-mismatch error and route splitting.
//!
//! They exist so the gate and the service library say `frame.into()` and
//! `Response::ok(id, body)` instead of spelling out nested `oneof` paths,
//! and so both sides word a version refusal the same way.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::PROTOCOL_VERSION;
use crate::backend::{
    AllUsers, AuthAllow, AuthDeny, AuthReply, AuthRequest, GateFrame, GateList, Goodbye, Kick,
    LinkChallenge, Logout, Ping, Pong, Push, RefuseReason, Register, RegisterAck, RegisterRefused,
    Request, Response, ServiceFrame, SessionEvent, UserList, auth_reply, gate_frame, push,
    response, service_frame,
};

/// A peer speaks another major protocol version than this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("incompatible protocol version: peer speaks {theirs}, this side speaks {ours}")]
pub struct VersionMismatch {
    /// This side's version ([`PROTOCOL_VERSION`]).
    pub ours: u32,
    /// The peer's version.
    pub theirs: u32,
}

/// Splits a route `service.method` at its first `.`.
///
/// `None` when there is no `.`, or either part is empty: such a route can
/// name no service and the gate answers it with an error.
pub fn split_route(route: &str) -> Option<(&str, &str)> {
    let (service, method) = route.split_once('.')?;
    if service.is_empty() || method.is_empty() {
        None
    } else {
        Some((service, method))
    }
}

macro_rules! into_frame {
    ($frame:ident, $kind:path, $($msg:ident => $variant:ident),+ $(,)?) => {
        $(
            impl From<$msg> for $frame {
                fn from(msg: $msg) -> Self {
                    $frame { kind: Some(<$kind>::$variant(msg)) }
                }
            }
        )+
    };
}

into_frame!(GateFrame, gate_frame::Kind,
    RegisterAck => RegisterAck,
    RegisterRefused => RegisterRefused,
    Request => Request,
    SessionEvent => SessionEvent,
    AuthRequest => AuthRequest,
    Ping => Ping,
    Pong => Pong,
    Goodbye => Goodbye,
    LinkChallenge => LinkChallenge,
    GateList => GateList,
);

into_frame!(ServiceFrame, service_frame::Kind,
    Register => Register,
    Response => Response,
    Push => Push,
    Kick => Kick,
    Logout => Logout,
    AuthReply => AuthReply,
    Ping => Ping,
    Pong => Pong,
    Goodbye => Goodbye,
);

impl Register {
    /// A registration at this crate's [`PROTOCOL_VERSION`] with no
    /// capabilities stated yet.
    pub fn new(service: impl Into<String>, instance_id: impl Into<String>) -> Self {
        Register {
            protocol_version: PROTOCOL_VERSION,
            service: service.into(),
            instance_id: instance_id.into(),
            ..Register::default()
        }
    }
}

impl RegisterRefused {
    /// The refusal a gate sends a service whose major version differs,
    /// wording both versions so the service's operator knows what to do.
    pub fn incompatible(mismatch: VersionMismatch) -> Self {
        RegisterRefused {
            reason: RefuseReason::IncompatibleVersion as i32,
            message: format!(
                "service speaks protocol version {}, this gate speaks {}",
                mismatch.theirs, mismatch.ours
            ),
            gate_protocol_version: mismatch.ours,
        }
    }
}

impl RefuseReason {
    /// Whether retrying the registration cannot help (the service should stop
    /// and report), as opposed to a refusal that may lift (reconfiguration,
    /// restart). Unknown reasons count as retryable, so a newer gate's new
    /// reason does not stop an older service for good.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            RefuseReason::IncompatibleVersion | RefuseReason::Invalid
        )
    }
}

impl Response {
    /// A successful answer: the client gets `body` with ok byte 1.
    pub fn ok(request_id: u64, body: Bytes) -> Self {
        Response {
            request_id,
            result: Some(response::Result::Ok(body)),
        }
    }

    /// A failed answer: the client gets an error response (ok byte 0), the
    /// reason goes to the gate's log.
    pub fn error(request_id: u64, reason: impl Into<String>) -> Self {
        Response {
            request_id,
            result: Some(response::Result::Error(reason.into())),
        }
    }
}

impl Push {
    /// A push to one user.
    pub fn to_user(uid: Bytes, payload: Bytes) -> Self {
        Push {
            target: Some(push::Target::User(uid)),
            payload,
        }
    }

    /// One push to several users.
    pub fn to_users(uids: Vec<Bytes>, payload: Bytes) -> Self {
        Push {
            target: Some(push::Target::Users(UserList { uids })),
            payload,
        }
    }

    /// A push to every user of the gate.
    pub fn to_all(payload: Bytes) -> Self {
        Push {
            target: Some(push::Target::All(AllUsers {})),
            payload,
        }
    }
}

impl AuthReply {
    /// Credentials accepted; the session gets `uid` (empty: the request's user).
    pub fn allow(request_id: u64, uid: Bytes) -> Self {
        AuthReply {
            request_id,
            result: Some(auth_reply::Result::Allow(AuthAllow { uid })),
        }
    }

    /// Credentials refused (the client sees 401).
    pub fn deny(request_id: u64, reason: impl Into<String>) -> Self {
        AuthReply {
            request_id,
            result: Some(auth_reply::Result::Deny(AuthDeny {
                reason: reason.into(),
            })),
        }
    }
}

impl Ping {
    /// A ping with `nonce`, stamped with this side's clock ([`unix_ms`]).
    pub fn now(nonce: u64) -> Self {
        Ping {
            nonce,
            sent_at_ms: unix_ms(),
        }
    }
}

/// The wall clock in Unix milliseconds, as `sent_at_ms` carries it.
///
/// The stamp is only echoed back to its sender to measure a round trip, so
/// a clock before 1970 gives 0 and one past `u64::MAX` ms saturates rather
/// than failing a heartbeat.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Pong {
    /// The answer to `ping`, echoing its fields.
    pub fn answer(ping: &Ping) -> Self {
        Pong {
            nonce: ping.nonce,
            sent_at_ms: ping.sent_at_ms,
        }
    }
}

impl Kick {
    /// A kick of whichever session `uid` has.
    pub fn user(uid: Bytes, reason: impl Into<String>) -> Self {
        Kick {
            uid,
            subid: Bytes::new(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_version;

    #[test]
    fn split_route_needs_both_parts() {
        assert_eq!(split_route("chat.say"), Some(("chat", "say")));
        assert_eq!(split_route("a.b.c"), Some(("a", "b.c")));
        assert_eq!(split_route("chat"), None);
        assert_eq!(split_route(".say"), None);
        assert_eq!(split_route("chat."), None);
        assert_eq!(split_route(""), None);
    }

    #[test]
    fn version_rule_is_equality_of_majors() {
        assert_eq!(check_version(PROTOCOL_VERSION), Ok(()));
        let err = check_version(PROTOCOL_VERSION + 1).unwrap_err();
        assert_eq!(err.theirs, PROTOCOL_VERSION + 1);
        let refused = RegisterRefused::incompatible(err);
        assert_eq!(refused.reason(), RefuseReason::IncompatibleVersion);
        assert!(refused.reason().is_permanent());
        assert!(
            refused
                .message
                .contains(&format!("protocol version {}", PROTOCOL_VERSION + 1))
        );
        assert_eq!(refused.gate_protocol_version, PROTOCOL_VERSION);
    }

    #[test]
    fn unknown_refusals_are_retryable() {
        let refused = RegisterRefused {
            reason: 999,
            ..RegisterRefused::default()
        };
        // prost maps an unknown enum value to the default (unspecified).
        assert!(!refused.reason().is_permanent());
        assert!(!RefuseReason::ShuttingDown.is_permanent());
        assert!(!RefuseReason::NotAllowed.is_permanent());
    }
}
