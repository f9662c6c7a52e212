//! [`Tapped`]: a byte stream that tells an observer how many bytes each
//! read gave. The WebSocket listener counts the bytes that complete no
//! message (the control-frame budget); the operations listener starts its
//! header clock at a request's first byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a [`Tapped`] stream tells of its reads.
pub trait ReadObserver: Unpin {
    /// A read gave `n` bytes (more than zero).
    fn read(&mut self, n: usize);
}

/// A stream whose reads an observer sees (see the module docs); writes
/// pass straight through.
#[derive(Debug)]
pub struct Tapped<S, O> {
    io: S,
    observer: O,
}

impl<S, O> Tapped<S, O> {
    /// `io`, with its reads told to `observer`.
    pub fn new(io: S, observer: O) -> Tapped<S, O> {
        Tapped { io, observer }
    }

    /// The observer.
    pub fn observer_mut(&mut self) -> &mut O {
        &mut self.observer
    }
}

impl<S: AsyncRead + Unpin, O: ReadObserver> AsyncRead for Tapped<S, O> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.observer.read(n);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin, O: Unpin> AsyncWrite for Tapped<S, O> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Counts the bytes read ([`ReadCount::take`] gives and resets the count).
#[derive(Debug, Default)]
pub struct ReadCount(usize);

impl ReadCount {
    /// Bytes read since the last call.
    pub fn take(&mut self) -> usize {
        std::mem::take(&mut self.0)
    }
}

impl ReadObserver for ReadCount {
    fn read(&mut self, n: usize) {
        self.0 = self.0.saturating_add(n);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reads_are_counted_and_writes_pass() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut tapped = Tapped::new(a, ReadCount::default());
        b.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        let n = tapped.read(&mut buf).await.unwrap();
        assert_eq!(tapped.observer_mut().take(), n);
        assert_eq!(tapped.observer_mut().take(), 0);
        tapped.write_all(b"back").await.unwrap();
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"back");
    }
}
