//! Resting connections (`gate.rest_after`, `players::rest`) over real TCP
//! on `127.0.0.1:0`: a connection with nothing to do gives up its task and
//! waits in the gate's own epoll set; whatever comes for it (a request, a
//! push, a kick, a deadline, a hang-up, a shutdown) wakes it, and nothing
//! is lost or done twice on the way.
//!
//! Waits are on bytes, session events or the gate's counters, each with a
//! failure guard; the test of `rest_after` itself runs on tokio's paused
//! clock.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::package::encode_package;
use gate::agent::SessionEvent;
use gate::config::GateConfig;
use gate::login::placement::End;
use integration::msg::{Client, TestGate, hello_secret, wait_until, within};
use integration::push::{PushGate, recv_kick, recv_push};

/// Waits until the gate counts `n` resting connections.
async fn resting(g: &PushGate, n: usize) {
    let what = format!("{n} resting connections");
    wait_until(&what, || g.metrics().resting_connections == n).await;
}

/// The same on tokio's paused clock, where time moves only while every
/// task waits: looks every 100 ms of it.
async fn resting_paused(g: &PushGate, n: usize) {
    until_paused(&format!("{n} resting connections"), || {
        g.metrics().resting_connections == n
    })
    .await;
}

/// Waits on tokio's paused clock until `cond` holds, looking every 100 ms
/// of it.
async fn until_paused(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_that_waits_after_its_handshake_rests_and_wakes_for_its_requests() {
    let g = PushGate::start_default().await;
    let alice = g.login("alice").await;
    let mut c = alice.plain(1).await;
    // Nothing behind the handshake: the connection rests at once, open.
    resting(&g, 1).await;
    assert_eq!(g.metrics().connections, 1);
    // A request wakes it and is answered once.
    c.echo(b"hello", 1).await;
    assert_eq!(g.metrics().rest_wakes, 1);
    assert_eq!(g.metrics().resting_connections, 0);
    // Within `rest_after` of that, it stays up: the next requests need no
    // wake-up.
    for n in 2..=20 {
        c.echo(format!("again {n}").as_bytes(), n).await;
    }
    assert_eq!(g.metrics().rest_wakes, 1);
    assert_eq!(g.metrics().requests, 20);
    g.stop().await;
}

#[tokio::test]
async fn a_request_pipelined_behind_the_handshake_is_served_without_a_rest() {
    let g = PushGate::start_default().await;
    let bob = g.login("bob").await;
    let mut c = Client::connect(g.addr).await;
    let mut both = BytesMut::new();
    encode_package(&bob.handshake_payload(1, None), &mut both).expect("fits");
    let mut request = b"right behind".to_vec();
    request.extend_from_slice(&1u32.to_be_bytes());
    encode_package(&request, &mut both).expect("fits");
    c.send(&both).await;
    assert_eq!(c.recv_package().await, b"200 OK");
    assert_eq!(c.recv_response().await, (b"right behind".to_vec(), 1, 1));
    c.echo(b"next", 2).await;
    assert_eq!(g.metrics().requests, 2);
    g.stop().await;
}

#[tokio::test]
async fn a_push_a_kick_and_a_hang_up_wake_a_resting_connection() {
    let mut g = PushGate::start_default().await;

    // A push is written to the resting connection.
    let carol = g.login("carol").await;
    let mut c = carol.opted_in(1, 0).await;
    resting(&g, 1).await;
    assert_eq!(g.push("carol", "news"), Some(1));
    assert_eq!(recv_push(&mut c).await, ("news".to_owned(), 1));
    c.echo(b"after the push", 1).await;

    // A kick reaches a resting connection with its reason, then the end.
    let dave = g.login("dave").await;
    let mut d = dave.opted_in(1, 0).await;
    resting(&g, 1).await;
    let kick = tokio::spawn({
        let gate = g.gate.clone();
        let subid = dave.subid.clone();
        async move {
            gate.kick(b"dave", subid.as_bytes(), End::Kicked("cleanup".to_owned()))
                .await;
        }
    });
    assert_eq!(recv_kick(&mut d).await, "cleanup");
    d.expect_closed().await;
    within("kick", kick).await.expect("kick task");
    let ended = g.next_ended().await;
    assert_eq!(
        (ended.uid, ended.subid, ended.reason),
        (
            Bytes::from_static(b"dave"),
            Bytes::from(dave.subid.clone()),
            End::Kicked("cleanup".to_owned())
        )
    );

    // A client that hangs up while its connection rests leaves its session
    // away, and reconnects with its next index.
    // (carol's connection stays up: it was busy within `rest_after`.)
    let erin = g.login("erin").await;
    let c2 = erin.plain(1).await;
    resting(&g, 1).await;
    drop(c2);
    g.event("erin", SessionEvent::Away).await;
    resting(&g, 0).await;
    let mut back = erin.plain(2).await;
    resting(&g, 1).await;
    back.echo(b"back", 1).await;
    assert_eq!(g.metrics().sessions, 2);

    c.echo(b"carol still here", 2).await;
    g.stop().await;
}

#[tokio::test]
async fn a_request_re_sent_through_rests_and_reconnects_runs_once() {
    let g = TestGate::start_default().await;
    let secret = hello_secret();
    let name = g.logged_in("fay", &secret).await;
    let mut c = g.session(&secret, &name, 1).await;
    wait_until("a rest", || g.metrics().resting_connections == 1).await;
    c.echo(b"once", 1).await;
    drop(c);
    // The new connection rests after its handshake too; the re-sent
    // number wakes it and is answered from the cache, not run again.
    let mut again = g.session(&secret, &name, 2).await;
    wait_until("a rest", || g.metrics().resting_connections == 1).await;
    again.echo(b"once", 1).await;
    assert_eq!(g.agent.executions("once"), 1);
    assert_eq!(g.metrics().resends, 1);
    g.stop().await;
}

#[tokio::test]
async fn shutdown_closes_resting_connections_and_waits_for_them() {
    let g = PushGate::start_default().await;
    let gus = g.login("gus").await;
    let hal = g.login("hal").await;
    let mut plain = gus.plain(1).await;
    let mut opted = hal.opted_in(1, 0).await;
    resting(&g, 2).await;
    let stop = tokio::spawn(g.stop());
    assert_eq!(recv_kick(&mut opted).await, "shutdown");
    opted.expect_closed().await;
    plain.expect_closed().await;
    within("shutdown", stop).await.expect("stop task");
}

/// A gate never stopped whose runtime shuts down: its resting
/// connections are not tasks the runtime drops, so the rest set's watcher
/// lets go of them as it is dropped: their clients see the end, and they
/// no longer count (nor keep the gate alive).
#[test]
fn a_runtime_shut_down_under_a_gate_closes_its_resting_connections() {
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("gate runtime");
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let g = server.block_on(PushGate::start_default());
    let ivy = server.block_on(g.login("ivy"));
    let mut c = client.block_on(ivy.plain(1));
    client.block_on(resting(&g, 1));
    server.shutdown_timeout(Duration::from_secs(10));
    client.block_on(c.expect_closed());
    assert_eq!(g.metrics().resting_connections, 0);
    assert_eq!(g.metrics().connections, 0);
}

#[tokio::test]
async fn rest_after_zero_keeps_every_connection_a_task() {
    let g = PushGate::start(GateConfig {
        rest_after: Duration::ZERO,
        ..GateConfig::default()
    })
    .await;
    let ivan = g.login("ivan").await;
    let mut c = ivan.plain(1).await;
    c.echo(b"one", 1).await;
    c.echo(b"two", 2).await;
    let m = g.metrics();
    assert_eq!((m.resting_connections, m.rest_wakes), (0, 0));
    g.stop().await;
}

/// On tokio's paused clock: `rest_after` and the gate's timers are virtual
/// time.
#[tokio::test(start_paused = true)]
async fn a_connection_rests_once_quiet_for_rest_after() {
    // Well within the tests' 10 s guard on each wait.
    const AFTER: Duration = Duration::from_secs(3);
    let g = PushGate::start(GateConfig {
        rest_after: AFTER,
        ..GateConfig::default()
    })
    .await;
    let jo = g.login("jo").await;
    let mut c = jo.plain(1).await;
    resting_paused(&g, 1).await;
    c.echo(b"wake", 1).await;
    assert_eq!(g.metrics().resting_connections, 0);
    // Busy every few seconds: never quiet for AFTER, never rests.
    for n in 2..=6 {
        tokio::time::sleep(AFTER / 3).await;
        c.echo(b"busy", n).await;
        assert_eq!(g.metrics().resting_connections, 0, "rested while busy");
    }
    // Then quiet: it rests within two AFTER, woken by the gate's timer.
    let quiet_from = tokio::time::Instant::now();
    resting_paused(&g, 1).await;
    let quiet_for = quiet_from.elapsed();
    assert!(
        quiet_for >= AFTER && quiet_for <= AFTER * 2 + Duration::from_secs(1),
        "rested after {quiet_for:?} of quiet"
    );
    c.echo(b"and again", 7).await;
    assert_eq!(g.metrics().rest_wakes, 2);
    g.stop().await;
}

/// Two worker threads; many connections woken at once by their client and
/// by the gate (a push), racing each other and their own laying down:
/// every push arrives once, every request is answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_by_the_client_and_one_by_the_gate_at_once_raise_a_connection_once() {
    const USERS: usize = 50;
    const ROUNDS: u32 = 4;
    let g = PushGate::start_default().await;
    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(g.login(&format!("racer{i}")).await);
    }
    for round in 1..=ROUNDS {
        let mut clients = Vec::new();
        for user in &users {
            // A new connection each round (index `round`): each rests
            // right after its handshake, or is raced while it lays down.
            clients.push(user.opted_in(u64::from(round), round - 1).await);
        }
        let pushes = tokio::spawn({
            let gate = g.gate.clone();
            let uids: Vec<String> = users.iter().map(|u| u.uid.clone()).collect();
            async move {
                for uid in uids {
                    let sent = gate.push(uid.as_bytes(), Bytes::from(format!("round {round}")));
                    assert_eq!(sent.ok(), Some(round));
                }
            }
        });
        let mut talking = Vec::new();
        for mut c in clients {
            talking.push(tokio::spawn(async move {
                c.send_request(b"hi", round).await;
                // The answer and the push, in either order.
                let mut got = vec![c.recv_response().await, c.recv_response().await];
                got.sort_by_key(|(_, flag, _)| *flag);
                assert_eq!(
                    got,
                    vec![
                        (b"hi".to_vec(), integration::push::FLAG_OK, round),
                        (
                            format!("round {round}").into_bytes(),
                            integration::push::FLAG_PUSH,
                            round
                        )
                    ]
                );
                c
            }));
        }
        within("the pushes", pushes).await.expect("push task");
        for t in talking {
            drop(within("a client", t).await.expect("client task"));
        }
    }
    let m = g.metrics();
    assert_eq!(m.requests, (USERS as u64) * u64::from(ROUNDS));
    assert_eq!(m.pushes, (USERS as u64) * u64::from(ROUNDS));
    g.stop().await;
}

/// On tokio's paused clock. The deadline armed for the handshake does not
/// wake a connection resting since; one that fires while the connection
/// is up leaves its look at the quiet armed.
#[tokio::test(start_paused = true)]
async fn a_handshake_deadline_neither_wakes_a_resting_connection_nor_keeps_one_up() {
    const HANDSHAKE: Duration = Duration::from_secs(1);
    const AFTER: Duration = Duration::from_secs(3);
    let g = PushGate::start(GateConfig {
        handshake_timeout: HANDSHAKE,
        rest_after: AFTER,
        ..GateConfig::default()
    })
    .await;
    // Rests at once; sleeps through its handshake deadline.
    let kim = g.login("kim").await;
    let _kim = kim.plain(1).await;
    resting_paused(&g, 1).await;
    tokio::time::sleep(HANDSHAKE * 3).await;
    let m = g.metrics();
    assert_eq!((m.resting_connections, m.rest_wakes), (1, 0));

    // A request behind the handshake keeps this one up past its handshake
    // deadline, whose entry fires first; it rests once quiet for AFTER.
    let lee = g.login("lee").await;
    let mut c = Client::connect(g.addr).await;
    let mut both = BytesMut::new();
    encode_package(&lee.handshake_payload(1, None), &mut both).expect("fits");
    let mut request = b"busy".to_vec();
    request.extend_from_slice(&1u32.to_be_bytes());
    encode_package(&request, &mut both).expect("fits");
    c.send(&both).await;
    assert_eq!(c.recv_package().await, b"200 OK");
    assert_eq!(c.recv_response().await, (b"busy".to_vec(), 1, 1));
    let from = tokio::time::Instant::now();
    resting_paused(&g, 2).await;
    let quiet_for = from.elapsed();
    assert!(
        quiet_for >= AFTER && quiet_for <= AFTER * 2 + Duration::from_secs(1),
        "rested after {quiet_for:?}"
    );
    c.echo(b"again", 2).await;
    g.stop().await;
}

/// On tokio's paused clock: an opted-in connection (whose idle timeout is
/// armed too) rests again once quiet, and stays at rest.
#[tokio::test(start_paused = true)]
async fn an_opted_in_connection_rests_again_and_stays_at_rest() {
    const AFTER: Duration = Duration::from_secs(2);
    let g = PushGate::start(GateConfig {
        rest_after: AFTER,
        idle_timeout: Duration::from_secs(60),
        ..GateConfig::default()
    })
    .await;
    let mo = g.login("mo").await;
    let mut c = mo.opted_in(1, 0).await;
    resting_paused(&g, 1).await;
    c.echo(b"wake", 1).await;
    resting_paused(&g, 1).await;
    // Quiet for a while, well short of the idle timeout: no wake-up.
    tokio::time::sleep(AFTER * 4).await;
    let m = g.metrics();
    assert_eq!((m.resting_connections, m.rest_wakes), (1, 1));
    c.echo(b"still here", 2).await;
    g.stop().await;
}

/// On tokio's paused clock: a connection found quiet while a request of
/// its user runs cannot rest; the late answer makes it busy, and it rests
/// once quiet after that.
#[tokio::test(start_paused = true)]
async fn a_late_answer_starts_the_quiet_over() {
    const AFTER: Duration = Duration::from_secs(2);
    let g = TestGate::start(GateConfig {
        rest_after: AFTER,
        ..GateConfig::default()
    })
    .await;
    let secret = hello_secret();
    let name = g.logged_in("ned", &secret).await;
    let mut c = g.session(&secret, &name, 1).await;
    until_paused("a rest", || g.metrics().resting_connections == 1).await;
    c.send_request(b"slow answer", 1).await;
    g.agent.wait_pending("slow answer").await;
    // Quiet, but with a request running: up.
    tokio::time::sleep(AFTER * 3).await;
    assert_eq!(g.metrics().resting_connections, 0);
    g.agent.release("slow answer").await;
    assert_eq!(c.recv_response().await, (b"slow answer".to_vec(), 1, 1));
    let from = tokio::time::Instant::now();
    until_paused("a rest after the answer", || {
        g.metrics().resting_connections == 1
    })
    .await;
    assert!(
        from.elapsed() >= AFTER,
        "rested {:?} after the answer",
        from.elapsed()
    );
    g.stop().await;
}
