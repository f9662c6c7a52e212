//! The service library against a fake gate: a `TcpListener` on 127.0.0.1:0
//! speaking `proto::framing`, scripted by each test.
//!
//! Synchronisation is by frames (the fake waits for what the service sends)
//! and channels (the handler reports what it is doing); where time matters
//! (heartbeats, dead-gate timeout) the runtime's clock is paused and
//! advances on its own when every task waits.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use proto::backend::{
    AuthRequest, GateFrame, LinkChallenge, Ping, RefuseReason, Register, RegisterAck,
    RegisterRefused, Request, ServiceFrame, SessionEvent as ProtoSessionEvent, SessionEventKind,
    auth_reply, push, response, service_frame::Kind,
};
use proto::framing::GateCodec;
use proto::link_auth::{self, Proof};
use proto::{PROTOCOL_VERSION, VersionMismatch};
use service::{
    AuthDecision, Builder, CancellationToken, Context, Handler, LinkSecret, SendError, Service,
    ServiceError, SessionEvent, SessionKind,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

/// Upper bound for any single wait, so a broken test fails instead of
/// hanging. Virtual in the paused-clock tests, so it must exceed their
/// heartbeat timeouts.
const PATIENCE: Duration = Duration::from_secs(120);

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

struct FakeGate {
    listener: TcpListener,
}

impl FakeGate {
    async fn bind() -> Self {
        FakeGate {
            listener: TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the fake gate"),
        }
    }

    fn addr(&self) -> String {
        self.listener.local_addr().expect("local addr").to_string()
    }

    /// Accepts a link and sends the challenge, as a gate does.
    async fn accept(&self) -> Link {
        let (stream, _) = within("a connection", self.listener.accept())
            .await
            .expect("accept");
        let mut link = Link {
            framed: Framed::new(stream, GateCodec::new()),
            service_nonce: Bytes::new(),
        };
        link.send(LinkChallenge {
            gate_nonce: Bytes::from_static(&GATE_NONCE),
        })
        .await;
        link
    }

    /// Accepts, expects a registration, acknowledges it.
    async fn accept_registered(&self) -> (Link, Register) {
        let mut link = self.accept().await;
        let register = link.expect_register().await;
        link.ack().await;
        (link, register)
    }
}

struct Link {
    framed: Framed<TcpStream, GateCodec>,
    /// The service's nonce, from its registration.
    service_nonce: Bytes,
}

/// The link secret of these tests.
fn secret() -> LinkSecret {
    LinkSecret::new(b"fake gate secret, 32 bytes long!".to_vec()).expect("long enough")
}

/// The fake gate's challenge.
const GATE_NONCE: [u8; 32] = [7; 32];

impl Link {
    /// The next frame, `None` once the service closed the link.
    async fn recv(&mut self) -> Option<ServiceFrame> {
        within("a frame", self.framed.next())
            .await
            .map(|frame| frame.expect("a well-formed frame"))
    }

    /// The next frame's kind that is not a heartbeat.
    async fn recv_kind(&mut self) -> Kind {
        loop {
            match self.recv().await.expect("link closed").kind {
                Some(Kind::Ping(_) | Kind::Pong(_)) => continue,
                Some(kind) => return kind,
                None => panic!("frame without a kind"),
            }
        }
    }

    async fn send(&mut self, frame: impl Into<GateFrame>) {
        self.framed
            .send(frame.into())
            .await
            .expect("send to the service");
    }

    /// The registration, whose proof of the link secret must verify.
    async fn expect_register(&mut self) -> Register {
        match self.recv_kind().await {
            Kind::Register(register) => {
                let proved = link_auth::verify(
                    secret().bytes(),
                    &GATE_NONCE,
                    &register.service_nonce,
                    Proof::Service {
                        service: &register.service,
                        instance: &register.instance_id,
                    },
                    &register.proof,
                );
                assert!(proved, "the service's proof does not verify");
                self.service_nonce = register.service_nonce.clone();
                register
            }
            other => panic!("expected a registration, got {other:?}"),
        }
    }

    async fn ack(&mut self) {
        let proof = link_auth::gate_proof(secret().bytes(), &GATE_NONCE, &self.service_nonce);
        self.send(RegisterAck {
            protocol_version: PROTOCOL_VERSION,
            gate_name: "sample".into(),
            link_id: 1,
            heartbeat_interval_ms: 0,
            max_frame_len: 0,
            proof: proof.into(),
        })
        .await;
    }

    async fn request(&mut self, id: u64, route: &str, payload: &'static [u8]) {
        self.send(Request {
            request_id: id,
            uid: Bytes::from_static(b"hello"),
            subid: Bytes::from_static(b"1"),
            route: route.into(),
            payload: Bytes::from_static(payload),
            deadline_ms: 5000,
        })
        .await;
    }

    /// The next response: `(request id, Ok(body) | Err(reason))`.
    async fn response(&mut self) -> (u64, Result<Bytes, String>) {
        match self.recv_kind().await {
            Kind::Response(resp) => match resp.result {
                Some(response::Result::Ok(body)) => (resp.request_id, Ok(body)),
                Some(response::Result::Error(why)) => (resp.request_id, Err(why)),
                None => panic!("response without a result"),
            },
            other => panic!("expected a response, got {other:?}"),
        }
    }

    /// A ping round trip: once it returns, every frame sent before was
    /// dispatched by the service (and the link is published to handles).
    async fn sync(&mut self, nonce: u64) {
        self.send(Ping {
            nonce,
            sent_at_ms: 0,
        })
        .await;
        loop {
            match self.recv().await.expect("link closed").kind {
                Some(Kind::Pong(pong)) if pong.nonce == nonce => return,
                Some(Kind::Ping(_)) => continue,
                other => panic!("expected the pong, got {other:?}"),
            }
        }
    }
}

/// The handler every test uses; routes pick a behaviour.
#[derive(Default)]
struct TestHandler {
    /// Slow requests wait for this.
    release: Notify,
    /// Reports "started <id>" for slow requests, and session events.
    log: Option<mpsc::UnboundedSender<String>>,
}

impl TestHandler {
    fn note(&self, what: String) {
        if let Some(log) = &self.log {
            let _ = log.send(what);
        }
    }
}

impl Handler for TestHandler {
    async fn request(&self, ctx: Context, req: service::Request) -> Result<Bytes, String> {
        match req.route.as_str() {
            "test.slow" => {
                // Wait-list first, report second: a release sent as soon as
                // the test hears "started" cannot be missed.
                let released = self.release.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                self.note(format!("started {}", ctx.request_id()));
                released.await;
                Ok(Bytes::from_static(b"slow"))
            }
            "test.fail" => Err("no such room".into()),
            "test.panic" => panic!("handler bug"),
            "test.big" => Ok(Bytes::from(vec![0u8; 2 << 20])),
            "test.push" => {
                let gate = ctx.gate();
                gate.push(req.uid.clone(), "to you")
                    .await
                    .map_err(|e| e.to_string())?;
                gate.push_many(vec![req.uid.clone(), "other".into()], "to you two")
                    .await
                    .map_err(|e| e.to_string())?;
                ctx.gates()
                    .push_all("to everyone")
                    .await
                    .map_err(|e| e.to_string())?;
                gate.kick(req.uid.clone(), "cheating")
                    .await
                    .map_err(|e| e.to_string())?;
                gate.logout("other").await.map_err(|e| e.to_string())?;
                Ok(Bytes::from_static(b"pushed"))
            }
            _ => Ok(req.payload),
        }
    }

    async fn session(&self, _ctx: Context, event: SessionEvent) {
        self.note(format!(
            "{:?} {}",
            event.kind,
            String::from_utf8_lossy(&event.uid)
        ));
    }

    async fn auth(&self, _ctx: Context, req: service::AuthRequest) -> AuthDecision {
        if req.password.as_ref() == b"password" {
            AuthDecision::Allow(Bytes::from(format!(
                "uid-{}",
                String::from_utf8_lossy(&req.user)
            )))
        } else {
            AuthDecision::Deny("wrong password".into())
        }
    }
}

fn builder(gate: &FakeGate) -> Builder {
    Service::builder("test")
        .gate(gate.addr())
        .link_secret(secret())
        .instance_id("test-1")
        // Quick reconnects keep the reconnect tests short in real time.
        .backoff(Duration::from_millis(1), Duration::from_millis(20))
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServiceError>>,
    handler_log: mpsc::UnboundedReceiver<String>,
    handler: Arc<TestHandler>,
    gates: service::Gates,
}

fn start(builder: Builder) -> Running {
    let (log_tx, handler_log) = mpsc::unbounded_channel();
    let handler = Arc::new(TestHandler {
        release: Notify::new(),
        log: Some(log_tx),
    });
    let service = builder.build(handler.clone()).expect("valid config");
    let gates = service.gates();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(service.run(shutdown.clone()));
    Running {
        shutdown,
        task,
        handler_log,
        handler,
        gates,
    }
}

impl Running {
    async fn log(&mut self) -> String {
        within("the handler", self.handler_log.recv())
            .await
            .expect("handler log closed")
    }

    async fn stop(self) -> Result<(), ServiceError> {
        self.shutdown.cancel();
        within("the service to stop", self.task)
            .await
            .expect("service task")
    }
}

#[tokio::test]
async fn registers_with_name_instance_version_and_capabilities() {
    let gate = FakeGate::bind().await;
    let running = start(
        builder(&gate)
            .routes(["test.echo", "test.slow"])
            .all_session_events(true)
            .max_in_flight(7),
    );
    let (_link, mut register) = gate.accept_registered().await;
    // The proof verified (`expect_register`); the nonce is fresh.
    assert_eq!(register.service_nonce.len(), 32);
    assert_ne!(&register.service_nonce[..], &GATE_NONCE[..]);
    register.service_nonce = Bytes::new();
    register.proof = Bytes::new();
    assert_eq!(
        register,
        Register {
            protocol_version: PROTOCOL_VERSION,
            service: "test".into(),
            instance_id: "test-1".into(),
            routes: vec!["test.echo".into(), "test.slow".into()],
            all_session_events: true,
            max_in_flight: 7,
            service_nonce: Bytes::new(),
            proof: Bytes::new(),
        }
    );
    running.stop().await.unwrap();
}

/// A gate that cannot prove the link secret is not served: the service
/// drops the link before handling anything and tries again.
#[tokio::test]
async fn a_gate_without_the_secret_is_not_served() {
    let gate = FakeGate::bind().await;
    let running = start(builder(&gate));
    let mut link = gate.accept().await;
    link.expect_register().await;
    link.send(RegisterAck {
        protocol_version: PROTOCOL_VERSION,
        gate_name: "impostor".into(),
        link_id: 1,
        proof: Bytes::from_static(&[0; 32]),
        ..RegisterAck::default()
    })
    .await;
    link.request(1, "", b"echo").await;
    assert!(link.recv().await.is_none(), "the service closed the link");
    // It reconnects and registers again (with a fresh nonce).
    let mut again = gate.accept().await;
    again.expect_register().await;
    running.stop().await.unwrap();
}

#[tokio::test]
async fn requests_are_answered_ok_or_error() {
    let gate = FakeGate::bind().await;
    let running = start(builder(&gate));
    let (mut link, _) = gate.accept_registered().await;

    link.request(1, "", b"agent mode payload").await;
    assert_eq!(
        link.response().await,
        (1, Ok(Bytes::from_static(b"agent mode payload")))
    );
    link.request(2, "test.fail", b"").await;
    assert_eq!(link.response().await, (2, Err("no such room".into())));
    // A panicking handler still answers, and the service keeps serving.
    link.request(3, "test.panic", b"").await;
    let (id, answer) = link.response().await;
    assert_eq!(id, 3);
    assert!(answer.unwrap_err().contains("panicked"));
    // Too large for a frame: an error now, not a silent drop.
    link.request(4, "test.big", b"").await;
    let (id, answer) = link.response().await;
    assert_eq!(id, 4);
    assert!(answer.unwrap_err().contains("exceeds the frame limit"));
    link.request(5, "test.echo", b"still here").await;
    assert_eq!(
        link.response().await,
        (5, Ok(Bytes::from_static(b"still here")))
    );

    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_request_does_not_block_others() {
    let gate = FakeGate::bind().await;
    let mut running = start(builder(&gate));
    let (mut link, _) = gate.accept_registered().await;

    link.request(1, "test.slow", b"").await;
    assert_eq!(running.log().await, "started 1");
    for id in 2..12 {
        link.request(id, "test.echo", b"fast").await;
    }
    let mut fast: Vec<u64> = Vec::new();
    for _ in 2..12 {
        let (id, answer) = link.response().await;
        assert_eq!(answer, Ok(Bytes::from_static(b"fast")));
        fast.push(id);
    }
    fast.sort_unstable();
    assert_eq!(fast, (2..12).collect::<Vec<_>>());
    running.handler.release.notify_one();
    assert_eq!(link.response().await, (1, Ok(Bytes::from_static(b"slow"))));

    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_burst_through_a_tiny_send_queue_is_answered_in_full() {
    // A send queue of 2 frames: the answers of one read overflow it, so the
    // service must hold them back and stop reading until its writer has
    // made room, then carry on. Nothing may be lost or answered twice.
    let gate = FakeGate::bind().await;
    let running = start(builder(&gate).configure(|c| c.send_queue = 2));
    let (mut link, _) = gate.accept_registered().await;
    const BURST: u64 = 1000;
    for id in 1..=BURST {
        let route = if id % 100 == 0 { "test.fail" } else { "" };
        link.framed
            .feed(
                Request {
                    request_id: id,
                    uid: Bytes::from_static(b"hello"),
                    subid: Bytes::from_static(b"1"),
                    route: route.into(),
                    payload: Bytes::from(id.to_string()),
                    deadline_ms: 5000,
                }
                .into(),
            )
            .await
            .expect("queue a request");
    }
    link.framed.flush().await.expect("send the burst");
    let mut seen = vec![false; BURST as usize + 1];
    for _ in 1..=BURST {
        let (id, answer) = link.response().await;
        assert!(
            !std::mem::replace(&mut seen[id as usize], true),
            "{id} twice"
        );
        if id % 100 == 0 {
            assert_eq!(answer, Err("no such room".into()));
        } else {
            assert_eq!(answer, Ok(Bytes::from(id.to_string())));
        }
    }
    link.sync(1).await;
    running.stop().await.unwrap();
}

#[tokio::test]
async fn requests_over_the_bound_are_refused_at_once() {
    let gate = FakeGate::bind().await;
    let mut running = start(builder(&gate).max_in_flight(2));
    let (mut link, register) = gate.accept_registered().await;
    assert_eq!(register.max_in_flight, 2);

    link.request(1, "test.slow", b"").await;
    link.request(2, "test.slow", b"").await;
    let mut started = [running.log().await, running.log().await];
    started.sort();
    assert_eq!(started, ["started 1", "started 2"]);
    link.request(3, "test.echo", b"x").await;
    assert_eq!(link.response().await, (3, Err("service overloaded".into())));

    running.handler.release.notify_waiters();
    let mut done = [link.response().await.0, link.response().await.0];
    done.sort_unstable();
    assert_eq!(done, [1, 2]);
    // Permits are back.
    link.request(4, "test.echo", b"x").await;
    assert_eq!(link.response().await, (4, Ok(Bytes::from_static(b"x"))));

    running.stop().await.unwrap();
}

#[tokio::test]
async fn pushes_kicks_and_logouts_reach_the_gate() {
    let gate = FakeGate::bind().await;
    let running = start(builder(&gate));
    // Not connected yet: fail fast, do not queue.
    assert!(matches!(
        running.gates.push("hello", "early").await,
        Err(SendError::NotConnected(_))
    ));
    let (mut link, _) = gate.accept_registered().await;

    // From inside a request, through the context.
    link.request(1, "test.push", b"").await;
    let pushes = [
        (push::Target::User("hello".into()), "to you"),
        (
            push::Target::Users(proto::backend::UserList {
                uids: vec!["hello".into(), "other".into()],
            }),
            "to you two",
        ),
        (
            push::Target::All(proto::backend::AllUsers {}),
            "to everyone",
        ),
    ];
    for (target, payload) in pushes {
        match link.recv_kind().await {
            Kind::Push(p) => {
                assert_eq!(p.target, Some(target));
                assert_eq!(p.payload, payload);
            }
            other => panic!("expected a push, got {other:?}"),
        }
    }
    match link.recv_kind().await {
        Kind::Kick(kick) => {
            assert_eq!(kick.uid, "hello");
            assert_eq!(kick.reason, "cheating");
            assert!(kick.subid.is_empty());
        }
        other => panic!("expected a kick, got {other:?}"),
    }
    match link.recv_kind().await {
        Kind::Logout(logout) => assert_eq!(logout.uid, "other"),
        other => panic!("expected a logout, got {other:?}"),
    }
    assert_eq!(
        link.response().await,
        (1, Ok(Bytes::from_static(b"pushed")))
    );

    // From outside any request, through the service's handle.
    assert_eq!(running.gates.push("hello", "news").await, Ok(1));
    match link.recv_kind().await {
        Kind::Push(p) => assert_eq!(
            p,
            proto::backend::Push::to_user("hello".into(), "news".into())
        ),
        other => panic!("expected a push, got {other:?}"),
    }
    assert_eq!(running.gates.kick("hello", "maintenance").await, Ok(1));
    assert!(matches!(link.recv_kind().await, Kind::Kick(k) if k.reason == "maintenance"));

    running.stop().await.unwrap();
}

#[tokio::test]
async fn session_events_arrive_in_order_and_unknown_frames_are_skipped() {
    let gate = FakeGate::bind().await;
    let mut running = start(builder(&gate).all_session_events(true));
    let (mut link, _) = gate.accept_registered().await;

    let kinds = [
        SessionEventKind::Login,
        SessionEventKind::Away,
        // A kind this library does not know (a newer gate): skipped.
        SessionEventKind::Unspecified,
        SessionEventKind::Back,
        SessionEventKind::Kicked,
    ];
    for kind in kinds {
        link.send(ProtoSessionEvent {
            uid: "hello".into(),
            subid: "1".into(),
            kind: kind as i32,
            reason: String::new(),
        })
        .await;
    }
    // A frame kind from a newer gate: skipped, the link stays up.
    link.send(GateFrame { kind: None }).await;
    for expected in [
        SessionKind::Login,
        SessionKind::Away,
        SessionKind::Back,
        SessionKind::Kicked,
    ] {
        assert_eq!(running.log().await, format!("{expected:?} hello"));
    }
    link.request(1, "", b"alive").await;
    assert_eq!(link.response().await, (1, Ok(Bytes::from_static(b"alive"))));

    running.stop().await.unwrap();
}

#[tokio::test]
async fn auth_requests_are_answered() {
    let gate = FakeGate::bind().await;
    let running = start(
        Service::builder("auth")
            .gate(gate.addr())
            .link_secret(secret()),
    );
    let (mut link, register) = gate.accept_registered().await;
    assert_eq!(register.service, "auth");

    for (id, password) in [(1, "password"), (2, "guess")] {
        link.send(AuthRequest {
            request_id: id,
            user: "alice".into(),
            server: "sample".into(),
            password: Bytes::from(password),
            peer_addr: "127.0.0.1:4000".into(),
            deadline_ms: 1000,
        })
        .await;
        let Kind::AuthReply(reply) = link.recv_kind().await else {
            panic!("expected an auth reply");
        };
        assert_eq!(reply.request_id, id);
        match (id, reply.result) {
            (1, Some(auth_reply::Result::Allow(allow))) => assert_eq!(allow.uid, "uid-alice"),
            (2, Some(auth_reply::Result::Deny(deny))) => assert_eq!(deny.reason, "wrong password"),
            other => panic!("unexpected verdict {other:?}"),
        }
    }
    running.stop().await.unwrap();
}

#[tokio::test]
async fn gate_pings_are_answered() {
    let gate = FakeGate::bind().await;
    let running = start(builder(&gate));
    let (mut link, _) = gate.accept_registered().await;
    link.send(Ping {
        nonce: 42,
        sent_at_ms: 1234,
    })
    .await;
    match link.recv().await.unwrap().kind {
        Some(Kind::Pong(pong)) => {
            assert_eq!((pong.nonce, pong.sent_at_ms), (42, 1234));
        }
        other => panic!("expected a pong, got {other:?}"),
    }
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_gate_that_answers_pings_stays_connected() {
    let gate = FakeGate::bind().await;
    let running = start(builder(&gate).heartbeat(Duration::from_secs(5), Duration::from_secs(15)));
    let (mut link, _) = gate.accept_registered().await;
    // Six pings = 30 s of virtual time, twice the dead-gate timeout.
    for _ in 0..6 {
        match link.recv().await.unwrap().kind {
            Some(Kind::Ping(ping)) => link.send(proto::backend::Pong::answer(&ping)).await,
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    link.request(1, "", b"same link").await;
    assert_eq!(
        link.response().await,
        (1, Ok(Bytes::from_static(b"same link")))
    );
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_silent_gate_is_dropped_and_the_service_reconnects() {
    let gate = FakeGate::bind().await;
    let running = start(builder(&gate).heartbeat(Duration::from_secs(5), Duration::from_secs(15)));
    let (mut link, _) = gate.accept_registered().await;
    let started = tokio::time::Instant::now();
    // The service pings; this gate never answers.
    let mut pings = 0;
    while let Some(frame) = link.recv().await {
        assert!(matches!(frame.kind, Some(Kind::Ping(_))), "{frame:?}");
        pings += 1;
    }
    assert!(pings >= 2, "only {pings} pings before giving up");
    let silent = started.elapsed();
    assert!(
        silent >= Duration::from_secs(15) && silent <= Duration::from_secs(21),
        "dropped after {silent:?}"
    );
    let (_link, register) = gate.accept_registered().await;
    assert_eq!(register.instance_id, "test-1");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn the_gate_closing_makes_the_service_reconnect_and_reregister() {
    let gate = FakeGate::bind().await;
    let running = start(builder(&gate));
    for round in 0..3u64 {
        let (mut link, register) = gate.accept_registered().await;
        assert_eq!(register.instance_id, "test-1");
        link.request(round, "", b"hi").await;
        assert_eq!(
            link.response().await,
            (round, Ok(Bytes::from_static(b"hi")))
        );
        drop(link);
    }
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_service_started_before_its_gate_keeps_trying() {
    // Find a free port, then leave it closed while the service starts.
    let addr = {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        probe.local_addr().unwrap()
    };
    let running = start(
        Service::builder("test")
            .gate(addr.to_string())
            .link_secret(secret())
            .backoff(Duration::from_millis(1), Duration::from_millis(20)),
    );
    let gate = FakeGate {
        listener: TcpListener::bind(addr).await.unwrap(),
    };
    let (mut link, _) = gate.accept_registered().await;
    link.sync(1).await;
    assert_eq!(running.gates.connected(), 1);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn an_incompatible_gate_stops_the_service_with_a_clear_error() {
    let gate = FakeGate::bind().await;
    let running = start(builder(&gate));
    let mut link = gate.accept().await;
    let register = link.expect_register().await;
    // The fake plays a gate of the next major version.
    let gate_version = PROTOCOL_VERSION + 1;
    link.send(RegisterRefused::incompatible(VersionMismatch {
        ours: gate_version,
        theirs: register.protocol_version,
    }))
    .await;
    drop(link);

    // `run` returns (no retry loop) with an error naming both versions.
    let err = within("the service to give up", running.task)
        .await
        .unwrap()
        .unwrap_err();
    match &err {
        ServiceError::IncompatibleVersion {
            gate_version: g,
            service_version: s,
            ..
        } => assert_eq!((*g, *s), (gate_version, PROTOCOL_VERSION)),
        other => panic!("expected IncompatibleVersion, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(
        shown.contains(&format!("speaks protocol version {gate_version}"))
            && shown.contains(&format!("this service speaks {PROTOCOL_VERSION}"))
            && shown.contains("incompatible"),
        "unclear error: {shown}"
    );
}

#[tokio::test]
async fn an_ack_of_another_version_is_refused_by_the_service() {
    let gate = FakeGate::bind().await;
    let running = start(builder(&gate));
    let mut link = gate.accept().await;
    link.expect_register().await;
    link.send(RegisterAck {
        protocol_version: PROTOCOL_VERSION + 1,
        ..RegisterAck::default()
    })
    .await;
    let err = within("the service to give up", running.task)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, ServiceError::IncompatibleVersion { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_temporary_refusal_is_retried() {
    let gate = FakeGate::bind().await;
    let running = start(builder(&gate));
    let mut link = gate.accept().await;
    link.expect_register().await;
    link.send(RegisterRefused {
        reason: RefuseReason::ShuttingDown as i32,
        message: "restarting".into(),
        gate_protocol_version: PROTOCOL_VERSION,
    })
    .await;
    drop(link);
    let (mut link, _) = gate.accept_registered().await;
    link.request(1, "", b"back").await;
    assert_eq!(link.response().await, (1, Ok(Bytes::from_static(b"back"))));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_says_goodbye_and_finishes_in_flight_requests() {
    let gate = FakeGate::bind().await;
    let mut running = start(builder(&gate));
    let (mut link, _) = gate.accept_registered().await;

    link.request(1, "test.slow", b"").await;
    assert_eq!(running.log().await, "started 1");
    running.shutdown.cancel();
    match link.recv_kind().await {
        Kind::Goodbye(goodbye) => assert_eq!(goodbye.reason, "service stopping"),
        other => panic!("expected goodbye, got {other:?}"),
    }
    // New work is refused while draining; the old one still completes.
    link.request(2, "", b"late").await;
    assert_eq!(
        link.response().await,
        (2, Err("service is stopping".into()))
    );
    running.handler.release.notify_one();
    assert_eq!(link.response().await, (1, Ok(Bytes::from_static(b"slow"))));
    // Then a clean close, and `run` returns Ok.
    assert!(link.recv().await.is_none());
    within("the service to stop", running.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.gates.connected(), 0);
}

#[tokio::test]
async fn two_gates_are_served_and_broadcasts_reach_both() {
    let first = FakeGate::bind().await;
    let second = FakeGate::bind().await;
    let running = start(builder(&first).gate(second.addr()));
    let (mut a, _) = first.accept_registered().await;
    let (mut b, _) = second.accept_registered().await;
    a.sync(1).await;
    b.sync(2).await;
    assert_eq!(running.gates.push_all("hi all").await, Ok(2));
    for link in [&mut a, &mut b] {
        assert!(matches!(link.recv_kind().await, Kind::Push(p) if p.payload == "hi all"));
    }
    running.stop().await.unwrap();
}
