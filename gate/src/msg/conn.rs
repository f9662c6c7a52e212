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
//! (queued in the session's outbox like late responses, replayed after
//! `200 OK`), a kick package before a close because its session ended, and
//! an empty package in answer to each empty package (heartbeat). Reads only
//! note the time for the idle timeout; the gate's timers check it.
//!
//! When the client shuts down its write side (FIN), the task stops
//! reading, answers what was asked (bounded by `shutdown_grace`), writes
//! it, and closes.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::core::{Bound, GateCore};
use super::end::End;
use super::handle::ConnHandle;
use super::metrics::{RefusedStatus, bump};
use super::requests::{Link, decode, serve};
use crate::logging::esc;
use crate::login::placement::EndReason;
use crate::net::SourceSlot;
use crate::wire;

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

/// Counts the connection as open and holds its maxclient permit; both are
/// released when the task ends, however it ends.
pub(super) struct OpenConn {
    pub(super) core: Arc<GateCore>,
    _slots: (OwnedSemaphorePermit, SourceSlot),
}

impl OpenConn {
    /// Counts an accepted connection as open until this is dropped.
    pub(super) fn new(core: Arc<GateCore>, slots: (OwnedSemaphorePermit, SourceSlot)) -> OpenConn {
        core.metrics.connections.fetch_add(1, Ordering::Relaxed);
        OpenConn {
            core,
            _slots: slots,
        }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.core
            .metrics
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one accepted connection to its end.
///
/// Every idle connection is one of these futures, so what it holds while
/// the session loop waits is kept small: the handshake phase and the close
/// are boxed futures of their own, and nothing is held twice.
pub(super) fn run(
    core: Arc<GateCore>,
    stream: TcpStream,
    addr: SocketAddr,
    slots: (OwnedSemaphorePermit, SourceSlot),
) -> impl Future<Output = ()> + Send {
    let _ = stream.set_nodelay(true);
    let open = OpenConn::new(core, slots);
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
    };
    async move {
        let core = &open.core;
        let Some(bound) = Box::pin(conn.handshake(core, addr)).await else {
            return;
        };
        let link = Link::new(core, bound);
        let end = {
            // Unbinds when the session loop ends, however it ends (even if
            // the agent panics inside it).
            let _unbind = Unbind(&link);
            conn.session(&link).await
        };
        if ended(&link, &end, &mut conn.wbuf) {
            Box::pin(conn.close_gracefully(core, Some(&link.handle))).await;
        } else {
            link.handle.set_finished();
        }
    }
}

/// Counts and logs how a session's connection ended; if it is to close
/// gracefully (`true`), appends the farewell an opted-in client is sent:
/// the kick package that tells it why its session ended.
pub(super) fn ended(link: &Link<'_>, end: &End, out: &mut BytesMut) -> bool {
    let core = link.core;
    match end {
        End::SlowReader => bump(&core.metrics.slow_readers_cut),
        End::IdleTimeout => bump(&core.metrics.idle_timeouts),
        End::TooManyInflight => bump(&core.metrics.inflight_cut),
        _ => {}
    }
    tracing::debug!(
        uid = %esc(&link.user.uid),
        subid = %esc(&link.user.subid),
        %end,
        "connection closed"
    );
    if !end.graceful() {
        return false;
    }
    if let Some(farewell) = link.handle.farewell() {
        out.extend_from_slice(farewell);
    } else if link.ext && matches!(end, End::Shutdown) {
        wire::write_kick(out, EndReason::Shutdown.text());
    }
    true
}

/// After the connection ended: if the session is still bound to it, the
/// user is now away (skynet's `disconnect_handler`) and its reconnect window
/// starts. A connection that was superseded or whose session ended changes
/// nothing, so its late close can never touch a newer connection or session.
pub(super) struct Unbind<'a, 'b>(pub(super) &'a Link<'b>);

impl Drop for Unbind<'_, '_> {
    fn drop(&mut self) {
        // No call into the agent while unwinding from its panic.
        let notify = !std::thread::panicking();
        let link = self.0;
        link.core
            .connection_gone(&link.user, link.handle.id, notify);
    }
}

/// What woke the session loop.
enum Event {
    /// The handle: a close request or responses in the outbox.
    Woken,
    /// The half-close grace is over.
    HalfCloseOver,
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

/// What a read gave.
enum Read {
    /// Nothing (a spurious wake-up).
    Nothing,
    /// Bytes, all processed.
    Data,
    /// The client shut down its write side.
    Eof,
}

impl Conn {
    /// The handshake phase: reads the first package within the handshake
    /// deadline and checks it. Refused, the status is sent and the
    /// connection closed here (`None`); accepted, the greeting (`200 OK`,
    /// the welcome, the replay) is queued to be written first.
    async fn handshake(&mut self, core: &Arc<GateCore>, addr: SocketAddr) -> Option<Bound> {
        let first = tokio::time::timeout(core.cfg.handshake_timeout, self.read_first(core)).await;
        let payload = match first {
            Ok(Ok(payload)) => payload,
            Ok(Err(end)) => {
                tracing::debug!(%addr, %end, "connection closed before its handshake");
                return None;
            }
            Err(_) => {
                bump(&core.metrics.handshakes_refused);
                bump(&core.metrics.handshake_timeouts);
                tracing::debug!(%addr, end = %End::HandshakeTimeout, "connection closed");
                return None;
            }
        };
        let checked = checked_handshake(core, &payload, addr);
        // The payload shares the first read buffer's allocation: let both
        // go now, not when the session ends.
        drop(payload);
        match checked {
            Ok(mut bound) => {
                // `200 OK`, then the welcome and the pushes the client has
                // not seen, before any response.
                self.wbuf = std::mem::take(&mut bound.greeting);
                Some(bound)
            }
            Err(status) => {
                // Packages pipelined behind a failed handshake are discarded.
                self.rbuf = BytesMut::new();
                if let Some(status) = status {
                    wire::write_status(&mut self.wbuf, status);
                }
                self.close_gracefully(core, None).await;
                None
            }
        }
    }

    /// Reads until the first complete package (the handshake).
    async fn read_first(&mut self, core: &GateCore) -> Result<Bytes, End> {
        loop {
            if let Some(frame) = decode(&mut self.rbuf)? {
                return Ok(frame);
            }
            tokio::select! {
                biased;
                () = core.draining.cancelled() => return Err(End::Shutdown),
                ready = self.stream.readable() => ready.map_err(|e| End::Io(e.kind()))?,
            }
            if let Read::Eof = self.read_own()? {
                return Err(End::PeerClosed);
            }
        }
    }

    /// The authenticated part of the connection.
    async fn session(&mut self, link: &Link<'_>) -> End {
        let core = link.core;
        let limit = core.cfg.send_queue_bytes;
        let mut draining = false;
        // Set once the client's FIN arrived: no more reading, and a bound
        // on how long its requests may take to be answered.
        let mut half_closed: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let note_input = link.start_idle_timer();
        loop {
            // Waking up for the handle does not count against tokio's
            // cooperative budget: spend one unit per round so a busy
            // connection cannot starve the others.
            tokio::task::consume_budget().await;
            let reading = !draining && half_closed.is_none();
            if reading && !self.rbuf.is_empty() {
                // Requests pipelined behind the handshake, or a package
                // completed in the connection's own buffer.
                let result = serve(&mut self.rbuf, &mut self.wbuf, link);
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
            if (draining || half_closed.is_some())
                && self.wbuf.is_empty()
                && link.user.lock().session.inflight() == 0
            {
                return if draining {
                    End::Shutdown
                } else {
                    End::HalfClosed
                };
            }
            // A hand-written wait instead of `select!`: no waiter or
            // sub-future is stored in the task, which keeps every idle
            // connection small.
            let want_write = !self.wbuf.is_empty();
            let stream = &self.stream;
            let event = std::future::poll_fn(|cx| {
                if link.handle.poll_woken(cx).is_ready() {
                    return Poll::Ready(Event::Woken);
                }
                if reading && let Poll::Ready(ready) = stream.poll_read_ready(cx) {
                    return Poll::Ready(Event::Readable(ready));
                }
                if want_write && let Poll::Ready(ready) = stream.poll_write_ready(cx) {
                    return Poll::Ready(Event::Writable(ready));
                }
                if let Some(grace) = half_closed.as_mut()
                    && grace.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Event::HalfCloseOver);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Woken => match link.woken(&mut self.wbuf) {
                    Ok(drain) => draining |= drain,
                    Err(end) => return end,
                },
                Event::Readable(Ok(())) => match self.on_readable(link) {
                    Ok(Read::Data) if note_input => link.note_input(),
                    Ok(Read::Eof) => {
                        half_closed = Some(Box::pin(tokio::time::sleep(core.cfg.shutdown_grace)));
                    }
                    Ok(_) => {}
                    Err(end) => return end,
                },
                Event::HalfCloseOver => return End::HalfClosed,
                // The flush at the top of the loop writes.
                Event::Writable(Ok(())) => {}
                Event::Readable(Err(e)) | Event::Writable(Err(e)) => return End::Io(e.kind()),
            }
        }
    }

    /// Reads what is there and runs it (see the module docs).
    fn on_readable(&mut self, link: &Link<'_>) -> Result<Read, End> {
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
                Ok(0) => return Ok(Read::Eof),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read::Nothing),
                Err(e) => return Err(End::Io(e.kind())),
            }
            let result = if wbuf.is_empty() {
                output.clear();
                let result = serve(input, output, link);
                // Write the batch now; keep only what the socket refused.
                let written = write_now(stream, output).map_err(|e| End::Io(e.kind()))?;
                if let Some(rest) = output.get(written..) {
                    wbuf.extend_from_slice(rest);
                }
                result
            } else {
                // Earlier bytes are still queued: keep the order.
                serve(input, wbuf, link)
            };
            if !input.is_empty() {
                // A partial package: the connection keeps its beginning.
                rbuf.extend_from_slice(input);
            }
            result.map(|()| Read::Data)
        })
    }

    /// One non-blocking read into the connection's own buffer.
    fn read_own(&mut self) -> Result<Read, End> {
        if self.rbuf.capacity() == self.rbuf.len() {
            self.rbuf.reserve(OWN_READ);
        }
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Ok(Read::Eof),
            Ok(_) => Ok(Read::Data),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Read::Nothing),
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
    async fn close_gracefully(&mut self, core: &GateCore, link: Option<&ConnHandle>) {
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
                    () = core.draining.cancelled() => {
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
            () = core.hard.cancelled() => {}
        }
        if let Some(link) = link {
            link.set_finished();
        }
    }
}

/// Checks a handshake package, counts and logs the outcome. Refused: the
/// status to send, if any.
pub(super) fn checked_handshake(
    core: &Arc<GateCore>,
    payload: &Bytes,
    addr: SocketAddr,
) -> Result<Bound, Option<codec::status::GateStatus>> {
    match core.handshake(payload, addr) {
        Ok(bound) => {
            bump(&core.metrics.handshakes_ok);
            tracing::debug!(
                %addr,
                uid = %esc(&bound.user.uid),
                subid = %esc(&bound.user.subid),
                opted_in = bound.ext,
                conn = bound.handle.id,
                "handshake ok"
            );
            Ok(bound)
        }
        Err(refusal) => {
            bump(&core.metrics.handshakes_refused);
            bump(&core.metrics.refused_by[RefusedStatus::of(refusal.status()) as usize]);
            tracing::debug!(
                %addr,
                status = refusal.status().map(|s| s.code()),
                reason = %refusal,
                "handshake refused"
            );
            Err(refusal.status())
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::agent::EchoAgent;
    use crate::config::GateConfig;
    use crate::login::placement::LoginLink;

    struct NoLogin;

    impl LoginLink for NoLogin {
        fn session_ended(&self, _: &[u8], _: &[u8], _: &[u8], _: &EndReason) {}
    }

    /// Every idle connection is one of these futures: keep it small (the
    /// budget is 4 KB of user-space memory per idle session, all in).
    #[tokio::test]
    async fn connection_task_is_small() {
        let core = Arc::new(GateCore::new(
            GateConfig::default(),
            Arc::new(EchoAgent),
            Arc::new(NoLogin),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let source = crate::net::PerSource::new(1).enter(peer.ip()).unwrap();
        let task = run(core, stream, peer, (permit, source));
        let size = std::mem::size_of_val(&task);
        println!(
            "connection task future: {size} bytes; User {} ConnHandle {} Session {} Timer {}",
            std::mem::size_of::<super::super::core::User>(),
            std::mem::size_of::<ConnHandle>(),
            std::mem::size_of::<crate::session::Session<Arc<ConnHandle>>>(),
            std::mem::size_of::<super::super::core::Timer>(),
        );
        assert!(size <= 400, "connection task future is {size} bytes");
        drop(client);
    }
}
