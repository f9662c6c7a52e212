//! Costs of the sealed gate channel per package (`loginproto::seal`): what
//! the gate adds to each request (one open) and each answer (one seal), for
//! a 16-byte echo's package sizes and for 512 bytes, and sealing a batch of
//! 16 answers at once, against copying the same bytes (the baseline every
//! package already pays).

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use loginproto::seal::{self, Channel};

fn packages(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal");
    // A 16-byte echo: request 16 + 4, answer 16 + 5.
    for size in [20usize, 21, 517] {
        group.throughput(Throughput::Bytes(size as u64));
        let payload = vec![7u8; size];
        group.bench_function(format!("copy {size} B (baseline)"), |b| {
            let mut out = BytesMut::with_capacity(size + 64);
            b.iter(|| {
                out.clear();
                out.put_u16(size as u16);
                out.extend_from_slice(black_box(&payload));
                black_box(&out);
            });
        });
        group.bench_function(format!("seal {size} B"), |b| {
            let mut channel = Channel::gate(&[1; 32], b"1");
            let mut out = BytesMut::with_capacity(size + 64);
            b.iter(|| {
                out.clear();
                seal::put_sealed(&mut channel.send, black_box(&payload), &mut out).expect("seals");
                black_box(&out);
            });
        });
        group.bench_function(format!("open {size} B"), |b| {
            let mut sender = Channel::client(&[1; 32], b"1").send;
            let mut wire = BytesMut::new();
            seal::put_sealed(&mut sender, &payload, &mut wire).expect("seals");
            let sealed = wire.split_off(2);
            let key = *Channel::gate(&[1; 32], b"1").recv.key();
            // The same package at counter 0 each time: a fresh direction
            // and copy per run, made outside the timing.
            b.iter_batched_ref(
                || (seal::Direction::from_parts(key, 0), sealed.to_vec()),
                |(recv, body)| {
                    let (data, tag) = body.split_at_mut(size);
                    recv.open_in_place(data, tag).expect("opens");
                    black_box(&body);
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.bench_function("seal a batch of 16 answers of 21 B", |b| {
        let mut channel = Channel::gate(&[1; 32], b"1");
        let mut out = BytesMut::with_capacity(16 * 64);
        b.iter(|| {
            out.clear();
            for _ in 0..16 {
                out.put_u16(21);
                out.extend_from_slice(&[5; 21]);
            }
            seal::seal_packages(&mut channel.send, &mut out, 0).expect("seals");
            black_box(&out);
        });
    });
    group.finish();
}

criterion_group!(benches, packages);
criterion_main!(benches);
