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

/// Prints to standard output.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdoutOutput;

impl Output for StdoutOutput {
    fn line(&mut self, text: &str) {
        println!("{text}");
    }
}

/// Collects the lines (for tests and embedding).
impl Output for Vec<String> {
    fn line(&mut self, text: &str) {
        self.push(text.to_owned());
    }
}
