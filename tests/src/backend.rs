//! Helpers for the backend tests: a real server (login + gate + backend
//! listener) on `127.0.0.1:0`, players built on `client_cli`'s client
//! library (the [`Player`] type lives in [`crate::player`]), services
//! built with the `service` crate (each in a runtime of its own, so a test
//! can kill one like a crashed process), a probe handler the tests steer
//! with request payloads, a raw protocol link, and a proxy that makes a
//! service claim another protocol version.
//!
//! Synchronisation is by events (responses, channels, the backend's
//! registration watch); every wait has [`GUARD`] as a failure guard.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use client_cli::{GateConn, Ticket};
use futures::{SinkExt, StreamExt};
use gate::backend::Backend;
use gate::config::Config;
use gate::{Components, RunError};
use loginproto::login::Suite;
use loginproto::token::Credentials;
use proto::backend::{GateFrame, Register, ServiceFrame, gate_frame, service_frame};
use proto::framing::{GateCodec, ServiceCodec};
use service::{
    AuthDecision, AuthRequest, Builder, CancellationToken, Context, Handler, LinkSecret, Request,
    Service, ServiceError, SessionEvent,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::codec::{Framed, FramedRead};

use crate::login::Server;
pub use crate::player::{Player, envelope};

/// Failure guard for every wait of the backend tests.
pub const GUARD: Duration = Duration::from_secs(15);

/// Awaits `fut`, failing the test after [`GUARD`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The link secret of the test gates and services.
pub fn link_secret() -> LinkSecret {
    LinkSecret::new(b"the test deployment's link secret".to_vec()).expect("long enough")
}

/// A test configuration: defaults, except a request deadline far beyond
/// any test's wait (tests that need a deadline set their own), a short
/// shutdown grace, and no bound on login dialogues per address.
pub fn config() -> Config {
    let mut config = Config::default();
    config.backend.request_timeout = Duration::from_secs(60);
    config.shutdown_grace = Duration::from_secs(2);
    // The tests log a hundred players in at once, all from 127.0.0.1.
    config.login.max_connections_per_source = 0;
    config
}

/// A running login server + gate + backend listener.
#[derive(Debug)]
pub struct BackendGate {
    /// Login server, gate and the `run_with` task.
    pub server: Server,
    /// The backend (to wait for registrations and read counters).
    pub backend: Backend,
    /// Where services connect.
    pub backend_addr: SocketAddr,
}

impl BackendGate {
    /// Starts `gate::run_with` with a backend on a fresh loopback port.
    pub async fn start(config: Config) -> BackendGate {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let backend_addr = listener.local_addr().expect("backend addr");
        let backend = Backend::new(config.backend.clone(), listener, link_secret());
        let components = Components {
            backend: Some(backend.clone()),
            ..Components::default()
        };
        let server = Server::start(config, components).await;
        BackendGate {
            server,
            backend,
            backend_addr,
        }
    }

    /// A service builder dialling this gate with quick reconnects.
    pub fn service(&self, name: &str, instance: &str) -> Builder {
        Service::builder(name)
            .gate(self.backend_addr.to_string())
            .link_secret(link_secret())
            .instance_id(instance)
            .backoff(Duration::from_millis(10), Duration::from_millis(200))
    }

    /// Waits until exactly `n` instances of `service` are registered.
    pub async fn instances(&self, service: &str, n: usize) {
        within(
            &format!("{n} instance(s) of {service}"),
            self.backend.wait_instances(service, n),
        )
        .await;
    }

    /// Logs `user` in (password `password`, the demo authenticator),
    /// handshakes, and returns the player. `opt_in`: send the extension
    /// field `v=1`, so pushes and kick reasons are delivered.
    pub async fn player(&self, user: &str, opt_in: bool) -> Player {
        self.player_as(user, "password", user, opt_in)
            .await
            .expect("login accepted")
    }

    /// Player `user<i>`, a plain skynet client.
    pub async fn player_named(&self, i: usize) -> Player {
        self.player(&format!("user{i}"), false).await
    }

    /// Player `member<i>`, opted in to pushes.
    pub async fn player_opted_in(&self, i: usize) -> Player {
        self.player(&format!("member{i}"), true).await
    }

    /// Logs in as `user` with `password` and handshakes as `uid` (the uid
    /// the authenticator is expected to give). A refused login is `Err`.
    pub async fn player_as(
        &self,
        user: &str,
        password: &str,
        uid: &str,
        opt_in: bool,
    ) -> Result<Player, client_cli::ClientError> {
        self.player_logged_in(user, password, uid, opt_in, Suite::X25519)
            .await
    }

    /// [`BackendGate::player_as`], plain, with the login suite chosen.
    pub async fn player_with_suite(
        &self,
        user: &str,
        password: &str,
        uid: &str,
        suite: Suite,
    ) -> Result<Player, client_cli::ClientError> {
        self.player_logged_in(user, password, uid, false, suite)
            .await
    }

    async fn player_logged_in(
        &self,
        user: &str,
        password: &str,
        uid: &str,
        opt_in: bool,
        suite: Suite,
    ) -> Result<Player, client_cli::ClientError> {
        let login = client_cli::login(
            &self.server.login.to_string(),
            suite,
            Credentials::new(user, "sample", password),
        )
        .await?;
        let ticket = Ticket::new(uid.as_bytes(), b"sample", &login);
        let mut conn = GateConn::new(self.server.gate.to_string(), ticket, GUARD);
        if opt_in {
            conn.set_handshake_ext(Some(b"v=1".to_vec()));
        }
        within("the handshake", conn.connect(1))
            .await
            .expect("handshake 200 OK");
        Ok(Player::new(conn, uid))
    }

    /// A new connection of `player`'s login (its ticket), handshaking with
    /// `index`, for a player whose connection was taken or broken.
    pub async fn reconnect(&self, ticket: Ticket, uid: &str, index: u64) -> Player {
        let mut conn = GateConn::new(self.server.gate.to_string(), ticket, GUARD);
        within("the handshake", conn.connect(index))
            .await
            .expect("handshake 200 OK");
        Player::new(conn, uid)
    }

    /// Shuts the server down and waits for `run_with` to return.
    pub async fn shutdown(self) -> Result<(), RunError> {
        self.server.shutdown().await
    }
}

/// What a [`Probe`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A request that will not be answered until released (`hang`, `slow`).
    Holding {
        /// The instance.
        instance: String,
        /// The user.
        uid: Bytes,
    },
    /// A session event.
    Event {
        /// The instance.
        instance: String,
        /// The event.
        event: SessionEvent,
    },
}

/// A test service handler, steered by the request payload:
///
/// * `who` → the instance id; `uid` → the request's uid;
/// * `hang` → never answered (reports [`Seen::Holding`]);
/// * `slow` → answered `slow` once the test calls [`Probe::release`];
/// * `kick <reason>` → kicks the caller with `reason`, answers `kicked`;
/// * `push <text>` → pushes `text` to the caller, answers `pushed`;
/// * `logout` → logs the caller out, answers `bye`;
/// * `fail` → an error answer;
/// * anything else → `<instance> <route> <payload>`.
///
/// Auth: `alice`/`secret` → uid `uid-alice`; `plain`/`secret` → allowed
/// with no uid (the user name is used); `silent` → never answered;
/// anything else → denied.
#[derive(Debug, Clone)]
pub struct Probe {
    instance: String,
    seen: mpsc::UnboundedSender<Seen>,
    release: Arc<Notify>,
}

impl Probe {
    /// A probe for `instance` and what it reports.
    pub fn new(instance: &str) -> (Probe, mpsc::UnboundedReceiver<Seen>) {
        let (seen, rx) = mpsc::unbounded_channel();
        (Probe::with(instance, seen), rx)
    }

    /// A probe reporting to an existing channel (several instances, one
    /// log).
    pub fn with(instance: &str, seen: mpsc::UnboundedSender<Seen>) -> Probe {
        Probe {
            instance: instance.to_owned(),
            seen,
            release: Arc::new(Notify::new()),
        }
    }

    /// Lets one `slow` request answer.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

impl Handler for Probe {
    async fn request(&self, ctx: Context, req: Request) -> Result<Bytes, String> {
        let text = String::from_utf8_lossy(&req.payload).into_owned();
        let (verb, rest) = text.split_once(' ').unwrap_or((&text, ""));
        match verb {
            "who" => Ok(Bytes::from(self.instance.clone())),
            "uid" => Ok(req.uid),
            "hang" | "slow" => {
                let _ = self.seen.send(Seen::Holding {
                    instance: self.instance.clone(),
                    uid: req.uid,
                });
                if verb == "hang" {
                    std::future::pending::<()>().await;
                }
                self.release.notified().await;
                Ok(Bytes::from_static(b"slow"))
            }
            "kick" => {
                ctx.gate()
                    .kick(req.uid, rest)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Bytes::from_static(b"kicked"))
            }
            "push" => {
                ctx.gate()
                    .push(req.uid, rest.to_owned())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Bytes::from_static(b"pushed"))
            }
            "logout" => {
                ctx.gate()
                    .logout(req.uid)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Bytes::from_static(b"bye"))
            }
            "fail" => Err("asked to fail".into()),
            _ => Ok(Bytes::from(format!(
                "{} {} {}",
                self.instance, req.route, text
            ))),
        }
    }

    async fn session(&self, _ctx: Context, event: SessionEvent) {
        let _ = self.seen.send(Seen::Event {
            instance: self.instance.clone(),
            event,
        });
    }

    async fn auth(&self, _ctx: Context, req: AuthRequest) -> AuthDecision {
        match (&req.user[..], &req.password[..]) {
            (b"alice", b"secret") => AuthDecision::Allow(Bytes::from_static(b"uid-alice")),
            (b"plain", b"secret") => AuthDecision::Allow(Bytes::new()),
            (b"silent", _) => std::future::pending().await,
            _ => AuthDecision::Deny("wrong password".into()),
        }
    }
}

/// A service running in a runtime of its own, like a separate process:
/// [`ServiceProcess::kill`] drops every task and socket at once, without
/// any goodbye.
#[derive(Debug)]
pub struct ServiceProcess {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ServiceError>>>,
}

impl ServiceProcess {
    /// Builds and runs a service.
    pub fn start<H: Handler>(builder: Builder, handler: H) -> ServiceProcess {
        let service = builder.build(handler).expect("valid service settings");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("service runtime");
        let shutdown = CancellationToken::new();
        let task = runtime.spawn(service.run(shutdown.clone()));
        ServiceProcess {
            runtime: Some(runtime),
            shutdown,
            task: Some(task),
        }
    }

    /// Kills it: every task and socket is dropped now.
    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Waits for `run` to return on its own (e.g. a permanent refusal).
    pub async fn finished(mut self) -> Result<(), ServiceError> {
        let task = self.task.take().expect("not awaited yet");
        within("the service to stop", task)
            .await
            .expect("service task")
    }

    /// Stops it gracefully and returns what `run` returned.
    pub async fn stop(self) -> Result<(), ServiceError> {
        self.shutdown.cancel();
        self.finished().await
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A raw service link speaking `proto::framing` (for what the `service`
/// crate would not do, or to watch the gate's frames directly).
#[derive(Debug)]
pub struct RawLink {
    framed: Framed<TcpStream, ServiceCodec>,
    /// The gate's challenge (the first frame of the link).
    gate_nonce: Bytes,
}

impl RawLink {
    /// Connects to the gate's backend port and reads its challenge.
    pub async fn connect(addr: SocketAddr) -> RawLink {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        let mut link = RawLink {
            framed: Framed::new(stream, ServiceCodec::new()),
            gate_nonce: Bytes::new(),
        };
        match link.recv().await.and_then(|f| f.kind) {
            Some(gate_frame::Kind::LinkChallenge(challenge)) => {
                link.gate_nonce = challenge.gate_nonce;
            }
            other => panic!("expected the link challenge first, got {other:?}"),
        }
        link
    }

    /// Connects from the loopback address `127.0.0.<host>` and reads the
    /// challenge; `None` if the gate closed the connection at accept.
    pub async fn try_connect_from(addr: SocketAddr, host: u8) -> Option<RawLink> {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, host], 0)))
            .expect("bind a loopback source address");
        let stream = within("connect", socket.connect(addr))
            .await
            .expect("connect");
        let mut link = RawLink {
            framed: Framed::new(stream, ServiceCodec::new()),
            gate_nonce: Bytes::new(),
        };
        match link.recv().await.and_then(|f| f.kind) {
            Some(gate_frame::Kind::LinkChallenge(challenge)) => {
                link.gate_nonce = challenge.gate_nonce;
                Some(link)
            }
            _ => None,
        }
    }

    /// Sends a frame.
    pub async fn send(&mut self, frame: impl Into<ServiceFrame>) {
        within("send", self.framed.send(frame.into()))
            .await
            .expect("send");
    }

    /// Sends several frames in one write, so that the gate reads them
    /// together.
    pub async fn send_together(&mut self, frames: impl IntoIterator<Item = ServiceFrame>) {
        for frame in frames {
            within("feed", self.framed.feed(frame)).await.expect("feed");
        }
        within("flush", self.framed.flush()).await.expect("flush");
    }

    /// The next frame, `None` once the gate closed.
    pub async fn recv(&mut self) -> Option<GateFrame> {
        match within("a frame from the gate", self.framed.next()).await {
            Some(Ok(frame)) => Some(frame),
            Some(Err(_)) | None => None,
        }
    }

    /// Registers with a proof of `secret` and returns the gate's answer.
    pub async fn register_with(
        &mut self,
        mut register: Register,
        secret: &LinkSecret,
    ) -> GateFrame {
        let nonce = [5u8; proto::link_auth::NONCE_LEN];
        register.service_nonce = Bytes::copy_from_slice(&nonce);
        register.proof = proto::link_auth::service_proof(
            secret.bytes(),
            &self.gate_nonce,
            &nonce,
            &register.service,
            &register.instance_id,
        )
        .into();
        self.send(register).await;
        self.recv().await.expect("an answer to the registration")
    }

    /// Registers with the test deployment's secret and returns the gate's
    /// answer.
    pub async fn register(&mut self, register: Register) -> GateFrame {
        self.register_with(register, &link_secret()).await
    }
}

/// A proxy between one service and the gate that rewrites the service's
/// `Register.protocol_version` to `version` and then forwards bytes both
/// ways: a service of another protocol version, built from the real
/// `service` crate.
pub async fn version_shim(gate_backend: SocketAddr, version: u32) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind shim");
    let addr = listener.local_addr().expect("shim addr");
    let task = tokio::spawn(async move {
        let Ok((service, _)) = listener.accept().await else {
            return;
        };
        let Ok(gate) = TcpStream::connect(gate_backend).await else {
            return;
        };
        let (mut gate_read, mut gate_write) = gate.into_split();
        let (service_read, mut service_write) = service.into_split();
        // The gate speaks first (its challenge): pass everything it says on.
        let down = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut gate_read, &mut service_write).await;
        });
        // The service's frames decode as `ServiceFrame` with the gate's codec.
        let mut from_service = FramedRead::new(service_read, GateCodec::new());
        let Some(Ok(mut first)) = from_service.next().await else {
            return;
        };
        if let Some(service_frame::Kind::Register(register)) = &mut first.kind {
            register.protocol_version = version;
        }
        let mut buf = BytesMut::new();
        if tokio_util::codec::Encoder::encode(&mut ServiceCodec::new(), first, &mut buf).is_err() {
            return;
        }
        let parts = from_service.into_parts();
        buf.extend_from_slice(&parts.read_buf);
        let mut service_read = parts.io;
        if tokio::io::AsyncWriteExt::write_all(&mut gate_write, &buf)
            .await
            .is_err()
        {
            return;
        }
        let _ = tokio::io::copy(&mut service_read, &mut gate_write).await;
        let _ = down.await;
    });
    (addr, task)
}
