//! A WebSocket client connection as a [`Transport`] (`docs/PROTOCOL.md`
//! §9): one binary message per package, over TCP or TLS.
//!
//! Answers are written into the driver's buffer as packages, like over
//! TCP, then cut into messages as the WebSocket takes them; that buffer is
//! the send queue `gate.send_queue_bytes` bounds. Every message already
//! read is served before the answers are flushed (unless they pile up), so
//! a pipelining client gets one write for a batch, as over TCP.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use codec::websocket::close_code_of;
use futures::task::noop_waker_ref;
use futures::{Sink, SinkExt, Stream, StreamExt};
use gate_core::connection::{Connection, Mapping, Message as Received};
use gate_core::{End, ProtocolError};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::transport::{Flow, Read, Serve, Transport};
use crate::net::web::WebIo;

/// Queued bytes at which answers are sent even while input is waiting.
const FLUSH_AT: usize = 32 * 1024;

type Input = Option<Result<Message, tungstenite::Error>>;

/// The WebSocket, and a message it gave that is not served yet.
#[derive(Debug)]
pub(super) struct Ws {
    ws: WebSocketStream<WebIo>,
    /// Read by [`Transport::poll_input`] (or kept by a pause).
    next: Option<Input>,
    /// The WebSocket holds written bytes not yet flushed.
    unflushed: bool,
    /// Bytes read since the last data message.
    wire: usize,
    /// The connection is sealed: the driver's packages carry a tag.
    sealed: bool,
}

impl Ws {
    pub(super) fn new(ws: WebSocketStream<WebIo>) -> Ws {
        Ws {
            ws,
            next: None,
            unflushed: false,
            wire: 0,
            sealed: false,
        }
    }

    /// Whether `pending` begins with a whole package.
    fn has_unit(&self, pending: &[u8]) -> bool {
        if self.sealed {
            loginproto::seal::sealed_unit_len(pending).is_some()
        } else {
            codec::websocket::Mapping::Packages.has_unit(pending)
        }
    }

    /// The next message if one is there without waiting.
    fn next_now(&mut self) -> Option<Input> {
        if let Some(next) = self.next.take() {
            return Some(next);
        }
        // A no-op waker: if nothing is there, the driver polls again with
        // its own waker before it waits.
        let mut cx = Context::from_waker(noop_waker_ref());
        match Pin::new(&mut self.ws).poll_next(&mut cx) {
            Poll::Ready(input) => Some(input),
            Poll::Pending => None,
        }
    }
}

/// The message of the first whole package in `pending` (`sealed`: its
/// ciphertext and tag), taken off.
fn outgoing(pending: &mut BytesMut, sealed: bool) -> Option<Message> {
    if !sealed {
        return codec::websocket::Mapping::Packages
            .outgoing(pending)
            .ok()
            .flatten();
    }
    let unit = loginproto::seal::sealed_unit_len(pending)?;
    pending.advance(2);
    Some(Message::Binary(pending.split_to(unit - 2).freeze()))
}

/// What a received message is for the connection machine.
fn received(input: Input) -> Result<Received, End> {
    match input {
        Some(Ok(Message::Binary(payload))) => Ok(Received::Binary(payload)),
        Some(Ok(Message::Text(_))) => Ok(Received::Text),
        // Pings are answered by the WebSocket layer itself.
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(Received::Control),
        None | Some(Ok(Message::Close(_))) => Ok(Received::Close),
        Some(Err(tungstenite::Error::Io(e))) => Err(e.kind().into()),
        Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
            Err(End::PeerClosed)
        }
        Some(Err(e)) => Err(ProtocolError::WebSocket(close_code_of(&e).0).into()),
    }
}

/// A write error as an ending.
fn write_failed(e: tungstenite::Error) -> End {
    match e {
        tungstenite::Error::Io(e) => e.kind().into(),
        _ => End::PeerClosed,
    }
}

impl Transport for Ws {
    const MAPPING: Mapping = Mapping::Messages;

    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        if self.next.is_some() {
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.ws).poll_next(cx);
        if let Poll::Ready(input) = polled {
            self.next = Some(input);
            return Poll::Ready(Ok(()));
        }
        // Frames that complete no message (empty fragments) are consumed
        // inside the WebSocket layer without a message: count their bytes
        // here, and have `read` report a flood to the machine.
        self.wire = self
            .wire
            .saturating_add(self.ws.get_mut().observer_mut().take());
        if self.wire > gate_core::connection::MAX_WIRE_WITHOUT_DATA {
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }

    fn has_buffered(&self) -> bool {
        self.next.is_some()
    }

    fn read(
        &mut self,
        conn: &mut Connection,
        pending: &mut BytesMut,
        mut serve: impl Serve,
    ) -> Result<Read, End> {
        let mut read = Read::Nothing;
        conn.wire_without_data(self.wire)?;
        while pending.len() < FLUSH_AT {
            let Some(input) = self.next_now() else { break };
            let message = received(input)?;
            // Only data messages count as input (for the idle timeout).
            if matches!(message, Received::Binary(_)) {
                read = Read::Data;
            }
            // What the socket gave for this message: a data message spends
            // it, anything else adds to what arrived without data.
            self.wire = self
                .wire
                .saturating_add(self.ws.get_mut().observer_mut().take());
            if matches!(message, Received::Binary(_)) {
                self.wire = 0;
            } else {
                conn.wire_without_data(self.wire)?;
            }
            if let Some(input) = conn.message(message, pending)?
                && serve(conn, input, pending)? == Flow::Pause
            {
                break;
            }
        }
        Ok(read)
    }

    fn flush(&mut self, _pending: &mut BytesMut) -> Result<(), End> {
        // Written in `poll_write`, which has a waker for the sink.
        Ok(())
    }

    fn begin_sealed(&mut self, pending: &mut BytesMut) {
        // The `200 OK` goes in the clear. The sink holds nothing this
        // early, so it only buffers the message.
        if let Some(message) = outgoing(pending, false)
            && Pin::new(&mut self.ws).start_send(message).is_ok()
        {
            self.unflushed = true;
        }
        self.sealed = true;
    }

    fn wants_write(&self, pending: &BytesMut) -> bool {
        self.unflushed || self.has_unit(pending)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, pending: &mut BytesMut) -> Result<(), End> {
        while self.has_unit(pending) {
            let ws = &mut self.ws;
            match Pin::new(&mut *ws).poll_ready(cx) {
                Poll::Ready(ready) => ready.map_err(write_failed)?,
                Poll::Pending => return Ok(()),
            }
            if let Some(message) = outgoing(pending, self.sealed) {
                Pin::new(&mut *ws)
                    .start_send(message)
                    .map_err(write_failed)?;
                self.unflushed = true;
            }
        }
        super::tcp::release_if_empty(pending);
        if self.unflushed {
            match Pin::new(&mut self.ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(write_failed(e)),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Sends what is queued, then a close frame with `code`, and waits for
    /// the client's close.
    async fn close(
        &mut self,
        mut pending: BytesMut,
        code: u16,
        closed: impl FnOnce() + Send,
        stop_waiting: impl Future<Output = ()> + Send,
    ) {
        let mut sent = Ok(());
        while let Some(message) = outgoing(&mut pending, self.sealed) {
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
        closed();
        if sent.is_err() {
            return;
        }
        // The client's close frame, or the end of the connection.
        tokio::select! {
            () = async { while let Some(Ok(_)) = self.ws.next().await {} } => {}
            () = stop_waiting => {}
        }
    }

    fn abort(&mut self, end: &End) -> impl Future<Output = ()> + Send {
        let answer = matches!(end, End::PeerClosed);
        async move {
            if answer {
                // Send the reply to the client's close frame.
                let _ = self.ws.flush().await;
            }
        }
    }
}
