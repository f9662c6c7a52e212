use super::*;
use crate::handshake::{self, SessionSecret};

/// `testdata/vectors/sealed_channel.json` (pyca/cryptography).
fn vector() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/vectors/sealed_channel.json"
    );
    let text = std::fs::read_to_string(path).expect("sealed_channel.json");
    serde_json::from_str(&text).expect("JSON")
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn key(text: &str) -> Key32 {
    unhex(text).try_into().expect("32 bytes")
}

fn field<'a>(v: &'a serde_json::Value, name: &str) -> &'a str {
    v[name].as_str().unwrap_or_else(|| panic!("{name}"))
}

#[test]
fn known_answer_handshake_and_keys() {
    let v = vector();
    let secret = key(field(&v, "gate_secret"));
    let (c2s, s2c) = keys(&secret, field(&v, "index").as_bytes());
    assert_eq!(c2s, key(field(&v, "key_c2s")));
    assert_eq!(s2c, key(field(&v, "key_s2c")));
    let payload = handshake::sign_sealed(
        &SessionSecret::X25519(secret),
        field(&v, "username").as_bytes(),
        field(&v, "index").as_bytes(),
        field(&v, "ext").as_bytes(),
    );
    assert_eq!(payload, field(&v, "handshake").as_bytes());
    let hs = codec::Handshake::parse(&Bytes::from(payload)).unwrap();
    let secret = SessionSecret::X25519(secret);
    assert_eq!(handshake::verify(&secret, &hs, true), Ok(()));
    // The same MAC does not pass for a handshake that does not ask for
    // sealing: a relay cannot strip the request.
    assert_eq!(
        handshake::verify(&secret, &hs, false),
        Err(handshake::HandshakeError::MacMismatch)
    );
}

/// Both sides of the vector's channel, in both directions: sealing gives
/// the vector's bytes (one package at a time and all at once), opening
/// gives the plaintexts back (stream and WebSocket forms).
#[test]
fn known_answer_packages() {
    let v = vector();
    let secret = key(field(&v, "gate_secret"));
    let index = field(&v, "index").as_bytes();
    for (name, sender, receiver) in [
        (
            "c2s",
            Channel::client(&secret, index),
            Channel::gate(&secret, index),
        ),
        (
            "s2c",
            Channel::gate(&secret, index),
            Channel::client(&secret, index),
        ),
    ] {
        let packages = v[name].as_array().unwrap();
        let (mut one, mut all) = (sender.send.clone(), sender.send.clone());
        let mut stream = BytesMut::new();
        let mut plain = BytesMut::from(&b"plain prefix"[..]);
        for p in packages {
            let plaintext = unhex(field(p, "plaintext"));
            let mut out = BytesMut::new();
            put_sealed(&mut one, &plaintext, &mut out).unwrap();
            assert_eq!(&out[..], &unhex(field(p, "stream"))[..], "{name}");
            stream.extend_from_slice(&out);
            plain.put_u16(plaintext.len() as u16);
            plain.extend_from_slice(&plaintext);
        }
        seal_packages(&mut all, &mut plain, 12).unwrap();
        assert_eq!(&plain[..12], b"plain prefix");
        assert_eq!(&plain[12..], &stream[..], "{name}: all at once");
        assert_eq!(all.next(), packages.len() as u64);

        let (mut stream_side, mut ws_side) = (receiver.recv.clone(), receiver.recv.clone());
        for p in packages {
            let body = decode_sealed(&mut stream).expect("a whole package");
            let opened = stream_side.open_body(body).unwrap();
            assert_eq!(&opened[..], &unhex(field(p, "plaintext"))[..]);
            let message = BytesMut::from(&unhex(field(p, "websocket"))[..]);
            let opened = ws_side.open_body(message).unwrap();
            assert_eq!(&opened[..], &unhex(field(p, "plaintext"))[..]);
        }
        assert!(stream.is_empty());
    }
}

fn sealed(dir: &mut Direction, payloads: &[&[u8]]) -> Vec<BytesMut> {
    payloads
        .iter()
        .map(|p| {
            let mut out = BytesMut::new();
            put_sealed(dir, p, &mut out).unwrap();
            out.advance(HEADER_LEN);
            out
        })
        .collect()
}

#[test]
fn altered_dropped_replayed_reordered_packages_fail() {
    let channel = Channel::client(&[7; 32], b"1");
    let mut send = channel.send.clone();
    let bodies = sealed(&mut send, &[b"one", b"two", b"three"]);
    let gate = Channel::gate(&[7; 32], b"1");

    // A flipped bit anywhere: ciphertext or tag.
    for at in [0, 2, 3, 18] {
        let mut recv = gate.recv.clone();
        let mut body = bodies[0].clone();
        body[at] ^= 0x01;
        assert_eq!(recv.open_body(body), Err(SealError::Open), "bit at {at}");
        assert_eq!(recv.next(), 0, "a failure takes no counter");
    }
    // Dropped: the second package first.
    let mut recv = gate.recv.clone();
    assert_eq!(recv.open_body(bodies[1].clone()), Err(SealError::Open));
    // Replayed.
    let mut recv = gate.recv.clone();
    assert_eq!(&recv.open_body(bodies[0].clone()).unwrap()[..], b"one");
    assert_eq!(recv.open_body(bodies[0].clone()), Err(SealError::Open));
    // In order they open.
    let mut recv = gate.recv.clone();
    for (body, text) in bodies.iter().zip([&b"one"[..], b"two", b"three"]) {
        assert_eq!(&recv.open_body(body.clone()).unwrap()[..], text);
    }
    // Another connection's keys (index 2), the other direction's key, a
    // body shorter than a tag.
    let mut other = Channel::gate(&[7; 32], b"2").recv;
    assert_eq!(other.open_body(bodies[0].clone()), Err(SealError::Open));
    let mut wrong_way = Channel::client(&[7; 32], b"1").recv;
    assert_eq!(wrong_way.open_body(bodies[0].clone()), Err(SealError::Open));
    let mut recv = gate.recv.clone();
    assert_eq!(
        recv.open_body(BytesMut::from(&[0u8; 15][..])),
        Err(SealError::Short)
    );
}

#[test]
fn counters_do_not_wrap() {
    let mut dir = Direction::from_parts([1; 32], u64::MAX);
    let mut out = BytesMut::new();
    assert_eq!(
        put_sealed(&mut dir, b"x", &mut out),
        Err(SealError::Exhausted)
    );
    let mut buf = BytesMut::from(&[0u8, 1, b'a', 0, 1, b'b'][..]);
    let mut dir = Direction::from_parts([1; 32], u64::MAX - 1);
    assert_eq!(
        seal_packages(&mut dir, &mut buf, 0),
        Err(SealError::Exhausted)
    );
}

#[test]
fn stream_decoding_waits_for_whole_packages() {
    let mut dir = Direction::from_parts([3; 32], 0);
    let mut wire = BytesMut::new();
    put_sealed(&mut dir, &[9; 300], &mut wire).unwrap();
    assert_eq!(sealed_unit_len(&wire), Some(2 + 300 + TAG_LEN));
    for cut in [0, 1, 2, 100, 2 + 300 + TAG_LEN - 1] {
        let mut partial = BytesMut::from(&wire[..cut]);
        assert_eq!(decode_sealed(&mut partial), None, "cut at {cut}");
        assert_eq!(sealed_unit_len(&partial), None);
        assert_eq!(partial.len(), cut, "nothing taken");
    }
    let body = decode_sealed(&mut wire).unwrap();
    assert_eq!(body.len(), 300 + TAG_LEN);
}

#[test]
fn debug_hides_the_key() {
    let dir = Direction::from_parts([0xab; 32], 5);
    assert_eq!(format!("{dir:?}"), "Direction { next: 5, .. }");
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Sealing any batch at once is sealing it package by package.
        #[test]
        fn batch_equals_one_by_one(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..12),
            prefix in prop::collection::vec(any::<u8>(), 0..8),
            first in 0u64..1000,
        ) {
            let mut one = Direction::from_parts([5; 32], first);
            let mut all = one.clone();
            let mut expected = BytesMut::from(&prefix[..]);
            let mut batch = BytesMut::from(&prefix[..]);
            for p in &payloads {
                put_sealed(&mut one, p, &mut expected).unwrap();
                batch.put_u16(p.len() as u16);
                batch.extend_from_slice(p);
            }
            seal_packages(&mut all, &mut batch, prefix.len()).unwrap();
            prop_assert_eq!(&batch[..], &expected[..]);
            prop_assert_eq!(all.next(), one.next());
        }
    }
}
