//! How a login connection closes: the status line and the FIN leave
//! together, then we linger.
//!
//! Closing is "lingering": we send FIN after the last byte and then read
//! and discard whatever the client still sends, for a short bounded time.
//! Closing a socket with unread input makes the kernel send RST, which can
//! destroy the status line before the client has read it (e.g. a client
//! that sends its token line right after a proof that we answer with 401).

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use codec::websocket::MessageStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::dialogue::READ_BUF;
use crate::net::web::WebIo;

/// Longest we keep reading (and discarding) after the status line, waiting
/// for the client's FIN. Well-behaved clients close at once.
const LINGER: Duration = Duration::from_secs(2);

/// Most bytes discarded while lingering before we give up on a clean FIN.
const LINGER_BYTES: usize = 64 * 1024;

/// A login connection's byte stream: a `TcpStream` in production,
/// `tokio::io::duplex` in unit tests.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Writes the last bytes of the dialogue (the status line); the caller
    /// shuts the stream down right after.
    fn write_last(&mut self, bytes: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
}

impl Stream for TcpStream {
    async fn write_last(&mut self, bytes: &[u8]) -> io::Result<()> {
        write_before_fin(self, bytes).await
    }
}

/// The dialogue over WebSocket: each line one text message.
impl Stream for MessageStream<WebIo> {
    async fn write_last(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }
}

/// The dialogue over TLS (`[tls] login_listen`).
impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    async fn write_last(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }
}

/// Writes `bytes` with `MSG_MORE`: the kernel holds them until the
/// `shutdown` that follows, which sends them together with the FIN in one
/// segment (one fewer for both ends to process). On other systems, a plain
/// write.
#[cfg(target_os = "linux")]
async fn write_before_fin(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            socket.send_with_flags(bytes, libc::MSG_MORE | libc::MSG_NOSIGNAL)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
async fn write_before_fin(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await
}

/// Discards input until the client's FIN (bounded in time and bytes), in
/// the dialogue's read buffer.
pub(super) async fn linger<S: Stream>(stream: &mut S, buf: &mut BytesMut) {
    // `timeout` polls the reads first: the timer is only armed if the
    // client has not closed yet.
    let _ = timeout(LINGER, async {
        let mut discarded = 0;
        while discarded <= LINGER_BYTES {
            buf.clear();
            // Reuses the whole buffer (the lines read are gone by now).
            buf.reserve(READ_BUF);
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}
