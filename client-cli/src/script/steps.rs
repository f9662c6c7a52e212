//! What a parsed QA script is: [`Script`], its [`Step`]s and their
//! [`Command`]s, the payloads and expectations they carry, and
//! [`ParseError`]. The runner (`exec`) reads these; `parse` builds them.
//! Each command's doc shows its syntax as `SCRIPTS.md` describes it.

use std::path::PathBuf;
use std::time::Duration;

use loginproto::login::Suite;

use crate::session::ConnectSpec;

/// A parsed script.
#[derive(Debug, Clone)]
pub struct Script {
    /// Name for messages (the file path as given).
    pub name: String,
    /// Directory `file=` paths are relative to.
    pub base_dir: PathBuf,
    /// The top-level steps.
    pub steps: Vec<Step>,
}

/// One command with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// 1-based line number.
    pub line: usize,
    /// The line as written (trimmed), for messages.
    pub source: String,
    /// What to do.
    pub command: Command,
}

/// A script command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `login [user=] [password=] [server=] [suite=] [expect=CODE] [within=]`
    Login {
        /// Who, if not the command-line user.
        user: Option<String>,
        /// Password, if not the command-line one.
        password: Option<String>,
        /// Server name, if not the command-line one.
        server: Option<String>,
        /// Suite, if not the command-line one.
        suite: Option<Suite>,
        /// Expected status code (200 unless given).
        expect: u16,
        /// Deadline, if not the script's.
        within: Option<Duration>,
    },
    /// `connect …` / `reconnect …`: a new gate connection and handshake.
    Connect {
        /// The handshake to send.
        spec: ConnectSpec,
        /// Expected status code (200 unless given).
        expect: u16,
        /// Written as `reconnect` (same effect; reads better after `drop`).
        reconnect: bool,
    },
    /// `drop`: close the gate connection without logging out.
    Drop,
    /// `send [session=N] (TEXT | hex=HEX | file=PATH)`
    Send {
        /// Explicit request number (a resend), else the next one. The
        /// script says `session=N`, skynet's word for it.
        number: Option<u32>,
        /// What to send.
        payload: Payload,
    },
    /// `expect …`
    Expect(Expectation),
    /// `ping [within=]`: a heartbeat, and wait for its answer.
    Ping {
        /// Deadline, if not the script's.
        within: Option<Duration>,
    },
    /// `sleep DURATION`
    Sleep(Duration),
    /// `timeout DURATION`: the default deadline of later steps.
    Timeout(Duration),
    /// `repeat N` … `end`
    Repeat {
        /// How many times.
        count: u32,
        /// The steps in between.
        body: Vec<Step>,
    },
    /// `print TEXT`
    Print(Template),
}

/// A request body.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Text (with `${i}`).
    Text(Template),
    /// Raw bytes (`hex=`).
    Bytes(Vec<u8>),
    /// A file's bytes (`file=`, relative to the script).
    File(PathBuf),
}

/// Bytes that may contain `${i}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<u8>);

impl Template {
    /// The bytes with every `${i}` replaced by `i` (or left as is without a
    /// loop).
    pub fn expand(&self, i: Option<u64>) -> Vec<u8> {
        const VAR: &[u8] = b"${i}";
        let Some(i) = i else {
            return self.0.clone();
        };
        let value = i.to_string();
        let mut out = Vec::with_capacity(self.0.len() + 8);
        let mut rest = &self.0[..];
        while let Some(at) = rest.windows(VAR.len()).position(|w| w == VAR) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(value.as_bytes());
            rest = &rest[at + VAR.len()..];
        }
        out.extend_from_slice(rest);
        out
    }
}

/// What an `expect` waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// The request number of the response (`session=N` in the script,
    /// skynet's word); default: the oldest request sent and not yet
    /// expected.
    pub number: Option<u32>,
    /// Deadline, if not the script's.
    pub within: Option<Duration>,
    /// For `push` and `gap`: the sequence number it must carry.
    pub seq: Option<u32>,
    /// What kind of message.
    pub kind: ExpectKind,
    /// How its content must look.
    pub matcher: Matcher,
}

/// The kind of message an `expect` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectKind {
    /// A response with ok byte 1 (the default).
    Ok,
    /// A response with ok byte 0.
    Error,
    /// A server push.
    Push,
    /// A push-gap notice (pushes were lost from the gate's backlog).
    Gap,
    /// A kick message.
    Kick,
    /// The gate closing the connection.
    Closed,
}

impl ExpectKind {
    /// The word used in scripts.
    pub fn word(self) -> &'static str {
        match self {
            ExpectKind::Ok => "ok",
            ExpectKind::Error => "error",
            ExpectKind::Push => "push",
            ExpectKind::Gap => "gap",
            ExpectKind::Kick => "kick",
            ExpectKind::Closed => "closed",
        }
    }
}

/// How a content must look.
#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    /// Anything.
    Any,
    /// Exactly these bytes.
    Exact(Template),
    /// Starting with these bytes.
    Prefix(Template),
    /// Matching this regular expression (over bytes; `${i}` expanded first).
    Regex(String),
}

/// A syntax error with its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}:{line}: {message}")]
pub struct ParseError {
    /// Script name.
    pub name: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}
