//! Gate handshakes recorded from live skynet (`msgserver_transcript.json`
//! and the gate connections of `login_transcript.json`) against
//! `loginproto::handshake::verify`.
//!
//! For every gate connection the first package is reassembled from the
//! client's writes (the transcript splits one and pipelines others) and
//! matched with the server's first reply: every handshake skynet answered
//! `200 OK` must verify, every `401 Unauthorized` must be a MAC mismatch, and
//! a `400 Bad Request` with a valid index must be a bad MAC encoding. 403 and
//! 404 are decided before the MAC and are only counted.

use std::collections::HashMap;
use std::path::PathBuf;

use bytes::Bytes;
use serde_json::Value;

use codec::message::Handshake;
use codec::status::GateStatus;
use loginproto::handshake::{self, HandshakeError, SessionSecret};

fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("transcript is JSON")
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("transcript hex"))
        .collect()
}

fn secret(text: &str) -> SessionSecret {
    SessionSecret::Skynet(unhex(text).try_into().expect("8-byte secret"))
}

/// Every username whose secret a transcript records.
fn secrets(files: &[&Value]) -> HashMap<Vec<u8>, SessionSecret> {
    let mut map = HashMap::new();
    for file in files {
        let mut all_values = vec![&file["values"]];
        for scenario in file["scenarios"].as_array().expect("scenarios") {
            all_values.push(&scenario["values"]);
        }
        for values in all_values {
            let Some(secret_hex) = values["secret"].as_str() else {
                continue;
            };
            let uid = values["uid"].as_str().or(values["user"].as_str());
            let (Some(uid), Some(server), Some(subid)) =
                (uid, values["server"].as_str(), values["subid"].as_str())
            else {
                continue;
            };
            let name = handshake::username(uid.as_bytes(), server.as_bytes(), subid.as_bytes());
            if let Some(recorded) = values["username"].as_str() {
                assert_eq!(name, recorded.as_bytes());
            }
            map.insert(name, secret(secret_hex));
        }
    }
    map
}

/// Per-connection reassembly of the first package and its reply.
#[derive(Default)]
struct Conn {
    gate: bool,
    written: Vec<u8>,
    first: Option<Vec<u8>>,
    reply: Option<GateStatus>,
}

/// First packages with their replies, over the gate connections of a file.
fn first_packages(file: &Value) -> Vec<(Vec<u8>, GateStatus)> {
    let mut conns: HashMap<String, Conn> = HashMap::new();
    let mut out = Vec::new();
    let mut finish = |conn: Conn| {
        if let (Some(first), Some(reply)) = (conn.first, conn.reply) {
            out.push((first, reply));
        }
    };
    for scenario in file["scenarios"].as_array().expect("scenarios") {
        for step in scenario["steps"].as_array().expect("steps") {
            let name = step["conn"].as_str().unwrap_or("").to_owned();
            if step["event"] == "connect" {
                let fresh = Conn {
                    gate: step["port"] == "gate",
                    ..Conn::default()
                };
                if let Some(old) = conns.insert(name, fresh) {
                    finish(old);
                }
                continue;
            }
            let Some(conn) = conns.get_mut(&name).filter(|c| c.gate) else {
                continue;
            };
            match step["dir"].as_str() {
                Some("C->S") if conn.first.is_none() => {
                    let hex = step["hex"].as_str().expect("first package is short");
                    conn.written.extend_from_slice(&unhex(hex));
                    if conn.written.len() >= 2 {
                        let len =
                            usize::from(u16::from_be_bytes([conn.written[0], conn.written[1]]));
                        if conn.written.len() >= 2 + len {
                            conn.first = Some(conn.written[2..2 + len].to_vec());
                        }
                    }
                }
                Some("S->C") if conn.first.is_some() && conn.reply.is_none() => {
                    let payload = unhex(step["hex"].as_str().expect("status hex"));
                    conn.reply = GateStatus::from_payload(&payload[2..]);
                    assert!(conn.reply.is_some(), "first reply is a status: {payload:?}");
                }
                _ => {}
            }
        }
    }
    for (_, conn) in conns {
        finish(conn);
    }
    out
}

#[test]
fn spec_example() {
    let secret = secret("8dbc0eb76b7a12f8");
    let name = handshake::username(b"hello", b"sample", b"1");
    let payload = handshake::sign(&secret, &name, b"1");
    assert_eq!(payload, b"aGVsbG8=@c2FtcGxl#MQ==:1:xEa32HAUlak=");
    let hs = Handshake::parse(&Bytes::from(payload)).expect("parses");
    assert_eq!(handshake::verify(&secret, &hs, false), Ok(()));
}

#[test]
fn recorded_handshakes_verify_as_skynet_decided() {
    let msg = load("msgserver_transcript.json");
    let login = load("login_transcript.json");
    let secrets = secrets(&[&msg, &login]);
    assert_eq!(secrets.len(), 3, "hello#1, hello#2, bob#4");

    let mut counts: HashMap<u16, usize> = HashMap::new();
    for file in [&msg, &login] {
        for (payload, reply) in first_packages(file) {
            *counts.entry(reply.code()).or_default() += 1;
            let text = String::from_utf8_lossy(&payload).into_owned();
            let hs = Handshake::parse(&Bytes::from(payload));
            let known = hs.as_ref().and_then(|hs| secrets.get(&hs.username[..]));
            match reply {
                GateStatus::OK => {
                    let (hs, secret) = (hs.as_ref().expect("parses"), known.expect("known user"));
                    assert_eq!(handshake::verify(secret, hs, false), Ok(()), "{text}");
                    // Re-signing gives the very same payload.
                    assert_eq!(
                        handshake::sign(secret, &hs.username, &hs.index),
                        text.as_bytes(),
                        "{text}"
                    );
                }
                GateStatus::UNAUTHORIZED => {
                    let (hs, secret) = (hs.as_ref().expect("parses"), known.expect("known user"));
                    assert_eq!(
                        handshake::verify(secret, hs, false),
                        Err(HandshakeError::MacMismatch),
                        "{text}"
                    );
                }
                GateStatus::BAD_REQUEST => {
                    let hs = hs.as_ref().expect("parses");
                    if hs.index_number().is_some() {
                        let secret = known.expect("known user");
                        assert_eq!(
                            handshake::verify(secret, hs, false),
                            Err(HandshakeError::BadMacEncoding),
                            "{text}"
                        );
                        *counts.entry(4000).or_default() += 1;
                    }
                }
                // Decided before the MAC (spec §5.2 steps 2 and 5).
                _ => {}
            }
        }
    }
    // 200: A–F, H0, H1, H2, I, J, K, K2, K3, bob-1…4, and L, N of the login
    // transcript. 401: G3, bob-5. 400: G5 (index `abc`), G8 (`QUJD!`).
    // 403: G1, G2, G9, H0b. 404: G4, G6, G7, M.
    let expected = HashMap::from([(200, 20), (401, 2), (400, 2), (4000, 1), (403, 4), (404, 4)]);
    assert_eq!(counts, expected);
}
