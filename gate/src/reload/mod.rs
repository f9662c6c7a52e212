//! Configuration reload without a restart: SIGHUP or the admin call
//! `POST /admin/reload` make a running all-in-one process read its
//! configuration again and apply what can change while it serves.
//!
//! A reload reads the file the process was started with (`--config`)
//! with the same flags laid over it ([`ConfigSource`]; a flag keeps
//! winning over the file), compares the result with the configuration
//! in use field by field, and is all or nothing: the whole new
//! configuration is read and checked first (the file's syntax, every
//! value, the accounts file, the TLS certificate and key, the log level),
//! and only if every changed field may change live is anything applied.
//! Otherwise the running configuration stays exactly as it was and the
//! answer names the fields or the reason. One log line per reload says
//! what changed or why it was refused.
//!
//! What changes live ([`LIVE`]), and for whom:
//!
//! * the gate's session limits (`reconnect_window`,
//!   `max_inflight_per_user`, `send_queue_bytes`, `expired_number`,
//!   `cache_bytes`, `push_backlog`, `push_backlog_bytes`) hold for
//!   sessions placed after the reload, its connection limits
//!   (`handshake_timeout`, `idle_timeout`, `plain_idle_timeout`,
//!   `send_queue_bytes`) for connections accepted after it: a session or
//!   connection keeps the limits it started under, so none is cut by a
//!   change it could not have known about;
//! * `gate.maxclient`, `login.max_connections` and the per-source and
//!   per-network bounds and rates of both listeners hold for the next
//!   connection; none open is closed, and while more are open than a
//!   lowered bound allows, new ones are refused (the gate) or wait (the
//!   login server) until enough have left. Bounds are fitted to the file
//!   budget as at start;
//! * the login deadlines (`dialogue_timeout`, `first_line_timeout`,
//!   `auth_timeout`) hold for deadlines armed after the reload,
//!   `evict_silent_after` for the next eviction;
//! * the login queue (`admission_rate`, `admission_burst`, `queue_max`,
//!   `queue_timeout`) at once, for logins waiting too (a rate of 0 lets
//!   them all go);
//! * the accounts file (`accounts`, its path or its contents): logins
//!   checked after the reload use it; sessions of removed users go on;
//! * `[log]` `level` and `format`: events after the reload;
//! * the `[tls]` listeners' certificate and key (`tls.cert_file`,
//!   `tls.key_file`: other files, or the same files renewed) for TLS
//!   handshakes after the reload (turning TLS on or off is a restart);
//! * the WebSocket listeners' TLS certificate and key (`web.tls_cert_file`,
//!   `web.tls_key_file`, their paths or their contents): handshakes after
//!   the reload get the new certificate; connections up keep theirs.
//!
//! Everything else is refused with the fields named: addresses, the
//! server name, the roles and cluster settings, backend settings, the
//! upgrade socket, the shutdown grace, `[sources]`, the login throttle,
//! the suites and keys, the hashing pool, the operations listener, the
//! WebSocket settings besides the certificate, and switching between
//! demo authentication and an accounts file or turning TLS on or off.
//! A process started without a configuration file has nothing to reload
//! and refuses. Cluster nodes (`--role login`, `--role gate`) refuse
//! every reload for now.

mod diff;
mod live;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use tracing::{info, warn};

pub use self::diff::{LIVE, differences};
pub use self::live::Live;
use crate::config::Config;
use crate::logging::esc;
use crate::login::{AccountsChanges, AccountsFile, LoginLimits};
use crate::players::MsgGate;
use crate::tls::{ServerKey, ServerTls};

/// Reads the configuration again: the file the process started with and
/// the flags it was given, in the order they were applied at start.
pub struct ConfigSource {
    /// The configuration file (`--config`); `None`: the process was
    /// started without one, and reloads are refused.
    pub path: Option<PathBuf>,
    /// Reads the file and lays the flags over it; `Err` says why the
    /// result is not a configuration (syntax, an unknown field, a bad
    /// value).
    pub read: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
}

impl fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied: the fields that changed (empty: the file says what runs).
    Applied(Vec<String>),
    /// Refused: nothing changed.
    Refused(Refusal),
}

/// Why a reload was refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The process was started without a configuration file.
    NoFile,
    /// This process cannot reload (a cluster node).
    NotHere(String),
    /// The file cannot be read or is not a valid configuration.
    Invalid(String),
    /// A file it names (accounts, certificate, key) or a value (the log
    /// level) cannot be used.
    Unusable(String),
    /// Fields that cannot change while the process runs were changed.
    Fixed(Vec<String>),
}

impl Outcome {
    /// The HTTP status of the admin call's answer: 200 applied, 409 for
    /// what this process cannot do (fields that need a restart, no file,
    /// a cluster node), 422 for a file that cannot be used.
    pub fn status(&self) -> u16 {
        match self {
            Outcome::Applied(_) => 200,
            Outcome::Refused(Refusal::Invalid(_) | Refusal::Unusable(_)) => 422,
            Outcome::Refused(_) => 409,
        }
    }

    /// The admin call's answer.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Outcome::Applied(changed) => json!({ "applied": true, "changed": changed }),
            Outcome::Refused(refusal) => {
                let mut body = json!({ "applied": false, "error": refusal.to_string() });
                if let Refusal::Fixed(fields) = refusal {
                    body["fields"] = json!(fields);
                }
                body
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoFile => f.write_str(
                "no configuration file to reload: the process was started without --config",
            ),
            Refusal::NotHere(why) | Refusal::Invalid(why) | Refusal::Unusable(why) => {
                f.write_str(why)
            }
            Refusal::Fixed(fields) => write!(
                f,
                "cannot change while running (restart or upgrade to change): {}",
                fields.join(", ")
            ),
        }
    }
}

/// Reloads a running all-in-one process (see the module docs).
pub struct Reloader {
    source: ConfigSource,
    /// The file limit bounds were fitted to at start.
    file_limit: Option<u64>,
    /// The configuration in use, as read (before it was fitted to the
    /// file limit). The lock also keeps two reloads from running at once.
    running: tokio::sync::Mutex<Config>,
    gate: MsgGate,
    login: LoginLimits,
    accounts: Option<AccountsFile>,
    web_tls: Vec<ServerTls>,
    tcp_tls: Vec<ServerTls>,
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// What a reload will apply, all of it checked.
struct Prepared {
    config: Config,
    changed: Vec<String>,
    accounts: Option<(AccountsFile, AccountsChanges)>,
    tls: Option<ServerKey>,
    tcp_tls: Option<ServerKey>,
    log: bool,
}

/// The parts of a running process a reload changes.
#[derive(Debug)]
pub struct Targets {
    /// The gate.
    pub gate: MsgGate,
    /// The login server's limits.
    pub login: LoginLimits,
    /// The accounts file in use, if logins are checked against one.
    pub accounts: Option<AccountsFile>,
    /// The TLS of the WebSocket listeners, if they serve `wss://`.
    pub web_tls: Vec<ServerTls>,
    /// The TLS of the `[tls]` listeners, if there are any.
    pub tcp_tls: Vec<ServerTls>,
}

impl Reloader {
    /// A reloader of the process that runs `running` (as read, before
    /// any fitting to the file limit `file_limit`), reading from
    /// `source` and changing `targets`.
    pub fn new(
        source: ConfigSource,
        running: Config,
        file_limit: Option<u64>,
        targets: Targets,
    ) -> Reloader {
        Reloader {
            source,
            file_limit,
            running: tokio::sync::Mutex::new(running),
            gate: targets.gate,
            login: targets.login,
            accounts: targets.accounts,
            web_tls: targets.web_tls,
            tcp_tls: targets.tcp_tls,
        }
    }

    /// Reads the configuration again and applies it, or nothing; logs one
    /// line saying which, naming `trigger` (`SIGHUP`, `admin`).
    pub async fn reload(self: &Arc<Self>, trigger: &'static str) -> Outcome {
        let mut running = self.running.lock().await;
        let me = Arc::clone(self);
        let baseline = running.clone();
        // Reading files and checking hashes and keys blocks: off the
        // runtime's threads.
        let prepared = tokio::task::spawn_blocking(move || me.prepare(&baseline))
            .await
            .unwrap_or_else(|e| Err(Refusal::Unusable(format!("the reload failed: {e}"))));
        let outcome = match prepared {
            Ok(prepared) => match self.apply(&prepared) {
                Ok(()) => {
                    *running = prepared.config;
                    Outcome::Applied(prepared.changed)
                }
                Err(why) => Outcome::Refused(Refusal::Unusable(why)),
            },
            Err(refusal) => Outcome::Refused(refusal),
        };
        log(trigger, &outcome);
        outcome
    }

    /// Everything a reload checks before it changes anything.
    fn prepare(&self, running: &Config) -> Result<Prepared, Refusal> {
        if self.source.path.is_none() {
            return Err(Refusal::NoFile);
        }
        let config = (self.source.read)().map_err(Refusal::Invalid)?;
        config.check().map_err(Refusal::Invalid)?;
        let found = differences(running, &config);
        let fixed: Vec<String> = found
            .iter()
            .filter(|field| !self.may_change(field, running, &config))
            .cloned()
            .collect();
        if !fixed.is_empty() {
            return Err(Refusal::Fixed(fixed));
        }
        let mut changed = found;
        let accounts = match (&self.accounts, &config.accounts) {
            (Some(current), Some(path)) => {
                let read = AccountsFile::load(path)
                    .map_err(|e| Refusal::Unusable(format!("accounts: {e}")))?;
                let changes = current.changes(&read);
                if !changes.is_empty() && !changed.iter().any(|f| f == "accounts") {
                    changed.push(format!("accounts ({changes})"));
                }
                Some((read, changes))
            }
            _ => None,
        };
        let tls = match (
            self.web_tls.first(),
            &config.web.tls_cert_file,
            &config.web.tls_key_file,
        ) {
            (Some(current), Some(cert), Some(key)) => {
                let key = ServerKey::load(cert, key)
                    .map_err(|e| Refusal::Unusable(format!("web TLS: {e}")))?;
                if !current.serves(&key) {
                    changed.push("web TLS certificate".to_owned());
                }
                Some(key)
            }
            _ => None,
        };
        let tcp_tls = match (
            self.tcp_tls.first(),
            &config.tls.cert_file,
            &config.tls.key_file,
        ) {
            (Some(current), Some(cert), Some(key)) => {
                let key = ServerKey::load(cert, key)
                    .map_err(|e| Refusal::Unusable(format!("TLS: {e}")))?;
                if !current.serves(&key) {
                    changed.push("TLS certificate".to_owned());
                }
                Some(key)
            }
            _ => None,
        };
        let log = running.log != config.log;
        if log {
            crate::logging::filter(config.log.level.as_deref()).map_err(Refusal::Unusable)?;
        }
        Ok(Prepared {
            config,
            changed,
            accounts,
            tls,
            tcp_tls,
            log,
        })
    }

    /// Whether `field` (a dotted path of [`differences`]) may change live
    /// from `old` to `new` in this process.
    fn may_change(&self, field: &str, old: &Config, new: &Config) -> bool {
        match field {
            // An accounts file for another: yes; demo authentication for
            // one, or back: a restart.
            "accounts" => {
                self.accounts.is_some() && old.accounts.is_some() && new.accounts.is_some()
            }
            // Another certificate: yes; TLS on or off: a restart.
            "web.tls_cert_file" | "web.tls_key_file" => {
                !self.web_tls.is_empty()
                    && new.web.tls_cert_file.is_some()
                    && new.web.tls_key_file.is_some()
            }
            "tls.cert_file" | "tls.key_file" => {
                !self.tcp_tls.is_empty()
                    && new.tls.cert_file.is_some()
                    && new.tls.key_file.is_some()
            }
            "log.level" | "log.format" => crate::logging::reloadable(),
            field => LIVE.contains(&field),
        }
    }

    /// Applies what [`Reloader::prepare`] checked. Only the log settings
    /// can still fail (they go first, so a failure changes nothing).
    fn apply(&self, prepared: &Prepared) -> Result<(), String> {
        if prepared.log {
            crate::logging::apply(&prepared.config.log)?;
        }
        let mut fitted = prepared.config.clone();
        if let Some(limit) = self.file_limit {
            crate::net::budget::fit(&mut fitted, limit);
        }
        self.gate.reconfigure(&fitted.gate());
        self.login.reconfigure(&crate::config::LoginConfig {
            sources: fitted.sources,
            ..fitted.login.clone()
        });
        if let (Some(current), Some((read, changes))) = (&self.accounts, &prepared.accounts)
            && !changes.is_empty()
        {
            current.replace(read);
        }
        if let Some(key) = &prepared.tls {
            for tls in &self.web_tls {
                tls.replace(key);
            }
        }
        if let Some(key) = &prepared.tcp_tls {
            for tls in &self.tcp_tls {
                tls.replace(key);
            }
        }
        Ok(())
    }
}

/// The one log line of a reload.
fn log(trigger: &'static str, outcome: &Outcome) {
    match outcome {
        Outcome::Applied(changed) if changed.is_empty() => {
            info!(trigger, "configuration reloaded: nothing changed");
        }
        Outcome::Applied(changed) => {
            let changed = changed.join(", ");
            info!(trigger, changed = %esc(changed.as_bytes()), "configuration reloaded");
        }
        Outcome::Refused(refusal) => {
            let reason = refusal.to_string();
            warn!(
                trigger,
                reason = %esc(reason.as_bytes()),
                "configuration reload refused: the running configuration is unchanged"
            );
        }
    }
}

/// A reload refused before it started (`refusal`), logged like any
/// other.
pub fn refused(trigger: &'static str, refusal: Refusal) -> Outcome {
    let outcome = Outcome::Refused(refusal);
    log(trigger, &outcome);
    outcome
}

impl Refusal {
    /// The refusal of a cluster node of `role` (`login`, `gate`).
    pub fn not_here(role: &str) -> Refusal {
        Refusal::NotHere(format!(
            "configuration reload is for the all-in-one role; this is a {role} node (restart it to change its configuration)"
        ))
    }
}

/// SIGHUP, as a stream of reload requests: registered when called (the
/// signal no longer ends the process from then on), `None` where the
/// platform has none or it cannot be registered (said in the log).
pub fn hangups() -> Option<Hangups> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(signal) => Some(Hangups(signal)),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP: reload through the admin API");
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// SIGHUPs received ([`hangups`]).
#[derive(Debug)]
pub struct Hangups(#[cfg(unix)] tokio::signal::unix::Signal);

impl Hangups {
    /// The next SIGHUP; `None` once none can come.
    pub async fn next(&mut self) -> Option<()> {
        #[cfg(unix)]
        {
            self.0.recv().await
        }
        #[cfg(not(unix))]
        {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_the_status_and_the_fields() {
        let applied = Outcome::Applied(vec!["gate.maxclient".to_owned()]);
        assert_eq!(applied.status(), 200);
        assert_eq!(
            applied.to_json(),
            json!({"applied": true, "changed": ["gate.maxclient"]})
        );
        let fixed = Outcome::Refused(Refusal::Fixed(vec!["gate.name".to_owned()]));
        assert_eq!(fixed.status(), 409);
        assert_eq!(fixed.to_json()["fields"], json!(["gate.name"]));
        assert!(
            fixed.to_json()["error"]
                .as_str()
                .unwrap()
                .ends_with(": gate.name")
        );
        assert_eq!(
            Outcome::Refused(Refusal::Invalid("syntax".to_owned())).status(),
            422
        );
        assert_eq!(Outcome::Refused(Refusal::NoFile).status(), 409);
    }
}
