//! The words of one script line: tokens (quoted sections kept whole, a
//! trailing comment dropped), quoted-value escapes, and the split of a
//! command's tokens into `key=value` options, flag words and free text.
//! Kept apart from `parse` so the grammar of a line is one small piece and
//! each command's parsing reads as the options it takes.

use std::time::Duration;

use crate::text;

/// The line without its trailing comment.
pub(super) fn trimmed_source(line: &str, tokens: &[Token]) -> String {
    let end = tokens.last().map_or(0, |t| t.end);
    line[..end].to_owned()
}

/// One whitespace-separated word; quoted sections may contain spaces.
#[derive(Debug, Clone)]
pub(super) struct Token {
    /// Byte offset of the token in the line.
    pub(super) start: usize,
    /// Byte offset just past it.
    pub(super) end: usize,
    /// The token as written.
    pub(super) raw: String,
}

/// Splits a line into tokens, stopping at a comment.
pub(super) fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let bytes = line.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at].is_ascii_whitespace() {
            at += 1;
            continue;
        }
        if bytes[at] == b'#' {
            break;
        }
        let start = at;
        let mut in_quotes = false;
        while at < bytes.len() {
            match bytes[at] {
                b'\\' if in_quotes => at += 1,
                b'"' => in_quotes = !in_quotes,
                b if b.is_ascii_whitespace() && !in_quotes => break,
                _ => {}
            }
            at += 1;
        }
        if in_quotes {
            return Err("unterminated quoted string".into());
        }
        let end = at.min(bytes.len());
        tokens.push(Token {
            start,
            end,
            raw: line[start..end].to_owned(),
        });
    }
    Ok(tokens)
}

/// A value: quoted (escapes processed) or as written.
pub(super) fn value_bytes(raw: &str) -> Result<Vec<u8>, String> {
    match raw.strip_prefix('"') {
        Some(inner) => {
            let inner = inner
                .strip_suffix('"')
                .ok_or_else(|| format!("text after the closing quote in {raw}"))?;
            text::unescape(inner)
        }
        None => Ok(raw.as_bytes().to_vec()),
    }
}

pub(super) fn value_string(raw: &str) -> Result<String, String> {
    String::from_utf8(value_bytes(raw)?).map_err(|_| format!("{raw} is not UTF-8 text"))
}

/// The words of one command: options, flags, and the free text after them.
pub(super) struct Parts<'a> {
    pub(super) options: Vec<(&'a str, &'a str)>,
    pub(super) flags: Vec<&'a str>,
    /// The rest of the line from the first token that is neither.
    pub(super) rest: Option<&'a str>,
}

/// Splits the tokens after the command word. `keys` are the options this
/// command knows, `flags` its flag words. With `strict_keys`, an unknown
/// `word=…` is an error (catches typos); otherwise it starts the free text.
pub(super) fn split<'a>(
    line: &'a str,
    tokens: &'a [Token],
    keys: &[&str],
    flags: &[&str],
    strict_keys: bool,
) -> Result<Parts<'a>, String> {
    let mut parts = Parts {
        options: Vec::new(),
        flags: Vec::new(),
        rest: None,
    };
    for (n, token) in tokens.iter().enumerate().skip(1) {
        let raw = token.raw.as_str();
        if let Some((key, value)) = raw.split_once('=')
            && !key.starts_with('"')
        {
            if keys.contains(&key) {
                if parts.options.iter().any(|(k, _)| *k == key) {
                    return Err(format!("option {key}= given twice"));
                }
                parts.options.push((key, value));
                continue;
            }
            if strict_keys && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "unknown option {key}= (this command knows: {}); quote text that contains =",
                    keys.iter()
                        .map(|k| format!("{k}="))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
        }
        if flags.contains(&raw) {
            if parts.flags.contains(&raw) {
                return Err(format!("{raw} given twice"));
            }
            parts.flags.push(raw);
            continue;
        }
        let end = tokens.last().map_or(token.end, |t| t.end);
        parts.rest = Some(&line[tokens[n].start..end]);
        break;
    }
    Ok(parts)
}

impl Parts<'_> {
    pub(super) fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    pub(super) fn has(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }

    pub(super) fn no_rest(&self, command: &str) -> Result<(), String> {
        match self.rest {
            Some(rest) => Err(format!("`{command}` takes no text, but got {rest:?}")),
            None => Ok(()),
        }
    }

    pub(super) fn string(&self, key: &str) -> Result<Option<String>, String> {
        self.option(key).map(value_string).transpose()
    }

    pub(super) fn duration(&self, key: &str) -> Result<Option<Duration>, String> {
        self.option(key)
            .map(|v| text::parse_duration(&value_string(v)?))
            .transpose()
    }

    pub(super) fn code(&self, allowed: &[u16]) -> Result<u16, String> {
        let Some(value) = self.option("expect") else {
            return Ok(200);
        };
        let code = value
            .parse::<u16>()
            .ok()
            .filter(|c| allowed.contains(c))
            .ok_or_else(|| {
                format!(
                    "expect={value}: expected one of {}",
                    allowed
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        Ok(code)
    }

    /// The `session=N` option: a request number.
    pub(super) fn number(&self) -> Result<Option<u32>, String> {
        self.option("session")
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| format!("session={v}: expected a number 0..4294967295"))
            })
            .transpose()
    }
}

/// The text after the options: one quoted string, or the rest of the line
/// as written.
pub(super) fn rest_bytes(rest: &str) -> Result<Vec<u8>, String> {
    if rest.starts_with('"') {
        let tokens = tokenize(rest)?;
        if tokens.len() > 1 {
            return Err(format!("text after the closing quote in {rest}"));
        }
        value_bytes(rest)
    } else {
        Ok(rest.as_bytes().to_vec())
    }
}
