//! Live upgrades between real gate processes (the `gate` binary): the
//! running process serves an upgrade socket, a new one started with
//! `--takeover` takes over its listeners, TCP connections and sessions.
//! Players on the skynet and x25519 suites, opted in or not, keep their
//! connections through three upgrades in a row: every request answered
//! once and right, every push delivered once, no reconnect, no new login.
//! A new process that refuses the state version, or dies in the middle of
//! the handoff, leaves the old one serving as if nothing happened.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use client_cli::gate::Extensions;
use client_cli::session::{ConnectSpec, Event, LoginOverrides};
use client_cli::{Session, SessionConfig};
use codec::message::ResponseFlag;
use codec::status::GateStatus;
use loginproto::login::Suite;

/// Upper bound of every wait (a failure guard, not a timing).
const GUARD: Duration = Duration::from_secs(60);

async fn guard<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

#[path = "support/ports.rs"]
mod ports;
#[path = "support/scratch.rs"]
mod scratch;
use ports::free_port;
use scratch::Scratch;

/// A gate process, killed when dropped.
struct Gate {
    child: Child,
    log: PathBuf,
}

impl Gate {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test's gate configuration: fixed free ports (a new process takes
/// the same addresses over), the upgrade socket, an admin token.
struct Setup {
    dir: Scratch,
    login: SocketAddr,
    gate: SocketAddr,
    ops: SocketAddr,
    socket: PathBuf,
    token: String,
    generation: std::cell::Cell<u32>,
    /// With backend services: the backend listener (agent service `agent`).
    backend: Option<SocketAddr>,
    /// With WebSocket listeners: (login, gate).
    web: Option<(SocketAddr, SocketAddr)>,
    /// A configuration file to start with.
    config: Option<PathBuf>,
}

impl Setup {
    fn new(test: &str) -> Setup {
        let dir = Scratch::new(&format!("upgrade-{test}"));
        let token = "an admin token for the upgrade tests".to_owned();
        std::fs::write(dir.join("token"), &token).expect("token");
        let port = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
        Setup {
            login: port(()),
            gate: port(()),
            ops: port(()),
            socket: dir.join("upgrade.sock"),
            token,
            generation: std::cell::Cell::new(0),
            backend: None,
            web: None,
            config: None,
            dir,
        }
    }

    /// The same, with a backend listener for the agent service.
    fn with_backend(test: &str) -> Setup {
        let setup = Setup::new(test);
        std::fs::write(
            setup.dir.join("link.secret"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .expect("secret");
        Setup {
            backend: Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
            ..setup
        }
    }

    /// Starts a gate process; with `takeover`, it takes the running one
    /// over.
    fn start(&self, takeover: bool) -> Gate {
        let n = self.generation.get() + 1;
        self.generation.set(n);
        let log = self.dir.join(format!("gate-{n}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gate"));
        cmd.arg("run");
        if let Some(config) = &self.config {
            cmd.args(["--config", config.to_str().expect("a utf-8 path")]);
        }
        if self.web.is_none() {
            cmd.arg("--no-web");
        }
        cmd.args(["--login-listen", &self.login.to_string()])
            .args(["--gate-listen", &self.gate.to_string()])
            .args(["--ops-listen", &self.ops.to_string()])
            .args([
                "--admin-token-file",
                self.dir.join("token").to_str().expect("a utf-8 path"),
            ])
            .args([
                "--upgrade-socket",
                self.socket.to_str().expect("a utf-8 path"),
            ])
            .args(["--reconnect-window", "5m"]);
        if takeover {
            cmd.args(["--takeover", self.socket.to_str().expect("a utf-8 path")]);
        }
        if let Some(backend) = self.backend {
            cmd.args(["--backend-listen", &backend.to_string()])
                .args([
                    "--link-secret-file",
                    self.dir.join("link.secret").to_str().expect("a utf-8 path"),
                ])
                .args(["--agent-service", "agent"]);
        }
        if let Some((login, gate)) = self.web {
            cmd.args(["--web-login-listen", &login.to_string()])
                .args(["--web-gate-listen", &gate.to_string()]);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("the gate binary");
        Gate { child, log }
    }

    /// Waits until `gate`'s log says `what`.
    async fn logged(&self, gate: &Gate, what: &str) {
        guard(&format!("the log says {what:?}"), async {
            while !gate.log().contains(what) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// A player; `skynet` picks the suite, `opt_in` the extensions, `ws`
    /// the WebSocket listeners.
    fn player(&self, user: &str, skynet: bool, opt_in: bool, ws: bool) -> Session {
        let (login_addr, gate_addr) = match self.web {
            Some((login, gate)) if ws => (format!("ws://{login}"), format!("ws://{gate}")),
            _ => (self.login.to_string(), self.gate.to_string()),
        };
        Session::new(SessionConfig {
            login_addr,
            gate_addr,
            user: user.to_owned(),
            server: "sample".to_owned(),
            password: "password".to_owned(),
            suite: if skynet { Suite::Skynet } else { Suite::X25519 },
            server_key: None,
            timeout: Duration::from_secs(20),
            extensions: if opt_in {
                Extensions::OptIn
            } else {
                Extensions::Plain
            },
            // Opted-in x25519 players are sealed: their channels move too.
            seal: true,
            heartbeat: Duration::from_secs(30),
        })
    }

    /// An admin push to `uid` through the operations listener.
    async fn push(&self, uid: &str, text: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = format!("{{\"payload\":\"{text}\"}}");
        let request = format!(
            "POST /admin/users/{uid}/push HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.token,
            body.len()
        );
        let mut stream = guard("ops connect", tokio::net::TcpStream::connect(self.ops))
            .await
            .expect("connect to ops");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        guard("ops answer", stream.read_to_end(&mut response))
            .await
            .expect("read");
        String::from_utf8_lossy(&response)
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// A connected player and what it has seen.
struct Player {
    s: Session,
    uid: String,
    opt_in: bool,
    ws: bool,
    pushes: Vec<Bytes>,
    answered: u32,
    /// A request sent earlier whose answer is not read yet: its number
    /// and content.
    in_flight: Option<(u32, String)>,
}

impl Player {
    async fn online(setup: &Setup, uid: &str, skynet: bool, opt_in: bool, ws: bool) -> Player {
        let mut s = setup.player(uid, skynet, opt_in, ws);
        s.login(&LoginOverrides::default()).await.expect("login");
        let (status, _) = s.connect(&ConnectSpec::default()).await.expect("handshake");
        assert_eq!(status, GateStatus::OK);
        assert_eq!(s.is_sealed(), opt_in && !skynet, "{uid}");
        if opt_in {
            match guard("the welcome", s.recv()).await {
                Ok(Event::Welcome { .. }) => {}
                other => panic!("expected the welcome, got {other:?}"),
            }
        }
        Player {
            s,
            uid: uid.to_owned(),
            opt_in,
            ws,
            pushes: Vec::new(),
            answered: 0,
            in_flight: None,
        }
    }

    /// Sends `n` requests pipelined and checks each answer arrives once,
    /// right, on the same connection (pushes met meanwhile are kept); the
    /// answer to a request in flight comes first.
    async fn echo(&mut self, n: u32) {
        let mut sent: Vec<(u32, String)> = self.in_flight.take().into_iter().collect();
        for i in 0..n {
            let text = format!("{} #{}", self.uid, self.answered + i);
            let number = self
                .s
                .send(None, Bytes::from(text.clone()))
                .await
                .expect("send");
            sent.push((number, text));
        }
        let mut got = 0;
        while got < sent.len() {
            match guard("an answer", self.s.recv()).await.expect("recv") {
                Event::Message(m) if m.response.flag == ResponseFlag::PUSH => {
                    self.pushes.push(m.response.content);
                }
                Event::Message(m) => {
                    let (number, text) = &sent[got];
                    assert_eq!(m.response.number, *number, "{}: answers in order", self.uid);
                    assert_eq!(m.response.flag, ResponseFlag::OK, "{}", self.uid);
                    assert_eq!(
                        m.response.content,
                        Bytes::from(text.clone()),
                        "{}",
                        self.uid
                    );
                    got += 1;
                }
                Event::Closed => panic!("{}: the connection closed", self.uid),
                _ => {}
            }
        }
        self.answered += n;
    }
}

/// Every player echoes a few requests, pipelined, all players at once.
async fn everyone_echoes(players: &mut [Player], n: u32) {
    futures::future::join_all(players.iter_mut().map(|p| p.echo(n))).await;
}

/// Players of every kind: skynet and x25519 suites, plain and opted in,
/// over TCP and over WebSocket.
fn kind(i: usize) -> (bool, bool, bool) {
    let (skynet, opt_in) = (i % 2 == 0, i % 3 != 0);
    let ws = i % 4 == 3;
    (skynet, opt_in, ws)
}

/// Logs `n` players in, a few at a time.
async fn players_online(setup: &Setup, prefix: &str, n: usize) -> Vec<Player> {
    let mut players = Vec::with_capacity(n);
    for start in (0..n).step_by(25) {
        let batch = (start..n.min(start + 25)).map(|i| {
            let (skynet, opt_in, ws) = kind(i);
            let uid = format!("{prefix}{i}");
            async move { Player::online(setup, &uid, skynet, opt_in, ws).await }
        });
        players.extend(futures::future::join_all(batch).await);
    }
    players
}

/// Sessions in the round test.
const PLAYERS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_upgrades_in_a_row_lose_nothing_and_reconnect_nobody() {
    let mut setup = Setup::new("rounds");
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    setup.web = Some((port(), port()));
    let mut gate = setup.start(false);
    setup.logged(&gate, "serving live upgrades").await;
    let mut players = players_online(&setup, "p", PLAYERS).await;
    assert!(players.iter().any(|p| p.ws) && players.iter().any(|p| !p.ws));
    everyone_echoes(&mut players, 4).await;
    let mut pushes_sent = 0;
    for round in 1..=3 {
        // Requests in flight while the new process starts: sent, then the
        // upgrade, then read.
        let mut sent = Vec::new();
        for p in players.iter_mut() {
            let number =
                p.s.send(None, Bytes::from(format!("{} in flight {round}", p.uid)))
                    .await
                    .expect("send");
            sent.push(number);
        }
        for (p, number) in players.iter_mut().zip(sent) {
            p.in_flight = Some((number, format!("{} in flight {round}", p.uid)));
        }
        let new = setup.start(true);
        // Echo load through the handoff: a third of the players keep
        // asking until the new process serves.
        let serving = std::sync::atomic::AtomicBool::new(false);
        let load = &mut players[..PLAYERS / 3];
        tokio::join!(
            async {
                setup
                    .logged(&new, "live upgrade: this process serves")
                    .await;
                serving.store(true, std::sync::atomic::Ordering::Release);
            },
            async {
                while !serving.load(std::sync::atomic::Ordering::Acquire) {
                    everyone_echoes(load, 1).await;
                }
            }
        );
        let status = guard("the old process exits", async {
            loop {
                if let Some(status) = gate.child.try_wait().expect("wait") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(status.success(), "the old process exits cleanly: {status}");
        assert!(gate.log().contains("handed over"), "{}", gate.log());
        assert!(
            new.log().contains(&format!(
                "sessions and connections taken over sessions={PLAYERS} connections={PLAYERS}"
            )),
            "every connection moved, TCP and WebSocket: {}",
            new.log()
        );
        gate = new;
        // The answers to the requests in flight come first.
        everyone_echoes(&mut players, 4).await;
        // A push to every opted-in player, through the new process.
        for p in players.iter().filter(|p| p.opt_in) {
            assert_eq!(setup.push(&p.uid, &format!("round {round}")).await, 200);
        }
        pushes_sent += 1;
        everyone_echoes(&mut players, 1).await;
    }
    // Logins go on through the inherited login listeners.
    let mut late = Player::online(&setup, "late", false, true, false).await;
    late.echo(3).await;
    let mut late_ws = Player::online(&setup, "late-ws", false, true, true).await;
    late_ws.echo(3).await;
    for p in &mut players {
        // Pushes not met yet arrive with the next answers.
        p.echo(1).await;
        if p.opt_in {
            let want: Vec<Bytes> = (1..=pushes_sent)
                .map(|r| Bytes::from(format!("round {r}")))
                .collect();
            assert_eq!(p.pushes, want, "{}: each push once, in order", p.uid);
        } else {
            assert!(p.pushes.is_empty());
        }
        assert_eq!(p.s.next_index(), 2, "{}: never reconnected", p.uid);
    }
    assert!(
        !gate.log().contains("login user=p"),
        "no player logged in again: {}",
        gate.log()
    );
}

/// Speaks the upgrade protocol as a new process would, then stops where
/// the test says.
fn fake_new_process(socket: &Path, reads: u32, read_frames: usize) {
    use gate::upgrade::frames;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    let hello = serde_json::json!({"hello": {"reads": [reads], "pid": 1}});
    frames::send(&mut stream, hello.to_string().as_bytes(), &[]).expect("hello");
    for _ in 0..read_frames {
        if frames::recv(&mut stream).expect("a frame").is_none() {
            break;
        }
    }
    // Dropped here: a new process that dies mid-handoff.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_takeover_leaves_the_old_process_serving() {
    let setup = Setup::new("rollback");
    let gate = setup.start(false);
    setup.logged(&gate, "serving live upgrades").await;
    let mut players = Vec::new();
    for i in 0..6 {
        players.push(Player::online(&setup, &format!("r{i}"), i % 2 == 0, true, false).await);
    }
    everyone_echoes(&mut players, 2).await;

    // A process that does not read this state version: refused at once.
    let socket = setup.socket.clone();
    tokio::task::spawn_blocking(move || fake_new_process(&socket, 99, 1))
        .await
        .expect("fake");
    setup.logged(&gate, "live upgrade failed").await;
    everyone_echoes(&mut players, 2).await;

    // One that dies after the listeners and connections came: everything
    // resumes; pushes made meanwhile are not lost.
    let socket = setup.socket.clone();
    tokio::task::spawn_blocking(move || fake_new_process(&socket, 1, 2))
        .await
        .expect("fake");
    guard("two failures logged", async {
        while gate.log().matches("live upgrade failed").count() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(setup.push("r0", "after the rollback").await, 200);
    everyone_echoes(&mut players, 3).await;
    assert_eq!(players[0].pushes, vec![Bytes::from("after the rollback")]);
    // New players still get in: accepting resumed.
    let mut newcomer = Player::online(&setup, "newcomer", false, false, false).await;
    newcomer.echo(2).await;
    // And a real upgrade still works afterwards.
    let new = setup.start(true);
    setup
        .logged(&new, "live upgrade: this process serves")
        .await;
    everyone_echoes(&mut players, 2).await;
    newcomer.echo(1).await;
}

/// With the agent as a backend service: its link to the old process ends
/// with it, it links to the new one by itself, and the players' requests
/// after the upgrade wait for it instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_backend_service_go_on_across_an_upgrade() {
    let setup = Setup::with_backend("backend");
    let gate = setup.start(false);
    setup.logged(&gate, "serving live upgrades").await;
    let secret =
        proto::link_auth::LinkSecret::from_file(&setup.dir.join("link.secret")).expect("secret");
    let service = service::Service::builder("agent")
        .gate(setup.backend.expect("backend").to_string())
        .link_secret(secret)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build(service::handler_fn(
            |_ctx: service::Context, req: service::Request| async move { Ok(req.payload) },
        ))
        .expect("service");
    let gates = service.gates();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(service.run(stop.clone()));
    guard("the service links", async {
        while gates.connected() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut players = Vec::new();
    for i in 0..8 {
        players.push(Player::online(&setup, &format!("b{i}"), i % 2 == 0, i % 3 == 0, false).await);
    }
    everyone_echoes(&mut players, 3).await;
    let new = setup.start(true);
    setup
        .logged(&new, "live upgrade: this process serves")
        .await;
    // At once, before the service is linked again: answered, not failed.
    everyone_echoes(&mut players, 3).await;
    stop.cancel();
    running.await.expect("join").expect("service");
}

/// A `wss://` player cannot keep its connection through an upgrade (its
/// TLS state cannot move): it is closed with 1012, and reconnecting with
/// its next index to the new process finds its session, without a login,
/// and its requests answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_websocket_player_reconnects_to_its_session_after_an_upgrade() {
    let mut setup = Setup::new("wss");
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    setup.web = Some((port(), port()));
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    let (cert, key) = (setup.dir.join("cert.pem"), setup.dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write");
    let config = setup.dir.join("gate.toml");
    std::fs::write(
        &config,
        format!(
            "[web]\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\n",
            cert = cert.to_str().expect("a utf-8 path"),
            key = key.to_str().expect("a utf-8 path"),
        ),
    )
    .expect("config");
    setup.config = Some(config);
    client_cli::net::trust_ca_file(&cert).expect("trust the certificate");
    let (web_login, web_gate) = setup.web.expect("web");
    let gate = setup.start(false);
    setup.logged(&gate, "serving live upgrades").await;
    let mut s = Session::new(SessionConfig {
        login_addr: format!("wss://{web_login}"),
        gate_addr: format!("wss://{web_gate}"),
        user: "browser".to_owned(),
        server: "sample".to_owned(),
        password: "password".to_owned(),
        suite: Suite::X25519,
        server_key: None,
        timeout: Duration::from_secs(20),
        extensions: Extensions::OptIn,
        seal: false,
        heartbeat: Duration::from_secs(30),
    });
    s.login(&LoginOverrides::default()).await.expect("login");
    let (status, _) = s.connect(&ConnectSpec::default()).await.expect("handshake");
    assert_eq!(status, GateStatus::OK);
    let mut player = Player {
        s,
        uid: "browser".to_owned(),
        opt_in: true,
        ws: true,
        pushes: Vec::new(),
        answered: 0,
        in_flight: None,
    };
    player.echo(2).await;
    let new = setup.start(true);
    setup
        .logged(&new, "live upgrade: this process serves")
        .await;
    guard("the close", async {
        loop {
            match player.s.recv().await {
                Ok(Event::Closed) | Err(_) => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(
        new.log()
            .contains("sessions and connections taken over sessions=1 connections=0"),
        "{}",
        new.log()
    );
    let (status, _) = player
        .s
        .connect(&ConnectSpec::default())
        .await
        .expect("reconnect");
    assert_eq!(status, GateStatus::OK, "the session moved; no login needed");
    player.echo(2).await;
    assert!(!new.log().contains("login user=browser"), "no new login");
}

/// The QA shell on skynet's suite without extensions — what skynet's own
/// client speaks — keeps its connection and session through an upgrade:
/// a line typed before it and one after are both answered, on index 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_skynet_suite_shell_keeps_its_session_across_an_upgrade() {
    use client_cli::shell;

    let setup = Setup::new("shell");
    let gate = setup.start(false);
    setup.logged(&gate, "serving live upgrades").await;
    let mut out: Vec<String> = Vec::new();
    let session = guard(
        "login",
        shell::start(
            setup.player("qa", true, false, false).config().clone(),
            &mut out,
        ),
    )
    .await
    .expect("login and connect");
    let (lines, input) = tokio::sync::mpsc::channel(8);
    let shell = tokio::spawn(async move {
        let summary = shell::run_shell(session, input, &mut out, true).await;
        (summary, out)
    });
    for line in ["before", ":wait"] {
        lines.send(line.to_owned()).await.expect("shell input");
    }
    let new = setup.start(true);
    setup
        .logged(&new, "live upgrade: this process serves")
        .await;
    for line in ["after", ":wait", ":quit"] {
        lines.send(line.to_owned()).await.expect("shell input");
    }
    let (summary, out) = guard("the shell", shell).await.expect("join");
    assert_eq!(summary.unanswered, 0);
    let transcript = out.join("\n");
    let mut from = 0;
    for needle in [
        "index=1 -> 200 OK",
        "<- s=0 ok \"before\"",
        "<- s=1 ok \"after\"",
    ] {
        match transcript[from..].find(needle) {
            Some(at) => from += at + needle.len(),
            None => panic!("{needle:?} missing (in order) from:\n{transcript}"),
        }
    }
    for never in ["connection dropped", "index=2", "closed"] {
        assert!(!transcript.contains(never), "{never:?} in:\n{transcript}");
    }
    assert!(!new.log().contains("login user=qa"), "no new login");
}

/// Connections that never finish their handshake (a client that sends
/// nothing, half a package, or upgrades to WebSocket and stops) do not
/// hold an upgrade up: the handoff goes through at once, a player keeps
/// its session, and the silent ones end with the old process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_hold_an_upgrade_up() {
    use tokio::io::AsyncWriteExt;

    let mut setup = Setup::new("silent");
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    setup.web = Some((port(), port()));
    let (_, web_gate) = setup.web.expect("web");
    let gate = setup.start(false);
    setup.logged(&gate, "serving live upgrades").await;
    let mut player = Player::online(&setup, "steady", false, true, false).await;
    player.echo(2).await;
    let mut silent = Vec::new();
    silent.push(
        tokio::net::TcpStream::connect(setup.gate)
            .await
            .expect("connect"),
    );
    let mut half = tokio::net::TcpStream::connect(setup.gate)
        .await
        .expect("connect");
    half.write_all(b"\x00\x40abc").await.expect("write");
    silent.push(half);
    let mut upgraded = tokio::net::TcpStream::connect(web_gate)
        .await
        .expect("connect");
    upgraded
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("write");
    silent.push(upgraded);
    let mut gate = gate;
    let new = setup.start(true);
    setup
        .logged(&new, "live upgrade: this process serves")
        .await;
    let status = guard("the old process exits", async {
        loop {
            if let Some(status) = gate.child.try_wait().expect("wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(status.success(), "{status}");
    assert!(
        !gate.log().contains("live upgrade failed"),
        "{}",
        gate.log()
    );
    player.echo(2).await;
    assert_eq!(player.s.next_index(), 2, "never reconnected");
    drop(silent);
}
