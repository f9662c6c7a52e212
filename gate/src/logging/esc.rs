//! Client-controlled bytes as they may appear in a log line.
//!
//! A user name, a uid, a route or a reason can hold LF, CR, ESC or any
//! other byte; written raw they would forge log lines or drive a terminal.
//! [`esc`] shows them with Rust's debug escapes (`\n`, `\u{1b}`, `\"`),
//! invalid UTF-8 as U+FFFD, so every log line stays one line of text.

use std::fmt;

/// Displays `bytes` escaped (see the module docs).
pub fn esc(bytes: &[u8]) -> Escaped<'_> {
    Escaped(bytes)
}

/// See [`esc`].
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(&'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            fmt::Display::fmt(&chunk.valid().escape_debug(), f)?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_are_escaped() {
        assert_eq!(esc(b"alice").to_string(), "alice");
        assert_eq!(
            esc(b"a\nstatus=200 user=admin\r\x1b[2J").to_string(),
            "a\\nstatus=200 user=admin\\r\\u{1b}[2J"
        );
        assert_eq!(esc(b"\xff\"x").to_string(), "\u{fffd}\\\"x");
        assert!(
            !esc(b"\n\r\x1b\x00")
                .to_string()
                .contains(['\n', '\r', '\x1b', '\0'])
        );
    }
}
