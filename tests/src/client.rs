//! Helpers for the `client` tests: where the example scripts are, a
//! session configuration for a test server, and a faulty echo server that
//! breaks one response on purpose (to prove the load generator notices).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use client_cli::SessionConfig;
use client_cli::gate::Extensions;
use codec::message::{Request, Response, ResponseFlag};
use codec::package::PackageCodec;
use loginproto::login::Suite;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder;

/// `client-cli/scripts/`, the shipped example scripts.
pub fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("client-cli")
        .join("scripts")
}

/// A session as `user` on the server at `login` / `gate`, with a short
/// deadline per step (a failure guard, not a wait), opted in to the gate's
/// extensions and sealed, as the `client` subcommands are by default.
pub fn session_config(login: SocketAddr, gate: SocketAddr, user: &str) -> SessionConfig {
    SessionConfig {
        login_addr: login.to_string(),
        gate_addr: gate.to_string(),
        user: user.to_owned(),
        server: "sample".to_owned(),
        password: "password".to_owned(),
        suite: Suite::X25519,
        server_key: None,
        timeout: Duration::from_secs(5),
        extensions: Extensions::OptIn,
        seal: true,
        heartbeat: Duration::from_secs(20),
    }
}

/// What a [`FaultyEcho`] does wrong, once, to the `n`-th request it sees
/// (counting from 0 over all connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Never answers it.
    Drop(u64),
    /// Answers it with a changed payload.
    Corrupt(u64),
    /// Answers it with ok byte 0.
    Error(u64),
}

/// A raw framed echo server (like `raw_echo`, bench/raw-echo) with one [`Fault`].
#[derive(Debug)]
pub struct FaultyEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FaultyEcho {
    /// Starts it on a fresh loopback port.
    pub async fn start(fault: Fault) -> FaultyEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(faulty_conn(stream, fault, counter.clone()));
            }
        });
        FaultyEcho { addr, task }
    }
}

impl Drop for FaultyEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn faulty_conn(
    mut stream: TcpStream,
    fault: Fault,
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    loop {
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Ok(Some(package)) = PackageCodec.decode(&mut input) {
            let Some(request) = Request::parse(package) else {
                return;
            };
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut content = request.content.to_vec();
            let mut flag = ResponseFlag::OK;
            match fault {
                Fault::Drop(at) if at == n => continue,
                Fault::Corrupt(at) if at == n => {
                    if let Some(last) = content.last_mut() {
                        *last ^= 0xff;
                    } else {
                        content.push(b'!');
                    }
                }
                Fault::Error(at) if at == n => {
                    content.clear();
                    flag = ResponseFlag::ERROR;
                }
                _ => {}
            }
            Response::encode(&content, flag, request.number, &mut output).expect("fits");
        }
        if !output.is_empty() {
            if stream.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
        }
    }
}
