//! The load itself: worker threads, each a current-thread runtime whose one
//! task drives a share of the connections as futures (no task per request,
//! no task per connection, no locks between connections).
//!
//! This module holds what every kind of load shares (the plan, the phases,
//! the counts, setting connections up) and the two small kinds, login
//! churn and idle connections. Echo load is [`super::echo`], push fan-out
//! [`super::fanout`]: each is one driver future per connection, started
//! by [`worker`].

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use codec::ResponseFlag;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use loginproto::login::Suite;
use loginproto::token::Credentials;
use tokio::sync::{mpsc, watch};
use tokio_util::either::Either;

use super::echo::drive_echo;
use super::fanout::{FANOUT_RING, drive_fanout};
use crate::gate::{Extensions, GateConn, Inbound, Ticket};
use crate::login::{login_queued, login_with_timeout};
use crate::net::{Stream, Underlying};
use crate::session::new_histogram;

/// Connections are being set up.
pub(crate) const SETUP: u8 = 0;
/// Load runs, nothing is recorded.
pub(crate) const WARMUP: u8 = 1;
/// Load runs and is recorded.
pub(crate) const MEASURE: u8 = 2;
/// No new requests; outstanding ones are awaited.
pub(crate) const STOP: u8 = 3;

/// How many error messages a report keeps as samples.
const MAX_SAMPLES: usize = 5;

/// Initial read buffer per connection.
const READ_BUF: usize = 8 * 1024;

/// What to run, shared read-only by all workers.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub kind: Kind,
    pub raw: bool,
    pub login_addr: String,
    pub gate_addr: String,
    pub server: String,
    pub user_prefix: String,
    pub password: String,
    pub suite: Suite,
    pub conns: usize,
    pub depth: usize,
    pub size: usize,
    /// Total requests (or logins), when the run is bounded by count.
    pub requests: Option<u64>,
    pub response_timeout: Duration,
    pub setup_concurrency: usize,
    pub timeout: Duration,
    /// Fan-out: the request each connection sends once, before the load.
    pub fanout_join: String,
    /// Fan-out: the speaker's request, followed by ` fanout:<n>`.
    pub fanout_say: String,
    /// Local addresses to dial the gate from, round robin (empty: any).
    pub source_addrs: Vec<std::net::IpAddr>,
    /// Idle: opt in to the extensions.
    pub opt_in: bool,
    /// Echo, idle: opt in and ask for the sealed channel.
    pub seal: bool,
    /// Echo: open loop, this many requests per second per connection.
    pub rate: Option<f64>,
    /// Idle: close each connection after its handshake.
    pub away: bool,
    /// Logins: ask for queue notices and record each login's first queue
    /// position and when it finished.
    pub queue_notices: bool,
}

/// The kinds of load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Echo,
    Logins,
    Idle,
    Fanout,
}

impl Plan {
    /// The local address connection `i` dials the gate from.
    fn source(&self, i: usize) -> Option<std::net::IpAddr> {
        (!self.source_addrs.is_empty()).then(|| self.source_addrs[i % self.source_addrs.len()])
    }

    /// The share of `--requests` connection `i` sends.
    fn quota(&self, i: usize) -> Option<u64> {
        let total = self.requests?;
        let conns = self.conns as u64;
        let i = i as u64;
        Some(total / conns + u64::from(i < total % conns))
    }

    fn user(&self, i: usize) -> String {
        format!("{}{i}", self.user_prefix)
    }
}

/// State the coordinator and all workers see.
#[derive(Debug)]
pub(crate) struct LoadState {
    /// The phase, read by connections once per read.
    pub phase: AtomicU8,
    /// Responses (or logins) received so far, for the progress bar.
    pub received: AtomicU64,
    /// Errors so far, for the progress bar.
    pub errors: AtomicU64,
    /// Fan-out: when the speaker sent message `n`, in ns since `epoch`, at
    /// `n % FANOUT_RING` (empty for other kinds).
    pub(super) sent_ns: Box<[AtomicU64]>,
    pub(super) epoch: Instant,
    /// Fan-out: how many messages the speaker sent in all, once it stopped.
    pub(super) said: watch::Sender<Option<u64>>,
}

impl LoadState {
    pub fn new(kind: Kind) -> LoadState {
        let ring = if kind == Kind::Fanout { FANOUT_RING } else { 0 };
        LoadState {
            phase: AtomicU8::new(SETUP),
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            sent_ns: (0..ring).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            said: watch::Sender::new(None),
        }
    }

    pub(super) fn nanos_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One login of a `--queue-notices` run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueuedLogin {
    /// Its first notice's position (`None`: admitted without waiting).
    pub position: Option<u64>,
    /// Its place in the server's arrival order (`None`: not queued).
    pub number: Option<u64>,
    /// When the server admitted it (line 3 arrived), or when it finished.
    pub admitted_ns: u64,
}

/// One worker's (and after merging, the whole run's) counts.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    pub hist: Histogram<u64>,
    pub established: u64,
    pub sent: u64,
    pub received: u64,
    pub measured: u64,
    pub errors: u64,
    pub lost: u64,
    /// Fan-out: messages the speaker sent.
    pub said: u64,
    pub samples: Vec<String>,
    /// Logins with queue notices: what each heard, and when it finished
    /// (ns since the run began).
    pub queue: Vec<QueuedLogin>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            hist: new_histogram(),
            established: 0,
            sent: 0,
            received: 0,
            measured: 0,
            errors: 0,
            lost: 0,
            said: 0,
            samples: Vec::new(),
            queue: Vec::new(),
        }
    }

    pub(super) fn error(&mut self, shared: &LoadState, message: impl FnOnce() -> String) {
        self.errors += 1;
        shared.errors.fetch_add(1, Ordering::Relaxed);
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(message());
        }
    }

    pub(super) fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(micros.max(1));
        self.measured += 1;
    }

    pub fn merge(&mut self, other: &Stats) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.established += other.established;
        self.sent += other.sent;
        self.received += other.received;
        self.measured += other.measured;
        self.errors += other.errors;
        self.lost += other.lost;
        self.said += other.said;
        self.queue.extend_from_slice(&other.queue);
        for s in &other.samples {
            if self.samples.len() < MAX_SAMPLES {
                self.samples.push(s.clone());
            }
        }
    }
}

/// A worker's report after setup: connections that are up.
#[derive(Debug)]
pub(crate) struct Ready {
    pub established: usize,
}

/// Runs one worker thread to completion: set up `ids`' connections, tell
/// `ready`, wait for the load phase, drive, return the counts.
pub(crate) fn worker(
    ids: Vec<usize>,
    plan: Arc<Plan>,
    shared: Arc<LoadState>,
    ready: mpsc::UnboundedSender<Ready>,
    mut phase: watch::Receiver<u8>,
) -> Stats {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let mut stats = Stats::new();
            stats.error(&shared, || format!("cannot start a worker runtime: {e}"));
            let _ = ready.send(Ready { established: 0 });
            return stats;
        }
    };
    runtime.block_on(async move {
        let stats = RefCell::new(Stats::new());
        let per_worker = plan.setup_concurrency.max(1);
        let conns: Vec<Conn> = if plan.kind == Kind::Logins {
            Vec::new()
        } else {
            let results: Vec<_> = futures::stream::iter(ids.iter().copied())
                .map(|i| setup(i, &plan))
                .buffer_unordered(per_worker)
                .collect()
                .await;
            let mut up = Vec::with_capacity(results.len());
            for result in results {
                match result {
                    Ok(conn) => up.push(conn),
                    Err(message) => stats.borrow_mut().error(&shared, || message),
                }
            }
            up
        };
        stats.borrow_mut().established = conns.len() as u64;
        let established = if plan.kind == Kind::Logins {
            ids.len()
        } else {
            conns.len()
        };
        let _ = ready.send(Ready { established });
        if phase.wait_for(|p| *p >= WARMUP).await.is_err() {
            return stats.into_inner();
        }
        // One future per connection, boxed (one allocation each at start)
        // so the kinds can share the set.
        let mut drivers: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + '_>>> =
            FuturesUnordered::new();
        match plan.kind {
            Kind::Echo => {
                for conn in conns {
                    let quota = plan.quota(conn.i);
                    match plan.rate {
                        Some(rate) => drivers.push(Box::pin(super::open::drive_open(
                            conn.stream,
                            conn.buf,
                            conn.channel,
                            rate,
                            conn.i as f64 / plan.conns as f64,
                            quota,
                            &plan,
                            &shared,
                            &stats,
                        ))),
                        None => drivers.push(Box::pin(drive_echo(
                            conn.stream,
                            conn.buf,
                            conn.channel,
                            quota,
                            &plan,
                            &shared,
                            &stats,
                        ))),
                    }
                }
            }
            Kind::Logins => {
                for &i in &ids {
                    drivers.push(Box::pin(drive_logins(i, &plan, &shared, &stats)));
                }
            }
            Kind::Idle if plan.away => {
                // The sessions stay on the gate, away; nothing to hold.
                drop(conns);
                let mut phase = phase.clone();
                let _ = phase.wait_for(|p| *p >= STOP).await;
            }
            Kind::Idle => {
                for conn in conns {
                    drivers.push(Box::pin(hold_idle(
                        conn.stream,
                        phase.clone(),
                        &shared,
                        &stats,
                    )));
                }
            }
            Kind::Fanout => {
                for conn in conns {
                    drivers.push(Box::pin(drive_fanout(conn, &plan, &shared, &stats)));
                }
            }
        }
        while drivers.next().await.is_some() {}
        drop(drivers);
        stats.into_inner()
    })
}

/// A connection set up for the load.
pub(super) struct Conn {
    /// Its player number.
    pub(super) i: usize,
    pub(super) stream: Stream,
    /// Bytes already read and not yet decoded.
    pub(super) buf: BytesMut,
    /// Fan-out: the last push sequence number seen during setup.
    pub(super) last_push: u32,
    /// The sealed channel (`--seal`).
    pub(super) channel: Option<loginproto::seal::Channel>,
}

/// Opens connection `i`: login + handshake with index 1 (opted in, and the
/// join request answered, for a fan-out), or a plain TCP connection for
/// `--raw`.
async fn setup(i: usize, plan: &Plan) -> Result<Conn, String> {
    if plan.raw {
        let stream = tokio::time::timeout(
            plan.timeout,
            crate::net::connect(&plan.gate_addr, plan.source(i)),
        )
        .await
        .map_err(|_| format!("connect to {} timed out", plan.gate_addr))?
        .map_err(|e| format!("connect to {}: {e}", plan.gate_addr))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        return Ok(Conn {
            i,
            stream: Either::Left(Either::Left(stream)),
            buf: BytesMut::with_capacity(READ_BUF),
            last_push: 0,
            channel: None,
        });
    }
    let user = plan.user(i);
    let creds = Credentials::new(
        user.as_bytes(),
        plan.server.as_bytes(),
        plan.password.as_bytes(),
    );
    let login = login_with_timeout(&plan.login_addr, plan.suite, creds, plan.timeout)
        .await
        .map_err(|e| format!("login {user}: {e}"))?;
    let ticket = Ticket::new(user.as_bytes(), plan.server.as_bytes(), &login);
    let mut conn = GateConn::new(plan.gate_addr.clone(), ticket, plan.timeout);
    conn.set_source(plan.source(i));
    if plan.kind == Kind::Fanout || plan.opt_in || plan.seal {
        conn.set_extensions(Extensions::OptIn);
    }
    conn.set_seal(plan.seal);
    conn.connect(1)
        .await
        .map_err(|e| format!("handshake {user}: {e}"))?;
    if plan.kind == Kind::Echo && plan.seal {
        // The welcome comes first on an opted-in connection: out of the
        // way of the echo's answers.
        match tokio::time::timeout(plan.timeout, conn.recv_inbound()).await {
            Ok(Ok(Some(Inbound::Welcome { .. }))) => {}
            other => return Err(format!("handshake {user}: no welcome: {other:?}")),
        }
    }
    if plan.kind == Kind::Fanout {
        join(&mut conn, plan)
            .await
            .map_err(|e| format!("{user}: {:?}: {e}", plan.fanout_join))?;
    }
    let last_push = conn.last_push();
    let (stream, mut buf, channel) = conn
        .into_parts()
        .ok_or_else(|| format!("handshake {user}: connection gone"))?;
    if plan.seal && channel.is_none() {
        return Err(format!("handshake {user}: the connection is not sealed"));
    }
    buf.reserve(READ_BUF);
    Ok(Conn {
        i,
        stream,
        buf,
        last_push,
        channel,
    })
}

/// Sends the fan-out join request and waits for its (ok) answer; pushes
/// arriving meanwhile (others joining) only advance the push count.
async fn join(conn: &mut GateConn, plan: &Plan) -> Result<(), String> {
    conn.send(plan.fanout_join.as_bytes(), 0)
        .await
        .map_err(|e| e.to_string())?;
    let answer = async {
        loop {
            match conn.recv().await {
                Ok(Some(r)) if r.flag == ResponseFlag::PUSH => {}
                Ok(Some(r)) if r.flag == ResponseFlag::OK && r.number == 0 => return Ok(()),
                Ok(Some(r)) => {
                    return Err(format!(
                        "answered flag {} request number {} {}",
                        r.flag.0,
                        r.number,
                        crate::text::payload(&r.content)
                    ));
                }
                Ok(None) => return Err("the gate closed the connection".to_owned()),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(plan.timeout, answer)
        .await
        .map_err(|_| "no answer".to_owned())?
}

/// Logs user `i` in again and again until the run stops.
async fn drive_logins(i: usize, plan: &Plan, shared: &LoadState, stats: &RefCell<Stats>) {
    let user = plan.user(i);
    let creds = Credentials::new(
        user.as_bytes(),
        plan.server.as_bytes(),
        plan.password.as_bytes(),
    );
    let quota = plan.quota(i);
    let mut done: u64 = 0;
    while shared.phase.load(Ordering::Relaxed) < STOP && quota.is_none_or(|q| done < q) {
        let started = Instant::now();
        let result = if plan.queue_notices {
            login_queued(
                &plan.login_addr,
                plan.suite,
                creds.clone(),
                None,
                plan.timeout,
            )
            .await
            .map(|(_, wait)| Some(wait))
        } else {
            login_with_timeout(&plan.login_addr, plan.suite, creds.clone(), plan.timeout)
                .await
                .map(|_| None)
        };
        let latency = started.elapsed();
        done += 1;
        let measuring = shared.phase.load(Ordering::Relaxed) == MEASURE;
        let mut st = stats.borrow_mut();
        st.sent += 1;
        st.received += 1;
        match result {
            Ok(queued) => {
                if measuring {
                    st.record(latency);
                }
                if let Some(wait) = queued {
                    st.queue.push(QueuedLogin {
                        position: wait.first_position,
                        number: wait.number,
                        admitted_ns: shared
                            .nanos_since_epoch(wait.admitted_at.unwrap_or_else(Instant::now)),
                    });
                }
            }
            Err(e) => st.error(shared, || format!("login {user}: {e}")),
        }
        drop(st);
        shared.received.fetch_add(1, Ordering::Relaxed);
    }
}

/// Holds an idle session until the run stops, then checks the gate did
/// not close it.
async fn hold_idle(
    stream: Stream,
    mut phase: watch::Receiver<u8>,
    shared: &LoadState,
    stats: &RefCell<Stats>,
) {
    let _ = phase.wait_for(|p| *p >= STOP).await;
    let mut probe = [0u8; 256];
    let closed = match stream.tcp().try_read(&mut probe) {
        Ok(0) => Some("the gate closed an idle session".to_owned()),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) => Some(format!("idle session failed: {e}")),
    };
    if let Some(message) = closed {
        stats.borrow_mut().error(shared, || message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_add_up() {
        let plan = Plan {
            kind: Kind::Echo,
            raw: true,
            login_addr: String::new(),
            gate_addr: String::new(),
            server: String::new(),
            user_prefix: "u".into(),
            password: String::new(),
            suite: Suite::X25519,
            conns: 3,
            depth: 1,
            size: 1,
            requests: Some(10),
            response_timeout: Duration::from_secs(1),
            setup_concurrency: 1,
            timeout: Duration::from_secs(1),
            fanout_join: String::new(),
            fanout_say: String::new(),
            source_addrs: Vec::new(),
            opt_in: false,
            seal: false,
            rate: None,
            away: false,
            queue_notices: false,
        };
        let total: u64 = (0..3).map(|i| plan.quota(i).unwrap()).sum();
        assert_eq!(total, 10);
        assert_eq!(plan.quota(0), Some(4));
        assert_eq!(plan.user(7), "u7");
    }
}
