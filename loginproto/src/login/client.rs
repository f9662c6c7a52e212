//! Client side of the login dialogue.
//!
//! The client picks the suite up front (its key line's length tells the
//! server). It sends lines 4 and 5 together, as skynet's `client.lua` does:
//! a server that rejects the proof answers `401` and ignores line 5.

use std::fmt;

use codec::status::LoginStatus;

use super::{Line, LoginError, Suite, b64_line, b64_line_into};
use crate::handshake::SessionSecret;
use crate::modern::{self, KEY_LEN, Key32, SessionKeys};
use crate::skynet::{self, Key, Padding};
use crate::token::Credentials;

/// The randomness one client-side login consumes, from the caller's CSPRNG.
///
/// Only the key of the chosen suite is used. `Debug` does not print them.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct ClientRandom {
    /// The skynet DH private key. Pass it through [`skynet::random_key`] so
    /// it is never zero.
    pub skynet_key: [u8; 8],
    /// The X25519 ephemeral private key (clamped internally).
    pub x25519_key: [u8; 32],
}

impl fmt::Debug for ClientRandom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRandom").finish_non_exhaustive()
    }
}

/// Entry point of the client side.
#[derive(Debug)]
pub enum ClientLogin {}

impl ClientLogin {
    /// Prepares a login; nothing is sent before the server's challenge.
    #[allow(
        clippy::new_ret_no_self,
        reason = "ClientLogin only names the entry point; the login starts in its first state"
    )]
    pub fn new(suite: Suite, credentials: Credentials, random: ClientRandom) -> AwaitChallenge {
        AwaitChallenge {
            suite,
            token: credentials.token(),
            random,
            pin: None,
            queue_notices: false,
            confirm: false,
        }
    }

    /// Prepares an x25519 login that pins the server's long-term public key
    /// `server_key`: it only succeeds with the server that holds the
    /// private key, so a man in the middle can neither read the token nor
    /// complete the login.
    pub fn pinned(
        credentials: Credentials,
        random: ClientRandom,
        server_key: Key32,
    ) -> AwaitChallenge {
        AwaitChallenge {
            suite: Suite::X25519,
            token: credentials.token(),
            random,
            pin: Some(server_key),
            queue_notices: false,
            confirm: false,
        }
    }
}

/// Waiting for line 1, the challenge.
pub struct AwaitChallenge {
    suite: Suite,
    token: Vec<u8>,
    random: ClientRandom,
    /// The server's long-term public key, when pinned.
    pin: Option<Key32>,
    /// Ask for queue notices (x25519 only).
    queue_notices: bool,
    /// Pad the token and require the server's key confirmation (x25519
    /// only).
    confirm: bool,
}

impl fmt::Debug for AwaitChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwaitChallenge")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl AwaitChallenge {
    /// Asks the server for queue notices (`# <position> <wait_ms>` lines
    /// before line 3, read with [`crate::login::parse_queue_notice`])
    /// while it holds this login in its admission queue. x25519 only: the
    /// skynet suite has no room for the flag, and a skynet client simply
    /// waits.
    #[must_use]
    pub fn with_queue_notices(mut self) -> AwaitChallenge {
        self.queue_notices = self.suite == Suite::X25519;
        self
    }

    /// Pads the token to [`modern::TOKEN_BUCKET`] bytes and requires the
    /// server's key confirmation on the `200` line
    /// ([`modern::CONFIRMED`]): a success the server cannot prove is
    /// [`ModernError::Unconfirmed`](crate::modern::ModernError::Unconfirmed).
    /// x25519 only.
    #[must_use]
    pub fn with_confirmation(mut self) -> AwaitChallenge {
        self.confirm = self.suite == Suite::X25519;
        self
    }

    /// Takes line 1; returns line 2 (our public key) to send.
    pub fn receive(self, line: &[u8]) -> Result<(AwaitServerKey, Vec<u8>), LoginError> {
        let challenge =
            skynet::base64_decode(line).map_err(|_| LoginError::BadBase64(Line::Challenge))?;
        let challenge = Key::try_from(challenge.as_slice())
            .map_err(|_| LoginError::ChallengeLength(challenge.len()))?;
        let (exchange, line2) = match self.suite {
            Suite::Skynet => {
                let private = self.random.skynet_key;
                let public = skynet::dhexchange(&private)?;
                (Exchange::Skynet { private }, b64_line(&public))
            }
            Suite::X25519 => {
                let private = self.random.x25519_key;
                let public = modern::public_key(&private);
                let mut flags = 0;
                if self.pin.is_some() {
                    flags |= modern::PINNED_V1;
                }
                if self.queue_notices {
                    flags |= modern::QUEUE_NOTICES;
                }
                if self.confirm {
                    flags |= modern::CONFIRMED;
                }
                let line2 = if flags == 0 {
                    b64_line(&public)
                } else {
                    let mut flagged = [0u8; KEY_LEN + 1];
                    flagged[0] = flags;
                    flagged[1..].copy_from_slice(&public);
                    b64_line(&flagged)
                };
                (
                    Exchange::X25519 {
                        private,
                        public,
                        pin: self.pin,
                        confirm: self.confirm,
                    },
                    line2,
                )
            }
        };
        Ok((
            AwaitServerKey {
                challenge,
                exchange,
                token: self.token,
            },
            line2,
        ))
    }
}

/// Our half of the key exchange.
enum Exchange {
    Skynet {
        private: Key,
    },
    X25519 {
        private: Key32,
        public: Key32,
        pin: Option<Key32>,
        confirm: bool,
    },
}

/// Waiting for line 3, the server's public key.
pub struct AwaitServerKey {
    challenge: Key,
    exchange: Exchange,
    token: Vec<u8>,
}

impl fmt::Debug for AwaitServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwaitServerKey")
            .field("suite", &self.suite())
            .finish_non_exhaustive()
    }
}

impl AwaitServerKey {
    /// The suite in use.
    pub fn suite(&self) -> Suite {
        match self.exchange {
            Exchange::Skynet { .. } => Suite::Skynet,
            Exchange::X25519 { .. } => Suite::X25519,
        }
    }

    /// Takes line 3; returns lines 4 and 5 (proof and encrypted token) to
    /// send together.
    ///
    /// A server that refuses our key line answers with a status instead of
    /// line 3: that is [`LoginError::Status`].
    pub fn receive(self, line: &[u8]) -> Result<(AwaitStatus, Vec<u8>), LoginError> {
        // A key line is bare base64 (no space), so a line that parses as a
        // status line is one.
        if let Some((status, _)) = LoginStatus::parse_line(line) {
            return Err(if status == LoginStatus::OK {
                LoginError::Unexpected(Line::Status)
            } else {
                LoginError::Status(status)
            });
        }
        let server_key =
            skynet::base64_decode(line).map_err(|_| LoginError::BadBase64(Line::ServerKey))?;
        let key_length = || LoginError::KeyLength {
            line: Line::ServerKey,
            len: server_key.len(),
        };
        let mut out = Vec::with_capacity(2 * 45 + self.token.len() * 4 / 3 + 32);
        let mut confirm_keys = None;
        let secret = match self.exchange {
            Exchange::Skynet { private } => {
                let peer = Key::try_from(server_key.as_slice()).map_err(|_| key_length())?;
                let secret = skynet::dhsecret(&peer, &private)?;
                b64_line_into(&skynet::hmac64(&self.challenge, &secret), &mut out);
                let sealed = skynet::desencode(&secret, &self.token, Padding::Iso7816_4);
                b64_line_into(&sealed, &mut out);
                SessionSecret::Skynet(secret)
            }
            Exchange::X25519 {
                private,
                public,
                pin,
                confirm,
            } => {
                let peer = Key32::try_from(server_key.as_slice()).map_err(|_| key_length())?;
                let keys = match pin {
                    None => SessionKeys::agree(&private, &peer, &self.challenge, &public, &peer)?,
                    Some(pin) => SessionKeys::agree_pinned_client(
                        &private,
                        &peer,
                        &pin,
                        &self.challenge,
                        &public,
                    )?,
                };
                b64_line_into(&keys.client_proof(), &mut out);
                if confirm {
                    let padded = zeroize::Zeroizing::new(modern::pad_token(&self.token));
                    b64_line_into(&keys.seal_token(&padded)?, &mut out);
                } else {
                    b64_line_into(&keys.seal_token(&self.token)?, &mut out);
                }
                let secret = SessionSecret::X25519(*keys.gate_secret());
                if confirm {
                    confirm_keys = Some(Box::new(keys));
                }
                secret
            }
        };
        Ok((
            AwaitStatus {
                secret,
                confirm: confirm_keys,
            },
            out,
        ))
    }
}

/// Waiting for line 6, the status.
pub struct AwaitStatus {
    secret: SessionSecret,
    /// The keys to check the server's confirmation with, when asked.
    confirm: Option<Box<SessionKeys>>,
}

impl fmt::Debug for AwaitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwaitStatus")
            .field("secret", &self.secret)
            .field("confirm", &self.confirm.is_some())
            .finish()
    }
}

impl AwaitStatus {
    /// Takes the status line: `200 b64(subid)` is success (`200 b64(subid)
    /// b64(confirmation)` when the confirmation was asked for, and then
    /// required), any other status is [`LoginError::Status`].
    pub fn receive(self, line: &[u8]) -> Result<LoginSuccess, LoginError> {
        let (status, rest) =
            LoginStatus::parse_line(line).ok_or(LoginError::Unexpected(Line::Status))?;
        if status != LoginStatus::OK {
            return Err(LoginError::Status(status));
        }
        let (subid, mac) = match rest.iter().position(|&b| b == b' ') {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        };
        let subid =
            skynet::base64_decode(subid).map_err(|_| LoginError::BadBase64(Line::Status))?;
        if let Some(keys) = &self.confirm {
            let mac = mac
                .and_then(|m| skynet::base64_decode(m).ok())
                .unwrap_or_default();
            keys.verify_confirmation(&subid, &mac)?;
        }
        let suite = match self.secret {
            SessionSecret::Skynet(_) => Suite::Skynet,
            SessionSecret::X25519(_) => Suite::X25519,
        };
        Ok(LoginSuccess {
            subid,
            secret: self.secret,
            suite,
        })
    }
}

/// A completed login: what the client needs for the gate handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSuccess {
    /// The gate's session id (decoded from the status line).
    pub subid: Vec<u8>,
    /// The secret to sign gate handshakes with.
    pub secret: SessionSecret,
    /// The suite that was used.
    pub suite: Suite,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(suite: Suite) -> AwaitChallenge {
        ClientLogin::new(
            suite,
            Credentials::new("hello", "sample", "password"),
            ClientRandom {
                skynet_key: [1, 2, 3, 4, 5, 6, 7, 8],
                x25519_key: [3; 32],
            },
        )
    }

    #[test]
    fn skynet_client_matches_the_worked_example() {
        // Spec §4.6.
        let (state, line2) = client(Suite::Skynet).receive(b"obLD1OX2Bxg=").unwrap();
        assert_eq!(line2, b"mE4UGCgyNe0=\n");
        let (state, lines) = state.receive(b"xJrj5W34ITs=").unwrap();
        assert_eq!(
            lines,
            b"c6P4IeDAXo4=\nEH1HqQmuX7xHgoao5iLQxJmFShp7rovgU1CW6aDaF7Q=\n"
        );
        let success = state.receive(b"200 MQ==").unwrap();
        assert_eq!(success.subid, b"1");
        assert_eq!(success.suite, Suite::Skynet);
        assert_eq!(
            success.secret,
            SessionSecret::Skynet([0x8d, 0xbc, 0x0e, 0xb7, 0x6b, 0x7a, 0x12, 0xf8])
        );
    }

    #[test]
    fn malformed_server_lines() {
        assert_eq!(
            client(Suite::Skynet).receive(b"!!!!").unwrap_err(),
            LoginError::BadBase64(Line::Challenge)
        );
        assert_eq!(
            client(Suite::Skynet).receive(b"MQ==").unwrap_err(),
            LoginError::ChallengeLength(1)
        );
        let (state, _) = client(Suite::X25519).receive(b"obLD1OX2Bxg=").unwrap();
        assert_eq!(
            state.receive(b"xJrj5W34ITs=").unwrap_err(),
            LoginError::KeyLength {
                line: Line::ServerKey,
                len: 8
            }
        );
        let (state, _) = client(Suite::Skynet).receive(b"obLD1OX2Bxg=").unwrap();
        assert_eq!(
            state.receive(b"401 Unauthorized").unwrap_err(),
            LoginError::Status(LoginStatus::UNAUTHORIZED)
        );
        let (state, _) = client(Suite::Skynet).receive(b"obLD1OX2Bxg=").unwrap();
        let (state, _) = state.receive(b"xJrj5W34ITs=").unwrap();
        assert_eq!(
            state.receive(b"garbage").unwrap_err(),
            LoginError::Unexpected(Line::Status)
        );
    }

    #[test]
    fn refusals_are_statuses() {
        for status in [
            LoginStatus::UNAUTHORIZED,
            LoginStatus::FORBIDDEN,
            LoginStatus::NOT_ACCEPTABLE,
        ] {
            let (state, _) = client(Suite::Skynet).receive(b"obLD1OX2Bxg=").unwrap();
            let (state, _) = state.receive(b"xJrj5W34ITs=").unwrap();
            let line = status.line();
            assert_eq!(
                state.receive(&line[..line.len() - 1]).unwrap_err(),
                LoginError::Status(status)
            );
        }
    }

    #[test]
    fn debug_hides_keys() {
        let text = format!("{:?}", client(Suite::Skynet));
        assert!(!text.contains("skynet_key"));
        assert!(!text.contains("3, 3"));
    }
}
