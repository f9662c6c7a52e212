//! Starting a process: the one path from a [`Config`] to running servers.
//!
//! [`serve`] binds every listener the configuration names for its role
//! (`cluster.role`) and runs that role until its shutdown future resolves;
//! the binary calls it and binds nothing itself. Tests bind `127.0.0.1:0`
//! and call [`run`] or [`run_with`] (the all-in-one role) with their own
//! listeners and shutdown future.
//!
//! * [`bind`]: the listeners of each role, bound from the configuration;
//! * [`parts`]: what every role builds and serves the same way (the
//!   authenticator, the login server, the gate with its backend, the
//!   operations listener, the shutdown);
//! * [`cluster`]: the login node and the gate node of a cluster.

mod bind;
mod cluster;
mod parts;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use codec::websocket::Mapping;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::parts::{
    choose_agent, choose_authenticator, login_server, ops_state, serve_gate, serve_login,
    serve_ops, stopping, tls_listeners, web_listener,
};
use crate::agent::Agent;
use crate::backend::Backend;
use crate::config::{Config, Role};
use crate::login::hashing::HashPool;
use crate::login::placement::GateLink;
use crate::login::{
    AccountsError, AccountsFile, Authenticator, DemoAuth, Gates, LocalPlacer, OnlineTable,
    RandomSource,
};
use crate::players::MsgGate;
use crate::reload::{ConfigSource, Reloader, Targets};

/// Why [`run`] could not start or failed while serving.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The accounts file is missing or malformed.
    #[error(transparent)]
    Accounts(#[from] AccountsError),
    /// The message gate's listener failed.
    #[error("message gate failed: {0}")]
    Gate(#[source] std::io::Error),
    /// The configuration asks for something these components cannot do.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The backend listener failed.
    #[error("backend failed: {0}")]
    Backend(#[source] std::io::Error),
    /// The operations listener failed.
    #[error("operations listener failed: {0}")]
    Ops(#[source] std::io::Error),
    /// A live upgrade could not take the running process over (it serves
    /// on).
    #[error("live upgrade: {0}")]
    Upgrade(String),
    /// A listener of the configuration could not be bound.
    #[error("cannot listen on {addr} ({what})")]
    Listen {
        /// Which listener (`login`, `gate`, `backend`, ...).
        what: &'static str,
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
}

/// Wraps the login server's gate link (tests hold a login mid-way with it;
/// a deployment could add metrics or an RPC hop).
pub type GateLinkLayer = Box<dyn FnOnce(Arc<dyn GateLink>) -> Arc<dyn GateLink> + Send>;

/// Parts of the server a caller may replace; `Default` gives the ones
/// [`run`] uses.
#[derive(Default)]
pub struct Components {
    /// Source of login challenges and keys. Default: a CSPRNG per thread
    /// seeded (and regularly reseeded) from the OS ([`crate::login::ThreadRandom`]).
    pub random: Option<Arc<dyn RandomSource>>,
    /// Authenticator. Default: with `login.auth = "accounts"` the accounts
    /// file of `config.accounts`, or the demo authenticator (with a warning)
    /// when none is configured; with `login.auth = "service"` the backend's
    /// `auth` service ([`Backend::authenticator`]).
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// The gate's agent. Default: the backend's agent
    /// ([`Backend::agent`]) when there is a backend, else [`EchoAgent`](crate::agent::EchoAgent).
    /// Replacing it while keeping a backend leaves services unable to name
    /// a session by uid alone (a `Kick` or `Logout` with an empty subid):
    /// the backend agent keeps that table.
    pub agent: Option<Arc<dyn Agent>>,
    /// Backend services: the listener services dial, bound by the caller
    /// ([`serve`] binds `backend.listen`; tests bind `127.0.0.1:0` and keep a
    /// clone to watch registrations). Default: none, backends off.
    pub backend: Option<Backend>,
    /// Applied to the login server's link to the gates.
    pub gate_link_layer: Option<GateLinkLayer>,
    /// The operations listener (metrics, health, admin API), bound by the
    /// caller ([`serve`] binds `ops.listen`). Default: none.
    pub ops: Option<TcpListener>,
    /// The login server's WebSocket listener, bound by the caller
    /// ([`serve`] binds `web.login_listen` when `web.enabled`). Default: none.
    pub web_login: Option<TcpListener>,
    /// The gate's WebSocket listener, bound by the caller ([`serve`] binds
    /// `web.gate_listen` when `web.enabled`). Default: none.
    pub web_gate: Option<TcpListener>,
    /// The login server's TLS listener, bound by the caller ([`serve`]
    /// binds `tls.login_listen`); served with `tls.cert_file` and
    /// `tls.key_file`. Default: none.
    pub tls_login: Option<TcpListener>,
    /// The gate's TLS listener (`tls.gate_listen`). Default: none.
    pub tls_gate: Option<TcpListener>,
    /// Live upgrades: the socket to serve for the next process, the
    /// listeners to hand it, and what this process took over, if it did
    /// ([`serve`] fills it in from `[upgrade]`). Default: none.
    pub upgrade: Option<Upgrade>,
    /// Configuration reload on SIGHUP and `POST /admin/reload` (see
    /// [`crate::reload`]). Default: none: reloads are refused, and SIGHUP
    /// is not listened for.
    pub reload: Option<Reload>,
}

/// What a process needs to reload its configuration while it runs.
#[derive(Debug)]
pub struct Reload {
    /// Where the configuration is read again from.
    pub source: ConfigSource,
    /// The configuration the process runs, as read (before its bounds
    /// were fitted to the file limit).
    pub requested: Config,
    /// The file limit the bounds were fitted to, if they were.
    pub file_limit: Option<u64>,
}

/// The live-upgrade parts of a process (see [`crate::upgrade`]).
#[derive(Debug, Default)]
pub struct Upgrade {
    /// The upgrade socket to serve once running (`upgrade.socket`).
    pub socket: Option<std::path::PathBuf>,
    /// Duplicates of the listening sockets, for the next process.
    pub listeners: Vec<(String, std::os::fd::OwnedFd)>,
    /// What this process took over from an old one.
    pub inherited: Option<crate::upgrade::new::Inherited>,
}

impl fmt::Debug for Components {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Components")
            .field("random", &self.random.is_some())
            .field(
                "authenticator",
                &self.authenticator.as_ref().map(|a| a.name()),
            )
            .field("agent", &self.agent.is_some())
            .field(
                "backend",
                &self.backend.as_ref().and_then(Backend::local_addr),
            )
            .field("gate_link_layer", &self.gate_link_layer.is_some())
            .field("ops", &self.ops.as_ref().and_then(|l| l.local_addr().ok()))
            .field(
                "web_login",
                &self.web_login.as_ref().and_then(|l| l.local_addr().ok()),
            )
            .field(
                "web_gate",
                &self.web_gate.as_ref().and_then(|l| l.local_addr().ok()),
            )
            .field("upgrade", &self.upgrade.is_some())
            .field("reload", &self.reload.as_ref().map(|r| &r.source))
            .finish()
    }
}

/// Runs the role `config.cluster.role` names, on listeners bound from
/// `config`, until `shutdown` resolves: the all-in-one process ([`run_with`]),
/// a login node or a gate node of a cluster. What each role binds:
///
/// * every role: `ops.listen` if set;
/// * login and all-in-one: `login.listen`, and `web.login_listen` when
///   `web.enabled`;
/// * gate and all-in-one: `gate.listen`, `web.gate_listen` when
///   `web.enabled`, and `backend.listen` if set (with its link secret and
///   TLS);
/// * gate node: `cluster.control_listen`.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    serve_reloadable(config, None, shutdown).await
}

/// [`serve`], reloading the configuration from `source` on SIGHUP and
/// `POST /admin/reload` (see [`crate::reload`]); without a source (or on
/// a cluster node) reloads are refused with a log line, and SIGHUP never
/// ends the process.
pub async fn serve_reloadable(
    mut config: Config,
    source: Option<ConfigSource>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    config.check().map_err(RunError::Config)?;
    let requested = config.clone();
    let file_limit = crate::net::budget::raise_file_limit();
    if let Some(limit) = file_limit {
        crate::net::budget::fit(&mut config, limit);
        info!(
            file_limit = limit,
            maxclient = config.gate.maxclient,
            login_connections = config.login.max_connections,
            backend_links = config.backend.max_links,
            backend_pending = config.backend.max_pending_links,
            control_pending = config.cluster.control_max_pending,
            ops_connections = config.ops.max_connections,
            "connection bounds fitted to the file limit"
        );
    }
    // A new process of a live upgrade takes the running one's listeners
    // over: they are found by address as each is "bound" below.
    let inherited = match &config.upgrade.takeover {
        Some(path) => Some(
            crate::upgrade::new::take_over(path)
                .await
                .map_err(RunError::Upgrade)?,
        ),
        None => None,
    };
    let ops = bind::ops(&config)?;
    // Registered before any listener serves, so a SIGHUP never ends the
    // process once it is up.
    let hangups = crate::reload::hangups();
    match config.cluster.role {
        Role::Login => {
            let login = bind::listener(config.login.listen, "login")?;
            let mut components = Components {
                ops,
                web_login: bind::web(&config, config.web.login_listen)?,
                tls_login: bind::tls(config.tls.login_listen)?,
                ..Components::default()
            };
            crate::upgrade::new::drop_unclaimed();
            if config.upgrade.socket.is_some() || inherited.is_some() {
                components.upgrade = Some(Upgrade {
                    socket: config.upgrade.socket.clone(),
                    listeners: bind::duplicates(&[("login", &login)], &components),
                    inherited,
                });
            }
            tokio::select! {
                end = cluster::run_login_node(login, config, components, shutdown) => end,
                () = refuse_reloads(hangups, "login") => unreachable!("refusing reloads never ends"),
            }
        }
        Role::Gate => {
            let (gate, mut components) = bind::gate_side(&config, ops)?;
            let control = bind::listener(config.cluster.control_listen, "control")?;
            crate::upgrade::new::drop_unclaimed();
            if config.upgrade.socket.is_some() || inherited.is_some() {
                components.upgrade = Some(Upgrade {
                    socket: config.upgrade.socket.clone(),
                    listeners: bind::duplicates(
                        &[("gate", &gate), ("control", &control)],
                        &components,
                    ),
                    inherited,
                });
            }
            tokio::select! {
                end = cluster::run_gate_node(gate, control, config, components, shutdown) => end,
                () = refuse_reloads(hangups, "gate") => unreachable!("refusing reloads never ends"),
            }
        }
        Role::All => {
            let (gate, mut components) = bind::gate_side(&config, ops)?;
            let login = bind::listener(config.login.listen, "login")?;
            components.web_login = bind::web(&config, config.web.login_listen)?;
            components.tls_login = bind::tls(config.tls.login_listen)?;
            crate::upgrade::new::drop_unclaimed();
            if config.upgrade.socket.is_some() || inherited.is_some() {
                components.upgrade = Some(Upgrade {
                    socket: config.upgrade.socket.clone(),
                    listeners: bind::duplicates(&[("login", &login), ("gate", &gate)], &components),
                    inherited,
                });
            }
            components.reload = source.map(|source| Reload {
                source,
                requested,
                file_limit,
            });
            run_with_hangups(login, gate, config, components, hangups, shutdown).await
        }
    }
}

/// Answers every SIGHUP of a cluster node with a refusal in the log.
async fn refuse_reloads(hangups: Option<crate::reload::Hangups>, role: &str) {
    if let Some(mut hangups) = hangups {
        while hangups.next().await.is_some() {
            crate::reload::refused("SIGHUP", crate::reload::Refusal::not_here(role));
        }
    }
    std::future::pending::<()>().await;
}

/// Reloads on every SIGHUP until `token`.
async fn serve_reloads(
    reloader: Option<Arc<Reloader>>,
    hangups: Option<crate::reload::Hangups>,
    token: &CancellationToken,
) {
    let (Some(reloader), Some(mut hangups)) = (reloader, hangups) else {
        return;
    };
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            hangup = hangups.next() => match hangup {
                Some(()) => {
                    reloader.reload("SIGHUP").await;
                }
                None => return,
            },
        }
    }
}

/// Runs the login server on `login_listener` and the gate `config.gate.name`
/// (with the echo agent) on `gate_listener` until `shutdown` resolves (for
/// backend services use [`run_with`] and [`Components::backend`]); then
/// stops accepting, lets in-flight dialogues and requests finish within
/// `config.shutdown_grace`, closes the rest and returns.
///
/// The listen addresses in `config` are not used: the caller binds (tests
/// bind `127.0.0.1:0`; [`serve`] binds the configured ones).
pub async fn run(
    login_listener: TcpListener,
    gate_listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    run_with(
        login_listener,
        gate_listener,
        config,
        Components::default(),
        shutdown,
    )
    .await
}

/// [`run`] with some of its parts replaced.
pub async fn run_with(
    login_listener: TcpListener,
    gate_listener: TcpListener,
    config: Config,
    components: Components,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let hangups = if components.reload.is_some() {
        crate::reload::hangups()
    } else {
        None
    };
    run_with_hangups(
        login_listener,
        gate_listener,
        config,
        components,
        hangups,
        shutdown,
    )
    .await
}

/// [`run_with`], reloading on `hangups` when `components.reload` is set.
async fn run_with_hangups(
    login_listener: TcpListener,
    gate_listener: TcpListener,
    config: Config,
    components: Components,
    hangups: Option<crate::reload::Hangups>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let backend = components.backend;
    let (auth, accounts) =
        choose_authenticator(&config, components.authenticator, backend.as_ref())?;
    let online = Arc::new(OnlineTable::new());
    let agent = choose_agent(components.agent, backend.as_ref());
    let mut upgrade = components.upgrade.unwrap_or_default();
    let (gate, taken_over) = match upgrade.inherited.take() {
        None => (MsgGate::new(config.gate(), agent, online.clone()), None),
        Some(inherited) if inherited.state.epoch.is_some() || inherited.state.login_node => {
            let why =
                "the running process is a cluster node; start this one with its --role".to_owned();
            inherited.channel.refuse(&why);
            return Err(RunError::Upgrade(why));
        }
        Some(inherited) => {
            let gate =
                MsgGate::new_restored(config.gate(), agent, online.clone(), &inherited.state);
            match crate::upgrade::new::restore(&gate, inherited) {
                Ok((sessions, channel)) => {
                    for (uid, subid) in sessions {
                        online.restore(uid, Bytes::from(config.gate.name.clone()), subid);
                    }
                    (gate, Some(channel))
                }
                Err((why, channel)) => {
                    channel.refuse(&why);
                    return Err(RunError::Upgrade(why));
                }
            }
        }
    };
    let mut gates = Gates::new();
    gates.register(gate.clone());
    let mut link: Arc<dyn GateLink> = Arc::new(gates);
    if let Some(layer) = components.gate_link_layer {
        link = layer(link);
    }
    let placer = Arc::new(LocalPlacer {
        online,
        gates: link,
        multilogin: config.login.multilogin,
    });
    let login = login_server(&config, auth, placer, components.random)?;
    let login_dialogues = login.dialogues();
    let web_login = web_listener(&config, components.web_login, Mapping::Lines)?;
    let web_gate = web_listener(&config, components.web_gate, Mapping::Packages)?;
    let (tls_login, tls_gate, tcp_tls) =
        tls_listeners(&config, components.tls_login, components.tls_gate)?;
    let ops = ops_state(
        &config,
        "all",
        Some(gate.clone()),
        backend.clone(),
        Some(login.metrics()),
        None,
    )?;
    let reloader = components.reload.map(|reload| {
        let web_tls = [&web_login, &web_gate]
            .into_iter()
            .flatten()
            .filter_map(|(_, policy)| policy.tls().cloned())
            .collect();
        let targets = Targets {
            gate: gate.clone(),
            login: login.limits(),
            accounts,
            web_tls,
            tcp_tls: tcp_tls.clone(),
        };
        Arc::new(Reloader::new(
            reload.source,
            reload.requested,
            reload.file_limit,
            targets,
        ))
    });
    if let Some(reloader) = &reloader {
        ops.set_reloader(Arc::clone(reloader));
    }

    let token = CancellationToken::new();
    // Set once the gate is done: backend links outlive the start of the
    // shutdown (they carry the answers of requests in flight while the gate
    // drains, and the final session events).
    let gate_stopped = CancellationToken::new();
    let handover = crate::upgrade::old::Handover {
        gate: Some(gate.clone()),
        listeners: upgrade.listeners,
        busy: Some(login_dialogues),
        epoch: None,
        finish: None,
        grace: config.shutdown_grace,
    };
    let upgrades = serve_upgrades(
        upgrade.socket,
        handover,
        taken_over,
        backend.as_ref(),
        &token,
    );
    let ((), (), (), gate_end, ops_result, upgrade_result) = tokio::join!(
        serve_reloads(reloader, hangups, &token),
        stopping(shutdown, &token),
        serve_login(login, login_listener, (web_login, tls_login), &token),
        serve_gate(
            &gate,
            gate_listener,
            (web_gate, tls_gate),
            backend.as_ref(),
            &token,
            &gate_stopped
        ),
        serve_ops(components.ops, ops, token.clone()),
        upgrades,
    );
    upgrade_result?;
    ops_result.map_err(RunError::Ops)?;
    gate_end.into_result()?;
    info!("stopped");
    Ok(())
}

/// Live upgrades of an all-in-one process or a cluster gate node:
/// finishes the takeover this process started with, if it did (the
/// restored connections start once the old process has let go; if it does
/// not, this process exits at once, touching no socket the old one serves
/// on), then serves the upgrade `socket` for the next process until
/// `token`, handing over what `handover` says.
pub(super) async fn serve_upgrades(
    socket: Option<std::path::PathBuf>,
    handover: crate::upgrade::old::Handover,
    taken_over: Option<crate::upgrade::new::Channel>,
    backend: Option<&Backend>,
    token: &CancellationToken,
) -> Result<(), RunError> {
    let (gate, grace) = (handover.gate.as_ref(), handover.grace);
    if let Some(channel) = taken_over {
        if let Err(why) = channel.finish(gate).await {
            tracing::error!(%why, "live upgrade failed after the state was received: exiting without serving");
            std::process::exit(1);
        }
        // The agent's services link again once the old process is gone:
        // the moved connections wait for them (at most the grace), so
        // their next requests do not fail for want of an instance.
        if let Some(backend) = backend.filter(|b| !b.config().route_mode) {
            let agent = backend.config().agent_service.clone();
            let _ = tokio::time::timeout(grace, backend.wait_any(&agent)).await;
        }
        if let Some(gate) = gate {
            gate.release_restored();
        }
    }
    let Some(socket) = socket else {
        return Ok(());
    };
    crate::upgrade::old::serve(socket, handover, token.clone())
        .await
        .map_err(|e| RunError::Upgrade(e.to_string()))
}

/// The accounts file of `config.accounts`, or the demo authenticator.
pub fn authenticator(config: &Config) -> Result<Arc<dyn Authenticator>, AccountsError> {
    Ok(accounts_or_demo(config)?.0)
}

/// [`authenticator`], and the accounts file when it is one (a reload
/// replaces its accounts).
fn accounts_or_demo(
    config: &Config,
) -> Result<(Arc<dyn Authenticator>, Option<AccountsFile>), AccountsError> {
    match &config.accounts {
        Some(path) => {
            let pool = HashPool::sized(config.login.hash_workers, config.login.hash_queue);
            let accounts = AccountsFile::load(path)?.with_pool(pool);
            if accounts.is_empty() {
                warn!(path = %path.display(), "the accounts file lists no account: every login is refused");
            } else {
                info!(path = %path.display(), accounts = accounts.len(), "accounts loaded");
            }
            Ok((Arc::new(accounts.clone()), Some(accounts)))
        }
        None => {
            warn!(
                "DEMO AUTHENTICATION: any user name with the password `password` logs in. \
                 Never run this in production: configure an accounts file \
                 (`accounts = \"FILE\"` or --accounts FILE; hashes from `gate hash-password`)."
            );
            Ok((Arc::new(DemoAuth), None))
        }
    }
}
