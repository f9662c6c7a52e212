//! The sealed gate channel (`docs/PROTOCOL.md` §3.2) end to end, over real
//! sockets, through a man in the middle ([`Relay`]): a passive relay sees
//! no plaintext; a flipped bit, a dropped or a replayed package closes the
//! connection, and after the client's reconnect every request is answered
//! exactly once and nothing runs twice; a relay cannot strip the request
//! for sealing; `require_sealed` refuses what does not ask for it; the
//! same over WebSocket.
//!
//! No sleeps: waits are on bytes and the gate's counters, each with a
//! failure guard.

use std::time::Duration;

use bytes::Bytes;
use client_cli::gate::{Extensions, Inbound};
use client_cli::{ClientError, GateConn, Ticket};
use codec::ResponseFlag;
use codec::status::GateStatus;
use gate::config::{GateConfig, WebConfig};
use integration::msg::{wait_until, within};
use integration::push::PushGate;
use integration::relay::{Relay, Tamper};
use loginproto::handshake::SessionSecret;

/// Logs `uid` in with an x25519 gate secret; the ticket a client needs.
async fn login(g: &PushGate, uid: &str, key: u8) -> Ticket {
    let secret = SessionSecret::X25519([key; 32]);
    let subid = within(
        "login",
        g.gate
            .login(Bytes::copy_from_slice(uid.as_bytes()), secret.clone()),
    )
    .await
    .expect("login accepted");
    Ticket {
        uid: uid.as_bytes().to_vec(),
        server: g.gate.name().as_bytes().to_vec(),
        subid: subid.to_vec(),
        secret,
    }
}

/// A connection object that opts in and asks for sealing (or not).
fn client(addr: impl Into<String>, ticket: Ticket, seal: bool) -> GateConn {
    let mut conn = GateConn::new(addr, ticket, Duration::from_secs(5));
    conn.set_extensions(Extensions::OptIn);
    conn.set_seal(seal);
    conn
}

/// Connects with `index` and reads the welcome.
async fn connect(conn: &mut GateConn, index: u64) {
    within("handshake", conn.connect(index))
        .await
        .expect("handshake accepted");
    match within("the welcome", conn.recv_inbound()).await {
        Ok(Some(Inbound::Welcome { .. })) => {}
        other => panic!("expected the welcome, got {other:?}"),
    }
}

/// Queues requests `numbers` (content `move-<n>`) and sends them at once.
async fn send(conn: &mut GateConn, numbers: &[u32]) {
    for &n in numbers {
        conn.queue(format!("secret-move-{n}").as_bytes(), n)
            .expect("queue");
    }
    within("send", conn.flush()).await.expect("flush");
}

/// Reads responses until the connection ends: the request numbers
/// answered (each checked against its content), and how it ended.
async fn answers_until_closed(conn: &mut GateConn) -> (Vec<u32>, Result<(), ClientError>) {
    let mut got = Vec::new();
    loop {
        match within("a response or the close", conn.recv()).await {
            Ok(Some(r)) => {
                assert_eq!(r.flag, ResponseFlag::OK);
                assert_eq!(r.content, format!("secret-move-{}", r.number).as_bytes());
                got.push(r.number);
            }
            Ok(None) => return (got, Ok(())),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// Reads `n` responses: their request numbers.
async fn answers(conn: &mut GateConn, n: usize) -> Vec<u32> {
    let mut got = Vec::new();
    while got.len() < n {
        let r = within("a response", conn.recv())
            .await
            .expect("recv")
            .expect("open");
        assert_eq!(r.flag, ResponseFlag::OK);
        assert_eq!(r.content, format!("secret-move-{}", r.number).as_bytes());
        got.push(r.number);
    }
    got.sort_unstable();
    got
}

#[tokio::test]
async fn a_passive_relay_sees_only_ciphertext() {
    let g = PushGate::start_default().await;
    for seal in [true, false] {
        let uid = if seal { "sealed" } else { "plain" };
        let tamper = if seal { Tamper::Nothing } else { Tamper::Raw };
        let relay = Relay::start(g.addr, tamper).await;
        let mut conn = client(relay.addr.to_string(), login(&g, uid, 3).await, seal);
        connect(&mut conn, 1).await;
        assert_eq!(conn.is_sealed(), seal);
        send(&mut conn, &[1, 2, 3]).await;
        assert_eq!(answers(&mut conn, 3).await, [1, 2, 3]);
        // A push, and a heartbeat and its answer.
        assert!(g.push(uid, "secret-push-77").is_some());
        match within("the push", conn.recv()).await {
            Ok(Some(r)) => assert_eq!(&r.content[..], b"secret-push-77"),
            other => panic!("expected the push, got {other:?}"),
        }
        within("ping", conn.ping()).await.expect("ping");
        match within("the pong", conn.recv_inbound()).await {
            Ok(Some(Inbound::Pong)) => {}
            other => panic!("expected the pong, got {other:?}"),
        }
        // The same relay sees the plaintext when the channel is not
        // sealed: the check can fail.
        assert_eq!(relay.client_sent(b"secret-move-2"), !seal, "sealed: {seal}");
        assert_eq!(relay.gate_sent(b"secret-move-2"), !seal, "sealed: {seal}");
        assert_eq!(relay.gate_sent(b"secret-push-77"), !seal, "sealed: {seal}");
        assert_eq!(relay.gate_sent(b"idle="), !seal, "the welcome too");
        // The status is plain either way.
        assert!(relay.gate_sent(b"200 OK"));
    }
    assert_eq!(g.metrics().sealed_handshakes, 1);
    g.stop().await;
}

/// A package altered, dropped or replayed on the way to the gate: the gate
/// answers what came before, closes, and runs nothing of it; the client
/// reconnects (fresh keys) and re-sends what was not answered, and every
/// request runs exactly once.
#[tokio::test]
async fn a_tampered_package_closes_the_connection_and_nothing_runs_twice() {
    // (tamper, answered before the close)
    let cases = [
        (Tamper::FlipFromClient(1), vec![1]),
        (Tamper::FlipFromClient(0), vec![]),
        (Tamper::DropFromClient(0), vec![]),
        (Tamper::DropFromClient(1), vec![1]),
        (Tamper::ReplayFromClient(0), vec![1]),
    ];
    let g = PushGate::start_default().await;
    for (i, (tamper, before)) in cases.into_iter().enumerate() {
        let uid = format!("player-{i}");
        let relay = Relay::start(g.addr, tamper).await;
        let ran_before = g.metrics().requests;
        let bad_before = g.metrics().bad_seals;
        let mut conn = client(relay.addr.to_string(), login(&g, &uid, 5).await, true);
        connect(&mut conn, 1).await;
        send(&mut conn, &[1, 2, 3]).await;
        let (got, ended) = answers_until_closed(&mut conn).await;
        assert_eq!(got, before, "{tamper:?}");
        assert!(ended.is_ok(), "{tamper:?}: the gate closes: {ended:?}");
        wait_until("the bad seal to be counted", || {
            g.metrics().bad_seals == bad_before + 1
        })
        .await;
        assert_eq!(
            g.metrics().requests - ran_before,
            before.len() as u64,
            "{tamper:?}: only what was answered ran"
        );
        // Reconnect through the same relay (it passes it untouched) and
        // re-send what was not answered.
        connect(&mut conn, 2).await;
        let rest: Vec<u32> = [1, 2, 3].into_iter().filter(|n| !got.contains(n)).collect();
        send(&mut conn, &rest).await;
        assert_eq!(answers(&mut conn, rest.len()).await, rest);
        assert_eq!(
            g.metrics().requests - ran_before,
            3,
            "{tamper:?}: each request ran once"
        );
        // A replayed request is never run for the replay.
        assert!(!relay.client_sent(b"secret-move"), "sealed throughout");
    }
    g.stop().await;
}

/// A package altered on the way to the client: the client drops the
/// connection; on its reconnect the gate answers the re-sent request from
/// its cache, without running it again.
#[tokio::test]
async fn a_tampered_answer_fails_the_client_and_the_cache_answers_once() {
    let g = PushGate::start_default().await;
    // The gate's sealed package 0 is the welcome, 1 the first answer.
    let relay = Relay::start(g.addr, Tamper::FlipFromGate(1)).await;
    let mut conn = client(relay.addr.to_string(), login(&g, "alice", 9).await, true);
    connect(&mut conn, 1).await;
    send(&mut conn, &[1]).await;
    match within("the altered answer", conn.recv()).await {
        Err(ClientError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        }
        other => panic!("expected a failure to open, got {other:?}"),
    }
    assert!(!conn.is_connected());
    let ran = g.metrics().requests;
    let resends = g.metrics().resends;
    connect(&mut conn, 2).await;
    send(&mut conn, &[1]).await;
    assert_eq!(answers(&mut conn, 1).await, [1]);
    assert_eq!(g.metrics().requests, ran, "not run again");
    assert_eq!(g.metrics().resends, resends + 1, "answered from the cache");
    g.stop().await;
}

#[tokio::test]
async fn the_request_for_sealing_cannot_be_stripped_or_forged() {
    let g = PushGate::start_default().await;
    // A relay that removes `,seal=1`: the MAC no longer verifies.
    let relay = Relay::start(g.addr, Tamper::StripSeal).await;
    let mut conn = client(relay.addr.to_string(), login(&g, "alice", 1).await, true);
    match within("handshake", conn.connect(1)).await {
        Err(ClientError::HandshakeRefused(status)) => {
            assert_eq!(status, GateStatus::UNAUTHORIZED);
        }
        other => panic!("expected 401, got {other:?}"),
    }
    // `seal=1` added to a handshake signed without it: the same.
    let ticket = login(&g, "bob", 2).await;
    let mut conn = GateConn::new(g.addr.to_string(), ticket.clone(), Duration::from_secs(5));
    let unsealed = ticket.handshake(b"1", Some(b"v=1"));
    let mut forged = unsealed.clone();
    forged.extend_from_slice(b",seal=1");
    let status = within("handshake", conn.connect_with(&forged))
        .await
        .expect("answered");
    assert_eq!(status, GateStatus::UNAUTHORIZED);
    // The skynet suite cannot seal: 400, whatever the MAC.
    let secret = SessionSecret::Skynet([4; 8]);
    let subid = within(
        "skynet login",
        g.gate.login(Bytes::from_static(b"dave"), secret.clone()),
    )
    .await
    .expect("login");
    let dave = Ticket {
        uid: b"dave".to_vec(),
        server: g.gate.name().as_bytes().to_vec(),
        subid: subid.to_vec(),
        secret,
    };
    let mut conn = GateConn::new(g.addr.to_string(), dave.clone(), Duration::from_secs(5));
    let payload = dave.handshake(b"1", Some(b"v=1,seal=1"));
    let status = within("handshake", conn.connect_with(&payload))
        .await
        .expect("answered");
    assert_eq!(status, GateStatus::BAD_REQUEST);
    g.stop().await;
}

#[tokio::test]
async fn require_sealed_refuses_every_other_handshake() {
    let g = PushGate::start(GateConfig {
        require_sealed: true,
        ..GateConfig::default()
    })
    .await;
    // Unsealed, opted in or plain: 426, and the index is not used up.
    let ticket = login(&g, "alice", 6).await;
    for ext in [Extensions::OptIn, Extensions::Plain] {
        let mut conn = client(g.addr.to_string(), ticket.clone(), false);
        conn.set_extensions(ext.clone());
        match within("handshake", conn.connect(1)).await {
            Err(ClientError::HandshakeRefused(status)) => {
                assert_eq!(status, GateStatus::SEAL_REQUIRED, "{ext:?}");
            }
            other => panic!("{ext:?}: expected 426, got {other:?}"),
        }
    }
    // A wrong MAC is told 401 first: nothing is learned before the MAC.
    let mut wrong = ticket.clone();
    wrong.secret = SessionSecret::X25519([7; 32]);
    let mut conn = client(g.addr.to_string(), wrong, false);
    match within("handshake", conn.connect(1)).await {
        Err(ClientError::HandshakeRefused(status)) => {
            assert_eq!(status, GateStatus::UNAUTHORIZED);
        }
        other => panic!("expected 401, got {other:?}"),
    }
    // Sealed: served, with index 1 still unused.
    let mut conn = client(g.addr.to_string(), ticket, true);
    connect(&mut conn, 1).await;
    send(&mut conn, &[1]).await;
    assert_eq!(answers(&mut conn, 1).await, [1]);
    let refused = g.metrics().refused_by;
    let at = gate::players::RefusedStatus::ALL
        .iter()
        .position(|s| *s == gate::players::RefusedStatus::SealRequired)
        .expect("a label");
    assert_eq!(refused[at], 2);
    g.stop().await;
}

#[tokio::test]
async fn sealed_over_websocket_with_pushes_and_reconnects() {
    let g = PushGate::start_web(GateConfig::default(), WebConfig::default()).await;
    let ws = format!("ws://{}", g.ws_addr.expect("a WebSocket listener"));
    let mut conn = client(ws, login(&g, "web", 8).await, true);
    for index in 1..=3u64 {
        connect(&mut conn, index).await;
        assert!(conn.is_sealed());
        let numbers: Vec<u32> = (0..20).map(|k| index as u32 * 100 + k).collect();
        send(&mut conn, &numbers).await;
        assert_eq!(answers(&mut conn, numbers.len()).await, numbers);
        // A large one (sealed messages carry 16 more bytes than the
        // package limit's content).
        let big = vec![b'x'; 65_000];
        conn.send(&big, 7).await.expect("send");
        let r = within("the large answer", conn.recv())
            .await
            .expect("recv")
            .expect("open");
        assert_eq!(r.content.len(), big.len());
        let seq = g.push("web", "hello").expect("pushed");
        match within("the push", conn.recv()).await {
            Ok(Some(r)) => assert_eq!((&r.content[..], r.number), (&b"hello"[..], seq)),
            other => panic!("expected the push, got {other:?}"),
        }
        conn.disconnect();
    }
    g.stop().await;
}
