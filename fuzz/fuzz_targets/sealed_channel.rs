//! The sealed gate channel (`docs/PROTOCOL.md` §3.2) on a man in the
//! middle's input: the client's sealed packages of the known-answer vector
//! (`testdata/vectors/sealed_channel.json`), rearranged, repeated, dropped
//! and with bits flipped as the fuzzer says, mixed with raw bytes, arriving
//! in arbitrary reads, into a sealed connection machine and into
//! `loginproto::seal`'s decoder.
//!
//! Checks: no panic; every package that opens is the vector's package of
//! that counter, unaltered (nothing forged, replayed or reordered is ever
//! accepted); after the first that does not open the connection ends with
//! `BadSeal`; what the machine writes (heartbeat answers) opens with the
//! gate's key.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gate_core::connection::{ConnLimits, Connection, Input, Mapping};
use gate_core::{End, ProtocolError, Time};
use libfuzzer_sys::fuzz_target;
use loginproto::seal::{self, Channel};

/// What the target needs of the vector.
struct Vector {
    secret: [u8; 32],
    index: Vec<u8>,
    /// The client's packages: (plaintext, stream bytes).
    packages: Vec<(Vec<u8>, Vec<u8>)>,
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn vector() -> &'static Vector {
    static VECTOR: OnceLock<Vector> = OnceLock::new();
    VECTOR.get_or_init(|| {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../testdata/vectors/sealed_channel.json"))
                .expect("JSON");
        let text = |name: &str| v[name].as_str().expect("a field").to_owned();
        Vector {
            secret: unhex(&text("gate_secret")).try_into().expect("32 bytes"),
            index: text("index").into_bytes(),
            packages: v["c2s"]
                .as_array()
                .expect("packages")
                .iter()
                .map(|p| {
                    let field = |name: &str| unhex(p[name].as_str().expect("hex"));
                    (field("plaintext"), field("stream"))
                })
                .collect(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let v = vector();
    // The man in the middle's stream: genuine packages in any order and
    // number, flipped bits, raw bytes. The second half of each op byte
    // picks where the reads are cut.
    let mut wire = Vec::new();
    let mut cuts = Vec::new();
    for &op in data {
        match op >> 6 {
            0 => wire.extend_from_slice(&v.packages[usize::from(op) % v.packages.len()].1),
            1 => {
                if let Some(last) = wire.last_mut() {
                    *last ^= 1 << (op & 7);
                }
            }
            2 => wire.push(op),
            _ => cuts.push(wire.len()),
        }
    }

    // The decoder alone.
    let mut recv = Channel::gate(&v.secret, &v.index).recv;
    let mut buf = BytesMut::from(&wire[..]);
    let mut opened = 0;
    while let Some(body) = seal::decode_sealed(&mut buf) {
        match recv.open_body(body) {
            Ok(plain) => {
                assert_eq!(&plain[..], &v.packages[opened].0[..], "only the genuine package");
                opened += 1;
            }
            Err(_) => break,
        }
    }

    // The connection machine, the same bytes in the fuzzer's reads.
    let limits = Arc::new(ConnLimits::default());
    let now = Time::from_epoch(Duration::from_secs(1));
    let mut conn = Connection::new(now, Mapping::Stream, limits);
    let mut first = BytesMut::new();
    codec::package::encode_package(b"user:2:mac:v=1,seal=1", &mut first).expect("fits");
    let mut out = BytesMut::new();
    assert!(matches!(
        conn.next_input(&mut first, &mut out),
        Ok(Some(Input::Handshake(_)))
    ));
    conn.accepted(now, true, Some(Channel::gate(&v.secret, &v.index)));
    let mut client = Channel::client(&v.secret, &v.index);
    let mut received = BytesMut::new();
    let mut inputs = 0;
    let mut at = 0;
    cuts.push(wire.len());
    'reads: for cut in cuts {
        let cut = cut.clamp(at, wire.len());
        received.extend_from_slice(&wire[at..cut]);
        at = cut;
        loop {
            match conn.next_input(&mut received, &mut out) {
                Ok(Some(Input::Request(r))) => {
                    let mut plain = r.content.to_vec();
                    plain.extend_from_slice(&r.number.to_be_bytes());
                    // Requests are the vector's non-empty packages (the
                    // empty one is a heartbeat, answered below), in order.
                    let expected = v.packages.iter().filter(|p| !p.0.is_empty()).nth(inputs);
                    assert_eq!(Some(&plain), expected.map(|p| &p.0), "only the genuine package");
                    inputs += 1;
                }
                Ok(Some(Input::Handshake(_))) => panic!("a second handshake"),
                Ok(None) => break,
                Err(End::Protocol(ProtocolError::BadSeal)) => break 'reads,
                Err(End::Protocol(ProtocolError::InvalidPackage)) => {
                    // A genuine package the vector made too short for a
                    // request cannot be one; none is, but stop as the
                    // driver would.
                    break 'reads;
                }
                Err(other) => panic!("unexpected end {other:?}"),
            }
        }
        // Heartbeat answers (the vector's empty package) are sealed.
        while let Some(body) = seal::decode_sealed(&mut out) {
            let answer: Bytes = client.recv.open_body(body).expect("the gate's package opens");
            assert!(answer.is_empty());
        }
    }
});
