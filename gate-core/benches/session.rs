//! Micro-costs of the session on the request path, per batch of 16
//! requests of one player (what one read of a pipelining client brings):
//!
//! - `inline`: each request goes through the response cache, its answer
//!   (16 content bytes) is kept in its cache slot (a `wire::Package` in
//!   place) and written straight into the connection's buffer (the
//!   built-in agent's path);
//! - `outbox`: the answers complete from elsewhere (a service link), wait
//!   in the connection's outbox and are written out at once (the service
//!   path);
//! - `at_bound`: the cache at its byte bound (the default 256 KiB, about
//!   3,000 answers no connection got), so every answer makes the oldest
//!   go: the bound's eviction.
//!
//! Sessions keep answering for many batches, so the cache's retirement
//! (every 128 answers) is part of the cost. Absolute numbers on the shared
//! 2-core machines are noise; compare runs on the same machine.

// Bench code: a failed unwrap is a failed bench.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use codec::ext::Ext;
use codec::message::LuaNumber;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gate_core::Time;
use gate_core::session::cache::ResponseCache;
use gate_core::session::{Completion, ConnId, Hello, Limits, OnRequest, Session};
use gate_core::wire;

const BATCH: u32 = 16;
const CONN: ConnId = 1;

fn online() -> Session<ConnId> {
    let now = Time::from_epoch(Duration::from_secs(1000));
    let mut s = Session::new(now, Arc::new(Limits::default()));
    let hello = Hello {
        index: LuaNumber::Int(1),
        ext: Some(Ext::new(0)),
        addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
    };
    s.handshake(now, CONN, hello, false).unwrap();
    s
}

/// A player's session, its answer slab and its last request number.
type Player = (Session<ConnId>, BytesMut, u32);

/// One batch through the built-in agent's path; the bytes written.
fn inline_batch((s, slab, next): &mut Player, content: &[u8], out: &mut BytesMut) -> usize {
    out.clear();
    for _ in 0..BATCH {
        *next = next.wrapping_add(1);
        let Ok(OnRequest::Execute(exec)) = s.request(CONN, *next) else {
            panic!("request {next} not run");
        };
        let package = wire::response_in(slab, *next, Some(content));
        let done = s.complete(*next, exec, package, Some((CONN, &mut *out)));
        assert_eq!(done, Completion::Written);
    }
    out.len()
}

fn session(c: &mut Criterion) {
    let content = [0xa5u8; 16];
    let mut group = c.benchmark_group("session/16x16B");
    group.throughput(Throughput::Elements(u64::from(BATCH)));

    let mut out = BytesMut::new();
    let mut player = (online(), BytesMut::new(), 0u32);
    group.bench_function("inline", |b| {
        b.iter(|| black_box(inline_batch(&mut player, &content, &mut out)));
    });

    // The same, round the sessions of 512 players: each batch finds its
    // session's cache (up to 256 answers) cold, as the gate does under
    // load.
    let mut players: Vec<Player> = (0..512).map(|_| (online(), BytesMut::new(), 0)).collect();
    let mut turn = 0;
    group.bench_function("inline_512_players", |b| {
        b.iter(|| {
            turn = (turn + 1) % players.len();
            black_box(inline_batch(&mut players[turn], &content, &mut out))
        });
    });

    let (mut s, mut slab, mut next) = (online(), BytesMut::new(), 0u32);
    group.bench_function("outbox", |b| {
        b.iter(|| {
            out.clear();
            let first = next.wrapping_add(1);
            let mut running = [(0, None); BATCH as usize];
            for slot in &mut running {
                next = next.wrapping_add(1);
                let Ok(OnRequest::Execute(exec)) = s.request(CONN, next) else {
                    panic!("request {next} not run");
                };
                *slot = (next, Some(exec));
            }
            for (number, exec) in running {
                let package = wire::response_in(&mut slab, number, Some(&content));
                let done = s.complete(number, exec.unwrap(), package, None);
                assert!(matches!(done, Completion::Wake(_) | Completion::Nothing));
            }
            assert_eq!(
                s.write_outbox(CONN, &mut out),
                BATCH as usize,
                "from {first}"
            );
            black_box(out.len())
        });
    });

    // A cache whose client left its answers unconfirmed (they completed
    // with no connection) until the byte bound: each new answer evicts.
    let limits = Limits::default();
    let mut cache = ResponseCache::new(limits.expired_number, limits.cache_bytes);
    let mut number = 0u32;
    let mut answer = |cache: &mut ResponseCache, number: u32| {
        let OnRequest::Execute(exec) = cache.request(CONN, number) else {
            panic!("request {number} not run");
        };
        let package = wire::response_in(&mut slab, number, Some(&content));
        cache.complete(number, exec, package, None);
    };
    while cache.lost().ranges() == 0 {
        number += 1;
        answer(&mut cache, number);
    }
    group.bench_function("at_bound", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                number = number.wrapping_add(1);
                answer(&mut cache, number);
            }
            black_box(cache.bytes())
        });
    });
    group.finish();
}

criterion_group!(benches, session);
criterion_main!(benches);
