//! Helpers for the push / kick / heartbeat tests: a real [`MsgGate`] on
//! `127.0.0.1:0` with an agent that pushes and kicks on request, and a raw
//! client that speaks the extensions (`gate::players`, "Extensions").
//!
//! Synchronisation is by events (session events, login-link reports, the
//! gate's counters, bytes on the wire); every wait has
//! [`crate::msg::MSG_GUARD`] as a failure guard only.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use codec::ext::Ext;
use codec::websocket::Mapping;
use gate::agent::{Agent, AgentRequest, Dispatch, SessionCtx, SessionEvent};
use gate::config::{GateConfig, WebConfig};
use gate::login::placement::{End, LoginLink};
use gate::net::web::WebPolicy;
use gate::players::{GateMetrics, MsgGate};
use loginproto::handshake::{self, SessionSecret};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::msg::{Client, Ended, SeenEvent, hello_secret, within};

/// Response flags (codec's `ResponseFlag`), as the tests read them.
pub const FLAG_OK: u8 = 1;
/// A push: `payload ‖ 02 ‖ BE32(seq)`.
pub const FLAG_PUSH: u8 = 2;
/// A kick: `reason ‖ 03 ‖ BE32(0)`.
pub const FLAG_KICK: u8 = 3;
/// A push gap: `04 ‖ BE32(last lost seq)`.
pub const FLAG_PUSH_GAP: u8 = 4;
/// The welcome: `v=1,idle=<ms> ‖ 05 ‖ BE32(last push seq)`.
pub const FLAG_WELCOME: u8 = 5;

/// An agent that pushes and kicks when asked by a request:
///
/// * `push <text>` → pushes `<text>` to the caller's own session, answers
///   the push's sequence number as decimal text (`none` if refused);
/// * `pushall <text>` → pushes `<text>` to every session of the gate,
///   answers how many took it;
/// * `kick <reason>` → kicks the caller's session with `<reason>`;
/// * `logout` → logs the caller out;
/// * anything else is echoed.
///
/// Session events go to a channel.
#[derive(Debug)]
pub struct PushAgent {
    gate: std::sync::OnceLock<MsgGate>,
    events: mpsc::UnboundedSender<SeenEvent>,
}

impl Agent for PushAgent {
    fn request(&self, ctx: &SessionCtx, req: AgentRequest) -> Dispatch {
        let content = req.content;
        let answer = if let Some(text) = content.strip_prefix(b"push ") {
            match ctx.push(Bytes::copy_from_slice(text)) {
                Ok(seq) => Bytes::from(seq.to_string()),
                Err(_) => Bytes::from_static(b"none"),
            }
        } else if let Some(text) = content.strip_prefix(b"pushall ") {
            let n = self
                .gate
                .get()
                .map_or(0, |g| g.push_all(Bytes::copy_from_slice(text)));
            Bytes::from(n.to_string())
        } else if let Some(reason) = content.strip_prefix(b"kick ") {
            ctx.kick(String::from_utf8_lossy(reason));
            content
        } else if &content[..] == b"logout" {
            ctx.logout();
            content
        } else {
            content
        };
        Dispatch::Ready(Ok(answer))
    }

    fn event(&self, ctx: &SessionCtx, event: SessionEvent) {
        let _ = self.events.send(SeenEvent {
            uid: ctx.uid().clone(),
            subid: ctx.subid().clone(),
            event,
        });
    }
}

/// A chat-like agent for the client tests (the `client` shell, scripts
/// and `bench --push-fanout`), answering inline:
///
/// * `join <anything>` → the caller becomes a member; answers `joined`;
/// * `say <text>` → pushes `<text>` to every member (the caller too, if it
///   joined); answers `sent`;
/// * `kick <reason>` → kicks the caller with `<reason>`;
/// * anything else is echoed.
#[derive(Debug, Default)]
pub struct ChatAgent {
    members: Mutex<Vec<SessionCtx>>,
}

impl Agent for ChatAgent {
    fn request(&self, ctx: &SessionCtx, req: AgentRequest) -> Dispatch {
        let content = req.content;
        let answer = if content.starts_with(b"join") {
            let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
            members.retain(|m| m.is_active() && m.uid() != ctx.uid());
            members.push(ctx.clone());
            Bytes::from_static(b"joined")
        } else if let Some(text) = content.strip_prefix(b"say ") {
            let members = self
                .members
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let text = Bytes::copy_from_slice(text);
            for member in members {
                let _ = member.push(text.clone());
            }
            Bytes::from_static(b"sent")
        } else if let Some(reason) = content.strip_prefix(b"kick ") {
            ctx.kick(String::from_utf8_lossy(reason));
            content
        } else {
            content
        };
        Dispatch::Ready(Ok(answer))
    }
}

/// A login link reporting ended sessions on a channel.
#[derive(Debug)]
struct ChannelLogin(mpsc::UnboundedSender<Ended>);

impl LoginLink for ChannelLogin {
    fn session_ended(&self, server: &[u8], uid: &[u8], subid: &[u8], reason: &End) {
        let _ = self.0.send(Ended {
            server: Bytes::copy_from_slice(server),
            uid: Bytes::copy_from_slice(uid),
            subid: Bytes::copy_from_slice(subid),
            reason: reason.clone(),
        });
    }
}

/// A gate on `127.0.0.1:0` with a [`PushAgent`].
#[derive(Debug)]
pub struct PushGate {
    /// The gate.
    pub gate: MsgGate,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it listens for WebSocket clients (see [`PushGate::start_web`]).
    pub ws_addr: Option<SocketAddr>,
    /// Session events seen by the agent.
    pub events: mpsc::UnboundedReceiver<SeenEvent>,
    /// Session ends reported to the login server.
    pub ended: mpsc::UnboundedReceiver<Ended>,
    shutdown: CancellationToken,
    serve: JoinHandle<io::Result<()>>,
}

impl PushGate {
    /// A gate with `cfg` (its `listen` is ignored).
    pub async fn start(cfg: GateConfig) -> PushGate {
        PushGate::start_with(cfg, None).await
    }

    /// A gate with `cfg` that also serves WebSocket clients with the
    /// settings of `web` (its listen addresses are ignored).
    pub async fn start_web(cfg: GateConfig, web: WebConfig) -> PushGate {
        PushGate::start_with(cfg, Some(web)).await
    }

    async fn start_with(cfg: GateConfig, web: Option<WebConfig>) -> PushGate {
        let ws = match web {
            Some(web) => {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let policy = WebPolicy::new(&web, Mapping::Packages, 8192);
                Some((listener, policy))
            }
            None => None,
        };
        let ws_addr = ws.as_ref().map(|(l, _)| l.local_addr().expect("addr"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (events_tx, events) = mpsc::unbounded_channel();
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let agent = Arc::new(PushAgent {
            gate: std::sync::OnceLock::new(),
            events: events_tx,
        });
        let gate = MsgGate::new(cfg, agent.clone(), Arc::new(ChannelLogin(ended_tx)));
        let _ = agent.gate.set(gate.clone());
        let shutdown = CancellationToken::new();
        let serve = tokio::spawn({
            let gate = gate.clone();
            let shutdown = shutdown.clone();
            async move { gate.serve_with_web(listener, ws, shutdown).await }
        });
        PushGate {
            gate,
            addr,
            ws_addr,
            events,
            ended,
            shutdown,
            serve,
        }
    }

    /// A gate with the default configuration.
    pub async fn start_default() -> PushGate {
        PushGate::start(GateConfig::default()).await
    }

    /// Logs `uid` in (secret: [`hello_secret`]) and returns its user.
    pub async fn login(&self, uid: &str) -> User {
        let secret = hello_secret();
        let subid = within(
            "login",
            self.gate
                .login(Bytes::copy_from_slice(uid.as_bytes()), secret.clone()),
        )
        .await
        .expect("login accepted");
        let subid = String::from_utf8(subid.to_vec()).expect("decimal subid");
        User {
            username: handshake::username(
                uid.as_bytes(),
                self.gate.name().as_bytes(),
                subid.as_bytes(),
            ),
            uid: uid.to_owned(),
            subid,
            secret,
            addr: self.addr,
        }
    }

    /// Pushes `text` to `uid`.
    pub fn push(&self, uid: &str, text: &str) -> Option<u32> {
        self.gate
            .push(uid.as_bytes(), Bytes::copy_from_slice(text.as_bytes()))
            .ok()
    }

    /// The gate's counters.
    pub fn metrics(&self) -> GateMetrics {
        self.gate.metrics()
    }

    /// Waits for the agent to hear `event` for `uid` (others are skipped).
    pub async fn event(&mut self, uid: &str, event: SessionEvent) {
        let what = format!("{event:?} of {uid}");
        within(&what, async {
            loop {
                let seen = self.events.recv().await.expect("agent alive");
                if seen.uid == uid.as_bytes() && seen.event == event {
                    return;
                }
            }
        })
        .await;
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

/// A logged-in user: what a client needs to handshake.
#[derive(Debug, Clone)]
pub struct User {
    /// The uid.
    pub uid: String,
    /// The subid the gate allocated.
    pub subid: String,
    /// The gate username.
    pub username: Vec<u8>,
    /// The handshake secret.
    pub secret: SessionSecret,
    addr: SocketAddr,
}

impl User {
    /// The handshake payload for `index`, with `ext` after a third `:`.
    pub fn handshake_payload(&self, index: u64, ext: Option<&str>) -> Vec<u8> {
        let index = index.to_string();
        match ext {
            Some(ext) => handshake::sign_with_ext(
                &self.secret,
                &self.username,
                index.as_bytes(),
                ext.as_bytes(),
            ),
            None => handshake::sign(&self.secret, &self.username, index.as_bytes()),
        }
    }

    /// Connects and handshakes with `ext`; returns the client and the
    /// status text.
    pub async fn connect_raw(&self, index: u64, ext: Option<&str>) -> (Client, Vec<u8>) {
        let mut client = Client::connect(self.addr).await;
        client
            .send_package(&self.handshake_payload(index, ext))
            .await;
        let status = client.recv_package().await;
        (client, status)
    }

    /// A plain (skynet) connection, `200 OK` checked.
    pub async fn plain(&self, index: u64) -> Client {
        let (client, status) = self.connect_raw(index, None).await;
        assert_eq!(status, b"200 OK", "plain handshake of {}", self.uid);
        client
    }

    /// An opted-in connection having seen pushes up to `last_push`,
    /// `200 OK` and the welcome checked (the replay, if any, follows).
    pub async fn opted_in(&self, index: u64, last_push: u32) -> Client {
        let ext = Ext::new(last_push).encode();
        let (mut client, status) = self.connect_raw(index, Some(&ext)).await;
        assert_eq!(status, b"200 OK", "opted-in handshake of {}", self.uid);
        recv_welcome(&mut client).await;
        client
    }
}

/// Reads the welcome package; returns its content and the session's last
/// push sequence number.
pub async fn recv_welcome(client: &mut Client) -> (String, u32) {
    let (content, flag, last_push) = client.recv_response().await;
    assert_eq!(
        flag,
        FLAG_WELCOME,
        "expected the welcome, got content {:?}",
        String::from_utf8_lossy(&content)
    );
    let text = String::from_utf8(content).expect("utf-8 welcome");
    assert!(text.starts_with("v=1,idle="), "welcome {text:?}");
    (text, last_push)
}

/// Reads a push package and returns `(payload, seq)`.
pub async fn recv_push(client: &mut Client) -> (String, u32) {
    let (content, flag, seq) = client.recv_response().await;
    assert_eq!(
        flag,
        FLAG_PUSH,
        "expected a push, got flag {flag} content {:?} number {seq}",
        String::from_utf8_lossy(&content)
    );
    (String::from_utf8(content).expect("utf-8 push"), seq)
}

/// Expects the pushes `(text, seq)`, in this order.
pub async fn expect_pushes(client: &mut Client, expected: &[(&str, u32)]) {
    for &(text, seq) in expected {
        assert_eq!(recv_push(client).await, (text.to_owned(), seq));
    }
}

/// Reads a kick package and returns its reason.
pub async fn recv_kick(client: &mut Client) -> String {
    let (content, flag, number) = client.recv_response().await;
    assert_eq!(
        (flag, number),
        (FLAG_KICK, 0),
        "expected a kick, got content {:?}",
        String::from_utf8_lossy(&content)
    );
    String::from_utf8(content).expect("utf-8 reason")
}

/// Sends a request and returns the answer's text (flag 1 checked).
pub async fn call(client: &mut Client, content: &str, number: u32) -> String {
    client.send_request(content.as_bytes(), number).await;
    let (answer, flag, got) = client.recv_response().await;
    assert_eq!((flag, got), (FLAG_OK, number), "response to {content:?}");
    String::from_utf8(answer).expect("utf-8 answer")
}

/// Sends a heartbeat (an empty package) and expects the empty answer.
pub async fn ping(client: &mut Client) {
    client.send(&[0, 0]).await;
    client.expect(&[0, 0]).await;
}
