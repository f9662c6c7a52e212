//! What the driver needs of a transport: wait for input, read what has
//! arrived and hand it to the connection machine, write, close. The rules
//! are the machine's ([`gate_core::connection`]); a transport only moves
//! bytes or messages. Two exist: [`super::tcp`] (a byte stream) and
//! [`super::ws`] (WebSocket messages, over TCP or TLS).

use std::future::Future;
use std::task::{Context, Poll};

use bytes::BytesMut;
use gate_core::End;
use gate_core::connection::{Connection, Input, Mapping};

/// Whether the driver takes more input in the same read, or leaves the
/// rest buffered for later (after the handshake, so the session is set up
/// before the packages pipelined behind it are served).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// Go on.
    More,
    /// Stop here; the transport keeps what is left.
    Pause,
}

/// What a read gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// Nothing new (a spurious wake-up).
    Nothing,
    /// Input, all handed to the machine (or kept for after a pause).
    Data,
    /// The client shut down its write side.
    Eof,
}

/// The driver's hook for each input: serves it, with answers due now
/// appended to the buffer it is given.
pub(super) trait Serve:
    FnMut(&mut Connection, Input, &mut BytesMut) -> Result<Flow, End>
{
}

impl<F: FnMut(&mut Connection, Input, &mut BytesMut) -> Result<Flow, End>> Serve for F {}

/// See the module docs.
pub(super) trait Transport: Send {
    /// How packages travel on it.
    const MAPPING: Mapping;

    /// Whether its connections can rest (see `players::rest`).
    const RESTS: bool = false;

    /// Ready once input may be read (or the input ended, or failed).
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>>;

    /// Whether input that arrived earlier is still waiting to be served
    /// (kept by a [`Flow::Pause`]).
    fn has_buffered(&self) -> bool;

    /// Reads what has arrived, without waiting, feeding it to `conn` and
    /// each input to `serve`. Answers go to `pending` (bytes not yet
    /// written), or, where the transport can write them straight away, out
    /// at once with only what the socket refused kept in `pending`.
    fn read(
        &mut self,
        conn: &mut Connection,
        pending: &mut BytesMut,
        serve: impl Serve,
    ) -> Result<Read, End>;

    /// Writes what the socket takes now, without a waker (before a wait).
    fn flush(&mut self, pending: &mut BytesMut) -> Result<(), End>;

    /// The connection is sealed from here on: `pending` holds the `200 OK`
    /// (sent in the clear), every package written after it is sealed
    /// (`BE16(len) ‖ ciphertext ‖ tag`). A stream carries both as they are;
    /// a WebSocket must cut sealed packages with their tags.
    fn begin_sealed(&mut self, pending: &mut BytesMut) {
        let _ = pending;
    }

    /// Bytes the transport holds to write besides `pending` (counted
    /// against the send queue bound).
    fn queued(&self) -> usize {
        0
    }

    /// Whether there is something to write (or flush).
    fn wants_write(&self, pending: &BytesMut) -> bool;

    /// Writes from `pending` what the socket takes, registering for
    /// write readiness when it takes no more. Ok whether or not all went.
    fn poll_write(&mut self, cx: &mut Context<'_>, pending: &mut BytesMut) -> Result<(), End>;

    /// Closes gracefully: writes `pending`, closes (a WebSocket close frame
    /// with `code`), calls `closed` once the close is sent, then waits a
    /// little for the client to close too — until `stop_waiting` resolves
    /// (the gate shuts down). The caller bounds the whole.
    fn close(
        &mut self,
        pending: BytesMut,
        code: u16,
        closed: impl FnOnce() + Send,
        stop_waiting: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = ()> + Send;

    /// Closes at once (the peer is gone, or there is no time); a
    /// WebSocket answers a client's close frame first.
    fn abort(&mut self, end: &End) -> impl Future<Output = ()> + Send;

    /// Whether the connection could rest now (see `players::rest`): a
    /// transport that can, holding nothing.
    fn can_rest(&self) -> bool {
        false
    }

    /// Puts the connection to rest (see `players::rest`); the session loop
    /// asks only where [`Transport::can_rest`] said so. One that cannot
    /// is lost: its session is told so.
    fn rest(
        open: super::driver::OpenConn<Self>,
        opened: super::driver::Opened<Self>,
        user: std::sync::Arc<super::user::User>,
        handle: std::sync::Arc<super::handle::ConnHandle>,
    ) where
        Self: Sized,
    {
        let _ = opened;
        open.core.connection_gone(&user, handle.id, true);
        handle.set_finished();
    }

    /// The transport as a live upgrade moves it to a new process (`None`:
    /// this one cannot move; it is closed for a reconnect).
    fn as_movable(&mut self) -> Option<Movable<'_>> {
        None
    }
}

/// A transport a live upgrade can move: its socket and its state are
/// plain data.
#[derive(Debug)]
pub(super) enum Movable<'a> {
    /// A TCP connection.
    Tcp(&'a mut super::tcp::Tcp),
    /// A plain WebSocket connection.
    WebSocket(&'a mut super::ws_plain::WsPlain),
}

impl Movable<'_> {
    /// The socket's descriptor.
    pub(super) fn stream_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Movable::Tcp(t) => t.stream_fd(),
            Movable::WebSocket(w) => w.stream_fd(),
        }
    }

    /// Input read and not yet served.
    pub(super) fn unread(&self) -> &[u8] {
        match self {
            Movable::Tcp(t) => t.unread(),
            Movable::WebSocket(w) => w.unread(),
        }
    }

    /// The WebSocket state a move carries (`None` for TCP).
    pub(super) fn websocket(&self) -> Option<super::ws_plain::WsState> {
        match self {
            Movable::Tcp(_) => None,
            Movable::WebSocket(w) => Some(w.state()),
        }
    }
}
