//! The cluster against a real Redis and real node processes: login nodes
//! and gate nodes are the `gate` binary started by the test
//! (`--role login|gate`), each test with its own `redis-server` on a free
//! loopback port with persistence off (install Debian's `redis-server`;
//! `.ci/run` does).
//!
//! Every rule of the session directory has its own test. Waits are on
//! events: a port that accepts, a key that appears or lapses in Redis, a
//! package on the wire; each has a failure guard.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use client_cli::ClientError;
use client_cli::gate::Extensions;
use client_cli::session::{ConnectSpec, Event, LoginOverrides};
use client_cli::{Session, SessionConfig};
use codec::message::ResponseFlag;
use codec::status::{GateStatus, LoginStatus};
use gate::cluster::directory::{Begin, Commit, Directory, DirectoryOptions};
use gate::cluster::record::Record;
use loginproto::login::Suite;

/// The chat example's handler, compiled from the example's own source.
#[allow(dead_code)]
#[path = "../../service/examples/chat.rs"]
mod chat;

/// Failure guard of every wait.
const GUARD: Duration = Duration::from_secs(30);
/// Lease of the test gates: short, so a killed gate lapses quickly.
const LEASE: &str = "1s";

#[path = "support/ports.rs"]
mod ports;
#[path = "support/scratch.rs"]
mod scratch;
use ports::free_port;
use scratch::Scratch;

async fn guard<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Polls `check` until it holds (a wait on state another process changes).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    guard(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn port_open(addr: SocketAddr) {
    eventually(&format!("{addr} accepts"), || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
}

/// How many times a node is started on newly picked ports when one of
/// them turns out to be taken.
const PORT_ATTEMPTS: usize = 5;

/// Waits until `ready` holds for a node just started: `true`; `false` if
/// the node exited first because a port it was given was taken meanwhile.
/// Any other exit fails the test with the node's log.
async fn started<F, Fut>(proc: &mut Proc, what: &str, mut ready: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    guard(what, async {
        loop {
            if ready().await {
                return true;
            }
            if let Ok(Some(status)) = proc.child.try_wait() {
                let log = proc.log();
                if log.contains("Address already in use") {
                    return false;
                }
                panic!("{what}: the node exited ({status}):\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A child process, killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `redis-server` on a free port, no persistence.
struct Redis {
    port: u16,
    proc: Option<Proc>,
    dir: PathBuf,
}

impl Redis {
    async fn start(dir: &Path) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            proc: None,
            dir: dir.to_owned(),
        };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, empty) on the same port.
    async fn restart(&mut self) {
        let log = self.dir.join(format!("redis-{}.log", self.port));
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.to_str().expect("utf-8 path")])
            .stdout(std::fs::File::create(&log).expect("redis log"))
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "cannot start redis-server: install Debian's redis-server \
                 (.ci/run does when it is missing)",
            );
        self.proc = Some(Proc { child, log });
        port_open(SocketAddr::from(([127, 0, 0, 1], self.port))).await;
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    fn directory(&self) -> Directory {
        Directory::new(&DirectoryOptions {
            url: self.url(),
            prefix: "gate:".into(),
            timeout: Duration::from_secs(1),
            fence: Duration::from_secs(1), // LEASE
        })
        .expect("directory")
    }
}

/// `--no-web`, unless `args` names a WebSocket listener.
fn no_web(args: &[String]) -> Option<&'static str> {
    let web = args.iter().any(|a| a.starts_with("--web-"));
    (!web).then_some("--no-web")
}

/// One test's cluster: its Redis, secret and nodes.
struct Cluster {
    dir: Scratch,
    redis: Redis,
    secret: PathBuf,
    /// What the nodes are given as `--redis` (the Redis's own address, or
    /// Sentinels').
    url: String,
    /// Replicas and Sentinels, when the test runs them.
    others: Vec<Proc>,
}

/// A `redis-server` child on `port` with more arguments; its log under
/// `dir`.
fn redis_child(dir: &Path, port: u16, args: &[&str]) -> Proc {
    let log = dir.join(format!("redis-{port}.log"));
    let child = Command::new("redis-server")
        .args(args)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--dir", dir.to_str().expect("utf-8 path")])
        .stdout(std::fs::File::create(&log).expect("redis log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start redis-server: install Debian's redis-server (.ci/run does)");
    Proc { child, log }
}

/// One command to the Redis (or Sentinel) on `port`, answered as text.
async fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let v: redis::Value = cmd.query_async(&mut conn).await.ok()?;
    fn flat(v: &redis::Value) -> String {
        match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Value::SimpleString(s) => s.clone(),
            redis::Value::Array(items) => items.iter().map(flat).collect::<Vec<_>>().join(" "),
            other => format!("{other:?}"),
        }
    }
    Some(flat(&v))
}

struct GateNode {
    proc: Proc,
    name: String,
    client: SocketAddr,
    backend: SocketAddr,
    /// The flags it was started with.
    args: Vec<String>,
}

struct LoginNode {
    proc: Proc,
    addr: SocketAddr,
    /// The flags it was started with.
    args: Vec<String>,
}

impl Cluster {
    async fn start(test: &str) -> Cluster {
        let dir = Scratch::new(&format!("cluster-{test}"));
        let secret = dir.join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").expect("secret");
        let redis = Redis::start(&dir).await;
        Cluster {
            url: redis.url(),
            dir,
            redis,
            secret,
            others: Vec::new(),
        }
    }

    /// A cluster on a Redis master with one replica and three Sentinels
    /// watching it as `main`; the nodes find the master through the
    /// Sentinels. Returns once the replica is in sync and every Sentinel
    /// knows the master and the replica.
    async fn with_sentinels(test: &str) -> Cluster {
        let mut c = Cluster::start(test).await;
        let master = c.redis.port;
        let replica = free_port();
        let replicaof = format!("127.0.0.1 {master}");
        c.others.push(redis_child(
            &c.dir,
            replica,
            &[
                "--save",
                "",
                "--appendonly",
                "no",
                "--replicaof",
                &replicaof,
            ],
        ));
        eventually("the replica is in sync", || async move {
            redis_cli(replica, &["INFO", "replication"])
                .await
                .is_some_and(|i| i.contains("master_link_status:up"))
        })
        .await;
        let mut sentinels = Vec::new();
        for n in 0..3 {
            let port = free_port();
            let conf = c.dir.join(format!("sentinel-{n}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor main 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds main 400\n\
                     sentinel failover-timeout main 4000\n\
                     sentinel parallel-syncs main 1\n"
                ),
            )
            .expect("sentinel config");
            let conf = conf.to_str().expect("utf-8").to_owned();
            c.others
                .push(redis_child(&c.dir, port, &[&conf, "--sentinel"]));
            sentinels.push(port);
        }
        for &port in &sentinels {
            eventually(
                "a Sentinel knows the master and its replica",
                || async move {
                    redis_cli(port, &["SENTINEL", "replicas", "main"])
                        .await
                        .is_some_and(|r| r.contains(&replica.to_string()))
                },
            )
            .await;
        }
        let hosts: Vec<String> = sentinels.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        c.url = format!("redis+sentinel://{}/main", hosts.join(","));
        c
    }

    fn directory(&self) -> Directory {
        Directory::new(&DirectoryOptions {
            url: self.url.clone(),
            prefix: "gate:".into(),
            timeout: Duration::from_secs(1),
            fence: Duration::from_secs(1), // LEASE
        })
        .expect("directory")
    }

    fn node(&self, id: &str, args: &[String]) -> Proc {
        let log = self.dir.join(format!("{id}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_gate"))
            .arg("run")
            .args(["--redis", &self.url])
            .args(["--node-id", id])
            // No WebSocket listeners unless the test names their ports
            // (several nodes share the machine and its ports).
            .args(no_web(args))
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("node log"))
            .spawn()
            .expect("start the gate binary");
        Proc { child, log }
    }

    /// A gate node serving `name` with the built-in echo agent, registered
    /// when this returns.
    async fn gate(&self, id: &str, name: &str) -> GateNode {
        self.gate_with(id, name, &self.secret, false).await
    }

    /// A gate node; with `backend`, requests go to backend services (the
    /// `agent` service) dialling `GateNode::backend`.
    async fn gate_with(&self, id: &str, name: &str, secret: &Path, backend: bool) -> GateNode {
        self.gate_full(id, name, secret, backend, &[]).await
    }

    /// [`Cluster::gate_with`] with more flags.
    async fn gate_full(
        &self,
        id: &str,
        name: &str,
        secret: &Path,
        backend: bool,
        extra: &[String],
    ) -> GateNode {
        // A port picked free can be taken before the node binds it (other
        // tests start processes too): then the node exits, and it is
        // started again on other ports.
        for _ in 0..PORT_ATTEMPTS {
            let client = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let control = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let backend_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let secret = secret.to_str().expect("utf-8").to_owned();
            let mut args: Vec<String> = if backend {
                vec![
                    "--backend-listen".into(),
                    backend_addr.to_string(),
                    "--link-secret-file".into(),
                    secret.clone(),
                ]
            } else {
                Vec::new()
            };
            args.extend([
                "--role".into(),
                "gate".into(),
                "--name".into(),
                name.into(),
                "--gate-listen".into(),
                client.to_string(),
                "--control-listen".into(),
                control.to_string(),
                "--cluster-secret-file".into(),
                secret,
                "--lease".into(),
                LEASE.into(),
                "--reconnect-window".into(),
                "1m".into(),
            ]);
            args.extend(extra.iter().cloned());
            let mut proc = self.node(id, &args);
            let dir = self.directory();
            let wanted = client.to_string();
            let registered = started(&mut proc, &format!("gate {name} registered"), || {
                let (dir, wanted) = (dir.clone(), wanted.clone());
                async move {
                    matches!(dir.gate(name.as_bytes()).await, Ok(Some(e)) if e.client == wanted)
                }
            })
            .await;
            if !registered {
                continue;
            }
            port_open(client).await;
            return GateNode {
                proc,
                name: name.to_owned(),
                client,
                backend: backend_addr,
                args,
            };
        }
        panic!("gate {name}: no free ports in {PORT_ATTEMPTS} attempts");
    }

    /// A login node, accepting when this returns.
    async fn login(&self, id: &str) -> LoginNode {
        self.login_with(id, &self.secret).await
    }

    async fn login_with(&self, id: &str, secret: &Path) -> LoginNode {
        self.login_full(id, secret, &[]).await
    }

    /// [`Cluster::login_with`] with more flags.
    async fn login_full(&self, id: &str, secret: &Path, extra: &[String]) -> LoginNode {
        // As for gate nodes: another port if the one picked was taken.
        for _ in 0..PORT_ATTEMPTS {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut args: Vec<String> = vec![
                "--role".into(),
                "login".into(),
                "--login-listen".into(),
                addr.to_string(),
                "--cluster-secret-file".into(),
                secret.to_str().expect("utf-8").into(),
                // The lease is the fence after Redis lost data too: every
                // node of a cluster has the same.
                "--lease".into(),
                LEASE.into(),
            ];
            args.extend(extra.iter().cloned());
            let mut proc = self.node(id, &args);
            let listening = started(&mut proc, &format!("{addr} accepts"), || async move {
                tokio::net::TcpStream::connect(addr).await.is_ok()
            })
            .await;
            if listening {
                // A new directory is fenced for a lease (it may be one
                // that lost its data): the tests start after it.
                let dir = self.directory();
                eventually("the new directory's fence lapsed", || {
                    let dir = dir.clone();
                    async move { matches!(dir.fenced().await, Ok(None)) }
                })
                .await;
                return LoginNode { proc, addr, args };
            }
        }
        panic!("login node {id}: no free ports in {PORT_ATTEMPTS} attempts");
    }
}

/// A player: the client library's session, opted in to the extensions.
struct Player {
    s: Session,
    /// Pushes and kicks that arrived while an answer was awaited.
    early: std::collections::VecDeque<(ResponseFlag, Bytes)>,
}

impl Player {
    fn new(login: &LoginNode, gate: &GateNode, user: &str) -> Player {
        Player::at(
            login.addr.to_string(),
            gate.client.to_string(),
            &gate.name,
            user,
        )
    }

    /// A player dialling these addresses (`ws://` ones for WebSocket).
    fn at(login: String, gate: String, server: &str, user: &str) -> Player {
        Player {
            s: Session::new(SessionConfig {
                login_addr: login,
                gate_addr: gate,
                user: user.to_owned(),
                server: server.to_owned(),
                password: "password".into(),
                suite: Suite::X25519,
                server_key: None,
                timeout: Duration::from_secs(10),
                extensions: Extensions::OptIn,
                seal: false,
                heartbeat: Duration::from_secs(20),
            }),
            early: std::collections::VecDeque::new(),
        }
    }

    async fn login(&mut self) -> Result<Bytes, ClientError> {
        let ticket = self.s.login(&LoginOverrides::default()).await?;
        Ok(Bytes::from(ticket.subid))
    }

    async fn connect(&mut self) -> GateStatus {
        let (status, _) = self
            .s
            .connect(&ConnectSpec::default())
            .await
            .expect("handshake");
        if status == GateStatus::OK {
            match guard("welcome", self.s.recv()).await {
                Ok(Event::Welcome { .. }) => {}
                other => panic!("expected the welcome, got {other:?}"),
            }
        }
        status
    }

    /// Logs in and connects, or panics.
    async fn online(login: &LoginNode, gate: &GateNode, user: &str) -> Player {
        let mut p = Player::new(login, gate, user);
        p.login().await.expect("login");
        assert_eq!(p.connect().await, GateStatus::OK);
        p
    }

    /// The next package that is not a response: (flag, content).
    async fn next_message(&mut self) -> Option<(ResponseFlag, Bytes)> {
        if let Some(early) = self.early.pop_front() {
            return Some(early);
        }
        loop {
            match guard("a package", self.s.recv()).await.expect("recv") {
                Event::Message(m) => return Some((m.response.flag, m.response.content)),
                Event::Closed => return None,
                _ => {}
            }
        }
    }

    /// Sends `body` to `route` in a route envelope; returns the answer.
    async fn route(&mut self, route: &str, body: &str) -> Bytes {
        use prost::Message;
        let envelope = proto::route::RouteEnvelope {
            route: route.to_owned(),
            body: Bytes::copy_from_slice(body.as_bytes()),
        };
        let text = String::from_utf8(envelope.encode_to_vec()).unwrap_or_default();
        let number = self
            .s
            .send(None, Bytes::from(envelope.encode_to_vec()))
            .await
            .expect("send");
        loop {
            match guard("an answer", self.s.recv()).await.expect("recv") {
                Event::Message(m) if m.response.number == number => {
                    assert_eq!(m.response.flag, ResponseFlag::OK, "answer to {text:?}");
                    return m.response.content;
                }
                Event::Message(m) => self.early.push_back((m.response.flag, m.response.content)),
                Event::Closed => panic!("closed while waiting for {route}"),
                _ => {}
            }
        }
    }

    async fn echo(&mut self, text: &str) -> Bytes {
        let number = self
            .s
            .send(None, Bytes::copy_from_slice(text.as_bytes()))
            .await
            .expect("send");
        loop {
            match guard("an answer", self.s.recv()).await.expect("recv") {
                Event::Message(m) if m.response.number == number => {
                    assert_eq!(m.response.flag, ResponseFlag::OK, "answer to {text:?}");
                    return m.response.content;
                }
                Event::Message(m) => self.early.push_back((m.response.flag, m.response.content)),
                Event::Closed => panic!("closed while waiting for {text:?}"),
                _ => {}
            }
        }
    }

    /// Asserts this session no longer lives: a request sent now gets no
    /// answer, only a kick (if it was still on its way) and the close.
    async fn assert_gone(&mut self, why: &str) {
        let sent = self.s.send(None, Bytes::from_static(b"still there?")).await;
        if let Ok(number) = sent {
            loop {
                match guard("the close", self.s.recv()).await {
                    Ok(Event::Message(m)) => assert!(
                        m.response.flag != ResponseFlag::OK || m.response.number != number,
                        "{why}: the old session answered: two live sessions: {m:?}"
                    ),
                    Ok(Event::Closed) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    }

    /// Reads up to the close; returns the kick reasons seen.
    async fn kicks_until_closed(&mut self) -> Vec<Bytes> {
        let mut kicks = Vec::new();
        while let Some((flag, content)) = self.next_message().await {
            if flag == ResponseFlag::KICK {
                kicks.push(content);
            }
        }
        kicks
    }
}

fn refused(result: Result<Bytes, ClientError>) -> LoginStatus {
    match result {
        Err(ClientError::LoginRefused(status)) => status,
        other => panic!("expected a refused login, got {other:?}"),
    }
}

#[tokio::test]
async fn a_relogin_on_another_gate_kicks_the_old_session_exactly_once() {
    let c = Cluster::start("relogin").await;
    let (g1, g2) = (c.gate("g1", "north").await, c.gate("g2", "south").await);
    let (l1, l2) = (c.login("l1").await, c.login("l2").await);

    let mut old = Player::online(&l1, &g1, "alice").await;
    assert_eq!(old.echo("before").await, "before");
    let record = c.redis.directory().record(b"alice").await.unwrap().unwrap();
    assert_eq!(record.server, "north");

    // The same user on the other gate, through the other login node.
    let mut new = Player::online(&l2, &g2, "alice").await;
    assert_eq!(
        old.kicks_until_closed().await,
        vec![Bytes::from("logged in again")]
    );
    assert_eq!(new.echo("after").await, "after");
    let record = c.redis.directory().record(b"alice").await.unwrap().unwrap();
    assert_eq!(record.server, "south");
    // The old session is gone for good: its ticket no longer connects.
    assert_eq!(old.connect().await, GateStatus::NOT_FOUND);
}

#[tokio::test]
async fn web_clients_log_in_on_a_login_node_and_play_on_a_gate_node() {
    let c = Cluster::start("web").await;
    let web_gate = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let web_login = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let g1 = c
        .gate_full(
            "g1",
            "north",
            &c.secret,
            false,
            &["--web-gate-listen".into(), web_gate.to_string()],
        )
        .await;
    let l1 = c
        .login_full(
            "l1",
            &c.secret,
            &["--web-login-listen".into(), web_login.to_string()],
        )
        .await;
    port_open(web_gate).await;
    port_open(web_login).await;

    let mut web = Player::at(
        format!("ws://{web_login}"),
        format!("ws://{web_gate}"),
        "north",
        "alice",
    );
    web.login().await.expect("login over WebSocket");
    assert_eq!(web.connect().await, GateStatus::OK);
    assert_eq!(web.echo("over the web").await, "over the web");
    let record = c.redis.directory().record(b"alice").await.unwrap().unwrap();
    assert_eq!(record.server, "north");

    // The same user over TCP: the WebSocket session is kicked once.
    let mut tcp = Player::online(&l1, &g1, "alice").await;
    assert_eq!(
        web.kicks_until_closed().await,
        vec![Bytes::from("logged in again")]
    );
    assert_eq!(tcp.echo("over tcp").await, "over tcp");
}

#[tokio::test]
async fn concurrent_logins_of_one_uid_leave_exactly_one_live_session() {
    let c = Cluster::start("race").await;
    let (g1, g2) = (c.gate("g1", "north").await, c.gate("g2", "south").await);
    let (l1, l2) = (c.login("l1").await, c.login("l2").await);
    let dir = c.redis.directory();
    for round in 0..25 {
        let user = format!("racer{round}");
        let mut a = Player::new(&l1, &g1, &user);
        let mut b = Player::new(&l2, &g2, &user);
        let (ra, rb) = tokio::join!(a.login(), b.login());
        let mut winners = Vec::new();
        for (who, result) in [("a", ra), ("b", rb)] {
            match result {
                Ok(subid) => winners.push((who, subid)),
                Err(ClientError::LoginRefused(s)) => {
                    assert_eq!(s, LoginStatus::NOT_ACCEPTABLE, "round {round} {who}")
                }
                Err(e) => panic!("round {round} {who}: {e}"),
            }
        }
        assert!(!winners.is_empty(), "round {round}: nobody logged in");
        // However the two interleaved, exactly one session connects: a
        // login that finished first was kicked by the second.
        let mut live = Vec::new();
        for (who, _) in &winners {
            let p = if *who == "a" { &mut a } else { &mut b };
            if p.connect().await == GateStatus::OK {
                live.push(*who);
            }
        }
        assert_eq!(live.len(), 1, "round {round}: live sessions {live:?}");
        let record = dir.record(user.as_bytes()).await.unwrap().unwrap();
        let expected = if live[0] == "a" { "north" } else { "south" };
        assert_eq!(record.server, expected, "round {round}");
    }
}

#[tokio::test]
async fn the_late_end_of_an_old_session_never_removes_a_newer_one() {
    let c = Cluster::start("late-end").await;
    let dir = c.redis.directory();
    // A new directory is fenced for a lease.
    dir.ping().await.expect("redis");
    eventually("the new directory's fence lapsed", || {
        let dir = dir.clone();
        async move { matches!(dir.fenced().await, Ok(None)) }
    })
    .await;
    let rec = |subid: &'static str| Record {
        epoch: 7,
        subid: Bytes::from_static(subid.as_bytes()),
        server: Bytes::from_static(b"north"),
    };
    let lock = Duration::from_secs(5);
    let Begin::Ready { old: None, .. } = dir.begin(b"bob", b"north", "t1", lock).await.unwrap()
    else {
        panic!("a fresh uid has no record")
    };
    assert_eq!(
        dir.commit(b"bob", &rec("1"), b"", b"t1").await.unwrap(),
        Commit::Done
    );
    // A relogin replaces subid 1 with subid 2 (expecting 1)...
    let Begin::Ready { old: Some(old), .. } =
        dir.begin(b"bob", b"north", "t2", lock).await.unwrap()
    else {
        panic!("bob has a record")
    };
    assert_eq!(old.record, Some(rec("1")));
    // ...nobody else holds the lock meanwhile...
    assert_eq!(
        dir.begin(b"bob", b"north", "t3", lock).await.unwrap(),
        Begin::Busy
    );
    assert_eq!(
        dir.commit(b"bob", &rec("2"), &old.raw, b"t2")
            .await
            .unwrap(),
        Commit::Done
    );
    // ...and the end of session 1, arriving late, removes nothing.
    assert!(!dir.end(b"bob", &rec("1")).await.unwrap());
    assert_eq!(dir.record(b"bob").await.unwrap(), Some(rec("2")));
    // A commit expecting a record that is no longer there is refused.
    assert_eq!(
        dir.commit(b"bob", &rec("3"), &old.raw, b"").await.unwrap(),
        Commit::Taken
    );
    assert!(dir.end(b"bob", &rec("2")).await.unwrap());
    assert_eq!(dir.record(b"bob").await.unwrap(), None);
}

#[tokio::test]
async fn a_killed_gate_stops_owning_its_users_when_its_lease_lapses() {
    let c = Cluster::start("kill9").await;
    let (mut g1, g2) = (c.gate("g1", "north").await, c.gate("g2", "south").await);
    let l1 = c.login("l1").await;
    let _carol = Player::online(&l1, &g1, "carol").await;
    let mut dave = Player::online(&l1, &g2, "dave").await;

    g1.proc.kill9();
    // While the dead gate's lease lives, its user cannot be placed
    // elsewhere (its old session might still exist).
    let dir = c.redis.directory();
    if dir.gate(b"north").await.unwrap().is_some() {
        let mut early = Player::new(&l1, &g2, "carol");
        let status = refused(early.login().await);
        assert_eq!(status, LoginStatus::FORBIDDEN);
    }
    eventually("the killed gate's lease lapses", || {
        let dir = dir.clone();
        async move { matches!(dir.gate(b"north").await, Ok(None)) }
    })
    .await;
    // Then carol logs in elsewhere normally; dave never noticed.
    let mut carol = Player::online(&l1, &g2, "carol").await;
    assert_eq!(carol.echo("moved").await, "moved");
    for i in 0..20 {
        assert_eq!(dave.echo(&format!("still {i}")).await, format!("still {i}"));
    }
}

#[tokio::test]
async fn a_restarted_gate_never_inherits_the_old_boots_sessions() {
    let c = Cluster::start("restart").await;
    let mut g1 = c.gate("g1", "north").await;
    let l1 = c.login("l1").await;
    let _erin = Player::online(&l1, &g1, "erin").await;
    let dir = c.redis.directory();
    let old_epoch = dir.gate(b"north").await.unwrap().unwrap().epoch;
    let erin_record = dir.record(b"erin").await.unwrap().unwrap();
    assert_eq!(erin_record.epoch, old_epoch);

    // The same node restarts at once (same node id: it takes its name over
    // without waiting for the lease).
    g1.proc.kill9();
    let g1 = c.gate("g1", "north").await;
    let new_epoch = dir.gate(b"north").await.unwrap().unwrap().epoch;
    assert_ne!(new_epoch, old_epoch);
    // The new boot sweeps the old boot's records away.
    eventually("erin's dead record swept", || {
        let dir = dir.clone();
        async move { matches!(dir.record(b"erin").await, Ok(None)) }
    })
    .await;
    // frank gets subid 1 of the new boot, the subid erin had in the old one.
    let mut frank = Player::online(&l1, &g1, "frank").await;
    assert_eq!(
        dir.record(b"frank").await.unwrap().unwrap().subid,
        erin_record.subid
    );
    // A stale record left in place (as if the sweep had not run yet) names
    // the old epoch: erin's login neither kicks frank's equal subid nor is
    // refused.
    let stale = Record {
        epoch: old_epoch,
        ..erin_record.clone()
    };
    let Begin::Ready { old: None, .. } = dir
        .begin(b"erin", b"north", "", Duration::from_secs(5))
        .await
        .unwrap()
    else {
        panic!("erin's record is gone")
    };
    assert_eq!(
        dir.commit(b"erin", &stale, b"", b"").await.unwrap(),
        Commit::Done
    );
    let mut erin = Player::online(&l1, &g1, "erin").await;
    assert_eq!(erin.echo("new boot").await, "new boot");
    assert_eq!(frank.echo("untouched").await, "untouched");
    assert_eq!(dir.record(b"erin").await.unwrap().unwrap().epoch, new_epoch);
}

#[tokio::test]
async fn a_redis_outage_keeps_sessions_working_and_refuses_logins_with_503() {
    let mut c = Cluster::start("outage").await;
    let (g1, g2) = (c.gate("g1", "north").await, c.gate("g2", "south").await);
    let l1 = c.login("l1").await;
    let mut gina = Player::online(&l1, &g1, "gina").await;

    c.redis.stop();
    for i in 0..50 {
        assert_eq!(gina.echo(&format!("up {i}")).await, format!("up {i}"));
    }
    let mut hank = Player::new(&l1, &g2, "hank");
    assert_eq!(
        refused(hank.login().await),
        LoginStatus::SERVICE_UNAVAILABLE
    );
    assert!(
        l1.proc.log().contains("session directory unreachable"),
        "the refusal is logged"
    );

    // Redis comes back empty: no node restarts, logins recover, and the
    // gates write their sessions back so a relogin still finds gina's.
    c.redis.restart().await;
    let dir = c.redis.directory();
    eventually(
        "both gates registered again, gina's record restored",
        || {
            let dir = dir.clone();
            async move {
                matches!(dir.gate(b"north").await, Ok(Some(_)))
                    && matches!(dir.gate(b"south").await, Ok(Some(_)))
                    && matches!(dir.record(b"gina").await, Ok(Some(_)))
                    // Logins of users without a record wait for the fence.
                    && matches!(dir.fenced().await, Ok(None))
            }
        },
    )
    .await;
    let mut hank = Player::online(&l1, &g2, "hank").await;
    assert_eq!(hank.echo("after").await, "after");
    assert_eq!(gina.echo("still").await, "still");
    let _gina_again = Player::online(&l1, &g2, "gina").await;
    assert_eq!(
        gina.kicks_until_closed().await,
        vec![Bytes::from("logged in again")]
    );
}

/// Redis comes back empty while users log in again through another gate
/// that re-registered first: until the fence lapses (and the old gate
/// has written its sessions back) those logins get `503`, never a second
/// session; then each one kicks the old session before it is answered.
#[tokio::test]
async fn after_redis_lost_its_data_no_uid_ever_has_two_live_sessions() {
    let mut c = Cluster::start("fence").await;
    let (g1, g2) = (c.gate("g1", "north").await, c.gate("g2", "south").await);
    let l1 = c.login("l1").await;
    let users: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
    let mut old = Vec::new();
    for user in &users {
        old.push(Player::online(&l1, &g1, user).await);
    }
    c.redis.stop();
    c.redis.restart().await;
    let dir = c.redis.directory();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (user, old) in users.iter().zip(old.iter_mut()) {
        let mut again = Player::new(&l1, &g2, user);
        guard("a fenced login gets through", async {
            loop {
                match again.login().await {
                    Ok(_) => break,
                    Err(ClientError::LoginRefused(status)) => {
                        *statuses.entry(status.code()).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("{user}: {e}"),
                }
            }
        })
        .await;
        old.assert_gone(user).await;
        assert_eq!(again.connect().await, GateStatus::OK);
        assert_eq!(again.echo("moved").await, "moved");
    }
    assert!(
        statuses.keys().all(|&code| code == 503),
        "only 503 while fenced: {statuses:?}"
    );
    assert!(
        statuses.get(&503).copied().unwrap_or(0) > 0,
        "the first login came while the fence was up"
    );
    assert!(
        l1.proc.log().contains("being restored") || g1.proc.log().contains("restoring"),
        "the fence is logged"
    );
    for user in &users {
        let record = dir.record(user.as_bytes()).await.unwrap().unwrap();
        assert_eq!(record.server, Bytes::from_static(b"south"), "{user}");
    }
}

/// Redis restarts from an older file, whose records name the gate the
/// users have left: a login through that gate must not trust them. Every
/// login waits for the fence, the live gate writes its sessions back over
/// the stale records, and each relogin then kicks the live session first.
#[tokio::test]
async fn stale_records_after_a_restart_from_an_older_file_make_no_second_session() {
    let mut c = Cluster::start("stale").await;
    let (g1, g2) = (c.gate("g1", "north").await, c.gate("g2", "south").await);
    let l1 = c.login("l1").await;
    let users: Vec<String> = (0..4).map(|i| format!("stale{i}")).collect();
    for user in &users {
        let _ = Player::online(&l1, &g1, user).await;
    }
    // The file remembers them on north...
    assert!(redis_cli(c.redis.port, &["SAVE"]).await.is_some(), "SAVE");
    // ...then they move to south, and Redis restarts from the file.
    let mut on_south = Vec::new();
    for user in &users {
        on_south.push(Player::online(&l1, &g2, user).await);
    }
    c.redis.stop();
    c.redis.restart().await;
    let dir = c.redis.directory();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (user, live) in users.iter().zip(on_south.iter_mut()) {
        let mut back = Player::new(&l1, &g1, user);
        guard("a login after the restart", async {
            loop {
                match back.login().await {
                    Ok(_) => break,
                    Err(ClientError::LoginRefused(status)) => {
                        *statuses.entry(status.code()).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("{user}: {e}"),
                }
            }
        })
        .await;
        live.assert_gone(user).await;
        assert_eq!(back.connect().await, GateStatus::OK);
        let record = dir.record(user.as_bytes()).await.unwrap().unwrap();
        assert_eq!(record.server, Bytes::from_static(b"north"), "{user}");
    }
    assert!(
        statuses.keys().all(|&code| code == 503),
        "only 503 while fenced: {statuses:?}"
    );
}

/// Redis behind Sentinel: `kill -9` of the master while players play.
/// Established sessions never notice; logins get `503` until the
/// Sentinels have promoted the replica, then resume by themselves, the
/// fence keeping any login that needs a possibly lost record out until
/// the gates have written theirs back; a relogin always kicks the old
/// session first, and afterwards every record names the gate its uid is
/// on.
#[tokio::test]
async fn a_sentinel_failover_loses_no_session_and_makes_no_second_one() {
    let mut c = Cluster::with_sentinels("sentinel").await;
    let (g1, g2) = (c.gate("g1", "north").await, c.gate("g2", "south").await);
    let l1 = c.login("l1").await;
    let users: Vec<String> = (0..6).map(|i| format!("user{i}")).collect();
    let mut old = Vec::new();
    for user in &users {
        old.push(Player::online(&l1, &g1, user).await);
    }
    let mut stayer = Player::online(&l1, &g2, "stayer").await;

    let killed = std::time::Instant::now();
    c.redis.stop();
    for (i, p) in old.iter_mut().enumerate() {
        assert_eq!(p.echo(&format!("during {i}")).await, format!("during {i}"));
    }
    assert_eq!(stayer.echo("during").await, "during");

    // Each user logs in again on the other gate, retrying refusals.
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut first_login = None;
    for (user, old) in users.iter().zip(old.iter_mut()) {
        let mut again = Player::new(&l1, &g2, user);
        guard("a login after the failover", async {
            loop {
                match again.login().await {
                    Ok(_) => break,
                    Err(ClientError::LoginRefused(status)) => {
                        *statuses.entry(status.code()).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("{user}: {e}"),
                }
            }
        })
        .await;
        first_login.get_or_insert_with(|| killed.elapsed());
        old.assert_gone(user).await;
        assert_eq!(again.connect().await, GateStatus::OK);
        assert_eq!(again.echo("moved").await, "moved");
        assert_eq!(stayer.echo("still").await, "still");
    }
    eprintln!(
        "first login {:?} after the master was killed; refusals {statuses:?}",
        first_login.unwrap_or_default()
    );
    assert!(
        statuses.keys().all(|&code| code == 503),
        "only 503 while the master is away or fenced: {statuses:?}"
    );
    // A user who never logged in before gets in too.
    eventually("a new user logs in", || async {
        let mut p = Player::new(&l1, &g1, "newcomer");
        p.login().await.is_ok()
    })
    .await;
    let dir = c.directory();
    for user in &users {
        let record = dir.record(user.as_bytes()).await.unwrap().unwrap();
        assert_eq!(record.server, Bytes::from_static(b"south"), "{user}");
    }
    let record = dir.record(b"stayer").await.unwrap().unwrap();
    assert_eq!(record.server, Bytes::from_static(b"south"));
}

#[tokio::test]
async fn pushes_and_kicks_from_a_service_reach_users_on_any_gate() {
    let c = Cluster::start("push").await;
    let g1 = c.gate_with("g1", "north", &c.secret, true).await;
    let g2 = c.gate_with("g2", "south", &c.secret, true).await;
    let l1 = c.login("l1").await;
    let running = Running::linked(echo_service(&[&g1, &g2], &c.secret, None), 2).await;
    let gates = running.gates.clone();

    let mut ivy = Player::online(&l1, &g1, "ivy").await;
    let mut jim = Player::online(&l1, &g2, "jim").await;
    assert_eq!(ivy.echo("via service").await, "via service");

    gates.push("jim", "to jim").await.unwrap();
    assert_eq!(
        jim.next_message().await,
        Some((ResponseFlag::PUSH, Bytes::from("to jim")))
    );
    gates.push_all("to all").await.unwrap();
    for p in [&mut ivy, &mut jim] {
        assert_eq!(
            p.next_message().await,
            Some((ResponseFlag::PUSH, Bytes::from("to all")))
        );
    }
    gates.kick("jim", "bye jim").await.unwrap();
    assert_eq!(jim.kicks_until_closed().await, vec![Bytes::from("bye jim")]);
    let dir = c.redis.directory();
    eventually("jim's record removed", || {
        let dir = dir.clone();
        async move { matches!(dir.record(b"jim").await, Ok(None)) }
    })
    .await;
    assert_eq!(ivy.echo("ivy stays").await, "ivy stays");
    running.stop().await;
}

#[tokio::test]
async fn a_node_with_a_wrong_secret_is_refused_and_nothing_reaches_it() {
    let c = Cluster::start("secret").await;
    let g1 = c.gate("g1", "north").await;
    let wrong = c.dir.join("wrong");
    std::fs::write(&wrong, "a different secret, 32 bytes long").unwrap();
    let bad = c.login_with("intruder", &wrong).await;
    let mut p = Player::new(&bad, &g1, "kim");
    assert_eq!(refused(p.login().await), LoginStatus::FORBIDDEN);
    eventually("the gate logs the refusal", || {
        let log = g1.proc.log();
        async move {
            // Refusals before the proof are summarised, not logged each.
            log.contains("unauthenticated links in the last second")
                && log.contains("listener=control")
                && log.contains("unauthenticated=1")
        }
    })
    .await;
    assert!(bad.proc.log().contains("refused the control link"));
    assert_eq!(c.redis.directory().record(b"kim").await.unwrap(), None);

    // A gate with the wrong secret: the login node will not trust it.
    let g2 = c.gate_with("g2", "south", &wrong, false).await;
    let l1 = c.login("l1").await;
    let mut p = Player::new(&l1, &g2, "kim");
    assert_eq!(refused(p.login().await), LoginStatus::FORBIDDEN);
    // The honest pair still works.
    let mut ok = Player::online(&l1, &g1, "kim").await;
    assert_eq!(ok.echo("fine").await, "fine");
}

/// Writes a CA and a certificate for 127.0.0.1 signed by it into `dir`;
/// returns (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

/// A config file with these `[cluster]` lines.
fn cluster_config(dir: &Path, name: &str, lines: &[String]) -> Vec<String> {
    config_file(dir, name, "cluster", lines)
}

/// A config file with these lines in `[section]`.
fn config_file(dir: &Path, name: &str, section: &str, lines: &[String]) -> Vec<String> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("[{section}]\n{}\n", lines.join("\n"))).unwrap();
    vec!["--config".into(), path.to_str().unwrap().into()]
}

/// A running service, linked to as many gates as it was given.
struct Running {
    gates: service::Gates,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), service::ServiceError>>,
}

impl Running {
    /// Runs `service` until every one of its `links` gates has it linked.
    async fn linked<H: service::Handler>(service: service::Service<H>, links: usize) -> Running {
        let gates = service.gates();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(service.run(stop.clone()));
        eventually(&format!("the service linked to {links} gate(s)"), || {
            let gates = gates.clone();
            async move { gates.connected() == links }
        })
        .await;
        Running { gates, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// The `agent` service, echoing, linked to each of `gates`.
fn echo_service(
    gates: &[&GateNode],
    secret: &Path,
    tls: Option<&Path>,
) -> service::Service<impl service::Handler> {
    let mut builder = service::Service::builder("agent")
        .link_secret(proto::link_auth::LinkSecret::from_file(secret).unwrap())
        .connect_timeout(Duration::from_secs(2));
    for gate in gates {
        builder = builder.gate(gate.backend.to_string());
    }
    if let Some(ca) = tls {
        builder = builder.tls(service::LinkTls::from_ca_file(ca).unwrap());
    }
    builder
        .build(service::handler_fn(
            |_ctx: service::Context, req: service::Request| async move { Ok(req.payload) },
        ))
        .unwrap()
}

/// A service given one seed gate: a gate that joins the cluster later is
/// found and served without restarting the service; a push by uid goes to
/// the one gate that holds the user; a gate that leaves (killed: its lease
/// lapses) is dropped.
#[tokio::test]
async fn services_find_gates_that_join_and_drop_gates_that_leave() {
    let c = Cluster::start("discovery").await;
    let g1 = c.gate_with("g1", "north", &c.secret, true).await;
    let l1 = c.login("l1").await;
    let running = Running::linked(echo_service(&[&g1], &c.secret, None), 1).await;
    let gates = running.gates.clone();

    let mut g2 = c.gate_with("g2", "south", &c.secret, true).await;
    eventually("the service linked to the gate that joined", || {
        let gates = gates.clone();
        async move { gates.connected() == 2 }
    })
    .await;
    let mut jim = Player::online(&l1, &g2, "jim").await;
    assert_eq!(jim.echo("via a found gate").await, "via a found gate");
    let mut ivy = Player::online(&l1, &g1, "ivy").await;
    assert_eq!(ivy.echo("via the seed").await, "via the seed");
    // The service (jim's agent) saw his login on south: one gate.
    assert_eq!(gates.push("jim", "to jim").await, Ok(1));
    assert_eq!(
        jim.next_message().await,
        Some((ResponseFlag::PUSH, Bytes::from("to jim")))
    );
    assert_eq!(gates.push_all("to all").await, Ok(2));
    assert_eq!(
        ivy.next_message().await,
        Some((ResponseFlag::PUSH, Bytes::from("to all")))
    );

    g2.proc.kill9();
    eventually("the service dropped the gate that left", || {
        let gates = gates.clone();
        async move { gates.iter().count() == 1 }
    })
    .await;
    assert_eq!(
        gates.iter().next().map(|g| g.addr().to_owned()),
        Some(g1.backend.to_string())
    );
    assert_eq!(ivy.echo("still served").await, "still served");
    running.stop().await;
}

#[tokio::test]
async fn control_links_run_over_tls_when_configured() {
    let c = Cluster::start("tls").await;
    let (ca, cert, key) = certificates(&c.dir, "good");
    let (other_ca, _, _) = certificates(&c.dir, "other");
    let gate_tls = cluster_config(
        &c.dir,
        "gate-tls",
        &[
            format!("tls_cert_file = {:?}", cert.to_str().unwrap()),
            format!("tls_key_file = {:?}", key.to_str().unwrap()),
        ],
    );
    let g1 = c
        .gate_full("g1", "north", &c.secret, false, &gate_tls)
        .await;
    let trusting = cluster_config(
        &c.dir,
        "login-tls",
        &[format!("tls_ca_file = {:?}", ca.to_str().unwrap())],
    );
    let l1 = c.login_full("l1", &c.secret, &trusting).await;
    let mut p = Player::online(&l1, &g1, "liz").await;
    assert_eq!(p.echo("over tls").await, "over tls");
    assert!(l1.proc.log().contains("control link up"));

    // A login node trusting another CA does not talk to the gate, and a
    // plain-TCP login node cannot speak to a TLS listener.
    let distrusting = cluster_config(
        &c.dir,
        "login-other",
        &[format!("tls_ca_file = {:?}", other_ca.to_str().unwrap())],
    );
    let l2 = c.login_full("l2", &c.secret, &distrusting).await;
    let mut p = Player::new(&l2, &g1, "max");
    assert_eq!(refused(p.login().await), LoginStatus::FORBIDDEN);
    assert!(l2.proc.log().contains("TLS"), "{}", l2.proc.log());
    let l3 = c.login("l3").await;
    let mut p = Player::new(&l3, &g1, "max");
    assert_eq!(refused(p.login().await), LoginStatus::FORBIDDEN);
    eventually("the gate logs the failed TLS handshake", || {
        let log = g1.proc.log();
        async move { log.contains("listener=control") && log.contains("tls=1") }
    })
    .await;
    assert_eq!(c.redis.directory().record(b"max").await.unwrap(), None);
}

#[tokio::test]
async fn backend_links_run_over_tls_when_configured() {
    let c = Cluster::start("backend-tls").await;
    let (ca, cert, key) = certificates(&c.dir, "good");
    let (other_ca, _, _) = certificates(&c.dir, "other");
    let tls = config_file(
        &c.dir,
        "backend-tls",
        "backend",
        &[
            format!("tls_cert_file = {:?}", cert.to_str().unwrap()),
            format!("tls_key_file = {:?}", key.to_str().unwrap()),
        ],
    );
    let g1 = c.gate_full("g1", "north", &c.secret, true, &tls).await;
    let l1 = c.login("l1").await;

    // A service that does not trust the gate's CA, and one that speaks
    // plain TCP, never link; the gate logs each failed handshake.
    for (i, ca) in [Some(other_ca.as_path()), None].into_iter().enumerate() {
        let service = echo_service(&[&g1], &c.secret, ca);
        let gates = service.gates();
        let running = tokio::spawn(service.run(tokio_util::sync::CancellationToken::new()));
        eventually("the gate logs a failed TLS handshake", || {
            let log = g1.proc.log();
            // One summary line per second at most: each attempt waits for
            // the line after the previous attempt's.
            async move { log.matches("refused 1 unauthenticated links").count() > i }
        })
        .await;
        assert_eq!(gates.connected(), 0);
        running.abort();
    }

    let running = Running::linked(echo_service(&[&g1], &c.secret, Some(&ca)), 1).await;
    let gates = running.gates.clone();
    let mut p = Player::online(&l1, &g1, "nia").await;
    assert_eq!(p.echo("through tls").await, "through tls");
    gates.push("nia", "pushed over tls").await.unwrap();
    assert_eq!(
        p.next_message().await,
        Some((ResponseFlag::PUSH, Bytes::from("pushed over tls")))
    );
    running.stop().await;
}

#[tokio::test]
async fn chat_reaches_members_on_every_gate() {
    let c = Cluster::start("chat").await;
    let route_mode = ["--route-mode".to_owned()];
    let g1 = c
        .gate_full("g1", "north", &c.secret, true, &route_mode)
        .await;
    let g2 = c
        .gate_full("g2", "south", &c.secret, true, &route_mode)
        .await;
    let g3 = c
        .gate_full("g3", "east", &c.secret, true, &route_mode)
        .await;
    let (l1, l2) = (c.login("l1").await, c.login("l2").await);
    let mut builder = service::Service::builder("chat")
        .link_secret(proto::link_auth::LinkSecret::from_file(&c.secret).unwrap())
        .routes(["chat.join", "chat.say", "chat.leave"])
        .all_session_events(true);
    for g in [&g1, &g2, &g3] {
        builder = builder.gate(g.backend.to_string());
    }
    let running = Running::linked(builder.build(chat::Chat::default()).unwrap(), 3).await;

    let mut players = vec![
        Player::online(&l1, &g1, "olga").await,
        Player::online(&l2, &g2, "pete").await,
        Player::online(&l1, &g3, "quin").await,
    ];
    for (i, p) in players.iter_mut().enumerate() {
        let joined = p.route("chat.join", "tavern").await;
        assert_eq!(joined, format!("joined tavern ({} members)", i + 1));
    }
    assert_eq!(
        players[1].route("chat.say", "hello from the south").await,
        "sent"
    );
    // Join notices come first (some may have arrived with the answers).
    let line = Bytes::from("[tavern] pete: hello from the south");
    for p in &mut players {
        loop {
            match p.next_message().await {
                Some((ResponseFlag::PUSH, text)) if text == line => break,
                Some((ResponseFlag::PUSH, text)) if text.starts_with(b"* ") => {}
                other => panic!("expected the chat line, got {other:?}"),
            }
        }
    }
    running.stop().await;
}

#[tokio::test]
async fn the_login_queue_is_shared_by_every_login_node() {
    let c = Cluster::start("queue").await;
    let g1 = c.gate("g1", "north").await;
    // Five logins a second for the whole cluster, one at once.
    let queue = config_file(
        &c.dir,
        "queue",
        "login",
        &[
            "admission_rate = 5".into(),
            "admission_burst = 1".into(),
            "max_connections_per_source = 0".into(),
        ],
    );
    let (l1, l2) = (
        c.login_full("l1", &c.secret, &queue).await,
        c.login_full("l2", &c.secret, &queue).await,
    );
    let logins = (0..10).map(|i| {
        let login = if i % 2 == 0 { &l1 } else { &l2 };
        let addr = login.addr.to_string();
        let server = g1.name.clone();
        tokio::spawn(async move {
            let creds = loginproto::token::Credentials::new(
                format!("crowd{i}").as_bytes(),
                server.as_bytes(),
                b"password",
            );
            client_cli::login::login_queued(&addr, Suite::X25519, creds, None, GUARD).await
        })
    });
    let mut numbers = Vec::new();
    for login in logins.collect::<Vec<_>>() {
        let (_, wait) = guard("a queued login", login)
            .await
            .unwrap()
            .expect("login");
        numbers.extend(wait.number);
    }
    // Tickets come from one counter: no number twice, whichever node the
    // login went through, and as many as logins that waited.
    numbers.sort_unstable();
    let before = numbers.len();
    numbers.dedup();
    assert_eq!(
        numbers.len(),
        before,
        "a ticket handed out twice: {numbers:?}"
    );
    assert!(before >= 5, "most of the crowd waited: {numbers:?}");
    let tail = Command::new("redis-cli")
        .args([
            "-p",
            &c.redis.port.to_string(),
            "hget",
            "gate:queue",
            "tail",
        ])
        .output()
        .expect("redis-cli");
    let tail: u64 = String::from_utf8_lossy(&tail.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(tail, before as u64);
    assert_eq!(numbers.last().copied(), Some(tail));
}

#[tokio::test]
async fn a_gate_node_reports_redis_in_its_metrics_and_readiness() {
    let mut c = Cluster::start("ops").await;
    let ops = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let g1 = c
        .gate_full(
            "g1",
            "north",
            &c.secret,
            false,
            &["--ops-listen".into(), ops.to_string()],
        )
        .await;
    let l1 = c.login("l1").await;
    let _p = Player::online(&l1, &g1, "ops").await;
    let get = |call| async move {
        client_cli::admin::call(&client_cli::admin::AdminCmd {
            addr: ops.to_string(),
            token_file: None,
            timeout: 10,
            call,
        })
        .await
        .expect("the operations listener answers")
    };
    let scrape = get(client_cli::admin::AdminCall::Metrics).await.body;
    let count = scrape
        .lines()
        .find_map(|l| l.strip_prefix("gate_redis_op_duration_seconds_count "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        count >= 2.0,
        "registration and the login's commit:\n{scrape}"
    );
    let ready = |addr: SocketAddr| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    assert!(ready(ops).await.starts_with("HTTP/1.1 200"));
    c.redis.stop();
    eventually("readyz says Redis is gone", || async move {
        ready(ops).await.starts_with("HTTP/1.1 503")
    })
    .await;
}

#[tokio::test]
async fn admin_user_calls_work_on_any_node() {
    let c = Cluster::start("admin").await;
    let token = c.dir.join("admin.token");
    std::fs::write(&token, "a cluster admin token for tests\n").unwrap();
    let ops_flags = |addr: SocketAddr| {
        vec![
            "--ops-listen".to_owned(),
            addr.to_string(),
            "--admin-token-file".to_owned(),
            token.to_str().unwrap().to_owned(),
        ]
    };
    let (ops1, ops2, ops_login) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let _g1 = c
        .gate_full("g1", "north", &c.secret, false, &ops_flags(ops1))
        .await;
    let g2 = c
        .gate_full("g2", "south", &c.secret, false, &ops_flags(ops2))
        .await;
    let l1 = c.login_full("l1", &c.secret, &ops_flags(ops_login)).await;
    port_open(ops_login).await;
    let mut alice = Player::online(&l1, &g2, "alice").await;
    let admin = |addr: SocketAddr, call| {
        let token = token.clone();
        async move {
            client_cli::admin::call(&client_cli::admin::AdminCmd {
                addr: addr.to_string(),
                token_file: Some(token),
                timeout: 10,
                call,
            })
            .await
            .expect("the operations listener answers")
        }
    };
    use client_cli::admin::AdminCall;

    // Asked on the login node and on the other gate: the answer is g2's.
    for addr in [ops_login, ops1] {
        let answer = admin(
            addr,
            AdminCall::User {
                uid: "alice".into(),
            },
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(
            answer.body.contains(r#""server":"south""#),
            "{}",
            answer.body
        );
        assert!(
            answer.body.contains(r#""phase":"connected""#),
            "{}",
            answer.body
        );
    }
    let answer = admin(
        ops1,
        AdminCall::Push {
            uid: "alice".into(),
            text: "pushed from north".into(),
        },
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        alice.next_message().await,
        Some((ResponseFlag::PUSH, Bytes::from("pushed from north")))
    );
    let answer = admin(
        ops_login,
        AdminCall::Kick {
            uid: "alice".into(),
            reason: "from the login node".into(),
        },
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        alice.kicks_until_closed().await,
        vec![Bytes::from("from the login node")]
    );
    // A forwarded call keeps its token: a wrong one is refused on the way.
    let wrong = c.dir.join("wrong.token");
    std::fs::write(&wrong, "not the cluster admin token....\n").unwrap();
    let answer = client_cli::admin::call(&client_cli::admin::AdminCmd {
        addr: ops1.to_string(),
        token_file: Some(wrong),
        timeout: 10,
        call: AdminCall::User {
            uid: "alice".into(),
        },
    })
    .await
    .unwrap();
    assert_eq!(answer.status, 401);
}

/// The `sh` block of the README's "Cluster" section.
fn readme_cluster_recipe() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split_once("\n## Cluster\n")
        .expect("a Cluster section")
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("a sh block in the Cluster section")
        .1;
    block
        .split_once("\n```")
        .expect("the block's end")
        .0
        .to_owned()
}

/// Every port the recipe names (`127.0.0.1:PORT`, `--port PORT`), mapped
/// to a free one, so the recipe runs beside other tests and services.
fn with_free_ports(text: &str) -> String {
    let mut ports = std::collections::HashMap::<String, u16>::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = ["127.0.0.1:", "--port "]
            .iter()
            .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
            .min();
        let Some((at, len)) = next else {
            out.push_str(rest);
            return out;
        };
        let start = at + len;
        let digits = rest[start..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(rest.len() - start, |n| n);
        out.push_str(&rest[..start]);
        let port = &rest[start..start + digits];
        if port.is_empty() {
            rest = &rest[start..];
            continue;
        }
        let free = *ports.entry(port.to_owned()).or_insert_with(free_port);
        out.push_str(&free.to_string());
        rest = &rest[start + digits..];
    }
}

/// The README's cluster recipe, run as written (ports made free, the
/// binaries of this build instead of a release build): Redis, two gate
/// nodes, two login nodes and the echo service come up, and the player
/// of its last line logs in where that line says and plays, over TCP;
/// a WebSocket login on the other login node works too.
#[tokio::test]
async fn the_readme_cluster_recipe_runs_as_written() {
    let bin = Path::new(env!("CARGO_BIN_EXE_gate"))
        .parent()
        .expect("target dir")
        .to_owned();
    let echo = bin.join("examples").join("echo");
    assert!(
        echo.exists(),
        "{} is missing: build the examples first (`cargo build --examples`; .ci/run does)",
        echo.display()
    );
    let text = with_free_ports(&readme_cluster_recipe());
    let mut lines: Vec<&str> = text.lines().collect();
    let client = lines.pop().expect("a last line").to_owned();
    assert!(client.contains("client shell"), "{client}");
    let script: String = lines
        .iter()
        .filter(|l| !l.starts_with("cargo build"))
        .map(|l| {
            if l.starts_with("B=") {
                format!("B={}\n", bin.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let dir = Scratch::new("cluster-readme");
    std::fs::write(dir.join("recipe.sh"), format!("set -e\n{script}")).expect("script");
    /// Kills the recipe's processes (its process group) when dropped.
    struct Group(rustix::process::Pid);
    impl Drop for Group {
        fn drop(&mut self) {
            let _ = rustix::process::kill_process_group(self.0, rustix::process::Signal::KILL);
        }
    }
    use std::os::unix::process::CommandExt;
    // A group of its own (bash leads it): what it starts in the background
    // stays in it, and goes with it at the end.
    let mut recipe = Command::new("bash")
        .arg("recipe.sh")
        .current_dir(&dir)
        .process_group(0)
        .stdout(std::fs::File::create(dir.join("recipe.log")).expect("log"))
        .stderr(std::fs::File::create(dir.join("recipe.err")).expect("log"))
        .spawn()
        .expect("bash");
    let _group = Group(
        rustix::process::Pid::from_raw(i32::try_from(recipe.id()).expect("a pid"))
            .expect("not 0: never the caller's own group"),
    );
    let status = recipe.wait().expect("bash");
    assert!(
        status.success(),
        "the recipe failed: {status}: {}",
        std::fs::read_to_string(dir.join("recipe.err")).unwrap_or_default()
    );

    let arg = |name: &str| {
        let words: Vec<&str> = client.split_whitespace().collect();
        let at = words.iter().position(|w| *w == name).expect(name);
        words[at + 1].to_owned()
    };
    let (login, gate, server, user) = (
        arg("--login"),
        arg("--gate"),
        arg("--server"),
        arg("--user"),
    );
    let mut player = guard("the recipe's player logs in", async {
        loop {
            let mut p = Player::at(login.clone(), gate.clone(), &server, &user);
            if p.login().await.is_ok() && p.connect().await == GateStatus::OK {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // The echo service links to the gate in its own time.
    guard("the echo service answers", async {
        loop {
            let number = player
                .s
                .send(None, Bytes::from_static(b"hello"))
                .await
                .expect("send");
            let answer = loop {
                match guard("an answer", player.s.recv()).await.expect("recv") {
                    Event::Message(m) if m.response.number == number => break m.response,
                    Event::Closed => panic!("closed"),
                    _ => {}
                }
            };
            if answer.flag == ResponseFlag::OK {
                assert_eq!(answer.content, Bytes::from_static(b"hello"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // The registry publishes where each gate serves TCP and WebSocket
    // players; a browser-style player logs in over WebSocket on the other
    // login node and plays on the published WebSocket address.
    let word_after = |line_with: &str, flag: &str| {
        let line = text
            .lines()
            .find(|l| l.contains(line_with))
            .unwrap_or_else(|| panic!("a line with {line_with}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == flag).expect(flag);
        words[at + 1].trim_matches('"').to_owned()
    };
    let dir = Directory::new(&DirectoryOptions {
        url: word_after("C=", "C=\"--redis"),
        prefix: "gate:".into(),
        timeout: Duration::from_secs(1),
        fence: Duration::from_secs(1), // LEASE
    })
    .expect("directory");
    let south = dir
        .gate(server.as_bytes())
        .await
        .unwrap()
        .expect("registered");
    assert_eq!(south.client, gate);
    assert_eq!(
        south.web,
        format!("ws://{}", word_after("--name south", "--web-gate-listen"))
    );
    let web_login = format!("ws://{}", word_after("--node-id l1", "--web-login-listen"));
    let mut browser = Player::at(web_login, south.web.clone(), &server, "bob");
    browser.login().await.expect("a WebSocket login");
    assert_eq!(browser.connect().await, GateStatus::OK);
    assert_eq!(browser.echo("over WebSocket").await, "over WebSocket");
}

/// A gate node upgraded in place (`--upgrade-socket`, then a new process
/// with `--takeover`) while a login node places users on it: the players
/// keep their connections, every login made meanwhile gets in (none is
/// refused), the registry entry and the directory records keep the node's
/// epoch, and a relogin afterwards kicks the moved session exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_node_upgraded_while_logins_go_on_keeps_every_session() {
    let c = Cluster::start("upgrade").await;
    let socket = c.dir.join("upgrade.sock");
    let socket_arg = socket.to_str().expect("utf-8").to_owned();
    let g1 = c
        .gate_full(
            "g1",
            "north",
            &c.secret,
            false,
            &["--upgrade-socket".into(), socket_arg.clone()],
        )
        .await;
    let l1 = c.login("l1").await;
    let dir = c.redis.directory();
    let epoch = dir.gate(b"north").await.unwrap().unwrap().epoch;
    let mut players = Vec::new();
    for i in 0..100 {
        let mut p = Player::online(&l1, &g1, &format!("p{i}")).await;
        assert_eq!(p.echo("before").await, "before");
        players.push(p);
    }
    eventually("the gate serves live upgrades", || {
        let log = g1.proc.log();
        async move { log.contains("serving live upgrades") }
    })
    .await;

    let mut args = g1.args.clone();
    args.extend(["--takeover".into(), socket_arg]);
    let new = c.node("g1-new", &args);
    let upgraded = std::sync::atomic::AtomicBool::new(false);
    // Four login loops, one login after another each, until the new
    // process serves, and a few more.
    let logins = |lane: usize| {
        let (l1, g1, upgraded) = (&l1, &g1, &upgraded);
        async move {
            let (mut after, mut placed) = (0, Vec::new());
            while after < 2 {
                if upgraded.load(std::sync::atomic::Ordering::Acquire) {
                    after += 1;
                }
                let user = format!("late{lane}-{}", placed.len());
                let mut p = Player::new(l1, g1, &user);
                p.login()
                    .await
                    .unwrap_or_else(|e| panic!("{user}: a login during the upgrade: {e}"));
                placed.push(p);
            }
            placed
        }
    };
    let ((), a, b, c2, d) = tokio::join!(
        async {
            eventually("the new process serves", || {
                let log = new.log();
                async move { log.contains("live upgrade: this process serves") }
            })
            .await;
            upgraded.store(true, std::sync::atomic::Ordering::Release);
        },
        logins(0),
        logins(1),
        logins(2),
        logins(3),
    );
    let mut late: Vec<Player> = [a, b, c2, d].into_iter().flatten().collect();
    let mut old = g1;
    let status = guard("the old process exits", async {
        loop {
            if let Some(status) = old.proc.child.try_wait().expect("wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(status.success(), "the old process exits cleanly: {status}");
    old.proc = new;
    let g1 = old;
    assert!(late.len() > 8, "logins went on during the upgrade");
    eprintln!("late logins: {}", late.len());
    for p in &mut late {
        assert_eq!(p.connect().await, GateStatus::OK);
        assert_eq!(p.echo("late").await, "late");
    }
    for p in &mut players {
        assert_eq!(p.echo("after").await, "after");
        assert_eq!(p.s.next_index(), 2, "never reconnected");
    }
    let entry = dir.gate(b"north").await.unwrap().unwrap();
    assert_eq!(entry.epoch, epoch, "the node keeps its epoch");
    assert!(!entry.draining);
    let record = dir.record(b"p0").await.unwrap().unwrap();
    assert_eq!(
        (record.server.as_ref(), record.epoch),
        (&b"north"[..], epoch)
    );
    // A relogin ends the moved session, once.
    let mut again = Player::online(&l1, &g1, "p0").await;
    assert_eq!(
        players[0].kicks_until_closed().await,
        vec![Bytes::from("logged in again")]
    );
    assert_eq!(again.echo("again").await, "again");
    assert!(
        !g1.proc.log().contains("login user=p"),
        "no player logged in again"
    );
}

/// A login node upgraded in place while logins wait in its queue: the new
/// process takes the listener and serves new logins at once, the old one
/// finishes every login it had started, queued ones included, then exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_node_upgraded_with_logins_queued_loses_none() {
    let c = Cluster::start("login-upgrade").await;
    let g1 = c.gate("g1", "north").await;
    let socket = c.dir.join("login-upgrade.sock");
    let socket_arg = socket.to_str().expect("utf-8").to_owned();
    // Four logins a second, one at once: a crowd queues.
    let mut extra = config_file(
        &c.dir,
        "queue",
        "login",
        &[
            "admission_rate = 4".into(),
            "admission_burst = 1".into(),
            "max_connections_per_source = 0".into(),
        ],
    );
    extra.extend(["--upgrade-socket".into(), socket_arg.clone()]);
    let l1 = c.login_full("l1", &c.secret, &extra).await;
    eventually("the login node serves live upgrades", || {
        let log = l1.proc.log();
        async move { log.contains("serving live upgrades") }
    })
    .await;
    let crowd: Vec<_> = (0..10)
        .map(|i| {
            let addr = l1.addr.to_string();
            let server = g1.name.clone();
            tokio::spawn(async move {
                let creds = loginproto::token::Credentials::new(
                    format!("crowd{i}").as_bytes(),
                    server.as_bytes(),
                    b"password",
                );
                client_cli::login::login_queued(&addr, Suite::X25519, creds, None, GUARD).await
            })
        })
        .collect();
    // Several are waiting in the queue.
    let port = c.redis.port;
    eventually("logins queued", || async move {
        redis_cli(port, &["hget", "gate:queue", "tail"])
            .await
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|tail| tail >= 5)
    })
    .await;
    let mut args = l1.args.clone();
    args.extend(["--takeover".into(), socket_arg]);
    let new = c.node("l1-new", &args);
    eventually("the new process serves", || {
        let log = new.log();
        async move { log.contains("live upgrade: this process serves") }
    })
    .await;
    // A login now goes to the new process, and plays.
    let mut late = Player::online(&l1, &g1, "late").await;
    assert_eq!(late.echo("late").await, "late");
    // Every login of the crowd gets in.
    for (i, login) in crowd.into_iter().enumerate() {
        guard("a queued login", login)
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("crowd{i}: {e}"));
    }
    let mut old = l1;
    let status = guard("the old process exits", async {
        loop {
            if let Some(status) = old.proc.child.try_wait().expect("wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(status.success(), "the old process exits cleanly: {status}");
    assert!(old.proc.log().contains("handed over"), "{}", old.proc.log());
    assert!(
        new.log().contains("login user=late"),
        "the new process served the late login: {}",
        new.log()
    );
}
