//! The library entry point: build the login server and the gate from a
//! [`Config`], serve both listeners, shut down gracefully.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use codec::websocket::Mapping;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agent::{Agent, EchoAgent};
use crate::backend::Backend;
use crate::config::{AuthSource, Config};
use crate::login::placement::{GateLink, Placer};
use crate::login::{
    AccountsError, AccountsFile, Authenticator, DemoAuth, Gates, LocalPlacer, LoginServer,
    OnlineTable, RandomSource,
};
use crate::msg::MsgGate;
use crate::net::web::WebPolicy;
use crate::ops::{AdminToken, Ops};

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
    /// ([`Backend::agent`]) when there is a backend, else [`EchoAgent`].
    /// Replacing it while keeping a backend leaves services unable to name
    /// a session by uid alone (a `Kick` or `Logout` with an empty subid):
    /// the backend agent keeps that table.
    pub agent: Option<Arc<dyn Agent>>,
    /// Backend services: the listener services dial, bound by the caller
    /// (`main` binds `backend.listen`; tests bind `127.0.0.1:0` and keep a
    /// clone to watch registrations). Default: none, backends off.
    pub backend: Option<Backend>,
    /// Applied to the login server's link to the gates.
    pub gate_link_layer: Option<GateLinkLayer>,
    /// The operations listener (metrics, health, admin API), bound by the
    /// caller (`main` binds `ops.listen`). Default: none.
    pub ops: Option<TcpListener>,
    /// The login server's WebSocket listener, bound by the caller (`main`
    /// binds `web.login_listen` when `web.enabled`). Default: none.
    pub web_login: Option<TcpListener>,
    /// The gate's WebSocket listener, bound by the caller (`main` binds
    /// `web.gate_listen` when `web.enabled`). Default: none.
    pub web_gate: Option<TcpListener>,
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
            .finish()
    }
}

/// Runs the login server on `login_listener` and the gate `config.gate.name`
/// (with the echo agent) on `gate_listener` until `shutdown` resolves (for
/// backend services use [`run_with`] and [`Components::backend`]); then
/// stops accepting, lets in-flight dialogues and requests finish within
/// `config.shutdown_grace`, closes the rest and returns.
///
/// The listen addresses in `config` are not used: the caller binds (tests
/// bind `127.0.0.1:0`).
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
    let backend = components.backend;
    let auth = choose_authenticator(&config, components.authenticator, backend.as_ref())?;
    let online = Arc::new(OnlineTable::new());
    let agent = choose_agent(components.agent, backend.as_ref());
    let gate = MsgGate::new(config.gate(), agent, online.clone());
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
    let web_login = web_listener(&config, components.web_login, Mapping::Lines)?;
    let web_gate = web_listener(&config, components.web_gate, Mapping::Packages)?;
    let ops = ops_state(
        &config,
        "all",
        Some(gate.clone()),
        backend.clone(),
        Some(login.metrics()),
        None,
    )?;

    let token = CancellationToken::new();
    // Backend links outlive the start of the shutdown: they carry the
    // answers of requests in flight while the gate drains, and the final
    // session events. They close once the gate is done.
    let backends_stop = CancellationToken::new();
    let stop = async {
        shutdown.await;
        info!("shutting down");
        token.cancel();
    };
    // Either server stopping on its own (the gate's listener failing) also
    // stops the other, so `run` never hangs with half a server.
    let login_done = async {
        login
            .serve_with_web(login_listener, web_login, token.clone())
            .await;
        token.cancel();
    };
    let gate_done = async {
        let result = gate
            .serve_with_web(gate_listener, web_gate, token.clone())
            .await;
        token.cancel();
        backends_stop.cancel();
        result
    };
    let backend_done = serve_backend(backend.as_ref(), &gate, &token, &backends_stop);
    let ops_done = serve_ops(components.ops, ops, token.clone());
    let ((), (), gate_result, backend_result, ops_result) = tokio::join!(
        async {
            tokio::select! {
                () = stop => {}
                () = token.cancelled() => {}
            }
        },
        login_done,
        gate_done,
        backend_done,
        ops_done,
    );
    ops_result.map_err(RunError::Ops)?;
    gate_result.map_err(RunError::Gate)?;
    backend_result.map_err(RunError::Backend)?;
    info!("stopped");
    Ok(())
}

/// The agent `run` uses: the one given, else the backend's, else the
/// built-in echo agent (see [`Components::agent`]).
pub(crate) fn choose_agent(
    given: Option<Arc<dyn Agent>>,
    backend: Option<&Backend>,
) -> Arc<dyn Agent> {
    match (given, backend) {
        (Some(agent), _) => agent,
        (None, Some(backend)) => backend.agent(),
        (None, None) => Arc::new(EchoAgent),
    }
}

/// The authenticator `run` uses: the one given, else by
/// `config.login.auth` the accounts file (or demo) or the backend's `auth`
/// service.
pub(crate) fn choose_authenticator(
    config: &Config,
    given: Option<Arc<dyn Authenticator>>,
    backend: Option<&Backend>,
) -> Result<Arc<dyn Authenticator>, RunError> {
    Ok(match (given, config.login.auth, backend) {
        (Some(auth), _, _) => auth,
        (None, AuthSource::Accounts, _) => authenticator(config)?,
        (None, AuthSource::Service, Some(backend)) => {
            info!(service = %backend.config().auth_service, "credentials are checked by a backend service");
            backend.authenticator(config.login.auth_timeout)
        }
        (None, AuthSource::Service, None) => {
            return Err(RunError::Config(
                "login.auth = \"service\" needs backend services (set backend.listen / --backend-listen)"
                    .to_owned(),
            ));
        }
    })
}

/// The login server of `config` placing users with `placer`: its
/// long-term key loaded, its random source set.
pub(crate) fn login_server(
    config: &Config,
    auth: Arc<dyn Authenticator>,
    placer: Arc<dyn Placer>,
    random: Option<Arc<dyn RandomSource>>,
) -> Result<LoginServer, RunError> {
    let mut login = LoginServer::new(config.login.clone(), auth, placer)
        .with_shutdown_grace(config.shutdown_grace);
    match &config.login.server_key_file {
        Some(path) => {
            let key = crate::login::server_key::load(path).map_err(RunError::Config)?;
            info!(public = %crate::login::server_key::public_text(&key), "clients may pin this server key");
            login = login.with_server_key(key);
        }
        None if config.login.require_pinned => {
            return Err(RunError::Config(
                "login.require_pinned needs login.server_key_file (make one with `gate keygen`)"
                    .to_owned(),
            ));
        }
        None => {}
    }
    if let Some(random) = random {
        login = login.with_random(random);
    }
    Ok(login)
}

/// The operations state of a process, with the admin token of
/// `config.ops` loaded.
pub(crate) fn ops_state(
    config: &Config,
    role: &'static str,
    gate: Option<MsgGate>,
    backend: Option<Backend>,
    login: Option<Arc<crate::login::metrics::LoginMetrics>>,
    dir: Option<crate::cluster::Directory>,
) -> Result<Arc<Ops>, RunError> {
    let token = match &config.ops.admin_token_file {
        Some(path) => Some(AdminToken::from_file(path).map_err(RunError::Config)?),
        None => None,
    };
    Ok(Arc::new(Ops::new(
        config.cluster.node_id(),
        role,
        gate,
        backend,
        login,
        dir,
        token,
    )))
}

/// A WebSocket listener with its policy (`[web]`), if one was bound.
pub(crate) fn web_listener(
    config: &Config,
    listener: Option<TcpListener>,
    mapping: Mapping,
) -> Result<Option<(TcpListener, Arc<WebPolicy>)>, RunError> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let policy = WebPolicy::with_tls(&config.web, mapping, config.login.max_line_bytes)
        .map_err(|e| RunError::Config(format!("web TLS: {e}")))?;
    Ok(Some((listener, policy)))
}

/// Serves the backend listener, if there is one, until `backends_stop`
/// (which the gate cancels once it is done: links carry the answers of
/// requests in flight while it drains); its failure stops the rest
/// (`token`).
pub(crate) async fn serve_backend(
    backend: Option<&Backend>,
    gate: &MsgGate,
    token: &CancellationToken,
    backends_stop: &CancellationToken,
) -> std::io::Result<()> {
    match backend {
        Some(backend) => {
            let result = backend
                .serve(gate.clone(), token.clone(), backends_stop.clone())
                .await;
            token.cancel();
            result
        }
        None => Ok(()),
    }
}

/// Serves the operations listener, if there is one, until `stop`; it is
/// ready once called (the other listeners are bound by then).
pub(crate) async fn serve_ops(
    listener: Option<TcpListener>,
    ops: Arc<Ops>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    match listener {
        Some(listener) => {
            ops.set_ready(true);
            crate::ops::serve(listener, ops, stop).await
        }
        None => Ok(()),
    }
}

/// The accounts file of `config.accounts`, or the demo authenticator.
pub fn authenticator(config: &Config) -> Result<Arc<dyn Authenticator>, AccountsError> {
    match &config.accounts {
        Some(path) => {
            let accounts = AccountsFile::load(path)?;
            if accounts.is_empty() {
                warn!(path = %path.display(), "the accounts file lists no account: every login is refused");
            } else {
                info!(path = %path.display(), accounts = accounts.len(), "accounts loaded");
            }
            Ok(Arc::new(accounts))
        }
        None => {
            warn!(
                "DEMO AUTHENTICATION: any user name with the password `password` logs in. \
                 Never run this in production: configure an accounts file \
                 (`accounts = \"FILE\"` or --accounts FILE; hashes from `gate hash-password`)."
            );
            Ok(Arc::new(DemoAuth))
        }
    }
}
