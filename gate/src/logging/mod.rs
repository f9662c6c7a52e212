//! Logging: how client-controlled bytes appear in a log line ([`esc`]),
//! how text lines write their fields ([`Logfmt`]) and the process's
//! `tracing` subscriber ([`init`]).
//!
//! Both live here so the one rule, "every log line stays one line of
//! text", has one home: the binary installs the subscriber, every module
//! that logs a client's bytes goes through [`esc`].

mod esc;
mod logfmt;

pub use self::esc::{Escaped, esc};
pub use self::logfmt::{Logfmt, LogfmtVisitor, quoted};

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event; fields follow logfmt's rules
    /// ([`Logfmt`]: values with a space, `=` or `"` are quoted).
    Text,
    /// One JSON object per event (tracing's JSON formatter).
    Json,
}

/// Installs the process's subscriber: lines to stderr in `format`,
/// filtered by `RUST_LOG` (an env-filter, default `info`).
///
/// Panics if a global subscriber is already set, as `tracing` does: a
/// process sets up its logging once.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        // Colour codes only on a terminal: a log file stays plain text.
        LogFormat::Text => logs
            .fmt_fields(Logfmt)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
    }
}
