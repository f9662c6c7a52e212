//! The pieces every role of a process builds and serves the same way, so
//! the all-in-one process and the cluster nodes differ only in what they
//! combine: the authenticator and the login server, the gate's agent,
//! the WebSocket policies, the operations state; serving the login server,
//! the gate with its backend listener, the operations listener, and the
//! one shutdown rule (a shutdown request or any server stopping on its own
//! stops them all).

use std::future::Future;
use std::io;
use std::sync::Arc;

use codec::websocket::Mapping;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::RunError;
use crate::agent::{Agent, EchoAgent};
use crate::backend::Backend;
use crate::config::{AuthSource, Config};
use crate::login::placement::Placer;
use crate::login::{AccountsFile, Authenticator, LoginServer, RandomSource};
use crate::net::web::WebPolicy;
use crate::ops::{AdminToken, Ops};
use crate::players::MsgGate;

/// A WebSocket listener with the policy it serves under.
pub(super) type WebListener = (TcpListener, Arc<WebPolicy>);

/// Resolves once the process stops: when `shutdown` resolves (it then
/// cancels `token`, which every server watches) or when a server that ended
/// on its own cancelled `token`, so a process never runs with half its
/// servers.
pub(super) async fn stopping(shutdown: impl Future<Output = ()>, token: &CancellationToken) {
    tokio::select! {
        () = shutdown => {
            info!("shutting down");
            token.cancel();
        }
        () = token.cancelled() => {}
    }
}

/// A TLS listener with the certificate it serves.
pub(super) type TlsListener = (TcpListener, crate::tls::ServerTls);

/// The listeners beside a server's plain one: WebSocket and TLS.
pub(super) type Beside = (Option<WebListener>, Option<TlsListener>);

/// Serves the login server (and its WebSocket and TLS listeners) until
/// `token`; stopping on its own stops the rest.
pub(super) async fn serve_login(
    login: LoginServer,
    listener: TcpListener,
    (web, tls): Beside,
    token: &CancellationToken,
) {
    login
        .serve_listeners(listener, web, tls, token.clone())
        .await;
    token.cancel();
}

/// How the gate and its backend listener ended ([`serve_gate`]).
#[derive(Debug)]
pub(super) struct GateEnd {
    gate: io::Result<()>,
    backend: io::Result<()>,
}

impl GateEnd {
    /// The first failure, the gate's before the backend's.
    pub(super) fn into_result(self) -> Result<(), RunError> {
        self.gate.map_err(RunError::Gate)?;
        self.backend.map_err(RunError::Backend)
    }
}

/// Serves the gate (and its WebSocket listener) and the backend listener
/// until `token`. The gate stopping, on its own or at shutdown once it has
/// drained, stops the rest and cancels `gate_stopped`: what must outlive
/// the drain (backend links, which carry the answers of requests in
/// flight; a gate node's registration heartbeat) waits for that one.
pub(super) async fn serve_gate(
    gate: &MsgGate,
    listener: TcpListener,
    (web, tls): Beside,
    backend: Option<&Backend>,
    token: &CancellationToken,
    gate_stopped: &CancellationToken,
) -> GateEnd {
    let gate_done = async {
        let result = gate
            .serve_listeners(listener, web, tls, token.clone())
            .await;
        token.cancel();
        gate_stopped.cancel();
        result
    };
    let (gate, backend) =
        tokio::join!(gate_done, serve_backend(backend, gate, token, gate_stopped));
    GateEnd { gate, backend }
}

/// The agent `run` uses: the one given, else the backend's, else the
/// built-in echo agent (see [`super::Components::agent`]).
pub(super) fn choose_agent(
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
/// service; with it, the accounts file when it is one (a reload replaces
/// its accounts).
pub(super) fn choose_authenticator(
    config: &Config,
    given: Option<Arc<dyn Authenticator>>,
    backend: Option<&Backend>,
) -> Result<(Arc<dyn Authenticator>, Option<AccountsFile>), RunError> {
    Ok(match (given, config.login.auth, backend) {
        (Some(auth), _, _) => (auth, None),
        (None, AuthSource::Accounts, _) => super::accounts_or_demo(config)?,
        (None, AuthSource::Service, Some(backend)) => {
            info!(service = %backend.config().auth_service, "credentials are checked by a backend service");
            (backend.authenticator(config.login.auth_timeout), None)
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
pub(super) fn login_server(
    config: &Config,
    auth: Arc<dyn Authenticator>,
    placer: Arc<dyn Placer>,
    random: Option<Arc<dyn RandomSource>>,
) -> Result<LoginServer, RunError> {
    let login_config = crate::config::LoginConfig {
        sources: config.sources,
        ..config.login.clone()
    };
    let mut login =
        LoginServer::new(login_config, auth, placer).with_shutdown_grace(config.shutdown_grace);
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
pub(super) fn ops_state(
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
    Ok(Arc::new(
        Ops::new(
            config.cluster.node_id(),
            role,
            gate,
            backend,
            login,
            dir,
            token,
        )
        .with_config(config.ops.clone()),
    ))
}

/// A WebSocket listener with its policy (`[web]`), if one was bound.
pub(super) fn web_listener(
    config: &Config,
    listener: Option<TcpListener>,
    mapping: Mapping,
) -> Result<Option<WebListener>, RunError> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let policy = WebPolicy::with_tls(&config.web, mapping, config.login.max_line_bytes)
        .map_err(|e| RunError::Config(format!("web TLS: {e}")))?;
    Ok(Some((listener, policy)))
}

/// The TLS listeners of `[tls]` with their certificate (one, shared: a
/// reload replaces it for both), and that certificate for the reload.
#[allow(
    clippy::type_complexity,
    reason = "a tuple of what the caller takes apart at once"
)]
pub(super) fn tls_listeners(
    config: &Config,
    login: Option<TcpListener>,
    gate: Option<TcpListener>,
) -> Result<
    (
        Option<TlsListener>,
        Option<TlsListener>,
        Vec<crate::tls::ServerTls>,
    ),
    RunError,
> {
    if login.is_none() && gate.is_none() {
        return Ok((None, None, Vec::new()));
    }
    let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) else {
        return Err(RunError::Config(
            "the TLS listeners need tls.cert_file and tls.key_file \
             (--tls-cert-file, --tls-key-file)"
                .to_owned(),
        ));
    };
    let tls = crate::tls::acceptor(cert, key).map_err(|e| RunError::Config(format!("TLS: {e}")))?;
    Ok((
        login.map(|l| (l, tls.clone())),
        gate.map(|l| (l, tls.clone())),
        vec![tls],
    ))
}

/// Serves the backend listener, if there is one, until `backends_stop`
/// (which the gate cancels once it is done: links carry the answers of
/// requests in flight while it drains); its failure stops the rest
/// (`token`).
async fn serve_backend(
    backend: Option<&Backend>,
    gate: &MsgGate,
    token: &CancellationToken,
    backends_stop: &CancellationToken,
) -> io::Result<()> {
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
pub(super) async fn serve_ops(
    listener: Option<TcpListener>,
    ops: Arc<Ops>,
    stop: CancellationToken,
) -> io::Result<()> {
    match listener {
        Some(listener) => {
            ops.set_ready(true);
            crate::ops::serve(listener, ops, stop).await
        }
        None => Ok(()),
    }
}
