//! The fields of a text log line, written by logfmt's rules.
//!
//! tracing's default text formatter writes `key=value` with the value as
//! it is: a user named `mallory status=200 reason=logged in` becomes
//! `user=mallory status=200 reason=logged in`, and a `key=value` parser
//! (Loki, Vector, `hl`, `lnav`) reads a forged `status=200`. [`Logfmt`]
//! writes every value that holds a space, `=`, `"` or a control character
//! in double quotes, with `"` and `\` escaped inside, so a parser gets
//! back exactly the value that was logged and nothing more.
//!
//! Quoting lives here rather than in [`esc`](super::esc()): `esc` is also what
//! JSON lines carry, where quoting would be a second, wrong layer; and
//! every value (reasons, error texts, addresses), not only the client's
//! bytes, needs it for a parser to split the line right. `esc` still
//! turns control bytes into visible escapes, so a line stays one line.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

/// Field formatter for text logs: `message key=value key="quoted value"`
/// (see the module docs). Use with
/// `tracing_subscriber::fmt().fmt_fields(Logfmt)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logfmt;

impl<'a> MakeVisitor<Writer<'a>> for Logfmt {
    type Visitor = LogfmtVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> LogfmtVisitor<'a> {
        LogfmtVisitor {
            writer: target,
            first: true,
            result: Ok(()),
        }
    }
}

/// Writes one event's or span's fields (see [`Logfmt`]).
#[derive(Debug)]
pub struct LogfmtVisitor<'a> {
    writer: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl LogfmtVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        let name = field.name();
        // Some fields are log-crate metadata already shown in the prefix.
        if name.starts_with("log.") {
            return;
        }
        self.result = if name == "message" {
            // The event's text: written bare and first, as tracing does;
            // only control characters are escaped, so it stays one line.
            self.writer
                .write_str(separator)
                .and_then(|()| escape_controls(&mut self.writer, value))
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            write!(self.writer, "{separator}{name}=").and_then(|()| quote(&mut self.writer, value))
        };
    }
}

impl Visit for LogfmtVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields arrive here with a Debug that is their Display.
        let text = format!("{value:?}");
        self.write(field, &text);
    }
}

impl VisitOutput<fmt::Result> for LogfmtVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for LogfmtVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Whether logfmt needs `value` in quotes: a space or `=` would split it,
/// a `"` would open a quote, and a control character (which `esc` never
/// lets through, but other values might) would break the line.
fn needs_quotes(value: &str) -> bool {
    value
        .chars()
        .any(|c| c == ' ' || c == '=' || c == '"' || c.is_control())
}

/// Writes `value` as a logfmt value: bare if it can be, else in quotes
/// with `"` and `\` escaped (and control characters as Rust escapes, so a
/// value from outside `esc` cannot end the line either).
fn quote(out: &mut dyn Write, value: &str) -> fmt::Result {
    if !needs_quotes(value) {
        return out.write_str(value);
    }
    out.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            c if c.is_control() => write!(out, "{}", c.escape_debug())?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

fn escape_controls(out: &mut dyn Write, text: &str) -> fmt::Result {
    for c in text.chars() {
        if c.is_control() {
            write!(out, "{}", c.escape_debug())?;
        } else {
            out.write_char(c)?;
        }
    }
    Ok(())
}

/// The logfmt text of one value (tests and callers that build lines by hand).
pub fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    // Writing to a String cannot fail.
    let _ = quote(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_bare_unless_they_would_split() {
        assert_eq!(quoted("alice"), "alice");
        assert_eq!(quoted(""), "");
        assert_eq!(
            quoted("a\\nb"),
            "a\\nb",
            "a backslash alone needs no quotes"
        );
        assert_eq!(
            quoted("mallory status=200 reason=logged in"),
            "\"mallory status=200 reason=logged in\""
        );
        assert_eq!(quoted("a=b"), "\"a=b\"");
        assert_eq!(quoted("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(quoted("x y\\z"), "\"x y\\\\z\"");
        assert_eq!(quoted("a\nb"), "\"a\\nb\"");
    }
}
