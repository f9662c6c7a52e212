//! Dialling, optionally from a chosen local address: one loopback source
//! address gives a load generator about 28,000 connections to one port (the
//! ephemeral port range), so `client bench --source-addrs 127.0.0.2,...`
//! spreads connections over several.
//!
//! An address `ws://host:port/path` dials the same server over WebSocket
//! (`docs/PROTOCOL.md` §9), `wss://` over TLS to a server whose certificate
//! a CA of [`trust_ca_file`] signed, and `tls://host:port` the plain
//! protocol inside TLS (a `[tls]` listener); [`Stream`] then carries the
//! same lines or packages as a TCP connection would, so everything above
//! is the same.

use std::io;
use std::net::{IpAddr, SocketAddr};

use std::path::Path;
use std::sync::{Arc, OnceLock};

use codec::websocket::{Mapping, MessageStream};
use tokio::net::{TcpSocket, TcpStream, lookup_host};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::either::Either;

/// A connection to the login server or the gate: TCP or TLS over it
/// (left), or WebSocket carrying the same bytes (right; boxed: it is much
/// larger than a socket).
pub type Stream = Either<WsIo, Box<MessageStream<WsIo>>>;

/// What a WebSocket runs on: TCP (`ws://`, left) or TLS over it (`wss://`,
/// right).
pub type WsIo = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// The TCP connection under a [`Stream`].
pub trait Underlying {
    /// The socket.
    fn tcp(&self) -> &TcpStream;
}

impl Underlying for WsIo {
    fn tcp(&self) -> &TcpStream {
        match self {
            Either::Left(s) => s,
            Either::Right(tls) => tls.get_ref().0,
        }
    }
}

impl Underlying for Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Either::Left(io) => io.tcp(),
            Either::Right(ws) => ws.get_ref().get_ref().tcp(),
        }
    }
}

static TRUSTED: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Trusts the CA certificates in `path` (PEM) for every later `wss://`
/// and `tls://` connection of this process. Once per process.
pub fn trust_ca_file(path: &Path) -> Result<(), String> {
    let config = tlsfiles::client_config(path).map_err(|e| e.to_string())?;
    TRUSTED
        .set(Arc::new(config))
        .map_err(|_| "the trusted CAs are set already".to_owned())
}

/// The host and port of a `ws://` or `wss://` address (and whether it is
/// `wss://`), or `None` for a plain `host:port`.
pub fn websocket_host(addr: &str) -> Option<(&str, bool)> {
    let (rest, tls) = match addr.strip_prefix("wss://") {
        Some(rest) => (rest, true),
        None => (addr.strip_prefix("ws://")?, false),
    };
    Some((rest.split_once('/').map_or(rest, |(host, _)| host), tls))
}

/// Dials `addr` (`host:port`, or `ws://host:port[/path]` for WebSocket
/// with `mapping`), from `source` when given (see [`connect`]).
pub async fn dial(addr: &str, source: Option<IpAddr>, mapping: Mapping) -> io::Result<Stream> {
    if let Some(host) = addr.strip_prefix("tls://") {
        let stream = connect(host, source).await?;
        stream.set_nodelay(true)?;
        return Ok(Either::Left(tls_over(host, stream, "tls://").await?));
    }
    let Some((host, tls)) = websocket_host(addr) else {
        let stream = connect(addr, source).await?;
        stream.set_nodelay(true)?;
        return Ok(Either::Left(Either::Left(stream)));
    };
    let stream = connect(host, source).await?;
    stream.set_nodelay(true)?;
    let stream = if tls {
        tls_over(host, stream, "wss://").await?
    } else {
        Either::Left(stream)
    };
    let url = if host.len() + addr.find("://").map_or(0, |i| i + 3) < addr.len() {
        addr.to_owned()
    } else {
        format!("{addr}/")
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(
            mapping.max_message(codec::line::LineCodec::DEFAULT_MAX_BUFFERED),
        ))
        .max_frame_size(Some(codec::package::MAX_PAYLOAD));
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(codec::websocket::io_error)?;
    Ok(Either::Right(Box::new(MessageStream::new(ws, mapping))))
}

/// TLS over `stream` to `host` (checked against its certificate), trusting
/// the CAs of [`trust_ca_file`]; `scheme` names the address kind in the
/// error when none were given.
async fn tls_over(host: &str, stream: TcpStream, scheme: &str) -> io::Result<WsIo> {
    let config = TRUSTED.get().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{scheme} needs the CA that signed the server's certificate (--tls-ca-file)"),
        )
    })?;
    let name =
        tlsfiles::server_name(host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(name, stream)
        .await?;
    Ok(Either::Right(Box::new(tls)))
}

/// Connects to `addr` (`host:port`), from `source` (port chosen by the
/// kernel) when given. Tries each address `addr` resolves to of the same
/// family as `source`, in order.
pub async fn connect(addr: &str, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let mut last = None;
    for target in lookup_host(addr).await? {
        if target.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = if source.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{addr} has no address of the family of {source}"),
        )
    }))
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn connects_from_the_given_source() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let source: IpAddr = "127.0.0.2".parse().unwrap();
        let stream = connect(&addr, Some(source)).await.unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), source);
        assert_eq!(stream.local_addr().unwrap().ip(), source);
        let plain = connect(&addr, None).await.unwrap();
        assert!(plain.local_addr().unwrap().ip().is_loopback());
        let v6: IpAddr = "::1".parse().unwrap();
        assert!(connect(&addr, Some(v6)).await.is_err());
    }
}
