//! `[backend]`: the backend service listener, routing and deadlines (see
//! `gate::backend`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// Backend service settings (`[backend]`): see `gate::backend` for the
/// protocol, the routing rule and the deadlines.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// Address the gate listens on for service links (services dial the
    /// gate). Default: none: no backends, the built-in echo agent answers
    /// every request.
    pub listen: Option<SocketAddr>,
    /// The service whose instances are the users' agents in agent mode: each
    /// user is bound to one of them by a stable hash of its uid. Default:
    /// `agent`.
    pub agent_service: String,
    /// Every request payload is a route envelope (`gate.route.v1`): a route
    /// `service.method` goes to that service, an empty route to the user's
    /// agent (with the envelope's body as payload). Off: every payload goes
    /// unchanged to the user's agent. Default: false.
    pub route_mode: bool,
    /// How long the gate waits for a service to answer a request before it
    /// answers the client with an error response (and drops a late answer).
    /// Default: 5s.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Deadline from accepting a service link to its `Register` frame.
    /// Default: 5s.
    #[serde(with = "duration")]
    pub register_timeout: Duration,
    /// The gate pings every link this often (and announces it in the
    /// `RegisterAck`). Default: 5s.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// A link silent this long is closed (its requests fail at once);
    /// checked at each heartbeat interval. Default: 15s.
    #[serde(with = "duration")]
    pub heartbeat_timeout: Duration,
    /// Largest frame accepted or sent on a link, in bytes. Default: 1 MiB.
    pub max_frame_len: usize,
    /// Bytes queued for one link that the service has not read yet; beyond
    /// it new requests to that instance get an error response at once.
    /// Default: 4 MiB.
    pub send_queue_bytes: usize,
    /// Most authenticated service links open at once (links that have not
    /// proved the secret yet are bounded by `max_pending_links` instead);
    /// a link that proves the secret beyond it is refused. Default: 1024.
    pub max_links: usize,
    /// Most links open at once that have not proved the link secret yet
    /// (each for at most `register_timeout`); the next one is closed at
    /// accept. Kept apart from `max_links` so connections that never
    /// authenticate cannot keep real services out. Default: 64.
    pub max_pending_links: usize,
    /// Most of those pending links from one source address (0: no bound),
    /// so one address cannot take the whole pending budget. Default: 8.
    pub max_pending_per_source: usize,
    /// The service asked when `login.auth = "service"`. Default: `auth`.
    pub auth_service: String,
    /// File holding the link secret every service must prove it knows
    /// (at least 16 bytes; trailing whitespace ignored; make one with
    /// `gate link-secret`). Required when `listen` is set. Default: none.
    pub secret_file: Option<PathBuf>,
    /// Serve service links over TLS with this certificate chain (PEM,
    /// leaf first); needs `tls_key_file`. Services then dial with the CA
    /// that signed it (`service::Builder::tls_ca_file`). Default: none
    /// (plain TCP; keep it on a private network).
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `tls_cert_file` (PEM). Default: none.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            listen: None,
            agent_service: "agent".to_owned(),
            route_mode: false,
            request_timeout: Duration::from_secs(5),
            register_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            max_frame_len: 1 << 20,
            send_queue_bytes: 4 << 20,
            max_links: 1024,
            max_pending_links: 64,
            max_pending_per_source: 8,
            auth_service: "auth".to_owned(),
            secret_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}
