//! A TCP client connection as a [`Transport`]: the byte stream of BE16
//! packages.
//!
//! It reads with `try_read` and writes with `try_write`, so it never has a
//! read or write half-done across a wait. Each time the socket is
//! readable it reads into a per-thread scratch buffer, hands every
//! complete package to the driver (an inline agent answers right there,
//! into a per-thread output buffer), writes all the answers with one
//! `write`, and keeps only what is left over: the tail of a partial
//! package, or bytes the socket would not take. So a busy connection
//! allocates nothing per read but its answers (which the cache keeps
//! anyway), and an idle one holds no buffer at all.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use gate_core::End;
use gate_core::connection::{Connection, Mapping};
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::read_ahead::ReadAhead;
use super::transport::{Flow, Read, Serve, Transport};

/// Read size into a connection's own buffer (to finish a partial
/// package). The decoder reserves the rest of a package.
const OWN_READ: usize = 512;

/// Size of the per-thread scratch read buffer.
const SCRATCH_READ: usize = 64 * 1024;

/// Room the per-thread scratch output keeps for a batch of answers (it
/// grows past it for a larger batch).
const SCRATCH_WRITE: usize = 16 * 1024;

thread_local! {
    /// Per worker thread: what connections read into and build answers
    /// in. A connection only borrows it within one synchronous step (read,
    /// serve, write), so no connection ever owns it.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        input: BytesMut::new(),
        output: BytesMut::new(),
    });
}

struct Scratch {
    input: BytesMut,
    output: BytesMut,
}

/// The socket and its own buffer, which holds only input kept for later:
/// a partial package, or packages behind a pause.
#[derive(Debug)]
pub(super) struct Tcp {
    stream: TcpStream,
    rbuf: BytesMut,
    /// The last read stopped at a pause: `rbuf` holds whole packages.
    paused: bool,
    /// Whether to read once more after a short read.
    ahead: ReadAhead,
}

impl Tcp {
    pub(super) fn new(stream: TcpStream) -> Tcp {
        let _ = stream.set_nodelay(true);
        Tcp {
            stream,
            rbuf: BytesMut::new(),
            paused: false,
            ahead: ReadAhead::default(),
        }
    }

    /// A connection taken over from an old process: `unread` is what that
    /// one had read and not served, served first.
    pub(super) fn restored(stream: TcpStream, unread: &[u8]) -> Tcp {
        let _ = stream.set_nodelay(true);
        Tcp {
            stream,
            rbuf: BytesMut::from(unread),
            paused: !unread.is_empty(),
            ahead: ReadAhead::default(),
        }
    }

    /// A connection waking from rest (see `players::rest`): nothing
    /// buffered, its socket options set when it was accepted.
    pub(super) fn awake(stream: TcpStream) -> Tcp {
        Tcp {
            stream,
            rbuf: BytesMut::new(),
            paused: false,
            ahead: ReadAhead::default(),
        }
    }

    /// The socket's descriptor.
    pub(super) fn stream_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.stream.as_fd()
    }

    /// Input read and not yet served.
    pub(super) fn unread(&self) -> &[u8] {
        &self.rbuf
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
            Err(e) => Err(e.kind().into()),
        }
    }
}

/// Runs `f` with the worker thread's scratch buffers (see [`SCRATCH`]):
/// the input, cleared, with room for a large read, and the output,
/// cleared, with room for a batch of answers. What `f` leaves in them is
/// dropped when the next user clears them, so `f` copies out what it
/// keeps. Both reclaim their allocations once what was split off them
/// (packages, frames) is dropped.
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut BytesMut, &mut BytesMut) -> R) -> R {
    SCRATCH.with_borrow_mut(|scratch| {
        let Scratch { input, output } = scratch;
        input.clear();
        input.reserve(SCRATCH_READ);
        output.clear();
        output.reserve(SCRATCH_WRITE);
        f(input, output)
    })
}

/// Reads what the socket holds into `input`'s room. With
/// `clear_if_short`, a read that leaves room (the socket had no more)
/// also clears the socket's readable mark, so that the next read waits for
/// epoll instead of finding nothing. The read runs inside `try_io`, so the
/// mark cleared is the one it saw: data that came after it marks the
/// socket anew. Returns the bytes read (0: end of input) and whether the
/// mark was cleared; `WouldBlock` when there was nothing to read.
pub(super) fn read_into(
    stream: &TcpStream,
    input: &mut BytesMut,
    clear_if_short: bool,
) -> io::Result<(usize, bool)> {
    let mut got = 0;
    let read = stream.try_io(Interest::READABLE, || {
        got = stream.try_read_buf(input)?;
        if clear_if_short && got > 0 && input.len() < input.capacity() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(got)
    });
    match read {
        Ok(n) => Ok((n, false)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok((got, true)),
        Err(e) => Err(e),
    }
}

/// Whether `input` holds more than its first package (with its tag on a
/// `sealed` connection): the start of another, or all of it.
fn holds_several(input: &[u8], sealed: bool) -> bool {
    let tag = if sealed { loginproto::seal::TAG_LEN } else { 0 };
    gate_core::wire::first_package_len(input) + tag < input.len()
}

/// Hands every complete package in `input` to `serve`, until a pause.
pub(super) fn serve_all(
    conn: &mut Connection,
    input: &mut BytesMut,
    out: &mut BytesMut,
    serve: &mut impl Serve,
) -> Result<Flow, End> {
    while let Some(next) = conn.next_input(input, out)? {
        if serve(conn, next, out)? == Flow::Pause {
            return Ok(Flow::Pause);
        }
    }
    Ok(Flow::More)
}

impl Transport for Tcp {
    const MAPPING: Mapping = Mapping::Stream;
    const RESTS: bool = true;

    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        self.stream
            .poll_read_ready(cx)
            .map_err(|e| End::from(e.kind()))
    }

    fn has_buffered(&self) -> bool {
        self.paused
    }

    fn can_rest(&self) -> bool {
        self.rbuf.is_empty() && !self.paused
    }

    fn rest(
        open: super::driver::OpenConn<Tcp>,
        opened: super::driver::Opened<Tcp>,
        user: std::sync::Arc<super::user::User>,
        handle: std::sync::Arc<super::handle::ConnHandle>,
    ) {
        super::rest::lay_down(
            super::rest::Kept::Tcp(open),
            opened.transport.stream,
            opened.conn,
            user,
            handle,
        );
    }

    fn read(
        &mut self,
        conn: &mut Connection,
        pending: &mut BytesMut,
        mut serve: impl Serve,
    ) -> Result<Read, End> {
        self.paused = false;
        // Input kept from before is served here: that is input too, even
        // if the socket has nothing more.
        let kept = !self.rbuf.is_empty();
        if kept {
            // Input kept from before: packages behind a pause first, then
            // the rest of a partial package into the connection's own
            // buffer.
            if serve_all(conn, &mut self.rbuf, pending, &mut serve)? == Flow::Pause {
                self.paused = true;
                return Ok(Read::Data);
            }
            if !self.rbuf.is_empty() {
                self.ahead.waited();
                let read = self.read_own()?;
                if read == Read::Data {
                    self.paused =
                        serve_all(conn, &mut self.rbuf, pending, &mut serve)? == Flow::Pause;
                }
                release_if_empty(&mut self.rbuf);
                return Ok(read);
            }
            release_if_empty(&mut self.rbuf);
        }
        let Tcp {
            stream,
            rbuf,
            paused,
            ahead,
        } = self;
        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch { input, output } = scratch;
            input.clear();
            // Reclaims the same allocation once the last batch's packages
            // are dropped (they normally are by now).
            input.reserve(SCRATCH_READ);
            // `try_read` leaves the socket marked readable after a short
            // read, so the driver reads once more before it waits: under
            // load that read usually finds the client's next requests
            // without a trip through epoll and a task wake-up. When it
            // rarely does (one request in flight), the short read clears
            // the mark itself, as tokio's `poll_read` does (`ReadAhead`).
            // The read happens inside `try_io`, so the mark cleared is the
            // one the read saw: data that came after it marks the socket
            // anew.
            let cleared = match read_into(stream, input, ahead.clear_if_short()) {
                Ok((0, _)) => {
                    ahead.read(false, false);
                    return Ok(Read::Eof);
                }
                Ok((_, cleared)) => cleared,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ahead.read(false, false);
                    return Ok(if kept { Read::Data } else { Read::Nothing });
                }
                Err(e) => return Err(e.kind().into()),
            };
            ahead.read(true, cleared);
            if holds_several(input, conn.sealed()) {
                // More than one package came at once: the client has more
                // than one request in flight.
                ahead.several();
            }
            let served = if pending.is_empty() {
                output.clear();
                let served = serve_all(conn, input, output, &mut serve);
                // Write the batch now; keep only what the socket refused.
                let written = write_now(stream, output)?;
                if let Some(rest) = output.get(written..) {
                    pending.extend_from_slice(rest);
                }
                served
            } else {
                // Earlier bytes are still queued: keep the order.
                serve_all(conn, input, pending, &mut serve)
            };
            if !input.is_empty() {
                // A partial package, or packages behind a pause: the
                // connection keeps them.
                rbuf.extend_from_slice(input);
            }
            *paused = served? == Flow::Pause;
            Ok(Read::Data)
        })
    }

    fn flush(&mut self, pending: &mut BytesMut) -> Result<(), End> {
        let written = write_now(&self.stream, pending)?;
        pending.advance(written);
        release_if_empty(pending);
        Ok(())
    }

    fn wants_write(&self, pending: &BytesMut) -> bool {
        !pending.is_empty()
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, pending: &mut BytesMut) -> Result<(), End> {
        while !pending.is_empty() {
            match self.stream.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e.kind().into()),
                Poll::Pending => return Ok(()),
            }
            let written = write_now(&self.stream, pending)?;
            pending.advance(written);
        }
        release_if_empty(pending);
        Ok(())
    }

    /// Flushes and sends FIN, then reads, discarding, until the client
    /// closes. Closing a socket that still has unread input makes the
    /// kernel answer with RST, which can destroy data the client has not
    /// read yet, e.g. the status package of a refused handshake with a
    /// request pipelined behind it.
    async fn close(
        &mut self,
        pending: BytesMut,
        _code: u16,
        closed: impl FnOnce() + Send,
        stop_waiting: impl Future<Output = ()> + Send,
    ) {
        let flushed = async {
            self.stream.write_all(&pending).await?;
            self.stream.shutdown().await
        }
        .await;
        drop(pending);
        closed();
        if flushed.is_err() {
            return;
        }
        self.rbuf = BytesMut::with_capacity(OWN_READ);
        let discard = async {
            loop {
                self.rbuf.clear();
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::select! {
            () = discard => {}
            // At shutdown, do not wait for clients to close: discard
            // what has arrived and go.
            () = stop_waiting => {
                self.rbuf.clear();
                while matches!(self.stream.try_read_buf(&mut self.rbuf), Ok(n) if n > 0) {
                    self.rbuf.clear();
                }
            }
        }
    }

    fn abort(&mut self, _end: &End) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    fn as_movable(&mut self) -> Option<super::transport::Movable<'_>> {
        Some(super::transport::Movable::Tcp(self))
    }
}

/// Writes as much of `data` as the socket takes without waiting; returns
/// how much that was.
pub(super) fn write_now(stream: &TcpStream, data: &[u8]) -> Result<usize, End> {
    let mut written = 0;
    while let Some(rest) = data.get(written..).filter(|r| !r.is_empty()) {
        match stream.try_write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.kind().into()),
        }
    }
    Ok(written)
}

/// Drops a buffer's allocation once it holds nothing. (One written out to
/// its very end has no room left and keeps its allocation: the next
/// answers reuse it from the start without allocating.)
pub(super) fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn several_packages_are_told_from_one_with_its_tag() {
        let tag = loginproto::seal::TAG_LEN;
        let one = [0u8, 3, b'a', b'b', b'c'];
        assert!(!holds_several(&one, false));
        assert!(!holds_several(&one[..4], false), "a partial one");
        let mut two = one.to_vec();
        two.extend_from_slice(&one[..1]);
        assert!(holds_several(&two, false));
        // Sealed: header, ciphertext, tag.
        let mut sealed = one.to_vec();
        sealed.extend(std::iter::repeat_n(7, tag));
        assert!(!holds_several(&sealed, true));
        assert!(holds_several(&sealed, false), "read as plain");
        sealed.push(0);
        assert!(holds_several(&sealed, true));
    }

    /// A connected pair: (client, server).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    /// Waits until `stream` holds `n` unread bytes.
    async fn holds(stream: &TcpStream, n: usize) {
        let mut peek = vec![0; n];
        while stream.peek(&mut peek).await.expect("peek") < n {
            // Peeking does not consume: wait for the next arrival.
            stream.readable().await.expect("readable");
        }
    }

    fn is_marked_readable(stream: &TcpStream) -> bool {
        stream.ready(Interest::READABLE).now_or_never().is_some()
    }

    #[tokio::test]
    async fn a_short_read_clears_the_readable_mark_only_when_asked_and_short() {
        let (mut client, server) = pair().await;
        let mut input = BytesMut::with_capacity(1000);
        // More than the room: a full read leaves the mark, asked or not.
        client.write_all(&[7; 1500]).await.expect("write");
        holds(&server, 1500).await;
        let room = input.capacity();
        assert_eq!(
            read_into(&server, &mut input, true).expect("read"),
            (room, false)
        );
        assert!(is_marked_readable(&server), "a full read keeps the mark");
        // The rest, a short read: not asked, the mark stays and the next
        // read finds nothing.
        input.clear();
        input.reserve(4096);
        assert_eq!(
            read_into(&server, &mut input, false).expect("read"),
            (1500 - room, false)
        );
        assert!(is_marked_readable(&server));
        let nothing = read_into(&server, &mut input, false).expect_err("empty");
        assert_eq!(nothing.kind(), io::ErrorKind::WouldBlock);
        // Asked: the short read itself clears the mark.
        client.write_all(b"ping").await.expect("write");
        holds(&server, 4).await;
        input.clear();
        assert_eq!(
            read_into(&server, &mut input, true).expect("read"),
            (4, true)
        );
        assert_eq!(&input[..], b"ping");
        assert!(!is_marked_readable(&server), "cleared with the short read");
        // Data that comes later marks the socket again.
        client.write_all(b"pong").await.expect("write");
        server.readable().await.expect("readable again");
        input.clear();
        assert_eq!(
            read_into(&server, &mut input, true).expect("read"),
            (4, true)
        );
        assert_eq!(&input[..], b"pong");
    }
}
