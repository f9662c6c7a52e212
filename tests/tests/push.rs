//! End-to-end tests of the gate's extensions over real TCP on
//! `127.0.0.1:0`: the handshake opt-in, server push with the per-user
//! backlog and its replay, the push-gap notice, kick reasons, heartbeat and
//! idle timeout — and that a plain skynet client sees none of it. Then the
//! client side: `client_cli`'s connection tracking pushes across
//! reconnects, scripts expecting pushes, gaps, kicks and pongs, the shell
//! printing them, and `bench --push-fanout`.
//!
//! No sleeps for synchronisation: waits are on bytes, session events,
//! login-link reports or the gate's counters, each with a failure guard.
//! (The idle-timeout test paces its pings with a timer: that is the
//! behaviour under test, not a wait for the gate.)

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use client_cli::bench::{BenchCmd, bench};
use client_cli::gate::{Extensions, Inbound};
use client_cli::script::{Script, run_script};
use client_cli::{GateConn, Ticket, shell};
use codec::package::encode_package;
use gate::agent::SessionEvent;
use gate::config::GateConfig;
use gate::login::placement::End;
use integration::client::session_config;
use integration::login::{GUARD, Server, guard, test_config};
use integration::msg::{Client, wait_until, within};
use integration::push::{
    ChatAgent, FLAG_OK, FLAG_PUSH, FLAG_PUSH_GAP, PushGate, call, expect_pushes, ping, recv_kick,
    recv_push, recv_welcome,
};

/// A request package `content ‖ BE32(number)`.
fn request(content: &[u8], number: u32) -> Vec<u8> {
    let mut payload = content.to_vec();
    payload.extend_from_slice(&number.to_be_bytes());
    let mut out = BytesMut::new();
    encode_package(&payload, &mut out).expect("fits");
    out.to_vec()
}

#[tokio::test]
async fn push_reaches_an_opted_in_client() {
    let g = PushGate::start_default().await;
    let alice = g.login("alice").await;
    let mut c = alice.opted_in(1, 0).await;

    assert_eq!(g.push("alice", "hello"), Some(1));
    assert_eq!(recv_push(&mut c).await, ("hello".to_owned(), 1));
    // Empty payloads are legal pushes.
    assert_eq!(g.push("alice", ""), Some(2));
    assert_eq!(recv_push(&mut c).await, (String::new(), 2));

    // The agent pushes while answering a request: both arrive (the
    // response is written first, the push follows from the outbox).
    c.send_request(b"push from agent", 9).await;
    let mut got = vec![c.recv_response().await, c.recv_response().await];
    got.sort_by_key(|(_, flag, _)| *flag);
    assert_eq!(
        got,
        vec![
            (b"3".to_vec(), FLAG_OK, 9),
            (b"from agent".to_vec(), FLAG_PUSH, 3)
        ]
    );
    c.echo(b"still fine", 10).await;
    assert_eq!(g.push("nobody", "x"), None);
    assert_eq!(g.metrics().pushes, 3);
    g.stop().await;
}

#[tokio::test]
async fn plain_client_never_gets_a_push_byte_and_is_closed_without_a_kick() {
    let mut g = PushGate::start_default().await;
    let bob = g.login("bob").await;
    let mut c = bob.plain(1).await;
    c.echo(b"before", 1).await;
    for (i, text) in ["p1", "p2", "p3"].into_iter().enumerate() {
        assert_eq!(g.push("bob", text), Some(i as u32 + 1));
    }
    // The agent's own push on a request: only the response comes back.
    assert_eq!(call(&mut c, "push p4", 2).await, "4");
    c.echo(b"after", 3).await;

    // Kicked: closed without any byte (read to EOF), as skynet's logout.
    let kick = tokio::spawn({
        let gate = g.gate.clone();
        async move {
            gate.kick(b"bob", b"1", End::Kicked("maintenance".to_owned()))
                .await
        }
    });
    c.expect_closed().await;
    within("kick", kick).await.expect("kick task");
    let ended = g.next_ended().await;
    assert_eq!(
        (ended.uid, ended.reason),
        (
            Bytes::from_static(b"bob"),
            End::Kicked("maintenance".to_owned())
        )
    );
    // The session is gone: the login server was told, the gate says 404.
    let (_, status) = bob.connect_raw(2, None).await;
    assert_eq!(status, b"404 User Not Found");
    g.stop().await;
}

#[tokio::test]
async fn plain_client_heartbeat_closes_as_skynet_does() {
    let g = PushGate::start_default().await;
    let user = g.login("plainping").await;
    let mut c = user.plain(1).await;
    c.echo(b"x", 1).await;
    c.send(&[0, 0]).await;
    c.expect_closed().await;
    // The same user opted in may ping.
    let mut c = user.opted_in(2, 0).await;
    ping(&mut c).await;
    c.echo(b"y", 2).await;
    g.stop().await;
}

#[tokio::test]
async fn backlog_is_replayed_after_reconnect_exactly_once_in_order() {
    let mut g = PushGate::start_default().await;
    let carol = g.login("carol").await;
    // A push before the first connection is kept too.
    assert_eq!(g.push("carol", "early"), Some(1));
    let mut c = carol.opted_in(1, 0).await;
    expect_pushes(&mut c, &[("early", 1)]).await;
    assert_eq!(g.push("carol", "p2"), Some(2));
    expect_pushes(&mut c, &[("p2", 2)]).await;

    drop(c);
    g.event("carol", SessionEvent::Away).await;
    for (i, text) in ["p3", "p4", "p5"].into_iter().enumerate() {
        assert_eq!(g.push("carol", text), Some(i as u32 + 3));
    }

    // Handshake and a request in one write: 200 OK, then the replay, then
    // the response — nothing else, nothing twice.
    let mut c = Client::connect(g.addr).await;
    let mut bytes = BytesMut::new();
    encode_package(&carol.handshake_payload(2, Some("v=1,push=2")), &mut bytes).expect("fits");
    bytes.extend_from_slice(&request(b"after", 7));
    c.send(&bytes).await;
    assert_eq!(c.recv_package().await, b"200 OK");
    // The welcome says where the session's pushes end (and the default
    // idle timeout).
    assert_eq!(recv_welcome(&mut c).await, ("v=1,idle=60000".to_owned(), 5));
    expect_pushes(&mut c, &[("p3", 3), ("p4", 4), ("p5", 5)]).await;
    assert_eq!(c.recv_response().await, (b"after".to_vec(), FLAG_OK, 7));
    assert_eq!(g.push("carol", "p6"), Some(6));
    expect_pushes(&mut c, &[("p6", 6)]).await;
    c.echo(b"nothing else", 8).await;

    // Up to date: nothing is replayed.
    let mut c = carol.opted_in(3, 6).await;
    c.echo(b"first", 9).await;
    // The replay follows the client's claim: from 4, it gets 5 and 6.
    let mut c = carol.opted_in(4, 4).await;
    expect_pushes(&mut c, &[("p5", 5), ("p6", 6)]).await;
    c.echo(b"done", 10).await;
    assert_eq!(g.metrics().push_gaps, 0);
    g.stop().await;
}

#[tokio::test]
async fn too_far_behind_is_told_then_gets_what_remains() {
    let mut g = PushGate::start(GateConfig {
        push_backlog: 4,
        ..GateConfig::default()
    })
    .await;
    let erin = g.login("erin").await;
    let mut c = erin.opted_in(1, 0).await;
    assert_eq!(g.push("erin", "m1"), Some(1));
    expect_pushes(&mut c, &[("m1", 1)]).await;
    drop(c);
    g.event("erin", SessionEvent::Away).await;
    for seq in 2..=10u32 {
        assert_eq!(g.push("erin", &format!("m{seq}")), Some(seq));
    }

    // 2..=6 were dropped: a gap notice for 6, then 7..=10.
    let mut c = erin.opted_in(2, 1).await;
    assert_eq!(c.recv_response().await, (Vec::new(), FLAG_PUSH_GAP, 6));
    expect_pushes(&mut c, &[("m7", 7), ("m8", 8), ("m9", 9), ("m10", 10)]).await;
    c.echo(b"caught up", 1).await;
    assert_eq!(g.metrics().push_gaps, 1);

    // A client claiming a push the session never made is refused (400),
    // as is a malformed extension field; unknown keys are fine.
    for (index, ext) in [(3, "v=1,push=11"), (3, "v=0"), (3, "push=1"), (3, "v=1,,")] {
        let (mut bad, status) = erin.connect_raw(index, Some(ext)).await;
        assert_eq!(status, b"400 Bad Request", "ext {ext:?}");
        bad.expect_closed().await;
    }
    let mut c = erin.opted_in(3, 10).await;
    c.echo(b"still here", 2).await;
    let (mut c, status) = erin.connect_raw(4, Some("v=7,push=10,future=yes")).await;
    assert_eq!(status, b"200 OK");
    assert_eq!(recv_welcome(&mut c).await.1, 10, "served as version 1");
    c.echo(b"newer client", 3).await;
    // An empty ext is a plain handshake.
    let (mut c, status) = erin.connect_raw(5, Some("")).await;
    assert_eq!(status, b"200 OK");
    assert_eq!(g.push("erin", "unseen"), Some(11));
    c.echo(b"plain", 4).await;
    g.stop().await;
}

#[tokio::test]
async fn kick_with_reason_reaches_an_opted_in_client_then_eof() {
    let mut g = PushGate::start_default().await;

    // From the gate API (the login server's and the backends' kick).
    let frank = g.login("frank").await;
    let mut c = frank.opted_in(1, 0).await;
    let kick = tokio::spawn({
        let gate = g.gate.clone();
        let subid = frank.subid.clone();
        async move {
            gate.kick(
                b"frank",
                subid.as_bytes(),
                End::Kicked("maintenance".to_owned()),
            )
            .await;
        }
    });
    assert_eq!(recv_kick(&mut c).await, "maintenance");
    c.expect_closed().await;
    within("kick", kick).await.expect("kick task");
    let ended = g.next_ended().await;
    assert_eq!(
        (ended.uid, ended.subid, ended.reason),
        (
            Bytes::from_static(b"frank"),
            Bytes::from(frank.subid.clone()),
            End::Kicked("maintenance".to_owned())
        )
    );

    // From the agent (SessionCtx::kick): the kick package is the last
    // thing sent, the request's own answer is dropped with the session.
    let george = g.login("george").await;
    let mut c = george.opted_in(1, 0).await;
    c.send_request(b"kick cheating", 1).await;
    assert_eq!(recv_kick(&mut c).await, "cheating");
    c.expect_closed().await;
    assert_eq!(
        g.next_ended().await.reason,
        End::Kicked("cheating".to_owned())
    );

    // A logout and a relogin tell the client why too.
    let henry = g.login("henry").await;
    let mut c = henry.opted_in(1, 0).await;
    c.send_request(b"logout", 1).await;
    assert_eq!(recv_kick(&mut c).await, "logout");
    c.expect_closed().await;
    let ivy = g.login("ivy").await;
    let mut c = ivy.opted_in(1, 0).await;
    let _again = g.login("ivy").await;
    assert_eq!(recv_kick(&mut c).await, "logged in again");
    c.expect_closed().await;
    g.stop().await;
}

#[tokio::test]
async fn shutdown_tells_opted_in_clients() {
    let g = PushGate::start_default().await;
    let user = g.login("june").await;
    let mut c = user.opted_in(1, 0).await;
    c.echo(b"x", 1).await;
    let stop = tokio::spawn(g.stop());
    assert_eq!(recv_kick(&mut c).await, "shutdown");
    c.expect_closed().await;
    within("shutdown", stop).await.expect("stop task");
}

#[tokio::test]
async fn heartbeat_is_answered_in_order() {
    let g = PushGate::start_default().await;
    let kim = g.login("kim").await;
    let mut c = kim.opted_in(1, 0).await;
    ping(&mut c).await;
    // Between two pipelined requests, the pong comes between the answers.
    let mut bytes = request(b"a", 1);
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&request(b"b", 2));
    c.send(&bytes).await;
    assert_eq!(c.recv_response().await, (b"a".to_vec(), FLAG_OK, 1));
    c.expect(&[0, 0]).await;
    assert_eq!(c.recv_response().await, (b"b".to_vec(), FLAG_OK, 2));
    // A 1..3-byte package is still invalid: closed.
    c.send(&[0, 1, 0]).await;
    c.expect_closed().await;
    g.stop().await;
}

/// On tokio's paused clock: the idle deadline and the pings are virtual
/// time; nothing waits on the wall clock.
#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_a_silent_opted_in_connection() {
    const IDLE: Duration = Duration::from_secs(6);
    let mut g = PushGate::start(GateConfig {
        idle_timeout: IDLE,
        ..GateConfig::default()
    })
    .await;
    let silent = g.login("silent").await;
    let pinger = g.login("pinger").await;
    let plain = g.login("plain").await;
    let mut quiet = silent.opted_in(1, 0).await;
    let mut busy = pinger.opted_in(1, 0).await;
    let mut skynet = plain.plain(1).await;

    // The silent one is closed (no package: the session lives on); the
    // one that pings every IDLE/3 stays open well past IDLE.
    let keep_pinging = async {
        let mut tick = tokio::time::interval(IDLE / 3);
        for _ in 0..8 {
            tick.tick().await;
            ping(&mut busy).await;
        }
    };
    tokio::join!(quiet.expect_closed(), keep_pinging);
    g.event("silent", SessionEvent::Away).await;
    assert_eq!(g.metrics().idle_timeouts, 1);
    busy.echo(b"alive", 1).await;
    // Plain connections have no idle timeout by default.
    skynet.echo(b"alive too", 1).await;
    // The silent user reconnects.
    let mut back = silent.opted_in(2, 0).await;
    back.echo(b"back", 1).await;
    g.stop().await;
}

#[tokio::test]
async fn push_all_reaches_100_sessions() {
    let g = PushGate::start_default().await;
    let mut clients = Vec::new();
    for i in 0..100 {
        let user = g.login(&format!("member{i}")).await;
        clients.push(user.opted_in(1, 0).await);
    }
    // One more user, logged in but never connected: it counts, and keeps
    // the push for later.
    let away = g.login("away").await;

    assert_eq!(g.gate.push_all(Bytes::from_static(b"to all")), 101);
    for c in &mut clients {
        expect_pushes(c, &[("to all", 1)]).await;
    }
    // From the agent, the same.
    let first = &mut clients[0];
    first.send_request(b"pushall second", 5).await;
    let mut got = vec![first.recv_response().await, first.recv_response().await];
    got.sort_by_key(|(_, flag, _)| *flag);
    assert_eq!(
        got,
        vec![
            (b"101".to_vec(), FLAG_OK, 5),
            (b"second".to_vec(), FLAG_PUSH, 2)
        ]
    );
    for c in &mut clients[1..] {
        expect_pushes(c, &[("second", 2)]).await;
    }
    let mut late = away.opted_in(1, 0).await;
    expect_pushes(&mut late, &[("to all", 1), ("second", 2)]).await;
    assert_eq!(g.metrics().pushes, 202);
    g.stop().await;
}

#[tokio::test]
async fn oversize_push_is_refused() {
    let g = PushGate::start_default().await;
    let user = g.login("big").await;
    let mut c = user.opted_in(1, 0).await;
    let too_big = Bytes::from(vec![b'x'; 65531]);
    assert!(g.gate.push(b"big", too_big.clone()).is_err());
    assert_eq!(g.gate.push_all(too_big), 0);
    assert_eq!(g.metrics().pushes_refused, 2);
    // The largest push fits exactly one package (65535 bytes of payload).
    let largest = vec![b'y'; 65530];
    assert_eq!(g.gate.push(b"big", Bytes::from(largest.clone())), Ok(1));
    let package = c.recv_package().await;
    assert_eq!(package.len(), 65535);
    assert_eq!(&package[..65530], &largest[..]);
    assert_eq!(&package[65530..], &[FLAG_PUSH, 0, 0, 0, 1]);
    c.echo(b"intact", 1).await;
    g.stop().await;
}

#[tokio::test]
async fn pushes_to_a_client_that_does_not_read_cut_it_and_wait_in_the_backlog() {
    let mut g = PushGate::start(GateConfig {
        send_queue_bytes: 16 * 1024,
        push_backlog: 8,
        push_backlog_bytes: 1 << 20,
        ..GateConfig::default()
    })
    .await;
    let user = g.login("slow").await;
    let c = user.opted_in(1, 0).await;
    let payload = Bytes::from(vec![b'z'; 8 * 1024]);
    let mut last = 0;
    // The socket buffers fill first; then the gate's queue; then the cut.
    while g.metrics().slow_readers_cut == 0 {
        assert!(last < 20_000, "never cut");
        last = g.gate.push(b"slow", payload.clone()).expect("pushed");
        tokio::task::yield_now().await;
    }
    g.event("slow", SessionEvent::Away).await;
    drop(c);
    // The reconnect gets a gap notice, then the last 8 pushes.
    let mut c = user.opted_in(2, 0).await;
    assert_eq!(
        c.recv_response().await,
        (Vec::new(), FLAG_PUSH_GAP, last - 8)
    );
    for seq in last - 7..=last {
        let (content, flag, got) = c.recv_response().await;
        assert_eq!((content.len(), flag, got), (8 * 1024, FLAG_PUSH, seq));
    }
    c.echo(b"recovered", 1).await;
    wait_until("metrics", || g.metrics().slow_readers_cut == 1).await;
    g.stop().await;
}

// ---------------------------------------------------------------------------
// The client side: client_cli's library, scripts, shell and bench.
// ---------------------------------------------------------------------------

/// A login server + gate whose agent is a [`ChatAgent`], with a push
/// backlog of 4.
async fn chat_server() -> Server {
    let mut config = test_config();
    config.gate.push_backlog = 4;
    Server::start(
        config,
        gate::Components {
            agent: Some(Arc::new(ChatAgent::default())),
            ..gate::Components::default()
        },
    )
    .await
}

#[tokio::test]
async fn client_library_tracks_pushes_across_reconnects() {
    let mut g = PushGate::start(GateConfig {
        push_backlog: 4,
        ..GateConfig::default()
    })
    .await;
    let user = g.login("lib").await;
    let ticket = Ticket {
        uid: b"lib".to_vec(),
        server: b"sample".to_vec(),
        subid: user.subid.as_bytes().to_vec(),
        secret: user.secret.clone(),
    };
    let mut conn = GateConn::new(g.addr.to_string(), ticket, GUARD);
    assert_eq!(conn.handshake_ext(), None, "the library starts plain");
    conn.set_extensions(Extensions::OptIn);
    assert_eq!(conn.handshake_ext().as_deref(), Some(&b"v=1,push=0"[..]));
    within("connect", conn.connect(1)).await.expect("200 OK");
    assert!(conn.is_opted_in());

    async fn next(conn: &mut GateConn) -> (Vec<u8>, u8, u32) {
        let r = within("a package", conn.recv())
            .await
            .expect("recv")
            .expect("open");
        (r.content.to_vec(), r.flag.0, r.number)
    }
    g.push("lib", "a");
    g.push("lib", "b");
    assert_eq!(next(&mut conn).await, (b"a".to_vec(), FLAG_PUSH, 1));
    // The welcome came first: the gate speaks the extensions.
    assert_eq!(
        conn.welcome().map(|w| (w.version, w.idle_ms)),
        Some((1, 60_000))
    );
    assert_eq!(next(&mut conn).await, (b"b".to_vec(), FLAG_PUSH, 2));
    assert_eq!(conn.last_push(), 2);
    within("ping", conn.ping()).await.expect("ping");
    assert_eq!(
        within("pong", conn.recv_inbound()).await.expect("recv"),
        Some(Inbound::Pong)
    );

    // Away, two pushes, back: exactly those two.
    conn.disconnect();
    g.event("lib", SessionEvent::Away).await;
    g.push("lib", "c");
    g.push("lib", "d");
    within("reconnect", conn.reconnect()).await.expect("200 OK");
    assert_eq!(next(&mut conn).await, (b"c".to_vec(), FLAG_PUSH, 3));
    assert_eq!(next(&mut conn).await, (b"d".to_vec(), FLAG_PUSH, 4));
    within("send", conn.send(b"x", 1)).await.expect("send");
    assert_eq!(next(&mut conn).await, (b"x".to_vec(), FLAG_OK, 1));

    // Away for eight pushes with a backlog of four: the gap, then 9..=12.
    conn.disconnect();
    g.event("lib", SessionEvent::Away).await;
    for n in 5..=12 {
        g.push("lib", &format!("p{n}"));
    }
    within("reconnect", conn.reconnect()).await.expect("200 OK");
    assert_eq!(next(&mut conn).await, (Vec::new(), FLAG_PUSH_GAP, 8));
    for n in 9..=12u32 {
        assert_eq!(
            next(&mut conn).await,
            (format!("p{n}").into_bytes(), FLAG_PUSH, n)
        );
    }
    assert_eq!(conn.last_push(), 12);

    // Plain again: pushes stay in the backlog, the wire stays skynet's.
    conn.set_extensions(Extensions::Plain);
    within("reconnect", conn.reconnect()).await.expect("200 OK");
    assert!(!conn.is_opted_in());
    assert_eq!(g.push("lib", "unseen"), Some(13));
    within("send", conn.send(b"y", 2)).await.expect("send");
    assert_eq!(next(&mut conn).await, (b"y".to_vec(), FLAG_OK, 2));
    assert!(conn.welcome().is_none(), "no welcome for a plain handshake");
    g.stop().await;
}

#[tokio::test]
async fn client_script_expects_pushes_gaps_kicks_and_pongs() {
    let server = chat_server().await;
    let source = r#"
login
connect
send join
expect joined
repeat 6
  send say m${i}
  expect sent
  expect push m${i}
end
ping
# Claim to have seen nothing: the gate kept only 3..=6.
reconnect ext="v=1,push=0"
expect gap seq=2
expect push seq=3 m2
expect push seq=4 prefix=m
expect push seq=6 regex=^m5$
expect push seq=5 m4
# The tracked count (6) goes with the next handshake: nothing replayed.
reconnect
send say last
expect sent
expect push seq=7 last
send kick bye
expect kick bye
expect closed
"#;
    let script = Script::parse("push.script", source, ".".into()).expect("parses");
    let cfg = session_config(server.login, server.gate, "qa-push");
    let mut out = Vec::new();
    let result = guard("script", run_script(&script, cfg, &mut out, false)).await;
    if let Err(failure) = result {
        panic!(
            "push.script failed:\n{failure}\n--- log ---\n{}",
            out.join("\n")
        );
    }
    let log = out.join("\n");
    assert!(log.contains("ping -> pong"), "{log}");
    assert!(
        log.contains("<- push gap: pushes up to #2 were lost"),
        "{log}"
    );

    // A push that does not come fails with what came instead.
    let source = "connect\nsend join\nexpect joined\nsend say x\nexpect push within=2s y\n";
    let script = Script::parse("wrong.script", source, ".".into()).expect("parses");
    let cfg = session_config(server.login, server.gate, "qa-push-wrong");
    let failure = guard("script", run_script(&script, cfg, &mut Vec::new(), true))
        .await
        .expect_err("the script must fail");
    assert_eq!(failure.expected, "a push with content \"y\"");
    assert!(
        failure.got.starts_with("<- push #1 \"x\""),
        "{}",
        failure.got
    );

    // Plain: the gate closes the connection on a heartbeat, as skynet.
    let source = "connect ext=\"\"\nping within=5s\n";
    let script = Script::parse("plain.script", source, ".".into()).expect("parses");
    let cfg = session_config(server.login, server.gate, "qa-push-plain");
    let failure = guard("script", run_script(&script, cfg, &mut Vec::new(), true))
        .await
        .expect_err("the script must fail");
    assert_eq!(failure.got, "the gate closed the connection");
}

#[tokio::test]
async fn client_shell_prints_pushes_pongs_and_kicks() {
    let server = chat_server().await;
    let cfg = session_config(server.login, server.gate, "qa-push-shell");
    let mut out = Vec::new();
    let session = guard("login", shell::start(cfg, &mut out)).await.unwrap();
    let input = b"join\n:wait\nsay hello\n:wait\n:ping\n:wait\n:timings\nkick bye\n:wait\n";
    let lines = shell::lines_from(&input[..]);
    guard("shell", shell::run_shell(session, lines, &mut out, true)).await;
    let transcript = out.join("\n");
    let expect_in_order = [
        "index=1 -> 200 OK (sealed, opting in, pushes seen up to #0)",
        "<- welcome: extensions v1 on, idle timeout 60.00s, heartbeat every 20.00s; the session's pushes go up to #0",
        "<- s=0 ok \"joined\"",
        "<- s=1 ok \"sent\"",
        // The push may print before or after the ping line; the pong
        // comes after both.
        "<- push #1 \"hello\"",
        "<- pong (",
        "pushes     1 received (last push #1)",
        "<- kicked: \"bye\"",
        "the session is over",
    ];
    let mut from = 0;
    for needle in expect_in_order {
        match transcript[from..].find(needle) {
            Some(at) => from += at + needle.len(),
            None => panic!("{needle:?} missing (in order) from:\n{transcript}"),
        }
    }
    assert!(transcript.contains("-> ping"), "{transcript}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_push_fanout_counts_every_push() {
    let server = chat_server().await;
    let mut cmd = BenchCmd::new(&server.gate.to_string());
    cmd.login = server.login.to_string();
    cmd.user_prefix = "fan-".into();
    cmd.push_fanout = true;
    cmd.fanout_join = "join room".into();
    cmd.conns = 20;
    cmd.depth = 4;
    cmd.requests = Some(200);
    cmd.workers = 2;
    cmd.timeout = GUARD;
    cmd.response_timeout = GUARD;
    let report = guard("bench --push-fanout", bench(&cmd, false))
        .await
        .expect("valid options");
    assert_eq!(report.check(), Ok(()), "{}", report.human());
    assert_eq!(report.mode, "fanout");
    assert_eq!(report.said, 200);
    assert_eq!((report.sent, report.received), (4000, 4000));
    assert_eq!(report.requests, 4000, "no warmup with --requests");
    assert!(report.human().contains("pushes"), "{}", report.human());
    assert_eq!(report.to_json()["said"], 200);
}

/// While a live upgrade has the sessions frozen, a push and a kick are
/// passed on to the new process, not carried out here; when the handoff
/// is rolled back they are carried out here after all, once.
#[tokio::test]
async fn pushes_and_kicks_during_a_handoff_are_passed_on_or_kept() {
    use gate::players::Forward;

    let g = PushGate::start_default().await;
    let alice = g.login("alice").await;
    let mut a = alice.opted_in(1, 0).await;
    let bob = g.login("bob").await;
    let mut b = bob.opted_in(1, 0).await;
    a.echo(b"before", 1).await;
    b.echo(b"before", 1).await;
    let mut prepared = within(
        "the handoff to be prepared",
        g.gate.hand_off_prepare(Duration::from_secs(10)),
    )
    .await
    .expect("prepared");
    assert_eq!(prepared.state.users.len(), 2);
    assert_eq!(prepared.conns.len(), 2, "both connections parked");
    // Frozen: passed on.
    assert_eq!(g.push("alice", "while frozen"), Some(0));
    g.gate
        .kick(
            b"bob",
            bob.subid.as_bytes(),
            End::Kicked("while frozen".into()),
        )
        .await;
    let pushed = prepared.forwarded.try_recv().expect("the push passed on");
    assert_eq!(pushed.what, Forward::Push(Bytes::from("while frozen")));
    let kicked = prepared.forwarded.try_recv().expect("the kick passed on");
    assert_eq!(
        kicked.what,
        Forward::End(End::Kicked("while frozen".into()))
    );
    assert_eq!(
        g.gate.session_stats().online + g.gate.session_stats().away,
        2
    );
    // Called off: both carried out here, once.
    g.gate.hand_off_rollback();
    for f in [pushed, kicked] {
        g.gate.apply_forwarded(&f);
    }
    assert_eq!(recv_push(&mut a).await, ("while frozen".to_owned(), 1));
    a.echo(b"after", 2).await;
    assert_eq!(recv_kick(&mut b).await, "while frozen");
    b.expect_closed().await;
    g.stop().await;
}
