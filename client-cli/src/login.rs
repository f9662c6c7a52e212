//! Logging in: the async driver of `loginproto`'s client state machine, the
//! login options every subcommand shares, and the `client login` subcommand.
//!
//! The driver pumps [`ClientLogin`] over `Framed<Stream, LineCodec>` (TCP or WebSocket):
//! read a line, feed it to the current state, write what the state returns.
//! The whole dialogue runs under one deadline, so a silent server cannot hang
//! a client.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use codec::websocket::Mapping;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::net::{Stream, Underlying};
use tokio_util::codec::FramedRead;

use codec::LineCodec;
use loginproto::handshake::SessionSecret;
use loginproto::login::{ClientLogin, ClientRandom, LoginSuccess, Suite};
use loginproto::token::Credentials;

use crate::error::ClientError;
use crate::gate::Ticket;
use crate::text;

/// Deadline of a whole login dialogue when the caller does not choose one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Initial read buffer of a dialogue: the server's lines are short (a
/// longer one grows it).
const READ_BUF: usize = 256;

/// The crypt suite, as named on the command line and in scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum SuiteName {
    /// skynet's 64-bit DH, hmac64 and DES: what existing skynet clients speak (weak).
    Skynet,
    /// X25519, HMAC-SHA256 and ChaCha20-Poly1305 (the default).
    #[default]
    X25519,
}

impl From<SuiteName> for Suite {
    fn from(name: SuiteName) -> Suite {
        match name {
            SuiteName::Skynet => Suite::Skynet,
            SuiteName::X25519 => Suite::X25519,
        }
    }
}

/// Where and as whom to log in; shared by `login`, `shell` and `run`.
#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// Address of the login server: `host:port` for TCP, `tls://host:port`
    /// for its TLS listener (with `--tls-ca-file`), or `ws://host:port`
    /// (`wss://` with `--tls-ca-file`) for its WebSocket listener.
    #[arg(
        long = "login",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:8001"
    )]
    pub login_addr: String,
    /// Name of the gate to log in to (goes into the token and the gate username).
    #[arg(long, value_name = "NAME", default_value = "sample")]
    pub server: String,
    /// User name (uid).
    #[arg(long, value_name = "U", default_value = "hello")]
    pub user: String,
    /// Password (the demo gate accepts `password` for any user).
    #[arg(
        long,
        value_name = "P",
        default_value = "password",
        env = "CLIENT_PASSWORD"
    )]
    pub password: String,
    /// Crypt suite of the login dialogue and the gate handshake.
    #[arg(long, value_enum, default_value_t = SuiteName::X25519)]
    pub suite: SuiteName,
    /// Deadline for each network step (the login dialogue, connecting, a
    /// handshake, an expected response): 250ms, 1.5s, 3 (seconds).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = text::parse_duration)]
    pub timeout: Duration,
    /// Pin the login server's long-term public key (base64 of 32 bytes, as
    /// `gate keygen` prints it): an x25519 login that only the server
    /// holding the private key can complete, so a man in the middle learns
    /// nothing. [default: not pinned]
    #[arg(long, value_name = "BASE64", value_parser = parse_server_key)]
    pub server_key: Option<[u8; 32]>,
}

/// Reads `--server-key`: base64 of 32 bytes.
pub fn parse_server_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = loginproto::skynet::base64_decode(text.trim().as_bytes())
        .map_err(|_| "not base64".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes; a server key is 32", bytes.len()))
}

impl LoginArgs {
    /// The credentials these options name.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(
            self.user.as_bytes(),
            self.server.as_bytes(),
            self.password.as_bytes(),
        )
    }
}

/// Runs the login dialogue against `addr` with the default deadline.
pub async fn login(
    addr: &str,
    suite: Suite,
    creds: Credentials,
) -> Result<LoginSuccess, ClientError> {
    login_with_timeout(addr, suite, creds, DEFAULT_TIMEOUT).await
}

/// Runs the login dialogue against `addr`; the whole dialogue, connect
/// included, must finish within `timeout`.
///
/// A status other than 200 is [`ClientError::LoginRefused`].
pub async fn login_with_timeout(
    addr: &str,
    suite: Suite,
    creds: Credentials,
    timeout: Duration,
) -> Result<LoginSuccess, ClientError> {
    login_pinned(addr, suite, creds, None, timeout).await
}

/// [`login_with_timeout`], pinning the server's long-term public key when
/// `server_key` is given (the x25519 suite then, whatever `suite` says).
pub async fn login_pinned(
    addr: &str,
    suite: Suite,
    creds: Credentials,
    server_key: Option<[u8; 32]>,
    timeout: Duration,
) -> Result<LoginSuccess, ClientError> {
    login_dialogue(addr, suite, creds, server_key, timeout, false)
        .await
        .map(|(success, _)| success)
}

/// What a login heard while it waited in the server's login queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueWait {
    /// Queue notices received.
    pub notices: u32,
    /// The position of the first notice (logins admitted before this one).
    pub first_position: Option<u64>,
    /// The server's last estimate of the wait, in milliseconds.
    pub last_wait_ms: Option<u64>,
    /// The login's place in the server's arrival order.
    pub number: Option<u64>,
    /// When line 3 (the server's key) arrived: when the server admitted
    /// the login, as this client saw it.
    pub admitted_at: Option<Instant>,
}

/// [`login_pinned`] that asks the server for queue notices (x25519 only;
/// see `docs/PROTOCOL.md`, "Login queue") and returns what it heard. The
/// whole dialogue, waiting included, must finish within `timeout`.
pub async fn login_queued(
    addr: &str,
    suite: Suite,
    creds: Credentials,
    server_key: Option<[u8; 32]>,
    timeout: Duration,
) -> Result<(LoginSuccess, QueueWait), ClientError> {
    login_dialogue(addr, suite, creds, server_key, timeout, true).await
}

/// The whole dialogue under `timeout`, asking for queue notices when
/// `notices` is set.
async fn login_dialogue(
    addr: &str,
    suite: Suite,
    creds: Credentials,
    server_key: Option<[u8; 32]>,
    timeout: Duration,
    notices: bool,
) -> Result<(LoginSuccess, QueueWait), ClientError> {
    let mut wait = QueueWait::default();
    let queue = notices.then_some(&mut wait);
    let success = tokio::time::timeout(timeout, dialogue(addr, suite, creds, server_key, queue))
        .await
        .map_err(|_| ClientError::Timeout {
            what: "login dialogue",
            after: timeout,
        })??;
    Ok((success, wait))
}

async fn dialogue(
    addr: &str,
    suite: Suite,
    creds: Credentials,
    server_key: Option<[u8; 32]>,
    mut queue: Option<&mut QueueWait>,
) -> Result<LoginSuccess, ClientError> {
    // Lines 4 and 5 go out in one write; nothing gains from Nagle here.
    let stream = crate::net::dial(addr, None, Mapping::Lines)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    // Each line of the server is answered at once, and the answer carries
    // the ACK: no need for a segment of its own (a quick ACK).
    #[cfg(target_os = "linux")]
    let _ = socket2::SockRef::from(stream.tcp()).set_tcp_quickack(false);
    // Lines are written straight to the socket (the state machine hands out
    // complete lines), so only the read half is framed.
    let mut lines = FramedRead::with_capacity(stream, LineCodec::new(), READ_BUF);
    let random = ClientRandom {
        skynet_key: loginproto::skynet::random_key(rand::random()),
        x25519_key: rand::random(),
    };
    // x25519: a padded token, and the server must prove its keys on the
    // `200` line (a forged success fails here, not later at the gate).
    let mut state = match server_key {
        Some(key) => ClientLogin::pinned(creds, random, key),
        None => ClientLogin::new(suite, creds, random),
    }
    .with_confirmation();
    if queue.is_some() {
        state = state.with_queue_notices();
    }
    let (state, out) = state.receive(&next_line(&mut lines).await?)?;
    send_raw(&mut lines, &out).await?;
    // Queue notices come before line 3, and only if asked for.
    let server_key_line = loop {
        let line = next_line(&mut lines).await?;
        match (&mut queue, loginproto::login::parse_queue_notice(&line)) {
            (Some(wait), Some(notice)) => {
                wait.notices += 1;
                wait.first_position.get_or_insert(notice.position);
                wait.last_wait_ms = Some(notice.wait_ms);
                wait.number = Some(notice.number);
            }
            _ => break line,
        }
    };
    if let Some(wait) = &mut queue {
        wait.admitted_at = Some(Instant::now());
    }
    let (state, out) = state.receive(&server_key_line)?;
    send_raw(&mut lines, &out).await?;
    Ok(state.receive(&next_line(&mut lines).await?)?)
}

async fn next_line(lines: &mut FramedRead<Stream, LineCodec>) -> Result<bytes::Bytes, ClientError> {
    match lines.next().await {
        Some(line) => Ok(line?),
        None => Err(ClientError::LoginClosed),
    }
}

/// The state machine hands out complete lines (LF included), so they are
/// written as they are.
async fn send_raw(
    lines: &mut FramedRead<Stream, LineCodec>,
    bytes: &[u8],
) -> Result<(), ClientError> {
    let stream = lines.get_mut();
    stream.write_all(bytes).await?;
    stream.flush().await?;
    Ok(())
}

/// The key bytes of a session secret (for display; the secret is the
/// client's own, so showing it to its user leaks nothing new).
pub fn secret_bytes(secret: &SessionSecret) -> &[u8] {
    match secret {
        SessionSecret::Skynet(key) => key,
        SessionSecret::X25519(key) => key,
    }
}

/// Options of `client login`.
#[derive(Debug, Clone, Args)]
pub struct LoginCmd {
    #[command(flatten)]
    pub login: LoginArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Ask the server for queue notices while it holds the login in its
    /// admission queue, and print them (x25519 only; the server must
    /// understand the flag: this project's login server does, skynet's
    /// has no x25519 suite at all).
    #[arg(long)]
    pub queue_notices: bool,
}

/// `client login`: runs the dialogue, prints subid and secret, or the status
/// and what it means. Exit code 0 on 200, 1 on a refusal or an error.
pub async fn run(cmd: LoginCmd) -> ExitCode {
    let args = &cmd.login;
    let started = Instant::now();
    let result = login_dialogue(
        &args.login_addr,
        args.suite.into(),
        args.credentials(),
        args.server_key,
        args.timeout,
        cmd.queue_notices,
    )
    .await;
    let elapsed = started.elapsed();
    match result {
        Ok((success, queued)) => {
            let ticket = Ticket::new(args.user.as_bytes(), args.server.as_bytes(), &success);
            let username = String::from_utf8_lossy(&ticket.username()).into_owned();
            let subid = String::from_utf8_lossy(&success.subid).into_owned();
            let secret = text::hex(secret_bytes(&success.secret));
            if cmd.json {
                let value = serde_json::json!({
                    "status": 200,
                    "subid": subid,
                    "secret": secret,
                    "suite": success.suite.name(),
                    "username": username,
                    "elapsed_us": elapsed.as_micros() as u64,
                    "queue_notices": queued.notices,
                    "queue_first_position": queued.first_position,
                });
                outln!("{value}");
            } else {
                outln!(
                    "200 OK: logged in ({} suite, {})",
                    success.suite,
                    text::duration(elapsed)
                );
                outln!("subid     {subid}");
                outln!("secret    {secret}");
                outln!("username  {username}");
                if let Some(position) = queued.first_position {
                    outln!(
                        "queued    at position {position}, {} notice(s)",
                        queued.notices
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            if cmd.json {
                let value = match err.login_status() {
                    Some(status) => serde_json::json!({
                        "status": status.code(),
                        "text": status.to_string(),
                        "meaning": text::login_status_meaning(status),
                    }),
                    None => serde_json::json!({ "error": err.to_string() }),
                };
                outln!("{value}");
            } else {
                match err.login_status() {
                    Some(status) => {
                        outln!("{status}: {}", text::login_status_meaning(status));
                    }
                    None => eprintln!("error: {err}"),
                }
            }
            ExitCode::FAILURE
        }
    }
}
