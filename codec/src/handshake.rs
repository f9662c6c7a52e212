//! The first package on a gate connection, the handshake
//! `username ":" index ":" base64(mac) [":" ext]` (spec §5.2), split zero
//! copy over [`Bytes`] and built for a client.
//!
//! Splitting decides nothing: which status a malformed handshake earns is
//! the protocol layer's call (`loginproto`/`gate`), so parsing returns
//! `Option`. The index stays the raw text the MAC covers; reading it as a
//! number is [`crate::lua_number`]'s job ([`Handshake::index_number`]).

use bytes::Bytes;

use crate::lua_number::LuaNumber;

/// The first package on a gate connection:
/// `username ":" index ":" base64(mac) [":" ext]` (spec §5.2).
///
/// All fields are slices of the received payload (no copy). The fields are
/// raw bytes exactly as sent: the MAC covers the index text *as sent*
/// (`0x10` stays `0x10`), so nothing is normalised here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Handshake {
    /// `U`: everything before the first `:`.
    pub username: Bytes,
    /// `I`: the index text between the first and second `:` (parse it with
    /// [`LuaNumber::parse`] / [`Handshake::index_number`]).
    pub index: Bytes,
    /// `H`: the base64 MAC text after the second `:`, up to a third `:` or
    /// the end.
    pub mac: Bytes,
    /// Whatever follows a third `:`. skynet ignores it; this project uses it
    /// to carry optional client extensions. It is **not** covered by the MAC
    /// (a request for the sealed channel changes the signed text instead:
    /// `loginproto::handshake`), so nothing in it may be trusted for
    /// authentication.
    pub ext: Option<Bytes>,
}

impl Handshake {
    /// Splits a handshake payload exactly as skynet does (spec §5.2 step 1).
    ///
    /// Returns `None` when the payload has fewer than two `:` (including the
    /// empty payload); the gate answers that with `404 User Not Found`, since
    /// skynet then looks up no user at all.
    pub fn parse(payload: &Bytes) -> Option<Handshake> {
        let first = find_colon(payload, 0)?;
        let second = find_colon(payload, first + 1)?;
        let third = find_colon(payload, second + 1);
        Some(Handshake {
            username: payload.slice(..first),
            index: payload.slice(first + 1..second),
            mac: payload.slice(second + 1..third.unwrap_or(payload.len())),
            ext: third.map(|t| payload.slice(t + 1..)),
        })
    }

    /// The text the MAC covers: `username ":" index`, the index as sent.
    pub fn signed_text(&self) -> Vec<u8> {
        let mut text = Vec::with_capacity(self.username.len() + 1 + self.index.len());
        text.extend_from_slice(&self.username);
        text.push(b':');
        text.extend_from_slice(&self.index);
        text
    }

    /// The index read as Lua's `tonumber` reads it (spec §5.2 step 3);
    /// `None` means the gate answers `400 Bad Request`.
    pub fn index_number(&self) -> Option<LuaNumber> {
        LuaNumber::parse(&self.index)
    }

    /// Builds a handshake payload (without the package header).
    ///
    /// `username`, `index` and `mac_b64` must not contain `:` (base64 and
    /// decimal text never do), or the server will split differently. `ext`,
    /// when given, is appended after a third `:` and may contain anything.
    pub fn encode(username: &[u8], index: &[u8], mac_b64: &[u8], ext: Option<&[u8]>) -> Vec<u8> {
        let ext_len = ext.map_or(0, |e| 1 + e.len());
        let mut payload =
            Vec::with_capacity(username.len() + index.len() + mac_b64.len() + 2 + ext_len);
        payload.extend_from_slice(username);
        payload.push(b':');
        payload.extend_from_slice(index);
        payload.push(b':');
        payload.extend_from_slice(mac_b64);
        if let Some(ext) = ext {
            payload.push(b':');
            payload.extend_from_slice(ext);
        }
        payload
    }
}

fn find_colon(payload: &[u8], from: usize) -> Option<usize> {
    payload
        .get(from..)?
        .iter()
        .position(|&b| b == b':')
        .map(|p| from + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(text: &'static [u8]) -> Option<Handshake> {
        Handshake::parse(&Bytes::from_static(text))
    }

    #[test]
    fn handshake_splits_like_skynet() {
        let h = hs(b"aGVsbG8=@c2FtcGxl#MQ==:1:xEa32HAUlak=").unwrap();
        assert_eq!(h.username, &b"aGVsbG8=@c2FtcGxl#MQ=="[..]);
        assert_eq!(h.index, &b"1"[..]);
        assert_eq!(h.mac, &b"xEa32HAUlak="[..]);
        assert_eq!(h.ext, None);
        assert_eq!(h.signed_text(), b"aGVsbG8=@c2FtcGxl#MQ==:1");
        assert_eq!(h.index_number(), Some(LuaNumber::Int(1)));
    }

    #[test]
    fn handshake_third_colon_starts_ext() {
        let h = hs(b"u:2:mac:push=1:more").unwrap();
        assert_eq!(h.mac, &b"mac"[..]);
        assert_eq!(h.ext.as_deref(), Some(&b"push=1:more"[..]));
        let h = hs(b"u:2:mac:").unwrap();
        assert_eq!(h.ext.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn handshake_empty_fields_and_failures() {
        let h = hs(b"::").unwrap();
        assert!(h.username.is_empty() && h.index.is_empty() && h.mac.is_empty());
        assert_eq!(h.ext, None);
        assert_eq!(hs(b""), None);
        assert_eq!(hs(b"garbage"), None);
        assert_eq!(hs(b"one:colon"), None);
        let h = hs(b"a:b:").unwrap();
        assert!(h.mac.is_empty());
    }

    #[test]
    fn handshake_is_zero_copy() {
        let payload = Bytes::from_static(b"user:7:bWFj:x");
        let h = Handshake::parse(&payload).unwrap();
        let base = payload.as_ptr() as usize;
        assert_eq!(h.username.as_ptr() as usize, base);
        assert_eq!(h.index.as_ptr() as usize, base + 5);
        assert_eq!(h.mac.as_ptr() as usize, base + 7);
    }

    #[test]
    fn handshake_encode_roundtrips() {
        let p = Handshake::encode(b"aGVsbG8=@c2FtcGxl#MQ==", b"1", b"xEa32HAUlak=", None);
        assert_eq!(p, b"aGVsbG8=@c2FtcGxl#MQ==:1:xEa32HAUlak=");
        let p = Handshake::encode(b"u", b"0x10", b"m", Some(b"v=2:x"));
        assert_eq!(p, b"u:0x10:m:v=2:x");
        let h = Handshake::parse(&Bytes::from(p)).unwrap();
        assert_eq!(h.ext.as_deref(), Some(&b"v=2:x"[..]));
        assert_eq!(h.signed_text(), b"u:0x10");
    }
}
