//! Configuration of the login server and the message gate.
//!
//! Read from a TOML file (every field optional; the defaults reproduce
//! skynet's `examples/login` on loopback) and then overridden by flags.
//! Each field documents its default. Durations are written as text with a
//! unit, as `humantime` reads them: `"5s"`, `"300ms"`, `"5m"`, `"1h 30m"`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod backend;
mod cluster;

pub use backend::BackendConfig;
pub use cluster::{ClusterConfig, Role};

/// Serde for durations written `"5s"`, `"300ms"` (see the module docs).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads `"5s"`-style text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration like \"5s\" or \"300ms\": {e}"
            ))
        })
    }

    /// Writes `"5s"`-style text.
    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*value).to_string())
    }

    /// Parses a command-line value the same way.
    pub fn parse(text: &str) -> Result<Duration, humantime::DurationError> {
        humantime::parse_duration(text)
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The login server.
    pub login: LoginConfig,
    /// The message gate.
    pub gate: GateConfig,
    /// Backend game services (the gate's RPC listener, routing, deadlines).
    /// Default: no listener, so backends are off and the built-in echo
    /// agent answers.
    pub backend: BackendConfig,
    /// Which role this process plays and, for a cluster node, how it finds
    /// the others (`gate::cluster`). Default: all-in-one, no Redis.
    pub cluster: ClusterConfig,
    /// The operations listener: metrics, health, admin API (`gate::ops`).
    /// Default: off.
    pub ops: OpsConfig,
    /// WebSocket listeners for browser clients (`gate::web`). Default: on,
    /// on loopback, for the demo page.
    pub web: WebConfig,
    /// TLS listeners for native clients beside the plain login and gate
    /// ports (`[tls]`). Default: none.
    pub tls: TlsConfig,
    /// Accounts file (`user:PHC-hash` lines). Default: none, which runs the
    /// demo authenticator (any user, password `password`) with a warning.
    pub accounts: Option<PathBuf>,
    /// Live upgrades (`gate::upgrade`): the socket a new process takes the
    /// running one over through. Default: off.
    pub upgrade: UpgradeConfig,
    /// The one grace period for work in flight when something closes: at
    /// shutdown, how long login dialogues and requests in flight may take
    /// before the remaining connections are closed; after a client's FIN,
    /// how long its requests may take to be answered. Default: 5s.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// How addresses are grouped into sources and networks for the
    /// per-source and per-network bounds of the login and gate listeners.
    /// Default: a source is an IPv4 /32 or IPv6 /64, a network an IPv4 /24
    /// or IPv6 /48.
    pub sources: crate::net::Prefixes,
    /// How the process logs (`[log]`); a configuration reload changes it.
    /// Default: text at the level of `RUST_LOG`, else `info`.
    pub log: LogConfig,
}

/// Log settings (`[log]`, see `gate::logging`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Which events are written: env-filter directives such as `"info"`,
    /// `"warn"` or `"gate=debug,info"`. When set it wins over `RUST_LOG`.
    /// Default: none: `RUST_LOG`, else `info`.
    pub level: Option<String>,
    /// `"text"` (one logfmt line per event, for people) or `"json"` (one
    /// JSON object per event, for log shippers). Default: `"text"`.
    pub format: crate::logging::LogFormat,
}

/// Live upgrades (`[upgrade]`, see `gate::upgrade`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpgradeConfig {
    /// The Unix socket this process serves for a new process to take it
    /// over (every role: an all-in-one process or a gate node hands over
    /// its listeners, connections and sessions; a login node its listeners,
    /// finishing its own dialogues). Default: none: no live upgrade.
    pub socket: Option<PathBuf>,
    /// At start, take over the process serving this socket instead of
    /// binding the listeners (`gate run --takeover PATH`). Default: none.
    pub takeover: Option<PathBuf>,
}

/// The default of [`Config::shutdown_grace`], which the gate
/// ([`GateConfig::shutdown_grace`]) and the login server
/// (`LoginServer::with_shutdown_grace`) also start from when built alone.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Default for Config {
    fn default() -> Self {
        Config {
            login: LoginConfig::default(),
            gate: GateConfig::default(),
            backend: BackendConfig::default(),
            cluster: ClusterConfig::default(),
            ops: OpsConfig::default(),
            web: WebConfig::default(),
            tls: TlsConfig::default(),
            accounts: None,
            upgrade: UpgradeConfig::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            sources: crate::net::Prefixes::default(),
            log: LogConfig::default(),
        }
    }
}

impl Config {
    /// Refuses values that would shut every client out (a zero deadline
    /// closes each connection at once; a zero bound refuses everything):
    /// checked at start and by a configuration reload. Where 0 means
    /// "none" (`idle_timeout`, the per-source bounds) it is not refused.
    pub fn check(&self) -> Result<(), String> {
        let mut zero = Vec::new();
        let mut must = |name: &'static str, is_zero: bool| {
            if is_zero {
                zero.push(name);
            }
        };
        must(
            "gate.handshake_timeout",
            self.gate.handshake_timeout.is_zero(),
        );
        must("gate.maxclient", self.gate.maxclient == 0);
        must("gate.send_queue_bytes", self.gate.send_queue_bytes == 0);
        must(
            "gate.max_inflight_per_user",
            self.gate.max_inflight_per_user == 0,
        );
        must(
            "login.dialogue_timeout",
            self.login.dialogue_timeout.is_zero(),
        );
        must(
            "login.first_line_timeout",
            self.login.first_line_timeout.is_zero(),
        );
        must("login.max_connections", self.login.max_connections == 0);
        crate::login::throttle::check_config(&self.login)?;
        if zero.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "must be above 0 (0 would shut every client out): {}",
                zero.join(", ")
            ))
        }
    }

    /// The gate's settings with the top-level shutdown grace filled in.
    pub fn gate(&self) -> GateConfig {
        GateConfig {
            shutdown_grace: self.shutdown_grace,
            sources: self.sources,
            ..self.gate.clone()
        }
    }
}

/// Login server settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginConfig {
    /// Listen address. Default: `127.0.0.1:8001` (skynet's example).
    pub listen: SocketAddr,
    /// Accept the weak skynet suite (8-byte DH keys) besides x25519.
    /// Default: true, so existing skynet clients connect.
    pub allow_skynet_suite: bool,
    /// File with the server's long-term X25519 private key (base64 of 32
    /// bytes; `gate keygen` makes one and prints the public key). Clients
    /// that pin the public key get logins a man in the middle can neither
    /// read nor complete. Default: none.
    pub server_key_file: Option<PathBuf>,
    /// Refuse logins that do not pin the server key (skynet and plain
    /// x25519 clients get `401`); needs `server_key_file`. Default: false.
    pub require_pinned: bool,
    /// Let several logins of one uid run at once. Default: false (a second
    /// concurrent login gets `406 Not Acceptable`).
    pub multilogin: bool,
    /// Deadline for the whole login dialogue, from accept to status line.
    /// Default: 10s.
    #[serde(with = "duration")]
    pub dialogue_timeout: Duration,
    /// Deadline for the client's first line (its key line) after the
    /// challenge: a real client answers at once, an idle socket is closed
    /// long before the dialogue deadline. Default: 3s.
    #[serde(with = "duration")]
    pub first_line_timeout: Duration,
    /// Most unread bytes buffered per login connection; more closes it.
    /// Default: 8192 (skynet's limit).
    pub max_line_bytes: usize,
    /// Most login connections open at once; further accepts wait.
    /// Default: 1024.
    pub max_connections: usize,
    /// Most login dialogues from one source address at once; one more is
    /// closed at accept without a line (0: no bound). A slot is held until
    /// the status line is sent, not while the server lingers after it.
    /// Default: 64.
    pub max_connections_per_source: usize,
    /// Most login dialogues from one network (`[sources]` prefixes: /24,
    /// IPv6 /48) at once; one more is closed at accept (0: no bound). A
    /// dialogue takes milliseconds, so a real network rarely holds many at
    /// once; a flood from many addresses of one network is cut here.
    /// Default: 256.
    pub max_connections_per_network: usize,
    /// New login connections one source may open per second (bursts of
    /// twice that); faster ones are closed at accept (0: no bound).
    /// Default: 0.
    pub new_connections_per_source: u32,
    /// When every login slot is taken, a newcomer takes the slot of the
    /// oldest dialogue whose client has said nothing (no key line) for at
    /// least this long. Default: 500ms.
    #[serde(with = "duration")]
    pub evict_silent_after: Duration,
    /// Not read from the file: the top-level `[sources]`, copied here when
    /// the login server is built from a [`Config`].
    #[serde(skip)]
    pub sources: crate::net::Prefixes,
    /// Deadline for the authenticator (accounts file or auth service).
    /// Default: 3s.
    #[serde(with = "duration")]
    pub auth_timeout: Duration,
    /// Logins of one user name that may reach the authenticator at once,
    /// or after a quiet spell, from addresses it has not logged in from
    /// recently; each refused password keeps its place, and one place comes
    /// back every `throttle_user_interval`. A login past them is answered
    /// at once, without asking the authenticator (`429 Too Many Requests`,
    /// `401 Unauthorized` for the skynet suite). 0 turns the check off.
    /// Default: 5.
    pub throttle_user_failures: u32,
    /// How often one more of a user name's logins may reach the
    /// authenticator once its `throttle_user_failures` are used up: 12s
    /// lets at most 5 guesses a minute at one name, whatever the number
    /// of addresses. Above 0 while `throttle_user_failures` is (0 would
    /// let every guess through), at most 365days. Default: 12s.
    #[serde(with = "duration")]
    pub throttle_user_interval: Duration,
    /// Refused passwords one source address (IPv4 address, IPv6 /64) may
    /// have, over all the user names tried from it, before its logins are
    /// throttled; only refusals count, so players behind one address log
    /// in at once. 0 turns the check off. Default: 20.
    pub throttle_source_failures: u32,
    /// See `throttle_source_failures`. Above 0 while that is, at most
    /// 365days. Default: 3s (20 a minute).
    #[serde(with = "duration")]
    pub throttle_source_interval: Duration,
    /// Successful logins one user name may make at once, or after a quiet
    /// spell, from any address; one more comes back every
    /// `throttle_user_login_interval`. Past them a login is answered as
    /// throttled, before its password is checked: each login kicks the
    /// previous session and costs a session's work, so one valid account
    /// cannot log in at whatever rate its client manages. 0 turns the
    /// check off. Default: 30.
    pub throttle_user_logins: u32,
    /// See `throttle_user_logins`. Above 0 while that is, at most
    /// 365days. Default: 2s (30 a minute).
    #[serde(with = "duration")]
    pub throttle_user_login_interval: Duration,
    /// How long a successful login makes its address trusted for that
    /// user: logins of the user from it have their own allowance, so
    /// guesses at the name from elsewhere do not lock its owner out.
    /// Default: 7days.
    #[serde(with = "duration")]
    pub throttle_trusted_for: Duration,
    /// Most user names, and most source addresses, the throttle keeps
    /// (the ones with refused passwords, or with trusted addresses); past
    /// it the fewest refusals are forgotten first. Default: 65536.
    pub throttle_max_entries: usize,
    /// Who checks credentials: `"accounts"` (the top-level `accounts` file,
    /// or the demo authenticator when none is set) or `"service"` (the
    /// backend service named `backend.auth_service`, which needs
    /// `backend.listen`). Default: `"accounts"`.
    pub auth: AuthSource,
    /// Logins admitted per second; beyond it logins wait in a first come,
    /// first served queue after their key line (`docs/PROTOCOL.md`, "Login
    /// queue"). 0: no queue. Default: 0.
    pub admission_rate: u32,
    /// Logins admitted at once after a quiet spell (the token bucket's
    /// size). Default: 100.
    pub admission_burst: u32,
    /// Most logins waiting in the queue; one more gets `503`. Queued
    /// dialogues hold their connection slot, so raise `max_connections`
    /// with it. Default: 10000.
    pub queue_max: usize,
    /// Longest a login waits in the queue before it gets `503`; the
    /// dialogue deadline does not run while it waits. Default: 60s.
    #[serde(with = "duration")]
    pub queue_timeout: Duration,
    /// Threads checking argon2 passwords of the accounts file, each
    /// reusing one memory block of the file's largest cost: hashing memory
    /// is at most this many blocks, whatever the login rate. 0: one per
    /// core. Default: 0.
    pub hash_workers: usize,
    /// Password checks that may wait for a hashing thread; one more is
    /// answered `503` at once. 0: 32 per thread. Default: 0.
    pub hash_queue: usize,
}

/// Where the login server sends credentials (`[login] auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthSource {
    /// The accounts file, or the demo authenticator without one.
    #[default]
    Accounts,
    /// A backend service registered as `backend.auth_service` (an
    /// `AuthRequest` per login, bounded by `login.auth_timeout`; a deny,
    /// a missing service or the deadline answer `401`).
    Service,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8001)),
            allow_skynet_suite: true,
            server_key_file: None,
            require_pinned: false,
            multilogin: false,
            first_line_timeout: Duration::from_secs(3),
            dialogue_timeout: Duration::from_secs(10),
            max_line_bytes: 8192,
            max_connections: 1024,
            max_connections_per_source: 64,
            max_connections_per_network: 256,
            new_connections_per_source: 0,
            evict_silent_after: Duration::from_millis(500),
            sources: crate::net::Prefixes::default(),
            auth_timeout: Duration::from_secs(3),
            throttle_user_failures: 5,
            throttle_source_failures: 20,
            throttle_user_interval: Duration::from_secs(12),
            throttle_source_interval: Duration::from_secs(3),
            throttle_user_logins: 30,
            throttle_user_login_interval: Duration::from_secs(2),
            throttle_trusted_for: Duration::from_secs(7 * 24 * 3600),
            throttle_max_entries: 65_536,
            auth: AuthSource::Accounts,
            admission_rate: 0,
            admission_burst: 100,
            queue_max: 10_000,
            queue_timeout: Duration::from_secs(60),
            hash_workers: 0,
            hash_queue: 0,
        }
    }
}

/// Message gate settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateConfig {
    /// The gate's server name, as clients put it in their token and
    /// username. Default: `sample` (skynet's example).
    pub name: String,
    /// Listen address. Default: `127.0.0.1:8888` (skynet's example).
    pub listen: SocketAddr,
    /// Most connections open at once, authenticated or not; the next one is
    /// closed at accept. Default: 65536.
    pub maxclient: usize,
    /// Most connections from one source address at once (players behind
    /// one NAT share an address: keep it generous); one more is closed at
    /// accept (0: no bound). Default: 4096.
    pub max_connections_per_source: usize,
    /// Most connections from one network (`[sources]` prefixes: /24,
    /// IPv6 /48) at once; one more is closed at accept (0: no bound). Many
    /// addresses of one network cannot fill `maxclient` and lock new
    /// players out. Default: 8192.
    pub max_connections_per_network: usize,
    /// New connections one source may open per second (bursts of twice
    /// that); faster ones are closed at accept (0: no bound). Default: 0.
    pub new_connections_per_source: u32,
    /// Deadline from accept to a complete handshake package. Default: 10s.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Most bytes queued for one connection that the client has not read;
    /// a client that stops reading is disconnected. Default: 1 MiB.
    pub send_queue_bytes: usize,
    /// Most requests of one user running at once; more closes the
    /// connection. Default: 128.
    pub max_inflight_per_user: usize,
    /// skynet's `expired_number`: the response cache keeps roughly the last
    /// `E`..`2E` answered sessions per user that were delivered. Default: 128.
    pub expired_number: u32,
    /// Most bytes of cached answers per user (each answer counts its
    /// package plus 64 bytes). Answers no connection got yet are kept until
    /// re-sent; when this bound forces one out, a re-send of it is answered
    /// with an error response instead of running again. Default: 262144
    /// (256 KiB).
    pub cache_bytes: usize,
    /// How long a user may stay disconnected before the gate logs it out.
    /// Default: 5m.
    #[serde(with = "duration")]
    pub reconnect_window: Duration,
    /// Not read from the file: the top-level `shutdown_grace`, which
    /// [`Config::gate`] copies here. Default: 5s.
    #[serde(skip)]
    pub shutdown_grace: Duration,
    /// Not read from the file: the top-level `[sources]`, which
    /// [`Config::gate`] copies here.
    #[serde(skip)]
    pub sources: crate::net::Prefixes,
    /// Most pushes kept per user for replay to a client that reconnects
    /// (the oldest go first); 0 keeps none (a client that was away is only
    /// told how many it missed). Default: 64.
    pub push_backlog: usize,
    /// Most payload bytes of the pushes kept per user (the oldest go
    /// first), so the backlog's memory is bounded per session whatever
    /// the push sizes. Default: 65536 (64 KiB).
    pub push_backlog_bytes: usize,
    /// An authenticated connection that opted in to the extensions and
    /// sends nothing (not even a heartbeat) for this long is closed; the
    /// user becomes away and may reconnect. `"0s"` = never. Default: 60s
    /// (clients ping every 20 s).
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// The same for plain skynet connections. skynet clients send nothing
    /// while idle and skynet never closes them, so the default is `"0s"` =
    /// never; an operator may set it to reap dead peers.
    #[serde(with = "duration")]
    pub plain_idle_timeout: Duration,
    /// An authenticated plain TCP or `ws://` connection with nothing read from its client
    /// or written to it for this long (looked at every `rest_after`, so
    /// between once and about twice this after its last traffic) rests:
    /// it keeps its socket and its session but gives up its task (about
    /// 0.75 KiB), and wakes when the client sends something or the gate
    /// has something for it. One that sent nothing behind its handshake
    /// rests at once. `"0s"` = never. Default: 10s.
    #[serde(with = "duration")]
    pub rest_after: Duration,
    /// Serve sealed sessions only (`docs/PROTOCOL.md` §3.2): a handshake
    /// that does not ask for the sealed channel is refused with `426 Seal
    /// Required`, after its MAC is checked. Plain skynet clients and the
    /// skynet suite cannot connect then. Applies live on a reload to new
    /// handshakes. Default: false.
    pub require_sealed: bool,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            name: "sample".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8888)),
            maxclient: 65536,
            max_connections_per_source: 4096,
            max_connections_per_network: 8192,
            new_connections_per_source: 0,
            handshake_timeout: Duration::from_secs(10),
            send_queue_bytes: 1 << 20,
            max_inflight_per_user: 128,
            expired_number: 128,
            cache_bytes: 256 * 1024,
            reconnect_window: Duration::from_secs(300),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            sources: crate::net::Prefixes::default(),
            push_backlog: 64,
            push_backlog_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
            plain_idle_timeout: Duration::ZERO,
            rest_after: Duration::from_secs(10),
            require_sealed: false,
        }
    }
}

impl GateConfig {
    /// The idle timeout of a connection (opted in to the extensions or
    /// plain), `None` when off.
    pub fn idle_timeout(&self, opted_in: bool) -> Option<Duration> {
        let timeout = if opted_in {
            self.idle_timeout
        } else {
            self.plain_idle_timeout
        };
        (!timeout.is_zero()).then_some(timeout)
    }
}

/// Operations settings (`[ops]`): see `gate::ops`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// Listen address of the operations HTTP listener (`/metrics`,
    /// `/healthz`, `/readyz`, `/admin/...`). Keep it on loopback or a
    /// private network. Default: none (off).
    pub listen: Option<SocketAddr>,
    /// File with the admin API's bearer token (at least 16 bytes; `gate
    /// link-secret` makes one). Default: none: every admin call is `401`;
    /// metrics and health are served anyway.
    pub admin_token_file: Option<PathBuf>,
    /// Most operations connections open at once; the next one is closed
    /// at accept (and counted), so idle HTTP connections cannot take the
    /// file descriptors the players need. Default: 64.
    pub max_connections: usize,
    /// Deadline from the first byte of a request to the end of its head
    /// (request line and headers): a client sending its head slowly is
    /// cut. Default: 5s.
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    /// A connection with no request in progress and no byte of the next
    /// one (a keep-alive connection left idle) is closed after this long.
    /// Default: 30s.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Deadline of one request from its head to its answer (reading the
    /// body included); past it the answer is `408` and the connection
    /// closes. Default: 10s.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Admin calls with a missing or wrong token allowed per source
    /// address per minute; beyond it calls from that address are answered
    /// `429` without checking the token, until the minute is over. 0: no
    /// bound. Default: 10.
    pub failed_tokens_per_minute: u32,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            listen: None,
            admin_token_file: None,
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            failed_tokens_per_minute: 10,
        }
    }
}

/// TLS on the TCP side (`[tls]`): the login dialogue and the gate's
/// packages exactly as on the plain ports, inside TLS (rustls), on ports
/// of their own, so skynet clients keep the plain ones. Clients trust the
/// certificate's CA (`client --tls-ca-file` with `tls://` addresses). The
/// certificate and key change with a configuration reload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Listen address of the login server's TLS listener (a login node, or
    /// all-in-one). Default: none.
    pub login_listen: Option<SocketAddr>,
    /// Listen address of the gate's TLS listener (a gate node, or
    /// all-in-one). Default: none.
    pub gate_listen: Option<SocketAddr>,
    /// Certificate chain (PEM, leaf first); needed with either listener.
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
}

/// WebSocket settings (`[web]`): the login dialogue and the gate's
/// packages over WebSocket (`docs/PROTOCOL.md` §9), for browser games.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Whether the WebSocket listeners run. Default: true.
    pub enabled: bool,
    /// Listen address of the login server's WebSocket listener (a login
    /// node, or all-in-one). Default: 127.0.0.1:8002.
    pub login_listen: SocketAddr,
    /// Listen address of the gate's WebSocket listener (a gate node, or
    /// all-in-one). Default: 127.0.0.1:8889.
    pub gate_listen: SocketAddr,
    /// Origins (`scheme://host[:port]`, as browsers send them) whose pages
    /// may connect; `*` allows any. A request without an `Origin` header
    /// (not a browser) is always allowed; one with an origin not listed is
    /// refused with HTTP `403`. Default: the demo page's
    /// `http://127.0.0.1:8080` and `http://localhost:8080`.
    pub allowed_origins: Vec<String>,
    /// Certificate chain (PEM, leaf first) for `wss://`: with
    /// `tls_key_file`, both WebSocket listeners speak TLS (pages served
    /// over HTTPS may only open `wss://`). Default: none (plain `ws://`,
    /// or TLS ended in front of the gate).
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM). Default: none.
    pub tls_key_file: Option<PathBuf>,
    /// How much each WebSocket connection reads at a time (at least 256).
    /// A plain `ws://` gate connection holds no buffer while it is idle; a
    /// `wss://` one (and a login dialogue) allocates this much when it is
    /// accepted and holds it. Larger reads more of a pipelining client's
    /// batch per system call. Default: 1024.
    pub read_buffer_bytes: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            login_listen: SocketAddr::from(([127, 0, 0, 1], 8002)),
            gate_listen: SocketAddr::from(([127, 0, 0, 1], 8889)),
            allowed_origins: vec![
                "http://127.0.0.1:8080".to_owned(),
                "http://localhost:8080".to_owned(),
            ],
            tls_cert_file: None,
            tls_key_file: None,
            read_buffer_bytes: 1024,
        }
    }
}

#[cfg(test)]
mod tests;
