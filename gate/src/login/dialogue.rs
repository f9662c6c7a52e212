//! One login connection, from accept to the status line: the dialogue
//! driver that pumps `loginproto`'s server state machine over LF-framed
//! lines, under the dialogue deadline (which stands still while the login
//! waits in the queue), then the log line and the metrics of how it ended.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use codec::line::{LineCodec, LineError};
use codec::status::LoginStatus;
use futures::{FutureExt, StreamExt};
use loginproto::login::{Authenticate, KeyStep, LoginOutcome, Rejected, ServerLogin, Suite};
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::admission::Admit;
use super::auth::AuthError;
use super::closing::{Stream, linger};
use super::detach::{Detach, panic_message};
use super::metrics::{LoginLabels, status_label};
use super::server::LoginState;
use crate::logging::esc;
use crate::login::placement::{LoginRequest, PlaceError};
use crate::net::SourceSlot;

/// Initial read buffer of a dialogue: every line of a well-behaved client
/// fits in one read; a longer line (up to `login.max_line_bytes`) grows it.
pub(super) const READ_BUF: usize = 256;

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
    /// The slots were full and this client had said nothing: its slot went
    /// to a newcomer.
    Evicted,
    /// A socket error, or no randomness.
    Failed(String),
}

/// What we know about the login so far, for the log line.
#[derive(Debug, Default)]
struct Report {
    /// The login was refused by the throttle before its password was
    /// checked.
    throttled: bool,
    user: Option<Bytes>,
    server: Option<Bytes>,
    uid: Option<Bytes>,
    subid: Option<Bytes>,
    suite: Option<Suite>,
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
pub(super) struct Stop {
    /// Shutdown began: finish the dialogue, but do not linger afterwards.
    pub(super) soft: CancellationToken,
    /// The grace period is over: stop now.
    pub(super) hard: CancellationToken,
}

/// A dialogue's place: one of `max_connections`, and one of its source
/// address's `max_connections_per_source`. Given back when the status line
/// is sent: lingering for the client's FIN holds neither.
pub(super) struct DialoguePlace {
    pub(super) _permit: OwnedSemaphorePermit,
    pub(super) _source: SourceSlot,
}

pub(super) async fn connection<S: Stream>(
    shared: Arc<LoginState>,
    stream: S,
    addr: SocketAddr,
    place: DialoguePlace,
    stop: Stop,
) {
    let config = shared.config.load();
    let clock = DialogueClock::new(config.dialogue_timeout);
    let registered = shared.dialogues.enter();
    let seat = &registered.seat;
    let mut lines = FramedRead::with_capacity(
        stream,
        LineCodec::with_limit(config.max_line_bytes),
        READ_BUF,
    );
    let mut report = Report::default();
    let ending = {
        let dialogue = dialogue(&shared, &mut lines, &mut report, addr, &clock, seat);
        tokio::pin!(dialogue);
        loop {
            // While the login is queued there is no dialogue deadline; the
            // clock wakes this loop when that changes.
            let deadline = clock.deadline();
            tokio::select! {
                biased;
                ended = &mut dialogue => break ended,
                () = stop.hard.cancelled() => break Ending::Shutdown,
                () = seat.evict.notified() => break Ending::Evicted,
                () = clock.changed.notified() => {}
                () = sleep_until_some(deadline) => {
                    if clock.deadline().is_some_and(|d| Instant::now() >= d) {
                        break Ending::TimedOut;
                    }
                }
            }
        }
    };
    log_result(&report, addr, &ending, &shared.throttle_log);
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
    drop(registered);
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

fn log_result(
    report: &Report,
    addr: SocketAddr,
    ending: &Ending,
    throttle_log: &crate::net::RefusalLog,
) {
    if let Ending::Evicted = ending {
        // One line per evicted idle socket would turn a flood into a log
        // flood: the accept loop summarises evictions instead.
        tracing::debug!(%addr, "login dialogue evicted (slots full, client stalled)");
        return;
    }
    if report.throttled {
        // Guesses from many addresses would write a line each: throttled
        // logins are summarised (and counted in the metrics by status).
        throttle_log.refused("throttled");
        tracing::debug!(%addr, user = %report.user.as_deref().map(esc).map(|e| e.to_string()).unwrap_or_default(), "login throttled");
        return;
    }
    if !matches!(ending, Ending::Status(..)) && report.user.is_none() {
        // Nobody said who they were and nothing was answered: an idle or
        // abandoned socket, counted in the metrics (status "none"). One
        // line each would let a flood of them write the log full.
        tracing::debug!(%addr, reason = ?ending_reason(ending), "login dialogue ended before a user was named");
        return;
    }
    let text = |b: &Option<Bytes>| b.as_deref().map(|b| esc(b).to_string()).unwrap_or_default();
    let status = match ending {
        Ending::Status(status, _) => status.code().to_string(),
        _ => "none".to_owned(),
    };
    let reason = ending_reason(ending);
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

/// Why a dialogue ended, for its log line.
fn ending_reason(ending: &Ending) -> &str {
    match ending {
        Ending::Status(_, reason) | Ending::Failed(reason) => reason,
        Ending::ClientClosed => "client closed",
        Ending::LineTooLong => "line over the buffer limit",
        Ending::TimedOut => "dialogue deadline passed",
        Ending::Shutdown => "server shutting down",
        Ending::Evicted => "evicted",
    }
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

/// The client's next line; the dialogue counts as stalled by its client
/// (evictable when the slots are full) while it waits for it.
async fn receive<S: Stream>(
    lines: &mut Lines<S>,
    seat: &super::evict::Seat,
) -> Result<Bytes, Ending> {
    seat.client_turn();
    let line = lines.next().await;
    seat.server_turn();
    match line {
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
    seat: &super::evict::Seat,
) -> Ending {
    match run_dialogue(shared, lines, report, addr, clock, seat).await {
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
    seat: &super::evict::Seat,
) -> Result<Ending, Ending> {
    let random = shared
        .random
        .server_random()
        .map_err(|e| Ending::Failed(e.to_string()))?;
    let (state, challenge) = ServerLogin::start(shared.server.clone(), random);
    send(lines, &challenge).await?;

    let client_key = timeout(
        shared.config.load().first_line_timeout,
        receive(lines, seat),
    )
    .await
    .map_err(|_| Ending::TimedOut)??;
    let state = match state.receive(&client_key) {
        KeyStep::Continue(state, server_key) => {
            report.suite = Some(state.suite());
            if let Some(queue) = shared.admission.as_ref().filter(|q| q.active()) {
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

    let proof = receive(lines, seat).await?;
    let state = match state.receive(&proof) {
        Ok(state) => state,
        Err(rejected) => return Err(reject(lines, rejected).await),
    };

    let token = receive(lines, seat).await?;
    let login = match state.receive(&token) {
        Ok(login) => login,
        Err(rejected) => return Err(reject(lines, rejected).await),
    };

    let (outcome, reason) = decide(shared, &login, report, addr).await;
    let status = login.status_of(&outcome);
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
    // The attempt holds the throttle's tokens until the authenticator
    // decides; dropped undecided (deadline, timeout) it gives them back.
    let attempt = match shared.throttle.attempt(&user, addr.ip(), Instant::now()) {
        Ok(attempt) => attempt,
        Err(throttled) => {
            report.throttled = true;
            shared.metrics.throttled(throttled);
            return (LoginOutcome::Throttled, throttled.reason().into());
        }
    };
    let authenticated = timeout(
        shared.config.load().auth_timeout,
        shared.auth.authenticate(credentials),
    )
    .await
    .unwrap_or(Err(AuthError::Timeout));
    let (uid, login_key) = match authenticated {
        Ok(uid) => (uid, attempt.succeeded(Instant::now())),
        Err(e) => {
            let outcome = match e {
                AuthError::Denied(_) => {
                    attempt.failed(Instant::now());
                    LoginOutcome::Unauthorized
                }
                // Overload, as for a full login queue.
                AuthError::Busy(_) => LoginOutcome::Unavailable,
                AuthError::Unavailable(_) | AuthError::Timeout => LoginOutcome::Unauthorized,
            };
            return (outcome, e.to_string());
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
            shared.throttle.logged_in(login_key, Instant::now());
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
