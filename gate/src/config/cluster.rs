//! `[cluster]`: which role a process plays and how cluster nodes find
//! each other (see `gate::cluster` and the README's "Cluster" section).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// What one process runs (`[cluster] role`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The login server and one gate in one process; no Redis.
    #[default]
    All,
    /// A login node of a cluster: the login listener only; users are placed
    /// on gate nodes found in Redis.
    Login,
    /// A gate node of a cluster: the gate listener, the control listener
    /// login nodes dial, and the backend listener if configured.
    Gate,
}

impl Role {
    /// The role's name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Login => "login",
            Role::Gate => "gate",
        }
    }
}

/// Cluster settings (`[cluster]`): see `gate::cluster` and the README's
/// "Cluster" section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `all` (default), `login` or `gate`.
    pub role: Role,
    /// The Redis that holds the registry and the session directory:
    /// `redis://[user:password@]host:port[/db]`, or, to follow failovers,
    /// the Sentinels watching it and the master's name:
    /// `redis+sentinel://[user:password@]host:port[,host:port…]/master[/db]`
    /// (the credentials and database are the master's). Required for
    /// `login` and `gate`. Default: none.
    pub redis: Option<String>,
    /// This node's id, in the registry and in logs. Default:
    /// `<role>-<pid>`.
    pub node_id: Option<String>,
    /// Prefix of every Redis key, so deployments can share a Redis.
    /// Default: `gate:`.
    pub key_prefix: String,
    /// How long a gate node's registration lives without a heartbeat (it
    /// renews every third of it). A gate killed without a chance to say so
    /// stops owning its users this long after its last heartbeat. Also how
    /// long the fence stays up after Redis lost data (see
    /// `gate::cluster::redis_link`): give every node of a cluster the same.
    /// Default: 10s.
    #[serde(with = "duration")]
    pub lease: Duration,
    /// Gate nodes: where login nodes dial the control link. Default:
    /// `127.0.0.1:8890`.
    pub control_listen: SocketAddr,
    /// Gate nodes: the control address published in the registry (what
    /// login nodes dial). Default: `control_listen`.
    pub control_advertise: Option<String>,
    /// Gate nodes: the client address published in the registry. Default:
    /// `gate.listen`.
    pub client_advertise: Option<String>,
    /// Gate nodes: the backend address published in the registry, which
    /// gates tell their services (so services find every gate from one).
    /// Default: `backend.listen`; nothing without a backend listener.
    pub backend_advertise: Option<String>,
    /// Gate nodes: the WebSocket address (`host:port`) published in the
    /// registry, as `ws://` or (with `web.tls_cert_file`) `wss://`.
    /// Default: `web.gate_listen`; nothing when the WebSocket listeners
    /// are off.
    pub web_advertise: Option<String>,
    /// Gate nodes: the operations address published in the registry, where
    /// other nodes forward admin calls for this gate's users. Default:
    /// `ops.listen`.
    pub ops_advertise: Option<String>,
    /// File with the secret both ends of a control link prove they know
    /// (at least 16 bytes; `gate link-secret` makes one). Required for
    /// `login` and `gate`. Default: none.
    pub secret_file: Option<PathBuf>,
    /// Gate nodes: serve the control link over TLS with this certificate
    /// chain (PEM, leaf first); needs `tls_key_file`. Default: none (plain
    /// TCP; keep it on a private network).
    pub tls_cert_file: Option<PathBuf>,
    /// Gate nodes: the private key of `tls_cert_file` (PEM). Default: none.
    pub tls_key_file: Option<PathBuf>,
    /// Login nodes: dial control links over TLS, trusting the CA
    /// certificates in this PEM file (the gate's certificate must name the
    /// host or IP address of its published control address). Default:
    /// none (plain TCP).
    pub tls_ca_file: Option<PathBuf>,
    /// Deadline of one Redis call; a login whose call misses it is
    /// answered `503`. Default: 1s.
    #[serde(with = "duration")]
    pub redis_timeout: Duration,
    /// Deadline of one control call (place a user, kick a session).
    /// Default: 8s (a kick waits up to 5s for the connection to close).
    #[serde(with = "duration")]
    pub control_timeout: Duration,
    /// How long a login's lock on its uid lives if its login node dies
    /// half-way. Default: 30s.
    #[serde(with = "duration")]
    pub lock_ttl: Duration,
    /// Gate nodes: most control links open at once that have not proved
    /// the cluster secret yet (each for at most 5s); the next one is
    /// closed at accept. Default: 64.
    pub control_max_pending: usize,
    /// Gate nodes: most of those pending control links from one source
    /// address (0: no bound). Default: 8.
    pub control_max_pending_per_source: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            role: Role::All,
            redis: None,
            node_id: None,
            key_prefix: "gate:".to_owned(),
            lease: Duration::from_secs(10),
            control_listen: SocketAddr::from(([127, 0, 0, 1], 8890)),
            control_advertise: None,
            client_advertise: None,
            backend_advertise: None,
            web_advertise: None,
            ops_advertise: None,
            secret_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            redis_timeout: Duration::from_secs(1),
            control_timeout: Duration::from_secs(8),
            lock_ttl: Duration::from_secs(30),
            control_max_pending: 64,
            control_max_pending_per_source: 8,
        }
    }
}

impl ClusterConfig {
    /// The node id, or `<role>-<pid>`.
    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.role.as_str(), std::process::id()))
    }
}
