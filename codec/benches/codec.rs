//! Micro-costs of the codecs: decoding and encoding a buffer of 1000
//! packages (16 and 512 byte payloads), and `Request::encode`.
//!
//! Absolute numbers on the shared 2-core machines are noise; compare runs
//! on the same machine.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::codec::{Decoder, Encoder};

use codec::{LineCodec, PackageCodec, Request, Response, ResponseFlag, encode_package};

const PACKAGES: usize = 1000;

fn wire(payload_len: usize) -> BytesMut {
    let payload = vec![0xa5u8; payload_len];
    let mut buf = BytesMut::with_capacity(PACKAGES * (payload_len + 2));
    for _ in 0..PACKAGES {
        encode_package(&payload, &mut buf).unwrap();
    }
    buf
}

fn packages(c: &mut Criterion) {
    for payload_len in [16usize, 512] {
        let mut group = c.benchmark_group(format!("package/{payload_len}B"));
        let input = wire(payload_len);
        group.throughput(Throughput::Bytes(input.len() as u64));

        group.bench_function("decode_1000", |b| {
            b.iter_batched_ref(
                || input.clone(),
                |buf| {
                    let mut n = 0;
                    while let Some(frame) = PackageCodec.decode(buf).unwrap() {
                        n += frame.len();
                    }
                    black_box(n)
                },
                BatchSize::SmallInput,
            )
        });

        let payload = Bytes::from(vec![0xa5u8; payload_len]);
        let mut out = BytesMut::with_capacity(input.len());
        group.bench_function("encode_1000", |b| {
            b.iter(|| {
                out.clear();
                for _ in 0..PACKAGES {
                    PackageCodec.encode(payload.clone(), &mut out).unwrap();
                }
                black_box(out.len())
            })
        });
        group.finish();
    }
}

fn messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("message");
    let content = vec![b'x'; 64];
    let mut out = BytesMut::with_capacity(128 * PACKAGES);
    group.throughput(Throughput::Elements(PACKAGES as u64));
    group.bench_function("request_encode_1000x64B", |b| {
        b.iter(|| {
            out.clear();
            for number in 0..PACKAGES as u32 {
                Request::encode(black_box(&content), number, &mut out).unwrap();
            }
            black_box(out.len())
        })
    });
    group.bench_function("response_encode_1000x64B", |b| {
        b.iter(|| {
            out.clear();
            for number in 0..PACKAGES as u32 {
                Response::encode(black_box(&content), ResponseFlag::OK, number, &mut out).unwrap();
            }
            black_box(out.len())
        })
    });
    let mut lines = BytesMut::new();
    for _ in 0..PACKAGES {
        lines.extend_from_slice(b"EH1HqQmuX7xHgoao5iLQxJmFShp7rovgU1CW6aDaF7Q=\n");
    }
    // The limit is lifted: the whole buffer of 1000 lines is "unconsumed"
    // at the start, which skynet's 8 KiB rule would refuse.
    group.bench_function("line_decode_1000x44B", |b| {
        b.iter_batched_ref(
            || (lines.clone(), LineCodec::with_limit(usize::MAX)),
            |(buf, codec)| {
                let mut n = 0;
                while let Some(line) = codec.decode(buf).unwrap() {
                    n += line.len();
                }
                black_box(n)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, packages, messages);
criterion_main!(benches);
