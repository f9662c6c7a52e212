//! Replays every scenario of `testdata/vectors/login_transcript.json` (live
//! skynet conversations with pinned server randomness) against the server
//! state machine, byte for byte, and the client side of every scenario whose
//! client key and credentials are recorded. Also replays the independent
//! x25519 known-answer vector (`x25519_login.json`) on both sides.
//!
//! Client bytes go through `codec::LineCodec` exactly as the gate's driver
//! will feed them: each recorded write is appended to a buffer and decoded
//! into lines, so the 8 KiB limit (`line_over_limit`) is exercised too.
//!
//! The application hooks are emulated like skynet's example `logind` /
//! `gated`: the password must be `password`, the server must be `sample`
//! (else 403), subids count up from 1 per gate process (in file order), and a
//! uid is locked from the token line until its status line is due, so a
//! second token for the same uid meanwhile gets 406 (`concurrent_login_406`).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use bytes::BytesMut;
use serde_json::Value;
use tokio_util::codec::Decoder;

use codec::line::{LineCodec, LineError};
use loginproto::handshake::SessionSecret;
use loginproto::login::{
    Authenticate, AwaitClientKey, AwaitProof, AwaitToken, ClientLogin, ClientRandom, KeyStep,
    LoginOutcome, ServerConfig, ServerLogin, ServerRandom, StaticKey, Suite,
};
use loginproto::token::Credentials;

fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("transcript is JSON")
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("transcript hex"))
        .collect()
}

fn key8(text: &str) -> [u8; 8] {
    unhex(text).try_into().expect("8-byte key")
}

fn key32(text: &str) -> [u8; 32] {
    unhex(text).try_into().expect("32-byte key")
}

/// The bytes of a step: `hex`, or for long ones a run of one repeated byte
/// described by `hex_prefix` / `hex_suffix` / `length`.
fn step_bytes(step: &Value) -> Vec<u8> {
    if let Some(hex) = step["hex"].as_str() {
        return unhex(hex);
    }
    let prefix = unhex(step["hex_prefix"].as_str().expect("hex or hex_prefix"));
    let suffix = unhex(step["hex_suffix"].as_str().expect("hex_suffix"));
    let length = step["length"].as_u64().expect("length") as usize;
    let fill = prefix[0];
    assert!(prefix.iter().all(|&b| b == fill), "prefix is not a run");
    let mut bytes = vec![fill; length];
    let tail = suffix.len();
    bytes[length - tail..].copy_from_slice(&suffix);
    assert!(bytes.starts_with(&prefix));
    bytes
}

fn pinned_random(file: &Value) -> ServerRandom {
    let keys = &file["fixed_server_keys"];
    ServerRandom {
        challenge: key8(keys["challenge"].as_str().expect("challenge")),
        skynet_key: key8(keys["serverkey"].as_str().expect("serverkey")),
        x25519_key: [0x77; 32],
    }
}

enum State {
    Key(AwaitClientKey),
    Proof(AwaitProof),
    Token(AwaitToken),
    /// Authenticated; the login handler "runs" until the status line is due.
    Pending(Authenticate, Credentials),
    /// Status sent (or the connection closed): input is discarded, as skynet
    /// does after the status line.
    Done,
}

/// One login connection of a scenario.
struct Conn {
    state: State,
    codec: LineCodec,
    buffer: BytesMut,
    /// Bytes the server produced that the transcript has not shown yet.
    sent: Vec<u8>,
    closed: bool,
}

/// The application side, emulating logind + gated of skynet's example.
struct App {
    next_subid: u32,
    locked: HashSet<Vec<u8>>,
}

impl App {
    /// `auth_handler` and the multi-login lock (spec §4.2 steps 6–7).
    fn authenticate(&mut self, auth: Authenticate) -> Result<State, Vec<u8>> {
        let Some(creds) = auth.credentials() else {
            return Err(auth.finish(LoginOutcome::Unauthorized));
        };
        if creds.password.as_slice() != b"password" {
            return Err(auth.finish(LoginOutcome::Unauthorized));
        }
        if !self.locked.insert(creds.user.clone()) {
            return Err(auth.finish(LoginOutcome::NotAcceptable));
        }
        Ok(State::Pending(auth, creds))
    }

    /// `login_handler` completes (spec §4.2 steps 8–9).
    fn complete(&mut self, auth: Authenticate, creds: &Credentials) -> Vec<u8> {
        self.locked.remove(&creds.user);
        assert_eq!(auth.suite(), Suite::Skynet);
        if creds.server != b"sample" {
            return auth.finish(LoginOutcome::Forbidden);
        }
        self.next_subid += 1;
        auth.finish(LoginOutcome::Ok {
            subid: self.next_subid.to_string().into_bytes(),
        })
    }
}

impl Conn {
    fn new(random: ServerRandom) -> Conn {
        let (state, line1) = ServerLogin::start(ServerConfig::default(), random);
        Conn {
            state: State::Key(state),
            codec: LineCodec::new(),
            buffer: BytesMut::new(),
            sent: line1,
            closed: false,
        }
    }

    /// One recorded client write.
    fn feed(&mut self, bytes: &[u8], app: &mut App) {
        self.buffer.extend_from_slice(bytes);
        loop {
            match self.codec.decode(&mut self.buffer) {
                Ok(Some(line)) => self.line(&line, app),
                Ok(None) => break,
                Err(LineError::TooLong) => {
                    // The driver closes the socket, no status line.
                    self.closed = true;
                    self.state = State::Done;
                    break;
                }
                Err(e) => panic!("line codec: {e}"),
            }
        }
    }

    fn line(&mut self, line: &[u8], app: &mut App) {
        let state = std::mem::replace(&mut self.state, State::Done);
        self.state = match state {
            State::Key(s) => match s.receive(line) {
                KeyStep::Continue(next, line3) => {
                    self.sent.extend_from_slice(&line3);
                    State::Proof(next)
                }
                KeyStep::Reject(r) => {
                    self.sent.extend_from_slice(&r.reply);
                    State::Done
                }
            },
            State::Proof(s) => match s.receive(line) {
                Ok(next) => State::Token(next),
                Err(r) => {
                    self.sent.extend_from_slice(&r.reply);
                    State::Done
                }
            },
            State::Token(s) => match s.receive(line) {
                Ok(auth) => match app.authenticate(auth) {
                    Ok(pending) => pending,
                    Err(status) => {
                        self.sent.extend_from_slice(&status);
                        State::Done
                    }
                },
                Err(r) => {
                    self.sent.extend_from_slice(&r.reply);
                    State::Done
                }
            },
            other => other,
        };
    }

    /// The transcript expects bytes from the server now.
    fn expect(&mut self, expected: &[u8], app: &mut App, context: &str) {
        if self.sent.is_empty() {
            if let State::Pending(auth, creds) = std::mem::replace(&mut self.state, State::Done) {
                let line = app.complete(auth, &creds);
                self.sent.extend_from_slice(&line);
            }
        }
        assert!(
            self.sent.starts_with(expected),
            "{context}: expected {:?}, server sent {:?}",
            String::from_utf8_lossy(expected),
            String::from_utf8_lossy(&self.sent)
        );
        self.sent.drain(..expected.len());
    }
}

fn scenario_conn(step: &Value) -> String {
    step["conn"].as_str().unwrap_or("").to_owned()
}

#[test]
fn server_replays_every_scenario() {
    let file = load("login_transcript.json");
    let random = pinned_random(&file);
    let mut app = App {
        next_subid: 0,
        locked: HashSet::new(),
    };
    let mut replayed = 0;
    let scenarios = file["scenarios"].as_array().expect("scenarios");
    let mut checked_steps = 0;
    for scenario in scenarios {
        let name = scenario["name"].as_str().expect("name");
        let mut conns: HashMap<String, Conn> = HashMap::new();
        for (i, step) in scenario["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .enumerate()
        {
            let conn_name = scenario_conn(step);
            let context = format!("{name} step {i} ({conn_name})");
            if step["event"] == "connect" {
                if step["port"] == "login" {
                    conns.insert(conn_name, Conn::new(random.clone()));
                }
                continue;
            }
            // Steps of gate connections (relogin_kicks_previous) are not ours.
            let Some(conn) = conns.get_mut(&conn_name) else {
                continue;
            };
            checked_steps += 1;
            match (step["dir"].as_str(), step["event"].as_str()) {
                (Some("C->S"), _) => conn.feed(&step_bytes(step), &mut app),
                (Some("S->C"), _) => conn.expect(&step_bytes(step), &mut app, &context),
                (None, Some("server_closed")) => {
                    assert!(conn.closed, "{context}: server should have closed");
                    assert!(
                        conn.sent.is_empty(),
                        "{context}: unexpected bytes before close"
                    );
                }
                (None, Some("nothing_received" | "still_open")) => {
                    assert!(!conn.closed, "{context}: closed");
                    assert!(conn.sent.is_empty(), "{context}: unexpected bytes");
                }
                (None, Some("client_close")) => {
                    assert!(conn.sent.is_empty(), "{context}: bytes never shown");
                    conns.remove(&conn_name);
                }
                other => panic!("{context}: unknown step {other:?}"),
            }
        }
        for (conn_name, conn) in &conns {
            assert!(
                conn.sent.is_empty(),
                "{name} ({conn_name}): bytes never shown"
            );
        }
        replayed += 1;
    }
    assert_eq!(replayed, scenarios.len());
    assert_eq!(replayed, 13, "the transcript has 13 scenarios");
    assert!(checked_steps >= 80, "only {checked_steps} steps checked");
    // success → 1, relogin → 2, concurrent conn1 → 3, as gated counted.
    assert_eq!(app.next_subid, 3);
}

#[test]
fn line_over_limit_is_the_codec_limit() {
    assert_eq!(LineCodec::new().max_buffered(), 8192);
    let mut codec = LineCodec::new();
    let mut at_limit = BytesMut::from(&[b'A'; 8191][..]);
    at_limit.extend_from_slice(b"\n");
    assert_eq!(
        codec
            .decode(&mut at_limit)
            .expect("8192 bytes")
            .map(|l| l.len()),
        Some(8191)
    );
    let mut over = BytesMut::from(&[b'A'; 8192][..]);
    over.extend_from_slice(b"\n");
    assert!(matches!(
        LineCodec::new().decode(&mut over),
        Err(LineError::TooLong)
    ));
}

/// The client side of every scenario that records the client's key and
/// credentials: every C->S line must come out byte for byte.
#[test]
fn client_replays_recorded_logins() {
    let file = load("login_transcript.json");
    let mut replayed = Vec::new();
    for scenario in file["scenarios"].as_array().expect("scenarios") {
        let values = &scenario["values"];
        let (Some(clientkey), Some(user), Some(server), Some(password)) = (
            values["clientkey"].as_str(),
            values["user"].as_str(),
            values["server"].as_str(),
            values["password"].as_str(),
        ) else {
            continue;
        };
        let name = scenario["name"].as_str().expect("name");
        let login_conn = scenario["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .find(|s| s["event"] == "connect" && s["port"] == "login")
            .map(scenario_conn)
            .expect("a login connection");
        let steps: Vec<&Value> = scenario["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .filter(|s| scenario_conn(s) == login_conn && s["dir"].is_string())
            .collect();
        let server_lines: Vec<Vec<u8>> = steps
            .iter()
            .filter(|s| s["dir"] == "S->C")
            .map(|s| step_bytes(s))
            .collect();
        let client_bytes: Vec<u8> = steps
            .iter()
            .filter(|s| s["dir"] == "C->S")
            .flat_map(|s| step_bytes(s))
            .collect();
        let strip = |line: &[u8]| line.strip_suffix(b"\n").expect("LF").to_vec();

        let client = ClientLogin::new(
            Suite::Skynet,
            Credentials::new(user, server, password),
            ClientRandom {
                skynet_key: key8(clientkey),
                x25519_key: [0; 32],
            },
        );
        let mut sent = Vec::new();
        let (client, line2) = client.receive(&strip(&server_lines[0])).expect("challenge");
        sent.extend_from_slice(&line2);
        let (client, lines45) = client
            .receive(&strip(&server_lines[1]))
            .expect("server key");
        sent.extend_from_slice(&lines45);
        assert_eq!(
            String::from_utf8_lossy(&sent),
            String::from_utf8_lossy(&client_bytes),
            "{name}"
        );
        let result = client.receive(&strip(&server_lines[2]));
        match values["subid"].as_str() {
            Some(subid) if password == "password" && server == "sample" => {
                let success = result.expect("200");
                assert_eq!(success.subid, subid.as_bytes(), "{name}");
                assert_eq!(
                    success.secret,
                    SessionSecret::Skynet(key8(values["secret"].as_str().expect("secret"))),
                    "{name}"
                );
            }
            _ => assert!(result.is_err(), "{name}: refusal must be an error"),
        }
        replayed.push(name.to_owned());
    }
    assert_eq!(
        replayed,
        [
            "success",
            "relogin_kicks_previous",
            "wrong_password",
            "unknown_server"
        ]
    );
}

/// The x25519 suite against a vector computed independently with
/// pyca/cryptography (`testdata/gen/x25519_login.py`).
#[test]
fn x25519_known_answer_both_sides() {
    let file = load("x25519_login.json");
    let v = &file["values"];
    let s = |name: &str| v[name].as_str().unwrap_or_else(|| panic!("no {name}"));
    let steps: Vec<Vec<u8>> = file["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(step_bytes)
        .collect();
    let strip = |line: &[u8]| line.strip_suffix(b"\n").expect("LF").to_vec();
    let gate_secret = SessionSecret::X25519(key32(s("gate_secret")));

    // Server.
    let (state, line1) = ServerLogin::start(
        ServerConfig::default(),
        ServerRandom {
            challenge: key8(s("challenge")),
            skynet_key: [1; 8],
            x25519_key: key32(s("server_private")),
        },
    );
    assert_eq!(line1, steps[0]);
    let KeyStep::Continue(state, line3) = state.receive(&strip(&steps[1])) else {
        panic!("client key refused");
    };
    assert_eq!(line3, steps[2]);
    let state = state.receive(&strip(&steps[3])).expect("proof");
    let auth = state.receive(&strip(&steps[4])).expect("token");
    assert_eq!(auth.token(), s("token").as_bytes());
    assert_eq!(auth.suite(), Suite::X25519);
    assert_eq!(auth.secret(), &gate_secret);
    assert_eq!(
        auth.credentials(),
        Some(Credentials::new("hello", "sample", "password"))
    );
    let status = auth.finish(LoginOutcome::Ok {
        subid: s("subid").as_bytes().to_vec(),
    });
    assert_eq!(status, steps[5]);

    // Client.
    let client = ClientLogin::new(
        Suite::X25519,
        Credentials::new("hello", "sample", "password"),
        ClientRandom {
            skynet_key: [1; 8],
            x25519_key: key32(s("client_private")),
        },
    );
    let (client, line2) = client.receive(&strip(&steps[0])).expect("challenge");
    assert_eq!(line2, steps[1]);
    let (client, lines45) = client.receive(&strip(&steps[2])).expect("server key");
    assert_eq!(lines45, [steps[3].clone(), steps[4].clone()].concat());
    let success = client.receive(&strip(&steps[5])).expect("200");
    assert_eq!(success.subid, b"1");
    assert_eq!(success.secret, gate_secret);

    // Gate handshake with the derived secret.
    let hs = &file["gate_handshake"];
    let payload = loginproto::handshake::sign(
        &gate_secret,
        hs["username"].as_str().expect("username").as_bytes(),
        hs["index"].as_str().expect("index").as_bytes(),
    );
    assert_eq!(payload, hs["payload"].as_str().expect("payload").as_bytes());
}

/// The pinned x25519 login (the server proves a long-term key the client
/// pinned) against the independent known-answer vector made with
/// pyca/cryptography (`testdata/gen/x25519_pinned_login.py`), both sides;
/// then the policies: a pinned key line without a server key, a wrong
/// version byte, and required pins.
#[test]
fn x25519_pinned_known_answer_both_sides() {
    let file = load("x25519_pinned_login.json");
    let v = &file["values"];
    let s = |name: &str| v[name].as_str().unwrap_or_else(|| panic!("no {name}"));
    let steps: Vec<Vec<u8>> = file["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(step_bytes)
        .collect();
    let strip = |line: &[u8]| line.strip_suffix(b"\n").expect("LF").to_vec();
    let gate_secret = SessionSecret::X25519(key32(s("gate_secret")));
    let static_key = StaticKey::from_private(key32(s("static_private")));
    assert_eq!(static_key.public(), &key32(s("static_public")));
    let random = || ServerRandom {
        challenge: key8(s("challenge")),
        skynet_key: [1; 8],
        x25519_key: key32(s("server_private")),
    };
    let pinning = ServerConfig {
        static_key: Some(static_key.clone()),
        ..ServerConfig::default()
    };

    // Server.
    let (state, line1) = ServerLogin::start(pinning.clone(), random());
    assert_eq!(line1, steps[0]);
    let KeyStep::Continue(state, line3) = state.receive(&strip(&steps[1])) else {
        panic!("pinned client key refused");
    };
    assert_eq!(line3, steps[2]);
    let state = state.receive(&strip(&steps[3])).expect("proof");
    let auth = state.receive(&strip(&steps[4])).expect("token");
    assert_eq!(auth.token(), s("token").as_bytes());
    assert_eq!(auth.secret(), &gate_secret);
    assert_eq!(
        auth.finish(LoginOutcome::Ok {
            subid: s("subid").as_bytes().to_vec(),
        }),
        steps[5]
    );

    // Client.
    let client = ClientLogin::pinned(
        Credentials::new("hello", "sample", "password"),
        ClientRandom {
            skynet_key: [1; 8],
            x25519_key: key32(s("client_private")),
        },
        key32(s("static_public")),
    );
    let (client, line2) = client.receive(&strip(&steps[0])).expect("challenge");
    assert_eq!(line2, steps[1]);
    let (client, lines45) = client.receive(&strip(&steps[2])).expect("server key");
    assert_eq!(lines45, [steps[3].clone(), steps[4].clone()].concat());
    let success = client.receive(&strip(&steps[5])).expect("200");
    assert_eq!(success.secret, gate_secret);

    // A pinned key line, but no server key: 401 at once.
    let (state, _) = ServerLogin::start(ServerConfig::default(), random());
    let KeyStep::Reject(rejected) = state.receive(&strip(&steps[1])) else {
        panic!("accepted a pin without a key");
    };
    assert_eq!(rejected.reply, b"401 Unauthorized\n");
    // Flags bytes: an unknown one is 401; pin + queue notices (0x03) is
    // the same pinned login, with notices on.
    for (flags, accepted) in [(0x00u8, false), (0x08, false), (0x81, false), (0x03, true)] {
        let mut flagged = vec![flags];
        flagged.extend_from_slice(&key32(s("client_public")));
        let (state, _) = ServerLogin::start(pinning.clone(), random());
        let line = loginproto::skynet::base64_encode(&flagged);
        match state.receive(line.as_bytes()) {
            KeyStep::Reject(_) => assert!(!accepted, "flags {flags:#04x} refused"),
            KeyStep::Continue(proof, line3) => {
                assert!(accepted, "flags {flags:#04x} accepted");
                assert!(proof.queue_notices());
                assert_eq!(line3, steps[2]);
            }
        }
    }
    // Pins required: plain x25519 and skynet key lines get 401.
    let requiring = ServerConfig {
        require_pinned: true,
        ..pinning
    };
    for plain in [
        loginproto::skynet::base64_encode(&key32(s("client_public"))),
        loginproto::skynet::base64_encode(&[5u8; 8]),
    ] {
        let (state, _) = ServerLogin::start(requiring.clone(), random());
        let KeyStep::Reject(rejected) = state.receive(plain.as_bytes()) else {
            panic!("accepted an unpinned login");
        };
        assert_eq!(rejected.reply, b"401 Unauthorized\n");
    }
}

/// A man in the middle who answers a pinned client with its own
/// ephemeral key (it has no static private key) cannot finish the login
/// with the real server: the token it relays does not open there, and it
/// cannot open it itself.
#[test]
fn a_man_in_the_middle_cannot_complete_a_pinned_login() {
    let static_key = StaticKey::from_private([0x81; 32]);
    let server_random = || ServerRandom {
        challenge: [9; 8],
        skynet_key: [1; 8],
        x25519_key: [0x42; 32],
    };
    let config = ServerConfig {
        static_key: Some(static_key.clone()),
        ..ServerConfig::default()
    };
    let (server, challenge) = ServerLogin::start(config, server_random());
    let client = ClientLogin::pinned(
        Credentials::new("hello", "sample", "password"),
        ClientRandom {
            skynet_key: [1; 8],
            x25519_key: [0x11; 32],
        },
        *static_key.public(),
    );
    let strip = |line: Vec<u8>| line.strip_suffix(b"\n").expect("LF").to_vec();
    let (client, line2) = client.receive(&strip(challenge)).expect("challenge");
    // The relay passes line 2 on, but answers the client with its own key.
    let KeyStep::Continue(server, _real_line3) = server.receive(&strip(line2)) else {
        panic!("refused");
    };
    let mitm_public = loginproto::modern::public_key(&[0x66; 32]);
    let forged_line3 = loginproto::skynet::base64_encode(&mitm_public);
    let (_client, lines45) = client
        .receive(forged_line3.as_bytes())
        .expect("the client computes its lines");
    let mut lines = lines45.split(|&b| b == b'\n');
    let (proof, token) = (lines.next().expect("proof"), lines.next().expect("token"));
    // Relayed to the real server: the proof is refused.
    let Err(rejected) = server.receive(proof) else {
        panic!("the server took a proof made for the man in the middle");
    };
    assert_eq!(rejected.reply, b"401 Unauthorized\n");
    // The man in the middle cannot open the token either: without `es`
    // its keys are not the client's.
    let mitm_view = loginproto::modern::SessionKeys::agree(
        &[0x66; 32],
        &loginproto::modern::public_key(&[0x11; 32]),
        &[9; 8],
        &loginproto::modern::public_key(&[0x11; 32]),
        &mitm_public,
    )
    .expect("agree");
    let sealed = loginproto::skynet::base64_decode(token).expect("base64");
    assert!(mitm_view.open_token(&sealed).is_err());
}

/// A pinned login with key confirmation and a padded token (flags 0x05):
/// both sides reproduce every line of the independent vector, and a `200`
/// line without the confirmation, or with a wrong one, fails the client.
#[test]
fn x25519_confirmed_known_answer_both_sides() {
    let file = load("x25519_confirmed_login.json");
    let v = &file["values"];
    let s = |name: &str| v[name].as_str().unwrap_or_else(|| panic!("no {name}"));
    let steps: Vec<Vec<u8>> = file["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(step_bytes)
        .collect();
    let strip = |line: &[u8]| line.strip_suffix(b"\n").expect("LF").to_vec();
    let gate_secret = SessionSecret::X25519(key32(s("gate_secret")));
    let static_key = StaticKey::from_private(key32(s("static_private")));
    let random = || ServerRandom {
        challenge: key8(s("challenge")),
        skynet_key: [1; 8],
        x25519_key: key32(s("server_private")),
    };
    let pinning = ServerConfig {
        static_key: Some(static_key.clone()),
        ..ServerConfig::default()
    };
    assert_eq!(
        loginproto::modern::pad_token(s("token").as_bytes()),
        unhex(s("padded_token"))
    );

    // Server.
    let (state, line1) = ServerLogin::start(pinning.clone(), random());
    assert_eq!(line1, steps[0]);
    let KeyStep::Continue(state, line3) = state.receive(&strip(&steps[1])) else {
        panic!("confirmed client key refused");
    };
    assert_eq!(line3, steps[2]);
    let state = state.receive(&strip(&steps[3])).expect("proof");
    let auth = state.receive(&strip(&steps[4])).expect("token");
    assert_eq!(auth.token(), s("token").as_bytes(), "padding removed");
    assert_eq!(auth.secret(), &gate_secret);
    assert_eq!(
        auth.finish(LoginOutcome::Ok {
            subid: s("subid").as_bytes().to_vec(),
        }),
        steps[5]
    );

    // Client: the same lines, and the confirmation checked.
    let client = || {
        ClientLogin::pinned(
            Credentials::new("hello", "sample", "password"),
            ClientRandom {
                skynet_key: [1; 8],
                x25519_key: key32(s("client_private")),
            },
            key32(s("static_public")),
        )
        .with_confirmation()
    };
    let at_status = || {
        let (c, line2) = client().receive(&strip(&steps[0])).expect("challenge");
        assert_eq!(line2, steps[1]);
        let (c, lines45) = c.receive(&strip(&steps[2])).expect("server key");
        assert_eq!(lines45, [steps[3].clone(), steps[4].clone()].concat());
        c
    };
    let success = at_status().receive(&strip(&steps[5])).expect("200");
    assert_eq!(success.secret, gate_secret);
    assert_eq!(success.subid, s("subid").as_bytes());
    // A forged success: no confirmation, a wrong one, another subid.
    let unconfirmed =
        loginproto::login::LoginError::Modern(loginproto::modern::ModernError::Unconfirmed);
    let confirmation = loginproto::skynet::base64_encode(&unhex(s("confirmation")));
    let mut wrong = unhex(s("confirmation"));
    wrong[0] ^= 1;
    let wrong = loginproto::skynet::base64_encode(&wrong);
    for forged in [
        "200 Nw==".to_owned(),
        format!("200 Nw== {wrong}"),
        format!("200 OA== {confirmation}"),
    ] {
        assert_eq!(
            at_status().receive(forged.as_bytes()).unwrap_err(),
            unconfirmed,
            "{forged}"
        );
    }
    // Other statuses are told as they are.
    assert_eq!(
        at_status().receive(b"401 Unauthorized").unwrap_err(),
        loginproto::login::LoginError::Status(codec::status::LoginStatus::UNAUTHORIZED)
    );
}

/// A padded token's sealed length does not depend on the password's
/// length (within a bucket), and a server refuses padding without its
/// end mark.
#[test]
fn padded_tokens_hide_the_password_length() {
    let sealed_len = |password: &str| {
        let client = ClientLogin::new(
            Suite::X25519,
            Credentials::new("hello", "sample", password),
            ClientRandom {
                skynet_key: [1; 8],
                x25519_key: [0x11; 32],
            },
        )
        .with_confirmation();
        let (client, _) = client.receive(b"AQIDBAUGBwg=").expect("challenge");
        let server_public = loginproto::modern::public_key(&[0x42; 32]);
        let line3 = loginproto::skynet::base64_encode(&server_public);
        let (_, lines) = client.receive(line3.as_bytes()).expect("server key");
        lines.split(|&b| b == b'\n').nth(1).expect("token").len()
    };
    assert_eq!(
        sealed_len("a"),
        sealed_len("a much longer password, 40 bytes or so")
    );
    assert!(sealed_len("x".repeat(200).as_str()) > sealed_len("a"));
    assert_eq!(
        loginproto::modern::unpad_token(b"token\x00\x00".to_vec()),
        Err(loginproto::modern::ModernError::BadPadding)
    );
    assert_eq!(
        loginproto::modern::unpad_token(loginproto::modern::pad_token(b"tok\x80en")),
        Ok(b"tok\x80en".to_vec())
    );
}
