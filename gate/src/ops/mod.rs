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

pub mod collector;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::collector::GateCollector;
use crate::backend::Backend;
use crate::cluster::Directory;
use crate::logging::esc;
use crate::login::metrics::LoginMetrics;
use crate::msg::MsgGate;
use crate::session::Phase;

/// The admin API's bearer token. `Debug` never shows it.
#[derive(Clone)]
pub struct AdminToken(zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// The token in `path`: its contents without trailing whitespace; at
    /// least 16 bytes.
    pub fn from_file(path: &std::path::Path) -> Result<AdminToken, String> {
        let mut bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read the admin token file {}: {e}", path.display()))?;
        while bytes.last().is_some_and(u8::is_ascii_whitespace) {
            bytes.pop();
        }
        if bytes.len() < 16 {
            return Err(format!(
                "the admin token in {} is {} bytes; at least 16 are needed",
                path.display(),
                bytes.len()
            ));
        }
        Ok(AdminToken(zeroize::Zeroizing::new(bytes)))
    }

    fn matches(&self, presented: &[u8]) -> bool {
        presented.ct_eq(&self.0).into()
    }
}

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
    started: Instant,
    ready: AtomicBool,
    /// A gate node's "holds its name in the registry" flag.
    registration: std::sync::OnceLock<Arc<AtomicBool>>,
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
            registration: std::sync::OnceLock::new(),
            registry,
        }
    }

    /// Marks the node ready (its listeners are up): `/readyz` answers 200
    /// from now on, while Redis (if any) answers.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
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

/// Serves the operations routes on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    ops: Arc<Ops>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    info!(addr = ?listener.local_addr().ok(), "operations listener up");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/admin/summary", get(summary))
        .route("/admin/users/{uid}", get(user))
        .route("/admin/users/{uid}/kick", post(kick))
        .route("/admin/users/{uid}/push", post(push_user))
        .route("/admin/push", post(push_all))
        .route("/admin/drain", post(drain))
        .with_state(ops);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
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

/// A refused admin call: its status and reason, sent as `{"error": ...}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

/// `Err` is the `401` to send.
fn authorize(ops: &Ops, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match (&ops.token, presented) {
        (Some(token), Some(presented)) if token.matches(presented) => Ok(()),
        (None, _) => Err(error(
            StatusCode::UNAUTHORIZED,
            "the admin API has no token configured (ops.admin_token_file)",
        )),
        _ => {
            warn!("admin call with a missing or wrong token refused");
            Err(error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token",
            ))
        }
    }
}

fn gate(ops: &Ops) -> Result<&MsgGate, ApiError> {
    ops.gate
        .as_ref()
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "this node has no gate"))
}

/// Reads an admin call's JSON body strictly (unknown fields refused);
/// `Err` is the reason a bad body gets `400`.
pub fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad JSON body: {e}"))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    parse_body(body).map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

/// Marks a call one node forwarded to another, so it is never forwarded
/// again.
const FORWARDED: &str = "x-gate-forwarded";

/// On a cluster node, the operations address of the gate node holding
/// `uid`'s session, if that is another node: admin calls for users are
/// forwarded there. `None`: answer here.
async fn owner_elsewhere(ops: &Ops, uid: &str, headers: &HeaderMap) -> Option<String> {
    if headers.contains_key(FORWARDED) {
        return None;
    }
    let dir = ops.dir.as_ref()?;
    if let Some(gate) = &ops.gate
        && gate.session_info(uid.as_bytes()).is_some()
    {
        return None;
    }
    let record = dir.record(uid.as_bytes()).await.ok()??;
    if ops
        .gate
        .as_ref()
        .is_some_and(|g| g.name().as_bytes() == record.server)
    {
        return None;
    }
    let entry = dir.gate(&record.server).await.ok()??;
    (entry.epoch == record.epoch && !entry.ops.is_empty()).then_some(entry.ops)
}

/// Where a user call with a body is answered.
enum UserCall<'a, T> {
    /// Here, on this gate, with the parsed body.
    Here(&'a MsgGate, T),
    /// By the gate node that holds the user: its answer.
    Relayed(Response),
}

use UserCall::{Here, Relayed};

/// The common start of a user call with a body: the token, the body, and
/// whether another gate node holds the user (then the call is relayed
/// there).
async fn user_call<'a, T: for<'de> Deserialize<'de>>(
    ops: &'a Ops,
    uid: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<UserCall<'a, T>, ApiError> {
    authorize(ops, headers)?;
    let parsed: T = parse(&body)?;
    if let Some(answer) = elsewhere(ops, uid, headers, method, uri, body).await {
        return answer.map(Relayed);
    }
    Ok(Here(gate(ops)?, parsed))
}

/// A user call for a uid whose session is on another gate node, sent on
/// there (its answer relayed); `None`: answer here.
async fn elsewhere(
    ops: &Ops,
    uid: &str,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    body: Bytes,
) -> Option<Result<Response, ApiError>> {
    let addr = owner_elsewhere(ops, uid, headers).await?;
    Some(forward(&addr, method.clone(), uri.path(), headers, body).await)
}

/// Sends the same call to the operations listener at `addr` and relays
/// its answer.
async fn forward(
    addr: &str,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    use http_body_util::BodyExt;
    let unreachable = |e: String| {
        error(
            StatusCode::BAD_GATEWAY,
            format!("the user's gate node at {addr} did not answer: {e}"),
        )
    };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr)
            .header(header::CONTENT_TYPE, "application/json")
            .header(FORWARDED, "1");
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let request = request
            .body(http_body_util::Full::new(body))
            .map_err(|e| e.to_string())?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status();
        let body = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(unreachable)?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Placed => "placed",
        Phase::Online => "connected",
        Phase::Away => "away",
        Phase::Ended => "ended",
    }
}

async fn summary(State(ops): State<Arc<Ops>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&ops, &headers)?;
    let mut body = json!({
        "node": ops.node,
        "role": ops.role,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": ops.started.elapsed().as_secs(),
    });
    if let Some(gate) = &ops.gate {
        let m = gate.metrics();
        let (online, away) = gate.sessions_by_phase();
        let cfg = gate.config();
        body["gate"] = json!({
            "server": gate.name(),
            "sessions": m.sessions,
            "online": online,
            "away": away,
            "connections": m.connections,
            "draining": gate.is_draining(),
            "limits": {
                "maxclient": cfg.maxclient,
                "max_connections_per_source": cfg.max_connections_per_source,
                "send_queue_bytes": cfg.send_queue_bytes,
                "max_inflight_per_user": cfg.max_inflight_per_user,
                "cache_bytes": cfg.cache_bytes,
            },
        });
    }
    if let Some(backend) = &ops.backend {
        body["backend_links"] = json!(backend.metrics().links);
    }
    Ok(axum::Json(body).into_response())
}

async fn user(
    State(ops): State<Arc<Ops>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&ops, &headers)?;
    if let Some(answer) = elsewhere(&ops, &uid, &headers, &method, &uri, Bytes::new()).await {
        return answer;
    }
    let gate = gate(&ops)?;
    match gate.session_info(uid.as_bytes()) {
        Some(s) => Ok(axum::Json(json!({
            "uid": String::from_utf8_lossy(&s.uid),
            "server": s.server,
            "subid": String::from_utf8_lossy(&s.subid),
            "phase": phase_name(s.phase),
            "index": s.index,
            "inflight": s.inflight,
            "cached_answers": s.cached_answers,
            "cached_bytes": s.cached_bytes,
            "last_push": s.last_push,
        }))
        .into_response()),
        None => Err(error(
            StatusCode::NOT_FOUND,
            "no session for this uid on this gate",
        )),
    }
}

/// The body of `POST /admin/users/{uid}/kick`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KickBody {
    /// What the kicked client is told.
    pub reason: String,
}

async fn kick(
    State(ops): State<Arc<Ops>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (gate, body) =
        match user_call::<KickBody>(&ops, &uid, &method, &uri, &headers, body).await? {
            Here(gate, body) => (gate, body),
            Relayed(answer) => return Ok(answer),
        };
    let Some(session) = gate.session_info(uid.as_bytes()) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "no session for this uid on this gate",
        ));
    };
    info!(
        uid = %esc(uid.as_bytes()),
        reason = %esc(body.reason.as_bytes()),
        "kicked by an operator"
    );
    gate.kick(uid.as_bytes(), &session.subid, body.reason).await;
    Ok(
        axum::Json(json!({ "kicked": true, "subid": String::from_utf8_lossy(&session.subid) }))
            .into_response(),
    )
}

/// The body of `POST /admin/users/{uid}/push` and `POST /admin/push`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushBody {
    /// The push's payload (UTF-8 text).
    pub payload: String,
}

async fn push_user(
    State(ops): State<Arc<Ops>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (gate, body) =
        match user_call::<PushBody>(&ops, &uid, &method, &uri, &headers, body).await? {
            Here(gate, body) => (gate, body),
            Relayed(answer) => return Ok(answer),
        };
    match gate.push(uid.as_bytes(), Bytes::from(body.payload)) {
        Ok(seq) => Ok(axum::Json(json!({ "seq": seq })).into_response()),
        Err(e) => Err(error(StatusCode::NOT_FOUND, e.to_string())),
    }
}

async fn push_all(
    State(ops): State<Arc<Ops>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&ops, &headers)?;
    let gate = gate(&ops)?;
    let body: PushBody = parse(&body)?;
    let reached = gate.push_all(Bytes::from(body.payload));
    Ok(axum::Json(json!({ "sessions": reached })).into_response())
}

/// The body of `POST /admin/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    /// Drain (true) or stop draining (false).
    pub drain: bool,
}

async fn drain(
    State(ops): State<Arc<Ops>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&ops, &headers)?;
    let gate = gate(&ops)?;
    let body: DrainBody = parse(&body)?;
    gate.set_drained(body.drain);
    info!(drain = body.drain, "drain set by an operator");
    Ok(axum::Json(json!({ "draining": gate.is_draining() })).into_response())
}
