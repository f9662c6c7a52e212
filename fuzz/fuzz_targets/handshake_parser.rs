//! The message parsers on arbitrary payloads: `Handshake::parse` (and
//! `LuaNumber::parse` on its index and on the whole input),
//! `Request::parse`, `Response::parse`, `Ext::parse` and `Welcome::parse`
//! (on the handshake's extension field and on the whole input). Nothing panics; what parses
//! re-encodes to the same bytes (an extension field to the same meaning);
//! numbers read back from their own text.
#![no_main]

use bytes::{Bytes, BytesMut};
use codec::{Ext, Handshake, LuaNumber, PackageCodec, Request, Response, Welcome};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fn check_number(text: &[u8]) {
    match LuaNumber::parse(text) {
        Some(LuaNumber::Int(i)) => {
            let back = LuaNumber::parse(i.to_string().as_bytes());
            assert!(matches!(back, Some(LuaNumber::Int(j)) if j == i));
        }
        Some(LuaNumber::Float(f)) => {
            // strtod never yields NaN here: inf/nan words are refused.
            assert!(!f.is_nan());
            if f.is_finite() {
                let back = LuaNumber::parse(format!("{f:e}").as_bytes());
                assert!(matches!(back, Some(LuaNumber::Float(g)) if g.to_bits() == f.to_bits()));
            }
        }
        None => {}
    }
}

fn check_ext(text: &[u8]) {
    match Ext::parse(text) {
        Ok(Some(ext)) => {
            assert!(ext.version >= 1);
            assert_eq!(Ext::parse(ext.encode().as_bytes()), Ok(Some(ext)));
        }
        Ok(None) => assert!(text.is_empty()),
        Err(_) => assert!(!text.is_empty()),
    }
    if let Ok(welcome) = Welcome::parse(text) {
        assert!(welcome.version >= 1);
        assert_eq!(Welcome::parse(welcome.encode().as_bytes()), Ok(welcome));
    }
}

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);

    let colons = data.iter().filter(|&&b| b == b':').count();
    match Handshake::parse(&payload) {
        Some(h) => {
            assert!(colons >= 2);
            let again = Handshake::encode(&h.username, &h.index, &h.mac, h.ext.as_deref());
            assert_eq!(&again[..], data);
            check_number(&h.index);
            if let Some(ext) = &h.ext {
                check_ext(ext);
            }
        }
        None => assert!(colons < 2),
    }
    check_number(data);
    check_ext(data);

    match Request::parse(payload.clone()) {
        Some(r) => {
            let mut out = BytesMut::new();
            if Request::encode(&r.content, r.number, &mut out).is_ok() {
                let frame = PackageCodec
                    .decode(&mut out)
                    .expect("decodes")
                    .expect("complete");
                assert_eq!(frame, payload);
            } else {
                assert!(data.len() > 65535);
            }
        }
        None => assert!(data.len() < 4),
    }
    match Response::parse(payload.clone()) {
        Some(r) => {
            let mut out = BytesMut::new();
            if Response::encode(&r.content, r.flag, r.number, &mut out).is_ok() {
                let frame = PackageCodec
                    .decode(&mut out)
                    .expect("decodes")
                    .expect("complete");
                assert_eq!(frame, payload);
            } else {
                assert!(data.len() > 65535);
            }
        }
        None => assert!(data.len() < 5),
    }
});
