//! The login server's listener and per-connection driver.
//!
//! One task per connection pumps `loginproto`'s server state machine over
//! LF-framed lines. A connection permit is taken *before* `accept`, so at
//! most `login.max_connections` dialogues run and further clients wait in
//! the kernel's backlog instead of costing memory. The whole dialogue, from
//! accept to status line, runs under `login.dialogue_timeout`; the
//! authenticator call under `login.auth_timeout`.
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
//!
//! # Cost per login
//!
//! A login is a short TCP connection, so most of its cost is the kernel's
//! (accept, six lines, close). The driver keeps its own part small:
//!
//! * one task per connection and nothing else: the login handler runs
//!   inline (it moves to a task of its own only if the dialogue is dropped
//!   while it runs, see `Detach`);
//! * a small read buffer and no write buffer (the state machine hands out
//!   complete lines, written straight to the socket);
//! * `TCP_NODELAY` is inherited from the listener where the OS does that
//!   (Linux), instead of one more system call per connection;
//! * delayed ACKs from the first line on (Linux `TCP_QUICKACK` off): every
//!   line the client sends is answered at once, so the ACK rides on the
//!   answer instead of costing a segment of its own;
//! * the status line and the FIN leave in one segment (the status is
//!   written with `MSG_MORE` on Linux, then `shutdown` pushes both);
//! * lingering reuses the read buffer and ends at once if the client's FIN
//!   is already there, without arming the linger timer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::line::{LineCodec, LineError};
use codec::status::LoginStatus;
use codec::websocket::MessageStream;
use futures::{FutureExt, StreamExt};
use loginproto::login::{
    Authenticate, KeyStep, LoginOutcome, Rejected, ServerConfig, ServerLogin, StaticKey, Suite,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::admission::{Admission, AdmissionConfig, Admit};
use super::auth::{AuthError, Authenticator};
use super::metrics::{LoginLabels, LoginMetrics, status_label};
use super::random::{RandomSource, ThreadRandom};
use super::throttle::{Policy, Throttle, Throttled};
use crate::config::{DEFAULT_SHUTDOWN_GRACE, LoginConfig};
use crate::logging::esc;
use crate::login::placement::{LoginRequest, PlaceError, Placer};
use crate::net::web::{WebIo, WebPolicy};
use crate::net::{self, AtCapacity, PerSource, SourceSlot};

/// Longest we keep reading (and discarding) after the status line, waiting
/// for the client's FIN. Well-behaved clients close at once.
const LINGER: Duration = Duration::from_secs(2);

/// Most bytes discarded while lingering before we give up on a clean FIN.
const LINGER_BYTES: usize = 64 * 1024;

/// Initial read buffer of a dialogue: every line of a well-behaved client
/// fits in one read; a longer line (up to `login.max_line_bytes`) grows it.
const READ_BUF: usize = 256;

/// A key that has not failed for this long starts counting again.
const THROTTLE_FORGET: Duration = Duration::from_secs(15 * 60);

fn throttle(config: &LoginConfig) -> Throttle {
    let policy = |free| Policy {
        free,
        delay: config.throttle_delay,
        max: config.throttle_max,
    };
    Throttle::new(
        policy(config.throttle_user_failures),
        policy(config.throttle_source_failures),
        THROTTLE_FORGET,
    )
}

/// The login server: settings and the services it calls.
pub struct LoginServer {
    shared: LoginState,
    shutdown_grace: Duration,
}

struct LoginState {
    config: LoginConfig,
    /// The key-exchange policy every dialogue starts from.
    server: ServerConfig,
    throttle: Throttle,
    auth: Arc<dyn Authenticator>,
    placer: Arc<dyn Placer>,
    random: Arc<dyn RandomSource>,
    /// The login queue, when `admission_rate` is set.
    admission: Option<Arc<dyn Admit>>,
    metrics: Arc<LoginMetrics>,
}

impl std::fmt::Debug for LoginServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginServer")
            .field("config", &self.shared.config)
            .field("auth", &self.shared.auth.name())
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

impl LoginServer {
    /// A login server that authenticates with `auth` and places users with
    /// `placer` (one process: [`super::LocalPlacer`] over an [`super::OnlineTable`] the
    /// gates report ended sessions to). Randomness comes from a CSPRNG per
    /// thread seeded from the OS ([`ThreadRandom`]).
    pub fn new(
        config: LoginConfig,
        auth: Arc<dyn Authenticator>,
        placer: Arc<dyn Placer>,
    ) -> LoginServer {
        LoginServer {
            shared: LoginState {
                metrics: Arc::default(),
                admission: admission(&config),
                throttle: throttle(&config),
                server: ServerConfig {
                    allow_skynet: config.allow_skynet_suite,
                    static_key: None,
                    require_pinned: config.require_pinned,
                },
                config,
                auth,
                placer,
                random: Arc::new(ThreadRandom),
            },
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }

    /// Gives the server its long-term key: clients that pin its public key
    /// get a login a man in the middle cannot read or complete.
    #[must_use]
    pub fn with_server_key(mut self, key: StaticKey) -> LoginServer {
        self.shared.server.static_key = Some(key);
        self
    }

    /// The login metrics (register them on an operations registry).
    pub fn metrics(&self) -> Arc<LoginMetrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Replaces the login queue (a cluster's login nodes share one through
    /// Redis). Without this, `admission_rate` makes an in-process queue.
    #[must_use]
    pub fn with_admission(mut self, queue: Arc<dyn Admit>) -> LoginServer {
        self.shared.admission = Some(queue);
        self
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
        self.serve_with_web(listener, None, shutdown).await;
    }

    /// [`LoginServer::serve`], plus the same dialogue over WebSocket on
    /// `web` (`docs/PROTOCOL.md` §9): both listeners share the limits on
    /// dialogues at once and per source address.
    pub async fn serve_with_web(
        self,
        listener: TcpListener,
        web: Option<(TcpListener, Arc<WebPolicy>)>,
        shutdown: CancellationToken,
    ) {
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
        if let Some(addr) = web.as_ref().and_then(|(l, _)| l.local_addr().ok()) {
            info!(%addr, "login server listening for WebSocket clients");
        }
        // Each line is one complete message; do not let Nagle hold it back.
        // Linux gives accepted sockets the listener's setting.
        let inherits_nodelay = cfg!(target_os = "linux")
            && socket2::SockRef::from(&listener)
                .tcp_nodelay()
                .unwrap_or(false);
        let per_source = PerSource::new(shared.config.max_connections_per_source);
        let start = |stream: TcpStream,
                     addr: SocketAddr,
                     permit: Option<OwnedSemaphorePermit>,
                     web: Option<&Arc<WebPolicy>>| {
            let Some(permit) = permit else { return };
            let Some(source) = per_source.enter(addr.ip()) else {
                debug!(
                    %addr,
                    max = shared.config.max_connections_per_source,
                    "too many login dialogues from this address: closed at accept"
                );
                return;
            };
            let place = DialoguePlace {
                _permit: permit,
                _source: source,
            };
            let shared = Arc::clone(&shared);
            let stop = Stop {
                soft: shutdown.clone(),
                hard: hard.clone(),
            };
            if web.is_some() || !inherits_nodelay {
                let _ = stream.set_nodelay(true);
            }
            // The client answers each line at once and its answer
            // carries the ACK; a quick ACK would be a segment of its own.
            #[cfg(target_os = "linux")]
            let _ = socket2::SockRef::from(&stream).set_tcp_quickack(false);
            match web {
                None => {
                    tracker.spawn(connection(shared, stream, addr, place, stop));
                }
                Some(policy) => {
                    let policy = Arc::clone(policy);
                    tracker.spawn(async move {
                        // The upgrade has the dialogue's deadline too.
                        let upgrade = tokio::select! {
                            upgraded = timeout(shared.config.dialogue_timeout, policy.upgrade(stream, addr)) => upgraded,
                            () = stop.hard.cancelled() => return,
                        };
                        match upgrade {
                            Ok(Ok(ws)) => {
                                let stream = MessageStream::new(ws, policy.mapping());
                                connection(shared, stream, addr, place, stop).await;
                            }
                            Ok(Err(e)) => debug!(%addr, error = %e, "WebSocket upgrade failed"),
                            Err(_) => debug!(%addr, "WebSocket upgrade not done in time"),
                        }
                    });
                }
            }
        };
        let tcp = net::accept_loop(
            listener,
            Arc::clone(&permits),
            AtCapacity::Wait,
            shutdown.cancelled(),
            "login",
            |stream, addr, permit| start(stream, addr, permit, None),
        );
        let web_loop = async {
            let Some((listener, policy)) = web else {
                return;
            };
            net::accept_loop(
                listener,
                Arc::clone(&permits),
                AtCapacity::Wait,
                shutdown.cancelled(),
                "login (WebSocket)",
                |stream, addr, permit| start(stream, addr, permit, Some(&policy)),
            )
            .await;
        };
        tokio::join!(tcp, web_loop);
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

/// A login connection's byte stream: a `TcpStream` in production,
/// `tokio::io::duplex` in unit tests.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Writes the last bytes of the dialogue (the status line); the caller
    /// shuts the stream down right after.
    fn write_last(&mut self, bytes: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
}

impl Stream for TcpStream {
    async fn write_last(&mut self, bytes: &[u8]) -> io::Result<()> {
        write_before_fin(self, bytes).await
    }
}

/// The dialogue over WebSocket: each line one text message.
impl Stream for MessageStream<WebIo> {
    async fn write_last(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }
}

/// Writes `bytes` with `MSG_MORE`: the kernel holds them until the
/// `shutdown` that follows, which sends them together with the FIN in one
/// segment (one fewer for both ends to process). On other systems, a plain
/// write.
#[cfg(target_os = "linux")]
async fn write_before_fin(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            socket.send_with_flags(bytes, libc::MSG_MORE | libc::MSG_NOSIGNAL)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
async fn write_before_fin(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await
}

/// The login queue of `config`, if it has an admission rate.
fn admission(config: &LoginConfig) -> Option<Arc<dyn Admit>> {
    (config.admission_rate > 0)
        .then(|| Arc::new(Admission::new(AdmissionConfig::of(config))) as Arc<dyn Admit>)
}

/// The dialogue deadline, which stands still while the login waits in the
/// queue (the queue has its own).
struct DialogueClock {
    /// Milliseconds since `start` at which the dialogue times out.
    due_ms: AtomicU64,
    /// Set while the login waits in the queue.
    paused: AtomicBool,
    start: Instant,
    changed: tokio::sync::Notify,
}

impl DialogueClock {
    fn new(timeout: Duration) -> DialogueClock {
        DialogueClock {
            due_ms: AtomicU64::new(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
            paused: AtomicBool::new(false),
            start: Instant::now(),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// When the dialogue times out; `None` while paused.
    fn deadline(&self) -> Option<Instant> {
        if self.paused.load(Ordering::Acquire) {
            return None;
        }
        Some(self.start + Duration::from_millis(self.due_ms.load(Ordering::Acquire)))
    }

    fn pause(&self) {
        self.paused.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// Ends a pause that lasted `waited`: the deadline moves by as much.
    fn resume(&self, waited: Duration) {
        let waited = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
        self.due_ms.fetch_add(waited, Ordering::AcqRel);
        self.paused.store(false, Ordering::Release);
        self.changed.notify_one();
    }
}

/// Lines are written straight to the stream (the state machine hands out
/// complete lines), so only the read half is framed.
type Lines<S> = FramedRead<S, LineCodec>;

/// The two stages of shutdown, as seen by a connection.
struct Stop {
    /// Shutdown began: finish the dialogue, but do not linger afterwards.
    soft: CancellationToken,
    /// The grace period is over: stop now.
    hard: CancellationToken,
}

/// A dialogue's place: one of `max_connections`, and one of its source
/// address's `max_connections_per_source`. Given back when the status line
/// is sent: lingering for the client's FIN holds neither.
struct DialoguePlace {
    _permit: OwnedSemaphorePermit,
    _source: SourceSlot,
}

async fn connection<S: Stream>(
    shared: Arc<LoginState>,
    stream: S,
    addr: SocketAddr,
    place: DialoguePlace,
    stop: Stop,
) {
    let clock = DialogueClock::new(shared.config.dialogue_timeout);
    let mut lines = FramedRead::with_capacity(
        stream,
        LineCodec::with_limit(shared.config.max_line_bytes),
        READ_BUF,
    );
    let mut report = Report::default();
    let ending = {
        let dialogue = dialogue(&shared, &mut lines, &mut report, addr, &clock);
        tokio::pin!(dialogue);
        loop {
            // While the login is queued there is no dialogue deadline; the
            // clock wakes this loop when that changes.
            let deadline = clock.deadline();
            tokio::select! {
                biased;
                ended = &mut dialogue => break ended,
                () = stop.hard.cancelled() => break Ending::Shutdown,
                () = clock.changed.notified() => {}
                () = sleep_until_some(deadline) => {
                    if clock.deadline().is_some_and(|d| Instant::now() >= d) {
                        break Ending::TimedOut;
                    }
                }
            }
        }
    };
    log_result(&report, addr, &ending);
    let status = match &ending {
        Ending::Status(status, _) => Some(status.code()),
        _ => None,
    };
    shared.metrics.record(
        LoginLabels {
            suite: report.suite.map_or("none", Suite::name),
            status: status_label(status),
        },
        clock.start.elapsed().as_secs_f64(),
    );
    // The status is written: the next client may have the place.
    drop(place);
    let parts = lines.into_parts();
    let (mut stream, mut buf) = (parts.io, parts.read_buf);
    // FIN after the last byte we wrote.
    if stream.shutdown().await.is_err() {
        return;
    }
    // Biased: a client whose FIN is already there is done with on the
    // first poll, without arming the linger timer or the shutdown waiter.
    tokio::select! {
        biased;
        () = linger(&mut stream, &mut buf) => {}
        () = stop.soft.cancelled() => {}
    }
}

/// Discards input until the client's FIN (bounded in time and bytes), in
/// the dialogue's read buffer.
async fn linger<S: Stream>(stream: &mut S, buf: &mut BytesMut) {
    // `timeout` polls the reads first: the timer is only armed if the
    // client has not closed yet.
    let _ = timeout(LINGER, async {
        let mut discarded = 0;
        while discarded <= LINGER_BYTES {
            buf.clear();
            // Reuses the whole buffer (the lines read are gone by now).
            buf.reserve(READ_BUF);
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

fn log_result(report: &Report, addr: SocketAddr, ending: &Ending) {
    let text = |b: &Option<Bytes>| b.as_deref().map(|b| esc(b).to_string()).unwrap_or_default();
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
        reason = %esc(reason.as_bytes()),
        "login"
    );
}

async fn send<S: Stream>(lines: &mut Lines<S>, bytes: &[u8]) -> Result<(), Ending> {
    lines
        .get_mut()
        .write_all(bytes)
        .await
        .map_err(|e| Ending::Failed(format!("write: {e}")))
}

/// Sends the status line (or whatever else ends the dialogue).
async fn send_last<S: Stream>(lines: &mut Lines<S>, bytes: &[u8]) -> Result<(), Ending> {
    lines
        .get_mut()
        .write_last(bytes)
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
    match send_last(lines, &rejected.reply).await {
        Ok(()) => Ending::Status(LoginStatus::UNAUTHORIZED, rejected.reason.to_string()),
        Err(e) => e,
    }
}

/// Sleeps until `deadline`, or forever if there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn dialogue<S: Stream>(
    shared: &LoginState,
    lines: &mut Lines<S>,
    report: &mut Report,
    addr: SocketAddr,
    clock: &DialogueClock,
) -> Ending {
    match run_dialogue(shared, lines, report, addr, clock).await {
        Ok(ending) | Err(ending) => ending,
    }
}

/// Steps 1–9 of spec §4.2. `Err` is an early end (the status, if any, was
/// already sent); `Ok` the final status, already sent.
async fn run_dialogue<S: Stream>(
    shared: &LoginState,
    lines: &mut Lines<S>,
    report: &mut Report,
    addr: SocketAddr,
    clock: &DialogueClock,
) -> Result<Ending, Ending> {
    let random = shared
        .random
        .server_random()
        .map_err(|e| Ending::Failed(e.to_string()))?;
    let (state, challenge) = ServerLogin::start(shared.server.clone(), random);
    send(lines, &challenge).await?;

    let client_key = receive(lines).await?;
    let state = match state.receive(&client_key) {
        KeyStep::Continue(state, server_key) => {
            report.suite = Some(state.suite());
            if let Some(queue) = &shared.admission {
                clock.pause();
                let started = Instant::now();
                let queued = queue_for(queue.as_ref(), lines, state.queue_notices()).await;
                clock.resume(started.elapsed());
                queued?;
            }
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

    let (outcome, reason) = decide(shared, &login, report, addr).await;
    let status = outcome.status();
    send_last(lines, &login.finish(outcome)).await?;
    Ok(Ending::Status(status, reason))
}

/// Waits for the login's turn in the queue, telling the client its
/// position if it asked (`notices`). A client that closes, or sends a line
/// (it must wait for line 3), leaves the queue. A refusal sends `503`.
async fn queue_for<S: Stream>(
    queue: &dyn Admit,
    lines: &mut Lines<S>,
    notices: bool,
) -> Result<(), Ending> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut report = move |position| {
        let _ = tx.send(position);
    };
    let admitted = queue.admit(&mut report);
    tokio::pin!(admitted);
    let result = loop {
        tokio::select! {
            biased;
            result = &mut admitted => break result,
            Some(at) = rx.recv() => {
                if notices {
                    let wait_ms = u64::try_from(at.wait.as_millis()).unwrap_or(u64::MAX);
                    send(lines, &loginproto::login::queue_notice(at.ahead, wait_ms, at.ticket)).await?;
                }
            }
            line = lines.next() => return Err(match line {
                None => Ending::ClientClosed,
                Some(Err(LineError::TooLong)) => Ending::LineTooLong,
                Some(Err(e)) => Ending::Failed(format!("read: {e}")),
                Some(Ok(_)) => Ending::Failed("a line while queued, before the server's key".into()),
            }),
        }
    };
    match result {
        Ok(()) => Ok(()),
        Err(refused) => {
            let status = LoginStatus::SERVICE_UNAVAILABLE;
            send_last(lines, &status.line()).await?;
            Err(Ending::Status(status, refused.to_string()))
        }
    }
}

/// Steps 6–8: authenticate, then skynet's `login_handler`.
async fn decide(
    shared: &LoginState,
    login: &Authenticate,
    report: &mut Report,
    addr: SocketAddr,
) -> (LoginOutcome, String) {
    let Some(credentials) = login.credentials() else {
        return (LoginOutcome::Unauthorized, "malformed token".into());
    };
    let server = Bytes::from(credentials.server.clone());
    report.user = Some(Bytes::copy_from_slice(&credentials.user));
    report.server = Some(server.clone());

    let user = credentials.user.clone();
    if let Err(throttled) = shared.throttle.check(&user, addr.ip(), Instant::now()) {
        let which = match throttled {
            Throttled::User(_) => "this user name",
            Throttled::Source(_) => "this address",
        };
        return (
            LoginOutcome::Unauthorized,
            format!("throttled: too many refused passwords for {which}"),
        );
    }
    let authenticated = timeout(
        shared.config.auth_timeout,
        shared.auth.authenticate(credentials),
    )
    .await
    .unwrap_or(Err(AuthError::Timeout));
    let uid = match authenticated {
        Ok(uid) => {
            shared.throttle.succeeded(&user);
            uid
        }
        Err(e) => {
            if matches!(e, AuthError::Denied(_)) {
                shared.throttle.failed(&user, addr.ip(), Instant::now());
            }
            return (LoginOutcome::Unauthorized, e.to_string());
        }
    };
    report.uid = Some(uid.clone());

    // The handler must finish once started, even if the dialogue deadline
    // drops this future: then the online table stays in step with the
    // gate. A panic in it is a 403, as for a handler in a task of its own.
    let handler = Detach::new(
        AssertUnwindSafe(shared.placer.place(LoginRequest {
            server,
            uid,
            user: Bytes::from(user),
            secret: login.secret().clone(),
        }))
        .catch_unwind(),
    );
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
        Ok(Err(e @ PlaceError::Unavailable(_))) => (LoginOutcome::Unavailable, e.to_string()),
        Err(panic) => (
            LoginOutcome::Forbidden,
            format!("login handler failed: {}", panic_message(&*panic)),
        ),
    }
}

/// The text of a panic payload, for the log line.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}

/// Runs a future that must not stop half-way where it is, and if this
/// wrapper is dropped before it completed, moves what is left of it to a
/// task of its own. Cheaper than spawning it up front, since almost always
/// it completes in place.
struct Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    future: Option<Pin<Box<F>>>,
}

impl<F> Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn new(future: F) -> Detach<F> {
        Detach {
            future: Some(Box::pin(future)),
        }
    }
}

impl<F> Future for Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let future = self
            .future
            .as_mut()
            .expect("Detach polled after completion");
        let output = ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(output)
    }
}

impl<F> Drop for Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            // No runtime means it is being torn down: nothing would run
            // the task either.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                drop(runtime.spawn(future));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::login::auth::{Credentials, DemoAuth};
    use crate::login::online::{LocalPlacer, OnlineTable};
    use crate::login::placement::{GateLink, LoginRefusal};

    impl Stream for DuplexStream {
        async fn write_last(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.write_all(bytes).await
        }
    }
    use crate::login::random::FixedRandom;
    use loginproto::login::ServerRandom;

    /// Gate `sample` handing out subids 1, 2, 3…
    #[derive(Default)]
    struct Sample(AtomicU32);

    impl GateLink for Sample {
        fn login(
            &self,
            req: LoginRequest,
        ) -> crate::login::placement::BoxFuture<'_, Result<Bytes, LoginRefusal>> {
            Box::pin(async move {
                if req.server != "sample" {
                    return Err(LoginRefusal::UnknownServer("?".into()));
                }
                Ok(Bytes::from(
                    (self.0.fetch_add(1, Ordering::SeqCst) + 1).to_string(),
                ))
            })
        }

        fn kick(
            &self,
            _: Bytes,
            _: Bytes,
            _: Bytes,
            _: String,
        ) -> crate::login::placement::BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    /// Never answers.
    struct Stuck;

    impl Authenticator for Stuck {
        fn authenticate(
            &self,
            _: Credentials,
        ) -> crate::login::placement::BoxFuture<'_, Result<Bytes, AuthError>> {
            Box::pin(std::future::pending())
        }

        fn name(&self) -> &'static str {
            "stuck"
        }
    }

    fn shared(config: LoginConfig, auth: Arc<dyn Authenticator>) -> Arc<LoginState> {
        Arc::new(LoginState {
            metrics: Arc::default(),
            admission: admission(&config),
            throttle: throttle(&config),
            server: ServerConfig::default(),
            placer: Arc::new(LocalPlacer {
                online: Arc::new(OnlineTable::new()),
                gates: Arc::new(Sample::default()),
                multilogin: config.multilogin,
            }),
            config,
            auth,
            random: Arc::new(FixedRandom(ServerRandom {
                challenge: [0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18],
                skynet_key: [0x5e, 0x2f, 0x3a, 0x4b, 0x6c, 0x7d, 0x8e, 0x9f],
                x25519_key: [9; 32],
            })),
        })
    }

    /// Runs one connection over an in-memory pipe; returns the client end
    /// and the connection task.
    fn start(shared: Arc<LoginState>) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let source = PerSource::new(1)
            .enter(SocketAddr::from(([127, 0, 0, 1], 1)).ip())
            .unwrap();
        let place = DialoguePlace {
            _permit: permit,
            _source: source,
        };
        let stop = Stop {
            soft: CancellationToken::new(),
            hard: CancellationToken::new(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let task = tokio::spawn(connection(shared, server, addr, place, stop));
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
        let deadline = config.dialogue_timeout;
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
        let limit = config.auth_timeout;
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

    #[tokio::test]
    async fn detached_future_finishes_after_the_wrapper_is_dropped() {
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let mut detach = Detach::new(async move {
            let _ = go_rx.await;
            let _ = done_tx.send(());
            7
        });
        // Started, then dropped half-way (as a deadline drops a dialogue).
        assert!(futures::poll!(&mut detach).is_pending());
        drop(detach);
        go_tx.send(()).unwrap();
        done_rx.await.unwrap();
    }

    #[tokio::test]
    async fn detached_future_completes_in_place() {
        assert_eq!(Detach::new(async { 7 }).await, 7);
    }
}
