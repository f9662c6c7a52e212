//! In-memory client ↔ server logins for both suites: success, refusals,
//! tampered lines, the skynet switch, low-order X25519 points; the secrets
//! both sides end up with must sign and verify a gate handshake. Property
//! tests: neither state machine panics on arbitrary lines in any state.

use std::collections::VecDeque;

use bytes::Bytes;
use proptest::prelude::*;

use codec::message::Handshake;
use codec::status::LoginStatus;
use loginproto::handshake::{self, HandshakeError, SessionSecret};
use loginproto::login::{
    AwaitChallenge, AwaitClientKey, AwaitProof, AwaitServerKey, AwaitStatus, AwaitToken,
    ClientLogin, ClientRandom, KeyStep, LoginError, LoginOutcome, LoginSuccess, ServerConfig,
    ServerLogin, ServerRandom, Suite,
};
use loginproto::modern::{self, ModernError};
use loginproto::skynet;
use loginproto::token::Credentials;

/// splitmix64: deterministic test randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        out
    }

    fn server(&mut self) -> ServerRandom {
        ServerRandom {
            challenge: self.fill(),
            skynet_key: skynet::random_key(self.fill()),
            x25519_key: self.fill(),
        }
    }

    fn client(&mut self) -> ClientRandom {
        ClientRandom {
            skynet_key: skynet::random_key(self.fill()),
            x25519_key: self.fill(),
        }
    }
}

enum Server {
    Key(AwaitClientKey),
    Proof(AwaitProof),
    Token(AwaitToken),
    Done,
}

enum Client {
    Challenge(AwaitChallenge),
    ServerKey(AwaitServerKey),
    Status(AwaitStatus),
    Done(Result<LoginSuccess, LoginError>),
}

/// What happened on both sides.
struct Outcome {
    client: Result<LoginSuccess, LoginError>,
    /// The secret the server would register with the gate (authenticated
    /// logins only).
    server_secret: Option<SessionSecret>,
    /// Why the server refused, if it did before authentication.
    server_reason: Option<LoginError>,
}

/// The accounts of this test's auth handler.
fn decide(creds: Option<Credentials>) -> LoginOutcome {
    match creds {
        Some(c)
            if c.user == b"hello"
                && c.password.as_slice() == b"password"
                && c.server == b"sample" =>
        {
            LoginOutcome::Ok {
                subid: b"7".to_vec(),
            }
        }
        _ => LoginOutcome::Unauthorized,
    }
}

fn split_lines(bytes: &[u8], queue: &mut VecDeque<Vec<u8>>) {
    assert_eq!(bytes.last(), Some(&b'\n'), "output ends in LF");
    for line in bytes[..bytes.len() - 1].split(|&b| b == b'\n') {
        queue.push_back(line.to_vec());
    }
}

/// Runs one login; `tamper(n, line)` may change protocol line `n` (1–6) in
/// flight.
fn login(
    suite: Suite,
    creds: Credentials,
    config: ServerConfig,
    seed: u64,
    mut tamper: impl FnMut(usize, &mut Vec<u8>),
) -> Outcome {
    let mut rng = Rng(seed);
    let (server, line1) = ServerLogin::start(config, rng.server());
    let mut server = Server::Key(server);
    let mut client = Client::Challenge(ClientLogin::new(suite, creds, rng.client()));
    let (mut to_client, mut to_server) = (VecDeque::new(), VecDeque::new());
    split_lines(&line1, &mut to_client);
    let (mut server_lines, mut client_lines) = (0, 0);
    let mut server_secret = None;
    let mut server_reason = None;
    loop {
        if let Some(mut line) = to_client.pop_front() {
            server_lines += 1;
            tamper(
                [1, 3, 6].get(server_lines - 1).copied().unwrap_or(99),
                &mut line,
            );
            client = match client {
                Client::Challenge(c) => match c.receive(&line) {
                    Ok((next, out)) => {
                        split_lines(&out, &mut to_server);
                        Client::ServerKey(next)
                    }
                    Err(e) => Client::Done(Err(e)),
                },
                Client::ServerKey(c) => match c.receive(&line) {
                    Ok((next, out)) => {
                        split_lines(&out, &mut to_server);
                        Client::Status(next)
                    }
                    Err(e) => Client::Done(Err(e)),
                },
                Client::Status(c) => Client::Done(c.receive(&line)),
                done => done,
            };
        } else if let Some(mut line) = to_server.pop_front() {
            client_lines += 1;
            tamper(
                [2, 4, 5].get(client_lines - 1).copied().unwrap_or(99),
                &mut line,
            );
            let mut reject = |reason: LoginError, reply: Vec<u8>, queue: &mut VecDeque<_>| {
                server_reason = Some(reason);
                split_lines(&reply, queue);
                Server::Done
            };
            server = match server {
                Server::Key(s) => match s.receive(&line) {
                    KeyStep::Continue(next, line3) => {
                        split_lines(&line3, &mut to_client);
                        Server::Proof(next)
                    }
                    KeyStep::Reject(r) => reject(r.reason, r.reply, &mut to_client),
                },
                Server::Proof(s) => match s.receive(&line) {
                    Ok(next) => Server::Token(next),
                    Err(r) => reject(r.reason, r.reply, &mut to_client),
                },
                Server::Token(s) => match s.receive(&line) {
                    Ok(auth) => {
                        let outcome = decide(auth.credentials());
                        if matches!(outcome, LoginOutcome::Ok { .. }) {
                            server_secret = Some(auth.secret().clone());
                        }
                        split_lines(&auth.finish(outcome), &mut to_client);
                        Server::Done
                    }
                    Err(r) => reject(r.reason, r.reply, &mut to_client),
                },
                // After the status the server discards input (spec §4.4).
                Server::Done => Server::Done,
            };
        } else {
            break;
        }
    }
    let Client::Done(client) = client else {
        panic!("client still waiting for a line");
    };
    Outcome {
        client,
        server_secret,
        server_reason,
    }
}

fn hello() -> Credentials {
    Credentials::new("hello", "sample", "password")
}

const SUITES: [Suite; 2] = [Suite::Skynet, Suite::X25519];

fn unauthorized() -> LoginError {
    LoginError::Status(LoginStatus::UNAUTHORIZED)
}

#[test]
fn success_and_gate_handshake() {
    for suite in SUITES {
        for seed in 0..20 {
            let out = login(suite, hello(), ServerConfig::default(), seed, |_, _| {});
            let success = out.client.expect("login succeeds");
            assert_eq!(success.subid, b"7");
            assert_eq!(success.suite, suite);
            let server_secret = out.server_secret.expect("server authenticated");
            assert_eq!(success.secret, server_secret);
            match (&server_secret, suite) {
                (SessionSecret::Skynet(_), Suite::Skynet)
                | (SessionSecret::X25519(_), Suite::X25519) => {}
                other => panic!("wrong secret kind {other:?}"),
            }

            // The client signs, the gate verifies with the server's copy.
            let name = handshake::username(b"hello", b"sample", &success.subid);
            let payload = handshake::sign(&success.secret, &name, b"1");
            let hs = Handshake::parse(&Bytes::from(payload)).expect("parses");
            assert_eq!(handshake::verify(&server_secret, &hs, false), Ok(()));
            let other =
                Handshake::parse(&Bytes::from(handshake::sign(&success.secret, &name, b"2")))
                    .expect("parses");
            let forged = Handshake {
                mac: other.mac,
                ..hs
            };
            assert_eq!(
                handshake::verify(&server_secret, &forged, false),
                Err(HandshakeError::MacMismatch)
            );
        }
    }
}

#[test]
fn secrets_differ_between_logins() {
    for suite in SUITES {
        let a = login(suite, hello(), ServerConfig::default(), 1, |_, _| {});
        let b = login(suite, hello(), ServerConfig::default(), 2, |_, _| {});
        assert_ne!(a.server_secret, b.server_secret);
    }
}

#[test]
fn wrong_password_is_401() {
    for suite in SUITES {
        let creds = Credentials::new("hello", "sample", "wrong");
        let out = login(suite, creds, ServerConfig::default(), 3, |_, _| {});
        assert_eq!(out.client.unwrap_err(), unauthorized());
        assert_eq!(out.server_secret, None);
        // The token itself was authentic: the auth handler refused it.
        assert_eq!(out.server_reason, None);
    }
}

/// Flips one base64 character of line `n`, keeping it valid base64.
fn flip(n: usize) -> impl FnMut(usize, &mut Vec<u8>) {
    move |line, bytes| {
        if line == n {
            bytes[0] = if bytes[0] == b'A' { b'B' } else { b'A' };
        }
    }
}

#[test]
fn tampered_proof_is_401() {
    for suite in SUITES {
        let out = login(suite, hello(), ServerConfig::default(), 4, flip(4));
        assert_eq!(out.client.unwrap_err(), unauthorized());
        let expected = match suite {
            Suite::Skynet => LoginError::ProofMismatch,
            Suite::X25519 => LoginError::Modern(ModernError::BadProof),
        };
        assert_eq!(out.server_reason, Some(expected));
    }
}

#[test]
fn tampered_token_is_401() {
    // x25519: the AEAD tag fails. skynet: DES has no integrity; a flipped
    // first block decrypts to garbage whose padding still checks out, and
    // then the auth handler refuses the garbage token.
    for suite in SUITES {
        let out = login(suite, hello(), ServerConfig::default(), 5, flip(5));
        assert_eq!(out.client.unwrap_err(), unauthorized());
        assert_eq!(out.server_secret, None);
        if suite == Suite::X25519 {
            assert_eq!(
                out.server_reason,
                Some(LoginError::Modern(ModernError::BadToken))
            );
        }
    }
}

#[test]
fn tampered_key_lines_break_the_proof() {
    // Changing the challenge or either public key in flight makes the two
    // sides disagree, so the proof fails.
    for suite in SUITES {
        for line in [1, 2, 3] {
            let out = login(suite, hello(), ServerConfig::default(), 6, flip(line));
            assert_eq!(
                out.client.unwrap_err(),
                unauthorized(),
                "{suite} line {line}"
            );
            assert_eq!(out.server_secret, None);
        }
    }
}

#[test]
fn skynet_suite_can_be_refused() {
    let config = ServerConfig {
        allow_skynet: false,
        ..ServerConfig::default()
    };
    let out = login(Suite::Skynet, hello(), config.clone(), 7, |_, _| {});
    // No line 3: the client's next line is the status.
    assert_eq!(out.client.unwrap_err(), unauthorized());
    assert_eq!(out.server_reason, Some(LoginError::SkynetDisabled));
    // x25519 clients are unaffected.
    let out = login(Suite::X25519, hello(), config, 7, |_, _| {});
    assert!(out.client.is_ok());
}

#[test]
fn low_order_points_are_rejected() {
    // The all-zero point, the point 1, and points of order 8 (from the
    // well-known curve25519 low-order list), also with the high bit set,
    // which X25519 ignores.
    let points: [&str; 5] = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
    ];
    for hex in points {
        let point: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        // Server side: line 3 then 401.
        let (server, _) = ServerLogin::start(ServerConfig::default(), Rng(8).server());
        let KeyStep::Reject(rejected) = server.receive(skynet::base64_encode(&point).as_bytes())
        else {
            panic!("low-order point {hex} accepted");
        };
        assert_eq!(
            rejected.reason,
            LoginError::Modern(ModernError::LowOrderPoint)
        );
        assert_eq!(rejected.reply.len(), 45 + 17);
        assert!(rejected.reply.ends_with(b"\n401 Unauthorized\n"));

        // Client side: a server sending a low-order point is refused.
        let out = login(
            Suite::X25519,
            hello(),
            ServerConfig::default(),
            9,
            |n, line| {
                if n == 3 {
                    *line = skynet::base64_encode(&point).into_bytes();
                }
            },
        );
        assert_eq!(
            out.client.unwrap_err(),
            LoginError::Modern(ModernError::LowOrderPoint)
        );
    }
}

#[test]
fn wrong_key_lengths_are_401_without_line3() {
    for len in [0usize, 1, 7, 9, 16, 31, 33, 64] {
        let (server, _) = ServerLogin::start(ServerConfig::default(), Rng(10).server());
        let line = skynet::base64_encode(&vec![0x42; len]);
        let KeyStep::Reject(rejected) = server.receive(line.as_bytes()) else {
            panic!("{len}-byte key accepted");
        };
        assert_eq!(rejected.reply, b"401 Unauthorized\n", "{len}");
    }
}

#[test]
fn modern_public_key_is_what_the_client_sends() {
    let mut rng = Rng(11);
    let random = rng.client();
    let client = ClientLogin::new(Suite::X25519, hello(), random.clone());
    let (_, line2) = client.receive(b"obLD1OX2Bxg=").unwrap();
    let expected = skynet::base64_encode(&modern::public_key(&random.x25519_key));
    assert_eq!(line2, format!("{expected}\n").as_bytes());
}

// ------------------------------------------------------------ properties

/// Lines an attacker might send: raw bytes, or base64 of interesting lengths.
fn any_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        prop_oneof![Just(0usize), Just(8), Just(16), Just(32), 0usize..60]
            .prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n))
            .prop_map(|bytes| skynet::base64_encode(&bytes).into_bytes()),
    ]
}

/// The honest client lines of a login, to reach every server state.
fn honest_client_lines(suite: Suite, seed: u64) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    login(suite, hello(), ServerConfig::default(), seed, |n, line| {
        if matches!(n, 2 | 4 | 5) {
            lines.push(line.clone());
        }
    });
    lines
}

proptest! {
    #[test]
    fn server_never_panics(
        skynet_suite in any::<bool>(),
        allow_skynet in any::<bool>(),
        honest in 0usize..=3,
        seed in any::<u64>(),
        garbage in proptest::collection::vec(any_line(), 1..6),
    ) {
        let suite = if skynet_suite { Suite::Skynet } else { Suite::X25519 };
        let lines: Vec<Vec<u8>> = honest_client_lines(suite, seed)
            .into_iter()
            .take(honest)
            .chain(garbage)
            .collect();
        let config = ServerConfig {
            allow_skynet,
            ..ServerConfig::default()
        };
        let (server, _) = ServerLogin::start(config, Rng(seed).server());
        let mut server = Server::Key(server);
        for line in &lines {
            server = match server {
                Server::Key(s) => match s.receive(line) {
                    KeyStep::Continue(next, line3) => {
                        prop_assert_eq!(line3.len(), if next.suite() == Suite::Skynet { 13 } else { 45 });
                        Server::Proof(next)
                    }
                    KeyStep::Reject(r) => {
                        prop_assert!(r.reply.ends_with(b"401 Unauthorized\n"));
                        Server::Done
                    }
                },
                Server::Proof(s) => match s.receive(line) {
                    Ok(next) => Server::Token(next),
                    Err(r) => {
                        prop_assert_eq!(&r.reply[..], b"401 Unauthorized\n");
                        Server::Done
                    }
                },
                Server::Token(s) => match s.receive(line) {
                    Ok(auth) => {
                        let _ = auth.credentials();
                        let _ = auth.finish(LoginOutcome::Forbidden);
                        Server::Done
                    }
                    Err(r) => {
                        prop_assert_eq!(&r.reply[..], b"401 Unauthorized\n");
                        Server::Done
                    }
                },
                Server::Done => Server::Done,
            };
        }
    }

    #[test]
    fn client_never_panics(
        skynet_suite in any::<bool>(),
        seed in any::<u64>(),
        lines in proptest::collection::vec(any_line(), 1..5),
    ) {
        let suite = if skynet_suite { Suite::Skynet } else { Suite::X25519 };
        let mut client = Client::Challenge(ClientLogin::new(suite, hello(), Rng(seed).client()));
        for line in &lines {
            client = match client {
                Client::Challenge(c) => c.receive(line).map_or_else(|e| Client::Done(Err(e)), |(n, _)| Client::ServerKey(n)),
                Client::ServerKey(c) => c.receive(line).map_or_else(|e| Client::Done(Err(e)), |(n, _)| Client::Status(n)),
                Client::Status(c) => Client::Done(c.receive(line)),
                done => done,
            };
        }
    }

    #[test]
    fn token_parsing_never_panics(token in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Credentials::parse_token(&token);
    }

    #[test]
    fn credentials_round_trip(
        user in proptest::collection::vec(any::<u8>(), 1..20),
        server in proptest::collection::vec(any::<u8>(), 1..20),
        password in proptest::collection::vec(any::<u8>(), 1..20),
    ) {
        let creds = Credentials::new(user, server, password);
        prop_assert_eq!(Credentials::parse_token(&creds.token()), Some(creds));
    }
}
