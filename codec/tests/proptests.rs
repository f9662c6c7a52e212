//! Property tests: encode/decode round trips under arbitrary segmentation,
//! and decoders/parsers that never panic on arbitrary input.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

use codec::{
    Handshake, LineCodec, LineError, LuaNumber, MAX_PAYLOAD, PackageCodec, Request, Response,
    ResponseFlag, encode_package,
};

/// Cuts `data` at the given points (taken modulo its length, sorted).
fn chunks(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| {
            if data.is_empty() {
                0
            } else {
                c % (data.len() + 1)
            }
        })
        .collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| data[w[0]..w[1]].to_vec())
        .collect()
}

/// What [`feed_all`] saw.
struct Fed<E> {
    frames: Vec<Bytes>,
    /// Unconsumed bytes left in the buffer.
    rest: BytesMut,
    /// How many bytes were handed to the decoder (less than all after an error).
    fed: usize,
    error: Option<E>,
}

/// Feeds chunks to a decoder, collecting frames; the error, if any, stops.
fn feed_all<D: Decoder<Item = Bytes>>(decoder: &mut D, pieces: &[Vec<u8>]) -> Fed<D::Error> {
    let mut rest = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    for piece in pieces {
        rest.extend_from_slice(piece);
        fed += piece.len();
        loop {
            match decoder.decode(&mut rest) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    return Fed {
                        frames,
                        rest,
                        fed,
                        error: Some(e),
                    };
                }
            }
        }
    }
    Fed {
        frames,
        rest,
        fed,
        error: None,
    }
}

fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        prop_oneof![
            8 => prop::collection::vec(any::<u8>(), 0..64),
            1 => prop::collection::vec(any::<u8>(), 0..3000),
        ],
        0..20,
    )
}

fn hex_float_text(f: f64) -> String {
    let bits = f.to_bits();
    let sign = if bits >> 63 == 1 { "-" } else { "" };
    let exp = ((bits >> 52) & 0x7ff) as i64;
    let frac = bits & ((1 << 52) - 1);
    if exp == 0 {
        format!("{sign}0x0.{frac:013x}p-1022")
    } else {
        format!("{sign}0x1.{frac:013x}p{}", exp - 1023)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn packages_roundtrip_under_any_split(
        payloads in payloads(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut wire = BytesMut::new();
        for p in &payloads {
            if p.len() % 2 == 0 {
                encode_package(p, &mut wire).unwrap();
            } else {
                PackageCodec.encode(Bytes::from(p.clone()), &mut wire).unwrap();
            }
        }
        let Fed { frames, mut rest, error, .. } = feed_all(&mut PackageCodec, &chunks(&wire, &cuts));
        prop_assert!(error.is_none());
        prop_assert!(rest.is_empty());
        prop_assert_eq!(frames.len(), payloads.len());
        for (f, p) in frames.iter().zip(&payloads) {
            prop_assert_eq!(&f[..], &p[..]);
        }
        prop_assert!(PackageCodec.decode_eof(&mut rest).unwrap().is_none());
    }

    #[test]
    fn package_decoder_never_panics(
        data in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let Fed { frames, mut rest, error, .. } = feed_all(&mut PackageCodec, &chunks(&data, &cuts));
        prop_assert!(error.is_none());
        // What was consumed re-encodes to exactly the consumed bytes.
        let mut again = BytesMut::new();
        for f in &frames {
            encode_package(f, &mut again).unwrap();
        }
        prop_assert_eq!(&again[..], &data[..data.len() - rest.len()]);
        prop_assert!(PackageCodec.decode_eof(&mut rest).unwrap().is_none());
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn oversized_payloads_are_refused(extra in 1usize..1000) {
        let payload = vec![0u8; MAX_PAYLOAD + extra];
        let mut out = BytesMut::new();
        prop_assert!(encode_package(&payload, &mut out).is_err());
        prop_assert!(out.is_empty());
    }

    #[test]
    fn lines_roundtrip_under_any_split(
        lines in prop::collection::vec(
            prop::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..100),
            0..20,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut codec = LineCodec::new();
        let mut wire = BytesMut::new();
        for l in &lines {
            codec.encode(&l[..], &mut wire).unwrap();
        }
        let Fed { frames, mut rest, error, .. } = feed_all(&mut LineCodec::new(), &chunks(&wire, &cuts));
        prop_assert!(error.is_none());
        prop_assert!(rest.is_empty());
        prop_assert_eq!(frames.len(), lines.len());
        for (f, l) in frames.iter().zip(&lines) {
            prop_assert_eq!(&f[..], &l[..]);
        }
        prop_assert!(LineCodec::new().decode_eof(&mut rest).unwrap().is_none());
    }

    #[test]
    fn line_decoder_never_panics_and_enforces_limit(
        data in prop::collection::vec(
            prop_oneof![4 => any::<u8>(), 1 => Just(b'\n'), 1 => Just(b'\r')],
            0..600,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        limit in 0usize..300,
    ) {
        let pieces = chunks(&data, &cuts);
        let Fed { frames, rest, fed, error } = feed_all(&mut LineCodec::with_limit(limit), &pieces);
        let mut again = BytesMut::new();
        for f in &frames {
            prop_assert!(f.len() < limit.max(1), "a line longer than the limit came out");
            prop_assert!(!f.contains(&b'\n'));
            LineCodec::new().encode(f.clone(), &mut again).unwrap();
        }
        prop_assert_eq!(&again[..], &data[..fed - rest.len()]);
        match error {
            None => prop_assert!(rest.len() <= limit),
            Some(LineError::TooLong) => prop_assert!(rest.len() > limit),
            Some(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }

    #[test]
    fn lua_number_parse_never_panics(data in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = LuaNumber::parse(&data);
    }

    #[test]
    fn lua_number_parse_never_panics_on_numeral_like_text(
        text in "[ \t]?[+-]?(0[xX])?[0-9a-fA-F.]{0,40}([pPeE][+-]?[0-9]{0,6})?[ \t]?",
    ) {
        let _ = LuaNumber::parse(text.as_bytes());
    }

    #[test]
    fn lua_integers_roundtrip(i in any::<i64>()) {
        prop_assert!(matches!(LuaNumber::parse(i.to_string().as_bytes()), Some(LuaNumber::Int(v)) if v == i));
        let hex = format!("0x{:x}", i as u64);
        prop_assert!(matches!(LuaNumber::parse(hex.as_bytes()), Some(LuaNumber::Int(v)) if v == i));
    }

    #[test]
    fn lua_floats_roundtrip(bits in any::<u64>()) {
        let f = f64::from_bits(bits);
        prop_assume!(f.is_finite());
        // Rust prints the shortest text that reads back exactly.
        let dec = format!("{f:e}");
        match LuaNumber::parse(dec.as_bytes()) {
            Some(LuaNumber::Float(g)) => prop_assert_eq!(g.to_bits(), bits, "{}", dec),
            other => prop_assert!(false, "{} gave {:?}", dec, other),
        }
        let hex = hex_float_text(f);
        match LuaNumber::parse(hex.as_bytes()) {
            Some(LuaNumber::Float(g)) => prop_assert_eq!(g.to_bits(), bits, "{}", hex),
            other => prop_assert!(false, "{} gave {:?}", hex, other),
        }
    }

    #[test]
    fn lua_comparisons_are_consistent(i in any::<i64>(), bits in any::<u64>(), small in -(1i64 << 53)..(1i64 << 53)) {
        let f = f64::from_bits(bits);
        let (a, b) = (LuaNumber::Int(i), LuaNumber::Float(f));
        prop_assert_eq!(a.partial_cmp(&b), b.partial_cmp(&a).map(std::cmp::Ordering::reverse));
        prop_assert_eq!(a == b, b == a);
        // Where the integer is exact as a float, the float order is the truth.
        let s = LuaNumber::Int(small);
        prop_assert_eq!(s.partial_cmp(&b), (small as f64).partial_cmp(&f));
        // An integer equals the float made from it only if the conversion was exact.
        let g = i as f64;
        let exact = g < 9_223_372_036_854_775_808.0 && g as i64 == i;
        prop_assert_eq!(LuaNumber::Int(i) == LuaNumber::Float(g), exact);
    }

    #[test]
    fn handshake_parse_is_exact(data in prop::collection::vec(
        prop_oneof![4 => any::<u8>(), 1 => Just(b':')], 0..80)
    ) {
        let payload = Bytes::from(data.clone());
        let colons = data.iter().filter(|&&b| b == b':').count();
        match Handshake::parse(&payload) {
            None => prop_assert!(colons < 2),
            Some(h) => {
                prop_assert!(colons >= 2);
                prop_assert!(!h.username.contains(&b':') && !h.index.contains(&b':'));
                prop_assert!(!h.mac.contains(&b':'));
                prop_assert_eq!(h.ext.is_some(), colons >= 3);
                let again = Handshake::encode(&h.username, &h.index, &h.mac, h.ext.as_deref());
                prop_assert_eq!(again, data);
                let _ = h.index_number();
            }
        }
    }

    #[test]
    fn requests_and_responses_roundtrip(
        content in prop::collection::vec(any::<u8>(), 0..200),
        number in any::<u32>(),
        flag in any::<u8>(),
    ) {
        let mut wire = BytesMut::new();
        Request::encode(&content, number, &mut wire).unwrap();
        let frame = PackageCodec.decode(&mut wire).unwrap().unwrap();
        let r = Request::parse(frame).unwrap();
        prop_assert_eq!(&r.content[..], &content[..]);
        prop_assert_eq!(r.number, number);

        Response::encode(&content, ResponseFlag(flag), number, &mut wire).unwrap();
        let frame = PackageCodec.decode(&mut wire).unwrap().unwrap();
        let r = Response::parse(frame).unwrap();
        prop_assert_eq!(&r.content[..], &content[..]);
        prop_assert_eq!(r.flag, ResponseFlag(flag));
        prop_assert_eq!(r.number, number);
        prop_assert!(wire.is_empty());
    }

    #[test]
    fn request_and_response_parsers_never_panic(data in prop::collection::vec(any::<u8>(), 0..16)) {
        let payload = Bytes::from(data.clone());
        prop_assert_eq!(Request::parse(payload.clone()).is_some(), data.len() >= 4);
        prop_assert_eq!(Response::parse(payload).is_some(), data.len() >= 5);
    }
}
