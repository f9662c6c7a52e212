//! A client for the login server and message gate (and for skynet's own
//! `snax.loginserver` / `snax.msgserver`, which speak the same bytes).
//!
//! The library is small enough to embed in game tools and services:
//!
//! * [`login()`](login::login) runs the login dialogue (skynet or x25519 suite) and
//!   returns the subid and secret;
//! * [`GateConn`] handshakes with the gate, sends requests, receives
//!   responses, pushes and kicks, and reconnects with index + 1 (or any
//!   index) so the gate replays cached responses;
//! * [`Session`] adds the bookkeeping a QA tool needs (pending requests,
//!   round trips, the last response per request number).
//!
//! The `client` binary's subcommands live here too, each with its options
//! next to its `run`: [`mod@login`] (`client login`), [`shell`], [`script`]
//! (`client run`) and [`mod@bench`].

/// `println!` through [`print_line`]: a reader that has gone ends the
/// process quietly instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::print_line(&format!($($arg)*))
    };
}

pub mod admin;
pub mod bench;
pub mod error;
pub mod gate;
pub mod login;
pub mod net;
pub mod script;
pub mod session;
pub mod shell;
pub mod text;

pub use error::ClientError;
pub use gate::{GateConn, Ticket};
pub use login::{SuiteName, login, login_with_timeout};
pub use session::{Session, SessionConfig};

/// Where the shell and the script runner print their lines.
pub trait Output: Send {
    /// Prints one line (without its newline).
    fn line(&mut self, text: &str);
}

/// Prints to standard output (through [`print_line`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct StdoutOutput;

impl Output for StdoutOutput {
    fn line(&mut self, text: &str) {
        print_line(text);
    }
}

/// The exit status when standard output's reader has gone: 128 + SIGPIPE,
/// what a shell reports for a Unix tool the signal ended (`seq 1 1000000 |
/// head -1`), so a script with `pipefail` sees the same thing.
pub const BROKEN_PIPE_STATUS: i32 = 128 + 13;

/// Prints one line to standard output.
///
/// `println!` panics when the reader has gone (`client login ... | head
/// -1`): Rust ignores SIGPIPE, so the write fails with `EPIPE`. Restoring
/// the signal is no answer, since it would also end the client when a
/// server closes a socket it writes to. So a closed pipe ends the process
/// here, quietly, with [`BROKEN_PIPE_STATUS`]; any other write error is
/// said on standard error and ends it with status 1.
pub fn print_line(text: &str) {
    use std::io::Write;

    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{text}").and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(BROKEN_PIPE_STATUS)
        }
        Err(e) => {
            // Best effort: standard error may be gone as well.
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot write to standard output: {e}"
            );
            std::process::exit(1)
        }
    }
}

/// Collects the lines (for tests and embedding).
impl Output for Vec<String> {
    fn line(&mut self, text: &str) {
        self.push(text.to_owned());
    }
}
