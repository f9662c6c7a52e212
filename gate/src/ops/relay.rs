//! User calls for a session another gate node holds: on a cluster node,
//! `/admin/users/{uid}...` for such a uid is sent on to that node's
//! operations listener (published in the registry) with the same token,
//! and its answer relayed, so user calls work on any node.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::Ops;
use super::admin::{ApiError, error};

/// How long the other node gets to answer a relayed call.
const RELAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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

/// A user call for a uid whose session is on another gate node, sent on
/// there (its answer relayed); `None`: answer here.
pub(super) async fn elsewhere(
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
    let (status, body) = tokio::time::timeout(RELAY_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(unreachable)?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}
