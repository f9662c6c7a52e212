//! How the operations listener holds its connections: a cap on how many
//! are open, deadlines on each phase of a request, and counters of what
//! it refused or cut.
//!
//! `axum::serve` has no connection cap and no header or idle deadline: a
//! few hundred idle or byte-a-second connections would hold descriptors
//! the players need. So each connection is served here with hyper's HTTP/1
//! builder directly, and a watchdog per connection enforces, from what it
//! sees:
//!
//! * **idle**: no request in progress and no byte of the next one, for
//!   `ops.idle_timeout` (a keep-alive connection left open);
//! * **header**: the first byte of a request arrived but not yet its whole
//!   head, for `ops.header_timeout` (a slow header);
//! * **request**: a request whose answer is not ready within
//!   `ops.request_timeout` (a slow body, a slow relay) gets `408` and the
//!   connection closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::config::OpsConfig;
use crate::net::tap::{ReadObserver, Tapped};
use crate::net::{self, AtCapacity};

/// Why the operations listener refused a connection or a call, or cut a
/// connection. The names are the `cause` label of `gate_ops_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpsCause {
    /// `ops.max_connections` were open: closed at accept.
    Capacity,
    /// A request head not complete within `ops.header_timeout`.
    HeaderTimeout,
    /// A connection idle for `ops.idle_timeout`.
    IdleTimeout,
    /// An answer not ready within `ops.request_timeout` (`408`).
    RequestTimeout,
    /// An admin call with a missing or wrong token (`401`).
    Token,
    /// An admin call from an address over its failed-token bound (`429`).
    TokenRate,
}

impl OpsCause {
    /// Every cause, in the order of [`OpsCounters::totals`].
    pub const ALL: [OpsCause; 6] = [
        OpsCause::Capacity,
        OpsCause::HeaderTimeout,
        OpsCause::IdleTimeout,
        OpsCause::RequestTimeout,
        OpsCause::Token,
        OpsCause::TokenRate,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            OpsCause::Capacity => "capacity",
            OpsCause::HeaderTimeout => "header_timeout",
            OpsCause::IdleTimeout => "idle_timeout",
            OpsCause::RequestTimeout => "request_timeout",
            OpsCause::Token => "token",
            OpsCause::TokenRate => "token_rate",
        }
    }
}

/// What the operations listener refused or cut, since start.
#[derive(Debug, Default)]
pub struct OpsCounters([AtomicU64; OpsCause::ALL.len()]);

impl OpsCounters {
    /// Counts one.
    pub fn count(&self, cause: OpsCause) {
        self.0[cause as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts by cause.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        OpsCause::ALL
            .iter()
            .map(|&c| (c.name(), self.0[c as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// Serves `app` on `listener` under the bounds of `cfg` until `stop`;
/// then lets requests in progress finish (within `request_timeout`).
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: &OpsConfig,
    counters: Arc<OpsCounters>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(
        cfg.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let tasks = TaskTracker::new();
    net::accept_loop(
        listener,
        permits,
        AtCapacity::Close,
        stop.cancelled(),
        "ops",
        |stream, peer, permit| match permit {
            Some(permit) => {
                let (app, cfg, counters, stop) = (
                    app.clone(),
                    cfg.clone(),
                    Arc::clone(&counters),
                    stop.clone(),
                );
                tasks.spawn(async move {
                    connection(stream, peer, app, &cfg, &counters, stop).await;
                    drop(permit);
                });
            }
            None => {
                counters.count(OpsCause::Capacity);
                drop(stream);
            }
        },
    )
    .await;
    tasks.close();
    tasks.wait().await;
    info!("operations listener stopped");
}

/// Where one connection is between requests, as its watchdog sees it.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Nothing of a next request yet, since then.
    Idle(Instant),
    /// The first byte of a request's head came then.
    Head(Instant),
    /// A request is being answered (its own deadline bounds it).
    Busy,
}

/// One connection's phase, moved by its reads and its requests.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn set(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        *phase = change(*phase);
        drop(phase);
        self.changed.notify_one();
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks the connection busy while a request is answered; idle again when
/// dropped (the answer is out, or the request was abandoned).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.set(|_| Phase::Idle(Instant::now()));
    }
}

/// A connection's socket tells its `Activity` when bytes of a new request
/// arrive: only the first byte after an idle spell starts the header
/// clock; bytes of a body (busy) or more of a head change nothing.
impl ReadObserver for Arc<Activity> {
    fn read(&mut self, _: usize) {
        if matches!(self.phase(), Phase::Idle(_)) {
            self.set(|_| Phase::Head(Instant::now()));
        }
    }
}

/// The answer to a request over its deadline; the connection closes after
/// it, since the rest of the request may still be on its way.
fn timed_out() -> Response<Body> {
    let mut answer = Response::new(Body::from("{\"error\":\"request timed out\"}"));
    *answer.status_mut() = StatusCode::REQUEST_TIMEOUT;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    answer.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    answer
}

/// Serves one connection under its deadlines.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    cfg: &OpsConfig,
    counters: &Arc<OpsCounters>,
    stop: CancellationToken,
) {
    let activity = Arc::new(Activity {
        phase: Mutex::new(Phase::Idle(Instant::now())),
        changed: Notify::new(),
    });
    let io = TokioIo::new(Tapped::new(stream, Arc::clone(&activity)));
    let app = TowerToHyperService::new(app);
    let request_timeout = cfg.request_timeout;
    let service = {
        let activity = Arc::clone(&activity);
        let counters = Arc::clone(counters);
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            // The admin API's refusals name the peer.
            request.extensions_mut().insert(ConnectInfo(peer));
            activity.set(|_| Phase::Busy);
            let busy = Busy(Arc::clone(&activity));
            let answer = hyper::service::Service::call(&app, request);
            let counters = Arc::clone(&counters);
            async move {
                let _busy = busy;
                match timeout(request_timeout, answer).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        counters.count(OpsCause::RequestTimeout);
                        Ok::<_, Infallible>(timed_out())
                    }
                }
            }
        })
    };
    let mut builder = http1::Builder::new();
    // Our watchdog keeps the header and idle deadlines (hyper's own header
    // timer cannot tell an idle connection from a slow header).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    loop {
        let notified = activity.changed.notified();
        let (deadline, cause) = match activity.phase() {
            Phase::Idle(since) => (Some(since + cfg.idle_timeout), OpsCause::IdleTimeout),
            Phase::Head(since) => (Some(since + cfg.header_timeout), OpsCause::HeaderTimeout),
            Phase::Busy => (None, OpsCause::RequestTimeout),
        };
        let expired = async {
            match deadline {
                Some(deadline) => sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    debug!(%peer, error = %e, "operations connection ended");
                }
                return;
            }
            () = notified => {}
            () = expired => {
                if cause == OpsCause::RequestTimeout {
                    continue;
                }
                counters.count(cause);
                debug!(%peer, cause = cause.name(), "operations connection cut");
                return;
            }
            () = stop.cancelled() => break,
        }
    }
    // Stopping: requests in progress finish, idle connections close now.
    conn.as_mut().graceful_shutdown();
    let _ = timeout(request_timeout, conn).await;
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::ops::admin::TokenFailures;
    use crate::ops::{AdminToken, Ops};

    const TOKEN: &str = "a token for the listener tests";

    /// An operations listener without a gate, under `cfg`.
    async fn start(cfg: OpsConfig) -> (SocketAddr, Arc<Ops>, CancellationToken) {
        let path = std::env::temp_dir().join(format!(
            "ops-listener-token-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&path, TOKEN).expect("token file");
        let token = AdminToken::from_file(&path).expect("token");
        let _ = std::fs::remove_file(&path);
        let ops = Arc::new(
            Ops::new("n".into(), "login", None, None, None, None, Some(token)).with_config(cfg),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(crate::ops::serve(listener, Arc::clone(&ops), stop.clone()));
        (addr, ops, stop)
    }

    fn count(ops: &Ops, cause: OpsCause) -> u64 {
        ops.counters
            .totals()
            .into_iter()
            .find(|(name, _)| *name == cause.name())
            .map_or(0, |(_, n)| n)
    }

    /// One `Connection: close` exchange: the status (0: none).
    async fn call(addr: SocketAddr, method: &str, path: &str, token: &str) -> u16 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer)
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    /// Reads one keep-alive answer to `GET /healthz` (its body is `ok\n`).
    async fn healthz(s: &mut TcpStream) {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\nok\n") {
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the answer");
            answer.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn the_connection_beyond_the_cap_is_closed_at_once() {
        let cfg = OpsConfig {
            max_connections: 2,
            ..OpsConfig::default()
        };
        let (addr, ops, stop) = start(cfg).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            // An answer proves the connection holds its permit.
            healthz(&mut s).await;
            held.push(s);
        }
        let mut third = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 16];
        let n = third.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "the third connection is closed without an answer");
        assert_eq!(count(&ops, OpsCause::Capacity), 1);
        drop(held);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_header_is_cut_at_the_header_deadline() {
        let (addr, ops, stop) = start(OpsConfig::default()).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHo")
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        assert!(answer.is_empty(), "no answer to half a head");
        assert_eq!(count(&ops, OpsCause::HeaderTimeout), 1);
        assert_eq!(count(&ops, OpsCause::IdleTimeout), 0);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_is_closed() {
        let (addr, ops, stop) = start(OpsConfig::default()).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        healthz(&mut s).await;
        healthz(&mut s).await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
        assert_eq!(count(&ops, OpsCause::IdleTimeout), 1);
        assert_eq!(count(&ops, OpsCause::HeaderTimeout), 0);
        stop.cancel();
    }

    /// Collects what the log subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn failed_tokens_are_rate_limited_per_address_and_logged_with_peer_method_path() {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        // A current-thread runtime: every task logs through this thread.
        let _guard = tracing::subscriber::set_default(subscriber);
        let cfg = OpsConfig {
            failed_tokens_per_minute: 2,
            ..OpsConfig::default()
        };
        let (addr, ops, stop) = start(cfg).await;
        assert_eq!(call(addr, "GET", "/admin/summary", TOKEN).await, 200);
        assert_eq!(call(addr, "GET", "/admin/summary", "wrong").await, 401);
        assert_eq!(
            call(addr, "POST", "/admin/users/x%0Ay/kick", "wrong").await,
            401
        );
        // Over the bound: 429 without looking at the token, right or not.
        assert_eq!(call(addr, "GET", "/admin/summary", "wrong").await, 429);
        assert_eq!(call(addr, "GET", "/admin/summary", TOKEN).await, 429);
        // Endpoints without a token are not affected.
        assert_eq!(call(addr, "GET", "/healthz", "").await, 200);
        assert_eq!(count(&ops, OpsCause::Token), 2);
        assert_eq!(count(&ops, OpsCause::TokenRate), 2);
        let text = String::from_utf8_lossy(&log.0.lock().expect("log")).into_owned();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("missing or wrong token"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("peer=127.0.0.1:"), "{}", lines[0]);
        assert!(lines[0].contains("method=GET") && lines[0].contains("path=/admin/summary"));
        assert!(
            lines[1].contains("method=POST") && lines[1].contains("path=/admin/users/x%0Ay/kick")
        );
        stop.cancel();
    }

    #[test]
    fn failures_count_per_address_in_one_minute_windows() {
        let failures = TokenFailures::new(2);
        let a: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
        let b: std::net::IpAddr = "10.0.0.2".parse().expect("ip");
        let now = Instant::now();
        failures.failed(a, now);
        assert!(!failures.over(a, now));
        failures.failed(a, now);
        assert!(failures.over(a, now));
        assert!(!failures.over(b, now), "another address is not affected");
        assert!(
            !failures.over(a, now + Duration::from_secs(61)),
            "a new minute"
        );
    }
}
