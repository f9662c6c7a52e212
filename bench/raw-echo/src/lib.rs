//! A raw framed echo server: the baseline the gate's throughput is measured
//! against.
//!
//! Same framing and response layout as the gate (BE16 packages; each
//! request `content ‖ BE32 session` is answered `content ‖ 01 ‖ BE32
//! session`), but no login, no handshake, no sessions, no cache, no agent:
//! what is left is the cost of the sockets and the framing, which is the
//! floor any gate pays. `client bench --raw` drives it with the same load as
//! the gate, so the ratio of the two is the gate's overhead.
//!
//! It is built like the gate should be, so the comparison is fair: one task
//! per connection, zero-copy decoding, and all responses to what one read
//! brought in written back with a single write. A request shorter than 4
//! bytes, or one whose echo would not fit in a package, closes the
//! connection, as the gate does.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use codec::{PackageCodec, Request, Response, ResponseFlag};

/// Read buffer size per connection; grows for larger packages.
const READ_BUF: usize = 16 * 1024;

/// The accept queue of the listener: the same as the gate's listeners
/// (`gate::net::LISTEN_BACKLOG`), so a burst of connects is queued, not
/// refused, on both sides of the comparison.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener on `addr` set up as the gate sets up its own
/// (`gate::net::listen`): `SO_REUSEADDR`, `TCP_NODELAY` inherited by
/// accepted sockets on Linux, an accept queue of [`LISTEN_BACKLOG`].
///
/// Must be called from within a tokio runtime.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves echo connections accepted on `listener` until `shutdown` is
/// cancelled, then closes every connection and returns once their tasks
/// ended.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    accept_loop(listener, shutdown, |stream| async move {
        if let Err(e) = echo(stream).await {
            tracing::debug!(error = %e, "raw echo connection ended");
        }
    })
    .await;
}

/// Accepts on `listener` until `shutdown` is cancelled, running `handle`
/// on each connection in a task of its own; then closes every connection
/// and returns once their tasks ended.
async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: CancellationToken, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let shutdown = shutdown.clone();
                let connection = handle(stream);
                tracker.spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        () = connection => {}
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning on accept.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
    tracker.close();
    tracker.wait().await;
}

/// A dumb byte relay, the baseline of the gate's service path: every
/// connection accepted on `listener` gets one connection of its own to
/// `upstream` and the bytes are copied both ways
/// (`tokio::io::copy_bidirectional`) until either side closes; until
/// `shutdown` is cancelled, like [`serve`]. In front of the raw echo
/// server it is what a proxy that does nothing but copy costs, against
/// the gate multiplexing every player over one link to a service.
pub async fn relay(listener: TcpListener, upstream: SocketAddr, shutdown: CancellationToken) {
    accept_loop(listener, shutdown, |mut client| async move {
        let copied = async {
            client.set_nodelay(true)?;
            let mut server = TcpStream::connect(upstream).await?;
            server.set_nodelay(true)?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await
        };
        if let Err(e) = copied.await {
            tracing::debug!(error = %e, "relayed connection ended");
        }
    })
    .await;
}

/// One connection: read what is there, answer every complete request, write
/// the answers in one go.
async fn echo(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut codec = PackageCodec;
    let mut input = BytesMut::with_capacity(READ_BUF);
    let mut output = BytesMut::with_capacity(READ_BUF);
    loop {
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        while let Some(package) = codec.decode(&mut input).map_err(io::Error::other)? {
            let Some(request) = Request::parse(package) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request shorter than 4 bytes",
                ));
            };
            Response::encode(
                &request.content,
                ResponseFlag::OK,
                request.number,
                &mut output,
            )
            .map_err(io::Error::other)?;
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_each_request_with_ok_and_session() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, shutdown.clone()));

        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut out = BytesMut::new();
        Request::encode(b"echo", 7, &mut out).unwrap();
        Request::encode(b"", 8, &mut out).unwrap();
        // Split mid-header to check reassembly.
        client.write_all(&out[..1]).await.unwrap();
        client.write_all(&out[1..]).await.unwrap();
        let mut expected = BytesMut::new();
        Response::encode(b"echo", ResponseFlag::OK, 7, &mut expected).unwrap();
        Response::encode(b"", ResponseFlag::OK, 8, &mut expected).unwrap();
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, &expected[..]);

        // A short request closes the connection.
        client.write_all(b"\x00\x02ab").await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);

        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn the_relay_passes_every_byte_both_ways() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(echo, shutdown.clone()));
        let relayed = tokio::spawn(relay(front, echo_addr, shutdown.clone()));
        let mut client = TcpStream::connect(front_addr).await.unwrap();
        let mut out = BytesMut::new();
        for n in 0..100u32 {
            Request::encode(&n.to_be_bytes(), n, &mut out).unwrap();
        }
        client.write_all(&out).await.unwrap();
        let mut expected = BytesMut::new();
        for n in 0..100u32 {
            Response::encode(&n.to_be_bytes(), ResponseFlag::OK, n, &mut expected).unwrap();
        }
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, &expected[..]);
        shutdown.cancel();
        server.await.unwrap();
        relayed.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_closes_open_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, shutdown.clone()));
        let mut client = TcpStream::connect(addr).await.unwrap();
        // Make sure the connection is being served before shutting down.
        let mut out = BytesMut::new();
        Request::encode(b"x", 1, &mut out).unwrap();
        client.write_all(&out).await.unwrap();
        let mut got = [0u8; 8];
        client.read_exact(&mut got).await.unwrap();
        shutdown.cancel();
        server.await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
