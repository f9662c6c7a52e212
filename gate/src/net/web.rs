//! The WebSocket side of the listeners (`[web]`, `docs/PROTOCOL.md` §9):
//! the HTTP upgrade with its Origin allow-list, and the WebSocket settings
//! each listener uses. The login server then runs its dialogue over
//! [`codec::websocket::MessageStream`]; the gate runs its own connection
//! loop over the messages (`msg::ws`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use codec::websocket::Mapping;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::either::Either;

use super::tap::{ReadCount, Tapped};
use crate::config::WebConfig;
use crate::logging::esc;
use crate::tls::{self, ServerTls, TlsError};

/// A WebSocket connection's byte stream: plain TCP (`ws://`) or TLS over
/// it (`wss://`; boxed: a TLS session is large), counting the bytes read,
/// so a connection can tell how much arrived without completing a message
/// (the control-frame budget, [`gate_core::connection::MAX_WIRE_WITHOUT_DATA`]).
pub type WebIo =
    Tapped<Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>, ReadCount>;

/// What a WebSocket listener checks and how it frames: shared by every
/// connection of the listener.
#[derive(Debug)]
pub struct WebPolicy {
    /// Origins allowed (lower case); `None`: any.
    origins: Option<Vec<String>>,
    mapping: Mapping,
    max_message: usize,
    /// Input buffer of each connection (`web.read_buffer_bytes`).
    read_buffer: usize,
    /// TLS (`wss://`), if configured.
    tls: Option<ServerTls>,
}

/// Why an upgrade did not happen (for the log line).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The page's origin is not allowed (answered `403`).
    #[error("origin {0} not allowed")]
    Origin(String),
    /// Not a WebSocket upgrade, or the connection failed during it.
    #[error("{0}")]
    Handshake(String),
}

impl WebPolicy {
    /// The policy of `config`'s listeners for `mapping`; `max_line` is the
    /// login's line limit (LF included).
    pub fn new(config: &WebConfig, mapping: Mapping, max_line: usize) -> Arc<WebPolicy> {
        WebPolicy::build(config, mapping, max_line, None)
    }

    /// [`WebPolicy::new`] with TLS from `config.tls_cert_file` and
    /// `config.tls_key_file` when both are set (one without the other is an
    /// error).
    pub fn with_tls(
        config: &WebConfig,
        mapping: Mapping,
        max_line: usize,
    ) -> Result<Arc<WebPolicy>, TlsError> {
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(TlsError::File {
                    path: "[web]".to_owned(),
                    why: "tls_cert_file and tls_key_file go together".to_owned(),
                });
            }
        };
        Ok(WebPolicy::build(config, mapping, max_line, tls))
    }

    fn build(
        config: &WebConfig,
        mapping: Mapping,
        max_line: usize,
        tls: Option<ServerTls>,
    ) -> Arc<WebPolicy> {
        let any = config.allowed_origins.iter().any(|o| o == "*");
        Arc::new(WebPolicy {
            origins: (!any).then(|| {
                config
                    .allowed_origins
                    .iter()
                    .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                    .collect()
            }),
            mapping,
            max_message: mapping.max_message(max_line),
            read_buffer: config.read_buffer_bytes.max(256),
            tls,
        })
    }

    /// The mapping of this listener.
    pub fn mapping(&self) -> Mapping {
        self.mapping
    }

    /// The listener's TLS, if it serves `wss://` (a reload replaces its
    /// certificate).
    pub fn tls(&self) -> Option<&ServerTls> {
        self.tls.as_ref()
    }

    /// Whether a request with this `Origin` header value may connect.
    pub fn origin_allowed(&self, origin: Option<&[u8]>) -> bool {
        match (&self.origins, origin) {
            (None, _) | (_, None) => true,
            (Some(list), Some(origin)) => {
                let origin = String::from_utf8_lossy(origin).to_ascii_lowercase();
                list.contains(&origin)
            }
        }
    }

    /// WebSocket settings: messages up to the mapping's limit, a small
    /// input buffer, writes gathered until the caller flushes. No
    /// extensions are offered, so compression is never on.
    pub fn ws_config(&self) -> WebSocketConfig {
        let write = 64 * 1024;
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            .write_buffer_size(write)
            // One message past the gathering size: a slow reader is the
            // caller's to bound (the gate's send queue), not a panic here.
            .max_write_buffer_size(write + self.max_message + 16)
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message))
    }

    /// Runs the TLS handshake (if configured) and the HTTP upgrade on an
    /// accepted connection. A request whose Origin is not allowed is
    /// answered `403 Forbidden`.
    pub async fn upgrade(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
    ) -> Result<WebSocketStream<WebIo>, UpgradeError> {
        let inner = match &self.tls {
            None => Either::Left(stream),
            Some(tls) => Either::Right(Box::new(tls.accept(stream).await.map_err(|e| {
                UpgradeError::Handshake(format!("TLS: {}", esc(e.to_string().as_bytes())))
            })?)),
        };
        self.handshake(Tapped::new(inner, ReadCount::default()), addr)
            .await
    }

    /// Input buffer size of each connection (`web.read_buffer_bytes`).
    pub fn read_buffer(&self) -> usize {
        self.read_buffer
    }

    /// Whether the listener speaks TLS (`wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The HTTP upgrade of a plain (`ws://`) gate connection: its socket
    /// comes back positioned right after the upgrade request, nothing of
    /// the client's frames read, so the gate reads the frames itself (and
    /// the connection can move to another process).
    pub async fn upgrade_plain(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
    ) -> Result<TcpStream, UpgradeError> {
        let ws = self.handshake(HeadOnly::new(stream), addr).await?;
        Ok(ws.into_inner().stream)
    }

    /// The HTTP upgrade itself, over `stream`.
    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        addr: SocketAddr,
    ) -> Result<WebSocketStream<S>, UpgradeError> {
        let mut refused = None;
        // The callback's types are tungstenite's.
        #[allow(clippy::result_large_err)]
        let check = |request: &Request, response: Response| {
            let origin = request.headers().get(header::ORIGIN).map(|v| v.as_bytes());
            if self.origin_allowed(origin) {
                return Ok(response);
            }
            refused = Some(esc(origin.unwrap_or_default()).to_string());
            let mut denied = ErrorResponse::new(Some("origin not allowed\n".to_owned()));
            *denied.status_mut() = StatusCode::FORBIDDEN;
            Err(denied)
        };
        let upgraded =
            tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(self.ws_config()))
                .await;
        match (upgraded, refused) {
            (Ok(ws), _) => Ok(ws),
            (Err(_), Some(origin)) => {
                tracing::info!(%addr, %origin, "WebSocket origin not allowed: 403");
                Err(UpgradeError::Origin(origin))
            }
            (Err(e), None) => Err(UpgradeError::Handshake(
                esc(e.to_string().as_bytes()).to_string(),
            )),
        }
    }
}

/// A socket read only up to the end of an HTTP request's head (the empty
/// line), so an upgrade leaves every byte after it in the socket: frames
/// a client sent right behind its request are not taken into the
/// handshake's buffer. It peeks, then reads what belongs to the head.
#[derive(Debug)]
struct HeadOnly {
    stream: TcpStream,
    /// How much of `CR LF CR LF` the bytes read so far end with (4: the
    /// head is complete, nothing more is read).
    matched: usize,
}

impl HeadOnly {
    fn new(stream: TcpStream) -> HeadOnly {
        HeadOnly { stream, matched: 0 }
    }

    /// How many of `bytes` belong to the head, given `matched` so far;
    /// updates `matched`.
    fn head_part(matched: &mut usize, bytes: &[u8]) -> usize {
        const END: &[u8; 4] = b"\r\n\r\n";
        for (i, &b) in bytes.iter().enumerate() {
            *matched = if b == END[*matched] {
                *matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if *matched == END.len() {
                return i + 1;
            }
        }
        bytes.len()
    }
}

impl AsyncRead for HeadOnly {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.matched == 4 || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut peeked = [0u8; 1024];
            let limit = buf.remaining().min(peeked.len());
            let mut peek = ReadBuf::new(&mut peeked[..limit]);
            std::task::ready!(this.stream.poll_peek(cx, &mut peek))?;
            if peek.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            let take = HeadOnly::head_part(&mut this.matched.clone(), peek.filled());
            // The peeked bytes are queued, so this read takes all `take`.
            match this.stream.try_read(buf.initialize_unfilled_to(take)) {
                Ok(n) => {
                    let mut matched = this.matched;
                    HeadOnly::head_part(&mut matched, &peek.filled()[..n]);
                    this.matched = matched;
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for HeadOnly {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_matched_exactly_and_absent_ones_pass() {
        let config = WebConfig {
            allowed_origins: vec!["https://Game.example/".to_owned()],
            ..WebConfig::default()
        };
        let policy = WebPolicy::new(&config, Mapping::Packages, 8192);
        assert!(policy.origin_allowed(Some(b"https://game.example")));
        assert!(!policy.origin_allowed(Some(b"https://game.example.evil")));
        assert!(!policy.origin_allowed(Some(b"null")));
        assert!(policy.origin_allowed(None));
        let any = WebConfig {
            allowed_origins: vec!["*".to_owned()],
            ..WebConfig::default()
        };
        assert!(WebPolicy::new(&any, Mapping::Lines, 8192).origin_allowed(Some(b"null")));
        assert_eq!(WebPolicy::new(&any, Mapping::Lines, 8192).max_message, 8191);
    }

    #[test]
    fn a_head_ends_at_its_empty_line_across_reads() {
        let mut matched = 0;
        assert_eq!(
            HeadOnly::head_part(&mut matched, b"GET / HTTP/1.1\r\nA: b\r"),
            21
        );
        assert_eq!(matched, 1);
        assert_eq!(HeadOnly::head_part(&mut matched, b"\n\r\n\x82\x85"), 3);
        assert_eq!(matched, 4);
        let mut matched = 0;
        assert_eq!(HeadOnly::head_part(&mut matched, b"a\r\r\n\r\nrest"), 6);
    }
}
