//! The load itself: worker threads, each a current-thread runtime whose one
//! task drives a share of the connections as futures (no task per request,
//! no task per connection, no locks between connections).
//!
//! An echo connection keeps `depth` requests in flight in slots. The session
//! id is `generation << slot_bits | slot`, so a response finds its slot with
//! a mask and the slot checks it is the generation in flight. A response is
//! checked (session, ok byte, the echoed payload, which carries the session
//! in its first bytes so a swapped reply is caught) and its slot is refilled
//! at once. Everything one read brought in is answered with one write;
//! buffers are reused, so the hot path does not allocate.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use loginproto::login::Suite;
use loginproto::token::Credentials;

use crate::gate::{GateConn, Ticket};
use crate::login::login_with_timeout;
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
}

/// The three kinds of load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Echo,
    Logins,
    Idle,
}

impl Plan {
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
pub(crate) struct Shared {
    /// The phase, read by connections once per read.
    pub phase: AtomicU8,
    /// Responses (or logins) received so far, for the progress bar.
    pub received: AtomicU64,
    /// Errors so far, for the progress bar.
    pub errors: AtomicU64,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            phase: AtomicU8::new(SETUP),
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
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
    pub samples: Vec<String>,
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
            samples: Vec::new(),
        }
    }

    fn error(&mut self, shared: &Shared, message: impl FnOnce() -> String) {
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
    shared: Arc<Shared>,
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
        let conns: Vec<(usize, TcpStream, BytesMut)> = if plan.kind == Kind::Logins {
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
        let mut drivers = FuturesUnordered::new();
        match plan.kind {
            Kind::Echo => {
                for (i, stream, buf) in conns {
                    drivers.push(futures::future::Either::Left(drive_echo(
                        stream,
                        buf,
                        plan.quota(i),
                        &plan,
                        &shared,
                        &stats,
                    )));
                }
            }
            Kind::Logins => {
                for &i in &ids {
                    drivers.push(futures::future::Either::Right(
                        futures::future::Either::Left(drive_logins(i, &plan, &shared, &stats)),
                    ));
                }
            }
            Kind::Idle => {
                for (_, stream, _) in conns {
                    drivers.push(futures::future::Either::Right(
                        futures::future::Either::Right(hold_idle(
                            stream,
                            phase.clone(),
                            &shared,
                            &stats,
                        )),
                    ));
                }
            }
        }
        while drivers.next().await.is_some() {}
        drop(drivers);
        stats.into_inner()
    })
}

/// Opens connection `i`: login + handshake with index 1, or a plain TCP
/// connection for `--raw`.
async fn setup(i: usize, plan: &Plan) -> Result<(usize, TcpStream, BytesMut), String> {
    if plan.raw {
        let stream = tokio::time::timeout(plan.timeout, TcpStream::connect(&plan.gate_addr))
            .await
            .map_err(|_| format!("connect to {} timed out", plan.gate_addr))?
            .map_err(|e| format!("connect to {}: {e}", plan.gate_addr))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        return Ok((i, stream, BytesMut::with_capacity(READ_BUF)));
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
    let conn = GateConn::open(plan.gate_addr.clone(), ticket, 1, plan.timeout)
        .await
        .map_err(|e| format!("handshake {user}: {e}"))?;
    let (stream, mut buf) = conn
        .into_parts()
        .ok_or_else(|| format!("handshake {user}: connection gone"))?;
    buf.reserve(READ_BUF);
    Ok((i, stream, buf))
}

/// One in-flight request slot.
#[derive(Debug, Clone, Copy)]
struct Slot {
    session: u32,
    sent_at: Instant,
    busy: bool,
}

/// The payload of a request: a fixed pattern whose first bytes (up to 4)
/// are the session, so each echo is distinguishable.
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

    /// Appends the request package for `session` to `out`.
    fn encode(&self, session: u32, out: &mut BytesMut) {
        let len = self.template.len() + 4;
        // Sizes are validated up front to fit one package.
        out.put_u16(u16::try_from(len).unwrap_or(u16::MAX));
        let start = out.len();
        out.put_slice(&self.template);
        let stamp = self.stamp_len();
        out[start..start + stamp].copy_from_slice(&session.to_be_bytes()[..stamp]);
        out.put_u32(session);
    }

    fn matches(&self, session: u32, content: &[u8]) -> bool {
        let stamp = self.stamp_len();
        content.len() == self.template.len()
            && content[..stamp] == session.to_be_bytes()[..stamp]
            && content[stamp..] == self.template[stamp..]
    }
}

/// A response that failed its check.
struct Bad {
    /// The slot it answered, when the session was the one in flight.
    slot: Option<usize>,
    message: String,
}

/// Drives one echo connection until it has nothing in flight and may send
/// no more, or it fails.
async fn drive_echo(
    mut stream: TcpStream,
    mut rbuf: BytesMut,
    quota: Option<u64>,
    plan: &Plan,
    shared: &Shared,
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
            session: 0,
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
        slot.session = k as u32;
        slot.busy = true;
        payload.encode(slot.session, &mut wbuf);
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
                    let session = slots[k].session.wrapping_add(step);
                    slots[k] = Slot {
                        session,
                        sent_at: now,
                        busy: true,
                    };
                    payload.encode(session, &mut wbuf);
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
    let session = u32::from_be_bytes([frame[n - 4], frame[n - 3], frame[n - 2], frame[n - 1]]);
    let flag = frame[n - 5];
    let content = &frame[..n - 5];
    let k = (session & mask) as usize;
    match slots.get(k) {
        Some(slot) if slot.busy && slot.session == session => {}
        _ => {
            return Err(Bad {
                slot: None,
                message: format!("response for session {session}, which is not in flight"),
            });
        }
    }
    if flag != 1 {
        return Err(Bad {
            slot: Some(k),
            message: format!("s={session}: ok byte {flag} (expected 1)"),
        });
    }
    if !payload.matches(session, content) {
        return Err(Bad {
            slot: Some(k),
            message: format!(
                "s={session}: payload is not the echo ({} bytes: {})",
                content.len(),
                crate::text::payload(content)
            ),
        });
    }
    Ok(k)
}

/// Logs user `i` in again and again until the run stops.
async fn drive_logins(i: usize, plan: &Plan, shared: &Shared, stats: &RefCell<Stats>) {
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
        let result =
            login_with_timeout(&plan.login_addr, plan.suite, creds.clone(), plan.timeout).await;
        let latency = started.elapsed();
        done += 1;
        let measuring = shared.phase.load(Ordering::Relaxed) == MEASURE;
        let mut st = stats.borrow_mut();
        st.sent += 1;
        st.received += 1;
        match result {
            Ok(_) => {
                if measuring {
                    st.record(latency);
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
    stream: TcpStream,
    mut phase: watch::Receiver<u8>,
    shared: &Shared,
    stats: &RefCell<Stats>,
) {
    let _ = phase.wait_for(|p| *p >= STOP).await;
    let mut probe = [0u8; 256];
    let closed = match stream.try_read(&mut probe) {
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
    fn payload_carries_the_session() {
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

    fn response(content: &[u8], flag: u8, session: u32) -> Vec<u8> {
        let mut frame = content.to_vec();
        frame.push(flag);
        frame.extend_from_slice(&session.to_be_bytes());
        frame
    }

    #[test]
    fn check_finds_the_slot_and_rejects_wrong_answers() {
        let p = Payload::new(8);
        let now = Instant::now();
        let slots = [
            Slot {
                session: 4,
                sent_at: now,
                busy: true,
            },
            Slot {
                session: 1,
                sent_at: now,
                busy: true,
            },
            Slot {
                session: 2,
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
        };
        let total: u64 = (0..3).map(|i| plan.quota(i).unwrap()).sum();
        assert_eq!(total, 10);
        assert_eq!(plan.quota(0), Some(4));
        assert_eq!(plan.user(7), "u7");
    }
}
