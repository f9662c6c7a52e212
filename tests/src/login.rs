//! Helpers for the login-server tests: a real server on `127.0.0.1:0`, raw
//! byte-level clients for both ports, a login client built on
//! `loginproto`'s client state machine, and a gate link that can hold a
//! login mid-way.
//!
//! Synchronisation is by events only; every wait has [`GUARD`] as a
//! failure guard, never as a way to let time pass.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::line::LineCodec;
use codec::message::{Request, Response};
use codec::package::PackageCodec;
use futures::{SinkExt, StreamExt};
use gate::config::Config;
use gate::login::FixedRandom;
use gate::login::placement::{BoxFuture, End, GateLink, LoginRefusal, LoginRequest};
use gate::{Components, RunError};
use loginproto::handshake::{self, SessionSecret};
use loginproto::login::{ClientLogin, ClientRandom, LoginError, LoginSuccess, ServerRandom, Suite};
use loginproto::token::Credentials;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::codec::Framed;

/// Failure guard for every wait: a test that needs longer is broken.
pub const GUARD: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test after [`GUARD`].
pub async fn guard<F: Future>(what: &str, fut: F) -> F::Output {
    match timeout(GUARD, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The randomness skynet's transcripts were recorded with: challenge
/// `a1b2c3d4e5f60718`, server key `5e2f3a4b6c7d8e9f`.
pub fn transcript_random() -> ServerRandom {
    ServerRandom {
        challenge: [0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18],
        skynet_key: [0x5e, 0x2f, 0x3a, 0x4b, 0x6c, 0x7d, 0x8e, 0x9f],
        x25519_key: [0x42; 32],
    }
}

/// [`Components`] with the transcript randomness.
pub fn pinned() -> Components {
    Components {
        random: Some(Arc::new(FixedRandom(transcript_random()))),
        ..Components::default()
    }
}

/// A running server (login + gate `sample`).
#[derive(Debug)]
pub struct Server {
    /// The login server's address.
    pub login: SocketAddr,
    /// The message gate's address.
    pub gate: SocketAddr,
    /// The WebSocket listeners (login, gate), if started with them.
    pub web: Option<(SocketAddr, SocketAddr)>,
    /// The operations listener, if started with one ([`Server::start_web`]).
    pub ops: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

impl Server {
    /// Starts `gate::run_with` on two fresh loopback ports.
    pub async fn start(config: Config, components: Components) -> Server {
        let login_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind login");
        let gate_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
        let login = login_listener.local_addr().expect("login addr");
        let gate = gate_listener.local_addr().expect("gate addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gate::run_with(
            login_listener,
            gate_listener,
            config,
            components,
            async move {
                let _ = stopped.await;
            },
        ));
        Server {
            login,
            gate,
            web: None,
            ops: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// [`Server::start`] with the WebSocket listeners and the operations
    /// listener too, on three more fresh ports ([`Server::web`],
    /// [`Server::ops`]).
    pub async fn start_web(config: Config) -> Server {
        let web_login = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let web_gate = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let ops = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let web = (
            web_login.local_addr().expect("addr"),
            web_gate.local_addr().expect("addr"),
        );
        let ops_addr = ops.local_addr().expect("addr");
        let components = Components {
            web_login: Some(web_login),
            web_gate: Some(web_gate),
            ops: Some(ops),
            ..Components::default()
        };
        let mut server = Server::start(config, components).await;
        server.web = Some(web);
        server.ops = Some(ops_addr);
        server
    }

    /// Signals shutdown without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for `run` to return (after [`Server::signal_shutdown`]).
    pub async fn stopped(&mut self) -> Result<(), RunError> {
        let task = self.task.take().expect("server already awaited");
        guard("the server to stop", task)
            .await
            .expect("server task panicked")
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) -> Result<(), RunError> {
        self.signal_shutdown();
        self.stopped().await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal_shutdown();
    }
}

/// A config for tests: defaults (listen addresses are unused, the test
/// binds its own).
pub fn test_config() -> Config {
    Config::default()
}

/// A raw TCP client that checks exact bytes.
#[derive(Debug)]
pub struct Wire {
    stream: TcpStream,
}

impl Wire {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Wire {
        let stream = guard("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Wire { stream }
    }

    /// Writes `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) {
        guard("write", self.stream.write_all(bytes))
            .await
            .expect("write");
    }

    /// Reads exactly `expected.len()` bytes and asserts they are `expected`.
    pub async fn expect(&mut self, expected: &[u8]) {
        let mut got = vec![0u8; expected.len()];
        let read = guard("server bytes", self.stream.read_exact(&mut got)).await;
        if let Err(e) = read {
            panic!(
                "expected {:?}, got an error: {e}",
                String::from_utf8_lossy(expected)
            );
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "server bytes differ"
        );
        assert_eq!(got, expected);
    }

    /// Reads one LF-terminated line (LF included).
    pub async fn line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            let n = guard("a line", self.stream.read(&mut byte))
                .await
                .expect("read");
            assert!(n == 1, "EOF inside a line after {line:?}");
            line.push(byte[0]);
            if byte[0] == b'\n' {
                return line;
            }
        }
    }

    /// Asserts the server closes the connection without sending anything
    /// more (a reset counts as closed).
    pub async fn expect_eof(&mut self) {
        let mut buf = [0u8; 256];
        match guard("the server to close", self.stream.read(&mut buf)).await {
            Ok(0) => {}
            Ok(n) => panic!("expected EOF, got {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected EOF, got {e}"),
        }
    }
}

/// Deterministic client randomness (per `seed`); tests do not need secure
/// keys, only distinct ones.
pub fn client_random(seed: u8) -> ClientRandom {
    ClientRandom {
        skynet_key: loginproto::skynet::random_key([seed, 2, 3, 4, 5, 6, 7, 8]),
        x25519_key: [seed.wrapping_add(0x30); 32],
    }
}

/// Logs in with `loginproto`'s client state machine.
pub async fn login(
    addr: SocketAddr,
    suite: Suite,
    user: &str,
    server: &str,
    password: &str,
    seed: u8,
) -> Result<LoginSuccess, LoginError> {
    login_keeping_the_socket(addr, suite, user, server, password, seed)
        .await
        .0
}

/// [`login`], and the socket, still open on the client's side (a client
/// that reads its status and does not close).
pub async fn login_keeping_the_socket(
    addr: SocketAddr,
    suite: Suite,
    user: &str,
    server: &str,
    password: &str,
    seed: u8,
) -> (Result<LoginSuccess, LoginError>, TcpStream) {
    let stream = guard("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    login_over(stream, suite, user, server, password, seed).await
}

/// [`login`] from the local address `source` (any of 127.0.0.0/8 on
/// loopback): one test plays many clients' addresses.
pub async fn login_from(
    addr: SocketAddr,
    source: std::net::IpAddr,
    suite: Suite,
    user: &str,
    password: &str,
) -> Result<LoginSuccess, LoginError> {
    let stream = guard(
        "connect",
        client_cli::net::connect(&addr.to_string(), Some(source)),
    )
    .await
    .expect("connect");
    login_over(stream, suite, user, "sample", password, 7)
        .await
        .0
}

async fn login_over(
    stream: TcpStream,
    suite: Suite,
    user: &str,
    server: &str,
    password: &str,
    seed: u8,
) -> (Result<LoginSuccess, LoginError>, TcpStream) {
    let mut lines = Framed::new(stream, LineCodec::new());
    let state = ClientLogin::new(
        suite,
        Credentials::new(user, server, password),
        client_random(seed),
    );
    let challenge = next_line(&mut lines).await;
    let (state, key_line) = match state.receive(&challenge) {
        Ok(next) => next,
        Err(e) => return (Err(e), lines.into_inner()),
    };
    write_raw(&mut lines, &key_line).await;
    let server_key = next_line(&mut lines).await;
    let (state, proof_and_token) = match state.receive(&server_key) {
        Ok(next) => next,
        Err(e) => return (Err(e), lines.into_inner()),
    };
    write_raw(&mut lines, &proof_and_token).await;
    let status = next_line(&mut lines).await;
    (state.receive(&status), lines.into_inner())
}

/// The next line (without LF); a server line of 401 in place of line 3 is
/// returned as is, so the state machine reports it.
async fn next_line(lines: &mut Framed<TcpStream, LineCodec>) -> Vec<u8> {
    guard("a login line", lines.next())
        .await
        .expect("server closed during login")
        .expect("line")
        .to_vec()
}

async fn write_raw(lines: &mut Framed<TcpStream, LineCodec>, bytes: &[u8]) {
    guard("write", lines.get_mut().write_all(bytes))
        .await
        .expect("write");
}

/// A message-gate client speaking packages.
#[derive(Debug)]
pub struct GateClient {
    framed: Framed<TcpStream, PackageCodec>,
}

impl GateClient {
    /// Connects to the gate.
    pub async fn connect(addr: SocketAddr) -> GateClient {
        let stream = guard("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        GateClient {
            framed: Framed::new(stream, PackageCodec),
        }
    }

    /// Sends a signed handshake and returns the status payload text.
    pub async fn handshake(
        &mut self,
        uid: &str,
        server: &str,
        subid: &[u8],
        index: u32,
        secret: &SessionSecret,
    ) -> String {
        let username = handshake::username(uid.as_bytes(), server.as_bytes(), subid);
        let payload = handshake::sign(secret, &username, index.to_string().as_bytes());
        guard("send", self.framed.send(Bytes::from(payload)))
            .await
            .expect("send handshake");
        let status = self.package().await.expect("no handshake status");
        String::from_utf8_lossy(&status).into_owned()
    }

    /// Sends a request.
    pub async fn request(&mut self, content: &[u8], number: u32) {
        let mut buf = BytesMut::new();
        Request::encode(content, number, &mut buf).expect("encode request");
        guard("send", self.framed.get_mut().write_all(&buf))
            .await
            .expect("send request");
    }

    /// The next package, or `None` at EOF.
    pub async fn package(&mut self) -> Option<Bytes> {
        match guard("a package", self.framed.next()).await {
            Some(Ok(payload)) => Some(payload),
            Some(Err(_)) | None => None,
        }
    }

    /// The next response.
    pub async fn response(&mut self) -> Response {
        let payload = self.package().await.expect("EOF instead of a response");
        Response::parse(payload).expect("malformed response")
    }

    /// Asserts the gate closes the connection without sending anything.
    pub async fn expect_eof(&mut self) {
        if let Some(payload) = self.package().await {
            panic!("expected EOF, got package {payload:?}");
        }
    }
}

/// Controls a `HoldingGates` gate link: arm it, learn when a login is held,
/// release it.
#[derive(Debug, Default)]
pub struct Hold {
    armed: Mutex<Option<oneshot::Sender<()>>>,
    release: Notify,
}

impl Hold {
    /// Holds the next login inside the gate link; the receiver fires once
    /// that login is held (the uid's in-progress lock is then taken).
    pub fn arm(&self) -> oneshot::Receiver<()> {
        let (entered, held) = oneshot::channel();
        *self.armed.lock().expect("hold lock") = Some(entered);
        held
    }

    /// Lets the held login continue.
    pub fn release(&self) {
        self.release.notify_one();
    }

    /// A [`Components`] gate-link layer wrapping the real gates.
    pub fn layer(self: &Arc<Self>) -> gate::GateLinkLayer {
        let hold = Arc::clone(self);
        Box::new(move |inner| Arc::new(HoldingGates { inner, hold }) as Arc<dyn GateLink>)
    }
}

/// A gate link that can hold a login until the test releases it.
struct HoldingGates {
    inner: Arc<dyn GateLink>,
    hold: Arc<Hold>,
}

impl GateLink for HoldingGates {
    fn login(&self, req: LoginRequest) -> BoxFuture<'_, Result<Bytes, LoginRefusal>> {
        Box::pin(async move {
            let armed = self.hold.armed.lock().expect("hold lock").take();
            if let Some(entered) = armed {
                let released = self.hold.release.notified();
                let _ = entered.send(());
                released.await;
            }
            self.inner.login(req).await
        })
    }

    fn kick(&self, server: Bytes, uid: Bytes, subid: Bytes, reason: End) -> BoxFuture<'_, ()> {
        self.inner.kick(server, uid, subid, reason)
    }

    fn has_server(&self, server: &[u8]) -> bool {
        self.inner.has_server(server)
    }
}

/// A file in the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempFile {
    /// Its path.
    pub path: std::path::PathBuf,
}

impl TempFile {
    /// Writes `contents` to a fresh file named after `tag`.
    pub fn new(tag: &str, contents: &str) -> TempFile {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "gate-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
