//! No client can forge a log line: every field a client controls (user,
//! server, token parts, uid, extension field, route, a service's reasons)
//! reaches the log escaped, and every value that would split a `key=value`
//! line is quoted (logfmt). A test binary of its own, because it installs
//! the process's one tracing subscriber (the gate's text formatter), at
//! `debug`, capturing every line the login server, the gate and the
//! backend write while hostile clients and a service send LF, CR, ESC and
//! forged `status=200` text.

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

/// A user name that forges fields on its own line, without any control
/// byte: only quoting stops a `key=value` parser from reading them.
const FORGER: &str = "mallory status=200 reason=\"logged in\" uid=admin";

/// Splits a logfmt line's fields after its message: `key=value` or
/// `key="value with \" and \\ escaped"`. Words without `=` (the level,
/// the target, the message) are skipped.
fn logfmt_fields(line: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return fields;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == ' ' || c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            continue;
        }
        chars.next();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        fields.push((key, value));
    }
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test]
async fn client_controlled_fields_are_escaped_on_every_log_line() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .fmt_fields(gate::logging::Logfmt)
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
    let forged = client_cli::login(
        &login,
        Suite::X25519,
        Credentials::new(FORGER, "sample", "wrong password"),
    )
    .await;
    assert!(forged.is_err());
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
    // The evil fields are there, escaped, on the lines that carry them;
    // a logfmt parser reads each line's fields back as logged: one user,
    // one status, and the status is the real one.
    let escaped = gate::logging::esc(EVIL.as_bytes()).to_string();
    let parsed: Vec<(&str, Vec<(String, String)>)> =
        text.lines().map(|l| (l, logfmt_fields(l))).collect();
    let carrying: Vec<&(&str, Vec<(String, String)>)> = parsed
        .iter()
        .filter(|(_, f)| f.iter().any(|(_, v)| *v == escaped))
        .collect();
    let statuses: Vec<Vec<&str>> = carrying.iter().map(|(_, f)| field(f, "status")).collect();
    assert!(
        statuses.contains(&vec!["401"]),
        "the refused login's line: {text}"
    );
    assert!(statuses.contains(&vec!["403"]), "{text}");
    assert!(statuses.contains(&vec!["200"]), "{text}");
    assert!(
        carrying.iter().any(|(l, _)| l.contains("session ended")),
        "{text}"
    );
    let forger_escaped = gate::logging::esc(FORGER.as_bytes()).to_string();
    let forger: Vec<&(&str, Vec<(String, String)>)> = parsed
        .iter()
        .filter(|(_, f)| field(f, "user") == [forger_escaped.as_str()])
        .collect();
    assert_eq!(forger.len(), 1, "the forger's login line: {text}");
    let (line, fields) = forger[0];
    assert_eq!(field(fields, "status"), ["401"], "{line}");
    assert_eq!(field(fields, "uid"), [""], "{line}");
    assert!(field(fields, "reason")[0].starts_with("denied"), "{line}");
    assert!(
        parsed
            .iter()
            .any(|(l, f)| l.contains("service kicks a user")
                && f.iter().any(|(_, v)| v.contains(&escaped))),
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
