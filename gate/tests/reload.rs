//! Configuration reload of a running gate process (the `gate` binary),
//! over real sockets: SIGHUP and `POST /admin/reload` read the config
//! file again and apply what can change live (accounts, limits, the log
//! format, the TLS certificate), all or nothing; a changed field that
//! cannot change live, or a file that does not parse, is refused with a
//! log line naming why, and the running configuration stays as it was.
//! Players connected across a reload keep their connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use client_cli::ClientError;
use client_cli::gate::Extensions;
use client_cli::session::{ConnectSpec, Event, LoginOverrides};
use client_cli::{Session, SessionConfig};
use codec::message::ResponseFlag;
use codec::status::GateStatus;
use loginproto::login::Suite;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
use ports::free_addr;
use scratch::Scratch;

/// An argon2 hash cheap enough for tests.
fn hash(password: &str) -> String {
    gate::login::auth::hash_password_with(password.as_bytes(), 8, 1, 1).expect("hash")
}

/// A gate process, killed when dropped.
struct Gate {
    child: Child,
    log: PathBuf,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gate {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `what` at least `times` times.
    async fn logged(&self, what: &str, times: usize) -> String {
        guard(&format!("the log says {what:?} {times} times"), async {
            loop {
                let log = self.log();
                if log.matches(what).count() >= times {
                    return log;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Sends SIGHUP to this process (its own pid, nothing else).
    fn hangup(&self) {
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

/// One test's files and addresses.
struct Setup {
    dir: Scratch,
    config: PathBuf,
    accounts: PathBuf,
    login: SocketAddr,
    gate: SocketAddr,
    ops: SocketAddr,
    token: String,
    /// With WebSocket listeners: (login, gate).
    web: Option<(SocketAddr, SocketAddr)>,
}

impl Setup {
    fn new(test: &str) -> Setup {
        let dir = Scratch::new(&format!("reload-{test}"));
        let token = "an admin token for the reload tests".to_owned();
        std::fs::write(dir.join("token"), &token).expect("token");
        Setup {
            config: dir.join("gate.toml"),
            accounts: dir.join("accounts.txt"),
            login: free_addr(),
            gate: free_addr(),
            ops: free_addr(),
            token,
            web: None,
            dir,
        }
    }

    /// Writes the accounts file: `(user, password)` pairs.
    fn write_accounts(&self, users: &[(&str, &str)]) {
        let text: String = users
            .iter()
            .map(|(user, password)| format!("{user}:{}\n", hash(password)))
            .collect();
        std::fs::write(&self.accounts, text).expect("accounts");
    }

    /// Writes the config file: the accounts line, then `rest`.
    fn write_config(&self, rest: &str) {
        let text = format!(
            "accounts = {:?}\n{rest}",
            self.accounts.to_str().expect("a utf-8 path")
        );
        std::fs::write(&self.config, text).expect("config");
    }

    fn start(&self) -> Gate {
        self.start_with(true)
    }

    /// Starts the gate, with the config file or without any.
    fn start_with(&self, config_file: bool) -> Gate {
        let log = self.dir.join("gate.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gate"));
        cmd.arg("run");
        if config_file {
            cmd.args(["--config", self.config.to_str().expect("a utf-8 path")]);
        }
        cmd.args(["--login-listen", &self.login.to_string()])
            .args(["--gate-listen", &self.gate.to_string()])
            .args(["--ops-listen", &self.ops.to_string()])
            .args([
                "--admin-token-file",
                self.dir.join("token").to_str().expect("a utf-8 path"),
            ]);
        match self.web {
            None => {
                cmd.arg("--no-web");
            }
            Some((login, gate)) => {
                cmd.args(["--web-login-listen", &login.to_string()])
                    .args(["--web-gate-listen", &gate.to_string()]);
            }
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

    fn player(&self, user: &str, password: &str) -> Session {
        Session::new(SessionConfig {
            login_addr: self.login.to_string(),
            gate_addr: self.gate.to_string(),
            user: user.to_owned(),
            server: "sample".to_owned(),
            password: password.to_owned(),
            suite: Suite::X25519,
            server_key: None,
            timeout: Duration::from_secs(20),
            extensions: Extensions::Plain,
            seal: false,
            heartbeat: Duration::from_secs(30),
        })
    }

    /// Logs `user` in and connects it to the gate.
    async fn online(&self, user: &str, password: &str) -> Session {
        let mut s = self.player(user, password);
        s.login(&LoginOverrides::default()).await.expect("login");
        let (status, _) = s.connect(&ConnectSpec::default()).await.expect("handshake");
        assert_eq!(status, GateStatus::OK);
        s
    }

    /// Whether `user` can log in with `password` (`false`: refused, 401).
    async fn can_log_in(&self, user: &str, password: &str) -> bool {
        match self
            .player(user, password)
            .login(&LoginOverrides::default())
            .await
        {
            Ok(_) => true,
            Err(ClientError::LoginRefused(status)) => {
                assert_eq!(status.code(), 401, "{user}");
                false
            }
            Err(e) => panic!("{user}: {e}"),
        }
    }

    /// An admin call: its status and body.
    async fn admin(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
             Authorization: Bearer {}\r\nContent-Length: 0\r\n\r\n",
            self.token
        );
        let mut stream = guard("ops connect", TcpStream::connect(self.ops))
            .await
            .expect("connect to ops");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        guard("ops answer", stream.read_to_end(&mut response))
            .await
            .expect("read");
        let response = String::from_utf8_lossy(&response);
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        let body = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// The gate's `max_connections_per_source` as the admin summary shows it.
    async fn per_source(&self) -> u64 {
        let (status, summary) = self.admin("GET", "/admin/summary").await;
        assert_eq!(status, 200, "{summary}");
        summary["gate"]["limits"]["max_connections_per_source"]
            .as_u64()
            .expect("the limit")
    }
}

/// Sends `n` requests and checks each answer, on the same connection.
async fn echo(s: &mut Session, tag: &str, n: u32) {
    for i in 0..n {
        let text = format!("{tag} #{i}");
        let number = s.send(None, Bytes::from(text.clone())).await.expect("send");
        loop {
            match guard("an answer", s.recv()).await.expect("recv") {
                Event::Message(m) => {
                    assert_eq!(m.response.number, number);
                    assert_eq!(m.response.flag, ResponseFlag::OK);
                    assert_eq!(m.response.content, Bytes::from(text));
                    break;
                }
                Event::Closed => panic!("{tag}: the connection closed"),
                _ => {}
            }
        }
    }
}

/// Whether a new connection to `addr` is closed by the server at once
/// (refused at accept) rather than kept waiting for its handshake.
async fn closed_at_accept(addr: SocketAddr) -> bool {
    let mut stream = guard("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    // A connection the gate keeps waits for its handshake (10 s): the
    // read ends only if the gate closed it.
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => panic!("the gate sent bytes before the handshake"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_accounts_and_limits_and_drops_nobody() {
    let setup = Setup::new("apply");
    setup.write_accounts(&[("alice", "alice-pw"), ("bob", "bob-pw")]);
    setup.write_config("[gate]\nmax_connections_per_source = 64\n");
    let gate = setup.start();
    gate.logged("message gate listening", 1).await;
    let mut alice = setup.online("alice", "alice-pw").await;
    echo(&mut alice, "alice before", 3).await;
    assert_eq!(setup.per_source().await, 64);
    assert!(!setup.can_log_in("carol", "carol-pw").await);

    // Bob leaves the file, Carol joins it; two gate connections per
    // source address at most.
    setup.write_accounts(&[("alice", "alice-pw"), ("carol", "carol-pw")]);
    setup.write_config("[gate]\nmax_connections_per_source = 2\n");
    gate.hangup();
    let log = gate.logged("configuration reloaded", 1).await;
    let line = log
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .expect("the line");
    assert!(line.contains("trigger=SIGHUP"), "{line}");
    assert!(line.contains("gate.max_connections_per_source"), "{line}");
    // Alice's line was written again with a new salt: changed too.
    assert!(
        line.contains("accounts (1 added, 1 removed, 1 changed)"),
        "{line}"
    );

    // Alice's connection went through the reload untouched.
    echo(&mut alice, "alice after", 3).await;
    assert!(setup.can_log_in("carol", "carol-pw").await);
    assert!(!setup.can_log_in("bob", "bob-pw").await);
    // The new bound holds: Alice's and Carol's connections are the two
    // of this address, a third is closed at accept.
    assert_eq!(setup.per_source().await, 2);
    let mut carol = setup.online("carol", "carol-pw").await;
    assert!(closed_at_accept(setup.gate).await);
    echo(&mut carol, "carol", 1).await;
    assert!(!gate.log().contains("configuration reload refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_an_unchangeable_field_is_refused_and_changes_nothing() {
    let setup = Setup::new("refuse");
    setup.write_accounts(&[("alice", "alice-pw")]);
    setup.write_config("[gate]\nmax_connections_per_source = 64\n");
    let gate = setup.start();
    gate.logged("message gate listening", 1).await;
    let mut alice = setup.online("alice", "alice-pw").await;

    // A new name for the gate, with changes that alone would apply.
    setup.write_accounts(&[("dave", "dave-pw")]);
    setup.write_config("[gate]\nname = \"elsewhere\"\nmax_connections_per_source = 2\n");
    gate.hangup();
    let log = gate.logged("configuration reload refused", 1).await;
    let line = log
        .lines()
        .find(|l| l.contains("configuration reload refused"))
        .expect("the line");
    assert!(line.contains("gate.name"), "{line}");
    assert!(
        line.contains("running configuration is unchanged"),
        "{line}"
    );
    assert!(!log.contains("configuration reloaded"));

    // Nothing changed: the old accounts, the old bound.
    echo(&mut alice, "alice", 2).await;
    assert!(!setup.can_log_in("dave", "dave-pw").await);
    assert_eq!(setup.per_source().await, 64);

    // A file that does not parse is refused the same way.
    std::fs::write(&setup.config, "[gate\nmaxclient = 3\n").expect("config");
    gate.hangup();
    let log = gate.logged("configuration reload refused", 2).await;
    let line = log
        .lines()
        .filter(|l| l.contains("configuration reload refused"))
        .nth(1)
        .expect("the second line");
    assert!(line.contains("invalid config file"), "{line}");
    assert_eq!(setup.per_source().await, 64);
    echo(&mut alice, "alice", 2).await;
    assert!(setup.can_log_in("alice", "alice-pw").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_call_reloads_and_answers_why_it_refuses() {
    let setup = Setup::new("admin");
    setup.write_accounts(&[("alice", "alice-pw")]);
    setup.write_config("");
    let gate = setup.start();
    gate.logged("message gate listening", 1).await;

    // Nothing changed yet.
    let (status, answer) = setup.admin("POST", "/admin/reload").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, serde_json::json!({"applied": true, "changed": []}));

    // A limit and the log format.
    setup.write_config("[gate]\nmax_connections_per_source = 7\n[log]\nformat = \"json\"\n");
    let (status, answer) = setup.admin("POST", "/admin/reload").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["changed"],
        serde_json::json!(["gate.max_connections_per_source", "log.format"])
    );
    assert_eq!(setup.per_source().await, 7);
    // The reload's own line is written the new way.
    gate.logged("\"message\":\"configuration reloaded\"", 1)
        .await;

    // A field that cannot change while running: 409, naming it.
    setup.write_config(
        "shutdown_grace = \"1s\"\n[gate]\nmax_connections_per_source = 9\n[log]\nformat = \"json\"\n",
    );
    let (status, answer) = setup.admin("POST", "/admin/reload").await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["applied"], false);
    assert_eq!(answer["fields"], serde_json::json!(["shutdown_grace"]));
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("shutdown_grace")),
        "{answer}"
    );
    assert_eq!(setup.per_source().await, 7);

    // An accounts file that does not parse: 422, nothing changed.
    setup.write_config("[gate]\nmax_connections_per_source = 9\n[log]\nformat = \"json\"\n");
    std::fs::write(&setup.accounts, "alice:not a hash\n").expect("accounts");
    let (status, answer) = setup.admin("POST", "/admin/reload").await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("accounts: ")),
        "{answer}"
    );
    assert_eq!(setup.per_source().await, 7);
    assert!(setup.can_log_in("alice", "alice-pw").await);
    gate.logged("configuration reload refused", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_config_file_a_reload_is_refused_and_the_gate_serves_on() {
    let setup = Setup::new("nofile");
    let gate = setup.start_with(false);
    gate.logged("message gate listening", 1).await;
    let mut alice = setup.online("alice", "password").await;
    gate.hangup();
    let log = gate.logged("configuration reload refused", 1).await;
    assert!(log.contains("no configuration file to reload"), "{log}");
    let (status, answer) = setup.admin("POST", "/admin/reload").await;
    assert_eq!(status, 409, "{answer}");
    echo(&mut alice, "alice", 2).await;
}

/// PEM files of a certificate for 127.0.0.1 signed by `ca`, and its key.
fn certificate(ca: &rcgen::Issuer<'_, rcgen::KeyPair>) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, ca)
        .expect("signed");
    (cert.pem(), key.serialize_pem())
}

/// The certificate the server at `addr` presents to a new handshake.
async fn served_certificate(addr: SocketAddr, ca: &std::path::Path) -> Vec<u8> {
    let config = tlsfiles::client_config(ca).expect("client config");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = guard("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let name = tlsfiles::server_name(&addr.to_string()).expect("name");
    let tls = guard("the TLS handshake", connector.connect(name, tcp))
        .await
        .expect("handshake");
    let (_, session) = tls.get_ref();
    session.peer_certificates().expect("a certificate")[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a certificate")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_is_served_to_new_handshakes() {
    let mut setup = Setup::new("tls");
    setup.web = Some((free_addr(), free_addr()));
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed");
    let ca = rcgen::Issuer::new(ca_params, ca_key);
    let ca_file = setup.dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).expect("ca");
    let (cert_file, key_file) = (setup.dir.join("cert.pem"), setup.dir.join("key.pem"));
    let (first, first_key) = certificate(&ca);
    std::fs::write(&cert_file, &first).expect("cert");
    std::fs::write(&key_file, &first_key).expect("key");
    setup.write_accounts(&[("alice", "alice-pw")]);
    let web = format!(
        "[web]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        cert_file.to_str().expect("utf-8"),
        key_file.to_str().expect("utf-8")
    );
    setup.write_config(&web);
    let gate = setup.start();
    gate.logged("message gate listening", 1).await;
    let (web_login, web_gate) = setup.web.expect("web");
    assert_eq!(served_certificate(web_gate, &ca_file).await, der(&first));
    let mut alice = setup.online("alice", "alice-pw").await;

    // The files are replaced in place, as a certificate renewal does.
    let (second, second_key) = certificate(&ca);
    std::fs::write(&cert_file, &second).expect("cert");
    std::fs::write(&key_file, &second_key).expect("key");
    gate.hangup();
    let log = gate.logged("configuration reloaded", 1).await;
    assert!(log.contains("web TLS certificate"), "{log}");
    assert_eq!(served_certificate(web_gate, &ca_file).await, der(&second));
    assert_eq!(served_certificate(web_login, &ca_file).await, der(&second));
    echo(&mut alice, "alice", 2).await;

    // A key that does not match the certificate is refused; the second
    // certificate is served on.
    let (_, other_key) = certificate(&ca);
    std::fs::write(&key_file, &other_key).expect("key");
    let (status, answer) = setup.admin("POST", "/admin/reload").await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("web TLS: ")),
        "{answer}"
    );
    assert_eq!(served_certificate(web_gate, &ca_file).await, der(&second));
}

/// The `[tls]` listeners: the login dialogue and the gate's packages of
/// both suites inside TLS, beside the plain ports; a client that speaks
/// plain TCP to them, or trusts another CA, gets nowhere; a renewed
/// certificate is served to new handshakes after SIGHUP while a player
/// connected over TLS plays on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_serve_the_protocol_and_renew_their_certificate() {
    let setup = Setup::new("tcp-tls");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed");
    let ca = rcgen::Issuer::new(ca_params, ca_key);
    let ca_file = setup.dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).expect("ca");
    let (cert_file, key_file) = (setup.dir.join("cert.pem"), setup.dir.join("key.pem"));
    let (first, first_key) = certificate(&ca);
    std::fs::write(&cert_file, &first).expect("cert");
    std::fs::write(&key_file, &first_key).expect("key");
    setup.write_accounts(&[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let (tls_login, tls_gate) = (free_addr(), free_addr());
    setup.write_config(&format!(
        "[tls]\nlogin_listen = \"{tls_login}\"\ngate_listen = \"{tls_gate}\"\n\
         cert_file = {:?}\nkey_file = {:?}\n",
        cert_file.to_str().expect("utf-8"),
        key_file.to_str().expect("utf-8")
    ));
    let gate = setup.start();
    gate.logged("message gate listening for TLS clients", 1)
        .await;
    gate.logged("login server listening for TLS clients", 1)
        .await;
    client_cli::net::trust_ca_file(&ca_file).expect("trust the CA");
    let over_tls = |user: &str, password: &str, suite: Suite| {
        Session::new(SessionConfig {
            login_addr: format!("tls://{tls_login}"),
            gate_addr: format!("tls://{tls_gate}"),
            user: user.to_owned(),
            server: "sample".to_owned(),
            password: password.to_owned(),
            suite,
            server_key: None,
            timeout: Duration::from_secs(20),
            extensions: Extensions::OptIn,
            // The x25519 player is sealed inside TLS too.
            seal: true,
            heartbeat: Duration::from_secs(30),
        })
    };
    let mut players = Vec::new();
    for (user, password, suite) in [
        ("alice", "alice-pw", Suite::X25519),
        ("bob", "bob-pw", Suite::Skynet),
    ] {
        let mut s = over_tls(user, password, suite);
        s.login(&LoginOverrides::default())
            .await
            .expect("login over TLS");
        let (status, _) = s.connect(&ConnectSpec::default()).await.expect("handshake");
        assert_eq!(status, GateStatus::OK, "{user}");
        echo(&mut s, user, 3).await;
        players.push((s, user));
    }
    // The plain protocol on the TLS port: no status, closed.
    let mut plain = guard("connect", TcpStream::connect(tls_gate))
        .await
        .expect("connect");
    plain.write_all(b"\x00\x05hello").await.expect("write");
    let mut got = Vec::new();
    let _ = guard("the close", plain.read_to_end(&mut got)).await;
    assert!(!got.starts_with(b"\x00"), "no gate package: {got:?}");
    // A client that trusts another CA: the handshake fails.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let other_ca = setup.dir.join("other-ca.pem");
    std::fs::write(&other_ca, other.cert.pem()).expect("other ca");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        tlsfiles::client_config(&other_ca).expect("client config"),
    ));
    let tcp = TcpStream::connect(tls_login).await.expect("connect");
    let name = tlsfiles::server_name(&tls_login.to_string()).expect("name");
    assert!(
        guard("the refused handshake", connector.connect(name, tcp))
            .await
            .is_err(),
        "a certificate the client does not trust"
    );
    assert_eq!(served_certificate(tls_gate, &ca_file).await, der(&first));

    // Renewed in place; SIGHUP.
    let (second, second_key) = certificate(&ca);
    std::fs::write(&cert_file, &second).expect("cert");
    std::fs::write(&key_file, &second_key).expect("key");
    gate.hangup();
    let log = gate.logged("configuration reloaded", 1).await;
    assert!(log.contains("TLS certificate"), "{log}");
    assert_eq!(served_certificate(tls_gate, &ca_file).await, der(&second));
    assert_eq!(served_certificate(tls_login, &ca_file).await, der(&second));
    for (s, user) in &mut players {
        echo(s, user, 2).await;
    }
}
