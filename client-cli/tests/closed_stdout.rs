//! `client login ... | head -1`: a reader that goes away ends the client
//! quietly (no panic, nothing on standard error) with the status a shell
//! reports for a tool SIGPIPE ended, as Unix tools do.
//!
//! The built binary runs against a scripted login server on
//! `127.0.0.1:0`, which answers only after the test has closed the
//! client's standard output: the client's one write then meets a closed
//! pipe every time, without any sleep.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};

use client_cli::BROKEN_PIPE_STATUS;

/// Runs `client login` with `extra` flags, closes its standard output,
/// then refuses the login with `401`; returns the exit code and stderr.
fn login_into_a_closed_pipe(extra: &[&str]) -> (Option<i32>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["login", "--login", &addr, "--suite", "x25519"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the client");
    // The read end closes: the client's next write to stdout is EPIPE.
    drop(child.stdout.take());

    let (mut socket, _) = listener.accept().expect("the client connects");
    socket.write_all(b"obLD1OX2Bxg=\n").expect("challenge");
    let mut key = String::new();
    BufReader::new(&socket)
        .read_line(&mut key)
        .expect("the client's key line");
    assert!(!key.is_empty(), "the client sent its key");
    socket.write_all(b"401 Unauthorized\n").expect("status");
    drop(socket);

    let output = child.wait_with_output().expect("the client ends");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_the_client_quietly() {
    for extra in [&[][..], &["--json"][..]] {
        let (code, stderr) = login_into_a_closed_pipe(extra);
        assert_eq!(code, Some(BROKEN_PIPE_STATUS), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
        assert_eq!(stderr, "", "{extra:?}: nothing said on stderr");
    }
}
