//! Protobuf messages between the message gate and backend game services,
//! and their framing on TCP.
//!
//! The `.proto` files in `proto/proto/` are the source of truth (a service
//! in another language generates its types from them); this crate compiles
//! them with prost (via protox, so no system `protoc`) and adds the framing
//! ([`framing`]) and the version rule ([`PROTOCOL_VERSION`]).
//!
//! # The link
//!
//! **Services dial the gate.** A gate listens on a backend port; each service
//! instance opens one TCP connection (a *link*) to every gate it serves. The
//! gate opens with a [`backend::LinkChallenge`]; the service answers with
//! [`backend::Register`], which proves it knows the deployment's link secret
//! ([`link_auth`]). The gate answers
//! [`backend::RegisterAck`] or [`backend::RegisterRefused`] (and closes).
//! So the gate needs no list of services, and adding an instance is starting
//! it. Either side may restart without restarting the other: a service whose
//! link closes, or whose gate stays silent past its heartbeat timeout,
//! reconnects with exponential backoff and jitter and registers again; a gate
//! that loses a link fails that link's in-flight requests at once and re-binds
//! its users on their next request.
//!
//! Frames are [`backend::GateFrame`] (gate → service) and
//! [`backend::ServiceFrame`] (service → gate), each a `oneof` over the
//! messages of that direction, framed by [`framing::FrameCodec`]
//! (4-byte big-endian length, then the protobuf bytes).
//!
//! # Route mode
//!
//! [`route::RouteEnvelope`] is the small message a client puts in a request
//! payload to name a service (`service.method`) when the gate routes by
//! route instead of by the user's bound agent.

pub mod framing;
pub mod link_auth;
mod link_frame;
mod request_ref;

/// The gate ↔ service RPC (`gate.backend.v1`, `proto/backend.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod backend {
    include!(concat!(env!("OUT_DIR"), "/gate.backend.v1.rs"));
}

/// The login node ↔ gate node control link of a cluster
/// (`gate.control.v1`, `proto/control.proto`): place a user, kick a
/// session. Framed like the backend link ([`framing::ControlCodec`],
/// [`framing::LoginCodec`]), authenticated like it ([`link_auth::login_proof`]).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod control {
    include!(concat!(env!("OUT_DIR"), "/gate.control.v1.rs"));
}

/// The client's route envelope (`gate.route.v1`, `proto/route.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod route {
    include!(concat!(env!("OUT_DIR"), "/gate.route.v1.rs"));
}

mod convert;

pub use convert::{VersionMismatch, split_route, unix_ms};
pub use request_ref::RequestRef;

/// The major version of the gate ↔ service protocol, sent in
/// [`backend::Register::protocol_version`] and
/// [`backend::RegisterAck::protocol_version`].
///
/// # Compatibility rule
///
/// Two peers are compatible exactly when their major versions are equal
/// ([`check_version`]). A gate refuses any other service with
/// [`backend::RefuseReason::IncompatibleVersion`] and a message naming both
/// versions, and the service stops instead of retrying (retrying cannot help).
///
/// Additive changes keep the version: a new field, a new frame kind in a
/// `oneof`, a new enum value. Receivers ignore what they do not know (a frame
/// whose `kind` decodes as `None` is skipped, an unknown enum value is treated
/// as unspecified), so an older peer keeps working with a newer one. Removing
/// or renumbering a field, changing a field's type or meaning, or changing the
/// framing bumps the version. Version 2 added the link authentication: a
/// version-1 service cannot answer the challenge.
pub const PROTOCOL_VERSION: u32 = 2;

/// The version of the control link (`proto/control.proto`), sent in
/// `Hello`; a gate refuses a login node with another. Same rule as
/// [`PROTOCOL_VERSION`].
pub const CONTROL_VERSION: u32 = 1;

/// Checks a peer's major protocol version against [`PROTOCOL_VERSION`].
pub fn check_version(peer: u32) -> Result<(), VersionMismatch> {
    if peer == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: peer,
        })
    }
}
