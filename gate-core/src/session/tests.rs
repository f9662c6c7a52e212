//! The session state machine driven in memory with a simulated clock:
//! every transition, the known races, and property tests over random event
//! orders ("nothing runs twice, nothing acknowledged is lost").

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::time::Time;
use bytes::{Bytes, BytesMut};
use codec::ext::Ext;
use codec::message::{LuaNumber, Response, ResponseFlag};
use codec::package::decode_package;
use proptest::prelude::*;

use super::*;

const WINDOW: Duration = Duration::from_secs(300);

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4000))
}

fn limits() -> Arc<Limits> {
    Arc::new(Limits {
        reconnect_window: WINDOW,
        ..Limits::default()
    })
}

fn hello(index: i64, ext: Option<u32>) -> Hello {
    Hello {
        index: LuaNumber::Int(index),
        ext: ext.map(Ext::new),
        addr: addr(),
    }
}

/// The packages in `bytes`, as (content, flag, number); status packages
/// come out with flag 0xff.
fn packages(bytes: &[u8]) -> Vec<(Vec<u8>, u8, u32)> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(payload) = decode_package(&mut buf) {
        if [&b"200 OK"[..], b"400 Bad Request", b"401 Unauthorized"].contains(&&payload[..]) {
            out.push((payload.to_vec(), 0xff, 0));
            continue;
        }
        let r = Response::parse(payload).unwrap();
        out.push((r.content.to_vec(), r.flag.0, r.number));
    }
    assert!(buf.is_empty(), "trailing bytes");
    out
}

/// What `conn`'s outbox holds, as packages; empties it.
fn outbox_packages<C: Conn>(s: &mut Session<C>, conn: ConnId) -> Vec<(Vec<u8>, u8, u32)> {
    let queued = s.queued_bytes();
    let mut out = BytesMut::new();
    let written = s.write_outbox(conn, &mut out);
    assert_eq!(out.len(), queued, "the outbox's byte count");
    let packages = packages(&out);
    assert_eq!(packages.len(), written);
    packages
}

fn ok(text: &str, number: u32) -> Package {
    wire::response(number, Some(text.as_bytes())).into()
}

fn exec(r: Result<OnRequest, RequestRefused>) -> ExecId {
    match r {
        Ok(OnRequest::Execute(e)) => e,
        other => panic!("expected Execute, got {other:?}"),
    }
}

/// A session online on connection `conn` at `now`.
fn online(now: Time, conn: ConnId, ext: Option<u32>) -> Session<ConnId> {
    let mut s = Session::new(now, limits());
    s.handshake(now, conn, hello(1, ext), false).unwrap();
    s
}

#[test]
fn placed_then_handshake_then_away_then_expired() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s: Session<ConnId> = Session::new(t0, limits());
    assert_eq!(s.phase(), Phase::Placed);
    assert_eq!(s.poll_timeout(), Some(t0 + WINDOW));

    let accepted = s.handshake(t0, 1, hello(1, None), false).unwrap();
    assert_eq!(
        packages(&accepted.greeting),
        vec![(b"200 OK".to_vec(), 0xff, 0)]
    );
    assert_eq!(
        accepted.effects,
        vec![Effect::Notify(SessionEvent::Back { addr: addr() })]
    );
    assert_eq!(s.phase(), Phase::Online);
    assert_eq!(s.poll_timeout(), None);

    let t1 = t0 + Duration::from_secs(10);
    assert_eq!(
        s.connection_gone(t1, 1),
        vec![Effect::Notify(SessionEvent::Away)]
    );
    assert_eq!(s.phase(), Phase::Away);
    assert_eq!(s.poll_timeout(), Some(t1 + WINDOW));
    assert!(
        s.handle_timeout(t1 + WINDOW - Duration::from_millis(1))
            .is_empty()
    );
    assert_eq!(
        s.handle_timeout(t1 + WINDOW),
        vec![
            Effect::Unregister(End::Expired),
            Effect::Notify(SessionEvent::Ended(End::Expired))
        ]
    );
    assert_eq!(s.phase(), Phase::Ended);
    assert_eq!(s.end_reason(), Some(&End::Expired));
    assert_eq!(s.poll_timeout(), None);
    // Nothing more happens to an ended session.
    assert!(s.end(End::Logout).is_empty());
    assert!(s.handle_timeout(t1 + WINDOW * 2).is_empty());
}

#[test]
fn a_placed_session_that_never_connects_expires() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s: Session<ConnId> = Session::new(t0, limits());
    assert_eq!(
        s.handle_timeout(t0 + WINDOW),
        vec![
            Effect::Unregister(End::Expired),
            Effect::Notify(SessionEvent::Ended(End::Expired))
        ]
    );
}

#[test]
fn handshake_at_the_instant_the_window_expires_is_404() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s = online(t0, 1, None);
    s.connection_gone(t0, 1);
    // One millisecond before: still welcome.
    let mut early = online(t0, 1, None);
    early.connection_gone(t0, 1);
    assert!(
        early
            .handshake(
                t0 + WINDOW - Duration::from_millis(1),
                2,
                hello(2, None),
                false
            )
            .is_ok()
    );
    assert_eq!(early.poll_timeout(), None);
    // At the deadline, even before the timer fired: gone.
    assert_eq!(
        s.handshake(t0 + WINDOW, 2, hello(2, None), false)
            .unwrap_err(),
        HandshakeRefusal::UnknownUser
    );
    // The timer then ends it.
    assert_eq!(s.handle_timeout(t0 + WINDOW).len(), 2);
}

#[test]
fn index_rules_and_refusals_do_not_use_up_the_index() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s = online(t0, 1, None);
    for stale in [0, 1] {
        assert_eq!(
            s.handshake(t0, 2, hello(stale, None), false).unwrap_err(),
            HandshakeRefusal::IndexExpired
        );
    }
    // A refused handshake leaves the session bound to connection 1.
    assert!(s.is_bound_to(1));
    // Gaps are allowed; floats compare as Lua numbers.
    s.handshake(t0, 2, hello(7, None), false).unwrap();
    let float = Hello {
        index: LuaNumber::Float(7.5),
        ..hello(0, None)
    };
    s.handshake(t0, 3, float, false).unwrap();
    assert_eq!(s.index(), LuaNumber::Float(7.5));
    assert_eq!(
        s.handshake(t0, 4, hello(7, None), false).unwrap_err(),
        HandshakeRefusal::IndexExpired
    );
    // Draining refuses without a status and without using the index.
    assert_eq!(
        s.handshake(t0, 4, hello(8, None), true).unwrap_err(),
        HandshakeRefusal::ShuttingDown
    );
    assert_eq!(HandshakeRefusal::ShuttingDown.status(), None);
    s.handshake(t0, 4, hello(8, None), false).unwrap();
}

#[test]
fn a_newer_handshake_supersedes_and_the_late_end_of_the_old_changes_nothing() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s = online(t0, 1, None);
    let running = exec(s.request(1, 10));
    let accepted = s.handshake(t0, 2, hello(2, None), false).unwrap();
    assert_eq!(
        accepted.effects,
        vec![
            Effect::Close {
                conn: 1,
                cause: End::Superseded,
                farewell: None
            },
            Effect::Notify(SessionEvent::Back { addr: addr() })
        ]
    );
    // The old connection's next request and its late end are no-ops.
    assert_eq!(
        s.request(1, 11),
        Err(RequestRefused::NotBound { ended: false })
    );
    assert!(s.connection_gone(t0, 1).is_empty());
    assert!(s.is_bound_to(2));
    // Its running request completes: it goes to the new connection.
    assert_eq!(
        s.complete(10, running, ok("ten", 10), None),
        Completion::Wake(2)
    );
    assert_eq!(outbox_packages(&mut s, 2), vec![(b"ten".to_vec(), 1, 10)]);
    // A re-send that crossed the late delivery: answered from the cache.
    assert_eq!(s.request(2, 10), Ok(OnRequest::Resend(ok("ten", 10))));
}

#[test]
fn a_connection_is_woken_when_its_outbox_fills_not_per_package() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s = online(t0, 1, Some(0));
    let (a, b, c) = (
        exec(s.request(1, 1)),
        exec(s.request(1, 2)),
        exec(s.request(1, 3)),
    );
    // Answers made by other tasks: the first wakes the connection, the
    // next ones join what it has not taken yet.
    assert_eq!(s.complete(1, a, ok("one", 1), None), Completion::Wake(1));
    assert_eq!(s.complete(2, b, ok("two", 2), None), Completion::Nothing);
    assert_eq!(s.push(Bytes::from_static(b"p")).unwrap(), (1, None));
    assert_eq!(
        outbox_packages(&mut s, 1),
        vec![
            (b"one".to_vec(), 1, 1),
            (b"two".to_vec(), 1, 2),
            (b"p".to_vec(), ResponseFlag::PUSH.0, 1)
        ]
    );
    // Taken: the next one wakes it again.
    assert_eq!(s.complete(3, c, ok("three", 3), None), Completion::Wake(1));
    assert_eq!(outbox_packages(&mut s, 1), vec![(b"three".to_vec(), 1, 3)]);
    assert_eq!(
        s.push(Bytes::from_static(b"q")).unwrap(),
        (2, Some(Effect::Wake(1)))
    );
}

#[test]
fn an_answer_completing_after_its_connection_is_gone_waits_for_the_resend() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s = online(t0, 1, None);
    let e = exec(s.request(1, 5));
    s.connection_gone(t0, 1);
    assert_eq!(s.complete(5, e, ok("five", 5), None), Completion::Nothing);
    assert_eq!(s.inflight(), 0);
    s.handshake(t0, 2, hello(2, None), false).unwrap();
    assert_eq!(s.request(2, 5), Ok(OnRequest::Resend(ok("five", 5))));
}

#[test]
fn answers_queued_for_a_connection_that_goes_count_as_undelivered() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s = online(t0, 1, None);
    let e = exec(s.request(1, 5));
    // Completed from another task: queued for connection 1...
    assert_eq!(s.complete(5, e, ok("five", 5), None), Completion::Wake(1));
    // ...which goes before it took it.
    s.connection_gone(t0, 1);
    assert_eq!(s.cache().undelivered(), 1);
    s.handshake(t0, 2, hello(2, None), false).unwrap();
    for n in 100..500 {
        let e = exec(s.request(2, n));
        let mut out = BytesMut::new();
        assert_eq!(
            s.complete(n, e, ok("x", n), Some((2, &mut out))),
            Completion::Written
        );
        assert_eq!(&out[..], &ok("x", n)[..]);
    }
    assert_eq!(s.request(2, 5), Ok(OnRequest::Resend(ok("five", 5))));
}

#[test]
fn queued_answers_age_only_once_written() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    // `write`: whether connection 1 takes its outbox before many more
    // requests go by and it goes.
    for write in [false, true] {
        let mut s = online(t0, 1, None);
        let e = exec(s.request(1, 5));
        assert_eq!(s.complete(5, e, ok("five", 5), None), Completion::Wake(1));
        let mut out = BytesMut::new();
        if write {
            assert_eq!(s.write_outbox(1, &mut out), 1);
            assert_eq!(&out[..], &ok("five", 5)[..]);
        }
        for n in 100..500 {
            let e = exec(s.request(1, n));
            let mut out = BytesMut::new();
            s.complete(n, e, ok("x", n), Some((1, &mut out)));
        }
        s.connection_gone(t0, 1);
        s.handshake(t0, 2, hello(2, None), false).unwrap();
        let again = s.request(2, 5);
        if write {
            // Written, then aged out by count like any delivered answer.
            assert!(matches!(again, Ok(OnRequest::Execute(_))), "{again:?}");
        } else {
            // Never written: kept until re-sent, whatever went by.
            assert_eq!(again, Ok(OnRequest::Resend(ok("five", 5))));
        }
    }
}

#[test]
fn relogin_while_away_ends_without_a_connection_to_close() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s = online(t0, 1, Some(0));
    s.connection_gone(t0, 1);
    let reason = End::Relogin;
    assert_eq!(
        s.end(reason.clone()),
        vec![
            Effect::Unregister(reason.clone()),
            Effect::Notify(SessionEvent::Ended(reason))
        ]
    );
}

#[test]
fn a_kick_during_a_handshake_wins() {
    // The driver checks the MAC without the lock; a kick that lands before
    // it takes the lock ends the session: the handshake is then a 404.
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s: Session<ConnId> = Session::new(t0, limits());
    s.end(End::Relogin);
    assert_eq!(
        s.handshake(t0, 1, hello(1, Some(0)), false).unwrap_err(),
        HandshakeRefusal::UnknownUser
    );
}

#[test]
fn a_push_during_a_handshake_is_sent_exactly_once() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s = online(t0, 1, Some(0));
    s.connection_gone(t0, 1);
    // Before the handshake takes the lock: in the replay.
    assert_eq!(s.push(Bytes::from_static(b"a")).unwrap(), (1, None));
    let accepted = s.handshake(t0, 2, hello(2, Some(0)), false).unwrap();
    // After: queued to the new connection, not replayed again.
    let (seq, effect) = s.push(Bytes::from_static(b"b")).unwrap();
    assert_eq!((seq, effect), (2, Some(Effect::Wake(2))));
    let greeting = packages(&accepted.greeting);
    assert_eq!(greeting[1].1, ResponseFlag::WELCOME.0);
    assert_eq!(greeting[1].2, 1, "the welcome names the last push");
    assert_eq!(greeting[2], (b"a".to_vec(), ResponseFlag::PUSH.0, 1));
    assert_eq!(greeting.len(), 3);
    assert_eq!(
        outbox_packages(&mut s, 2),
        vec![(b"b".to_vec(), ResponseFlag::PUSH.0, 2)]
    );
}

#[test]
fn replay_starts_after_the_last_seen_push_and_reports_gaps() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let lim = Arc::new(Limits {
        push_backlog: 2,
        ..Limits::default()
    });
    let mut s: Session<ConnId> = Session::new(t0, lim);
    for text in ["1", "2", "3", "4"] {
        s.push(Bytes::copy_from_slice(text.as_bytes())).unwrap();
    }
    // Seen 1: 2 was dropped from the backlog of 2.
    let accepted = s.handshake(t0, 1, hello(1, Some(1)), false).unwrap();
    let p = packages(&accepted.greeting);
    assert_eq!(p[2], (vec![], ResponseFlag::PUSH_GAP.0, 2));
    assert_eq!(p[3], (b"3".to_vec(), ResponseFlag::PUSH.0, 3));
    assert_eq!(p[4], (b"4".to_vec(), ResponseFlag::PUSH.0, 4));
    // Claims a push never made: 400, and the session stays as it was.
    assert_eq!(
        s.handshake(t0, 2, hello(2, Some(5)), false).unwrap_err(),
        HandshakeRefusal::PushAhead
    );
    assert!(s.is_bound_to(1));
}

#[test]
fn pushes_to_a_plain_connection_are_only_kept() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s = online(t0, 1, None);
    assert_eq!(s.push(Bytes::from_static(b"p")).unwrap(), (1, None));
    assert!(outbox_packages(&mut s, 1).is_empty());
    assert_eq!(s.pushes().len(), 1);
    let big = Bytes::from(vec![0; codec::message::MAX_RESPONSE_CONTENT + 1]);
    assert_eq!(s.push(big), Err(PushRefused::TooLarge));
}

#[test]
fn a_client_that_does_not_read_is_cut_by_its_queue() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let lim = Arc::new(Limits {
        send_queue_bytes: 100,
        ..Limits::default()
    });
    let mut s: Session<ConnId> = Session::new(t0, lim);
    s.handshake(t0, 1, hello(1, Some(0)), false).unwrap();
    let payload = Bytes::from(vec![b'x'; 40]);
    assert!(matches!(
        s.push(payload.clone()),
        Ok((1, Some(Effect::Wake(1))))
    ));
    // Joins the first, which the connection has not taken yet.
    assert_eq!(s.push(payload.clone()).unwrap(), (2, None));
    assert_eq!(
        s.push(payload).unwrap(),
        (
            3,
            Some(Effect::Close {
                conn: 1,
                cause: End::SlowReader,
                farewell: None
            })
        )
    );
    // Kept for the reconnect all the same.
    assert_eq!(s.pushes().last_seq(), 3);
}

#[test]
fn ending_an_opted_in_session_sends_what_was_queued_then_the_kick() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s = online(t0, 1, Some(0));
    let e = exec(s.request(1, 9));
    assert_eq!(s.complete(9, e, ok("nine", 9), None), Completion::Wake(1));
    let reason = End::Kicked("bye".into());
    let effects = s.end(reason.clone());
    let Effect::Close {
        conn: 1,
        cause: End::Kicked(_),
        farewell: Some(farewell),
    } = &effects[0]
    else {
        panic!("{effects:?}");
    };
    assert_eq!(
        packages(farewell),
        vec![
            (b"nine".to_vec(), 1, 9),
            (b"bye".to_vec(), ResponseFlag::KICK.0, 0)
        ]
    );
    assert_eq!(effects[1], Effect::Unregister(reason.clone()));
    assert_eq!(effects[2], Effect::Notify(SessionEvent::Ended(reason)));
    // After the end: refused, dropped, ignored.
    assert_eq!(
        s.request(1, 10),
        Err(RequestRefused::NotBound { ended: true })
    );
    assert_eq!(s.push(Bytes::new()), Err(PushRefused::Ended));
    assert!(s.cache().is_empty());
}

#[test]
fn a_plain_connection_is_closed_without_a_farewell() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s = online(t0, 1, None);
    assert_eq!(
        s.end(End::Logout)[0],
        Effect::Close {
            conn: 1,
            cause: End::Logout,
            farewell: None
        }
    );
}

#[test]
fn inflight_cap_conflict_and_abandon() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let lim = Arc::new(Limits {
        max_inflight: 2,
        ..Limits::default()
    });
    let mut s: Session<ConnId> = Session::new(t0, lim);
    s.handshake(t0, 1, hello(1, None), false).unwrap();
    let a = exec(s.request(1, 1));
    exec(s.request(1, 2));
    assert_eq!(s.request(1, 3), Err(RequestRefused::TooManyInflight));
    // The refused one left nothing behind.
    assert_eq!(s.cache().len(), 2);
    // A panicking agent gives its slot back.
    s.abandon(1, a);
    assert_eq!(s.inflight(), 1);
    exec(s.request(1, 1));
    // skynet's conflict: a re-send while running, twice.
    assert_eq!(s.request(1, 2), Ok(OnRequest::Absorbed));
    assert_eq!(s.request(1, 2), Ok(OnRequest::Conflict));
}

#[test]
fn the_last_answer_wakes_a_connection_waiting_to_close() {
    // An orphaned execution (its entry dropped by a conflict) finishing
    // last still wakes the bound connection, which may be draining.
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s = online(t0, 1, None);
    let orphan = exec(s.request(1, 2));
    assert_eq!(s.request(1, 2), Ok(OnRequest::Absorbed));
    assert_eq!(s.request(1, 2), Ok(OnRequest::Conflict));
    s.handshake(t0, 2, hello(2, None), false).unwrap();
    assert_eq!(
        s.complete(2, orphan, ok("late", 2), None),
        Completion::Wake(2)
    );
    assert_eq!(s.inflight(), 0);
}

/// One step of a random client/agent interleaving.
#[derive(Debug, Clone)]
enum Op {
    /// The client sends a new request on its connection.
    Send,
    /// The client re-sends, on the same connection, a request whose
    /// handler is still running (a duplicate: absorbed, then a conflict).
    /// Re-sending one that was answered would be a new request by the
    /// protocol's rule, so a well-behaved client re-sends only after a
    /// reconnect ([`Op::Reconnect`]).
    Resend(usize),
    /// A running handler answers (any).
    Complete(usize),
    /// The connection's task takes its outbox (the client reads it).
    Flush,
    /// The connection breaks.
    Drop,
    /// The client reconnects with index+1 and re-sends everything it has
    /// no answer for.
    Reconnect,
    /// The game pushes.
    Push,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Send),
        1 => any::<usize>().prop_map(Op::Resend),
        4 => any::<usize>().prop_map(Op::Complete),
        3 => Just(Op::Flush),
        1 => Just(Op::Drop),
        1 => Just(Op::Reconnect),
        2 => Just(Op::Push),
    ]
}

/// A well-behaved client with increasing request numbers, and the handlers
/// running behind the gate.
struct World {
    s: Session<ConnId>,
    now: Time,
    conn: Option<ConnId>,
    next_conn: ConnId,
    index: i64,
    next_number: u32,
    /// Requests sent and not answered, by number.
    unanswered: BTreeSet<u32>,
    /// Answers the client received (ok or error), by number.
    answers: BTreeMap<u32, Vec<u8>>,
    /// Times each request's handler ran.
    runs: HashMap<u32, u32>,
    /// Handlers running: (number, exec).
    running: Vec<(u32, ExecId)>,
    /// Pushes received, in order.
    pushes: Vec<u32>,
    last_push: u32,
}

impl World {
    fn new(limits: Limits) -> World {
        let now = Time::from_epoch(Duration::from_secs(1000));
        let mut w = World {
            s: Session::new(now, Arc::new(limits)),
            now,
            conn: None,
            next_conn: 1,
            index: 0,
            next_number: 1,
            unanswered: BTreeSet::new(),
            answers: BTreeMap::new(),
            runs: HashMap::new(),
            running: Vec::new(),
            pushes: Vec::new(),
            last_push: 0,
        };
        w.reconnect();
        w
    }

    fn receive(&mut self, bytes: &[u8]) {
        for (content, flag, n) in packages(bytes) {
            match flag {
                0 | 1 => {
                    self.unanswered.remove(&n);
                    self.answers.insert(n, content);
                }
                2 => {
                    assert!(n > self.last_push, "push {n} twice or out of order");
                    self.pushes.push(n);
                    self.last_push = n;
                }
                4 => self.last_push = n,
                _ => {}
            }
        }
    }

    fn request(&mut self, n: u32) {
        let Some(conn) = self.conn else { return };
        match self.s.request(conn, n) {
            Ok(OnRequest::Execute(e)) => {
                *self.runs.entry(n).or_default() += 1;
                self.running.push((n, e));
            }
            Ok(OnRequest::Resend(p) | OnRequest::Lost(p)) => self.receive(&p),
            Ok(OnRequest::Absorbed) => {}
            Ok(OnRequest::Conflict) | Err(_) => self.drop_conn(),
        }
    }

    fn drop_conn(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.s.connection_gone(self.now, conn);
        }
    }

    fn reconnect(&mut self) {
        self.drop_conn();
        self.index += 1;
        let conn = self.next_conn;
        self.next_conn += 1;
        let accepted = self
            .s
            .handshake(
                self.now,
                conn,
                hello(self.index, Some(self.last_push)),
                false,
            )
            .expect("handshake");
        self.conn = Some(conn);
        self.receive(&accepted.greeting);
        for n in self.unanswered.clone() {
            self.request(n);
        }
    }

    fn step(&mut self, op: Op) {
        self.now += Duration::from_millis(1);
        match op {
            Op::Send => {
                let n = self.next_number;
                self.next_number += 1;
                if self.conn.is_some() {
                    self.unanswered.insert(n);
                    self.request(n);
                }
            }
            Op::Resend(i) => {
                if !self.running.is_empty() {
                    let (n, _) = self.running[i % self.running.len()];
                    if self.unanswered.contains(&n) {
                        self.request(n);
                    }
                }
            }
            Op::Complete(i) => {
                if self.running.is_empty() {
                    return;
                }
                let (n, e) = self.running.remove(i % self.running.len());
                let content = format!("answer-{n}");
                match self.s.complete(n, e, ok(&content, n), None) {
                    Completion::Wake(_) | Completion::Nothing => {}
                    Completion::Written => panic!("no caller was given"),
                }
            }
            Op::Flush => {
                if let Some(conn) = self.conn {
                    let mut out = BytesMut::new();
                    self.s.write_outbox(conn, &mut out);
                    self.receive(&out);
                }
            }
            Op::Drop => self.drop_conn(),
            Op::Reconnect => self.reconnect(),
            Op::Push => {
                let (seq, _) = self.s.push(Bytes::from_static(b"p")).expect("push");
                assert!(seq > 0);
            }
        }
    }

    /// The client comes back for good: reconnects, every handler answers,
    /// it reads everything and re-sends what it still misses.
    fn settle(&mut self) {
        self.reconnect();
        while let Some((n, e)) = self.running.pop() {
            self.s.complete(n, e, ok(&format!("answer-{n}"), n), None);
        }
        self.step(Op::Flush);
        self.reconnect();
        self.step(Op::Flush);
    }
}

impl World {
    /// Lives `ops`, settles, and checks that no request ran twice and
    /// every request was answered.
    fn run(&mut self, ops: Vec<Op>) -> Result<(), TestCaseError> {
        for op in ops {
            self.step(op);
        }
        self.settle();
        for (n, runs) in &self.runs {
            prop_assert!(*runs <= 1, "request {} ran {} times", n, runs);
        }
        prop_assert!(
            self.unanswered.is_empty(),
            "unanswered: {:?}",
            self.unanswered
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the order of events: no request runs twice, every request
    /// is answered in the end, and every push reaches the client exactly
    /// once, in order.
    #[test]
    fn nothing_runs_twice_nothing_acknowledged_is_lost(ops in proptest::collection::vec(op(), 0..200)) {
        let mut w = World::new(Limits {
            expired_number: 4,
            push_backlog: 1000,
            push_backlog_bytes: 1 << 20,
            max_inflight: 1000,
            ..Limits::default()
        });
        w.run(ops)?;
        for (n, answer) in &w.answers {
            if w.runs.contains_key(n) {
                prop_assert_eq!(answer, &format!("answer-{n}").into_bytes());
            }
        }
        let made = w.s.pushes().last_seq();
        prop_assert_eq!(w.pushes.clone(), (1..=made).collect::<Vec<_>>());
    }

    /// With a cache too small for the answers, the bound forces some out:
    /// their re-sends get error responses, but still nothing runs twice.
    #[test]
    fn a_tight_byte_bound_never_turns_into_a_second_run(ops in proptest::collection::vec(op(), 0..200)) {
        let mut w = World::new(Limits {
            expired_number: 4,
            cache_bytes: 3 * (cache::ENTRY_COST + 20),
            max_inflight: 1000,
            ..Limits::default()
        });
        w.run(ops)?;
        prop_assert!(w.s.cache().bytes() <= 3 * (cache::ENTRY_COST + 20) + 1000 * cache::ENTRY_COST);
    }
}

#[test]
fn a_queued_response_keeps_the_field_name_of_older_state() {
    // State written out by a gate from before the request number was
    // called so must read back: the key on the wire of the state is still
    // skynet's word.
    let item = Outgoing::Response {
        number: 7,
        package: ok("x", 7),
    };
    let value = serde_json::to_value(&item).unwrap();
    assert_eq!(value["Response"]["session"], 7, "{value}");
    let back: Outgoing = serde_json::from_value(value).unwrap();
    assert_eq!(back, item);
}

#[test]
fn a_session_written_out_and_read_back_goes_on_where_it_was() {
    let t0 = Time::from_epoch(Duration::from_secs(1000));
    let mut s = online(t0, 1, Some(0));
    let done = exec(s.request(1, 1));
    s.complete(1, done, ok("one", 1), None);
    let running = exec(s.request(1, 2));
    s.push(Bytes::from_static(b"p1")).unwrap();
    s.push(Bytes::from_static(b"p2")).unwrap();
    let text = serde_json::to_string(&s).unwrap();
    let back: Session<ConnId> = serde_json::from_str(&text).unwrap();
    let mut back = back.with_limits(limits());
    assert_eq!(serde_json::to_string(&back).unwrap(), text);
    assert_eq!((back.phase(), back.inflight()), (Phase::Online, 1));
    assert_eq!(back.index(), LuaNumber::Int(1));
    assert_eq!(back.pushes().last_seq(), 2);
    // The running request still completes into the restored session, and
    // a re-send of the answered one is answered from the cache.
    outbox_packages(&mut back, 1);
    let mut out = BytesMut::new();
    back.complete(2, running, ok("two", 2), Some((1, &mut out)));
    assert_eq!(packages(&out), vec![(b"two".to_vec(), 1, 2)]);
    back.connection_gone(t0, 1);
    back.handshake(t0, 2, hello(2, Some(1)), false).unwrap();
    assert_eq!(back.request(2, 1), Ok(OnRequest::Resend(ok("one", 1))));
}
