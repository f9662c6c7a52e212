//! End-to-end tests of the gate's backend services: a real login server,
//! gate and backend listener on `127.0.0.1:0`, players on `client_cli`'s
//! client library, services built with the `service` crate (each in a
//! runtime of its own, so a test can kill one like a crashed process).
//!
//! Synchronisation is by responses, the probes' channels and the backend's
//! registration watch; timeouts are failure guards, except where a deadline
//! is the behaviour under test (then the test checks it was honoured).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::{LoginStatus, ResponseFlag};
use futures::future::join_all;
use gate::config::AuthSource;
use integration::backend::{
    BackendGate, Probe, RawLink, Seen, ServiceProcess, config, version_shim, within,
};
use integration::msg::wait_until;
use integration::player::Player;
use loginproto::login::Suite;
use proto::PROTOCOL_VERSION;
use proto::backend::{
    GateFrame, Ping, Push, RefuseReason, Register, Response, ServiceFrame, gate_frame::Kind, push,
    response,
};
use service::{Service, ServiceError, SessionKind};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The chat example's handler, compiled from the example's own source.
#[allow(dead_code)]
#[path = "../../service/examples/chat.rs"]
mod chat;

/// The next [`Seen::Holding`] report.
async fn holding(seen: &mut mpsc::UnboundedReceiver<Seen>) -> (String, Bytes) {
    loop {
        match within("a request to reach the service", seen.recv()).await {
            Some(Seen::Holding { instance, uid }) => return (instance, uid),
            Some(Seen::Event { .. }) => {}
            None => panic!("probe gone"),
        }
    }
}

/// The next session event of `uid`: (kind, reason).
async fn event_of(seen: &mut mpsc::UnboundedReceiver<Seen>, uid: &str) -> (SessionKind, String) {
    loop {
        match within("a session event", seen.recv()).await {
            Some(Seen::Event { event, .. }) if event.uid == uid.as_bytes() => {
                return (event.kind, event.reason);
            }
            Some(_) => {}
            None => panic!("probe gone"),
        }
    }
}

#[tokio::test]
async fn route_mode_reaches_two_services_and_refuses_unknown_routes_at_once() {
    let mut config = config();
    config.backend.route_mode = true;
    let gate = BackendGate::start(config).await;
    let _echo = ServiceProcess::start(gate.service("echo", "echo-1"), Probe::new("echo-1").0);
    let _shout = ServiceProcess::start(
        gate.service("shout", "shout-1").routes(["shout.loud"]),
        Probe::new("shout-1").0,
    );
    let _agent = ServiceProcess::start(gate.service("agent", "agent-1"), Probe::new("agent-1").0);
    for service in ["echo", "shout", "agent"] {
        gate.instances(service, 1).await;
    }
    let mut player = gate.player("alice", false).await;

    assert_eq!(
        player.route("echo.say", b"hi").await,
        Ok(Bytes::from("echo-1 echo.say hi"))
    );
    assert_eq!(
        player.route("shout.loud", b"hey").await,
        Ok(Bytes::from("shout-1 shout.loud hey"))
    );
    // An empty route goes to the user's agent, with the body as payload.
    assert_eq!(
        player.route("", b"hello").await,
        Ok(Bytes::from("agent-1  hello"))
    );
    // A service's error answer is an error response.
    assert_eq!(player.route("echo.x", b"fail").await, Err(()));

    // Nothing serves these: error responses at once (the request deadline
    // is a minute; the guard would fail the test long before).
    let unroutable_before = gate.backend.metrics().unroutable;
    assert_eq!(player.route("shout.quiet", b"").await, Err(()));
    assert_eq!(player.route("nobody.home", b"").await, Err(()));
    assert_eq!(player.route("nodot", b"").await, Err(()));
    // Not a route envelope (an unterminated varint).
    assert_eq!(player.call(&[0xff, 0xff]).await, Err(()));
    assert_eq!(gate.backend.metrics().unroutable - unroutable_before, 4);

    // And the connection is still fine.
    assert_eq!(
        player.route("echo.again", b"ok").await,
        Ok(Bytes::from("echo-1 echo.again ok"))
    );
    gate.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn users_stick_to_their_agent_instance_while_it_lives() {
    let gate = BackendGate::start(config()).await;
    let mut services: Vec<Option<ServiceProcess>> = (0..3)
        .map(|i| {
            let id = format!("agent-{i}");
            Some(ServiceProcess::start(
                gate.service("agent", &id),
                Probe::new(&id).0,
            ))
        })
        .collect();
    gate.instances("agent", 3).await;

    let mut players = join_all((0..200).map(|i| gate.player_named(i))).await;
    let first: Vec<String> = join_all(players.iter_mut().map(|p| p.ask("who"))).await;
    let mut spread: HashMap<&str, usize> = HashMap::new();
    for who in &first {
        *spread.entry(who.as_str()).or_default() += 1;
    }
    assert_eq!(spread.len(), 3, "every instance gets users: {spread:?}");
    for (instance, users) in &spread {
        // 200/3 ≈ 67 expected; far from degenerate.
        assert!(*users >= 40, "{instance} got only {users} of 200 users");
    }

    // A new instance joins: nobody moves (the binding is stored).
    let _late = ServiceProcess::start(gate.service("agent", "agent-3"), Probe::new("agent-3").0);
    gate.instances("agent", 4).await;
    for _ in 0..2 {
        let again: Vec<String> = join_all(players.iter_mut().map(|p| p.ask("who"))).await;
        assert_eq!(again, first, "a user changed instance while it lived");
    }

    // agent-0 dies: only its users move, each to a live instance.
    if let Some(dead) = services[0].take() {
        dead.kill();
    }
    gate.instances("agent", 3).await;
    let after: Vec<String> = join_all(players.iter_mut().map(|p| p.ask("who"))).await;
    for (before, now) in first.iter().zip(&after) {
        if before == "agent-0" {
            assert_ne!(now, "agent-0");
        } else {
            assert_eq!(now, before, "a user of a live instance moved");
        }
    }
    drop(services);
    gate.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_an_error_and_the_late_answer_is_dropped() {
    let mut config = config();
    config.backend.request_timeout = Duration::from_millis(300);
    let gate = BackendGate::start(config).await;
    let (probe, mut seen) = Probe::new("agent-1");
    let _agent = ServiceProcess::start(gate.service("agent", "agent-1"), probe.clone());
    gate.instances("agent", 1).await;
    let mut player = gate.player("bob", false).await;

    let started = Instant::now();
    let number = player.send(b"slow").await;
    holding(&mut seen).await;
    let response = player.response(number).await;
    assert_eq!(response.flag, ResponseFlag::ERROR);
    assert!(response.content.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered before the deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(gate.backend.metrics().timed_out, 1);

    // The service answers after all: the gate drops it.
    probe.release();
    let backend = gate.backend.clone();
    wait_until("the late answer", || backend.metrics().late == 1).await;
    // The next package the client gets is the next answer, not the late one.
    assert_eq!(player.ask("who").await, "agent-1");
    gate.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_killed_service_fails_its_requests_at_once_and_a_restart_resumes() {
    // A minute of deadline: an error within the guard proves "at once".
    let gate = BackendGate::start(config()).await;
    let (probe, mut seen) = Probe::new("agent-1");
    let agent = ServiceProcess::start(gate.service("agent", "agent-1"), probe);
    gate.instances("agent", 1).await;
    let mut player = gate.player("carol", false).await;
    assert_eq!(player.ask("who").await, "agent-1");

    let mut numbers = HashSet::new();
    for _ in 0..3 {
        numbers.insert(player.send(b"hang").await);
    }
    for _ in 0..3 {
        holding(&mut seen).await;
    }
    agent.kill();
    let mut failed = HashSet::new();
    for _ in 0..3 {
        let response = player.recv().await.expect("an answer, not a close");
        assert_eq!(response.flag, ResponseFlag::ERROR);
        failed.insert(response.number);
    }
    assert_eq!(failed, numbers);
    assert_eq!(gate.backend.metrics().failed_on_close, 3);

    // No instance now: an error at once, no waiting.
    gate.instances("agent", 0).await;
    assert_eq!(player.call(b"who").await, Err(()));

    // The service comes back (a new process, a new instance id): the user is
    // re-bound on its next request, on the same connection.
    let _restarted =
        ServiceProcess::start(gate.service("agent", "agent-1b"), Probe::new("agent-1b").0);
    gate.instances("agent", 1).await;
    assert_eq!(player.ask("who").await, "agent-1b");
    assert_eq!(player.ask("uid").await, "carol");
    gate.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn credentials_are_checked_by_the_auth_service() {
    let mut config = config();
    config.login.auth = AuthSource::Service;
    config.login.auth_timeout = Duration::from_millis(300);
    let gate = BackendGate::start(config).await;
    let unauthorized = |result: Result<_, client_cli::ClientError>| match result {
        Err(err) => assert_eq!(err.login_status(), Some(LoginStatus::UNAUTHORIZED), "{err}"),
        Ok(_) => panic!("login accepted"),
    };

    // No auth service registered yet: refused.
    unauthorized(gate.player_as("alice", "secret", "uid-alice", false).await);

    let _auth = ServiceProcess::start(gate.service("auth", "auth-1"), Probe::new("auth-1").0);
    let _agent = ServiceProcess::start(gate.service("agent", "agent-1"), Probe::new("agent-1").0);
    gate.instances("auth", 1).await;
    gate.instances("agent", 1).await;

    // Allowed, as the uid the service chose (the handshake is signed for it).
    let mut alice = gate
        .player_as("alice", "secret", "uid-alice", false)
        .await
        .expect("alice allowed");
    assert_eq!(alice.ask("uid").await, "uid-alice");
    // A client that does not know the uid it was given handshakes with the
    // name it logged in with (a skynet-suite one too): the same kind of
    // session, under the uid the service chose. (The new login kicked the
    // first one.)
    for suite in [Suite::X25519, Suite::Skynet] {
        let mut by_name = gate
            .player_with_suite("alice", "secret", "alice", suite)
            .await
            .expect("alice allowed");
        assert_eq!(by_name.ask("uid").await, "uid-alice", "{suite:?}");
    }
    // Allowed with no uid: the user name.
    let mut plain = gate
        .player_as("plain", "secret", "plain", false)
        .await
        .expect("plain allowed");
    assert_eq!(plain.ask("uid").await, "plain");

    // Denied.
    unauthorized(gate.player_as("alice", "guess", "uid-alice", false).await);
    // Never answered: 401 once the deadline passes.
    let started = Instant::now();
    unauthorized(gate.player_as("silent", "secret", "silent", false).await);
    assert!(started.elapsed() >= Duration::from_millis(300));
    gate.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_service_of_another_protocol_version_is_refused_clearly() {
    let gate = BackendGate::start(config()).await;
    let (shim, _shim_task) = version_shim(gate.backend_addr, PROTOCOL_VERSION + 1).await;
    let old = ServiceProcess::start(
        Service::builder("agent")
            .gate(shim.to_string())
            .link_secret(integration::backend::link_secret())
            .instance_id("newer-1"),
        Probe::new("newer-1").0,
    );
    // `run` gives up (no retry loop) with an error naming both versions.
    let err = old.finished().await.expect_err("refused");
    let ServiceError::IncompatibleVersion { message, .. } = &err else {
        panic!("expected IncompatibleVersion, got {err:?}");
    };
    assert_eq!(
        message,
        &format!(
            "service speaks protocol version {}, this gate speaks {PROTOCOL_VERSION}",
            PROTOCOL_VERSION + 1
        )
    );
    assert!(err.to_string().contains("incompatible"), "{err}");
    assert_eq!(gate.backend.metrics().refused, 1);
    assert_eq!(gate.backend.instances("agent"), 0);
    gate.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn registration_rules_heartbeats_replacement_and_goodbye() {
    let gate = BackendGate::start(config()).await;

    // Malformed: refused as invalid (permanent), then closed.
    let mut bad = RawLink::connect(gate.backend_addr).await;
    match bad.register(Register::new("agent", "")).await.kind {
        Some(Kind::RegisterRefused(refused)) => {
            assert_eq!(refused.reason(), RefuseReason::Invalid);
            assert!(refused.reason().is_permanent());
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(bad.recv().await.is_none());

    // Accepted: the ack says who the gate is; pings are answered.
    let mut first = RawLink::connect(gate.backend_addr).await;
    let Some(Kind::RegisterAck(ack)) = first.register(Register::new("agent", "dup")).await.kind
    else {
        panic!("expected an ack");
    };
    assert_eq!(ack.protocol_version, PROTOCOL_VERSION);
    assert_eq!(ack.gate_name, "sample");
    assert!(ack.heartbeat_interval_ms > 0);
    first
        .send(Ping {
            nonce: 7,
            sent_at_ms: 99,
        })
        .await;
    match first.recv().await.and_then(|f| f.kind) {
        Some(Kind::Pong(pong)) => assert_eq!((pong.nonce, pong.sent_at_ms), (7, 99)),
        other => panic!("expected a pong, got {other:?}"),
    }

    // The same instance id again: the newer link replaces the older one.
    let mut second = RawLink::connect(gate.backend_addr).await;
    assert!(matches!(
        second.register(Register::new("agent", "dup")).await.kind,
        Some(Kind::RegisterAck(_))
    ));
    // The older link hears why, then is closed.
    match first.recv().await.and_then(|f| f.kind) {
        Some(Kind::Goodbye(goodbye)) => assert!(goodbye.reason.contains("replaced"), "{goodbye:?}"),
        other => panic!("expected a goodbye, got {other:?}"),
    }
    assert!(first.recv().await.is_none(), "the older link is closed");
    gate.instances("agent", 1).await;

    // Shutdown: a goodbye, then the close.
    let stopping = tokio::spawn(gate.shutdown());
    let mut frames: Vec<GateFrame> = Vec::new();
    while let Some(frame) = second.recv().await {
        frames.push(frame);
    }
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.kind, Some(Kind::Goodbye(g)) if !g.reason.is_empty())),
        "no goodbye in {frames:?}"
    );
    within("the gate to stop", stopping)
        .await
        .expect("join")
        .expect("clean shutdown");
}

#[tokio::test]
async fn session_events_reach_the_bound_instance_and_listeners() {
    let gate = BackendGate::start(config()).await;
    let (agent, mut agent_seen) = Probe::new("agent-1");
    let (watch, mut watch_seen) = Probe::new("watch-1");
    let _agent = ServiceProcess::start(gate.service("agent", "agent-1"), agent);
    let _watch = ServiceProcess::start(
        gate.service("watch", "watch-1").all_session_events(true),
        watch,
    );
    gate.instances("agent", 1).await;
    gate.instances("watch", 1).await;

    let mut player = gate.player("frank", false).await;
    // Away is seen before the reconnect (a reconnect that overtook the
    // old connection's end would take the session over without one).
    player.conn.disconnect();
    let before = [
        (SessionKind::Login, ""),
        (SessionKind::Back, ""),
        (SessionKind::Away, ""),
    ];
    for seen in [&mut agent_seen, &mut watch_seen] {
        for (kind, reason) in before {
            assert_eq!(event_of(seen, "frank").await, (kind, reason.to_owned()));
        }
    }
    within("the reconnect", player.conn.reconnect())
        .await
        .expect("reconnected");
    // The service's logout frame overtakes its answer: the session ends
    // and the connection closes (the answer is dropped with the session).
    player.send(b"logout").await;
    player.until_closed().await;

    let after = [(SessionKind::Back, ""), (SessionKind::Logout, "logout")];
    for seen in [&mut agent_seen, &mut watch_seen] {
        for (kind, reason) in after {
            assert_eq!(event_of(seen, "frank").await, (kind, reason.to_owned()));
        }
    }
    gate.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_kick_from_a_service_closes_the_client_connection() {
    let gate = BackendGate::start(config()).await;
    let (watch, mut watch_seen) = Probe::new("watch-1");
    let _agent = ServiceProcess::start(gate.service("agent", "agent-1"), Probe::new("agent-1").0);
    let _watch = ServiceProcess::start(
        gate.service("watch", "watch-1").all_session_events(true),
        watch,
    );
    gate.instances("agent", 1).await;
    gate.instances("watch", 1).await;

    // A plain skynet client: the connection just closes.
    let mut plain = gate.player("dave", false).await;
    plain.send(b"kick cheating").await;
    let got = plain.until_closed().await;
    assert!(
        got.iter().all(|r| r.flag != ResponseFlag::KICK),
        "a plain client got an extension message: {got:?}"
    );
    loop {
        let (kind, reason) = event_of(&mut watch_seen, "dave").await;
        if kind == SessionKind::Kicked {
            assert_eq!(reason, "cheating");
            break;
        }
    }

    // A client that opted in to the extensions is told the reason first.
    let mut opted = gate.player("erin", true).await;
    opted.send(b"kick afk").await;
    let got = opted.until_closed().await;
    assert!(
        got.iter()
            .any(|r| r.flag == ResponseFlag::KICK && r.content == "afk"),
        "no kick reason in {got:?}"
    );

    // The kicked user can log in again (the login server's table was told).
    let mut again = gate.player("dave", false).await;
    assert_eq!(again.ask("uid").await, "dave");
    gate.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_chat_line_is_pushed_to_all_100_members() {
    let mut config = config();
    config.backend.route_mode = true;
    let gate = BackendGate::start(config).await;
    let _chat = ServiceProcess::start(
        gate.service("chat", "chat-1")
            .routes(["chat.join", "chat.say", "chat.leave"])
            .all_session_events(true),
        chat::Chat::default(),
    );
    gate.instances("chat", 1).await;

    let mut players = join_all((0..100).map(|i| gate.player_opted_in(i))).await;
    for (i, player) in players.iter_mut().enumerate() {
        let joined = player.route("chat.join", b"tavern").await.expect("joined");
        assert_eq!(
            joined,
            Bytes::from(format!("joined tavern ({} members)", i + 1))
        );
    }
    let said = players[0].route("chat.say", b"hello all").await;
    assert_eq!(said, Ok(Bytes::from_static(b"sent")));
    let line = format!("[tavern] {}: hello all", players[0].uid);
    join_all(players.iter_mut().map(|p| p.expect_push(line.as_bytes()))).await;
    assert!(gate.backend.metrics().pushes >= 101);
    gate.shutdown().await.expect("clean shutdown");
}

/// The next request frame the gate sends on `link` (session events and
/// pings skipped).
async fn next_request(link: &mut RawLink) -> proto::backend::Request {
    loop {
        match link.recv().await.and_then(|f| f.kind) {
            Some(Kind::Request(request)) => return request,
            Some(_) => {}
            None => panic!("the gate closed the link"),
        }
    }
}

fn answer(request_id: u64, body: &str) -> ServiceFrame {
    Response {
        request_id,
        result: Some(response::Result::Ok(Bytes::copy_from_slice(
            body.as_bytes(),
        ))),
    }
    .into()
}

fn push_to(uid: &str, payload: &str) -> ServiceFrame {
    Push {
        target: Some(push::Target::User(Bytes::copy_from_slice(uid.as_bytes()))),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
    .into()
}

#[tokio::test]
async fn answers_and_pushes_read_together_reach_the_player_in_the_order_sent() {
    let gate = BackendGate::start(config()).await;
    let mut link = RawLink::connect(gate.backend_addr).await;
    assert!(matches!(
        link.register(Register::new("agent", "raw-1")).await.kind,
        Some(Kind::RegisterAck(_))
    ));
    gate.instances("agent", 1).await;
    let mut player = gate.player_opted_in(0).await;
    let uid = player.uid.clone();
    // Every package the player gets, in order, as text.
    async fn next(player: &mut Player) -> String {
        let package = player.recv().await.expect("a package");
        let kind = if package.flag == ResponseFlag::PUSH {
            "push"
        } else {
            "answer"
        };
        format!("{kind} {}", String::from_utf8_lossy(&package.content))
    }

    // An answer then a push, in one write; then a push then an answer.
    player.send(b"one").await;
    let request = next_request(&mut link).await;
    link.send_together([
        answer(request.request_id, "one"),
        push_to(&uid, "after one"),
    ])
    .await;
    assert_eq!(next(&mut player).await, "answer one");
    assert_eq!(next(&mut player).await, "push after one");
    player.send(b"two").await;
    let request = next_request(&mut link).await;
    link.send_together([
        push_to(&uid, "before two"),
        answer(request.request_id, "two"),
    ])
    .await;
    assert_eq!(next(&mut player).await, "push before two");
    assert_eq!(next(&mut player).await, "answer two");

    // More answers than one batch of them holds, a push in the middle.
    for i in 0..100 {
        player.send(format!("r{i}").as_bytes()).await;
    }
    let mut requests = Vec::new();
    for _ in 0..100 {
        requests.push(next_request(&mut link).await);
    }
    let mut frames = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        assert_eq!(request.payload, format!("r{i}").as_bytes());
        frames.push(answer(request.request_id, &format!("r{i}")));
        if i == 69 {
            frames.push(push_to(&uid, "after r69"));
        }
    }
    link.send_together(frames).await;
    for i in 0..100 {
        assert_eq!(next(&mut player).await, format!("answer r{i}"));
        if i == 69 {
            assert_eq!(next(&mut player).await, "push after r69");
        }
    }
    gate.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn auth_through_a_service_needs_a_backend() {
    let mut config = config();
    config.login.auth = AuthSource::Service;
    let login = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gate = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let result = within(
        "run to refuse",
        gate::run(login, gate, config, std::future::pending()),
    )
    .await;
    assert!(
        matches!(result, Err(gate::RunError::Config(ref why)) if why.contains("backend")),
        "{result:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn silent_links_are_closed() {
    let mut config = config();
    config.backend.register_timeout = Duration::from_millis(2000);
    config.backend.heartbeat_interval = Duration::from_millis(1000);
    config.backend.heartbeat_timeout = Duration::from_millis(3000);
    let gate = BackendGate::start(config).await;

    // Connected, never registers: closed at the registration deadline.
    let started = tokio::time::Instant::now();
    let mut mute = RawLink::connect(gate.backend_addr).await;
    assert!(mute.recv().await.is_none());
    assert!(started.elapsed() >= Duration::from_secs(2));

    // Registered, never answers: pinged while idle, closed once silent for
    // the heartbeat timeout.
    let mut deaf = RawLink::connect(gate.backend_addr).await;
    assert!(matches!(
        deaf.register(Register::new("agent", "deaf-1")).await.kind,
        Some(Kind::RegisterAck(_))
    ));
    let started = tokio::time::Instant::now();
    let mut pings = 0;
    while let Some(frame) = deaf.recv().await {
        assert!(matches!(frame.kind, Some(Kind::Ping(_))), "{frame:?}");
        pings += 1;
    }
    let silent = started.elapsed();
    assert!(pings >= 2, "only {pings} pings");
    assert!(
        silent >= Duration::from_secs(3) && silent < Duration::from_secs(5),
        "closed after {silent:?}"
    );
    gate.instances("agent", 0).await;
    gate.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_instance_at_its_stated_limit_gets_no_more_requests() {
    let gate = BackendGate::start(config()).await;
    let (probe, mut seen) = Probe::new("agent-1");
    let agent = ServiceProcess::start(gate.service("agent", "agent-1").max_in_flight(2), probe);
    gate.instances("agent", 1).await;
    let mut player = gate.player("hank", false).await;

    player.send(b"hang").await;
    player.send(b"hang").await;
    holding(&mut seen).await;
    holding(&mut seen).await;
    // The third is refused by the gate at once (a minute of deadline).
    assert_eq!(player.call(b"who").await, Err(()));
    assert_eq!(gate.backend.metrics().congested, 1);
    assert_eq!(gate.backend.metrics().requests, 2);
    // Gone with its two requests: they fail now, so the shutdown need not
    // wait for them.
    agent.kill();
    gate.shutdown().await.expect("clean shutdown");
}

/// A service handler for the "run at most once" tests: `job-<n>` waits
/// until the test releases all jobs, counts its runs and answers
/// `done-<n>`; it reports each start and each answer on a channel.
#[derive(Debug, Clone)]
struct Jobs {
    runs: std::sync::Arc<std::sync::Mutex<HashMap<String, u32>>>,
    go: tokio::sync::watch::Receiver<bool>,
    started: mpsc::UnboundedSender<String>,
    answered: mpsc::UnboundedSender<String>,
}

impl service::Handler for Jobs {
    async fn request(
        &self,
        _ctx: service::Context,
        req: service::Request,
    ) -> Result<Bytes, String> {
        let text = String::from_utf8_lossy(&req.payload).into_owned();
        *self
            .runs
            .lock()
            .expect("lock")
            .entry(text.clone())
            .or_default() += 1;
        let _ = self.started.send(text.clone());
        let mut go = self.go.clone();
        let _ = go.wait_for(|go| *go).await;
        let _ = self.answered.send(text.clone());
        Ok(Bytes::from(text.replace("job", "done")))
    }
}

/// How the client's first connection ends in [`pipelined_requests_run_once`].
#[derive(Debug, Clone, Copy)]
enum Break {
    /// A reset (SO_LINGER 0): the gate sees an error at once.
    Reset,
    /// A close with FIN: the gate takes it for a half-close, answers what
    /// was asked into a socket nobody reads, and then closes.
    Close,
}

/// The defect of the cache that retired undelivered answers by count: a
/// client pipelines 128 requests to an external service, its connection
/// breaks, they all complete while it is away; it reconnects, sends 20 new
/// requests, then re-sends the 128. Every request runs exactly once and
/// every re-send gets its answer.
async fn pipelined_requests_run_once(how: Break) {
    let gate = BackendGate::start(config()).await;
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (answered_tx, mut answered) = mpsc::unbounded_channel();
    let jobs = Jobs {
        runs: Default::default(),
        go,
        started: started_tx,
        answered: answered_tx,
    };
    let runs = jobs.runs.clone();
    let _service = ServiceProcess::start(gate.service("agent", "agent-1"), jobs);
    gate.instances("agent", 1).await;

    let mut player = gate.player("pipeliner", false).await;
    for n in 1..=128u32 {
        player
            .conn
            .queue(format!("job-{n}").as_bytes(), n)
            .expect("queue");
    }
    within("the pipeline to go out", player.conn.flush())
        .await
        .expect("flush");
    for _ in 0..128 {
        within("a job to start", started.recv())
            .await
            .expect("service");
    }
    let ticket = player.conn.ticket().clone();
    let (stream, _, _) = player.conn.into_parts().expect("connected");
    match how {
        Break::Reset => client_cli::net::Underlying::tcp(&stream)
            .set_zero_linger()
            .expect("linger"),
        Break::Close => {}
    }
    drop(stream);
    go_tx.send(true).expect("release");
    for _ in 0..128 {
        within("a job to answer", answered.recv())
            .await
            .expect("service");
    }

    // Reconnect with index 2 (a new connection of the same login).
    let mut player = gate.reconnect(ticket, "pipeliner", 2).await;
    // 20 new requests first. The service has answered the 128, but those
    // answers may still be on their way to the gate: any that reaches it
    // after this connection is up comes here unasked (PROTOCOL.md §4.1
    // rule 5), in any order with the 20.
    for n in 201..=220u32 {
        player
            .conn
            .send(format!("job-{n}").as_bytes(), n)
            .await
            .expect("send");
    }
    let answers = player.responses(201..=220).await;
    for (n, r) in answers {
        assert_eq!(r.content, format!("done-{n}").as_bytes());
    }
    for (n, r) in player.take_unclaimed() {
        assert!((1..=128).contains(&n), "answer to {n}, never asked");
        assert_eq!(
            (r.flag, r.content.as_ref()),
            (ResponseFlag::OK, format!("done-{n}").as_bytes()),
            "forwarded answer to {n}"
        );
    }
    // Then the re-sends: every one is answered from the cache, once, also
    // those whose answer was forwarded above.
    for n in 1..=128u32 {
        player
            .conn
            .queue(format!("job-{n}").as_bytes(), n)
            .expect("queue");
    }
    within("the re-sends", player.conn.flush())
        .await
        .expect("flush");
    let answers = player.responses(1..=128).await;
    for (n, r) in answers {
        assert_eq!(
            (r.flag, r.content.as_ref()),
            (ResponseFlag::OK, format!("done-{n}").as_bytes()),
            "re-send of {n}"
        );
    }
    let runs = runs.lock().expect("lock").clone();
    assert_eq!(runs.len(), 148);
    for (job, count) in runs {
        assert_eq!(count, 1, "{job} ran {count} times");
    }
    gate.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn requests_completed_after_a_reset_run_once() {
    pipelined_requests_run_once(Break::Reset).await;
}

#[tokio::test]
async fn requests_answered_into_a_closed_connection_run_once() {
    pipelined_requests_run_once(Break::Close).await;
}

/// The half-close defect: a client sends requests, then shuts down its
/// write side; the answers of the external service still reach it, then
/// the gate closes.
#[tokio::test]
async fn a_half_closed_connection_gets_its_answers_then_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let gate = BackendGate::start(config()).await;
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (answered_tx, _answered) = mpsc::unbounded_channel();
    let jobs = Jobs {
        runs: Default::default(),
        go,
        started: started_tx,
        answered: answered_tx,
    };
    let _service = ServiceProcess::start(gate.service("agent", "agent-1"), jobs);
    gate.instances("agent", 1).await;
    let mut player = gate.player("halfway", false).await;
    for n in 1..=5u32 {
        player
            .conn
            .queue(format!("job-{n}").as_bytes(), n)
            .expect("queue");
    }
    within("flush", player.conn.flush()).await.expect("flush");
    for _ in 0..5 {
        within("a job to start", started.recv())
            .await
            .expect("service");
    }
    let (mut stream, rest, _) = player.conn.into_parts().expect("connected");
    assert!(rest.is_empty());
    stream.shutdown().await.expect("shut down the write side");
    go_tx.send(true).expect("release");
    let mut got = Vec::new();
    within("the answers and the close", stream.read_to_end(&mut got))
        .await
        .expect("read");
    let mut buf = bytes::BytesMut::from(&got[..]);
    let mut answers = Vec::new();
    while let Some(payload) =
        tokio_util::codec::Decoder::decode(&mut codec::package::PackageCodec, &mut buf)
            .expect("framing")
    {
        let r = codec::Response::parse(payload).expect("a response");
        answers.push((r.number, r.flag, r.content));
    }
    answers.sort_by_key(|a| a.0);
    let expected: Vec<_> = (1..=5u32)
        .map(|n| (n, ResponseFlag::OK, Bytes::from(format!("done-{n}"))))
        .collect();
    assert_eq!(answers, expected);
    gate.shutdown().await.expect("clean shutdown");
}

/// Every service link proves the deployment's link secret before anything
/// else: a raw link with the wrong secret, or none, is refused
/// (`UNAUTHENTICATED`) and nothing reaches it; a `service`-crate instance
/// with the wrong secret never registers; the right one works.
#[tokio::test]
async fn a_service_without_the_link_secret_is_refused_and_hears_nothing() {
    let gate = BackendGate::start(config()).await;
    let wrong = service::LinkSecret::new(b"not the deployment's secret at all".to_vec())
        .expect("long enough");

    // A raw link: a wrong proof, then no proof at all.
    for proof in ["wrong", "none"] {
        let mut link = RawLink::connect(gate.backend_addr).await;
        let answer = if proof == "wrong" {
            link.register_with(Register::new("agent", "intruder"), &wrong)
                .await
        } else {
            link.send(Register::new("agent", "intruder")).await;
            link.recv().await.expect("an answer")
        };
        let Some(Kind::RegisterRefused(refused)) = answer.kind else {
            panic!("expected a refusal, got {answer:?}");
        };
        assert_eq!(refused.reason(), RefuseReason::Unauthenticated, "{proof}");
        assert!(
            refused.message.contains("link secret"),
            "{}",
            refused.message
        );
        assert!(link.recv().await.is_none(), "closed after the refusal");
    }
    assert_eq!(gate.backend.metrics().refused, 2);

    // A `service` instance with the wrong secret: refused again and again,
    // never an instance, never a request or a session event.
    let (probe, mut seen) = Probe::new("intruder-1");
    let intruder = ServiceProcess::start(
        service::Service::builder("agent")
            .gate(gate.backend_addr.to_string())
            .link_secret(wrong)
            .instance_id("intruder-1")
            .backoff(Duration::from_millis(10), Duration::from_millis(50)),
        probe,
    );
    let backend = gate.backend.clone();
    wait_until("two refusals of the intruder", || {
        backend.metrics().refused >= 4
    })
    .await;
    assert_eq!(gate.backend.instances("agent"), 0);

    // The right secret registers, and only it gets the users.
    let (good, mut good_seen) = Probe::new("agent-1");
    let _agent = ServiceProcess::start(gate.service("agent", "agent-1"), good);
    gate.instances("agent", 1).await;
    let mut player = gate.player("carol", false).await;
    assert_eq!(player.ask("who").await, "agent-1");
    let (kind, _) = event_of(&mut good_seen, "carol").await;
    assert!(matches!(kind, SessionKind::Login | SessionKind::Back));
    assert!(seen.try_recv().is_err(), "the intruder heard nothing");
    intruder.kill();
    gate.shutdown().await.expect("clean shutdown");
}

/// Links that have not proved the secret take slots of a small pending
/// budget of their own, bounded per source address, never the
/// authenticated `max_links`: held idle from a few addresses they fill
/// it (the next is closed at accept, counted by cause), a real service
/// registers as soon as a pending slot is free, and once authenticated it
/// gives its pending slot back; a second service proving the secret past
/// `max_links` is refused as such. Over real sockets from 127.0.0.0/8
/// source addresses.
#[tokio::test]
async fn unauthenticated_links_have_a_small_budget_of_their_own() {
    let mut config = config();
    config.backend.max_pending_links = 4;
    config.backend.max_pending_per_source = 2;
    config.backend.max_links = 1;
    let gate = BackendGate::start(config).await;
    let addr = gate.backend_addr;
    let kept = |host: u8| RawLink::try_connect_from(addr, host);
    let mut held = Vec::new();
    for host in [2, 2] {
        held.push(kept(host).await.expect("a pending link"));
    }
    assert!(
        kept(2).await.is_none(),
        "a third pending link from one address"
    );
    for host in [3, 3] {
        held.push(kept(host).await.expect("a pending link"));
    }
    assert!(kept(4).await.is_none(), "the pending budget is full");
    let refused = |cause: &str| {
        gate.backend
            .refused_links()
            .into_iter()
            .find(|(c, _)| *c == cause)
            .map_or(0, |(_, n)| n)
    };
    assert_eq!((refused("per_source"), refused("pending_full")), (1, 1));

    // One idle link goes: a real service (from 127.0.0.1, retrying) takes
    // its slot, registers, and gives the slot back.
    drop(held.pop());
    let (probe, _seen) = Probe::new("agent-1");
    let _agent = ServiceProcess::start(gate.service("agent", "agent-1"), probe);
    gate.instances("agent", 1).await;
    held.push(
        kept(5)
            .await
            .expect("the service's pending slot was given back"),
    );
    assert!(kept(6).await.is_none(), "four pending links again");

    // A second service with the secret, past max_links = 1 (it retries
    // until the gate has seen the dropped link go).
    drop(held.pop());
    let mut second = within("a pending slot", async {
        loop {
            if let Some(link) = kept(7).await {
                break link;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let answer = second.register(Register::new("agent", "agent-2")).await;
    let Some(Kind::RegisterRefused(refusal)) = answer.kind else {
        panic!("expected a refusal, got {answer:?}");
    };
    assert_eq!(refusal.reason(), RefuseReason::NotAllowed);
    assert!(refusal.message.contains("max_links"), "{}", refusal.message);
    assert_eq!(refused("max_links"), 1);
    gate.instances("agent", 1).await;
    let mut player = gate.player("dave", false).await;
    assert_eq!(player.ask("who").await, "agent-1");
    drop(held);
    gate.shutdown().await.expect("clean shutdown");
}
