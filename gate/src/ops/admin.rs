//! The admin API (`/admin/...`): its bearer token, the one opening every
//! call shares (`open`: token, body, where the user is, this node's
//! gate), and one handler per route, which only does its own job.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Ops;
use super::listener::OpsCause;
use super::relay::elsewhere;
use crate::logging::esc;
use crate::players::MsgGate;
use gate_core::session::Phase;

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

/// A refused admin call: its status and reason, sent as `{"error": ...}`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
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
        _ => Err(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        )),
    }
}

/// Guards every admin route: an address over its failed-token bound gets
/// `429` without its token being looked at (so guessing costs a guesser
/// its minute, not us a comparison and a log line each); a missing or
/// wrong token gets `401`, counted against the address and logged with
/// the peer, the method and the path (escaped: the client wrote it).
pub(super) async fn guard(State(ops): State<Arc<Ops>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let now = Instant::now();
    if let Some(peer) = peer
        && ops.failures.over(peer.ip(), now)
    {
        ops.counters.count(OpsCause::TokenRate);
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many calls with a wrong token from this address; try again in a minute",
        )
        .into_response();
    }
    match authorize(&ops, request.headers()) {
        // The sessions are on their way to a new process (a live upgrade):
        // a call now could be lost with this process; the new one answers
        // in a moment.
        Ok(())
            if ops
                .gate
                .as_ref()
                .is_some_and(crate::players::MsgGate::is_handing_off) =>
        {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gate is being upgraded; try again in a moment",
            )
            .into_response()
        }
        Ok(()) => next.run(request).await,
        Err(refused) => {
            if let Some(peer) = peer {
                ops.failures.failed(peer.ip(), now);
            }
            ops.counters.count(OpsCause::Token);
            warn!(
                peer = %peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                method = %esc(request.method().as_str().as_bytes()),
                path = %esc(request.uri().path().as_bytes()),
                "admin call with a missing or wrong token refused"
            );
            refused.into_response()
        }
    }
}

/// How long a source address's failed tokens are counted.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Most source addresses whose failures are remembered at once; the table
/// is bounded like every queue here.
const MAX_TRACKED_SOURCES: usize = 4096;

/// Failed admin tokens per source address, in fixed one-minute windows.
#[derive(Debug)]
pub(crate) struct TokenFailures {
    per_minute: u32,
    table: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl TokenFailures {
    /// At most `per_minute` failures per address (0: no bound).
    pub(crate) fn new(per_minute: u32) -> TokenFailures {
        TokenFailures {
            per_minute,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Whether calls from `ip` are answered `429` now. When the table is
    /// full of addresses still in their minute, a new address is refused
    /// too: many addresses failing at once is an attack, and remembering
    /// each would be the unbounded table this avoids.
    pub(crate) fn over(&self, ip: IpAddr, now: Instant) -> bool {
        if self.per_minute == 0 {
            return false;
        }
        let ip = ip.to_canonical();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        match table.get(&ip) {
            Some(&(start, failed)) if now < start + FAILURE_WINDOW => failed >= self.per_minute,
            Some(_) => {
                table.remove(&ip);
                false
            }
            None => {
                if table.len() >= MAX_TRACKED_SOURCES {
                    table.retain(|_, (start, _)| now < *start + FAILURE_WINDOW);
                }
                table.len() >= MAX_TRACKED_SOURCES
            }
        }
    }

    /// Counts a failed token from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let ip = ip.to_canonical();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() >= MAX_TRACKED_SOURCES && !table.contains_key(&ip) {
            table.retain(|_, (start, _)| now < *start + FAILURE_WINDOW);
            if table.len() >= MAX_TRACKED_SOURCES {
                return;
            }
        }
        let entry = table.entry(ip).or_insert((now, 0));
        if now >= entry.0 + FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// Reads an admin call's JSON body strictly (unknown fields refused);
/// `Err` is the reason a bad body gets `400`.
pub fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad JSON body: {e}"))
}

/// What an admin call reads from its body.
pub(super) trait AdminBody: Sized {
    /// The body, or the `400` to send.
    fn parse(body: &[u8]) -> Result<Self, ApiError>;
}

/// Calls without a body ignore whatever was sent.
impl AdminBody for () {
    fn parse(_: &[u8]) -> Result<(), ApiError> {
        Ok(())
    }
}

/// Bodies read strictly as JSON ([`parse_body`]).
macro_rules! json_body {
    ($($body:ty),*) => {$(
        impl AdminBody for $body {
            fn parse(body: &[u8]) -> Result<Self, ApiError> {
                parse_body(body).map_err(|e| error(StatusCode::BAD_REQUEST, e))
            }
        }
    )*};
}

json_body!(KickBody, PushBody, DrainBody);

/// Which user a user call (`/admin/users/{uid}...`) is about, and the
/// call as received, to send on if another gate node holds the user.
struct UserCall<'r> {
    uid: &'r str,
    method: &'r Method,
    uri: &'r Uri,
}

/// Where an admin call on a gate goes on after [`open`].
enum Opened<'a, T> {
    /// Here, on this node's gate, with the parsed body.
    Here(&'a MsgGate, T),
    /// The answer of the gate node that holds the user.
    Relayed(Response),
}

use Opened::{Here, Relayed};

/// The opening every admin call on a gate shares, written once (the token
/// was checked by [`guard`] before). In order: for a user call, the body (`400`), then whether
/// another gate node holds the user (then its answer is relayed), then this
/// node's gate (`404`); for a call on the node, the gate, then the body.
async fn open<'a, T: AdminBody>(
    ops: &'a Ops,
    headers: &HeaderMap,
    user: Option<UserCall<'_>>,
    body: Bytes,
) -> Result<Opened<'a, T>, ApiError> {
    let gate = || {
        ops.gate
            .as_ref()
            .ok_or_else(|| error(StatusCode::NOT_FOUND, "this node has no gate"))
    };
    let Some(call) = user else {
        let gate = gate()?;
        return Ok(Here(gate, T::parse(&body)?));
    };
    let parsed = T::parse(&body)?;
    if let Some(answer) = elsewhere(ops, call.uid, headers, call.method, call.uri, body).await {
        return answer.map(Relayed);
    }
    Ok(Here(gate()?, parsed))
}

/// No session for the uid: the `404` of every user call.
fn no_session() -> ApiError {
    error(
        StatusCode::NOT_FOUND,
        "no session for this uid on this gate",
    )
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Placed => "placed",
        Phase::Online => "connected",
        Phase::Away => "away",
        Phase::Ended => "ended",
    }
}

pub(super) async fn summary(State(ops): State<Arc<Ops>>) -> Result<Response, ApiError> {
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

pub(super) async fn user(
    State(ops): State<Arc<Ops>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let call = UserCall {
        uid: &uid,
        method: &method,
        uri: &uri,
    };
    let gate = match open::<()>(&ops, &headers, Some(call), Bytes::new()).await? {
        Here(gate, ()) => gate,
        Relayed(answer) => return Ok(answer),
    };
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
        None => Err(no_session()),
    }
}

/// The body of `POST /admin/users/{uid}/kick`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KickBody {
    /// What the kicked client is told.
    pub reason: String,
}

pub(super) async fn kick(
    State(ops): State<Arc<Ops>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let call = UserCall {
        uid: &uid,
        method: &method,
        uri: &uri,
    };
    let (gate, body) = match open::<KickBody>(&ops, &headers, Some(call), body).await? {
        Here(gate, body) => (gate, body),
        Relayed(answer) => return Ok(answer),
    };
    let Some(session) = gate.session_info(uid.as_bytes()) else {
        return Err(no_session());
    };
    info!(
        uid = %esc(uid.as_bytes()),
        reason = %esc(body.reason.as_bytes()),
        "kicked by an operator"
    );
    gate.kick(
        uid.as_bytes(),
        &session.subid,
        gate_core::End::Kicked(body.reason),
    )
    .await;
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

pub(super) async fn push_user(
    State(ops): State<Arc<Ops>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let call = UserCall {
        uid: &uid,
        method: &method,
        uri: &uri,
    };
    let (gate, body) = match open::<PushBody>(&ops, &headers, Some(call), body).await? {
        Here(gate, body) => (gate, body),
        Relayed(answer) => return Ok(answer),
    };
    match gate.push(uid.as_bytes(), Bytes::from(body.payload)) {
        Ok(seq) => Ok(axum::Json(json!({ "seq": seq })).into_response()),
        Err(e) => Err(error(StatusCode::NOT_FOUND, e.to_string())),
    }
}

pub(super) async fn push_all(
    State(ops): State<Arc<Ops>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (gate, body) = match open::<PushBody>(&ops, &headers, None, body).await? {
        Here(gate, body) => (gate, body),
        Relayed(answer) => return Ok(answer),
    };
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

pub(super) async fn drain(
    State(ops): State<Arc<Ops>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (gate, body) = match open::<DrainBody>(&ops, &headers, None, body).await? {
        Here(gate, body) => (gate, body),
        Relayed(answer) => return Ok(answer),
    };
    gate.set_drained(body.drain);
    info!(drain = body.drain, "drain set by an operator");
    Ok(axum::Json(json!({ "draining": gate.is_draining() })).into_response())
}

/// `POST /admin/reload`: the same reload as SIGHUP (the body is ignored);
/// the answer says what changed or why nothing did.
pub(super) async fn reload(State(ops): State<Arc<Ops>>) -> Response {
    use crate::reload::{Refusal, refused};
    let outcome = match ops.reloader.get() {
        Some(reloader) => reloader.reload("admin").await,
        None if ops.role == "all" => refused("admin", Refusal::NoFile),
        None => refused("admin", Refusal::not_here(ops.role)),
    };
    let status = StatusCode::from_u16(outcome.status()).unwrap_or(StatusCode::CONFLICT);
    (status, axum::Json(outcome.to_json())).into_response()
}
