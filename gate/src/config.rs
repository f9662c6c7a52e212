//! Configuration of the login server and the message gate.
//!
//! Read from a TOML file (every field optional; the defaults reproduce
//! skynet's `examples/login` on loopback) and then overridden by flags.
//! Each field documents its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
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
    /// Accounts file (`user:PHC-hash` lines). Default: none, which runs the
    /// demo authenticator (any user, password `password`) with a warning.
    pub accounts: Option<PathBuf>,
    /// How long shutdown waits for in-flight requests before closing
    /// connections. Default: 5000 ms.
    pub shutdown_grace_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            login: LoginConfig::default(),
            gate: GateConfig::default(),
            backend: BackendConfig::default(),
            accounts: None,
            shutdown_grace_ms: 5000,
        }
    }
}

impl Config {
    /// The shutdown grace period as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// Login server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginConfig {
    /// Listen address. Default: `127.0.0.1:8001` (skynet's example).
    pub listen: SocketAddr,
    /// Accept the weak skynet suite (8-byte DH keys) besides x25519.
    /// Default: true, so existing skynet clients connect.
    pub allow_skynet_suite: bool,
    /// Let several logins of one uid run at once. Default: false (a second
    /// concurrent login gets `406 Not Acceptable`).
    pub multilogin: bool,
    /// Deadline for the whole login dialogue, from accept to status line.
    /// Default: 10000 ms.
    pub dialogue_timeout_ms: u64,
    /// Most unread bytes buffered per login connection; more closes it.
    /// Default: 8192 (skynet's limit).
    pub max_line_bytes: usize,
    /// Most login connections open at once; further accepts wait.
    /// Default: 1024.
    pub max_connections: usize,
    /// Deadline for the authenticator (accounts file or auth service).
    /// Default: 3000 ms.
    pub auth_timeout_ms: u64,
    /// Who checks credentials: `"accounts"` (the top-level `accounts` file,
    /// or the demo authenticator when none is set) or `"service"` (the
    /// backend service named `backend.auth_service`, which needs
    /// `backend.listen`). Default: `"accounts"`.
    pub auth: AuthSource,
}

/// Where the login server sends credentials (`[login] auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthSource {
    /// The accounts file, or the demo authenticator without one.
    #[default]
    Accounts,
    /// A backend service registered as `backend.auth_service` (an
    /// `AuthRequest` per login, bounded by `login.auth_timeout_ms`; a deny,
    /// a missing service or the deadline answer `401`).
    Service,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8001)),
            allow_skynet_suite: true,
            multilogin: false,
            dialogue_timeout_ms: 10_000,
            max_line_bytes: 8192,
            max_connections: 1024,
            auth_timeout_ms: 3000,
            auth: AuthSource::Accounts,
        }
    }
}

impl LoginConfig {
    /// The login dialogue deadline as a duration.
    pub fn dialogue_timeout(&self) -> Duration {
        Duration::from_millis(self.dialogue_timeout_ms)
    }

    /// The authenticator deadline as a duration.
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }
}

/// Message gate settings.
#[derive(Debug, Clone, Deserialize)]
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
    /// Deadline from accept to a complete handshake package. Default: 10000 ms.
    pub handshake_timeout_ms: u64,
    /// Most bytes queued for one connection that the client has not read;
    /// a client that stops reading is disconnected. Default: 1 MiB.
    pub send_queue_bytes: usize,
    /// Most requests of one user running at once; more closes the
    /// connection. Default: 128.
    pub max_inflight_per_user: usize,
    /// skynet's `expired_number`: the response cache keeps roughly the last
    /// `E`..`2E` answered sessions per user. Default: 128.
    pub expired_number: u32,
    /// How long a user may stay disconnected before the gate logs it out.
    /// Default: 300000 ms (5 minutes).
    pub reconnect_window_ms: u64,
    /// At shutdown, how long the gate lets requests in flight finish (and
    /// their responses be written) before it closes the remaining
    /// connections. Default: 5000 ms (the same as the top-level
    /// `shutdown_grace_ms`).
    pub shutdown_grace_ms: u64,
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
    /// user becomes away and may reconnect. 0 = never. Default: 60000 ms
    /// (clients ping every 20 s).
    pub idle_timeout_ms: u64,
    /// The same for plain skynet connections. skynet clients send nothing
    /// while idle and skynet never closes them, so the default is 0 =
    /// never; an operator may set it to reap dead peers.
    pub plain_idle_timeout_ms: u64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            name: "sample".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8888)),
            maxclient: 65536,
            handshake_timeout_ms: 10_000,
            send_queue_bytes: 1 << 20,
            max_inflight_per_user: 128,
            expired_number: 128,
            reconnect_window_ms: 300_000,
            shutdown_grace_ms: 5000,
            push_backlog: 64,
            push_backlog_bytes: 64 * 1024,
            idle_timeout_ms: 60_000,
            plain_idle_timeout_ms: 0,
        }
    }
}

impl GateConfig {
    /// The handshake deadline as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The reconnect window as a duration.
    pub fn reconnect_window(&self) -> Duration {
        Duration::from_millis(self.reconnect_window_ms)
    }

    /// The gate's shutdown grace period as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The idle timeout of a connection (opted in to the extensions or
    /// plain), `None` when off.
    pub fn idle_timeout(&self, opted_in: bool) -> Option<Duration> {
        let ms = if opted_in {
            self.idle_timeout_ms
        } else {
            self.plain_idle_timeout_ms
        };
        (ms > 0).then(|| Duration::from_millis(ms))
    }
}

/// Backend service settings (`[backend]`): see `gate::backend` for the
/// protocol, the routing rule and the deadlines.
#[derive(Debug, Clone, Deserialize)]
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
    /// Default: 5000 ms.
    pub request_timeout_ms: u64,
    /// Deadline from accepting a service link to its `Register` frame.
    /// Default: 5000 ms.
    pub register_timeout_ms: u64,
    /// The gate pings every link this often (and announces it in the
    /// `RegisterAck`). Default: 5000 ms.
    pub heartbeat_interval_ms: u64,
    /// A link silent this long is closed (its requests fail at once);
    /// checked at each heartbeat interval. Default: 15000 ms.
    pub heartbeat_timeout_ms: u64,
    /// Largest frame accepted or sent on a link, in bytes. Default: 1 MiB.
    pub max_frame_len: usize,
    /// Bytes queued for one link that the service has not read yet; beyond
    /// it new requests to that instance get an error response at once.
    /// Default: 4 MiB.
    pub send_queue_bytes: usize,
    /// Most service links open at once (registered or not); the next one is
    /// closed at accept. Default: 1024.
    pub max_links: usize,
    /// The service asked when `login.auth = "service"`. Default: `auth`.
    pub auth_service: String,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            listen: None,
            agent_service: "agent".to_owned(),
            route_mode: false,
            request_timeout_ms: 5000,
            register_timeout_ms: 5000,
            heartbeat_interval_ms: 5000,
            heartbeat_timeout_ms: 15_000,
            max_frame_len: 1 << 20,
            send_queue_bytes: 4 << 20,
            max_links: 1024,
            auth_service: "auth".to_owned(),
        }
    }
}

impl BackendConfig {
    /// The request deadline as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The registration deadline as a duration.
    pub fn register_timeout(&self) -> Duration {
        Duration::from_millis(self.register_timeout_ms)
    }

    /// The ping interval as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// The dead-link timeout as a duration.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let config: Config = toml::from_str("").unwrap();
        assert_eq!(
            config.login.listen,
            SocketAddr::from(([127, 0, 0, 1], 8001))
        );
        assert_eq!(config.gate.name, "sample");
        assert_eq!(config.gate.expired_number, 128);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(toml::from_str::<Config>("[gate]\nmaxclients = 3\n").is_err());
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let config: Config = toml::from_str("[gate]\nname = \"world\"\nmaxclient = 10\n").unwrap();
        assert_eq!(config.gate.name, "world");
        assert_eq!(config.gate.maxclient, 10);
        assert_eq!(config.gate.send_queue_bytes, 1 << 20);
    }

    #[test]
    fn backend_section_parses() {
        let config: Config = toml::from_str(
            "[login]\nauth = \"service\"\n[backend]\nlisten = \"127.0.0.1:8899\"\nroute_mode = true\n",
        )
        .unwrap();
        assert_eq!(config.login.auth, AuthSource::Service);
        assert_eq!(
            config.backend.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 8899)))
        );
        assert!(config.backend.route_mode);
        assert_eq!(config.backend.agent_service, "agent");
        assert_eq!(config.backend.request_timeout(), Duration::from_secs(5));
        let default = Config::default();
        assert_eq!(default.login.auth, AuthSource::Accounts);
        assert!(default.backend.listen.is_none());
    }

    #[test]
    fn push_and_idle_defaults() {
        let gate = GateConfig::default();
        assert_eq!((gate.push_backlog, gate.push_backlog_bytes), (64, 65536));
        assert_eq!(gate.idle_timeout(true), Some(Duration::from_secs(60)));
        assert_eq!(gate.idle_timeout(false), None);
        let config: Config =
            toml::from_str("[gate]\nidle_timeout_ms = 0\nplain_idle_timeout_ms = 5\n").unwrap();
        assert_eq!(config.gate.idle_timeout(true), None);
        assert_eq!(
            config.gate.idle_timeout(false),
            Some(Duration::from_millis(5))
        );
    }

    #[test]
    fn gate_shutdown_grace_defaults_to_5s() {
        let config: Config = toml::from_str("[gate]\nshutdown_grace_ms = 250\n").unwrap();
        assert_eq!(config.gate.shutdown_grace(), Duration::from_millis(250));
        assert_eq!(
            GateConfig::default().shutdown_grace(),
            Duration::from_secs(5)
        );
    }
}
