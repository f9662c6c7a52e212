//! End-to-end tests of the WebSocket transport (`docs/PROTOCOL.md` §9)
//! over real sockets on `127.0.0.1:0`: one session model across TCP and
//! WebSocket (index, response cache, push replay, supersede, kick), the
//! limits (handshake deadline, message size and kind, send queue, idle,
//! Origin), and `client` speaking `ws://` for login, shell, scripts and
//! bench.
//!
//! No sleeps: waits are on messages, closes and the gate's counters, each
//! with a failure guard.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use client_cli::bench::{BenchCmd, bench};
use client_cli::gate::Extensions;
use client_cli::script::{load, run_script};
use client_cli::{GateConn, Ticket};
use codec::ext::Ext;
use futures::{SinkExt, StreamExt};
use gate::config::{GateConfig, WebConfig};
use integration::client::{scripts_dir, session_config};
use integration::login::{Server, test_config};
use integration::msg::{wait_until, within};
use integration::push::{FLAG_KICK, FLAG_OK, FLAG_PUSH, FLAG_WELCOME, PushGate, User};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `addr`, with an `Origin` header when given.
async fn ws_connect(addr: SocketAddr, origin: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = Request::builder()
        .uri(format!("ws://{addr}/"))
        .header("Host", addr.to_string())
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", generate_key());
    if let Some(origin) = origin {
        request = request.header("Origin", origin);
    }
    let request = request.body(()).expect("request");
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(ws, _)| ws)
}

/// The operations listener's `/metrics` text.
async fn scrape(ops: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(ops).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: ops\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    within("the scrape", stream.read_to_string(&mut body))
        .await
        .expect("response");
    body
}

/// A request payload `content ‖ BE32(number)`.
fn request(content: &[u8], number: u32) -> Message {
    let mut payload = content.to_vec();
    payload.extend_from_slice(&number.to_be_bytes());
    Message::binary(payload)
}

/// The next data message's payload, split as a response: content, flag,
/// session. Control messages are skipped; a close fails the test.
async fn recv_response(ws: &mut Ws) -> (Vec<u8>, u8, u32) {
    let payload = recv_binary(ws).await;
    assert!(payload.len() >= 5, "short response {payload:?}");
    let (content, tail) = payload.split_at(payload.len() - 5);
    let number = u32::from_be_bytes([tail[1], tail[2], tail[3], tail[4]]);
    (content.to_vec(), tail[0], number)
}

async fn recv_binary(ws: &mut Ws) -> Vec<u8> {
    within("a binary message", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(payload))) => return payload.to_vec(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
    })
    .await
}

/// Reads until the gate closes; returns the close code it sent (`None`
/// when the connection ended without a close frame).
async fn close_code(ws: &mut Ws) -> Option<u16> {
    within("the gate to close", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
}

/// Handshakes `user` over WebSocket with `index` (opted in having seen
/// `last_push`, or plain); checks `200 OK` and, opted in, the welcome.
async fn ws_session(g: &PushGate, user: &User, index: u64, last_push: Option<u32>) -> Ws {
    let mut ws = ws_connect(g.ws_addr.expect("web listener"), None)
        .await
        .expect("upgrade");
    let ext = last_push.map(|p| Ext::new(p).encode());
    ws.send(Message::binary(
        user.handshake_payload(index, ext.as_deref()),
    ))
    .await
    .expect("send handshake");
    assert_eq!(recv_binary(&mut ws).await, b"200 OK");
    if last_push.is_some() {
        let (_, flag, _) = recv_response(&mut ws).await;
        assert_eq!(flag, FLAG_WELCOME);
    }
    ws
}

fn web_any() -> WebConfig {
    WebConfig {
        allowed_origins: vec!["https://game.example".to_owned()],
        ..WebConfig::default()
    }
}

#[tokio::test]
async fn one_session_across_websocket_and_tcp() {
    let g = PushGate::start_web(GateConfig::default(), web_any()).await;
    let alice = g.login("alice").await;

    // WebSocket first: a request, a live push.
    let mut ws = ws_session(&g, &alice, 1, Some(0)).await;
    ws.send(request(b"first", 7)).await.expect("send");
    assert_eq!(
        recv_response(&mut ws).await,
        (b"first".to_vec(), FLAG_OK, 7)
    );
    assert_eq!(g.push("alice", "p1"), Some(1));
    assert_eq!(recv_response(&mut ws).await, (b"p1".to_vec(), FLAG_PUSH, 1));
    // The same package twice in one message is not a thing: each message
    // is one package, and an empty one is the heartbeat.
    ws.send(Message::binary(Bytes::new())).await.expect("ping");
    assert_eq!(recv_binary(&mut ws).await, b"");
    ws.close(None).await.expect("close");
    wait_until("alice away", || g.gate.session_stats().away == 1).await;

    // Away: a push waits in the backlog.
    assert_eq!(g.push("alice", "p2"), Some(2));

    // TCP next, index 2, seen up to push 1: the replay brings p2 once,
    // and a re-send of request 7 is answered from the cache (new content
    // ignored: it does not run again).
    let mut tcp = alice.opted_in(2, 1).await;
    let (content, flag, seq) = tcp.recv_response().await;
    assert_eq!((content.as_slice(), flag, seq), (&b"p2"[..], FLAG_PUSH, 2));
    tcp.send_request(b"changed", 7).await;
    let (content, flag, number) = tcp.recv_response().await;
    assert_eq!(
        (content.as_slice(), flag, number),
        (&b"first"[..], FLAG_OK, 7)
    );
    assert_eq!(g.metrics().resends, 1);

    // A stale index over WebSocket is refused as over TCP, and the TCP
    // connection is untouched.
    let mut stale = ws_connect(g.ws_addr.expect("web"), None).await.expect("ws");
    stale
        .send(Message::binary(alice.handshake_payload(2, None)))
        .await
        .expect("send");
    assert_eq!(recv_binary(&mut stale).await, b"403 Index Expired");
    assert_eq!(close_code(&mut stale).await, Some(1000));
    tcp.send_request(b"still here", 8).await;
    assert_eq!(tcp.recv_response().await.0, b"still here");

    // WebSocket again, index 3: it supersedes the TCP connection.
    let mut ws = ws_session(&g, &alice, 3, Some(2)).await;
    tcp.expect_closed().await;
    ws.send(request(b"third", 9)).await.expect("send");
    assert_eq!(
        recv_response(&mut ws).await,
        (b"third".to_vec(), FLAG_OK, 9)
    );

    // A kick: the kick package, then a normal close.
    ws.send(request(b"kick bye", 10)).await.expect("send");
    let mut kicked = false;
    let code = within("the kick", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(p))) => {
                    if p.len() >= 5 && p[p.len() - 5] == FLAG_KICK {
                        assert_eq!(&p[..p.len() - 5], b"bye");
                        kicked = true;
                    }
                }
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(kicked, "kick package before the close");
    assert_eq!(code, Some(CloseCode::Normal));
    g.stop().await;
}

#[tokio::test]
async fn messages_that_break_the_mapping_close_with_their_code() {
    let g = PushGate::start_web(GateConfig::default(), web_any()).await;
    let addr = g.ws_addr.expect("web");
    let alice = g.login("alice").await;

    // A text message where a package is expected: 1003.
    let mut ws = ws_connect(addr, None).await.expect("ws");
    ws.send(Message::text("hello")).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(1003));

    // Over the package limit: 1009, before any of it is used.
    let mut ws = ws_connect(addr, None).await.expect("ws");
    let _ = ws.send(Message::binary(vec![b'x'; 65536])).await;
    assert_eq!(close_code(&mut ws).await, Some(1009));

    // A request shorter than its request number, after the handshake:
    // 1008, and the session lives on.
    let mut ws = ws_session(&g, &alice, 1, None).await;
    ws.send(Message::binary(&b"abc"[..])).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(1008));
    let mut ws = ws_session(&g, &alice, 2, None).await;
    ws.send(request(b"ok", 1)).await.expect("send");
    assert_eq!(recv_response(&mut ws).await.0, b"ok");
    // Text and oversized messages are counted; the short request is a
    // protocol error of the gate's own, counted as over TCP.
    assert_eq!(g.metrics().websocket_protocol_closes, 2);
    // The closed ones are gone once their close is done.
    wait_until("one WebSocket connection open", || {
        g.metrics().websocket_connections == 1
    })
    .await;

    // A WebSocket ping is answered by a pong.
    ws.send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .expect("ping");
    let pong = within("the pong", async {
        loop {
            if let Some(Ok(Message::Pong(p))) = ws.next().await {
                return p;
            }
        }
    })
    .await;
    assert_eq!(&pong[..], b"hi");
    g.stop().await;
}

/// Control frames are not free: pings beyond the budget between two data
/// messages, or a stream of empty fragments that never completes a
/// message, close the connection with 1008; the session lives on.
#[tokio::test]
async fn control_frame_floods_close_with_policy_violation() {
    use gate_core::connection::MAX_CONTROL_RUN;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let g = PushGate::start_web(GateConfig::default(), web_any()).await;
    let alice = g.login("alice").await;
    let mut ws = ws_session(&g, &alice, 1, Some(0)).await;
    for round in 0..3u32 {
        for _ in 0..MAX_CONTROL_RUN {
            ws.feed(Message::Ping(Bytes::from_static(b"p")))
                .await
                .expect("ping");
        }
        ws.send(request(b"data", round)).await.expect("send");
        assert_eq!(recv_response(&mut ws).await.0, b"data");
    }
    for _ in 0..=MAX_CONTROL_RUN {
        if ws.feed(Message::Ping(Bytes::new())).await.is_err() {
            break;
        }
    }
    let _ = ws.flush().await;
    assert_eq!(close_code(&mut ws).await, Some(1008));

    // Empty continuation frames after a first fragment: no message ever
    // completes; cut once their bytes pass the budget.
    let mut ws = ws_session(&g, &alice, 2, Some(0)).await;
    let first = Frame::message(Bytes::from_static(b"x"), OpCode::Data(Data::Binary), false);
    ws.feed(Message::Frame(first))
        .await
        .expect("first fragment");
    let mut sent = 0usize;
    while sent < gate_core::connection::MAX_WIRE_WITHOUT_DATA * 6 / 5 {
        let empty = Frame::message(Bytes::new(), OpCode::Data(Data::Continue), false);
        if ws.feed(Message::Frame(empty)).await.is_err() {
            break;
        }
        // A masked empty frame: 2 header bytes and a 4-byte mask.
        sent += 6;
        if sent % (64 * 1024) == 0 && ws.flush().await.is_err() {
            break;
        }
    }
    let _ = ws.flush().await;
    assert_eq!(close_code(&mut ws).await, Some(1008));
    assert_eq!(g.metrics().websocket_protocol_closes, 2);
    // The session is still there for a reconnect.
    let mut ws = ws_session(&g, &alice, 3, Some(0)).await;
    ws.send(request(b"after", 9)).await.expect("send");
    assert_eq!(recv_response(&mut ws).await.0, b"after");
    g.stop().await;
}

#[tokio::test]
async fn origins_outside_the_allow_list_get_403() {
    let g = PushGate::start_web(GateConfig::default(), web_any()).await;
    let addr = g.ws_addr.expect("web");
    match ws_connect(addr, Some("https://evil.example")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    ws_connect(addr, Some("https://game.example"))
        .await
        .expect("allowed origin");
    ws_connect(addr, None)
        .await
        .expect("no origin: not a browser");
    g.stop().await;
}

#[tokio::test]
async fn websocket_limits_are_those_of_tcp() {
    let cfg = GateConfig {
        handshake_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        send_queue_bytes: 64 * 1024,
        ..GateConfig::default()
    };
    let g = PushGate::start_web(cfg, web_any()).await;
    let addr = g.ws_addr.expect("web");

    // Upgraded but no handshake package: closed at the deadline.
    let mut ws = ws_connect(addr, None).await.expect("ws");
    assert_eq!(close_code(&mut ws).await, None);
    assert_eq!(g.metrics().handshake_timeouts, 1);
    // Not even the upgrade: closed too.
    let mut silent = TcpStream::connect(addr).await.expect("tcp");
    let mut byte = [0u8; 1];
    let read = within("the deadline", async {
        tokio::io::AsyncReadExt::read(&mut silent, &mut byte).await
    })
    .await;
    assert!(matches!(read, Ok(0) | Err(_)));

    // An opted-in connection that sends nothing is closed at its idle
    // timeout; the session stays (away).
    let alice = g.login("alice").await;
    let mut ws = ws_session(&g, &alice, 1, Some(0)).await;
    let _ = close_code(&mut ws).await;
    wait_until("idle cut", || g.metrics().idle_timeouts == 1).await;
    // Pings are not input: a client that only pings (paced, as the
    // behaviour under test) is cut at its idle timeout too.
    let carol = g.login("carol").await;
    let mut ws = ws_session(&g, &carol, 1, Some(0)).await;
    within("the idle cut despite pings", async {
        loop {
            if ws.send(Message::Ping(vec![1].into())).await.is_err() {
                return;
            }
            // The pong, and nothing else, until the next ping is due.
            let next = tokio::time::Instant::now() + Duration::from_millis(100);
            loop {
                match tokio::time::timeout_at(next, ws.next()).await {
                    Err(_) => break,
                    Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return,
                    Ok(Some(Ok(_))) => {}
                }
            }
        }
    })
    .await;
    wait_until("idle cut", || g.metrics().idle_timeouts == 2).await;

    // A client that does not read: pushes pile up past the send queue
    // bound and the connection is cut; the session stays.
    let bob = g.login("bob").await;
    let ws = ws_session(&g, &bob, 1, Some(0)).await;
    let chunk = "x".repeat(60_000);
    within("the slow reader to be cut", async {
        while g.metrics().slow_readers_cut == 0 {
            let _ = g.push("bob", &chunk);
            tokio::task::yield_now().await;
        }
    })
    .await;
    drop(ws);
    assert_eq!(g.gate.session_stats().online, 0);
    g.stop().await;
}

#[tokio::test]
async fn client_logs_in_and_talks_over_websocket() {
    let server = Server::start_web(test_config()).await;
    let (login, gate) = server.web.expect("web listeners");
    let login = format!("ws://{login}");
    let gate_addr = format!("ws://{gate}");

    let creds = loginproto::token::Credentials::new(b"carol", b"sample", b"password");
    let ok = client_cli::login::login(&login, loginproto::login::Suite::X25519, creds)
        .await
        .expect("login over WebSocket");
    let ticket = Ticket::new(b"carol", b"sample", &ok);
    let mut conn = GateConn::new(gate_addr.clone(), ticket.clone(), Duration::from_secs(5));
    conn.set_extensions(Extensions::OptIn);
    conn.connect(1).await.expect("handshake over WebSocket");
    for number in 0..20u32 {
        conn.queue(format!("echo {number}").as_bytes(), number)
            .expect("queue");
    }
    conn.flush().await.expect("flush");
    let mut seen = Vec::new();
    for _ in 0..20 {
        let response = conn.recv().await.expect("recv").expect("open");
        assert_eq!(
            response.content,
            format!("echo {}", response.number).as_bytes()
        );
        seen.push(response.number);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    assert!(conn.welcome().is_some(), "the welcome came first");
    // The scrape tells the listeners apart.
    let metrics = scrape(server.ops.expect("ops listener")).await;
    assert!(
        metrics.contains("gate_connections_open{listener=\"gate_websocket\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gate_connections_open{listener=\"gate\"} 0\n"),
        "{metrics}"
    );
    // The same login over TCP next: reconnect with index 2 on the TCP
    // gate; a re-send is answered from the cache.
    let mut tcp = GateConn::new(server.gate.to_string(), ticket, Duration::from_secs(5));
    tcp.connect(2).await.expect("TCP handshake");
    tcp.send(b"other", 3).await.expect("send");
    let response = tcp.recv().await.expect("recv").expect("open");
    assert_eq!(
        (&response.content[..], response.number),
        (&b"echo 3"[..], 3)
    );

    // A binary message on the login listener: closed with 1003, no status.
    let mut ws = ws_connect(server.web.expect("web").0, None)
        .await
        .expect("ws");
    let challenge = within("the challenge", ws.next()).await;
    assert!(matches!(challenge, Some(Ok(Message::Text(_)))));
    ws.send(Message::binary(&b"AAAAAAAAAAA="[..]))
        .await
        .expect("send");
    assert_eq!(close_code(&mut ws).await, Some(1003));
    // A line over the login's limit: 1009, no status.
    let mut ws = ws_connect(server.web.expect("web").0, None)
        .await
        .expect("ws");
    let _ = within("the challenge", ws.next()).await;
    let _ = ws.send(Message::text("A".repeat(9000))).await;
    assert_eq!(close_code(&mut ws).await, Some(1009));

    // The load generator over WebSocket, checked answers.
    let mut cmd = BenchCmd::new(&gate_addr);
    cmd.login = login;
    cmd.workers = 2;
    cmd.warmup = Some(Duration::ZERO);
    cmd.conns = 8;
    cmd.depth = 4;
    cmd.requests = Some(2000);
    let report = within("bench over WebSocket", bench(&cmd, false))
        .await
        .expect("bench");
    assert_eq!(report.check(), Ok(()), "{}", report.human());
    assert_eq!((report.sent, report.received), (2000, 2000));
    server.shutdown().await.expect("clean shutdown");
}

/// Every QA script of the repository passes over WebSocket too: login
/// and gate addresses `ws://...`, nothing else changed.
#[tokio::test]
async fn qa_scripts_pass_over_websocket() {
    let server = Server::start_web(test_config()).await;
    let (login, gate) = server.web.expect("web listeners");
    let mut ran = 0;
    for entry in std::fs::read_dir(scripts_dir()).expect("scripts dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "script") {
            continue;
        }
        let name = path
            .file_stem()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let script = load(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut cfg = session_config(login, gate, &format!("web-{name}"));
        cfg.login_addr = format!("ws://{login}");
        cfg.gate_addr = format!("ws://{gate}");
        let mut out = Vec::new();
        let result = within(&name, run_script(&script, cfg, &mut out, false)).await;
        if let Err(failure) = result {
            panic!(
                "{name} failed over WebSocket:\n{failure}\n--- log ---\n{}",
                out.join("\n")
            );
        }
        ran += 1;
    }
    assert!(ran >= 5, "ran {ran} scripts");
    server.shutdown().await.expect("clean shutdown");
}

/// `maxclient` counts TCP and WebSocket connections together.
#[tokio::test]
async fn maxclient_counts_both_listeners() {
    let cfg = GateConfig {
        maxclient: 1,
        ..GateConfig::default()
    };
    let g = PushGate::start_web(cfg, web_any()).await;
    let alice = g.login("alice").await;
    let tcp = alice.plain(1).await;
    assert!(
        ws_connect(g.ws_addr.expect("web"), None).await.is_err(),
        "the WebSocket connection is closed at accept"
    );
    assert_eq!(g.metrics().refused_at_accept, 1);
    drop(tcp);
    wait_until("the TCP connection gone", || g.metrics().connections == 0).await;
    let mut ws = ws_session(&g, &alice, 2, None).await;
    ws.send(request(b"now", 1)).await.expect("send");
    assert_eq!(recv_response(&mut ws).await.0, b"now");
    let mut refused = integration::msg::Client::connect(g.addr).await;
    refused.expect_closed().await;
    assert_eq!(g.metrics().refused_at_accept, 2);
    g.stop().await;
}

/// With `web.tls_cert_file` / `tls_key_file` both WebSocket listeners
/// speak TLS (`wss://`): the login's challenge and the gate's status
/// arrive over it, and a plain `ws://` client gets nowhere.
#[tokio::test]
async fn wss_when_a_certificate_is_configured() {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;

    let dir = integration::scratch::Scratch::new("web-tls");
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write");
    let mut config = test_config();
    config.web.tls_cert_file = Some(cert);
    config.web.tls_key_file = Some(key);
    let server = Server::start_web(config).await;
    let (login, gate) = server.web.expect("web listeners");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("root");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let wss = |addr: SocketAddr| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("127.0.0.1").expect("name");
            let stream = connector.connect(name, tcp).await.expect("TLS handshake");
            tokio_tungstenite::client_async(format!("wss://{addr}/"), stream)
                .await
                .expect("upgrade")
                .0
        }
    };

    let mut dialogue = wss(login).await;
    match within("the challenge", dialogue.next()).await {
        Some(Ok(Message::Text(challenge))) => assert_eq!(challenge.len(), 12),
        other => panic!("expected the challenge, got {other:?}"),
    }
    let mut ws = wss(gate).await;
    ws.send(Message::binary(&b"bm9ib2R5@c2FtcGxl#MQ==:1:AAAA"[..]))
        .await
        .expect("send");
    match within("the status", ws.next()).await {
        Some(Ok(Message::Binary(status))) => assert_eq!(&status[..], b"404 User Not Found"),
        other => panic!("expected a status, got {other:?}"),
    }
    assert!(
        ws_connect(gate, None).await.is_err(),
        "plain ws:// to a wss:// listener"
    );
    // The dialogue ends when its client leaves (not at the shutdown grace).
    drop(dialogue);

    // The client library over wss://, trusting the certificate.
    client_cli::net::trust_ca_file(&dir.join("cert.pem")).expect("trust");
    let creds = loginproto::token::Credentials::new(b"tls-user", b"sample", b"password");
    let ok = client_cli::login::login(
        &format!("wss://{login}"),
        loginproto::login::Suite::X25519,
        creds,
    )
    .await
    .expect("login over wss://");
    let ticket = Ticket::new(b"tls-user", b"sample", &ok);
    let mut conn = GateConn::new(format!("wss://{gate}/"), ticket, Duration::from_secs(5));
    // Opted in, so sealed inside TLS too.
    conn.set_extensions(client_cli::gate::Extensions::OptIn);
    conn.connect(1).await.expect("handshake over wss://");
    assert!(conn.is_sealed());
    conn.send(b"secure echo", 1).await.expect("send");
    let response = conn.recv().await.expect("recv").expect("open");
    assert_eq!(&response.content[..], b"secure echo");
    drop(conn);
    server.shutdown().await.expect("clean shutdown");
}

/// A small input buffer (`web.read_buffer_bytes`) still takes messages up
/// to the package limit, and batches of them.
#[tokio::test]
async fn a_small_read_buffer_takes_large_messages() {
    let web = WebConfig {
        read_buffer_bytes: 256,
        ..web_any()
    };
    let g = PushGate::start_web(GateConfig::default(), web).await;
    let alice = g.login("alice").await;
    let mut ws = ws_session(&g, &alice, 1, None).await;
    let big = vec![b'z'; 65_000];
    for number in 1..=4 {
        ws.feed(request(&big, number)).await.expect("feed");
    }
    ws.flush().await.expect("flush");
    for _ in 1..=4 {
        let (content, flag, _) = recv_response(&mut ws).await;
        assert_eq!((content.len(), flag), (65_000, FLAG_OK));
    }
    g.stop().await;
}

#[tokio::test]
async fn a_websocket_connection_rests_and_wakes_for_a_request_a_push_and_a_ping() {
    let g = PushGate::start_web(GateConfig::default(), web_any()).await;
    let kai = g.login("kai").await;
    let mut ws = ws_session(&g, &kai, 1, Some(0)).await;
    // Nothing behind the handshake: it rests at once.
    wait_until("a rest", || g.metrics().resting_connections == 1).await;
    ws.send(request(b"wake", 1)).await.expect("send");
    assert_eq!(recv_response(&mut ws).await, (b"wake".to_vec(), FLAG_OK, 1));
    assert_eq!(g.metrics().rest_wakes, 1);
    ws.close(None).await.expect("close");
    wait_until("kai away", || g.gate.session_stats().away == 1).await;

    // A new connection rests; a push wakes it, then a ping frame does.
    let mut ws = ws_session(&g, &kai, 2, Some(0)).await;
    wait_until("a rest", || g.metrics().resting_connections == 1).await;
    assert_eq!(g.push("kai", "news"), Some(1));
    assert_eq!(
        recv_response(&mut ws).await,
        (b"news".to_vec(), FLAG_PUSH, 1)
    );
    ws.send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .expect("ping");
    let pong = within("the pong", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(&pong[..], b"hi");
    ws.send(request(b"still here", 2)).await.expect("send");
    assert_eq!(
        recv_response(&mut ws).await,
        (b"still here".to_vec(), FLAG_OK, 2)
    );
    g.stop().await;
}
