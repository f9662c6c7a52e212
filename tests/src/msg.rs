//! Helpers for the message-gate tests: a real [`MsgGate`] on `127.0.0.1:0`
//! with a controllable agent and login link, and a raw byte-level client.
//! The replayer of the live skynet transcript is [`crate::replay`]'s,
//! re-exported here.
//!
//! Synchronisation is by events (agent calls, session events, gate
//! counters); every wait has [`MSG_GUARD`] as a failure guard only.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use codec::package::encode_package;
use gate::agent::{
    Agent, AgentRequest, Completer, Dispatch, RequestError, SessionCtx, SessionEvent,
};
use gate::config::GateConfig;
use gate::login::placement::{End, LoginLink};
use gate::players::{GateMetrics, MsgGate};
use loginproto::handshake::{self, SessionSecret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

pub use crate::replay::{Replay, msg_transcript, scenario, step_bytes};

/// Failure guard for every wait of the gate tests.
pub const MSG_GUARD: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test after [`MSG_GUARD`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match timeout(MSG_GUARD, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Waits until `cond` holds, re-checking each time the other tasks of the
/// test's runtime have had a turn, failing after [`MSG_GUARD`]. For
/// conditions only visible in the gate's counters.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// Decodes lowercase hex.
pub fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The secret of user `hello` in the transcripts.
pub fn hello_secret() -> SessionSecret {
    SessionSecret::Skynet(unhex("8dbc0eb76b7a12f8").try_into().expect("8 bytes"))
}

/// A session event as the test agent saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenEvent {
    /// The user's uid.
    pub uid: Bytes,
    /// The user's subid.
    pub subid: Bytes,
    /// What happened.
    pub event: SessionEvent,
}

/// An agent whose behaviour the test controls, modelled on the transcript
/// harness: `raise` → handler error, `slow…` → answered when the test calls
/// [`TestAgent::release`], `logout` → the agent logs the user out, `panic`
/// → the agent panics, anything else → echoed at once.
#[derive(Debug)]
pub struct TestAgent {
    pending: Mutex<HashMap<String, Completer>>,
    executed: Mutex<Vec<String>>,
    changed: Notify,
    events: mpsc::UnboundedSender<SeenEvent>,
}

impl TestAgent {
    /// A new agent and the receiving end of its session events.
    pub fn new() -> (Arc<TestAgent>, mpsc::UnboundedReceiver<SeenEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let agent = TestAgent {
            pending: Mutex::new(HashMap::new()),
            executed: Mutex::new(Vec::new()),
            changed: Notify::new(),
            events: tx,
        };
        (Arc::new(agent), rx)
    }

    /// How many times a request with this content was executed.
    pub fn executions(&self, content: &str) -> usize {
        self.executed
            .lock()
            .expect("lock")
            .iter()
            .filter(|c| *c == content)
            .count()
    }

    /// Number of deferred requests not answered yet.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("lock").len()
    }

    /// Waits until a deferred request with this content exists.
    pub async fn wait_pending(&self, content: &str) {
        within(&format!("request {content:?} to reach the agent"), async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.pending.lock().expect("lock").contains_key(content) {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }

    /// Answers the deferred request with this content (echo), waiting for
    /// it to arrive first.
    pub async fn release(&self, content: &str) {
        self.wait_pending(content).await;
        let completer = self.pending.lock().expect("lock").remove(content);
        if let Some(completer) = completer {
            completer.complete(Ok(Bytes::copy_from_slice(content.as_bytes())));
        }
    }

    /// Drops the deferred request's completer without answering.
    pub fn forget(&self, content: &str) -> bool {
        self.pending.lock().expect("lock").remove(content).is_some()
    }
}

impl Agent for TestAgent {
    fn request(&self, ctx: &SessionCtx, req: AgentRequest) -> Dispatch {
        let content = String::from_utf8_lossy(&req.content).into_owned();
        self.executed.lock().expect("lock").push(content.clone());
        let dispatch = if content == "raise" {
            Dispatch::Ready(Err(RequestError::Handler("raised".to_owned())))
        } else if content == "panic" {
            panic!("test agent panics on request");
        } else if content == "logout" {
            ctx.logout();
            Dispatch::Ready(Ok(req.content))
        } else if content.starts_with("slow") {
            let (_, completer, pending) = req.defer(ctx);
            self.pending
                .lock()
                .expect("lock")
                .insert(content, completer);
            pending
        } else {
            Dispatch::Ready(Ok(req.content))
        };
        self.changed.notify_waiters();
        dispatch
    }

    fn event(&self, ctx: &SessionCtx, event: SessionEvent) {
        let _ = self.events.send(SeenEvent {
            uid: ctx.uid().clone(),
            subid: ctx.subid().clone(),
            event,
        });
    }
}

/// A session end as the login server was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Gate name.
    pub server: Bytes,
    /// uid.
    pub uid: Bytes,
    /// subid.
    pub subid: Bytes,
    /// Why.
    pub reason: End,
}

/// A login link that reports every ended session on a channel.
#[derive(Debug)]
pub struct TestLogin {
    tx: mpsc::UnboundedSender<Ended>,
}

impl LoginLink for TestLogin {
    fn session_ended(&self, server: &[u8], uid: &[u8], subid: &[u8], reason: &End) {
        let _ = self.tx.send(Ended {
            server: Bytes::copy_from_slice(server),
            uid: Bytes::copy_from_slice(uid),
            subid: Bytes::copy_from_slice(subid),
            reason: reason.clone(),
        });
    }
}

/// A gate serving on `127.0.0.1:0` with a [`TestAgent`] and a [`TestLogin`].
#[derive(Debug)]
pub struct TestGate {
    /// The gate.
    pub gate: MsgGate,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its agent.
    pub agent: Arc<TestAgent>,
    /// Session events seen by the agent.
    pub events: mpsc::UnboundedReceiver<SeenEvent>,
    /// Session ends reported to the login server.
    pub ended: mpsc::UnboundedReceiver<Ended>,
    /// Cancelling it shuts the gate down.
    pub shutdown: CancellationToken,
    /// The `serve` task.
    pub serve: JoinHandle<io::Result<()>>,
}

impl TestGate {
    /// A gate with the default configuration except the listen address.
    pub async fn start_default() -> TestGate {
        TestGate::start(GateConfig::default()).await
    }

    /// A gate with `cfg` (its `listen` is ignored: `127.0.0.1:0`).
    pub async fn start(cfg: GateConfig) -> TestGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (agent, events) = TestAgent::new();
        let (tx, ended) = mpsc::unbounded_channel();
        let gate = MsgGate::new(cfg, agent.clone(), Arc::new(TestLogin { tx }));
        let shutdown = CancellationToken::new();
        let serve = tokio::spawn({
            let gate = gate.clone();
            let shutdown = shutdown.clone();
            async move { gate.serve(listener, shutdown).await }
        });
        TestGate {
            gate,
            addr,
            agent,
            events,
            ended,
            shutdown,
            serve,
        }
    }

    /// Logs `uid` in and returns its subid.
    pub async fn login(&self, uid: &str, secret: &SessionSecret) -> String {
        let subid = within(
            "login",
            self.gate
                .login(Bytes::copy_from_slice(uid.as_bytes()), secret.clone()),
        )
        .await
        .expect("login accepted");
        String::from_utf8(subid.to_vec()).expect("decimal subid")
    }

    /// Logs `uid` in and returns the username its handshakes use.
    pub async fn logged_in(&self, uid: &str, secret: &SessionSecret) -> Vec<u8> {
        let subid = self.login(uid, secret).await;
        self.username(uid, &subid)
    }

    /// The username of `(uid, subid)` on this gate.
    pub fn username(&self, uid: &str, subid: &str) -> Vec<u8> {
        handshake::username(
            uid.as_bytes(),
            self.gate.name().as_bytes(),
            subid.as_bytes(),
        )
    }

    /// A raw client connected to the gate.
    pub async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// A client that completed a handshake (`200 OK` checked).
    pub async fn session(&self, secret: &SessionSecret, username: &[u8], index: u64) -> Client {
        let mut client = self.connect().await;
        let status = client.handshake(secret, username, index).await;
        assert_eq!(
            status,
            b"200 OK",
            "handshake of {}",
            String::from_utf8_lossy(username)
        );
        client
    }

    /// The gate's counters.
    pub fn metrics(&self) -> GateMetrics {
        self.gate.metrics()
    }

    /// The next session event matching `pred` (others are skipped).
    pub async fn event(&mut self, what: &str, pred: impl Fn(&SeenEvent) -> bool) -> SeenEvent {
        within(what, async {
            loop {
                let seen = self.events.recv().await.expect("agent alive");
                if pred(&seen) {
                    return seen;
                }
            }
        })
        .await
    }

    /// The next session end reported to the login server.
    pub async fn next_ended(&mut self) -> Ended {
        within("a session end report", self.ended.recv())
            .await
            .expect("gate alive")
    }

    /// Shuts the gate down and waits for `serve` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        within("serve to return", self.serve)
            .await
            .expect("serve task")
            .expect("serve ok");
    }
}

/// A client speaking raw packages.
#[derive(Debug)]
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
}

impl Client {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Client { stream }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        within("write", self.stream.write_all(bytes))
            .await
            .expect("write");
    }

    /// Writes one package with this payload.
    pub async fn send_package(&mut self, payload: &[u8]) {
        let mut buf = bytes::BytesMut::new();
        encode_package(payload, &mut buf).expect("fits");
        self.send(&buf).await;
    }

    /// Writes a request package.
    pub async fn send_request(&mut self, content: &[u8], number: u32) {
        let mut payload = content.to_vec();
        payload.extend_from_slice(&number.to_be_bytes());
        self.send_package(&payload).await;
    }

    /// Reads exactly `n` bytes.
    pub async fn recv_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        within("read", self.stream.read_exact(&mut buf))
            .await
            .expect("read");
        buf
    }

    /// Reads exactly these bytes.
    pub async fn expect(&mut self, expected: &[u8]) {
        let got = self.recv_exact(expected.len()).await;
        assert!(
            got == expected,
            "expected {} bytes {}, got {}",
            expected.len(),
            preview(expected),
            preview(&got)
        );
    }

    /// Reads one package and returns its payload.
    pub async fn recv_package(&mut self) -> Vec<u8> {
        let header = self.recv_exact(2).await;
        let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
        self.recv_exact(len).await
    }

    /// Reads a response package: (content, ok flag, request number).
    pub async fn recv_response(&mut self) -> (Vec<u8>, u8, u32) {
        let mut payload = self.recv_package().await;
        assert!(payload.len() >= 5, "short response {payload:?}");
        let at = payload.len() - 5;
        let number = u32::from_be_bytes(payload[at + 1..].try_into().expect("4 bytes"));
        let flag = payload[at];
        payload.truncate(at);
        (payload, flag, number)
    }

    /// Sends `content` with request number `number` and expects the echo.
    pub async fn echo(&mut self, content: &[u8], number: u32) {
        self.send_request(content, number).await;
        assert_eq!(self.recv_response().await, (content.to_vec(), 1, number));
    }

    /// Sends a signed handshake and returns the status text.
    pub async fn handshake(
        &mut self,
        secret: &SessionSecret,
        username: &[u8],
        index: u64,
    ) -> Vec<u8> {
        let payload = handshake::sign(secret, username, index.to_string().as_bytes());
        self.send_package(&payload).await;
        self.recv_package().await
    }

    /// Breaks the connection with a reset (SO_LINGER 0), as a client that
    /// crashed or lost its network: the gate sees an error at once, not a
    /// half-close.
    pub fn reset(self) {
        self.stream.set_zero_linger().expect("SO_LINGER");
        drop(self.stream);
    }

    /// Expects the server to close the connection without sending anything
    /// (EOF or reset).
    pub async fn expect_closed(&mut self) {
        let mut buf = [0u8; 64];
        match within("the server to close", self.stream.read(&mut buf)).await {
            Ok(0) => {}
            Ok(n) => panic!("expected close, got {}", preview(&buf[..n])),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ),
                "unexpected error {e}"
            ),
        }
    }
}

/// The first 40 bytes of `bytes` in hex, for assertion messages.
pub(crate) fn preview(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().take(40).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 40 {
        format!("{hex}… ({} bytes)", bytes.len())
    } else {
        hex
    }
}
