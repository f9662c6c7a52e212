//! End-to-end tests of the `client` library and subcommands against a real
//! gate on `127.0.0.1:0`: the example scripts, a failing script, the shell
//! driven by piped input, and the load generator (clean against the gate and
//! the raw echo server, and catching a dropped, corrupted or failed
//! response from a faulty server).
//!
//! No sleeps: scripts and the shell wait on responses; bench runs are
//! bounded by request counts, or by a short duration where the duration is
//! what is being tested.

use std::time::Duration;

use client_cli::bench::{BenchCmd, bench};
use client_cli::script::{Script, load, run_script};
use client_cli::shell;
use integration::client::{Fault, FaultyEcho, scripts_dir, session_config};
use integration::login::{GUARD, Server, guard, test_config};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

async fn server() -> Server {
    Server::start(test_config(), gate::Components::default()).await
}

#[tokio::test]
async fn every_example_script_passes() {
    let server = server().await;
    let mut paths: Vec<_> = std::fs::read_dir(scripts_dir())
        .expect("scripts dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "script"))
        .collect();
    paths.sort();
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for required in ["echo", "not-found", "index-expired", "replay"] {
        assert!(
            names.iter().any(|n| n == required),
            "missing {required}.script"
        );
    }
    for (path, name) in paths.iter().zip(&names) {
        let script = load(path).unwrap_or_else(|e| panic!("{e}"));
        let cfg = session_config(server.login, server.gate, &format!("qa-{name}"));
        let mut out = Vec::new();
        let result = guard(name, run_script(&script, cfg, &mut out, false)).await;
        if let Err(failure) = result {
            panic!("{name} failed:\n{failure}\n--- log ---\n{}", out.join("\n"));
        }
        assert!(!out.is_empty(), "steps are logged");
    }
}

#[tokio::test]
async fn a_wrong_expectation_fails_with_a_clear_message() {
    let server = server().await;
    let source =
        "login\nconnect\nsend hello\n# a comment line\nexpect goodbye\nsend never reached\n";
    let script = Script::parse("wrong.script", source, ".".into()).unwrap();
    let cfg = session_config(server.login, server.gate, "qa-wrong");
    let mut out = Vec::new();
    let failure = guard("script", run_script(&script, cfg, &mut out, true))
        .await
        .expect_err("the script must fail");
    assert_eq!(failure.line, 5);
    assert_eq!(failure.step, "expect goodbye");
    assert_eq!(failure.expected, "s=0 ok response with content \"goodbye\"");
    assert!(
        failure.got.starts_with("<- s=0 ok \"hello\""),
        "{}",
        failure.got
    );
    let text = failure.to_string();
    assert!(
        text.starts_with("wrong.script:5: expect goodbye\n"),
        "{text}"
    );
    assert!(text.contains("expected s=0 ok response"), "{text}");
    assert!(text.contains("got      <- s=0 ok \"hello\""), "{text}");

    // A status that does not come is named with its meaning.
    let source = "connect\nreconnect index=5 expect=403\n";
    let script = Script::parse("status.script", source, ".".into()).unwrap();
    let cfg = session_config(server.login, server.gate, "qa-status");
    let failure = guard("script", run_script(&script, cfg, &mut Vec::new(), true))
        .await
        .expect_err("the script must fail");
    assert_eq!(failure.line, 2);
    assert_eq!(failure.expected, "handshake status 403");
    assert_eq!(failure.got, "200 OK for index 5 (connected)");

    // An expected error response that is in fact ok.
    let source = "connect\nsend x\nexpect error\n";
    let script = Script::parse("flag.script", source, ".".into()).unwrap();
    let cfg = session_config(server.login, server.gate, "qa-flag");
    let failure = guard("script", run_script(&script, cfg, &mut Vec::new(), true))
        .await
        .expect_err("the script must fail");
    assert_eq!(failure.expected, "s=0 error response with any content");
    assert!(
        failure.got.starts_with("<- s=0 ok \"x\""),
        "{}",
        failure.got
    );
}

#[tokio::test]
async fn the_shell_runs_from_piped_input() {
    let server = server().await;
    let cfg = session_config(server.login, server.gate, "qa-shell");
    let mut out = Vec::new();
    let session = guard("login", shell::start(cfg, &mut out)).await.unwrap();
    let input = b"hello\n:wait\n:hex 00ff\n:wait\n:drop\n:reconnect\n:resend 0\n:wait\n\
                  :reconnect 1\n:reconnect\n:send :colon\n:pending\n:wait\n:cache\n:timings\n\
                  :bogus\n:quit\nnot sent\n";
    let lines = shell::lines_from(&input[..]);
    let summary = guard("shell", shell::run_shell(session, lines, &mut out, true)).await;
    assert_eq!(summary.unanswered, 0);
    let transcript = out.join("\n");
    let expect_in_order = [
        "connect 127.0.0.1:",
        "index=1 -> 200 OK",
        "> hello",
        "-> s=0 \"hello\"",
        "<- s=0 ok \"hello\"",
        "-> s=1 hex:00ff",
        "<- s=1 ok hex:00ff",
        "connection dropped",
        "index=2 -> 200 OK",
        "-> s=0 \"hello\" (resend)",
        "<- s=0 ok \"hello\"",
        "index=1 -> 403 Index Expired",
        "index=3 -> 200 OK",
        "-> s=2 \":colon\"",
        "<- s=2 ok \":colon\"",
        "s=0 ok \"hello\" (received",
        "s=1 ok hex:00ff (received",
        "round trip n=",
        "!! unknown command :bogus",
        "> :quit",
    ];
    let mut from = 0;
    for needle in expect_in_order {
        match transcript[from..].find(needle) {
            Some(at) => from += at + needle.len(),
            None => panic!("{needle:?} missing (in order) from:\n{transcript}"),
        }
    }
    assert!(
        !transcript.contains("not sent"),
        "input after :quit is ignored"
    );
}

#[tokio::test]
async fn the_shell_reports_a_refused_login() {
    let server = server().await;
    let mut cfg = session_config(server.login, server.gate, "qa-refused");
    cfg.password = "wrong".into();
    let mut out = Vec::new();
    let err = guard("login", shell::start(cfg, &mut out))
        .await
        .expect_err("login must fail");
    assert!(err.contains("401 Unauthorized"), "{err}");
}

fn quick(cmd: &mut BenchCmd) {
    cmd.workers = 2;
    cmd.warmup = Some(Duration::ZERO);
    cmd.timeout = GUARD;
    cmd.response_timeout = GUARD;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_against_the_gate_is_clean() {
    let server = server().await;
    let mut cmd = BenchCmd::new(&server.gate.to_string());
    quick(&mut cmd);
    cmd.login = server.login.to_string();
    cmd.user_prefix = "bench-clean-".into();
    cmd.conns = 16;
    cmd.depth = 8;
    cmd.size = 100;
    cmd.warmup = Some(Duration::from_millis(500));
    cmd.duration = Duration::from_millis(1500);
    let report = guard("bench", bench(&cmd, false)).await.unwrap();
    assert_eq!(report.check(), Ok(()), "{}", report.human());
    assert_eq!((report.errors, report.lost), (0, 0));
    assert_eq!(report.established, 16);
    assert!(report.requests > 0 && report.sent == report.received);
    assert!(report.rps() > 0.0);
    let json = report.to_json();
    for key in ["requests", "rps", "p50_us", "p99_us", "errors", "lost"] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(json["lost"], 0);

    // Both suites, bounded by count.
    for suite in [client_cli::SuiteName::Skynet, client_cli::SuiteName::X25519] {
        let mut cmd = BenchCmd::new(&server.gate.to_string());
        quick(&mut cmd);
        cmd.login = server.login.to_string();
        cmd.user_prefix = format!("bench-{suite:?}-");
        cmd.suite = suite;
        cmd.conns = 4;
        cmd.depth = 4;
        cmd.requests = Some(2000);
        let report = guard("bench", bench(&cmd, false)).await.unwrap();
        assert_eq!(report.check(), Ok(()), "{}", report.human());
        assert_eq!((report.sent, report.received), (2000, 2000));
        assert_eq!(
            report.requests, 2000,
            "no warmup with --requests: all measured"
        );
    }
}

/// `--seal` (every request and answer sealed) and `--rate` (an open loop:
/// requests on schedule, latency from when each was due), bounded by
/// count: every request answered, none lost, sealed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_sealed_and_open_loop_runs_are_clean() {
    let server = server().await;
    for (seal, rate) in [(true, None), (false, Some(400.0)), (true, Some(400.0))] {
        let mut cmd = BenchCmd::new(&server.gate.to_string());
        quick(&mut cmd);
        cmd.login = server.login.to_string();
        cmd.user_prefix = format!("bench-open-{seal}-{rate:?}-");
        cmd.conns = 4;
        cmd.depth = 4;
        cmd.seal = seal;
        cmd.rate = rate;
        cmd.requests = Some(800);
        let report = guard("bench", bench(&cmd, false)).await.unwrap();
        assert_eq!(report.check(), Ok(()), "{}", report.human());
        assert_eq!(
            (report.sent, report.received),
            (800, 800),
            "{seal} {rate:?}"
        );
        assert!(report.sealed == seal);
        assert_eq!(report.offered_rps, rate.map(|r| r * 4.0));
        let json = report.to_json();
        assert_eq!(json["sealed"], seal);
        if rate.is_some() {
            assert!(report.human().contains("open loop"), "{}", report.human());
        }
    }
    // An open loop that sends only every few seconds still ends (its
    // connections wait for the next due request, not for answers).
    let mut cmd = BenchCmd::new(&server.gate.to_string());
    quick(&mut cmd);
    cmd.login = server.login.to_string();
    cmd.user_prefix = "bench-slow-".into();
    cmd.conns = 2;
    cmd.rate = Some(0.5);
    cmd.requests = Some(2);
    let report = guard("bench", bench(&cmd, false)).await.unwrap();
    assert_eq!(report.check(), Ok(()), "{}", report.human());
    assert_eq!((report.sent, report.received), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_logins_and_holds_idle_sessions() {
    let server = server().await;
    let mut cmd = BenchCmd::new(&server.gate.to_string());
    quick(&mut cmd);
    cmd.login = server.login.to_string();
    cmd.user_prefix = "bench-login-".into();
    cmd.logins = true;
    cmd.conns = 4;
    cmd.requests = Some(40);
    let report = guard("bench --logins", bench(&cmd, false)).await.unwrap();
    assert_eq!(report.check(), Ok(()), "{}", report.human());
    assert_eq!(report.mode, "logins");
    assert_eq!(report.received, 40);

    let mut cmd = BenchCmd::new(&server.gate.to_string());
    quick(&mut cmd);
    cmd.login = server.login.to_string();
    cmd.user_prefix = "bench-idle-".into();
    cmd.idle = true;
    cmd.conns = 20;
    cmd.duration = Duration::from_millis(50);
    let report = guard("bench --idle", bench(&cmd, false)).await.unwrap();
    assert_eq!(report.check(), Ok(()), "{}", report.human());
    assert_eq!(report.established, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_raw_against_the_raw_echo_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let echo = tokio::spawn(raw_echo::serve(listener, shutdown.clone()));
    let mut cmd = BenchCmd::new(&addr.to_string());
    quick(&mut cmd);
    cmd.raw = true;
    cmd.conns = 8;
    cmd.depth = 16;
    cmd.size = 512;
    cmd.requests = Some(20_000);
    let report = guard("bench --raw", bench(&cmd, false)).await.unwrap();
    assert_eq!(report.check(), Ok(()), "{}", report.human());
    assert_eq!(report.received, 20_000);
    shutdown.cancel();
    guard("raw echo to stop", echo).await.unwrap();
}

async fn faulty_run(fault: Fault) -> client_cli::bench::BenchReport {
    let server = FaultyEcho::start(fault).await;
    let mut cmd = BenchCmd::new(&server.addr.to_string());
    quick(&mut cmd);
    cmd.raw = true;
    cmd.conns = 2;
    cmd.depth = 4;
    cmd.requests = Some(400);
    // The dropped response is noticed when its connection has nothing else
    // in flight and this passes: it bounds the test's run time.
    cmd.response_timeout = Duration::from_millis(300);
    guard("bench", bench(&cmd, false))
        .await
        .expect("valid options")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_detects_a_dropped_response() {
    let report = faulty_run(Fault::Drop(100)).await;
    assert_eq!(report.lost, 1, "{}", report.human());
    assert_eq!(report.sent, 400);
    assert_eq!(report.received, 399);
    let err = report.check().expect_err("a lost response fails the run");
    assert!(err.contains("1 lost"), "{err}");
    assert_eq!(report.to_json()["ok"], false);
    assert!(report.human().contains("result     FAILED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_detects_wrong_responses() {
    let report = faulty_run(Fault::Corrupt(10)).await;
    assert_eq!((report.errors, report.lost), (1, 0), "{}", report.human());
    assert!(report.error_samples[0].contains("payload is not the echo"));
    assert!(report.check().is_err());

    let report = faulty_run(Fault::Error(20)).await;
    assert_eq!((report.errors, report.lost), (1, 0), "{}", report.human());
    assert!(report.error_samples[0].contains("ok byte 0"));
    assert!(report.check().is_err());
}
