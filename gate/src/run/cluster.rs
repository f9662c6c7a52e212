//! The two cluster roles, built like [`super::run_with`] builds the
//! all-in-one process ([`super::serve`] binds their listeners): what they
//! add is the Redis directory, the control links between them, and a gate
//! node's registration.

use std::future::Future;
use std::sync::Arc;

use codec::websocket::Mapping;
use proto::link_auth::LinkSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::parts::{
    choose_agent, choose_authenticator, login_server, ops_state, serve_gate, serve_login,
    serve_ops, stopping, tls_listeners, web_listener,
};
use super::{Components, RunError};
use crate::backend::pending::{PendingLinks, Refusals};
use crate::cluster::SharedAdmission;
use crate::cluster::control;
use crate::cluster::directory::{Directory, DirectoryOptions};
use crate::cluster::gate_node::{DirectoryLink, GateNode, new_epoch};
use crate::cluster::login_node::{ClusterPlacer, ControlLinks};
use crate::config::{AuthSource, Config};
use crate::players::MsgGate;

fn secret(config: &Config) -> Result<LinkSecret, RunError> {
    let path = config.cluster.secret_file.as_ref().ok_or_else(|| {
        RunError::Config(
            "cluster nodes need a link secret: set cluster.secret_file (--cluster-secret-file); \
             make one with `gate link-secret > FILE`"
                .to_owned(),
        )
    })?;
    LinkSecret::from_file(path).map_err(|e| RunError::Config(e.to_string()))
}

fn directory(config: &Config) -> Result<Directory, RunError> {
    let url = config.cluster.redis.clone().ok_or_else(|| {
        RunError::Config("cluster nodes need cluster.redis (--redis redis://HOST:PORT)".to_owned())
    })?;
    Directory::new(&DirectoryOptions {
        url,
        prefix: config.cluster.key_prefix.clone(),
        timeout: config.cluster.redis_timeout,
        fence: config.cluster.lease,
    })
    .map_err(|e| RunError::Config(e.to_string()))
}

fn acceptor(config: &Config) -> Result<Option<crate::tls::ServerTls>, RunError> {
    match (&config.cluster.tls_cert_file, &config.cluster.tls_key_file) {
        (Some(cert), Some(key)) => crate::tls::acceptor(cert, key)
            .map(Some)
            .map_err(|e| RunError::Config(e.to_string())),
        (None, None) => Ok(None),
        _ => Err(RunError::Config(
            "cluster.tls_cert_file and cluster.tls_key_file go together".to_owned(),
        )),
    }
}

/// Runs a gate node: the gate on `gate_listener`, the control link on
/// `control_listener`, the backend listener of `components.backend`, the
/// registration heartbeat. Refuses to start if another live gate node
/// serves `config.gate.name`. On `shutdown`: marks itself draining, shuts
/// the gate down as [`super::run`] does, removes its sessions' records and
/// its registration.
pub(super) async fn run_gate_node(
    gate_listener: TcpListener,
    control_listener: TcpListener,
    config: Config,
    components: Components,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let secret = secret(&config)?;
    let dir = directory(&config)?;
    let mut upgrade = components.upgrade.unwrap_or_default();
    let inherited = upgrade.inherited.take();
    // A new process of a live upgrade keeps the old one's epoch: the
    // directory's records of the moved sessions name it.
    let (epoch, inherited) = match inherited {
        None => (new_epoch(), None),
        Some(inherited) => match inherited.state.epoch {
            Some(epoch) if !inherited.state.login_node => (epoch, Some(inherited)),
            _ => {
                let why = "the running process is not a cluster gate node".to_owned();
                inherited.channel.refuse(&why);
                return Err(RunError::Upgrade(why));
            }
        },
    };
    let link = Arc::new(DirectoryLink::new(dir.clone(), epoch));
    let backend = components.backend;
    let web_gate = web_listener(&config, components.web_gate, Mapping::Packages)?;
    let (_, tls_gate, _) = tls_listeners(&config, None, components.tls_gate)?;
    let agent = choose_agent(components.agent, backend.as_ref());
    let (gate, taken_over) = match inherited {
        None => (MsgGate::new(config.gate(), agent, link.clone()), None),
        Some(inherited) => {
            let gate = MsgGate::new_restored(config.gate(), agent, link.clone(), &inherited.state);
            match crate::upgrade::new::restore(&gate, inherited) {
                Ok((_, channel)) => (gate, Some(channel)),
                Err((why, channel)) => {
                    channel.refuse(&why);
                    return Err(RunError::Upgrade(why));
                }
            }
        }
    };
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let node = Arc::new(GateNode {
        gate: gate.clone(),
        dir,
        node: config.cluster.node_id(),
        epoch,
        secret,
        client_addr: config
            .cluster
            .client_advertise
            .clone()
            .unwrap_or_else(|| local(&gate_listener)),
        control_addr: config
            .cluster
            .control_advertise
            .clone()
            .unwrap_or_else(|| local(&control_listener)),
        backend_addr: backend
            .as_ref()
            .and_then(|b| {
                config
                    .cluster
                    .backend_advertise
                    .clone()
                    .or_else(|| b.local_addr().map(|a| a.to_string()))
            })
            .unwrap_or_default(),
        backend: backend.clone(),
        web_addr: web_gate
            .as_ref()
            .map(|(l, _)| {
                let scheme = if config.web.tls_cert_file.is_some() {
                    "wss"
                } else {
                    "ws"
                };
                let host = config
                    .cluster
                    .web_advertise
                    .clone()
                    .unwrap_or_else(|| local(l));
                format!("{scheme}://{host}")
            })
            .unwrap_or_default(),
        lease: config.cluster.lease,
        registered: Arc::default(),
        tls: acceptor(&config)?,
        busy: Arc::default(),
        ops_addr: components
            .ops
            .as_ref()
            .map(|l| {
                config
                    .cluster
                    .ops_advertise
                    .clone()
                    .unwrap_or_else(|| local(l))
            })
            .unwrap_or_default(),
    });
    let ops = ops_state(
        &config,
        "gate",
        Some(gate.clone()),
        backend.clone(),
        None,
        Some(node.dir.clone()),
    )?;
    ops.set_registration(Arc::clone(&node.registered));
    let control_pending = PendingLinks::new(
        config.cluster.control_max_pending,
        config.cluster.control_max_pending_per_source,
        Refusals::new("control"),
    );
    ops.set_control_refusals(Arc::clone(control_pending.refusals()));
    let token = CancellationToken::new();
    // Set once the gate is done: the registration heartbeat and the backend
    // links (which carry the answers of requests in flight) run until the
    // gate has drained.
    let gate_stopped = CancellationToken::new();
    let stop = stopping(shutdown, &token);
    tokio::pin!(stop);
    // Serve nothing until this node holds its name.
    tokio::select! {
        () = &mut stop => {}
        _ = node.register(&token) => {}
    }
    if token.is_cancelled() {
        return Ok(());
    }
    let busy = Arc::clone(&node.busy);
    let handover = crate::upgrade::old::Handover {
        gate: Some(gate.clone()),
        listeners: upgrade.listeners,
        busy: Some(Arc::new(move || {
            busy.load(std::sync::atomic::Ordering::SeqCst)
        })),
        epoch: Some(epoch),
        finish: None,
        grace: config.shutdown_grace,
    };
    let upgrades = super::serve_upgrades(
        upgrade.socket,
        handover,
        taken_over,
        backend.as_ref(),
        &token,
    );
    let ((), (), (), gate_end, ops_result, upgrade_result) = tokio::join!(
        stop,
        node.heartbeat(gate_stopped.clone()),
        control::serve_control(
            Arc::clone(&node),
            control_listener,
            control_pending,
            token.clone()
        ),
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
    link.flush(config.shutdown_grace).await;
    node.unregister().await;
    gate_end.into_result()?;
    info!("stopped");
    Ok(())
}

/// Runs a login node on `login_listener` until `shutdown`: users are
/// placed on the gate nodes registered in Redis. Credentials come from
/// `components.authenticator` or the accounts file (the `auth` service
/// needs a backend listener, which only gate nodes have).
pub(super) async fn run_login_node(
    login_listener: TcpListener,
    config: Config,
    components: Components,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    if components.authenticator.is_none() && config.login.auth == AuthSource::Service {
        return Err(RunError::Config(
            "a login node checks credentials with the accounts file (login.auth = \"accounts\")"
                .to_owned(),
        ));
    }
    let secret = secret(&config)?;
    let dir = directory(&config)?;
    let node = config.cluster.node_id();
    let mut upgrade = components.upgrade.unwrap_or_default();
    let taken_over = match upgrade.inherited.take() {
        None => None,
        Some(inherited) if inherited.state.login_node => Some(inherited.channel),
        Some(inherited) => {
            let why = "the running process is not a cluster login node".to_owned();
            inherited.channel.refuse(&why);
            return Err(RunError::Upgrade(why));
        }
    };
    let (auth, _) = choose_authenticator(&config, components.authenticator, None)?;
    let tls = match &config.cluster.tls_ca_file {
        Some(ca) => Some(crate::tls::connector(ca).map_err(|e| RunError::Config(e.to_string()))?),
        None => None,
    };
    let links = ControlLinks::new(node.clone(), secret, config.cluster.control_timeout, tls);
    let placer = ClusterPlacer::new(
        dir.clone(),
        links,
        config.login.multilogin,
        config.cluster.lock_ttl,
    );
    let mut login = login_server(&config, auth, Arc::new(placer), components.random)?;
    let web_login = web_listener(&config, components.web_login, Mapping::Lines)?;
    let (tls_login, _, _) = tls_listeners(&config, components.tls_login, None)?;
    if config.login.admission_rate > 0 {
        // One queue for the whole cluster, in Redis.
        login = login.with_admission(Arc::new(SharedAdmission::new(
            dir.clone(),
            crate::login::admission::AdmissionConfig::of(&config.login),
        )));
    }
    match dir.ping().await {
        Ok(()) => info!(node = %node, "login node up"),
        Err(e) => {
            tracing::warn!(node = %node, error = %e, "login node up, Redis unreachable: logins get 503 until it answers")
        }
    }
    let ops = ops_state(
        &config,
        "login",
        None,
        None,
        Some(login.metrics()),
        Some(dir),
    )?;
    let token = CancellationToken::new();
    // A live upgrade moves the listeners only: the dialogues running here,
    // queued logins included, finish here.
    let handover = crate::upgrade::old::Handover {
        gate: None,
        listeners: upgrade.listeners,
        busy: None,
        epoch: None,
        finish: Some((
            login.dialogues(),
            config.login.queue_timeout + config.login.dialogue_timeout,
        )),
        grace: config.shutdown_grace,
    };
    let upgrades = super::serve_upgrades(upgrade.socket, handover, taken_over, None, &token);
    let ((), (), ops_result, upgrade_result) = tokio::join!(
        stopping(shutdown, &token),
        serve_login(login, login_listener, (web_login, tls_login), &token),
        serve_ops(components.ops, ops, token.clone()),
        upgrades,
    );
    upgrade_result?;
    ops_result.map_err(RunError::Ops)?;
    info!("stopped");
    Ok(())
}
