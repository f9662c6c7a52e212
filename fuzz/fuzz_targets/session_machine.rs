//! The gate's session state machine driven by a hostile client and a
//! random scheduler: handshakes with any index and push claim on old or
//! new connections, any request number on any connection, answers,
//! abandoned handlers, drops, pushes, kicks and the clock, in any order.
//!
//! Checks: no panic; a request number is never handed out to run while
//! a handler for it is still running; the running count is the driver's;
//! everything the session gives a connection to write is whole packages;
//! once ended, nothing runs, no handshake is accepted and no push is
//! taken.

#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::ext::Ext;
use codec::message::{LuaNumber, Response};
use codec::package::PackageCodec;
use gate_core::End;
use gate_core::session::cache::{ConnId, ExecId, OnRequest};
use gate_core::session::{Hello, Limits, Session};
use gate_core::{Time, wire};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// Reads the fuzzer's bytes as small numbers; zeros once used up.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
}

/// Every package in `bytes` is whole and is a status, or parses as a
/// response.
fn check_packages(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    while let Some(payload) = PackageCodec.decode(&mut buf).expect("a package header") {
        let status =
            payload.len() > 4 && payload[..3].iter().all(u8::is_ascii_digit) && payload[3] == b' ';
        if status {
            continue;
        }
        Response::parse(payload).expect("a response package");
    }
    assert!(buf.is_empty(), "a partial package");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let limits = Limits {
        reconnect_window: Duration::from_secs(u64::from(input.byte() % 8) + 1),
        max_inflight: usize::from(input.byte() % 8) + 1,
        send_queue_bytes: usize::from(input.byte()) * 8 + 16,
        push_backlog: usize::from(input.byte() % 8),
        push_backlog_bytes: usize::from(input.byte()) * 4,
        expired_number: u32::from(input.byte() % 8) + 1,
        cache_bytes: usize::from(input.byte()) * 4,
        idle_ms: 0,
    };
    let mut now = Time::ZERO;
    let mut s: Session<ConnId> = Session::new(now, Arc::new(limits));
    let addr = SocketAddr::from(([127, 0, 0, 1], 4000));
    let mut next_conn: ConnId = 1;
    let mut running: Vec<(u32, ExecId)> = Vec::new();
    let mut ended = false;

    while !input.0.is_empty() {
        let op = input.byte();
        // A connection: one of the last few made, or a new one.
        let conn = next_conn.saturating_sub(u64::from(input.byte() % 4));
        match op % 11 {
            0 => {
                let index = i64::from(input.byte() as i8);
                let ext = input.byte();
                let hello = Hello {
                    index: LuaNumber::Int(index),
                    ext: (ext & 1 == 1).then(|| Ext::new(u32::from(ext >> 1))),
                    addr,
                };
                let draining = input.byte() == 0xff;
                let conn = next_conn;
                next_conn += 1;
                match s.handshake(now, conn, hello, draining) {
                    Ok(accepted) => {
                        assert!(!ended, "a handshake accepted by an ended session");
                        check_packages(&accepted.greeting);
                    }
                    Err(refusal) => {
                        let _ = refusal.status();
                    }
                }
            }
            1 => {
                let number = u32::from(input.byte() % 24);
                match s.request(conn, number) {
                    Ok(OnRequest::Execute(exec)) => {
                        assert!(!ended, "a request ran on an ended session");
                        assert!(
                            running.iter().all(|(n, _)| *n != number),
                            "request {number} handed out while it runs"
                        );
                        running.push((number, exec));
                    }
                    Ok(OnRequest::Resend(p) | OnRequest::Lost(p)) => check_packages(&p),
                    Ok(_) | Err(_) => {}
                }
            }
            2 | 3 => {
                if !running.is_empty() {
                    let i = usize::from(input.byte()) % running.len();
                    let (number, exec) = running.remove(i);
                    let len = usize::from(input.byte());
                    let package = wire::response(number, Some(&vec![b'a'; len])).into();
                    if op % 11 == 3 {
                        let mut out = BytesMut::new();
                        let _ = s.complete(number, exec, package, Some((conn, &mut out)));
                        check_packages(&out);
                    } else {
                        let _ = s.complete(number, exec, package, None);
                    }
                }
            }
            4 => {
                if !running.is_empty() {
                    let i = usize::from(input.byte()) % running.len();
                    let (number, exec) = running.remove(i);
                    s.abandon(number, exec);
                }
            }
            5 => {
                let _ = s.connection_gone(now, conn);
            }
            6 => {
                let mut out = BytesMut::new();
                let queued = if s.is_bound_to(conn) { s.queued_bytes() } else { 0 };
                s.write_outbox(conn, &mut out);
                assert_eq!(out.len(), queued, "the outbox's byte count");
                check_packages(&out);
            }
            7 => {
                let len = usize::from(input.byte());
                if let Ok((seq, _)) = s.push(Bytes::from(vec![b'p'; len])) {
                    assert!(!ended, "a push taken by an ended session");
                    assert!(seq > 0);
                }
            }
            8 => {
                let reason = match input.byte() % 3 {
                    0 => End::Kicked("kick".into()),
                    1 => End::Logout,
                    _ => End::Shutdown,
                };
                let _ = s.end(reason);
                ended = true;
            }
            _ => {
                now += Duration::from_millis(u64::from(input.byte()) * 50);
                if s.poll_timeout().is_some_and(|at| at <= now) {
                    let _ = s.handle_timeout(now);
                }
            }
        }
        ended |= s.is_ended();
        if !ended {
            assert_eq!(s.inflight() as usize, running.len(), "running count");
        }
    }
});
