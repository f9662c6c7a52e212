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
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::config::OpsConfig;
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

/// A connection's socket that tells its [`Activity`] when bytes of a new
/// request arrive.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            // Only the first byte after an idle spell starts the header
            // clock; bytes of a body (busy) or more of a head change
            // nothing.
            if matches!(self.activity.phase(), Phase::Idle(_)) {
                self.activity.set(|_| Phase::Head(Instant::now()));
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
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
    let io = TokioIo::new(Watched {
        io: stream,
        activity: Arc::clone(&activity),
    });
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
