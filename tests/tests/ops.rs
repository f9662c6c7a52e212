//! The operations listener over real HTTP: the metrics pass `promtool
//! check metrics` and a real Prometheus server (started by the test,
//! scraping every second) reports through its own query API the numbers
//! the test caused; the admin API with a good, a wrong and no token, bad
//! bodies, a kick and pushes that reach an opted-in client, and a drain
//! that refuses new logins while an established session keeps echoing.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool`);
//! `.ci/run` installs it when missing.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use client_cli::ClientError;
use client_cli::session::{ConnectSpec, Event, LoginOverrides};
use client_cli::{Session, SessionConfig};
use codec::message::ResponseFlag;
use codec::status::{GateStatus, LoginStatus};
use gate::Components;
use integration::client::session_config;
use integration::login::{Server, TempFile, guard, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "an admin token for the tests";

/// A gate with its operations listener on a free port.
async fn start() -> (Server, SocketAddr, TempFile) {
    let token = TempFile::new("admin-token", TOKEN);
    let mut config = test_config();
    config.ops.admin_token_file = Some(token.path.clone());
    let ops = TcpListener::bind("127.0.0.1:0").await.expect("bind ops");
    let addr = ops.local_addr().expect("ops addr");
    let components = Components {
        ops: Some(ops),
        ..Components::default()
    };
    (Server::start(config, components).await, addr, token)
}

/// One HTTP/1.1 exchange (`Connection: close`): the status and the body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = guard("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    request.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    guard("the response", stream.read_to_end(&mut response))
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn player(server: &Server, user: &str) -> Session {
    Session::new(SessionConfig {
        timeout: Duration::from_secs(10),
        ..session_config(server.login, server.gate, user)
    })
}

/// Logs in, connects (opted in), reads the welcome.
async fn online(server: &Server, user: &str) -> Session {
    let mut s = player(server, user);
    s.login(&LoginOverrides::default()).await.expect("login");
    let (status, _) = s.connect(&ConnectSpec::default()).await.expect("handshake");
    assert_eq!(status, GateStatus::OK);
    match guard("the welcome", s.recv()).await {
        Ok(Event::Welcome { .. }) => {}
        other => panic!("expected the welcome, got {other:?}"),
    }
    s
}

/// The next package: (flag, content), or `None` once closed.
async fn next(s: &mut Session) -> Option<(ResponseFlag, Bytes)> {
    loop {
        match guard("a package", s.recv()).await.expect("recv") {
            Event::Message(m) => return Some((m.response.flag, m.response.content)),
            Event::Closed => return None,
            _ => {}
        }
    }
}

async fn echo(s: &mut Session, text: &str) {
    let number = s
        .send(None, Bytes::copy_from_slice(text.as_bytes()))
        .await
        .expect("send");
    loop {
        match next(s).await {
            Some((ResponseFlag::OK, content)) if content == text.as_bytes() => return,
            Some(_) => {}
            None => panic!("closed while waiting for the answer to request {number}"),
        }
    }
}

/// The value of the sample `name` (with labels, exactly as written) in a
/// scrape.
fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// With an accounts file: the hashing pool's numbers (workers, memory
/// held, nothing queued afterwards) and logins throttled by reason, in a
/// scrape that passes promtool.
#[tokio::test]
async fn the_hashing_pool_and_the_throttle_are_in_the_metrics() {
    let alice = gate::login::auth::hash_password_with(b"wonderland", 64, 1, 1).expect("hash");
    let accounts = TempFile::new("accounts", &format!("alice:{alice}\n"));
    let ops = TcpListener::bind("127.0.0.1:0").await.expect("bind ops");
    let addr = ops.local_addr().expect("ops addr");
    let mut config = test_config();
    config.accounts = Some(accounts.path.clone());
    config.login.hash_workers = 3;
    config.login.throttle_user_failures = 2;
    config.login.throttle_user_logins = 1;
    let components = Components {
        ops: Some(ops),
        ..Components::default()
    };
    let server = Server::start(config, components).await;
    let login = |user: &str, password: &str| {
        let mut session = player(&server, user);
        let password = password.to_owned();
        async move {
            session
                .login(&LoginOverrides {
                    password: Some(password),
                    ..LoginOverrides::default()
                })
                .await
        }
    };
    login("alice", "wonderland").await.expect("alice logs in");
    let throttled = |r: Result<_, ClientError>| matches!(r, Err(ClientError::LoginRefused(s)) if s == LoginStatus::TOO_MANY_REQUESTS);
    // Her second login is one too many; two wrong passwords for bob use
    // up his name's allowance, the third is throttled.
    assert!(throttled(login("alice", "wonderland").await));
    for _ in 0..2 {
        assert!(
            matches!(login("bob", "guess").await, Err(ClientError::LoginRefused(s)) if s == LoginStatus::UNAUTHORIZED)
        );
    }
    assert!(throttled(login("bob", "guess").await));

    let (status, scrape) = http(addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    promtool_checks(&scrape);
    let value = |name: &str| sample(&scrape, name).unwrap_or_else(|| panic!("{name} in\n{scrape}"));
    assert_eq!(value(r#"gate_login_throttled_total{reason="logins"}"#), 1.0);
    assert_eq!(value(r#"gate_login_throttled_total{reason="user"}"#), 1.0);
    assert_eq!(value("gate_login_hash_workers"), 3.0);
    assert_eq!(value("gate_login_hash_queued"), 0.0);
    assert_eq!(value("gate_login_hash_running"), 0.0);
    assert_eq!(value("gate_login_hash_busy_total"), 0.0);
    // Three checks ran (alice once, bob twice against the dummy hash of
    // the same cost): at least one block of 64 KiB is held, at most three.
    let memory = value("gate_login_hash_memory_bytes");
    assert!(
        (64.0 * 1024.0..=3.0 * 64.0 * 1024.0).contains(&memory),
        "{memory}"
    );
    server.shutdown().await.expect("clean shutdown");
}

/// `promtool check metrics` accepts the scrape.
fn promtool_checks(scrape: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; .ci/run installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all_sync(scrape.as_bytes());
    let checked = promtool.wait_with_output().expect("promtool ran");
    assert!(
        checked.status.success(),
        "promtool: {}{}\n{scrape}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[tokio::test]
async fn the_metrics_pass_promtool_and_count_what_happened() {
    let (server, ops, _token) = start().await;
    let mut alice = online(&server, "alice").await;
    let _bob = online(&server, "bob").await;
    for i in 0..3 {
        echo(&mut alice, &format!("hello {i}")).await;
    }
    let mut wrong = player(&server, "carol");
    let refused = wrong
        .login(&LoginOverrides {
            password: Some("wrong".into()),
            ..LoginOverrides::default()
        })
        .await;
    assert!(matches!(refused, Err(ClientError::LoginRefused(s)) if s == LoginStatus::UNAUTHORIZED));

    // A handshake with a wrong MAC: 401.
    let mut eve = player(&server, "eve");
    eve.login(&LoginOverrides::default()).await.expect("login");
    let (status, _) = eve
        .connect(&ConnectSpec {
            bad_mac: true,
            ..ConnectSpec::default()
        })
        .await
        .expect("handshake");
    assert_eq!(status, GateStatus::UNAUTHORIZED);

    let (status, scrape) = http(ops, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    promtool_checks(&scrape);
    let value = |name: &str| sample(&scrape, name).unwrap_or_else(|| panic!("{name} in\n{scrape}"));
    assert_eq!(
        value(r#"gate_logins_total{suite="x25519",status="200"}"#),
        3.0
    );
    assert_eq!(
        value(r#"gate_logins_total{suite="x25519",status="401"}"#),
        1.0
    );
    assert_eq!(value("gate_login_duration_seconds_count"), 4.0);
    assert_eq!(value("gate_requests_total"), 3.0);
    assert_eq!(value("gate_responses_total"), 3.0);
    assert_eq!(value("gate_error_responses_total"), 0.0);
    assert_eq!(value("gate_sessions_online"), 2.0);
    assert_eq!(value(r#"gate_handshakes_total{status="200"}"#), 2.0);
    assert_eq!(value(r#"gate_handshakes_total{status="401"}"#), 1.0);
    assert_eq!(value(r#"gate_connections_open{listener="gate"}"#), 2.0);
    assert_eq!(value("gate_send_queue_bytes"), 0.0);
    assert!(value("process_resident_memory_bytes") > 0.0);
    assert!(value("process_open_fds") > 0.0);

    let (status, body) = http(ops, "GET", "/healthz", None, None).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _) = http(ops, "GET", "/readyz", None, None).await;
    assert_eq!(status, 200);
}

/// Blocking write for a child's stdin (the scrape is small).
trait WriteAllSync {
    fn write_all_sync(self, bytes: &[u8]);
}

impl WriteAllSync for std::process::ChildStdin {
    fn write_all_sync(mut self, bytes: &[u8]) {
        use std::io::Write;
        self.write_all(bytes).expect("write to promtool");
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_gate() {
    let (server, ops, _token) = start().await;
    let _alice = online(&server, "alice").await;
    let _bob = online(&server, "bob").await;

    let dir = integration::scratch::Scratch::new("prometheus-test");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gate\n    static_configs:\n      - targets: ['{ops}']\n"
        ),
    )
    .expect("config");
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("prometheus (Debian's prometheus package; .ci/run installs it)"),
    );

    // Wait (bounded) until Prometheus has scraped and answers with the
    // numbers: two logins, two sessions online.
    let query = |q: &'static str| async move {
        let path = format!("/api/v1/query?query={q}");
        match TcpStream::connect(web).await {
            Ok(_) => http(web, "GET", &path, None, None).await.1,
            Err(_) => String::new(),
        }
    };
    guard("prometheus to report the scraped numbers", async {
        loop {
            let logins = query("sum(gate_logins_total%7Bstatus%3D%22200%22%7D)").await;
            let online = query("gate_sessions_online").await;
            if logins.contains(r#""2"]"#) && online.contains(r#""2"]"#) {
                break;
            }
            // Prometheus is another process: its query API is the only way
            // to see what it has scraped, so it is asked again and again.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_admin_api_needs_its_token_and_does_what_it_says() {
    let (server, ops, _token) = start().await;
    let mut alice = online(&server, "alice").await;

    // No token, a wrong one: 401 and nothing happens.
    for token in [None, Some("not the token, but long enough")] {
        let (status, body) = http(
            ops,
            "POST",
            "/admin/users/alice/kick",
            token,
            Some(r#"{"reason":"x"}"#),
        )
        .await;
        assert_eq!(status, 401, "{body}");
    }
    echo(&mut alice, "still here").await;

    let (status, body) = http(ops, "GET", "/admin/summary", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    let summary: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(summary["gate"]["sessions"], 1);
    assert_eq!(summary["gate"]["online"], 1);
    assert_eq!(summary["gate"]["draining"], false);

    let (status, body) = http(ops, "GET", "/admin/users/alice", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    let user: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(user["phase"], "connected");
    assert_eq!(user["subid"], "1");
    let (status, _) = http(ops, "GET", "/admin/users/nobody", Some(TOKEN), None).await;
    assert_eq!(status, 404);

    // Bad bodies: 400 with the reason, nothing pushed.
    for bad in ["", "{", r#"{"payload": 5}"#, r#"{"payload":"x","more":1}"#] {
        let (status, body) = http(
            ops,
            "POST",
            "/admin/users/alice/push",
            Some(TOKEN),
            Some(bad),
        )
        .await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(body.contains("error"));
    }
    let (status, body) = http(
        ops,
        "POST",
        "/admin/users/alice/push",
        Some(TOKEN),
        Some(r#"{"payload":"from the admin"}"#),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"seq":1}"#));
    assert_eq!(
        next(&mut alice).await,
        Some((ResponseFlag::PUSH, Bytes::from("from the admin")))
    );
    let (status, _) = http(
        ops,
        "POST",
        "/admin/push",
        Some(TOKEN),
        Some(r#"{"payload":"to everyone"}"#),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        next(&mut alice).await,
        Some((ResponseFlag::PUSH, Bytes::from("to everyone")))
    );

    // Drain: a new login is refused, alice keeps echoing; undrain.
    let (status, body) = http(
        ops,
        "POST",
        "/admin/drain",
        Some(TOKEN),
        Some(r#"{"drain":true}"#),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"draining":true}"#));
    let refused = player(&server, "dave")
        .login(&LoginOverrides::default())
        .await;
    assert!(
        matches!(refused, Err(ClientError::LoginRefused(s)) if s == LoginStatus::FORBIDDEN),
        "{refused:?}"
    );
    echo(&mut alice, "during the drain").await;
    let (status, _) = http(
        ops,
        "POST",
        "/admin/drain",
        Some(TOKEN),
        Some(r#"{"drain":false}"#),
    )
    .await;
    assert_eq!(status, 200);
    let _dave = online(&server, "dave").await;

    // A push alice's client never saw (she dropped her connection) is
    // replayed when she comes back: whether the gate has noticed the drop
    // yet or still queues it to the dead connection, it stays unseen.
    alice.disconnect();
    let (status, _) = http(
        ops,
        "POST",
        "/admin/users/alice/push",
        Some(TOKEN),
        Some(r#"{"payload":"while away"}"#),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = alice.connect(&ConnectSpec::default()).await.expect("back");
    assert_eq!(status, GateStatus::OK);
    assert_eq!(
        next(&mut alice).await,
        Some((ResponseFlag::PUSH, Bytes::from("while away")))
    );
    let (_, scrape) = http(ops, "GET", "/metrics", None, None).await;
    assert_eq!(sample(&scrape, "gate_pushes_replayed_total"), Some(1.0));

    // Kick with a reason: the opted-in client gets it, then the close.
    let (status, _) = http(
        ops,
        "POST",
        "/admin/users/alice/kick",
        Some(TOKEN),
        Some(r#"{"reason":"maintenance"}"#),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        next(&mut alice).await,
        Some((ResponseFlag::KICK, Bytes::from("maintenance")))
    );
    assert_eq!(next(&mut alice).await, None);
}

#[tokio::test]
async fn client_admin_drives_the_admin_api() {
    use client_cli::admin::{AdminCall, AdminCmd, call};
    let (server, ops, token) = start().await;
    let mut alice = online(&server, "alice").await;
    let cmd = |call: AdminCall, token_file: Option<std::path::PathBuf>| AdminCmd {
        addr: ops.to_string(),
        token_file,
        timeout: 10,
        call,
    };
    let good = Some(token.path.clone());

    let answer = call(&cmd(AdminCall::Summary, good.clone()))
        .await
        .expect("call");
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains(r#""sessions":1"#), "{}", answer.body);
    let answer = call(&cmd(AdminCall::Summary, None)).await.expect("call");
    assert_eq!(answer.status, 401);

    let answer = call(&cmd(
        AdminCall::Push {
            uid: "alice".into(),
            text: "hi from QA".into(),
        },
        good.clone(),
    ))
    .await
    .expect("call");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        next(&mut alice).await,
        Some((ResponseFlag::PUSH, Bytes::from("hi from QA")))
    );
    let answer = call(&cmd(
        AdminCall::Kick {
            uid: "alice".into(),
            reason: "QA kick".into(),
        },
        good.clone(),
    ))
    .await
    .expect("call");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        next(&mut alice).await,
        Some((ResponseFlag::KICK, Bytes::from("QA kick")))
    );
    let answer = call(&cmd(AdminCall::Metrics, None)).await.expect("call");
    assert!(
        answer.body.contains("gate_sessions_ended_total 1"),
        "{}",
        answer.body
    );
}
