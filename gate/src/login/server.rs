//! The login server's listener and per-connection driver.
//!
//! One task per connection pumps `loginproto`'s server state machine over
//! LF-framed lines. A connection permit is taken *before* `accept`, so at
//! most `login.max_connections` dialogues run and further clients wait in
//! the kernel's backlog instead of costing memory. The whole dialogue, from
//! accept to status line, runs under `login.dialogue_timeout_ms`; the
//! authenticator call under `login.auth_timeout_ms`.
//!
//! Differences from skynet, all invisible to a well-behaved client:
//!
//! * after the status line the server closes the connection (skynet leaves
//!   it open until the client closes, spec §4.4);
//! * a client that is silent for the whole dialogue deadline is closed
//!   without a status line (skynet has no timeout);
//! * an authenticator that does not answer in time is a `401`.
//!
//! Closing is "lingering": we send FIN after the last byte and then read
//! and discard whatever the client still sends, for a short bounded time.
//! Closing a socket with unread input makes the kernel send RST, which can
//! destroy the status line before the client has read it (e.g. a client
//! that sends its token line right after a proof that we answer with 401).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use codec::line::{LineCodec, LineError};
use codec::status::LoginStatus;
use futures::StreamExt;
use loginproto::login::{
    Authenticate, KeyStep, LoginOutcome, Rejected, ServerConfig, ServerLogin, Suite,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::auth::{AuthError, Authenticator};
use super::online::{OnlineTable, PlaceError};
use super::random::{OsRandom, RandomSource};
use crate::config::LoginConfig;
use crate::link::GateLink;

/// Longest we keep reading (and discarding) after the status line, waiting
/// for the client's FIN. Well-behaved clients close at once.
const LINGER: Duration = Duration::from_secs(2);

/// Most bytes discarded while lingering before we give up on a clean FIN.
const LINGER_BYTES: usize = 64 * 1024;

/// Pause after an `accept` error such as "too many open files", so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Default for [`LoginServer::with_shutdown_grace`].
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The login server: settings and the services it calls.
pub struct LoginServer {
    shared: Shared,
    shutdown_grace: Duration,
}

struct Shared {
    config: LoginConfig,
    auth: Arc<dyn Authenticator>,
    gates: Arc<dyn GateLink>,
    online: Arc<OnlineTable>,
    random: Arc<dyn RandomSource>,
}

impl std::fmt::Debug for LoginServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginServer")
            .field("config", &self.shared.config)
            .field("auth", &self.shared.auth.name())
            .field("online", &self.shared.online.len())
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

impl LoginServer {
    /// A login server that authenticates with `auth`, places users on
    /// gates through `gates` and records them in `online` (which the gates
    /// must report ended sessions to, as their `LoginLink`). Randomness
    /// comes from the OS CSPRNG.
    pub fn new(
        config: LoginConfig,
        auth: Arc<dyn Authenticator>,
        gates: Arc<dyn GateLink>,
        online: Arc<OnlineTable>,
    ) -> LoginServer {
        LoginServer {
            shared: Shared {
                config,
                auth,
                gates,
                online,
                random: Arc::new(OsRandom),
            },
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }

    /// Replaces the random source (tests pin it to replay transcripts).
    #[must_use]
    pub fn with_random(mut self, random: Arc<dyn RandomSource>) -> LoginServer {
        self.shared.random = random;
        self
    }

    /// How long [`LoginServer::serve`] lets running dialogues finish after
    /// shutdown before it closes them. Default: 5 s.
    #[must_use]
    pub fn with_shutdown_grace(mut self, grace: Duration) -> LoginServer {
        self.shutdown_grace = grace;
        self
    }

    /// Accepts login connections until `shutdown` is cancelled; then stops
    /// accepting, lets running dialogues finish within the shutdown grace,
    /// closes the rest and returns.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        let shared = Arc::new(self.shared);
        let permits = Arc::new(Semaphore::new(
            shared
                .config
                .max_connections
                .clamp(1, Semaphore::MAX_PERMITS),
        ));
        let tracker = TaskTracker::new();
        // Cancelled when the grace period is over: ends every dialogue.
        let hard = CancellationToken::new();
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, auth = shared.auth.name(), "login server listening");
        }
        loop {
            // The permit comes first (see the module docs).
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = shutdown.cancelled() => break,
            };
            let (stream, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "login accept failed");
                        if is_resource_error(&e) {
                            tokio::select! {
                                () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                                () = shutdown.cancelled() => break,
                            }
                        }
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let shared = Arc::clone(&shared);
            let stop = Stop {
                soft: shutdown.clone(),
                hard: hard.clone(),
            };
            // Each line is one complete message; do not let Nagle hold it back.
            let _ = stream.set_nodelay(true);
            tracker.spawn(connection(shared, stream, addr, permit, stop));
        }
        drop(listener);
        tracker.close();
        if timeout(self.shutdown_grace, tracker.wait()).await.is_err() {
            info!(
                open = tracker.len(),
                "login shutdown grace over; closing dialogues"
            );
            hard.cancel();
            tracker.wait().await;
        }
        debug!("login server stopped");
    }
}

/// Accept errors that mean "out of resources, try again later" (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM; they have no stable `ErrorKind`). Others, like
/// a client that reset before we accepted, concern one connection only.
fn is_resource_error(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(12 | 23 | 24 | 105))
}

/// How a dialogue ended, for the log line.
#[derive(Debug)]
enum Ending {
    /// The status line was sent.
    Status(LoginStatus, String),
    /// The client closed before the status line.
    ClientClosed,
    /// More than `max_line_bytes` unread bytes: closed without a status.
    LineTooLong,
    /// The dialogue deadline passed.
    TimedOut,
    /// The server shut down.
    Shutdown,
    /// A socket error, or no randomness.
    Failed(String),
}

/// What we know about the login so far, for the log line.
#[derive(Debug, Default)]
struct Report {
    user: Option<Bytes>,
    server: Option<Bytes>,
    uid: Option<Bytes>,
    subid: Option<Bytes>,
    suite: Option<Suite>,
}

/// Any byte stream: a `TcpStream` in production, `tokio::io::duplex` in
/// unit tests.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

type Lines<S> = Framed<S, LineCodec>;

/// The two stages of shutdown, as seen by a connection.
struct Stop {
    /// Shutdown began: finish the dialogue, but do not linger afterwards.
    soft: CancellationToken,
    /// The grace period is over: stop now.
    hard: CancellationToken,
}

async fn connection<S: Stream>(
    shared: Arc<Shared>,
    stream: S,
    addr: SocketAddr,
    _permit: OwnedSemaphorePermit,
    stop: Stop,
) {
    let deadline = Instant::now() + shared.config.dialogue_timeout();
    let mut lines = Framed::new(stream, LineCodec::with_limit(shared.config.max_line_bytes));
    let mut report = Report::default();
    let ending = tokio::select! {
        ended = timeout_at(deadline, dialogue(&shared, &mut lines, &mut report)) => {
            ended.unwrap_or(Ending::TimedOut)
        }
        () = stop.hard.cancelled() => Ending::Shutdown,
    };
    log_result(&report, addr, &ending);
    let mut stream = lines.into_inner();
    // FIN after the last byte we wrote.
    if stream.shutdown().await.is_err() {
        return;
    }
    tokio::select! {
        () = linger(&mut stream) => {}
        () = stop.soft.cancelled() => {}
    }
}

/// Discards input until the client's FIN (bounded in time and bytes).
async fn linger<S: Stream>(stream: &mut S) {
    let _ = timeout(LINGER, async {
        let mut buf = [0u8; 4096];
        let mut discarded = 0;
        while discarded <= LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

fn log_result(report: &Report, addr: SocketAddr, ending: &Ending) {
    let text = |b: &Option<Bytes>| {
        b.as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let (status, reason) = match ending {
        Ending::Status(status, reason) => (status.code().to_string(), reason.as_str()),
        Ending::ClientClosed => ("none".to_owned(), "client closed"),
        Ending::LineTooLong => ("none".to_owned(), "line over the buffer limit"),
        Ending::TimedOut => ("none".to_owned(), "dialogue deadline passed"),
        Ending::Shutdown => ("none".to_owned(), "server shutting down"),
        Ending::Failed(reason) => ("none".to_owned(), reason.as_str()),
    };
    info!(
        user = %text(&report.user),
        uid = %text(&report.uid),
        server = %text(&report.server),
        subid = %text(&report.subid),
        suite = report.suite.map_or("", Suite::name),
        %addr,
        %status,
        reason,
        "login"
    );
}

async fn send<S: Stream>(lines: &mut Lines<S>, bytes: &[u8]) -> Result<(), Ending> {
    // loginproto's lines already end in LF, so they bypass the encoder;
    // nothing is ever queued in the Framed write buffer.
    let stream = lines.get_mut();
    stream
        .write_all(bytes)
        .await
        .map_err(|e| Ending::Failed(format!("write: {e}")))
}

async fn receive<S: Stream>(lines: &mut Lines<S>) -> Result<Bytes, Ending> {
    match lines.next().await {
        Some(Ok(line)) => Ok(line),
        Some(Err(LineError::TooLong)) => Err(Ending::LineTooLong),
        Some(Err(e)) => Err(Ending::Failed(format!("read: {e}"))),
        None => Err(Ending::ClientClosed),
    }
}

async fn reject<S: Stream>(lines: &mut Lines<S>, rejected: Rejected) -> Ending {
    match send(lines, &rejected.reply).await {
        Ok(()) => Ending::Status(LoginStatus::UNAUTHORIZED, rejected.reason.to_string()),
        Err(e) => e,
    }
}

async fn dialogue<S: Stream>(shared: &Shared, lines: &mut Lines<S>, report: &mut Report) -> Ending {
    match run_dialogue(shared, lines, report).await {
        Ok(ending) | Err(ending) => ending,
    }
}

/// Steps 1–9 of spec §4.2. `Err` is an early end (the status, if any, was
/// already sent); `Ok` the final status, already sent.
async fn run_dialogue<S: Stream>(
    shared: &Shared,
    lines: &mut Lines<S>,
    report: &mut Report,
) -> Result<Ending, Ending> {
    let random = shared
        .random
        .server_random()
        .map_err(|e| Ending::Failed(e.to_string()))?;
    let config = ServerConfig {
        allow_skynet: shared.config.allow_skynet_suite,
    };
    let (state, challenge) = ServerLogin::start(config, random);
    send(lines, &challenge).await?;

    let client_key = receive(lines).await?;
    let state = match state.receive(&client_key) {
        KeyStep::Continue(state, server_key) => {
            report.suite = Some(state.suite());
            send(lines, &server_key).await?;
            state
        }
        KeyStep::Reject(rejected) => return Err(reject(lines, rejected).await),
    };

    let proof = receive(lines).await?;
    let state = match state.receive(&proof) {
        Ok(state) => state,
        Err(rejected) => return Err(reject(lines, rejected).await),
    };

    let token = receive(lines).await?;
    let login = match state.receive(&token) {
        Ok(login) => login,
        Err(rejected) => return Err(reject(lines, rejected).await),
    };

    let (outcome, reason) = decide(shared, &login, report).await;
    let status = outcome.status();
    send(lines, &login.finish(outcome)).await?;
    Ok(Ending::Status(status, reason))
}

/// Steps 6–8: authenticate, then skynet's `login_handler`.
async fn decide(
    shared: &Shared,
    login: &Authenticate,
    report: &mut Report,
) -> (LoginOutcome, String) {
    let Some(credentials) = login.credentials() else {
        return (LoginOutcome::Unauthorized, "malformed token".into());
    };
    let server = Bytes::from(credentials.server.clone());
    report.user = Some(Bytes::copy_from_slice(&credentials.user));
    report.server = Some(server.clone());

    let authenticated = timeout(
        shared.config.auth_timeout(),
        shared.auth.authenticate(credentials),
    )
    .await
    .unwrap_or(Err(AuthError::Timeout));
    let uid = match authenticated {
        Ok(uid) => uid,
        Err(e) => return (LoginOutcome::Unauthorized, e.to_string()),
    };
    report.uid = Some(uid.clone());

    // The handler runs in its own task: if the dialogue deadline drops this
    // future, the handler still finishes and the online table stays in
    // step with the gate.
    let handler = tokio::spawn(Arc::clone(&shared.online).place(
        Arc::clone(&shared.gates),
        shared.config.multilogin,
        server,
        uid,
        login.secret().clone(),
    ));
    match handler.await {
        Ok(Ok(subid)) => {
            report.subid = Some(subid.clone());
            (
                LoginOutcome::Ok {
                    subid: subid.to_vec(),
                },
                "logged in".into(),
            )
        }
        Ok(Err(PlaceError::InProgress)) => (
            LoginOutcome::NotAcceptable,
            PlaceError::InProgress.to_string(),
        ),
        Ok(Err(PlaceError::Refused(refusal))) => (LoginOutcome::Forbidden, refusal.to_string()),
        Err(e) => (
            LoginOutcome::Forbidden,
            format!("login handler failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::link::{LoginRefusal, LoginRequest};
    use crate::login::auth::{Credentials, DemoAuth};
    use crate::login::random::FixedRandom;
    use loginproto::login::ServerRandom;

    /// Gate `sample` handing out subids 1, 2, 3…
    #[derive(Default)]
    struct Sample(AtomicU32);

    impl GateLink for Sample {
        fn login(
            &self,
            req: LoginRequest,
        ) -> crate::link::BoxFuture<'_, Result<Bytes, LoginRefusal>> {
            Box::pin(async move {
                if req.server != "sample" {
                    return Err(LoginRefusal::UnknownServer("?".into()));
                }
                Ok(Bytes::from(
                    (self.0.fetch_add(1, Ordering::SeqCst) + 1).to_string(),
                ))
            })
        }

        fn kick(&self, _: Bytes, _: Bytes, _: Bytes, _: String) -> crate::link::BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    /// Never answers.
    struct Stuck;

    impl Authenticator for Stuck {
        fn authenticate(
            &self,
            _: Credentials,
        ) -> crate::link::BoxFuture<'_, Result<Bytes, AuthError>> {
            Box::pin(std::future::pending())
        }

        fn name(&self) -> &'static str {
            "stuck"
        }
    }

    fn shared(config: LoginConfig, auth: Arc<dyn Authenticator>) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            auth,
            gates: Arc::new(Sample::default()),
            online: Arc::new(OnlineTable::new()),
            random: Arc::new(FixedRandom(ServerRandom {
                challenge: [0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18],
                skynet_key: [0x5e, 0x2f, 0x3a, 0x4b, 0x6c, 0x7d, 0x8e, 0x9f],
                x25519_key: [9; 32],
            })),
        })
    }

    /// Runs one connection over an in-memory pipe; returns the client end
    /// and the connection task.
    fn start(shared: Arc<Shared>) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let stop = Stop {
            soft: CancellationToken::new(),
            hard: CancellationToken::new(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let task = tokio::spawn(connection(shared, server, addr, permit, stop));
        (client, task)
    }

    async fn expect(client: &mut DuplexStream, expected: &[u8]) {
        let mut got = vec![0; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }

    async fn expect_eof(client: &mut DuplexStream) {
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&rest), "");
    }

    /// Spec §4.6, then the server closes (our difference from skynet).
    async fn worked_example(client: &mut DuplexStream) {
        expect(client, b"obLD1OX2Bxg=\n").await;
        client.write_all(b"mE4UGCgyNe0=\n").await.unwrap();
        expect(client, b"xJrj5W34ITs=\n").await;
        client
            .write_all(b"c6P4IeDAXo4=\nEH1HqQmuX7xHgoao5iLQxJmFShp7rovgU1CW6aDaF7Q=\n")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn worked_example_then_close() {
        let (mut client, task) = start(shared(LoginConfig::default(), Arc::new(DemoAuth)));
        worked_example(&mut client).await;
        expect(&mut client, b"200 MQ==\n").await;
        expect_eof(&mut client).await;
        drop(client);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_is_closed_at_the_deadline_without_status() {
        let config = LoginConfig::default();
        let deadline = config.dialogue_timeout();
        let started = Instant::now();
        let (mut client, task) = start(shared(config, Arc::new(DemoAuth)));
        expect(&mut client, b"obLD1OX2Bxg=\n").await;
        expect_eof(&mut client).await;
        assert!(started.elapsed() >= deadline);
        drop(client);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn authenticator_that_never_answers_is_401() {
        let config = LoginConfig::default();
        let limit = config.auth_timeout();
        let started = Instant::now();
        let (mut client, task) = start(shared(config, Arc::new(Stuck)));
        worked_example(&mut client).await;
        expect(&mut client, b"401 Unauthorized\n").await;
        assert!(started.elapsed() >= limit);
        expect_eof(&mut client).await;
        drop(client);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn lingering_is_bounded() {
        let (mut client, task) = start(shared(LoginConfig::default(), Arc::new(DemoAuth)));
        worked_example(&mut client).await;
        expect(&mut client, b"200 MQ==\n").await;
        expect_eof(&mut client).await;
        // The client never closes: the server stops waiting for it.
        task.await.unwrap();
        drop(client);
    }

    #[tokio::test]
    async fn over_limit_closes_without_status() {
        let config = LoginConfig {
            max_line_bytes: 16,
            ..LoginConfig::default()
        };
        let (mut client, task) = start(shared(config, Arc::new(DemoAuth)));
        expect(&mut client, b"obLD1OX2Bxg=\n").await;
        client.write_all(&[b'A'; 17]).await.unwrap();
        expect_eof(&mut client).await;
        drop(client);
        task.await.unwrap();
    }
}
