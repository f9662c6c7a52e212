//! The login token: `b64(user) "@" b64(server) ":" b64(password)`, the same
//! text in both suites, and its parsing exactly as skynet's example
//! `auth_handler` does it.

use std::fmt;

use crate::skynet::{base64_decode, base64_encode_into};

/// What a client logs in with, and what the server recovers from a token.
///
/// `Debug` shows the user and the server but never the password; the
/// password is wiped when the credentials drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user id (`uid`).
    pub user: Vec<u8>,
    /// The name of the gate the user wants to reach.
    pub server: Vec<u8>,
    /// The password, checked by the server's auth handler.
    pub password: zeroize::Zeroizing<Vec<u8>>,
}

impl Credentials {
    /// Bundles the three parts.
    pub fn new(
        user: impl Into<Vec<u8>>,
        server: impl Into<Vec<u8>>,
        password: impl Into<Vec<u8>>,
    ) -> Credentials {
        Credentials {
            user: user.into(),
            server: server.into(),
            password: zeroize::Zeroizing::new(password.into()),
        }
    }

    /// The token text `b64(user)@b64(server):b64(password)`.
    pub fn token(&self) -> Vec<u8> {
        let mut token = Vec::with_capacity(
            4 * (self.user.len() + self.server.len() + self.password.len()) / 3 + 16,
        );
        base64_encode_into(&self.user, &mut token);
        token.push(b'@');
        base64_encode_into(&self.server, &mut token);
        token.push(b':');
        base64_encode_into(&self.password, &mut token);
        token
    }

    /// Parses a decrypted token like skynet's example `auth_handler`.
    ///
    /// That handler runs the Lua pattern `([^@]+)@([^:]+):(.+)` with
    /// `string.match`, which searches unanchored: the first start position
    /// where the pattern matches wins, so leading bytes that prevent a match
    /// are skipped. Each part is then decoded with skynet's lenient base64.
    /// Any failure (no match, a part that does not decode) is `None`; the
    /// server answers `401` for it, as skynet does when the handler raises.
    pub fn parse_token(token: &[u8]) -> Option<Credentials> {
        let (user, server, password) = match_token(token)?;
        Some(Credentials {
            user: base64_decode(user).ok()?,
            server: base64_decode(server).ok()?,
            password: zeroize::Zeroizing::new(base64_decode(password).ok()?),
        })
    }
}

/// `string.match(token, "([^@]+)@([^:]+):(.+)")` on bytes.
///
/// For a start position `s`, `[^@]+` can only end right before the first
/// `@` at or after `s` (a shorter match would be followed by a non-`@`), and
/// `[^:]+` likewise only before the first `:` after that `@`; `(.+)` takes
/// the rest. So the match at `s` is determined by those two positions, and
/// every start before the same `@` fails or succeeds alike; after a failure
/// the search can resume behind that `@`.
fn match_token(token: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let mut start = 0;
    while start < token.len() {
        // `[^@]+` needs at least one byte that is not `@`.
        if token[start] == b'@' {
            start += 1;
            continue;
        }
        let at = start + token[start..].iter().position(|&b| b == b'@')?;
        let server_start = at + 1;
        let colon = token[server_start..]
            .iter()
            .position(|&b| b == b':')
            .map(|offset| server_start + offset);
        if let Some(colon) = colon {
            // `[^:]+` non-empty and `.+` non-empty.
            if colon > server_start && colon + 1 < token.len() {
                return Some((
                    &token[start..at],
                    &token[server_start..colon],
                    &token[colon + 1..],
                ));
            }
        }
        start = at + 1;
    }
    None
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &String::from_utf8_lossy(&self.user))
            .field("server", &String::from_utf8_lossy(&self.server))
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_text_matches_the_transcript() {
        let creds = Credentials::new("hello", "sample", "password");
        assert_eq!(creds.token(), b"aGVsbG8=@c2FtcGxl:cGFzc3dvcmQ=");
        assert_eq!(
            Credentials::parse_token(b"aGVsbG8=@c2FtcGxl:cGFzc3dvcmQ="),
            Some(creds)
        );
    }

    #[test]
    fn lua_pattern_semantics() {
        let m = match_token;
        assert_eq!(m(b"u@s:p"), Some((&b"u"[..], &b"s"[..], &b"p"[..])));
        // The password is the rest, colons and all.
        assert_eq!(m(b"u@s:p:q@"), Some((&b"u"[..], &b"s"[..], &b"p:q@"[..])));
        // Leading `@`s are skipped by the unanchored search.
        assert_eq!(m(b"@@u@s:p"), Some((&b"u"[..], &b"s"[..], &b"p"[..])));
        // Empty server at the first `@`: the search resumes behind it, and
        // the server part may itself contain an `@`.
        assert_eq!(m(b"a@:x@s:p"), Some((&b":x"[..], &b"s"[..], &b"p"[..])));
        assert_eq!(m(b"a@b@c:p"), Some((&b"a"[..], &b"b@c"[..], &b"p"[..])));
        // Empty password: no match anywhere.
        assert_eq!(m(b"u@s:"), None);
        assert_eq!(m(b"u@s"), None);
        assert_eq!(m(b"us:p"), None);
        assert_eq!(m(b"@s:p"), None);
        assert_eq!(m(b""), None);
        // Newlines are ordinary bytes to `.`.
        assert_eq!(m(b"u@s:\n"), Some((&b"u"[..], &b"s"[..], &b"\n"[..])));
    }

    #[test]
    fn parts_must_decode() {
        // `!` is skipped by skynet's decoder, but a group of only skipped
        // characters is an error.
        assert_eq!(Credentials::parse_token(b"aGVsbG8=@c2FtcGxl:!"), None);
        // Lenient decoding: unpadded parts are accepted.
        assert_eq!(
            Credentials::parse_token(b"aGVsbG8@c2FtcGxl:cGFzc3dvcmQ"),
            Some(Credentials::new("hello", "sample", "password"))
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let text = format!("{:?}", Credentials::new("hello", "sample", "hunter2"));
        assert!(text.contains("hello"));
        assert!(!text.contains("hunter2"));
    }
}
