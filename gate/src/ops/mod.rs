//! The operations listener: Prometheus metrics, health, and the admin API.
//!
//! Off unless `ops.listen` is set. Routes:
//!
//! | route | what |
//! |---|---|
//! | `GET /metrics` | every metric, Prometheus text format 0.0.4 ([`collector`], the login metrics) |
//! | `GET /healthz` | `200 ok` while the process serves |
//! | `GET /readyz` | `200` once the listeners are up (and, on a cluster node, Redis answers and a gate node holds its name in the registry); `503` otherwise |
//! | `GET /admin/summary` | node, role, version, uptime, sessions, connections, draining, limits |
//! | `GET /admin/users/{uid}` | one session: subid, phase, index, requests in flight, cached answers and bytes, last push |
//! | `POST /admin/users/{uid}/kick` | `{"reason": "..."}`: end the session; an opted-in client gets KICK with the reason |
//! | `POST /admin/users/{uid}/push` | `{"payload": "..."}`: push to the user |
//! | `POST /admin/push` | `{"payload": "..."}`: push to every session of this gate |
//! | `POST /admin/drain` | `{"drain": true}` refuse new logins on this gate (established sessions go on); `false` undoes it |
//! | `POST /admin/reload` | read the configuration file again and apply what can change live, all or nothing (`crate::reload`): `200 {"applied": true, "changed": [...]}`; `409` with `"error"` (and `"fields"`) for fields that cannot change while running, no configuration file or a cluster node; `422` for a file or a file it names that cannot be used |
//!
//! On a cluster node, a user call (`/admin/users/{uid}...`) for a uid
//! whose session is on another gate node is forwarded to that node's
//! operations listener (published in the registry), with the same token,
//! and its answer relayed: user calls work on any node.
//!
//! Every `/admin` call needs `Authorization: Bearer <token>` with the token
//! of `ops.admin_token_file` (compared in constant time); a missing or
//! wrong token is `401` and nothing happens, an admin API without a
//! configured token answers `401` to everything. Bodies are JSON; a bad
//! body is `400` with the reason. Answers are JSON.
//!
//! * [`admin`]: the admin API's token and its handlers;
//! * `relay`: user calls for a session on another gate node, sent there;
//! * [`collector`]: the gate's metrics, read when scraped;
//! * [`listener`]: the connection cap and the header, idle and request
//!   deadlines the listener holds its connections to.
//!
//! Admin calls with a missing or wrong token are counted per source
//! address: past `ops.failed_tokens_per_minute` in a minute, calls from
//! that address are answered `429` without the token being checked. Each
//! `401` is logged with the peer address, the method and the (escaped)
//! path.

pub mod admin;
pub mod collector;
pub mod listener;
mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::admin::TokenFailures;
pub use self::admin::{AdminToken, DrainBody, KickBody, PushBody, parse_body};
use self::collector::GateCollector;
use self::listener::OpsCounters;
use crate::backend::Backend;
use crate::backend::pending::Refusals;
use crate::cluster::Directory;
use crate::config::OpsConfig;
use crate::login::metrics::LoginMetrics;
use crate::players::MsgGate;
use crate::reload::Reloader;

/// What the operations listener serves from.
#[derive(Debug)]
pub struct Ops {
    /// This node's id and role, for the summary.
    pub node: String,
    /// `all`, `login` or `gate`.
    pub role: &'static str,
    /// The gate, if this process has one.
    pub gate: Option<MsgGate>,
    /// Its backend, if services are on.
    pub backend: Option<Backend>,
    /// The login server's metrics, if this process has one.
    pub login: Option<Arc<LoginMetrics>>,
    /// The cluster's Redis, whose reachability `/readyz` checks.
    pub dir: Option<Directory>,
    /// The admin API's token; none: every admin call is `401`.
    pub token: Option<AdminToken>,
    pub(crate) started: Instant,
    ready: AtomicBool,
    /// The listener's bounds (`[ops]`).
    pub(crate) cfg: OpsConfig,
    /// What the listener refused or cut.
    pub(crate) counters: Arc<OpsCounters>,
    /// Failed admin tokens per source address.
    pub(crate) failures: TokenFailures,
    /// A gate node's control listener refusals, for the metrics.
    control_refusals: Arc<std::sync::OnceLock<Arc<Refusals>>>,
    /// A gate node's "holds its name in the registry" flag.
    registration: std::sync::OnceLock<Arc<AtomicBool>>,
    /// Reloads the configuration (all-in-one processes started with a
    /// configuration source).
    pub(crate) reloader: std::sync::OnceLock<Arc<Reloader>>,
    registry: Registry,
}

impl Ops {
    /// The operations state of one process.
    pub fn new(
        node: String,
        role: &'static str,
        gate: Option<MsgGate>,
        backend: Option<Backend>,
        login: Option<Arc<LoginMetrics>>,
        dir: Option<Directory>,
        token: Option<AdminToken>,
    ) -> Ops {
        let mut registry = Registry::default();
        let counters = Arc::new(OpsCounters::default());
        let control_refusals = Arc::new(std::sync::OnceLock::new());
        registry.register_collector(Box::new(OpsCollector {
            counters: Arc::clone(&counters),
            control: Arc::clone(&control_refusals),
        }));
        if let Some(gate) = &gate {
            registry.register_collector(Box::new(GateCollector {
                gate: gate.clone(),
                backend: backend.clone(),
            }));
        }
        if let Some(login) = &login {
            login.register(&mut registry);
        }
        if let Some(dir) = &dir {
            let m = dir.metrics();
            registry.register_with_unit(
                "gate_redis_op_duration",
                "Time per Redis call of the cluster directory",
                prometheus_client::registry::Unit::Seconds,
                m.latency.clone(),
            );
            registry.register(
                "gate_redis_op_errors",
                "Redis calls that failed or missed their deadline",
                m.errors.clone(),
            );
        }
        Ops {
            node,
            role,
            gate,
            backend,
            login,
            dir,
            token,
            started: Instant::now(),
            ready: AtomicBool::new(false),
            failures: TokenFailures::new(OpsConfig::default().failed_tokens_per_minute),
            cfg: OpsConfig::default(),
            counters,
            control_refusals,
            registration: std::sync::OnceLock::new(),
            reloader: std::sync::OnceLock::new(),
            registry,
        }
    }

    /// The listener's bounds and the failed-token bound (`[ops]`); the
    /// defaults otherwise.
    #[must_use]
    pub fn with_config(mut self, cfg: OpsConfig) -> Ops {
        self.failures = TokenFailures::new(cfg.failed_tokens_per_minute);
        self.cfg = cfg;
        self
    }

    /// On a gate node: the control listener's refusals, exported as
    /// `gate_control_refused_links_total`.
    pub fn set_control_refusals(&self, refusals: Arc<Refusals>) {
        let _ = self.control_refusals.set(refusals);
    }

    /// Marks the node ready (its listeners are up): `/readyz` answers 200
    /// from now on, while Redis (if any) answers.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Lets `POST /admin/reload` reload the configuration with
    /// `reloader`; without one the call is refused.
    pub fn set_reloader(&self, reloader: Arc<Reloader>) {
        let _ = self.reloader.set(reloader);
    }

    /// On a gate node: `/readyz` also needs the node to hold its server
    /// name in the registry (`flag`).
    pub fn set_registration(&self, flag: Arc<AtomicBool>) {
        let _ = self.registration.set(flag);
    }

    /// The metrics as Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// Serves the operations routes on `listener` until `stop`, under the
/// bounds of `ops.cfg` ([`listener`]).
pub async fn serve(
    listener: TcpListener,
    ops: Arc<Ops>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    info!(addr = ?listener.local_addr().ok(), "operations listener up");
    // The token check (and its rate limit) guards every admin route at
    // once, so no handler can forget it.
    let admin = Router::new()
        .route("/admin/summary", get(admin::summary))
        .route("/admin/users/{uid}", get(admin::user))
        .route("/admin/users/{uid}/kick", post(admin::kick))
        .route("/admin/users/{uid}/push", post(admin::push_user))
        .route("/admin/push", post(admin::push_all))
        .route("/admin/drain", post(admin::drain))
        .route("/admin/reload", post(admin::reload))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&ops),
            admin::guard,
        ));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(admin)
        .with_state(Arc::clone(&ops));
    listener::serve(listener, app, &ops.cfg, Arc::clone(&ops.counters), stop).await;
    Ok(())
}

/// The operations listener's own counters and a gate node's control
/// listener refusals, read when scraped.
#[derive(Debug)]
struct OpsCollector {
    counters: Arc<OpsCounters>,
    control: Arc<std::sync::OnceLock<Arc<Refusals>>>,
}

impl prometheus_client::collector::Collector for OpsCollector {
    fn encode(
        &self,
        mut e: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        collector::refused_links(
            &mut e,
            "gate_ops_refused",
            "Operations connections and calls refused or cut: connection cap, header, idle and request deadlines, wrong tokens, failed-token rate",
            &self.counters.totals(),
        )?;
        if let Some(control) = self.control.get() {
            collector::refused_links(
                &mut e,
                "gate_control_refused_links",
                "Control links refused or closed before proving the cluster secret, by cause",
                &control.totals(),
            )?;
        }
        Ok(())
    }
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        ops.render(),
    )
        .into_response()
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    if !ops.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
    }
    if let Some(dir) = &ops.dir
        && let Err(e) = dir.ping().await
    {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}\n")).into_response();
    }
    if let Some(flag) = ops.registration.get()
        && !flag.load(Ordering::Acquire)
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not registered in the cluster\n",
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}
