//! Micro-costs of the gate ↔ service link's hot frames: a batch of 1000
//! requests written by the gate, as an owned prost message and from
//! borrowed fields ([`proto::RequestRef`]), and the same batch decoded by
//! a service, by prost alone and by the codec (its fast path).
//!
//! Absolute numbers on the shared 2-core machines are noise; compare the
//! two encoders within one run.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use proto::RequestRef;
use proto::backend::{GateFrame, Request};
use proto::framing::{GateCodec, ServiceCodec};

const FRAMES: usize = 1000;

fn requests(c: &mut Criterion) {
    let uid = Bytes::from_static(b"player-000123");
    let subid = Bytes::from_static(b"4711");
    for payload_len in [16usize, 512] {
        let payload = Bytes::from(vec![0xa5u8; payload_len]);
        let mut group = c.benchmark_group(format!("request/{payload_len}B"));
        group.throughput(Throughput::Elements(FRAMES as u64));

        group.bench_function("encode_owned_1000", |b| {
            let mut codec = GateCodec::new();
            let mut out = BytesMut::with_capacity(FRAMES * (payload_len + 64));
            b.iter(|| {
                out.clear();
                for id in 0..FRAMES as u64 {
                    let frame: GateFrame = Request {
                        request_id: id + 1,
                        uid: uid.clone(),
                        subid: subid.clone(),
                        route: String::new(),
                        payload: payload.clone(),
                        deadline_ms: 10_000,
                    }
                    .into();
                    codec.encode(frame, &mut out).unwrap();
                }
                black_box(out.len())
            });
        });

        // The batch, written from borrowed fields into `out`.
        let borrowed = |codec: &mut GateCodec, out: &mut BytesMut| {
            for id in 0..FRAMES as u64 {
                let frame = RequestRef {
                    request_id: id + 1,
                    uid: &uid,
                    subid: &subid,
                    route: "",
                    payload: &payload,
                    deadline_ms: 10_000,
                };
                codec.encode_request(&frame, out).unwrap();
            }
        };

        group.bench_function("encode_borrowed_1000", |b| {
            let mut codec = GateCodec::new();
            let mut out = BytesMut::with_capacity(FRAMES * (payload_len + 64));
            b.iter(|| {
                out.clear();
                borrowed(&mut codec, &mut out);
                black_box(out.len())
            });
        });

        let mut wire = BytesMut::new();
        borrowed(&mut GateCodec::new(), &mut wire);
        group.bench_function("decode_prost_1000", |b| {
            b.iter_batched_ref(
                || wire.clone().freeze(),
                |buf| {
                    let mut n = 0;
                    while !buf.is_empty() {
                        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                        let body = buf.slice(4..4 + len);
                        *buf = buf.slice(4 + len..);
                        black_box(GateFrame::decode(body).unwrap());
                        n += 1;
                    }
                    assert_eq!(n, FRAMES);
                },
                BatchSize::SmallInput,
            );
        });

        group.bench_function("decode_1000", |b| {
            let mut codec = ServiceCodec::new();
            b.iter_batched_ref(
                || wire.clone(),
                |buf| {
                    let mut n = 0;
                    while let Some(frame) = codec.decode(buf).unwrap() {
                        black_box(frame);
                        n += 1;
                    }
                    assert_eq!(n, FRAMES);
                },
                BatchSize::SmallInput,
            );
        });
        group.finish();
    }
}

criterion_group!(benches, requests);
criterion_main!(benches);
