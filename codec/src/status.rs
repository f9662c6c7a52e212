//! Status codes of the login server (status lines) and of the message gate
//! (handshake reply packages), with their exact wire text.
//!
//! The two servers share numbers but not text: 403 is `403 Forbidden` on the
//! login server and `403 Index Expired` on the gate. Each server therefore
//! has its own newtype, and the text lives next to the constant so there is
//! exactly one place that knows the bytes.

use std::fmt;

/// A login-server status, sent as the last line of the login dialogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginStatus(u16);

impl LoginStatus {
    /// Login succeeded; the line carries `base64(subid)`.
    pub const OK: LoginStatus = LoginStatus(200);
    /// Key exchange, proof, token or credentials were rejected.
    pub const UNAUTHORIZED: LoginStatus = LoginStatus(401);
    /// Credentials were accepted but the gate refused the login.
    pub const FORBIDDEN: LoginStatus = LoginStatus(403);
    /// Another login of the same uid is in progress (multilogin off).
    pub const NOT_ACCEPTABLE: LoginStatus = LoginStatus(406);
    /// Too many refused passwords for this user name or from this address:
    /// the server did not check the credentials; retry later. Sent to
    /// x25519 clients only: a skynet client gets `401 Unauthorized` for
    /// the same refusal, the only failure skynet's own server gives there.
    pub const TOO_MANY_REQUESTS: LoginStatus = LoginStatus(429);
    /// The login server cannot place anyone right now (in a cluster: the
    /// session directory is unreachable); retry later. Not a skynet status:
    /// a skynet client treats it as any other failure.
    pub const SERVICE_UNAVAILABLE: LoginStatus = LoginStatus(503);

    /// Every status the login server can send.
    pub const ALL: [LoginStatus; 6] = [
        Self::OK,
        Self::UNAUTHORIZED,
        Self::FORBIDDEN,
        Self::NOT_ACCEPTABLE,
        Self::TOO_MANY_REQUESTS,
        Self::SERVICE_UNAVAILABLE,
    ];

    /// The numeric code.
    pub const fn code(self) -> u16 {
        self.0
    }

    /// Looks a code up among the statuses the login server sends.
    pub fn from_code(code: u16) -> Option<LoginStatus> {
        Self::ALL.into_iter().find(|s| s.0 == code)
    }

    /// The line text without its LF. For [`LoginStatus::OK`] this is only
    /// the `200` prefix: the full line is built by [`LoginStatus::ok_line`].
    pub const fn text(self) -> &'static str {
        match self.0 {
            200 => "200",
            401 => "401 Unauthorized",
            403 => "403 Forbidden",
            406 => "406 Not Acceptable",
            429 => "429 Too Many Requests",
            503 => "503 Service Unavailable",
            _ => "500 Internal Server Error",
        }
    }

    /// The complete status line (with LF) of a non-200 status.
    pub fn line(self) -> Vec<u8> {
        let mut line = Vec::with_capacity(self.text().len() + 1);
        line.extend_from_slice(self.text().as_bytes());
        line.push(b'\n');
        line
    }

    /// The success line `200 <subid_b64>\n`; `subid_b64` is already encoded.
    pub fn ok_line(subid_b64: &[u8]) -> Vec<u8> {
        let mut line = Vec::with_capacity(5 + subid_b64.len());
        line.extend_from_slice(b"200 ");
        line.extend_from_slice(subid_b64);
        line.push(b'\n');
        line
    }

    /// Reads the status code at the start of a received line (`"200 MQ=="`,
    /// `"401 Unauthorized"`). Returns the status and the rest of the line
    /// after the first space (the base64 subid for 200).
    pub fn parse_line(line: &[u8]) -> Option<(LoginStatus, &[u8])> {
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return None;
        }
        let code = line[..3]
            .iter()
            .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
        let rest = match line.get(3) {
            None => &line[3..],
            Some(b' ') => &line[4..],
            Some(_) => return None,
        };
        Some((LoginStatus(code), rest))
    }
}

impl fmt::Display for LoginStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 200 {
            f.write_str("200 OK")
        } else {
            f.write_str(self.text())
        }
    }
}

/// A message-gate handshake status, sent as the payload of one package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GateStatus(u16);

impl GateStatus {
    /// Handshake accepted; requests may follow on this connection.
    pub const OK: GateStatus = GateStatus(200);
    /// The index or the MAC field could not be parsed.
    pub const BAD_REQUEST: GateStatus = GateStatus(400);
    /// The MAC did not verify.
    pub const UNAUTHORIZED: GateStatus = GateStatus(401);
    /// The index is not greater than the last accepted one.
    pub const INDEX_EXPIRED: GateStatus = GateStatus(403);
    /// No such user is registered on this gate.
    pub const NOT_FOUND: GateStatus = GateStatus(404);
    /// The gate serves sealed sessions only and the handshake did not ask
    /// for the sealed channel (not a skynet status).
    pub const SEAL_REQUIRED: GateStatus = GateStatus(426);

    /// Every status the gate can send.
    pub const ALL: [GateStatus; 6] = [
        Self::OK,
        Self::BAD_REQUEST,
        Self::UNAUTHORIZED,
        Self::INDEX_EXPIRED,
        Self::NOT_FOUND,
        Self::SEAL_REQUIRED,
    ];

    /// The numeric code.
    pub const fn code(self) -> u16 {
        self.0
    }

    /// The exact package payload.
    pub const fn text(self) -> &'static str {
        match self.0 {
            200 => "200 OK",
            400 => "400 Bad Request",
            401 => "401 Unauthorized",
            403 => "403 Index Expired",
            404 => "404 User Not Found",
            426 => "426 Seal Required",
            _ => "500 Internal Server Error",
        }
    }

    /// Recognises a status package payload by its exact text.
    pub fn from_payload(payload: &[u8]) -> Option<GateStatus> {
        Self::ALL
            .into_iter()
            .find(|s| s.text().as_bytes() == payload)
    }
}

impl fmt::Display for GateStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_lines_are_exact() {
        assert_eq!(LoginStatus::UNAUTHORIZED.line(), b"401 Unauthorized\n");
        assert_eq!(LoginStatus::FORBIDDEN.line(), b"403 Forbidden\n");
        assert_eq!(LoginStatus::NOT_ACCEPTABLE.line(), b"406 Not Acceptable\n");
        assert_eq!(
            LoginStatus::SERVICE_UNAVAILABLE.line(),
            b"503 Service Unavailable\n"
        );
        assert_eq!(LoginStatus::ok_line(b"MQ=="), b"200 MQ==\n");
        assert_eq!(LoginStatus::ok_line(b""), b"200 \n");
    }

    #[test]
    fn login_lines_parse_back() {
        assert_eq!(
            LoginStatus::parse_line(b"200 MQ=="),
            Some((LoginStatus::OK, &b"MQ=="[..]))
        );
        assert_eq!(
            LoginStatus::parse_line(b"406 Not Acceptable"),
            Some((LoginStatus::NOT_ACCEPTABLE, &b"Not Acceptable"[..]))
        );
        assert_eq!(
            LoginStatus::parse_line(b"200"),
            Some((LoginStatus::OK, &b""[..]))
        );
        assert_eq!(LoginStatus::parse_line(b"20x"), None);
        assert_eq!(LoginStatus::parse_line(b"2000"), None);
        assert_eq!(LoginStatus::parse_line(b""), None);
    }

    #[test]
    fn gate_texts_are_exact_and_fit_in_18_bytes() {
        let expected = [
            (GateStatus::OK, "200 OK"),
            (GateStatus::BAD_REQUEST, "400 Bad Request"),
            (GateStatus::UNAUTHORIZED, "401 Unauthorized"),
            (GateStatus::INDEX_EXPIRED, "403 Index Expired"),
            (GateStatus::NOT_FOUND, "404 User Not Found"),
            (GateStatus::SEAL_REQUIRED, "426 Seal Required"),
        ];
        for (status, text) in expected {
            assert_eq!(status.text(), text);
            assert!(text.len() <= 18);
            assert_eq!(GateStatus::from_payload(text.as_bytes()), Some(status));
        }
        assert_eq!(GateStatus::from_payload(b"200 ok"), None);
    }
}
