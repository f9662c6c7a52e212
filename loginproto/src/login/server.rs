//! Server side of the login dialogue.
//!
//! The server does not know the suite until line 2 arrives: the decoded
//! length of the client's key picks it (8 → skynet, 32 → x25519). Every
//! failure answers `401 Unauthorized`; the only question is whether line 3
//! went out first, which skynet does for a zero key (its length check has
//! passed by then) but not for a wrong length (transcripts
//! `client_key_zero`, `client_key_wrong_length`).

use std::fmt;

use codec::status::LoginStatus;
use subtle::ConstantTimeEq;

use super::{Line, LoginError, Suite, b64_line};
use crate::handshake::SessionSecret;
use crate::modern::{self, KEY_LEN, Key32, SessionKeys};
use crate::skynet::{self, Key, Padding};
use crate::token::Credentials;

/// Server policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Accept clients that choose the skynet suite (8-byte key line).
    /// Default `true`: existing skynet clients keep working. Switch it off
    /// once every client speaks x25519; an 8-byte key then gets `401`.
    pub allow_skynet: bool,
    /// The server's long-term key, which clients may pin: a pinned login
    /// (`0x01 ‖ client_pub` on line 2) mixes a DH with it into the key
    /// schedule, so a man in the middle can neither read the token nor
    /// complete the login. Default: none (a pinned key line gets `401`).
    pub static_key: Option<StaticKey>,
    /// Refuse logins that do not pin the static key (skynet and plain
    /// x25519 key lines get `401`). Default `false`.
    pub require_pinned: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            allow_skynet: true,
            static_key: None,
            require_pinned: false,
        }
    }
}

/// The login server's long-term X25519 key. `Debug` shows the public key
/// only; the private key is wiped when it drops.
#[derive(Clone, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct StaticKey {
    private: Key32,
    public: Key32,
}

impl StaticKey {
    /// The key pair of `private` (any 32 bytes; clamped when used).
    pub fn from_private(private: Key32) -> StaticKey {
        StaticKey {
            public: modern::public_key(&private),
            private,
        }
    }

    /// The public key clients pin.
    pub fn public(&self) -> &Key32 {
        &self.public
    }
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let public: String = self.public.iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "StaticKey(public {public})")
    }
}

/// The randomness one server-side login consumes, from the caller's CSPRNG.
///
/// Only the key of the suite the client picks is used. `Debug` does not
/// print the private keys.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct ServerRandom {
    /// The challenge of line 1.
    pub challenge: [u8; 8],
    /// The skynet DH private key. Pass it through [`skynet::random_key`] so
    /// it is never zero (a zero key cannot make line 3 and the login gets
    /// `401`).
    pub skynet_key: [u8; 8],
    /// The X25519 ephemeral private key (clamped internally).
    pub x25519_key: [u8; 32],
}

impl fmt::Debug for ServerRandom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerRandom")
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

/// Entry point of the server side.
#[derive(Debug)]
pub enum ServerLogin {}

impl ServerLogin {
    /// Starts a login on a freshly accepted connection: returns the first
    /// state and line 1 (`b64(challenge) LF`) to send at once.
    pub fn start(config: ServerConfig, random: ServerRandom) -> (AwaitClientKey, Vec<u8>) {
        let line = b64_line(&random.challenge);
        (AwaitClientKey { config, random }, line)
    }
}

/// A refused login: why, and the bytes to send before giving up.
///
/// `reply` is `401 Unauthorized\n`, preceded by line 3 when the server had
/// already committed to sending it (skynet's zero key, x25519's low-order
/// point).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("login rejected: {reason}")]
pub struct Rejected {
    /// What went wrong (for logs; the client only sees the reply).
    pub reason: LoginError,
    /// The complete bytes to write.
    pub reply: Vec<u8>,
}

impl Rejected {
    fn new(reason: LoginError) -> Rejected {
        Rejected {
            reason,
            reply: LoginStatus::UNAUTHORIZED.line(),
        }
    }

    fn after(mut line3: Vec<u8>, reason: LoginError) -> Rejected {
        line3.extend_from_slice(&LoginStatus::UNAUTHORIZED.line());
        Rejected {
            reason,
            reply: line3,
        }
    }
}

/// Result of the client key line.
#[derive(Debug)]
pub enum KeyStep {
    /// Send line 3 and wait for the proof.
    Continue(AwaitProof, Vec<u8>),
    /// Send `reply` and stop.
    Reject(Rejected),
}

/// Waiting for line 2, the client's public key.
pub struct AwaitClientKey {
    config: ServerConfig,
    random: ServerRandom,
}

impl fmt::Debug for AwaitClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwaitClientKey")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AwaitClientKey {
    /// Takes line 2; the decoded length picks the suite. 33 bytes are an
    /// x25519 key after a flags byte: any set of [`modern::PINNED_V1`]
    /// (pin the server key), [`modern::QUEUE_NOTICES`] (the client reads
    /// queue notices) and [`modern::CONFIRMED`] (padded token, key
    /// confirmation on the `200` line); an empty or unknown set is
    /// refused.
    pub fn receive(self, line: &[u8]) -> KeyStep {
        let Ok(client_key) = skynet::base64_decode(line) else {
            return KeyStep::Reject(Rejected::new(LoginError::BadBase64(Line::ClientKey)));
        };
        let flags = match client_key.len() {
            n if n == KEY_LEN + 1 => client_key[0],
            _ => 0,
        };
        let pinned = flags & modern::PINNED_V1 != 0;
        if self.config.require_pinned && !pinned {
            return KeyStep::Reject(Rejected::new(LoginError::PinRequired));
        }
        if let Ok(peer) = Key::try_from(client_key.as_slice()) {
            if !self.config.allow_skynet {
                return KeyStep::Reject(Rejected::new(LoginError::SkynetDisabled));
            }
            return self.skynet(&peer);
        }
        if let Ok(peer) = Key32::try_from(client_key.as_slice()) {
            return self.x25519(&peer, None, 0);
        }
        if client_key.len() == KEY_LEN + 1 {
            if flags == 0 || flags & !modern::KNOWN_FLAGS != 0 {
                return KeyStep::Reject(Rejected::new(LoginError::PinVersion(flags)));
            }
            let peer = Key32::try_from(&client_key[1..]).unwrap_or_else(|_| unreachable!());
            if !pinned {
                return self.x25519(&peer, None, flags);
            }
            let Some(static_key) = self.config.static_key.clone() else {
                return KeyStep::Reject(Rejected::new(LoginError::NoServerKey));
            };
            return self.x25519(&peer, Some(&static_key), flags);
        }
        KeyStep::Reject(Rejected::new(LoginError::KeyLength {
            line: Line::ClientKey,
            len: client_key.len(),
        }))
    }

    fn skynet(self, peer: &Key) -> KeyStep {
        let private = self.random.skynet_key;
        let public = match skynet::dhexchange(&private) {
            Ok(public) => public,
            Err(e) => return KeyStep::Reject(Rejected::new(e.into())),
        };
        let line3 = b64_line(&public);
        match skynet::dhsecret(peer, &private) {
            Ok(secret) => KeyStep::Continue(
                AwaitProof {
                    keys: Keys::Skynet {
                        challenge: self.random.challenge,
                        secret,
                    },
                    queue_notices: false,
                },
                line3,
            ),
            // skynet sends line 3 before it computes the secret, so a zero
            // client key gets line 3 and then 401.
            Err(e) => KeyStep::Reject(Rejected::after(line3, e.into())),
        }
    }

    fn x25519(self, client_public: &Key32, pinned: Option<&StaticKey>, flags: u8) -> KeyStep {
        let queue_notices = flags & modern::QUEUE_NOTICES != 0;
        let confirmed = flags & modern::CONFIRMED != 0;
        let private = self.random.x25519_key;
        let server_public = modern::public_key(&private);
        let line3 = b64_line(&server_public);
        let agreed = match pinned {
            None => SessionKeys::agree(
                &private,
                client_public,
                &self.random.challenge,
                client_public,
                &server_public,
            ),
            Some(key) => SessionKeys::agree_pinned_server(
                &private,
                &key.private,
                client_public,
                &self.random.challenge,
                &server_public,
                &key.public,
            ),
        };
        match agreed {
            Ok(keys) => KeyStep::Continue(
                AwaitProof {
                    keys: Keys::X25519 {
                        keys: Box::new(keys),
                        confirmed,
                    },
                    queue_notices,
                },
                line3,
            ),
            // Same order as skynet's zero key: line 3, then 401.
            Err(e) => KeyStep::Reject(Rejected::after(line3, e.into())),
        }
    }
}

/// Key material once the exchange is done.
#[derive(Clone)]
enum Keys {
    Skynet {
        challenge: Key,
        secret: Key,
    },
    X25519 {
        // Boxed: five 32-byte keys would make every state type large.
        keys: Box<SessionKeys>,
        /// The client asked for [`modern::CONFIRMED`].
        confirmed: bool,
    },
}

impl Keys {
    fn suite(&self) -> Suite {
        match self {
            Keys::Skynet { .. } => Suite::Skynet,
            Keys::X25519 { .. } => Suite::X25519,
        }
    }
}

/// Waiting for line 4, the client's proof.
pub struct AwaitProof {
    keys: Keys,
    queue_notices: bool,
}

impl fmt::Debug for AwaitProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwaitProof")
            .field("suite", &self.suite())
            .finish_non_exhaustive()
    }
}

impl AwaitProof {
    /// The suite the client picked.
    pub fn suite(&self) -> Suite {
        self.keys.suite()
    }

    /// Whether the client reads queue notices ([`queue_notice`]) before
    /// line 3.
    pub fn queue_notices(&self) -> bool {
        self.queue_notices
    }

    /// Takes line 4. A wrong proof is refused at once; skynet does not read
    /// the token line then.
    pub fn receive(self, line: &[u8]) -> Result<AwaitToken, Rejected> {
        let proof = skynet::base64_decode(line)
            .map_err(|_| Rejected::new(LoginError::BadBase64(Line::Proof)))?;
        match &self.keys {
            Keys::Skynet { challenge, secret } => {
                let expected = skynet::hmac64(challenge, secret);
                // ct_eq on slices of different lengths is simply false.
                if !bool::from(expected.as_slice().ct_eq(&proof)) {
                    return Err(Rejected::new(LoginError::ProofMismatch));
                }
            }
            Keys::X25519 { keys, .. } => keys
                .verify_proof(&proof)
                .map_err(|e| Rejected::new(e.into()))?,
        }
        Ok(AwaitToken { keys: self.keys })
    }
}

/// Waiting for line 5, the encrypted token.
pub struct AwaitToken {
    keys: Keys,
}

impl fmt::Debug for AwaitToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwaitToken")
            .field("suite", &self.suite())
            .finish_non_exhaustive()
    }
}

impl AwaitToken {
    /// The suite the client picked.
    pub fn suite(&self) -> Suite {
        self.keys.suite()
    }

    /// Takes line 5 and decrypts the token.
    pub fn receive(self, line: &[u8]) -> Result<Authenticate, Rejected> {
        let sealed = skynet::base64_decode(line)
            .map_err(|_| Rejected::new(LoginError::BadBase64(Line::Token)))?;
        let mut confirm = None;
        let (token, secret) = match self.keys {
            Keys::Skynet { secret, .. } => {
                // skynet decodes with the default padding (ISO 7816-4); a
                // PKCS#7 client fails here (transcript `token_pkcs7_padding`).
                let token = skynet::desdecode(&secret, &sealed, Padding::Iso7816_4)
                    .map_err(|e| Rejected::new(e.into()))?;
                (token, SessionSecret::Skynet(secret))
            }
            Keys::X25519 { keys, confirmed } => {
                let mut token = keys
                    .open_token(&sealed)
                    .map_err(|e| Rejected::new(e.into()))?;
                if confirmed {
                    token = modern::unpad_token(token).map_err(|e| Rejected::new(e.into()))?;
                    confirm = Some(keys.clone());
                }
                (token, SessionSecret::X25519(*keys.gate_secret()))
            }
        };
        Ok(Authenticate {
            token: zeroize::Zeroizing::new(token),
            secret,
            confirm,
        })
    }
}

/// The token is authentic; the application decides the outcome.
///
/// Typical driver: [`Authenticate::credentials`] (or the raw
/// [`Authenticate::token`]) to the auth backend; on success register the
/// user with the gate using [`Authenticate::secret`]; then send
/// [`Authenticate::finish`].
pub struct Authenticate {
    /// Wiped when dropped: it holds the password.
    token: zeroize::Zeroizing<Vec<u8>>,
    secret: SessionSecret,
    /// The keys that confirm a success, when the client asked for it.
    confirm: Option<Box<SessionKeys>>,
}

impl fmt::Debug for Authenticate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticate")
            .field("suite", &self.suite())
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl Authenticate {
    /// The decrypted token, as the client sent it (it holds the password).
    pub fn token(&self) -> &[u8] {
        &self.token
    }

    /// The token parsed like skynet's example auth handler
    /// ([`Credentials::parse_token`]). `None` means the server must answer
    /// `401` ([`LoginOutcome::Unauthorized`]).
    pub fn credentials(&self) -> Option<Credentials> {
        Credentials::parse_token(&self.token)
    }

    /// The suite the client used.
    pub fn suite(&self) -> Suite {
        match self.secret {
            SessionSecret::Skynet(_) => Suite::Skynet,
            SessionSecret::X25519(_) => Suite::X25519,
        }
    }

    /// The secret the gate verifies this session's handshakes with.
    pub fn secret(&self) -> &SessionSecret {
        &self.secret
    }

    /// The status `outcome` is sent as on this login's suite: a
    /// [`LoginOutcome::Throttled`] login is `429` for an x25519 client and
    /// `401` for a skynet one (skynet's clients know no other refusal of
    /// their credentials).
    pub fn status_of(&self, outcome: &LoginOutcome) -> LoginStatus {
        match (outcome, self.suite()) {
            (LoginOutcome::Throttled, Suite::Skynet) => LoginStatus::UNAUTHORIZED,
            (outcome, _) => outcome.status(),
        }
    }

    /// Ends the dialogue: the status line to send (see
    /// [`Authenticate::status_of`]).
    pub fn finish(self, outcome: LoginOutcome) -> Vec<u8> {
        match (&outcome, &self.confirm) {
            // `200 b64(subid) b64(confirmation)`.
            (LoginOutcome::Ok { subid }, Some(keys)) => {
                let mut line = outcome.line();
                line.pop();
                line.push(b' ');
                line.extend_from_slice(
                    skynet::base64_encode(&keys.server_confirmation(subid)).as_bytes(),
                );
                line.push(b'\n');
                line
            }
            (LoginOutcome::Ok { .. }, None) => outcome.line(),
            (other, _) => self.status_of(other).line(),
        }
    }
}

/// A queue notice line: `# <position> <wait_ms> <number>` with LF, where
/// `position` is how many logins are admitted before this one (0: next),
/// `wait_ms` the server's estimate of the wait in milliseconds, and
/// `number` the login's place in the server's arrival order (it only grows,
/// so clients that compare numbers can check they were served first come,
/// first served). Sent only to clients that set [`modern::QUEUE_NOTICES`]
/// on line 2, any number of times, before line 3. `#` is outside the
/// base64 alphabet, so a notice can never be mistaken for line 3.
pub fn queue_notice(position: u64, wait_ms: u64, number: u64) -> Vec<u8> {
    format!("# {position} {wait_ms} {number}\n").into_bytes()
}

/// A parsed queue notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueNotice {
    /// Logins admitted before this one.
    pub position: u64,
    /// The server's estimate of the wait, in milliseconds.
    pub wait_ms: u64,
    /// The login's place in the server's arrival order.
    pub number: u64,
}

/// Reads a queue notice line (without its LF), or `None` if the line is
/// not one. Fields after the third are ignored (room for more).
pub fn parse_queue_notice(line: &[u8]) -> Option<QueueNotice> {
    let text = std::str::from_utf8(line.strip_prefix(b"# ")?).ok()?;
    let mut fields = text.split(' ');
    Some(QueueNotice {
        position: fields.next()?.parse().ok()?,
        wait_ms: fields.next()?.parse().ok()?,
        number: fields.next()?.parse().ok()?,
    })
}

/// How the application decided a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Logged in; the gate handed out `subid` (sent as `200 b64(subid)`).
    Ok {
        /// The gate's session id (skynet's example: a decimal string).
        subid: Vec<u8>,
    },
    /// The credentials were refused (`401`).
    Unauthorized,
    /// The gate refused the login (`403`).
    Forbidden,
    /// Another login of the same uid is in progress (`406`).
    NotAcceptable,
    /// Too many refused passwords for the user name or from the address;
    /// the credentials were not checked (`429`, or `401` on the skynet
    /// suite: see [`Authenticate::status_of`]).
    Throttled,
    /// Nobody can be placed right now, e.g. the cluster's session directory
    /// is unreachable (`503`).
    Unavailable,
}

impl LoginOutcome {
    /// The status this outcome is sent as.
    pub fn status(&self) -> LoginStatus {
        match self {
            LoginOutcome::Ok { .. } => LoginStatus::OK,
            LoginOutcome::Unauthorized => LoginStatus::UNAUTHORIZED,
            LoginOutcome::Forbidden => LoginStatus::FORBIDDEN,
            LoginOutcome::NotAcceptable => LoginStatus::NOT_ACCEPTABLE,
            LoginOutcome::Throttled => LoginStatus::TOO_MANY_REQUESTS,
            LoginOutcome::Unavailable => LoginStatus::SERVICE_UNAVAILABLE,
        }
    }

    /// The exact status line, with LF.
    pub fn line(&self) -> Vec<u8> {
        match self {
            LoginOutcome::Ok { subid } => {
                LoginStatus::ok_line(skynet::base64_encode(subid).as_bytes())
            }
            other => other.status().line(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random() -> ServerRandom {
        ServerRandom {
            challenge: [0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18],
            skynet_key: [0x5e, 0x2f, 0x3a, 0x4b, 0x6c, 0x7d, 0x8e, 0x9f],
            x25519_key: [0x11; 32],
        }
    }

    #[test]
    fn challenge_line_is_sent_first() {
        let (_, line) = ServerLogin::start(ServerConfig::default(), random());
        assert_eq!(line, b"obLD1OX2Bxg=\n");
    }

    #[test]
    fn key_length_picks_the_suite() {
        let (state, _) = ServerLogin::start(ServerConfig::default(), random());
        let KeyStep::Continue(proof, line3) = state.receive(b"mE4UGCgyNe0=") else {
            panic!("skynet key refused");
        };
        assert_eq!(proof.suite(), Suite::Skynet);
        assert_eq!(line3, b"xJrj5W34ITs=\n");

        let (state, _) = ServerLogin::start(ServerConfig::default(), random());
        let client = modern::public_key(&[0x22; 32]);
        let KeyStep::Continue(proof, line3) = state.receive(&b64_line(&client)[..44]) else {
            panic!("x25519 key refused");
        };
        assert_eq!(proof.suite(), Suite::X25519);
        assert_eq!(line3.len(), 45);
    }

    #[test]
    fn skynet_can_be_switched_off() {
        let config = ServerConfig {
            allow_skynet: false,
            ..ServerConfig::default()
        };
        let (state, _) = ServerLogin::start(config, random());
        let KeyStep::Reject(rejected) = state.receive(b"mE4UGCgyNe0=") else {
            panic!("skynet key accepted");
        };
        assert_eq!(rejected.reason, LoginError::SkynetDisabled);
        assert_eq!(rejected.reply, b"401 Unauthorized\n");
    }

    #[test]
    fn low_order_x25519_key_gets_line3_then_401() {
        let (state, _) = ServerLogin::start(ServerConfig::default(), random());
        let KeyStep::Reject(rejected) = state.receive(&b64_line(&[0; 32])[..44]) else {
            panic!("zero point accepted");
        };
        assert_eq!(
            rejected.reason,
            LoginError::Modern(modern::ModernError::LowOrderPoint)
        );
        assert_eq!(rejected.reply.len(), 45 + 17);
        assert!(rejected.reply.ends_with(b"=\n401 Unauthorized\n"));
    }

    #[test]
    fn outcomes_are_exact_lines() {
        let ok = LoginOutcome::Ok {
            subid: b"1".to_vec(),
        };
        assert_eq!(ok.line(), b"200 MQ==\n");
        assert_eq!(LoginOutcome::Ok { subid: vec![] }.line(), b"200 \n");
        assert_eq!(LoginOutcome::Unauthorized.line(), b"401 Unauthorized\n");
        assert_eq!(LoginOutcome::Forbidden.line(), b"403 Forbidden\n");
        assert_eq!(LoginOutcome::NotAcceptable.line(), b"406 Not Acceptable\n");
        assert_eq!(LoginOutcome::Throttled.line(), b"429 Too Many Requests\n");
        assert_eq!(queue_notice(3, 1500, 42), b"# 3 1500 42\n");
        assert_eq!(
            parse_queue_notice(b"# 3 1500 42 later"),
            Some(QueueNotice {
                position: 3,
                wait_ms: 1500,
                number: 42
            })
        );
        for bad in [&b"#3 1 2"[..], b"# 3 1", b"# a 1 2", b"MQ==", b""] {
            assert_eq!(parse_queue_notice(bad), None);
        }
    }

    #[test]
    fn debug_hides_keys() {
        let text = format!("{:?}", random());
        assert!(text.contains("challenge"));
        assert!(!text.contains("skynet_key"));
        assert!(!text.contains("17, 17"));
    }
}
