//! The load itself: worker threads, each a current-thread runtime whose one
//! task drives a share of the connections as futures (no task per request,
//! no task per connection, no locks between connections).
//!
//! An echo connection keeps `depth` requests in flight in slots. The request
//! number is `generation << slot_bits | slot`, so a response finds its slot
//! with a mask and the slot checks it is the generation in flight. A
//! response is checked (request number, ok byte, the echoed payload, which
//! carries the number in its first bytes so a swapped reply is caught)
//! and its slot is refilled at once. Everything one read brought in is answered with one write;
//! buffers are reused, so the hot path does not allocate.
//!
//! A push fan-out run (`--push-fanout`) opts every connection in to the
//! gate's extensions and has each send a join request once; then
//! connection 0, the speaker, sends say requests carrying `fanout:<n>`
//! while every connection (the speaker too) reads the pushes the agent
//! makes of them. The speaker keeps `depth` messages whose own copy has
//! not come back in flight, so the gate's queues stay bounded. Each push
//! is checked (sequence numbers without gaps, no gap notice, no kick) and
//! its latency taken from the time the speaker sent message `n` (a shared
//! table of send times, indexed by `n`).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::either::Either;

use crate::net::{Stream, Underlying};
use bytes::{Buf, BufMut, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use codec::ResponseFlag;
use loginproto::login::Suite;
use loginproto::token::Credentials;

use crate::gate::{Extensions, GateConn, Ticket};
use crate::login::{login_queued, login_with_timeout};
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

/// Size of the fan-out send-time table (message `n` at `n % FANOUT_RING`):
/// more than any `--depth`, and far more than a member can lag behind
/// before the gate cuts it as a slow reader.
const FANOUT_RING: usize = 1 << 16;

/// The marker a fan-out message carries, followed by its decimal number.
const FANOUT_MARK: &[u8] = b"fanout:";

/// A fan-out connection that has sent nothing for this long sends a
/// heartbeat, so the gate's idle timeout (60 s by default) spares members
/// that only read.
const FANOUT_HEARTBEAT: Duration = Duration::from_secs(20);

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
    sent_ns: Box<[AtomicU64]>,
    epoch: Instant,
    /// Fan-out: how many messages the speaker sent in all, once it stopped.
    said: watch::Sender<Option<u64>>,
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

    fn nanos_since_epoch(&self, at: Instant) -> u64 {
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

    fn error(&mut self, shared: &LoadState, message: impl FnOnce() -> String) {
        self.errors += 1;
        shared.errors.fetch_add(1, Ordering::Relaxed);
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(message());
        }
    }

    fn record(&mut self, latency: Duration) {
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
                    drivers.push(Box::pin(drive_echo(
                        conn.stream,
                        conn.buf,
                        plan.quota(conn.i),
                        &plan,
                        &shared,
                        &stats,
                    )));
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
struct Conn {
    /// Its player number.
    i: usize,
    stream: Stream,
    /// Bytes already read and not yet decoded.
    buf: BytesMut,
    /// Fan-out: the last push sequence number seen during setup.
    last_push: u32,
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
            stream: Either::Left(stream),
            buf: BytesMut::with_capacity(READ_BUF),
            last_push: 0,
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
    if plan.kind == Kind::Fanout || plan.opt_in {
        conn.set_extensions(Extensions::OptIn);
    }
    conn.connect(1)
        .await
        .map_err(|e| format!("handshake {user}: {e}"))?;
    if plan.kind == Kind::Fanout {
        join(&mut conn, plan)
            .await
            .map_err(|e| format!("{user}: {:?}: {e}", plan.fanout_join))?;
    }
    let last_push = conn.last_push();
    let (stream, mut buf) = conn
        .into_parts()
        .ok_or_else(|| format!("handshake {user}: connection gone"))?;
    buf.reserve(READ_BUF);
    Ok(Conn {
        i,
        stream,
        buf,
        last_push,
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

/// One in-flight request slot.
#[derive(Debug, Clone, Copy)]
struct Slot {
    number: u32,
    sent_at: Instant,
    busy: bool,
}

/// The payload of a request: a fixed pattern whose first bytes (up to 4)
/// are the request number, so each echo is distinguishable.
struct Payload {
    template: Vec<u8>,
}

impl Payload {
    fn new(size: usize) -> Payload {
        Payload {
            template: (0..size).map(|i| b'a' + (i % 26) as u8).collect(),
        }
    }

    fn stamp_len(&self) -> usize {
        self.template.len().min(4)
    }

    /// Appends the request package with request number `number` to `out`.
    fn encode(&self, number: u32, out: &mut BytesMut) {
        let len = self.template.len() + 4;
        // Sizes are validated up front to fit one package.
        out.put_u16(u16::try_from(len).unwrap_or(u16::MAX));
        let start = out.len();
        out.put_slice(&self.template);
        let stamp = self.stamp_len();
        out[start..start + stamp].copy_from_slice(&number.to_be_bytes()[..stamp]);
        out.put_u32(number);
    }

    fn matches(&self, number: u32, content: &[u8]) -> bool {
        let stamp = self.stamp_len();
        content.len() == self.template.len()
            && content[..stamp] == number.to_be_bytes()[..stamp]
            && content[stamp..] == self.template[stamp..]
    }
}

/// A response that failed its check.
struct Bad {
    /// The slot it answered, when the request number was the one in flight.
    slot: Option<usize>,
    message: String,
}

/// Drives one echo connection until it has nothing in flight and may send
/// no more, or it fails.
async fn drive_echo(
    mut stream: Stream,
    mut rbuf: BytesMut,
    quota: Option<u64>,
    plan: &Plan,
    shared: &LoadState,
    stats: &RefCell<Stats>,
) {
    let depth = plan.depth;
    let slot_bits = usize::BITS - (depth - 1).leading_zeros();
    let slot_mask = (1u32 << slot_bits).wrapping_sub(1);
    let step = 1u32 << slot_bits.min(31);
    let payload = Payload::new(plan.size);
    let mut wbuf = BytesMut::with_capacity(depth * (plan.size + 6) + 64);
    let started = Instant::now();
    let mut slots = vec![
        Slot {
            number: 0,
            sent_at: started,
            busy: false,
        };
        depth
    ];
    let mut sent: u64 = 0;
    let mut outstanding: usize = 0;
    let may_send = |sent: u64| quota.is_none_or(|q| sent < q);
    for (k, slot) in slots.iter_mut().enumerate() {
        if !may_send(sent) {
            break;
        }
        slot.number = k as u32;
        slot.busy = true;
        payload.encode(slot.number, &mut wbuf);
        sent += 1;
        outstanding += 1;
    }
    let timeout = plan.response_timeout;
    let mut last_progress = started;
    let sleep = tokio::time::sleep(timeout);
    tokio::pin!(sleep);
    let mut failure: Option<String> = None;
    loop {
        if !wbuf.is_empty() {
            if let Err(e) = stream.write_all(&wbuf).await {
                failure = Some(format!("write failed: {e}"));
                break;
            }
            wbuf.clear();
        }
        if outstanding == 0 {
            break;
        }
        let read = tokio::select! {
            biased;
            read = stream.read_buf(&mut rbuf) => read,
            () = &mut sleep => {
                let deadline = last_progress + timeout;
                if Instant::now() >= deadline {
                    failure = Some(format!(
                        "no response for {} with {outstanding} in flight",
                        crate::text::duration(timeout)
                    ));
                    break;
                }
                sleep.as_mut().reset(deadline.into());
                continue;
            }
        };
        match read {
            Ok(0) => {
                failure = Some("the server closed the connection".to_owned());
                break;
            }
            Err(e) => {
                failure = Some(format!("read failed: {e}"));
                break;
            }
            Ok(_) => {}
        }
        let now = Instant::now();
        last_progress = now;
        let phase = shared.phase.load(Ordering::Relaxed);
        let measuring = phase == MEASURE;
        let stopping = phase >= STOP;
        let mut got: u64 = 0;
        let mut st = stats.borrow_mut();
        while rbuf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rbuf[0], rbuf[1]]));
            if rbuf.len() < 2 + len {
                break;
            }
            got += 1;
            let frame = &rbuf[2..2 + len];
            let answered = match check(frame, &slots, slot_mask, &payload) {
                Ok(k) => {
                    if measuring {
                        st.record(now.saturating_duration_since(slots[k].sent_at));
                    }
                    Some(k)
                }
                Err(bad) => {
                    st.error(shared, || bad.message);
                    bad.slot
                }
            };
            if let Some(k) = answered {
                slots[k].busy = false;
                outstanding -= 1;
                if !stopping && may_send(sent) {
                    let number = slots[k].number.wrapping_add(step);
                    slots[k] = Slot {
                        number,
                        sent_at: now,
                        busy: true,
                    };
                    payload.encode(number, &mut wbuf);
                    sent += 1;
                    outstanding += 1;
                }
            }
            rbuf.advance(2 + len);
        }
        st.received += got;
        drop(st);
        shared.received.fetch_add(got, Ordering::Relaxed);
    }
    let mut st = stats.borrow_mut();
    st.sent += sent;
    st.lost += outstanding as u64;
    if let Some(message) = failure {
        st.error(shared, || message);
    }
}

/// Checks one response package against the slots; `Ok(slot)` when it is
/// the right answer to the request in flight there.
fn check(frame: &[u8], slots: &[Slot], mask: u32, payload: &Payload) -> Result<usize, Bad> {
    let n = frame.len();
    if n < 5 {
        return Err(Bad {
            slot: None,
            message: format!("malformed response package of {n} bytes"),
        });
    }
    let number = u32::from_be_bytes([frame[n - 4], frame[n - 3], frame[n - 2], frame[n - 1]]);
    let flag = frame[n - 5];
    let content = &frame[..n - 5];
    let k = (number & mask) as usize;
    match slots.get(k) {
        Some(slot) if slot.busy && slot.number == number => {}
        _ => {
            return Err(Bad {
                slot: None,
                message: format!("response for request number {number}, which is not in flight"),
            });
        }
    }
    if flag != 1 {
        return Err(Bad {
            slot: Some(k),
            message: format!("s={number}: ok byte {flag} (expected 1)"),
        });
    }
    if !payload.matches(number, content) {
        return Err(Bad {
            slot: Some(k),
            message: format!(
                "s={number}: payload is not the echo ({} bytes: {})",
                content.len(),
                crate::text::payload(content)
            ),
        });
    }
    Ok(k)
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

/// The number after [`FANOUT_MARK`] in a push, if any.
fn fanout_number(content: &[u8]) -> Option<u64> {
    let at = content
        .windows(FANOUT_MARK.len())
        .position(|w| w == FANOUT_MARK)?;
    let digits = &content[at + FANOUT_MARK.len()..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(digits.get(..end)?).ok()?.parse().ok()
}

/// Drives one fan-out connection: the speaker (player 0) sends messages
/// and reads its copies; every connection reads and checks the pushes,
/// until the speaker stopped and every message it sent was delivered here
/// (or nothing arrives for `--response-timeout`).
async fn drive_fanout(conn: Conn, plan: &Plan, shared: &LoadState, stats: &RefCell<Stats>) {
    let Conn {
        i,
        mut stream,
        buf: mut rbuf,
        mut last_push,
    } = conn;
    let speaker = i == 0;
    let depth = plan.depth as u64;
    let quota = if speaker { plan.requests } else { Some(0) };
    let mut said_rx = shared.said.subscribe();
    let mut wbuf = BytesMut::with_capacity(depth as usize * (plan.fanout_say.len() + 32));
    let (mut said, mut answered, mut got) = (0u64, 0u64, 0u64);
    let mut failure: Option<String> = None;
    let timeout = plan.response_timeout;
    let mut last_read = Instant::now();
    let mut last_sent = Instant::now();
    let mut total: Option<u64> = None;
    let mut published = !speaker;
    loop {
        let phase = shared.phase.load(Ordering::Relaxed);
        if speaker {
            let may_say = phase < STOP && quota.is_none_or(|q| said < q);
            while may_say && said < got + depth && quota.is_none_or(|q| said < q) {
                let content = format!("{} fanout:{said}", plan.fanout_say);
                let len = content.len() + 4;
                wbuf.put_u16(u16::try_from(len).unwrap_or(u16::MAX));
                wbuf.put_slice(content.as_bytes());
                wbuf.put_u32(said as u32);
                let now = Instant::now();
                shared.sent_ns[(said as usize) % FANOUT_RING]
                    .store(shared.nanos_since_epoch(now), Ordering::Relaxed);
                said += 1;
            }
            if !may_say && !published {
                published = true;
                shared.said.send_replace(Some(said));
            }
        }
        if !wbuf.is_empty() {
            if let Err(e) = stream.write_all(&wbuf).await {
                failure = Some(format!("write failed: {e}"));
                break;
            }
            wbuf.clear();
            last_sent = Instant::now();
        }
        if total.is_none() {
            total = *said_rx.borrow_and_update();
        }
        if let Some(total) = total {
            if got >= total && (!speaker || answered >= said) {
                break;
            }
        }
        let next_heartbeat = last_sent + FANOUT_HEARTBEAT;
        let give_up = last_read + timeout;
        let read = tokio::select! {
            read = stream.read_buf(&mut rbuf) => read,
            changed = said_rx.changed(), if total.is_none() => {
                if changed.is_err() {
                    failure = Some("the run ended without a message count".to_owned());
                    break;
                }
                continue;
            }
            () = tokio::time::sleep_until(next_heartbeat.min(give_up).into()) => {
                let now = Instant::now();
                if now >= give_up {
                    failure = Some(format!(
                        "no push for {}",
                        crate::text::duration(timeout)
                    ));
                    break;
                }
                if now >= next_heartbeat {
                    wbuf.put_u16(0);
                }
                continue;
            }
        };
        match read {
            Ok(0) => {
                failure = Some("the gate closed the connection".to_owned());
                break;
            }
            Err(e) => {
                failure = Some(format!("read failed: {e}"));
                break;
            }
            Ok(_) => {}
        }
        let now = Instant::now();
        last_read = now;
        let measuring = shared.phase.load(Ordering::Relaxed) == MEASURE;
        let mut st = stats.borrow_mut();
        let mut delivered = 0;
        while rbuf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rbuf[0], rbuf[1]]));
            if rbuf.len() < 2 + len {
                break;
            }
            let frame = &rbuf[2..2 + len];
            // An empty package answers a heartbeat.
            if let Some(split) = frame.len().checked_sub(5) {
                let (content, trailer) = frame.split_at(split);
                let flag = ResponseFlag(trailer[0]);
                let seq = u32::from_be_bytes([trailer[1], trailer[2], trailer[3], trailer[4]]);
                match flag {
                    ResponseFlag::PUSH => {
                        if seq != last_push.wrapping_add(1) {
                            st.error(shared, || format!("push #{seq} after #{last_push}"));
                        }
                        last_push = seq;
                        if let Some(n) = fanout_number(content) {
                            got += 1;
                            delivered += 1;
                            if measuring {
                                let sent = shared.sent_ns[(n as usize) % FANOUT_RING]
                                    .load(Ordering::Relaxed);
                                let at = shared.nanos_since_epoch(now);
                                st.record(Duration::from_nanos(at.saturating_sub(sent)));
                            }
                        }
                    }
                    ResponseFlag::PUSH_GAP => {
                        st.error(shared, || format!("pushes up to #{seq} lost"));
                        last_push = seq;
                    }
                    ResponseFlag::KICK => st.error(shared, || {
                        format!("kicked: {}", crate::text::payload(content))
                    }),
                    ResponseFlag::WELCOME => {}
                    ResponseFlag::OK if speaker => answered += 1,
                    _ => {
                        answered += 1;
                        st.error(shared, || {
                            format!(
                                "answer flag {} s={seq} {}",
                                flag.0,
                                crate::text::payload(content)
                            )
                        });
                    }
                }
            } else if len != 0 {
                st.error(shared, || format!("malformed package of {len} bytes"));
            }
            rbuf.advance(2 + len);
        }
        drop(st);
        shared.received.fetch_add(delivered, Ordering::Relaxed);
    }
    if !published {
        // The speaker failed: tell the members how much there is to wait for.
        shared.said.send_replace(Some(said));
    }
    let expected = total.or(*shared.said.borrow()).unwrap_or(said);
    let mut st = stats.borrow_mut();
    st.said += said;
    st.sent += expected;
    st.received += got;
    st.lost += expected.saturating_sub(got);
    if let Some(message) = failure {
        st.error(shared, || message);
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
    fn payload_carries_the_request_number() {
        let p = Payload::new(16);
        let mut out = BytesMut::new();
        p.encode(0x01020304, &mut out);
        assert_eq!(&out[..2], &[0, 20]);
        assert_eq!(&out[2..6], &[1, 2, 3, 4]);
        assert_eq!(&out[18..], &[1, 2, 3, 4]);
        assert!(p.matches(0x01020304, &out[2..18]));
        assert!(!p.matches(0x01020305, &out[2..18]));
        assert!(!p.matches(0x01020304, &out[2..17]));

        let tiny = Payload::new(2);
        let mut out = BytesMut::new();
        tiny.encode(0xaabbccdd, &mut out);
        assert_eq!(&out[..], &[0, 6, 0xaa, 0xbb, 0xaa, 0xbb, 0xcc, 0xdd]);
        assert!(tiny.matches(0xaabbccdd, &[0xaa, 0xbb]));
        assert!(Payload::new(0).matches(7, &[]));
    }

    fn response(content: &[u8], flag: u8, number: u32) -> Vec<u8> {
        let mut frame = content.to_vec();
        frame.push(flag);
        frame.extend_from_slice(&number.to_be_bytes());
        frame
    }

    #[test]
    fn check_finds_the_slot_and_rejects_wrong_answers() {
        let p = Payload::new(8);
        let now = Instant::now();
        let slots = [
            Slot {
                number: 4,
                sent_at: now,
                busy: true,
            },
            Slot {
                number: 1,
                sent_at: now,
                busy: true,
            },
            Slot {
                number: 2,
                sent_at: now,
                busy: false,
            },
        ];
        let mask = 3;
        let echo = |s: u32| {
            let mut out = BytesMut::new();
            p.encode(s, &mut out);
            out[2..10].to_vec()
        };
        assert_eq!(
            check(&response(&echo(4), 1, 4), &slots, mask, &p).ok(),
            Some(0)
        );
        assert_eq!(
            check(&response(&echo(1), 1, 1), &slots, mask, &p).ok(),
            Some(1)
        );
        // Not in flight: an old generation, an idle slot, a slot out of range.
        for s in [0, 2, 3] {
            let bad = check(&response(&echo(s), 1, s), &slots, mask, &p)
                .err()
                .unwrap();
            assert_eq!(bad.slot, None);
        }
        let bad = check(&response(&[], 0, 4), &slots, mask, &p).err().unwrap();
        assert_eq!(bad.slot, Some(0));
        assert!(bad.message.contains("ok byte 0"));
        let bad = check(&response(&echo(1), 1, 4), &slots, mask, &p)
            .err()
            .unwrap();
        assert_eq!(bad.slot, Some(0));
        assert!(bad.message.contains("not the echo"));
        assert!(check(&[1, 2, 3], &slots, mask, &p).is_err());
    }

    #[test]
    fn fanout_numbers_are_found_in_any_push_text() {
        assert_eq!(fanout_number(b"[bench] bench0: fanout:42"), Some(42));
        assert_eq!(fanout_number(b"fanout:7 tail"), Some(7));
        assert_eq!(fanout_number(b"* bench3 joined bench"), None);
        assert_eq!(fanout_number(b"fanout:"), None);
        assert_eq!(fanout_number(b"fanout:x1"), None);
    }

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
            away: false,
            queue_notices: false,
        };
        let total: u64 = (0..3).map(|i| plan.quota(i).unwrap()).sum();
        assert_eq!(total, 10);
        assert_eq!(plan.quota(0), Some(4));
        assert_eq!(plan.user(7), "u7");
    }
}
