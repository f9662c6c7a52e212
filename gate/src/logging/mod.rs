//! Logging: how client-controlled bytes appear in a log line ([`esc`]),
//! how text lines write their fields ([`Logfmt`]) and the process's
//! `tracing` subscriber ([`init`]), whose level and format a
//! configuration reload changes ([`apply`]).
//!
//! Both live here so the one rule, "every log line stays one line of
//! text", has one home: the binary installs the subscriber, every module
//! that logs a client's bytes goes through [`esc`].

mod esc;
mod logfmt;

pub use self::esc::{Escaped, esc};
pub use self::logfmt::{Logfmt, LogfmtVisitor, quoted};

use std::io::IsTerminal;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::LogConfig;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event; fields follow logfmt's rules
    /// ([`Logfmt`]: values with a space, `=` or `"` are quoted).
    #[default]
    Text,
    /// One JSON object per event (tracing's JSON formatter).
    Json,
}

/// The subscriber's layers below the formatter: the registry and the
/// level filter.
type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// The formatter of either format, boxed so a reload can swap one for the
/// other.
type Formatter = Box<dyn Layer<Filtered> + Send + Sync>;

/// What [`apply`] changes in the installed subscriber.
struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<Formatter, Filtered>,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

/// The level filter of `level` (env-filter directives such as `info` or
/// `gate=debug,info`); without one, `RUST_LOG`, else `info`. `Err` says
/// why the directives do not parse.
pub fn filter(level: Option<&str>) -> Result<EnvFilter, String> {
    match level {
        Some(level) => EnvFilter::try_new(level)
            .map_err(|e| format!("log.level {level:?} is not a level filter: {e}")),
        None => Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))),
    }
}

fn formatter(format: LogFormat) -> Formatter {
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => Box::new(lines.json()),
        // Colour codes only on a terminal: a log file stays plain text.
        LogFormat::Text => Box::new(
            lines
                .fmt_fields(Logfmt)
                .with_ansi(std::io::stderr().is_terminal()),
        ),
    }
}

/// Installs the process's subscriber: lines to stderr in `config.format`,
/// filtered by `config.level` (or `RUST_LOG`, default `info`); [`apply`]
/// changes both later. `Err` if the level does not parse.
///
/// Panics if a global subscriber is already set, as `tracing` does: a
/// process sets up its logging once.
pub fn init(config: &LogConfig) -> Result<(), String> {
    let (filter, filter_handle) = reload::Layer::new(filter(config.level.as_deref())?);
    let (format, format_handle) = reload::Layer::new(formatter(config.format));
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .init();
    let _ = HANDLES.set(Handles {
        filter: filter_handle,
        format: format_handle,
    });
    Ok(())
}

/// Whether [`init`] installed this process's subscriber (only then can
/// [`apply`] change it).
pub fn reloadable() -> bool {
    HANDLES.get().is_some()
}

/// Changes the level and the format of the subscriber [`init`] installed
/// (a configuration reload): events from now on are filtered and written
/// the new way. `Err` if the level does not parse or [`init`] did not run;
/// then nothing changed.
pub fn apply(config: &LogConfig) -> Result<(), String> {
    let handles = HANDLES
        .get()
        .ok_or("this process's logging was not set up by gate::logging::init")?;
    let filter = filter(config.level.as_deref())?;
    handles
        .filter
        .reload(filter)
        .map_err(|e| format!("cannot change the log level: {e}"))?;
    handles
        .format
        .reload(formatter(config.format))
        .map_err(|e| format!("cannot change the log format: {e}"))
}
