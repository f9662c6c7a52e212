//! Micro-costs of the skynet crypt primitives on the sizes the protocols use:
//! one login (DH exchange + secret, hmac64 proof, DES token, base64 lines) and
//! one gate handshake (hashkey of the handshake text).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

use loginproto::skynet::{
    Padding, base64_decode, desdecode, desencode, dhexchange, dhsecret, hashkey, hmac_hash, hmac64,
};

fn primitives(c: &mut Criterion) {
    let private: [u8; 8] = *b"\x8b\x62\x6d\xf7\x7f\x54\xfa\xfe";
    let peer_public: [u8; 8] = *b"\x91\x95\x9f\xa8\x66\x93\x06\x9c";
    let challenge: [u8; 8] = *b"\x01\x23\x45\x67\x89\xab\xcd\xef";
    let secret: [u8; 8] = *b"\xd2\xf5\x20\xc3\xe9\x00\x36\xe0";
    // A gate handshake line: b64(uid)@b64(server)#b64(subid):index, 40 bytes.
    let handshake = b"dXNlcm5hbWUx@c2FtcGxlc2VydmVy#MTIzNDU:17";
    assert_eq!(handshake.len(), 40);
    let token = [0x5a_u8; 64];
    let sealed = desencode(&secret, &token, Padding::Iso7816_4);
    // A base64 key line as the login server receives it: 8 bytes, 12 chars.
    let line = b"QUJDREVGR0g=";

    c.bench_function("dhexchange", |b| b.iter(|| dhexchange(black_box(&private))));
    c.bench_function("dhsecret", |b| {
        b.iter(|| dhsecret(black_box(&peer_public), black_box(&private)))
    });
    c.bench_function("hmac64", |b| {
        b.iter(|| hmac64(black_box(&challenge), black_box(&secret)))
    });
    c.bench_function("hashkey_40B", |b| b.iter(|| hashkey(black_box(handshake))));
    c.bench_function("hmac_hash_40B", |b| {
        b.iter(|| hmac_hash(black_box(&secret), black_box(handshake)))
    });
    c.bench_function("desencode_64B", |b| {
        b.iter(|| desencode(black_box(&secret), black_box(&token), Padding::Iso7816_4))
    });
    c.bench_function("desdecode_64B", |b| {
        b.iter(|| desdecode(black_box(&secret), black_box(&sealed), Padding::Iso7816_4))
    });
    c.bench_function("des_roundtrip_64B", |b| {
        b.iter(|| {
            let sealed = desencode(black_box(&secret), black_box(&token), Padding::Iso7816_4);
            desdecode(&secret, &sealed, Padding::Iso7816_4)
        })
    });
    c.bench_function("base64_decode_12", |b| {
        b.iter(|| base64_decode(black_box(line)))
    });
}

criterion_group!(benches, primitives);
criterion_main!(benches);
