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
    fn gate_shutdown_grace_defaults_to_5s() {
        let config: Config = toml::from_str("[gate]\nshutdown_grace_ms = 250\n").unwrap();
        assert_eq!(config.gate.shutdown_grace(), Duration::from_millis(250));
        assert_eq!(
            GateConfig::default().shutdown_grace(),
            Duration::from_secs(5)
        );
    }
}
