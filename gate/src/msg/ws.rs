//! One WebSocket client connection (`docs/PROTOCOL.md` §9), on one task:
//! the HTTP upgrade, the handshake, then requests and responses until the
//! connection ends — the same session, cache, pushes, kicks and limits as
//! a TCP connection (`conn`), with each package one binary message.
//!
//! What the TCP task writes into its buffer as packages (responses, the
//! greeting, the outbox, the kick) is written here the same way into
//! `wbuf`, then cut into messages as the WebSocket takes them; `wbuf` is
//! the send queue `gate.send_queue_bytes` bounds. Every message that is
//! already read is served before the answers are flushed, so a pipelining
//! client gets one write for a batch, as over TCP.
//!
//! A close frame from the client ends the connection (the session is then
//! away, as after a TCP close); its requests still running answer into the
//! cache for the next connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::websocket::{Mapping, MappingError, close_code_of};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::conn::{OpenConn, Unbind, checked_handshake, ended};
use super::core::{Bound, GateCore};
use super::end::End;
use super::handle::ConnHandle;
use super::metrics::bump;
use super::requests::{Link, serve_package};
use crate::net::SourceSlot;
use crate::net::web::{UpgradeError, WebIo, WebPolicy};
use crate::wire;

/// How long a closing connection may take to flush and see the client's
/// close frame.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Queued bytes at which answers are sent even while input is waiting.
const FLUSH_AT: usize = 32 * 1024;

type Ws = WebSocketStream<WebIo>;

/// Runs one accepted WebSocket connection to its end.
pub(super) fn run(
    core: Arc<GateCore>,
    stream: TcpStream,
    addr: SocketAddr,
    slots: (OwnedSemaphorePermit, SourceSlot),
    policy: Arc<WebPolicy>,
) -> impl Future<Output = ()> + Send {
    let _ = stream.set_nodelay(true);
    let open = OpenConn::new(core, slots);
    async move {
        let core = &open.core;
        let _counted = WsOpen::new(core);
        let Some((ws, bound)) = Box::pin(handshake(core, stream, addr, &policy)).await else {
            return;
        };
        let mut conn = WsConn {
            ws,
            wbuf: BytesMut::new(),
        };
        let mut bound = bound;
        conn.wbuf = std::mem::take(&mut bound.greeting);
        let link = Link::new(core, bound);
        let end = {
            let _unbind = Unbind(&link);
            conn.session(&link).await
        };
        if let End::WebSocket(_) = end {
            bump(&core.metrics.ws_protocol_closes);
        }
        if ended(&link, &end, &mut conn.wbuf) {
            Box::pin(conn.close(core, end.close_code(), Some(&link.handle))).await;
        } else {
            link.handle.set_finished();
            if matches!(end, End::PeerClosed) {
                // Send the reply to the client's close frame.
                let _ = tokio::time::timeout(CLOSE_LINGER, conn.ws.flush()).await;
            }
        }
    }
}

/// Counts a WebSocket connection as open until dropped.
struct WsOpen<'a>(&'a GateCore);

impl<'a> WsOpen<'a> {
    fn new(core: &'a GateCore) -> WsOpen<'a> {
        core.metrics
            .ws_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WsOpen(core)
    }
}

impl Drop for WsOpen<'_> {
    fn drop(&mut self) {
        self.0
            .metrics
            .ws_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The upgrade and the handshake package, both within the handshake
/// deadline. Refused, the status is sent as a message and the connection
/// closed here.
async fn handshake(
    core: &Arc<GateCore>,
    stream: TcpStream,
    addr: SocketAddr,
    policy: &WebPolicy,
) -> Option<(Ws, Bound)> {
    let deadline = Instant::now() + core.cfg.handshake_timeout;
    let first = tokio::time::timeout_at(deadline, async {
        let mut ws = match policy.upgrade(stream, addr).await {
            Ok(ws) => ws,
            Err(e) => {
                bump(match e {
                    UpgradeError::Origin(_) => &core.metrics.ws_origin_refused,
                    UpgradeError::Handshake(_) => &core.metrics.ws_upgrades_failed,
                });
                tracing::debug!(%addr, error = %e, "WebSocket upgrade failed");
                return None;
            }
        };
        let first = read_first(core, &mut ws).await;
        Some((ws, first))
    })
    .await;
    let (ws, first) = match first {
        Ok(Some(first)) => first,
        Ok(None) => return None,
        Err(_) => {
            bump(&core.metrics.handshakes_refused);
            bump(&core.metrics.handshake_timeouts);
            tracing::debug!(%addr, end = %End::HandshakeTimeout, "connection closed");
            return None;
        }
    };
    let mut conn = WsConn {
        ws,
        wbuf: BytesMut::new(),
    };
    let payload = match first {
        Ok(payload) => payload,
        Err(end) => {
            if let End::WebSocket(_) = end {
                bump(&core.metrics.ws_protocol_closes);
            }
            tracing::debug!(%addr, %end, "connection closed before its handshake");
            if end.graceful() {
                conn.close(core, end.close_code(), None).await;
            }
            return None;
        }
    };
    match checked_handshake(core, &payload, addr) {
        Ok(bound) => Some((conn.ws, bound)),
        Err(status) => {
            if let Some(status) = status {
                wire::write_status(&mut conn.wbuf, status);
            }
            conn.close(core, 1000, None).await;
            None
        }
    }
}

/// Reads until the first binary message (the handshake package).
async fn read_first(core: &GateCore, ws: &mut Ws) -> Result<Bytes, End> {
    loop {
        let message = tokio::select! {
            biased;
            () = core.draining.cancelled() => return Err(End::Shutdown),
            message = ws.next() => message,
        };
        match received(message)? {
            Some(payload) => return Ok(payload),
            None => continue,
        }
    }
}

/// What one received message means for the gate: a package's payload,
/// nothing (a control message), or the end of the connection.
fn received(message: Option<Result<Message, tungstenite::Error>>) -> Result<Option<Bytes>, End> {
    match message {
        Some(Ok(Message::Binary(payload))) => {
            if payload.len() > codec::package::MAX_PAYLOAD {
                return Err(End::WebSocket(
                    MappingError::TooLarge(payload.len()).close_code(),
                ));
            }
            Ok(Some(payload))
        }
        Some(Ok(Message::Text(_))) => {
            Err(End::WebSocket(MappingError::WrongKind("text").close_code()))
        }
        // Pings are answered by the WebSocket layer itself.
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(None),
        None | Some(Ok(Message::Close(_))) => Err(End::PeerClosed),
        Some(Err(tungstenite::Error::Io(e))) => Err(End::Io(e.kind())),
        Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
            Err(End::PeerClosed)
        }
        Some(Err(e)) => Err(End::WebSocket(close_code_of(&e).0)),
    }
}

/// What woke the session loop.
enum Event {
    /// The handle: a close request or responses in the outbox.
    Woken,
    /// A message (or the end of the input).
    Received(Option<Result<Message, tungstenite::Error>>),
    /// Writing failed.
    WriteFailed(tungstenite::Error),
}

/// The WebSocket and the packages not yet handed to it.
struct WsConn {
    ws: Ws,
    wbuf: BytesMut,
}

impl WsConn {
    /// The authenticated part of the connection.
    async fn session(&mut self, link: &Link<'_>) -> End {
        let core = link.core;
        let limit = core.cfg.send_queue_bytes;
        let mut draining = false;
        let note_input = link.start_idle_timer();
        // Whether the WebSocket holds written bytes not yet flushed.
        let mut unflushed = true;
        loop {
            tokio::task::consume_budget().await;
            if self.wbuf.len() > limit {
                return End::SlowReader;
            }
            if draining && self.wbuf.is_empty() && link.user.lock().session.inflight() == 0 {
                return End::Shutdown;
            }
            let (ws, wbuf) = (&mut self.ws, &mut self.wbuf);
            let event = std::future::poll_fn(|cx| {
                if link.handle.poll_woken(cx).is_ready() {
                    return Poll::Ready(Event::Woken);
                }
                // Input first: everything already read is served before
                // its answers are flushed (unless they pile up).
                if wbuf.len() >= FLUSH_AT
                    && let Err(e) = pump(ws, wbuf, &mut unflushed, cx)
                {
                    return Poll::Ready(Event::WriteFailed(e));
                }
                if !draining && let Poll::Ready(message) = Pin::new(&mut *ws).poll_next(cx) {
                    return Poll::Ready(Event::Received(message));
                }
                match pump(ws, wbuf, &mut unflushed, cx) {
                    Err(e) => Poll::Ready(Event::WriteFailed(e)),
                    Ok(()) => Poll::Pending,
                }
            })
            .await;
            match event {
                Event::Woken => match link.woken(&mut self.wbuf) {
                    Ok(drain) => draining |= drain,
                    Err(end) => return end,
                },
                Event::Received(message) => match received(message) {
                    Ok(Some(payload)) => {
                        if note_input {
                            link.note_input();
                        }
                        if let Err(end) = serve_package(payload, &mut self.wbuf, link) {
                            return end;
                        }
                    }
                    Ok(None) => {}
                    Err(end) => return end,
                },
                Event::WriteFailed(e) => {
                    return match e {
                        tungstenite::Error::Io(e) => End::Io(e.kind()),
                        _ => End::PeerClosed,
                    };
                }
            }
            unflushed = true;
        }
    }

    /// Sends what is queued, then a close frame with `code` (then tells
    /// `handle`, if any, that the connection is closed: a kick waits for
    /// that), and waits for the client's close, all within
    /// [`CLOSE_LINGER`].
    async fn close(&mut self, core: &GateCore, code: u16, handle: Option<&ConnHandle>) {
        let linger = async {
            let mut sent = Ok(());
            while let Ok(Some(message)) = Mapping::Packages.outgoing(&mut self.wbuf) {
                sent = self.ws.feed(message).await;
                if sent.is_err() {
                    break;
                }
            }
            if sent.is_ok() {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: "".into(),
                };
                sent = self.ws.send(Message::Close(Some(frame))).await;
            }
            if let Some(handle) = handle {
                handle.set_finished();
            }
            if sent.is_err() {
                return;
            }
            // The client's close frame, or the end of the connection.
            tokio::select! {
                () = async { while let Some(Ok(_)) = self.ws.next().await {} } => {}
                () = core.draining.cancelled() => {}
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(CLOSE_LINGER, linger) => {}
            () = core.hard.cancelled() => {}
        }
        if let Some(handle) = handle {
            handle.set_finished();
        }
    }
}

/// Hands queued packages to the WebSocket as far as it takes them, and
/// flushes. `Ok` whether or not everything went out (what did not waits
/// for the socket, which wakes the task).
fn pump(
    ws: &mut Ws,
    wbuf: &mut BytesMut,
    unflushed: &mut bool,
    cx: &mut Context<'_>,
) -> Result<(), tungstenite::Error> {
    while Mapping::Packages.has_unit(wbuf) {
        match Pin::new(&mut *ws).poll_ready(cx) {
            Poll::Ready(ready) => ready?,
            Poll::Pending => return Ok(()),
        }
        if let Ok(Some(message)) = Mapping::Packages.outgoing(wbuf) {
            Pin::new(&mut *ws).start_send(message)?;
            *unflushed = true;
        }
    }
    if wbuf.is_empty() && wbuf.capacity() > 0 {
        *wbuf = BytesMut::new();
    }
    if *unflushed {
        match Pin::new(&mut *ws).poll_flush(cx) {
            Poll::Ready(Ok(())) => *unflushed = false,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => {}
        }
    }
    Ok(())
}
