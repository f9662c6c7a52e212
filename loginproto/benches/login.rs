//! Costs of one login: the X25519 key agreement alone, and a complete
//! server + client login in memory (every line of both sides, including
//! base64 and line building) for each suite; plus one gate handshake
//! sign/verify per suite.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};

use codec::message::Handshake;
use loginproto::handshake::{self, SessionSecret};
use loginproto::login::{
    ClientLogin, ClientRandom, KeyStep, LoginOutcome, ServerConfig, ServerLogin, ServerRandom,
    Suite,
};
use loginproto::modern::{self, SessionKeys};
use loginproto::token::Credentials;

/// One full login; returns the client's secret so nothing is optimised away.
fn full_login(
    suite: Suite,
    server_random: &ServerRandom,
    client_random: &ClientRandom,
) -> SessionSecret {
    let strip = |line: &[u8]| line[..line.len() - 1].to_vec();
    let (server, line1) = ServerLogin::start(ServerConfig::default(), server_random.clone());
    let client = ClientLogin::new(
        suite,
        Credentials::new("hello", "sample", "password"),
        client_random.clone(),
    );
    let (client, line2) = client.receive(&strip(&line1)).expect("challenge");
    let KeyStep::Continue(server, line3) = server.receive(&strip(&line2)) else {
        panic!("key refused");
    };
    let (client, lines45) = client.receive(&strip(&line3)).expect("server key");
    let mut lines = lines45.split(|&b| b == b'\n');
    let proof = lines.next().expect("line 4");
    let token = lines.next().expect("line 5");
    let server = server.receive(proof).expect("proof");
    let auth = server.receive(token).expect("token");
    assert!(auth.credentials().is_some());
    let status = auth.finish(LoginOutcome::Ok {
        subid: b"1".to_vec(),
    });
    client.receive(&strip(&status)).expect("200").secret
}

fn login(c: &mut Criterion) {
    let server_random = ServerRandom {
        challenge: *b"\xa1\xb2\xc3\xd4\xe5\xf6\x07\x18",
        skynet_key: *b"\x5e\x2f\x3a\x4b\x6c\x7d\x8e\x9f",
        x25519_key: [0x42; 32],
    };
    let client_random = ClientRandom {
        skynet_key: *b"\x01\x02\x03\x04\x05\x06\x07\x08",
        x25519_key: [0x24; 32],
    };
    let server_public = modern::public_key(&server_random.x25519_key);
    let client_public = modern::public_key(&client_random.x25519_key);

    c.bench_function("x25519_public_key", |b| {
        b.iter(|| modern::public_key(black_box(&server_random.x25519_key)))
    });
    c.bench_function("x25519_shared_secret", |b| {
        b.iter(|| {
            modern::shared_secret(
                black_box(&server_random.x25519_key),
                black_box(&client_public),
            )
        })
    });
    c.bench_function("x25519_agree_and_derive", |b| {
        b.iter(|| {
            SessionKeys::agree(
                black_box(&server_random.x25519_key),
                black_box(&client_public),
                &server_random.challenge,
                &client_public,
                &server_public,
            )
        })
    });
    for suite in [Suite::Skynet, Suite::X25519] {
        c.bench_function(&format!("full_login_{suite}"), |b| {
            b.iter(|| full_login(suite, black_box(&server_random), black_box(&client_random)))
        });
    }
    let username = handshake::username(b"hello", b"sample", b"1");
    for secret in [
        SessionSecret::Skynet([7; 8]),
        SessionSecret::X25519([7; 32]),
    ] {
        let name = match secret {
            SessionSecret::Skynet(_) => "skynet",
            SessionSecret::X25519(_) => "x25519",
        };
        let parsed = Handshake::parse(&Bytes::from(handshake::sign(&secret, &username, b"1")))
            .expect("parses");
        c.bench_function(&format!("gate_handshake_sign_{name}"), |b| {
            b.iter(|| handshake::sign(black_box(&secret), black_box(&username), b"1"))
        });
        c.bench_function(&format!("gate_handshake_verify_{name}"), |b| {
            b.iter(|| handshake::verify(black_box(&secret), black_box(&parsed), false))
        });
    }
}

criterion_group!(benches, login);
criterion_main!(benches);
