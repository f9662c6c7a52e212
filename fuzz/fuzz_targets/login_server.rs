//! The server login state machine on arbitrary lines, both suites, pinned
//! or not, with fixed randomness. The first byte picks the suite of the
//! honest prefix, the skynet switch, the server's long-term key and
//! whether it requires pinned logins (and then whether the honest client
//! pins it), and how many honest client lines (0–3) go first, so
//! every state (key, proof, token, authenticate) gets arbitrary input. The
//! rest of the input is split on LF into further lines. Nothing panics;
//! every refusal ends in exactly `401 Unauthorized\n`; line 3 has the
//! length of its suite.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loginproto::login::StaticKey;
use loginproto::login::{
    ClientLogin, ClientRandom, KeyStep, LoginOutcome, ServerConfig, ServerLogin, ServerRandom,
    Suite,
};
use loginproto::token::Credentials;

fn server_random() -> ServerRandom {
    ServerRandom {
        challenge: *b"\xa1\xb2\xc3\xd4\xe5\xf6\x07\x18",
        skynet_key: *b"\x5e\x2f\x3a\x4b\x6c\x7d\x8e\x9f",
        x25519_key: [0x42; 32],
    }
}

/// The server's long-term key, when it has one.
fn static_key() -> StaticKey {
    StaticKey::from_private([0x5a; 32])
}

/// Lines 2, 4 and 5 of an honest client against the fixed server (with
/// its long-term key, which the client pins when `pinned`).
fn honest_lines(suite: Suite, pinned: bool) -> Vec<Vec<u8>> {
    let strip = |line: &[u8]| line[..line.len() - 1].to_vec();
    let config = ServerConfig {
        static_key: Some(static_key()),
        ..ServerConfig::default()
    };
    let (server, line1) = ServerLogin::start(config, server_random());
    let credentials = Credentials::new("hello", "sample", "password");
    let random = ClientRandom {
        skynet_key: *b"\x01\x02\x03\x04\x05\x06\x07\x08",
        x25519_key: [0x24; 32],
    };
    let client = if pinned {
        ClientLogin::pinned(credentials, random, *static_key().public())
    } else {
        ClientLogin::new(suite, credentials, random)
    };
    let (client, line2) = client.receive(&strip(&line1)).expect("challenge");
    let KeyStep::Continue(_, line3) = server.receive(&strip(&line2)) else {
        panic!("honest key refused");
    };
    let (_, lines45) = client.receive(&strip(&line3)).expect("server key");
    let mut out = vec![strip(&line2)];
    out.extend(
        lines45[..lines45.len() - 1]
            .split(|&b| b == b'\n')
            .map(<[u8]>::to_vec),
    );
    out
}

/// Honest lines: skynet, x25519, pinned x25519.
static HONEST: OnceLock<[Vec<Vec<u8>>; 3]> = OnceLock::new();

const UNAUTHORIZED: &[u8] = b"401 Unauthorized\n";

enum State {
    Key(loginproto::login::AwaitClientKey),
    Proof(loginproto::login::AwaitProof),
    Token(loginproto::login::AwaitToken),
    Done,
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let honest = HONEST.get_or_init(|| {
        [
            honest_lines(Suite::Skynet, false),
            honest_lines(Suite::X25519, false),
            honest_lines(Suite::X25519, true),
        ]
    });
    // Bits 6–7: 0 no long-term key; 1 a key, the client does not pin it;
    // 2 a key, pinned; 3 pinned logins required, pinned.
    let key_mode = control >> 6;
    let which = if key_mode >= 2 {
        2
    } else {
        usize::from(control & 1)
    };
    let prefix = &honest[which][..usize::from((control >> 2) & 3)];
    let config = ServerConfig {
        allow_skynet: control & 2 == 0,
        static_key: (key_mode > 0).then(static_key),
        require_pinned: key_mode == 3,
    };
    let outcome = match (control >> 4) & 3 {
        0 => LoginOutcome::Ok {
            subid: rest.iter().take(4).copied().collect(),
        },
        1 => LoginOutcome::Unauthorized,
        2 => LoginOutcome::Forbidden,
        _ => LoginOutcome::NotAcceptable,
    };

    let (server, line1) = ServerLogin::start(config, server_random());
    assert_eq!(line1, b"obLD1OX2Bxg=\n");
    let mut state = State::Key(server);
    let lines = prefix
        .iter()
        .map(Vec::as_slice)
        .chain(rest.split(|&b| b == b'\n'));
    for line in lines {
        state = match state {
            State::Key(s) => match s.receive(line) {
                KeyStep::Continue(next, line3) => {
                    let expected = if next.suite() == Suite::Skynet {
                        13
                    } else {
                        45
                    };
                    assert_eq!(line3.len(), expected);
                    State::Proof(next)
                }
                KeyStep::Reject(r) => {
                    assert!(
                        r.reply == UNAUTHORIZED
                            || r.reply.len() == 45 + 17
                            || r.reply.len() == 13 + 17
                    );
                    assert!(r.reply.ends_with(UNAUTHORIZED));
                    State::Done
                }
            },
            State::Proof(s) => match s.receive(line) {
                Ok(next) => State::Token(next),
                Err(r) => {
                    assert_eq!(r.reply, UNAUTHORIZED);
                    State::Done
                }
            },
            State::Token(s) => match s.receive(line) {
                Ok(auth) => {
                    let _ = auth.credentials();
                    let status = auth.finish(outcome.clone());
                    assert!(status.ends_with(b"\n"));
                    assert_eq!(status.iter().filter(|&&b| b == b'\n').count(), 1);
                    State::Done
                }
                Err(r) => {
                    assert_eq!(r.reply, UNAUTHORIZED);
                    State::Done
                }
            },
            State::Done => break,
        };
    }
});
