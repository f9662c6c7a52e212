//! `client admin`: the gate's admin API from the shell, for QA and on-call
//! (the operations listener, `ops.listen`; see the README's "Operations").
//!
//! ```text
//! client admin --ops 127.0.0.1:9100 --token-file admin.token summary
//! client admin ... user alice
//! client admin ... kick alice --reason maintenance
//! client admin ... push alice "hello"       client admin ... push-all "hello"
//! client admin ... drain                    client admin ... undrain
//! client admin ... metrics
//! ```
//!
//! Prints the answer (JSON, or the metrics text); exits 0 on a 2xx answer,
//! 1 otherwise (the answer, with the gate's reason, is printed either way).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Options of `client admin`.
#[derive(Debug, Clone, Args)]
pub struct AdminCmd {
    /// The gate's operations listener.
    #[arg(
        long = "ops",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:9100"
    )]
    pub addr: String,
    /// File with the admin token (the gate's `ops.admin_token_file`).
    #[arg(long, value_name = "FILE", env = "GATE_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Deadline of the call.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
    /// What to do.
    #[command(subcommand)]
    pub call: AdminCall,
}

/// One admin call.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCall {
    /// The node: role, version, uptime, sessions, connections, limits.
    Summary,
    /// One user's session on this gate.
    User {
        /// The uid.
        uid: String,
    },
    /// End a user's session; an opted-in client is told the reason.
    Kick {
        /// The uid.
        uid: String,
        /// What the client is told.
        #[arg(long, default_value = "kicked by an operator")]
        reason: String,
    },
    /// Push a text to one user.
    Push {
        /// The uid.
        uid: String,
        /// The payload.
        text: String,
    },
    /// Push a text to every session of this gate.
    PushAll {
        /// The payload.
        text: String,
    },
    /// Refuse new logins on this gate (established sessions go on).
    Drain,
    /// Accept new logins again.
    Undrain,
    /// The Prometheus metrics (no token needed).
    Metrics,
}

/// An answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (JSON for admin calls).
    pub body: String,
}

/// Percent-encodes a path segment (a uid may hold any character).
fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Makes the call `cmd` describes.
pub async fn call(cmd: &AdminCmd) -> Result<Answer, String> {
    let token = match &cmd.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .trim_end()
                .to_owned(),
        ),
        None => None,
    };
    let json = |v: serde_json::Value| Some(v.to_string());
    let (method, path, body) = match &cmd.call {
        AdminCall::Summary => ("GET", "/admin/summary".to_owned(), None),
        AdminCall::User { uid } => ("GET", format!("/admin/users/{}", segment(uid)), None),
        AdminCall::Kick { uid, reason } => (
            "POST",
            format!("/admin/users/{}/kick", segment(uid)),
            json(serde_json::json!({ "reason": reason })),
        ),
        AdminCall::Push { uid, text } => (
            "POST",
            format!("/admin/users/{}/push", segment(uid)),
            json(serde_json::json!({ "payload": text })),
        ),
        AdminCall::PushAll { text } => (
            "POST",
            "/admin/push".to_owned(),
            json(serde_json::json!({ "payload": text })),
        ),
        AdminCall::Drain => (
            "POST",
            "/admin/drain".to_owned(),
            json(serde_json::json!({ "drain": true })),
        ),
        AdminCall::Undrain => (
            "POST",
            "/admin/drain".to_owned(),
            json(serde_json::json!({ "drain": false })),
        ),
        AdminCall::Metrics => ("GET", "/metrics".to_owned(), None),
    };
    let exchange = async {
        let stream = TcpStream::connect(&cmd.addr)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", cmd.addr))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(&path)
            .header(hyper::header::HOST, &cmd.addr)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(cmd.timeout), exchange)
        .await
        .map_err(|_| format!("no answer from {} within {}s", cmd.addr, cmd.timeout))?
}

/// `client admin`: makes the call, prints the answer.
pub async fn run(cmd: AdminCmd) -> ExitCode {
    match call(&cmd).await {
        Ok(answer) => {
            let shown = serde_json::from_str::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(answer.body);
            outln!("{}", shown.trim_end());
            if (200..300).contains(&answer.status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("HTTP {}", answer.status);
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_escaped_in_paths() {
        assert_eq!(segment("alice"), "alice");
        assert_eq!(segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(segment("é"), "%C3%A9");
        assert_eq!(segment("a.b"), "a%2Eb");
    }
}
