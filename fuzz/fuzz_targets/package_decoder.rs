//! Package framing (`PackageCodec`) on arbitrary bytes in arbitrary reads:
//! decoding never panics, re-encoding the frames gives back exactly the
//! consumed bytes, and the typed parsers (handshake on the first package,
//! request/response on the others) re-encode to the same package.
#![no_main]

use bytes::BytesMut;
use codec::{Handshake, PackageCodec, Request, Response, encode_package};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let reads = fuzz::reads(data);
    let mut codec = PackageCodec;
    let mut buf = BytesMut::new();
    let mut fed = Vec::new();
    let mut again = BytesMut::new();
    let mut frames = 0usize;
    for read in reads {
        fed.extend_from_slice(read);
        buf.extend_from_slice(read);
        while let Some(frame) = codec
            .decode(&mut buf)
            .expect("package decoding cannot fail")
        {
            let mut package = BytesMut::new();
            encode_package(&frame, &mut package).expect("a decoded payload fits");
            if frames == 0 {
                if let Some(h) = Handshake::parse(&frame) {
                    let payload =
                        Handshake::encode(&h.username, &h.index, &h.mac, h.ext.as_deref());
                    assert_eq!(&payload[..], &frame[..]);
                    let _ = h.index_number();
                }
            } else {
                if let Some(r) = Request::parse(frame.clone()) {
                    let mut out = BytesMut::new();
                    Request::encode(&r.content, r.number, &mut out).expect("fits");
                    assert_eq!(out, package);
                }
                if let Some(r) = Response::parse(frame.clone()) {
                    let mut out = BytesMut::new();
                    Response::encode(&r.content, r.flag, r.number, &mut out).expect("fits");
                    assert_eq!(out, package);
                }
            }
            again.extend_from_slice(&package);
            frames += 1;
        }
        assert_eq!(&again[..], &fed[..fed.len() - buf.len()]);
    }
    // End of stream: a partial package is discarded, never an error.
    assert!(
        codec
            .decode_eof(&mut buf)
            .expect("eof cannot fail")
            .is_none()
    );
    assert!(buf.is_empty());
});
