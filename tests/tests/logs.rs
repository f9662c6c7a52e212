//! No client can forge a log line: every field a client controls (user,
//! server, token parts, uid, extension field, route, a service's reasons)
//! reaches the log escaped. A test binary of its own, because it installs
//! the process's one tracing subscriber, at `debug`, capturing every line
//! the login server, the gate and the backend write while hostile clients
//! and a service send LF, CR, ESC and forged `status=200` text.

use std::io::Write;
use std::sync::{Arc, Mutex};

use client_cli::{GateConn, Ticket};
use codec::ResponseFlag;
use gate::Components;
use integration::backend::{BackendGate, Probe, ServiceProcess, config, within};
use integration::login::Server;
use loginproto::login::Suite;
use loginproto::token::Credentials;
use tracing_subscriber::fmt::MakeWriter;

/// Every byte the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// A user name that tries to end its log line, start a forged one and
/// clear the terminal.
const EVIL: &str = "mallory\nINFO login user=admin status=200 reason=logged in\r\x1b[2J";

#[tokio::test]
async fn client_controlled_fields_are_escaped_on_every_log_line() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(captured.clone())
        .init();

    // Login server and gate: a wrong password, then a good one, with the
    // evil name as user and in the server name.
    let server = Server::start(integration::backend::config(), Components::default()).await;
    let login = server.login.to_string();
    let refused = client_cli::login(
        &login,
        Suite::X25519,
        Credentials::new(EVIL, "sample", "wrong password"),
    )
    .await;
    assert!(refused.is_err());
    let unknown_server = client_cli::login(
        &login,
        Suite::Skynet,
        Credentials::new(EVIL, EVIL, "password"),
    )
    .await;
    assert!(unknown_server.is_err());
    let ok = client_cli::login(
        &login,
        Suite::X25519,
        Credentials::new(EVIL, "sample", "password"),
    )
    .await
    .expect("demo auth takes any user");
    // A handshake with a hostile extension field (refused 400), then a good
    // one, a request, and the session's end.
    let ticket = Ticket::new(EVIL.as_bytes(), b"sample", &ok);
    let mut conn = GateConn::new(
        server.gate.to_string(),
        ticket.clone(),
        integration::backend::GUARD,
    );
    conn.set_handshake_ext(Some(b"v=1,\n\x1b[31mx=\r".to_vec()));
    assert!(conn.connect(1).await.is_err());
    let mut conn = GateConn::new(server.gate.to_string(), ticket, integration::backend::GUARD);
    conn.connect(2).await.expect("200 OK");
    conn.send(b"hi", 1).await.expect("send");
    let answer = conn.recv().await.expect("recv").expect("an answer");
    assert_eq!(answer.flag, ResponseFlag::OK);
    drop(conn);
    let mut server = server;
    server.signal_shutdown();
    server.stopped().await.expect("clean shutdown");

    // Backend: a service that fails with an evil reason and kicks with one,
    // and a route-mode request with an evil route.
    let mut cfg = config();
    cfg.backend.route_mode = true;
    let gate = BackendGate::start(cfg).await;
    let (probe, _seen) = Probe::new("agent-1");
    let _agent = ServiceProcess::start(gate.service("agent", "agent-1"), probe);
    gate.instances("agent", 1).await;
    let mut player = gate.player("carol", false).await;
    assert!(player.route("chat\n.say\x1b", b"x").await.is_err());
    assert!(player.route("", b"fail").await.is_err());
    let kick = format!("kick {EVIL}");
    player
        .send(&integration::backend::envelope("", kick.as_bytes()))
        .await;
    within("the kick to close the connection", player.until_closed()).await;
    gate.shutdown().await.expect("clean shutdown");

    let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8 log");
    assert!(!text.contains('\r'), "a raw CR reached the log");
    assert!(!text.contains('\u{1b}'), "a raw ESC reached the log");
    for line in text.lines() {
        assert!(
            !line.trim_start().starts_with("INFO login user=admin"),
            "forged line: {line}"
        );
    }
    // The evil fields are there, escaped, on the lines that carry them.
    let escaped = "mallory\\nINFO login user=admin status=200";
    let carrying: Vec<&str> = text.lines().filter(|l| l.contains(escaped)).collect();
    assert!(
        carrying.iter().any(|l| l.contains("status=401")),
        "the refused login's line: {text}"
    );
    assert!(carrying.iter().any(|l| l.contains("status=403")));
    assert!(carrying.iter().any(|l| l.contains("status=200")));
    assert!(carrying.iter().any(|l| l.contains("session ended")));
    assert!(
        text.lines()
            .any(|l| l.contains("service kicks a user") && l.contains(escaped)),
        "the service's kick reason"
    );
    let unroutable: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request not routable"))
        .collect();
    assert!(
        unroutable.iter().any(|l| l.contains("chat\\")),
        "the route's service, escaped: {unroutable:?}"
    );
}
