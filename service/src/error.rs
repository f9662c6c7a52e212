//! The errors that stop a service (as opposed to a lost link, which the
//! library retries on its own and only logs).

use proto::backend::RefuseReason;

/// Why [`Service::run`](crate::Service::run) or
/// [`Service::new`](crate::Service::new) gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The settings cannot work; nothing was started.
    #[error("invalid service configuration: {0}")]
    Config(String),
    /// A gate speaks another major protocol version (it refused the
    /// registration, or acknowledged with a version this library does not
    /// speak). Permanent: upgrade the service or the gate.
    #[error(
        "gate {gate} speaks protocol version {gate_version}, this service speaks \
         {service_version}: incompatible, upgrade one of them ({message})"
    )]
    IncompatibleVersion {
        /// The gate's configured address.
        gate: String,
        /// The gate's major version.
        gate_version: u32,
        /// This library's [`proto::PROTOCOL_VERSION`].
        service_version: u32,
        /// The gate's own words, if it refused.
        message: String,
    },
    /// A gate refused the registration for a reason retrying cannot fix
    /// (e.g. the registration is malformed).
    #[error("gate {gate} refused the registration ({reason:?}): {message}")]
    Refused {
        /// The gate's configured address.
        gate: String,
        /// The gate's reason.
        reason: RefuseReason,
        /// The gate's own words.
        message: String,
    },
}
