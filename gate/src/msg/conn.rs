//! One client connection, on one task: the handshake, then requests and
//! responses until the connection ends.
//!
//! The task waits for its socket and its [`ConnLink`] with one hand-written
//! poll (no `select!`, no waiter stored in the task), then reads with
//! `try_read` and writes with `try_write`, so it never has a read or write
//! half-done across a wait.
//!
//! Each time the socket is readable, the task reads into a per-thread
//! scratch buffer, runs every complete package (an inline agent answers
//! right there), writes all the responses with one `write` straight from a
//! per-thread output buffer, and keeps only what is left over: the tail of
//! a partial package, or bytes the socket would not take. So a busy
//! connection allocates nothing per read but its responses (which the cache
//! keeps anyway), and an idle connection holds no buffer at all.
//!
//! A connection that opted in to the extensions also gets its pushes
//! (queued in the user's outbox like late responses, replayed after
//! `200 OK`), a kick package before a close because its session ended, and
//! an empty package in answer to each empty package (heartbeat). The idle
//! timeout is one timer per connection that is reset at most once per
//! timeout period: reads only note the time.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use codec::message::Request;
use codec::package::{PackageCodec, encode_package};
use codec::status::GateStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use super::cache::{ExecId, OnRequest};
use super::user::{CloseCause, ConnLink, User, complete_locked};
use super::{Shared, bump, kick_reason, response_package, write_kick};
use crate::agent::{AgentRequest, Dispatch, SessionCtx, SessionEvent};

/// Read size into a connection's own buffer (before the handshake, and to
/// finish a partial package). The codec reserves the rest of a package.
const OWN_READ: usize = 512;

/// Size of the per-thread scratch read buffer.
const SCRATCH_READ: usize = 64 * 1024;

thread_local! {
    /// Per worker thread: what connections read into and build responses
    /// in. A connection only borrows it within one synchronous step (read,
    /// run, write), so no connection ever owns it.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        input: BytesMut::new(),
        output: BytesMut::new(),
    });
}

struct Scratch {
    input: BytesMut,
    output: BytesMut,
}

/// How long a closing connection may take to flush what is queued and see
/// the peer's FIN (see [`Conn::close_gracefully`]).
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Why a connection ended (for the log line and the close procedure).
#[derive(Debug)]
enum End {
    /// The client closed.
    PeerClosed,
    /// A socket error.
    Io(io::ErrorKind),
    /// No complete handshake package within the deadline.
    HandshakeTimeout,
    /// A request package shorter than its 4-byte session (spec §5.6).
    InvalidPackage,
    /// skynet's "Conflict session" (spec §5.5).
    Conflict,
    /// More requests in flight for the user than allowed.
    TooManyInflight,
    /// The send queue exceeded its byte limit: the client does not read.
    SlowReader,
    /// Nothing received within the idle timeout.
    IdleTimeout,
    /// A newer connection of the user completed its handshake.
    Superseded,
    /// The session ended (logout, kick, expiry).
    SessionEnded,
    /// Gate shutdown, after the in-flight requests were answered.
    Shutdown,
    /// Gate shutdown, grace period over.
    ShutdownNow,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::PeerClosed => f.write_str("closed by the client"),
            End::Io(kind) => write!(f, "socket error: {kind}"),
            End::HandshakeTimeout => f.write_str("handshake deadline passed"),
            End::InvalidPackage => f.write_str("invalid package"),
            End::Conflict => f.write_str("conflict session"),
            End::TooManyInflight => f.write_str("too many requests in flight"),
            End::SlowReader => f.write_str("send queue full (client not reading)"),
            End::IdleTimeout => f.write_str("idle timeout (client sent nothing)"),
            End::Superseded => f.write_str("superseded by a newer connection"),
            End::SessionEnded => f.write_str("session ended"),
            End::Shutdown => f.write_str("gate shutdown"),
            End::ShutdownNow => f.write_str("gate shutdown (grace over)"),
        }
    }
}

impl End {
    /// Whether the close should flush what is queued and wait for the
    /// peer's FIN, rather than just drop the socket.
    fn graceful(&self) -> bool {
        !matches!(
            self,
            End::PeerClosed | End::Io(_) | End::SlowReader | End::ShutdownNow
        )
    }
}

/// Counts the connection as open and holds its maxclient permit; both are
/// released when the task ends, however it ends.
struct OpenConn<'a> {
    shared: &'a Shared,
    _permit: OwnedSemaphorePermit,
}

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        self.shared
            .metrics
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one accepted connection to its end.
pub(super) async fn run(
    sh: Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    sh.metrics.connections.fetch_add(1, Ordering::Relaxed);
    let _open = OpenConn {
        shared: &sh,
        _permit: permit,
    };
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
    };

    // Boxed, like the close below: these phases are short, and keeping
    // them out of the task keeps every idle connection's task small.
    let handshake = Box::pin(tokio::time::timeout(
        sh.cfg.handshake_timeout(),
        conn.read_first(&sh),
    ))
    .await;
    let payload = match handshake {
        Ok(Ok(payload)) => payload,
        Ok(Err(end)) => {
            tracing::debug!(%addr, %end, "connection closed before its handshake");
            return;
        }
        Err(_) => {
            bump(&sh.metrics.handshakes_refused);
            tracing::debug!(%addr, end = %End::HandshakeTimeout, "connection closed");
            return;
        }
    };

    let handshake = sh.handshake(&payload, addr);
    // The payload shares the first read buffer's allocation: let both go
    // now, not when the session ends.
    drop(payload);
    let (user, link) = match handshake {
        Ok((user, link, replay)) => {
            let _ = encode_package(GateStatus::OK.text().as_bytes(), &mut conn.wbuf);
            // Pushes the client has not seen, right after `200 OK` and
            // before any response.
            conn.wbuf.extend_from_slice(&replay);
            (user, link)
        }
        Err(refusal) => {
            bump(&sh.metrics.handshakes_refused);
            tracing::debug!(
                %addr,
                status = refusal.status().map(|s| s.code()),
                reason = %refusal,
                "handshake refused"
            );
            // Packages pipelined behind a failed handshake are discarded.
            conn.rbuf = BytesMut::new();
            if let Some(status) = refusal.status() {
                let _ = encode_package(status.text().as_bytes(), &mut conn.wbuf);
            }
            Box::pin(conn.close_gracefully(&sh, None)).await;
            return;
        }
    };
    bump(&sh.metrics.handshakes_ok);
    tracing::debug!(
        %addr,
        uid = %String::from_utf8_lossy(&user.uid),
        subid = %String::from_utf8_lossy(&user.subid),
        opted_in = link.ext,
        "handshake ok"
    );

    let ctx = SessionCtx::new(Arc::clone(&user));
    let end = {
        // Unbinds when the session loop ends, however it ends (even if the
        // agent panics inside it).
        let _unbind = Unbind {
            sh: &sh,
            ctx: &ctx,
            link: &link,
        };
        conn.session(&sh, &ctx, &link).await
    };
    match end {
        End::SlowReader => bump(&sh.metrics.slow_readers_cut),
        End::IdleTimeout => bump(&sh.metrics.idle_timeouts),
        _ => {}
    }
    tracing::debug!(
        %addr,
        uid = %String::from_utf8_lossy(&user.uid),
        subid = %String::from_utf8_lossy(&user.subid),
        %end,
        "connection closed"
    );
    if end.graceful() {
        // An opted-in client learns why its session ended (the kick
        // package, after whatever was still queued for it).
        if let Some(farewell) = link.farewell() {
            conn.wbuf.extend_from_slice(farewell);
        } else if link.ext && matches!(end, End::Shutdown) {
            write_kick(
                &mut conn.wbuf,
                kick_reason(&crate::link::EndReason::Shutdown),
            );
        }
        Box::pin(conn.close_gracefully(&sh, Some(&link))).await;
    } else {
        drop(conn);
        link.set_finished();
    }
}

/// After the connection ended: if the session is still bound to it, the
/// user is now away (skynet's `disconnect_handler`) and its reconnect window
/// starts. A connection that was superseded or whose session ended changes
/// nothing, so its late close can never touch a newer connection or session.
struct Unbind<'a> {
    sh: &'a Arc<Shared>,
    ctx: &'a SessionCtx,
    link: &'a ConnLink,
}

impl Drop for Unbind<'_> {
    fn drop(&mut self) {
        let user: &Arc<User> = &self.ctx.user;
        let away = {
            let mut st = user.lock();
            if !st.is_bound_to(self.link.id) {
                return;
            }
            st.bound = None;
            st.away_gen += 1;
            (!st.ended).then_some(st.away_gen)
        };
        if let Some(generation) = away {
            // No call into the agent while unwinding from its panic.
            if !std::thread::panicking() {
                self.sh.agent.event(self.ctx, SessionEvent::Away);
            }
            self.sh.start_away_timer(user, generation);
        }
    }
}

/// What woke the session loop.
enum Event {
    /// The link: a close request or responses in the outbox.
    Woken,
    /// The idle timer fired (the connection may have been active since).
    IdleTimer,
    /// The socket has input (or EOF).
    Readable(io::Result<()>),
    /// The socket has room to write.
    Writable(io::Result<()>),
}

/// The socket and the connection's own buffers: `rbuf` holds only a
/// partial package (or, before the handshake, what arrived), `wbuf` only
/// bytes the socket would not take yet.
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Conn {
    /// Reads until the first complete package (the handshake).
    async fn read_first(&mut self, sh: &Shared) -> Result<Bytes, End> {
        loop {
            if let Some(frame) = decode(&mut self.rbuf)? {
                return Ok(frame);
            }
            tokio::select! {
                biased;
                () = sh.draining.cancelled() => return Err(End::Shutdown),
                ready = self.stream.readable() => ready.map_err(|e| End::Io(e.kind()))?,
            }
            self.read_own()?;
        }
    }

    /// The authenticated part of the connection.
    async fn session(&mut self, sh: &Arc<Shared>, ctx: &SessionCtx, link: &ConnLink) -> End {
        let limit = sh.cfg.send_queue_bytes;
        let mut draining = false;
        // Boxed: only connections with a timeout pay for the timer.
        let idle = sh.cfg.idle_timeout(link.ext);
        let mut idle_timer = idle.map(|timeout| Box::pin(tokio::time::sleep(timeout)));
        let mut last_input = Instant::now();
        loop {
            // Waking up for the link does not count against tokio's
            // cooperative budget: spend one unit per round so a busy
            // connection cannot starve the others.
            tokio::task::consume_budget().await;
            if !draining && !self.rbuf.is_empty() {
                // Requests pipelined behind the handshake, or a package
                // completed in the connection's own buffer.
                let result = serve(&mut self.rbuf, &mut self.wbuf, sh, ctx, link);
                release_if_empty(&mut self.rbuf);
                if let Err(end) = result {
                    return end;
                }
            }
            if let Err(e) = self.flush() {
                return End::Io(e.kind());
            }
            if self.wbuf.len() > limit {
                return End::SlowReader;
            }
            if draining && self.wbuf.is_empty() && ctx.user.lock().inflight == 0 {
                return End::Shutdown;
            }
            // A hand-written wait instead of `select!`: no waiter or
            // sub-future is stored in the task, which keeps every idle
            // connection small.
            let want_write = !self.wbuf.is_empty();
            let stream = &self.stream;
            let event = std::future::poll_fn(|cx| {
                if link.poll_woken(cx).is_ready() {
                    return Poll::Ready(Event::Woken);
                }
                if !draining {
                    if let Poll::Ready(ready) = stream.poll_read_ready(cx) {
                        return Poll::Ready(Event::Readable(ready));
                    }
                }
                if want_write {
                    if let Poll::Ready(ready) = stream.poll_write_ready(cx) {
                        return Poll::Ready(Event::Writable(ready));
                    }
                }
                if let Some(timer) = idle_timer.as_mut() {
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::IdleTimer);
                    }
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Woken => {
                    match link.close_cause() {
                        CloseCause::Open => {}
                        CloseCause::Drain => draining = true,
                        CloseCause::Superseded => return End::Superseded,
                        CloseCause::SlowReader => return End::SlowReader,
                        CloseCause::SessionEnded => return End::SessionEnded,
                        CloseCause::ShutdownNow => return End::ShutdownNow,
                    }
                    self.take_outbox(&ctx.user, link);
                }
                Event::Readable(Ok(())) => match self.on_readable(sh, ctx, link) {
                    Ok(true) if idle_timer.is_some() => last_input = Instant::now(),
                    Ok(_) => {}
                    Err(end) => return end,
                },
                Event::IdleTimer => {
                    if let (Some(timeout), Some(timer)) = (idle, idle_timer.as_mut()) {
                        let deadline = last_input + timeout;
                        if Instant::now() >= deadline {
                            return End::IdleTimeout;
                        }
                        timer.as_mut().reset(deadline);
                    }
                }
                // The flush at the top of the loop writes.
                Event::Writable(Ok(())) => {}
                Event::Readable(Err(e)) | Event::Writable(Err(e)) => return End::Io(e.kind()),
            }
        }
    }

    /// Reads what is there and runs it (see the module docs). `Ok(true)`
    /// when something was read.
    fn on_readable(
        &mut self,
        sh: &Arc<Shared>,
        ctx: &SessionCtx,
        link: &ConnLink,
    ) -> Result<bool, End> {
        if !self.rbuf.is_empty() {
            // Finish the partial package in the connection's own buffer;
            // the session loop runs it.
            return self.read_own();
        }
        let Conn { stream, rbuf, wbuf } = self;
        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch { input, output } = scratch;
            input.clear();
            // Reclaims the same allocation once the last batch's packages
            // are dropped (they normally are by now).
            input.reserve(SCRATCH_READ);
            match stream.try_read_buf(input) {
                Ok(0) => return Err(End::PeerClosed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(End::Io(e.kind())),
            }
            let result = if wbuf.is_empty() {
                output.clear();
                let result = serve(input, output, sh, ctx, link);
                // Write the batch now; keep only what the socket refused.
                let written = write_now(stream, output).map_err(|e| End::Io(e.kind()))?;
                if let Some(rest) = output.get(written..) {
                    wbuf.extend_from_slice(rest);
                }
                result
            } else {
                // Earlier bytes are still queued: keep the order.
                serve(input, wbuf, sh, ctx, link)
            };
            if !input.is_empty() {
                // A partial package: the connection keeps its beginning.
                rbuf.extend_from_slice(input);
            }
            result.map(|()| true)
        })
    }

    /// Moves responses and pushes other tasks queued for this connection
    /// into the write buffer.
    fn take_outbox(&mut self, user: &User, link: &ConnLink) {
        let outbox = {
            let mut st = user.lock();
            match st.bound.as_mut() {
                Some(bound) if bound.link.id == link.id => {
                    bound.outbox_bytes = 0;
                    std::mem::take(&mut bound.outbox)
                }
                _ => return,
            }
        };
        for item in outbox {
            item.write_to(&mut self.wbuf);
        }
    }

    /// One non-blocking read into the connection's own buffer. `WouldBlock`
    /// (a spurious wake-up) is not an error. `Ok(true)` when something was
    /// read.
    fn read_own(&mut self) -> Result<bool, End> {
        if self.rbuf.capacity() == self.rbuf.len() {
            self.rbuf.reserve(OWN_READ);
        }
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Err(End::PeerClosed),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(End::Io(e.kind())),
        }
    }

    /// Writes as much of the write buffer as the socket takes now, and
    /// releases it once empty.
    fn flush(&mut self) -> io::Result<()> {
        let written = write_now(&self.stream, &self.wbuf)?;
        self.wbuf.advance(written);
        release_if_empty(&mut self.wbuf);
        Ok(())
    }

    /// Flushes what is queued and sends FIN (then tells `link`, if any,
    /// that the connection is closed: a kick waits for that), and reads,
    /// discarding, until the peer closes — all within [`CLOSE_LINGER`].
    /// Closing a socket that still has unread input makes the kernel answer
    /// with RST, which can destroy data the client has not read yet, e.g.
    /// the status package of a refused handshake with a request pipelined
    /// behind it. At shutdown the wait for the peer is skipped.
    async fn close_gracefully(&mut self, sh: &Shared, link: Option<&ConnLink>) {
        let linger = async {
            let flushed = async {
                self.stream.write_all(&self.wbuf).await?;
                self.stream.shutdown().await
            }
            .await;
            if let Some(link) = link {
                link.set_finished();
            }
            if flushed.is_err() {
                return;
            }
            self.wbuf = BytesMut::new();
            self.rbuf = BytesMut::with_capacity(512);
            loop {
                self.rbuf.clear();
                tokio::select! {
                    read = self.stream.read_buf(&mut self.rbuf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                    // At shutdown, do not wait for clients to close: discard
                    // what has arrived and go.
                    () = sh.draining.cancelled() => {
                        while matches!(self.stream.try_read_buf(&mut self.rbuf), Ok(n) if n > 0) {
                            self.rbuf.clear();
                        }
                        return;
                    }
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(CLOSE_LINGER, linger) => {}
            () = sh.hard.cancelled() => {}
        }
        if let Some(link) = link {
            link.set_finished();
        }
    }
}

/// Writes as much of `data` as the socket takes without waiting; returns
/// how much that was.
fn write_now(stream: &TcpStream, data: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while let Some(rest) = data.get(written..).filter(|r| !r.is_empty()) {
        match stream.try_write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Drops a buffer's allocation once it holds nothing.
fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
}

/// The next complete package in `input`, if any.
fn decode(input: &mut BytesMut) -> Result<Option<Bytes>, End> {
    PackageCodec.decode(input).map_err(|_| End::InvalidPackage)
}

/// Runs every complete request in `input`, appending responses to `out`.
fn serve(
    input: &mut BytesMut,
    out: &mut BytesMut,
    sh: &Arc<Shared>,
    ctx: &SessionCtx,
    link: &ConnLink,
) -> Result<(), End> {
    while let Some(frame) = decode(input)? {
        if frame.is_empty() && link.ext {
            // Heartbeat of an opted-in client: answered with an empty
            // package. (A plain client is closed for it, as by skynet.)
            out.extend_from_slice(&[0, 0]);
            continue;
        }
        let req = Request::parse(frame).ok_or(End::InvalidPackage)?;
        request(out, sh, ctx, link, req)?;
    }
    Ok(())
}

/// One request (spec §5.4, §5.5); a response due now goes to `out`.
fn request(
    out: &mut BytesMut,
    sh: &Arc<Shared>,
    ctx: &SessionCtx,
    link: &ConnLink,
    req: Request,
) -> Result<(), End> {
    let user = &ctx.user;
    let session = req.session;
    let outcome = {
        let mut st = user.lock();
        if !st.is_bound_to(link.id) {
            // Superseded or ended between two packages of one batch.
            return Err(if st.ended {
                End::SessionEnded
            } else {
                End::Superseded
            });
        }
        let outcome = st.cache.request(link.id, session);
        if let OnRequest::Execute(exec) = outcome {
            if st.inflight as usize >= sh.cfg.max_inflight_per_user {
                st.cache.abandon(session, exec);
                return Err(End::TooManyInflight);
            }
            st.inflight = st.inflight.saturating_add(1);
        }
        outcome
    };
    match outcome {
        OnRequest::Execute(exec) => {
            let running = Running {
                user,
                session,
                exec,
            };
            let dispatch = sh
                .agent
                .request(ctx, AgentRequest::new(session, req.content, exec));
            std::mem::forget(running);
            if let Dispatch::Ready(result) = dispatch {
                let package = response_package(session, result, &user.uid);
                complete_locked(
                    &mut user.lock(),
                    session,
                    exec,
                    package,
                    Some((link.id, out)),
                );
            }
        }
        OnRequest::Resend(package) => {
            bump(&sh.metrics.resends);
            out.extend_from_slice(&package);
        }
        OnRequest::Absorbed => bump(&sh.metrics.absorbed),
        OnRequest::Conflict => {
            bump(&sh.metrics.conflicts);
            return Err(End::Conflict);
        }
    }
    Ok(())
}

/// Undoes a request's bookkeeping if the agent panics while running it
/// (forgotten when the agent returns): the request no longer counts as in
/// flight, and its session is free again.
struct Running<'a> {
    user: &'a User,
    session: u32,
    exec: ExecId,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut st = self.user.lock();
        st.inflight = st.inflight.saturating_sub(1);
        st.cache.abandon(self.session, self.exec);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::agent::EchoAgent;
    use crate::config::GateConfig;
    use crate::link::{EndReason, LoginLink};
    use crate::msg::MsgGate;

    struct NoLogin;

    impl LoginLink for NoLogin {
        fn session_ended(&self, _: &[u8], _: &[u8], _: &[u8], _: &EndReason) {}
    }

    /// Every idle connection is one of these futures: keep it small (the
    /// issue's budget is 4 KB of user-space memory per idle session).
    #[tokio::test]
    async fn connection_task_is_small() {
        let gate = MsgGate::new(
            GateConfig::default(),
            Arc::new(EchoAgent),
            Arc::new(NoLogin),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let task = run(gate.shared(), stream, peer, permit);
        let size = std::mem::size_of_val(&task);
        println!(
            "connection task future: {size} bytes; User {} ConnLink {} idle timer {}",
            std::mem::size_of::<User>(),
            std::mem::size_of::<ConnLink>(),
            std::mem::size_of::<tokio::time::Sleep>()
        );
        assert!(size <= 768, "connection task future is {size} bytes");
        drop(client);
    }
}
