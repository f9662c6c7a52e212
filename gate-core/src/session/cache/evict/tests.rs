//! The line of victims against a walk each time, and what it saves.

use proptest::prelude::*;

use super::super::{ConnId, ENTRY_COST, ExecId, OnRequest, ResponseCache};
use super::{LINE, WALKS};
use crate::wire::{self, Package};

/// What a client and its handlers do to a cache.
#[derive(Debug, Clone)]
enum Op {
    /// A request with this number on the current connection.
    Request(u32),
    /// The running request at this index (modulo) answers; `live`: while
    /// the connection is there.
    Complete(usize, bool),
    /// The connection ends, a new one takes over.
    Reconnect,
    /// The connection's outbox was written.
    Written,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..48).prop_map(Op::Request),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(i, live)| Op::Complete(i, live)),
        1 => Just(Op::Reconnect),
        1 => Just(Op::Written),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every eviction takes the answer a walk of the whole cache would
    /// (`evict_one` checks it against `oldest` under test), whatever
    /// re-sends, reused numbers, retirements and reconnections happened
    /// since the line was made; and every number it dropped answers lost.
    #[test]
    fn the_line_evicts_what_a_walk_would(ops in proptest::collection::vec(op(), 1..400)) {
        // Room for about twelve 20-byte answers; retirement at 4.
        let mut c = ResponseCache::new(2, 12 * (ENTRY_COST + 20));
        let mut conn: ConnId = 1;
        let mut running: Vec<(u32, ExecId)> = Vec::new();
        for op in ops {
            match op {
                Op::Request(number) => {
                    let lost = c.lost().contains(number);
                    match c.request(conn, number) {
                        OnRequest::Execute(exec) => {
                            prop_assert!(!lost);
                            running.retain(|&(n, _)| n != number);
                            running.push((number, exec));
                        }
                        OnRequest::Lost(_) => prop_assert!(lost),
                        OnRequest::Conflict => conn += 1,
                        OnRequest::Resend(_) | OnRequest::Absorbed => {}
                    }
                }
                Op::Complete(i, live) if !running.is_empty() => {
                    let (number, exec) = running.swap_remove(i % running.len());
                    let answer = Package::copy_from_slice(&[7; 20]);
                    c.complete(number, exec, answer, live.then_some(conn));
                }
                Op::Complete(..) => {}
                Op::Reconnect => {
                    c.connection_ended(conn);
                    conn += 1;
                }
                Op::Written => c.outbox_written(),
            }
        }
        // What was written out comes back with the same lost numbers.
        let text = serde_json::to_string(&c).unwrap();
        let back: ResponseCache = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(back.lost(), c.lost());
    }
}

#[test]
fn a_cache_at_its_bound_walks_once_per_line_not_once_per_answer() {
    // 3,000 answers no connection got: the bound is reached and every new
    // answer makes one go.
    let waiting = 3_000;
    let mut c = ResponseCache::new(128, waiting * (ENTRY_COST + 23));
    let answer = |n: u32| wire::response_in(&mut bytes::BytesMut::new(), n, Some(&[1; 16]));
    for n in 0..waiting as u32 {
        let OnRequest::Execute(exec) = c.request(1, n) else {
            panic!("{n} not run");
        };
        c.complete(n, exec, answer(n), None);
    }
    c.connection_ended(1);
    assert!(c.lost().ranges() == 0);
    let before = WALKS.get();
    let evictions = 10 * LINE as u32;
    for n in waiting as u32..waiting as u32 + evictions {
        let OnRequest::Execute(exec) = c.request(2, n) else {
            panic!("{n} not run");
        };
        c.complete(n, exec, answer(n), None);
    }
    let walks = WALKS.get() - before;
    // The oldest went first, in order: one range of lost numbers.
    let lost = c.lost();
    assert_eq!(lost.ranges(), 1);
    assert!(lost.contains(0) && !lost.contains(waiting as u32));
    let dropped = (0..waiting as u32).filter(|&n| lost.contains(n)).count();
    assert!(dropped >= evictions as usize, "{dropped}");
    assert!(
        walks <= dropped / LINE + 2,
        "{walks} walks for {dropped} evictions"
    );
}

#[test]
fn a_state_read_back_counts_on_from_its_newest_stamp() {
    // A state whose counter is behind its entries' stamps (hand-edited,
    // or written by a build with another clock): what comes after the
    // restore is younger than everything restored, so the line still
    // evicts what a walk would (`evict_one` checks under test).
    let mut c = ResponseCache::new(128, 3 * (ENTRY_COST + 20));
    for n in 0..4 {
        let OnRequest::Execute(exec) = c.request(1, n) else {
            panic!("{n} not run");
        };
        c.complete(n, exec, Package::copy_from_slice(&[7; 20]), None);
    }
    let mut state = serde_json::to_value(&c).unwrap();
    state["next_exec"] = 0.into();
    let mut c: ResponseCache = serde_json::from_value(state).unwrap();
    for n in 10..20 {
        if let OnRequest::Execute(exec) = c.request(2, n) {
            c.complete(n, exec, Package::copy_from_slice(&[7; 20]), None);
        }
        let _ = c.request(2, 2);
    }
    assert!(c.lost().contains(3));
}
