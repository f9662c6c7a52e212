//! The flags of each configuration section, one struct per section.
//!
//! A flag is not copied into the config field by field: each struct
//! serializes into the TOML table of its section (field names and
//! `rename`s are the config's), which [`super::run`] lays over the file's.
//! So a flag's help text carries its default in words, and the
//! `help_defaults_match_config_defaults` test keeps those true.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use gate::config::{AuthSource, Role, duration};
use gate::logging::LogFormat;
use serde::Serialize;

/// `[log]` fields settable by flag (a flag pins its field: a reload of
/// the file cannot change it).
#[derive(Debug, Args, Serialize)]
pub(crate) struct LogFlags {
    /// Log lines as text (for people) or JSON objects (for log shippers)
    /// [default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    #[serde(rename = "format", skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
    /// Which events are logged: env-filter directives such as `info`,
    /// `warn` or `gate=debug,info`; wins over RUST_LOG [default: RUST_LOG,
    /// else info].
    #[arg(long, value_name = "FILTER")]
    #[serde(rename = "level", skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,
}

/// `[ops]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
pub(crate) struct OpsFlags {
    /// Serve /metrics, /healthz, /readyz and the admin API on this address
    /// [default: none: off].
    #[arg(id = "ops_listen", long = "ops-listen", value_name = "ADDR")]
    #[serde(rename = "listen", skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// File with the admin API's bearer token (e.g. from `gate
    /// link-secret`) [default: none: admin calls get 401].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token_file: Option<PathBuf>,
    /// Most operations connections open at once; more are closed at accept
    /// [default: 64].
    #[arg(long = "ops-max-connections", value_name = "N")]
    #[serde(rename = "max_connections", skip_serializing_if = "Option::is_none")]
    ops_max_connections: Option<usize>,
    /// Deadline from a request's first byte to the end of its headers on
    /// the operations listener [default: 5s].
    #[arg(long = "ops-header-timeout", value_name = "DURATION", value_parser = duration::parse)]
    #[serde(
        rename = "header_timeout",
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    ops_header_timeout: Option<Duration>,
    /// Close an operations connection idle between requests after this
    /// long [default: 30s].
    #[arg(long = "ops-idle-timeout", value_name = "DURATION", value_parser = duration::parse)]
    #[serde(
        rename = "idle_timeout",
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    ops_idle_timeout: Option<Duration>,
    /// Deadline of one operations request, body and answer included
    /// [default: 10s].
    #[arg(long = "ops-request-timeout", value_name = "DURATION", value_parser = duration::parse)]
    #[serde(
        rename = "request_timeout",
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    ops_request_timeout: Option<Duration>,
    /// Admin calls with a wrong or missing token allowed per source address
    /// per minute; beyond it 429 (0: no bound) [default: 10].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_tokens_per_minute: Option<u32>,
}

/// `[web]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
pub(crate) struct WebFlags {
    /// Do not serve WebSocket clients [default: WebSocket listeners on].
    #[arg(id = "no_web", long = "no-web")]
    #[serde(
        rename = "enabled",
        skip_serializing_if = "is_false",
        serialize_with = "negated"
    )]
    no_web: bool,
    /// The login server's WebSocket listen address [default: 127.0.0.1:8002].
    #[arg(
        id = "web_login_listen",
        long = "web-login-listen",
        value_name = "ADDR"
    )]
    #[serde(rename = "login_listen", skip_serializing_if = "Option::is_none")]
    login_listen: Option<SocketAddr>,
    /// The gate's WebSocket listen address [default: 127.0.0.1:8889].
    #[arg(id = "web_gate_listen", long = "web-gate-listen", value_name = "ADDR")]
    #[serde(rename = "gate_listen", skip_serializing_if = "Option::is_none")]
    gate_listen: Option<SocketAddr>,
    /// An origin whose pages may connect over WebSocket
    /// (`scheme://host[:port]`, or `*` for any); repeat for more. Requests
    /// without an Origin header are always allowed [default:
    /// http://127.0.0.1:8080 and http://localhost:8080, the demo page].
    #[arg(
        id = "web_allowed_origin",
        long = "web-allowed-origin",
        value_name = "ORIGIN"
    )]
    #[serde(rename = "allowed_origins", skip_serializing_if = "Vec::is_empty")]
    allowed_origins: Vec<String>,
}

/// `[tls]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
pub(crate) struct TlsFlags {
    /// The login server's TLS listen address, beside the plain one
    /// (needs --tls-cert-file and --tls-key-file) [default: none].
    #[arg(
        id = "tls_login_listen",
        long = "tls-login-listen",
        value_name = "ADDR"
    )]
    #[serde(rename = "login_listen", skip_serializing_if = "Option::is_none")]
    login_listen: Option<SocketAddr>,
    /// The gate's TLS listen address, beside the plain one [default: none].
    #[arg(id = "tls_gate_listen", long = "tls-gate-listen", value_name = "ADDR")]
    #[serde(rename = "gate_listen", skip_serializing_if = "Option::is_none")]
    gate_listen: Option<SocketAddr>,
    /// Certificate chain (PEM, leaf first) of the TLS listeners
    /// [default: none].
    #[arg(id = "tls_cert_file", long = "tls-cert-file", value_name = "FILE")]
    #[serde(rename = "cert_file", skip_serializing_if = "Option::is_none")]
    cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM) [default: none].
    #[arg(id = "tls_key_file", long = "tls-key-file", value_name = "FILE")]
    #[serde(rename = "key_file", skip_serializing_if = "Option::is_none")]
    key_file: Option<PathBuf>,
}

/// `[cluster]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
pub(crate) struct ClusterFlags {
    /// What this process runs: `all` (login server and gate, no Redis),
    /// `login` (a login node of a cluster) or `gate` (a gate node)
    /// [default: all].
    #[arg(long, value_enum, value_name = "ROLE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    /// Redis holding the cluster's registry and session directory (login
    /// and gate nodes): redis://[user:password@]host:port[/db], or through
    /// Sentinel, following failovers:
    /// redis+sentinel://host:port[,host:port...]/MASTER[/db] [default: none].
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<String>,
    /// This node's id in the registry and logs [default: <role>-<pid>].
    #[arg(long, value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    /// Gate nodes: where login nodes dial the control link [default: 127.0.0.1:8890].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    control_listen: Option<SocketAddr>,
    /// File with the secret of the control links between login and gate
    /// nodes (make one with `gate link-secret`); required for both roles
    /// [default: none].
    #[arg(
        id = "cluster_secret_file",
        long = "cluster-secret-file",
        value_name = "FILE"
    )]
    #[serde(rename = "secret_file", skip_serializing_if = "Option::is_none")]
    secret_file: Option<PathBuf>,
    /// How long a gate node's registration lives without a heartbeat; a
    /// killed gate stops owning its users after it. Also the fence after
    /// Redis lost data: the same on every node [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    lease: Option<Duration>,
    /// Deadline of one Redis call; a login whose call misses it gets 503
    /// [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    redis_timeout: Option<Duration>,
    /// Deadline of one control call between a login node and a gate node
    /// (place a user, kick a session) [default: 8s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    control_timeout: Option<Duration>,
    /// How long a login's lock on its uid lives if its login node dies
    /// half-way [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    lock_ttl: Option<Duration>,
    /// Gate nodes: the control address published in the registry, what
    /// login nodes dial [default: --control-listen].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    control_advertise: Option<String>,
    /// Gate nodes: the client (TCP) address published in the registry
    /// [default: --gate-listen].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    client_advertise: Option<String>,
    /// Gate nodes: the backend address published in the registry, which
    /// services linked to any gate are told [default: --backend-listen].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    backend_advertise: Option<String>,
    /// Gate nodes: the WebSocket address published in the registry, as
    /// ws:// (wss:// with a web certificate) [default: --web-gate-listen].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    web_advertise: Option<String>,
    /// Prefix of every Redis key [default: gate:].
    #[arg(long, value_name = "PREFIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    key_prefix: Option<String>,
}

/// `[login]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
pub(crate) struct LoginFlags {
    /// Login server listen address [default: 127.0.0.1:8001].
    #[arg(id = "login_listen", long = "login-listen", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// File with the server's long-term key (from `gate keygen`); clients
    /// that pin its public key get logins a man in the middle cannot read
    /// or complete [default: none].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    server_key_file: Option<PathBuf>,
    /// Refuse logins that do not pin the server key [default: off].
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    require_pinned: bool,
    /// Refuse the weak skynet suite (8-byte DH keys get 401); only x25519
    /// clients can log in [default: the skynet suite is accepted].
    #[arg(long)]
    #[serde(
        rename = "allow_skynet_suite",
        skip_serializing_if = "is_false",
        serialize_with = "negated"
    )]
    no_skynet_suite: bool,
    /// Let several logins of one uid run at once (no 406) [default: off].
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    multilogin: bool,
    /// Most login connections open at once; further clients wait [default: 1024].
    #[arg(long = "login-max-connections", value_name = "N")]
    #[serde(rename = "max_connections", skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
    /// Deadline of the whole login dialogue [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    dialogue_timeout: Option<Duration>,
    /// Deadline of one authenticator call [default: 3s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    auth_timeout: Option<Duration>,
    /// Logins admitted per second; beyond it logins wait in a first come,
    /// first served queue (x25519 clients that ask are told their place)
    /// [default: 0: no queue].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    admission_rate: Option<u32>,
    /// Most logins waiting in the queue; one more gets 503 [default: 10000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_max: Option<usize>,
    /// Who checks credentials: `accounts` (the --accounts file, or demo
    /// authentication) or `service` (the backend service `auth`, needs
    /// --backend-listen) [default: accounts].
    #[arg(long, value_enum, value_name = "SOURCE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<AuthSource>,
}

/// `[gate]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
pub(crate) struct GateFlags {
    /// Message gate listen address [default: 127.0.0.1:8888].
    #[arg(id = "gate_listen", long = "gate-listen", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// The gate's server name, as clients put it in their token [default: sample].
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// Most gate connections open at once, authenticated or not [default: 65536].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    maxclient: Option<usize>,
    /// Deadline from gate accept to a complete handshake [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    handshake_timeout: Option<Duration>,
    /// How long a disconnected user stays logged in [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    reconnect_window: Option<Duration>,
    /// Most unread bytes queued per gate connection before it is cut [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    send_queue_bytes: Option<usize>,
    /// Most requests of one user in flight at once [default: 128].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_inflight_per_user: Option<usize>,
    /// skynet's expired_number: size of the per-user response cache [default: 128].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    expired_number: Option<u32>,
    /// Most bytes of cached answers per user [default: 262144].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_bytes: Option<usize>,
    /// Most pushes kept per user for replay after a reconnect (0: none; at
    /// most push_backlog_bytes of payload, config file) [default: 64].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    push_backlog: Option<usize>,
    /// Close a connection that opted in to the extensions after this long
    /// without a byte from the client (0s: never) [default: 1m].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    idle_timeout: Option<Duration>,
    /// The same for plain skynet connections, which send nothing while idle
    /// [default: 0s: never, as skynet].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    plain_idle_timeout: Option<Duration>,
    /// Let an authenticated TCP or ws:// connection with nothing read or written
    /// for this long rest: it keeps its socket and session, not its task,
    /// and wakes when either side has something (0s: never) [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    rest_after: Option<Duration>,
    /// Serve sealed sessions only: a handshake that does not ask for the
    /// sealed channel gets `426 Seal Required` (skynet clients and the
    /// skynet suite cannot connect) [default: off].
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    require_sealed: bool,
}

/// `[backend]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
pub(crate) struct BackendFlags {
    /// Listen for backend game services on this address (services dial the
    /// gate, e.g. 127.0.0.1:8899) [default: none: no backends, the built-in
    /// echo agent answers].
    #[arg(id = "backend_listen", long = "backend-listen", value_name = "ADDR")]
    #[serde(rename = "listen", skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// The backend service users are bound to in agent mode [default: agent].
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_service: Option<String>,
    /// Every request payload is a route envelope (`service.method` + body);
    /// an empty route goes to the user's agent [default: off: payloads go
    /// unchanged to the user's agent].
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    route_mode: bool,
    /// How long a backend service may take to answer a request before the
    /// client gets an error response [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    request_timeout: Option<Duration>,
    /// Most backend links open at once that have not proved the link
    /// secret yet [default: 64].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_pending_links: Option<usize>,
    /// Most of those pending links from one source address (0: no bound)
    /// [default: 8].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_pending_per_source: Option<usize>,
    /// File with the link secret services must prove they know (make one
    /// with `gate link-secret`); required with --backend-listen [default: none].
    #[arg(long = "link-secret-file", value_name = "FILE")]
    #[serde(rename = "secret_file", skip_serializing_if = "Option::is_none")]
    secret_file: Option<PathBuf>,
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn negated<S: serde::Serializer>(b: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(!*b)
}

/// `Option<Duration>` flags, written like the file's durations.
pub(crate) mod opt_duration {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => gate::config::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

/// `[upgrade]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
pub(crate) struct UpgradeFlags {
    /// Serve this Unix socket for live upgrades: a new process started
    /// with `--takeover PATH` takes over the listeners, connections and
    /// sessions, and this one exits (a gate node keeps its registration
    /// and epoch; a login node hands over its listeners and exits once its
    /// own dialogues, queued logins included, are done) [default: none].
    #[arg(long = "upgrade-socket", value_name = "PATH")]
    #[serde(rename = "socket", skip_serializing_if = "Option::is_none")]
    socket: Option<PathBuf>,
    /// Take over the gate serving this upgrade socket instead of binding
    /// the listeners; if it cannot, the old process serves on and this one
    /// exits with an error [default: none].
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    takeover: Option<PathBuf>,
}
