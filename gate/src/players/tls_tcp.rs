//! A client connection on the gate's TLS listener (`[tls] gate_listen`) as
//! a [`Transport`]: the byte stream of BE16 packages, as over plain TCP,
//! inside TLS (rustls). Everything after the TLS handshake is the same
//! protocol; the transport only moves bytes through the TLS session.
//!
//! Input is read into the connection's own buffer when the session has
//! plaintext for it; answers are written into the TLS session as the
//! driver makes them and flushed once per batch. A live upgrade cannot
//! move a TLS session (its keys live in this process): such a connection
//! is closed, and its client reconnects to its session with the next
//! index.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use futures::task::noop_waker_ref;
use gate_core::End;
use gate_core::connection::{Connection, Mapping};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::tcp::{release_if_empty, serve_all};
use super::transport::{Flow, Read, Serve, Transport};

/// Room kept free in the input buffer for one read.
const READ: usize = 4096;

/// The TLS session and what was read from it and not yet served.
#[derive(Debug)]
pub(super) struct TlsTcp {
    /// Boxed: a TLS session is large, and idle connections hold this.
    stream: Box<TlsStream<TcpStream>>,
    rbuf: BytesMut,
    /// `rbuf` got bytes the machine has not seen yet.
    fresh: bool,
    /// The client closed its side.
    eof: bool,
    /// The last read stopped at a pause: `rbuf` holds whole packages.
    paused: bool,
    /// Answers are in the TLS session, not yet flushed to the socket.
    unflushed: bool,
}

impl TlsTcp {
    pub(super) fn new(stream: TlsStream<TcpStream>) -> TlsTcp {
        let _ = stream.get_ref().0.set_nodelay(true);
        TlsTcp {
            stream: Box::new(stream),
            rbuf: BytesMut::new(),
            fresh: false,
            eof: false,
            paused: false,
            unflushed: false,
        }
    }

    /// Reads what the TLS session has into `rbuf`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ {
            self.rbuf.reserve(READ);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut *self.stream), cx, &mut self.rbuf) {
            Poll::Ready(Ok(0)) => {
                self.eof = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(_)) => {
                self.fresh = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.kind().into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Transport for TlsTcp {
    const MAPPING: Mapping = Mapping::Stream;

    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        if self.fresh || self.eof {
            return Poll::Ready(Ok(()));
        }
        self.poll_fill(cx)
    }

    fn has_buffered(&self) -> bool {
        self.paused
    }

    fn read(
        &mut self,
        conn: &mut Connection,
        pending: &mut BytesMut,
        mut serve: impl Serve,
    ) -> Result<Read, End> {
        if !self.fresh && !self.eof && !self.paused {
            // A no-op waker: if nothing is there, the driver polls again
            // with its own waker before it waits.
            let mut cx = Context::from_waker(noop_waker_ref());
            match self.poll_fill(&mut cx) {
                Poll::Ready(result) => result?,
                Poll::Pending => return Ok(Read::Nothing),
            }
        }
        self.fresh = false;
        let flow = serve_all(conn, &mut self.rbuf, pending, &mut serve);
        release_if_empty(&mut self.rbuf);
        self.paused = flow? == Flow::Pause;
        if self.eof && !self.paused {
            return Ok(Read::Eof);
        }
        Ok(Read::Data)
    }

    fn flush(&mut self, _pending: &mut BytesMut) -> Result<(), End> {
        // Written in `poll_write`, which has a waker for the session.
        Ok(())
    }

    fn wants_write(&self, pending: &BytesMut) -> bool {
        self.unflushed || !pending.is_empty()
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, pending: &mut BytesMut) -> Result<(), End> {
        while !pending.is_empty() {
            match Pin::new(&mut *self.stream).poll_write(cx, pending) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    pending.advance(n);
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Err(e.kind().into()),
                Poll::Pending => break,
            }
        }
        release_if_empty(pending);
        if self.unflushed {
            match Pin::new(&mut *self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(e.kind().into()),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Writes what is queued, ends the TLS session (close_notify, then
    /// FIN), and reads, discarding, until the client closes.
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
        self.rbuf = BytesMut::with_capacity(READ);
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
            () = stop_waiting => {}
        }
    }

    fn abort(&mut self, _end: &End) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}
