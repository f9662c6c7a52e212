//! A plain (`ws://`) WebSocket client connection as a [`Transport`]
//! (`docs/PROTOCOL.md` §9): the gate reads and writes the frames itself
//! ([`gate_core::websocket`]) on the socket the HTTP upgrade left, so all
//! its state is bytes and plain data and a live upgrade moves it like a
//! TCP connection.
//!
//! Answers are written into the driver's buffer as packages, like over
//! TCP, and become binary frames as they are written (in place when they
//! are small); pongs and the close reply go to the frames queue at once.
//! Every frame already read is served before the answers are written, so a
//! pipelining client gets one write for a batch.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use gate_core::connection::{Connection, Mapping, Message as Received};
use gate_core::websocket::{self, Frame, FrameReader, Opcode};
use gate_core::{End, ProtocolError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::read_ahead::ReadAhead;
use super::tcp::{read_into, release_if_empty, with_scratch, write_now};
use super::transport::{Flow, Read, Serve, Transport};

/// A sealed package's tag, as [`WsPlain::tag`] keeps it.
const TAG: u8 = loginproto::seal::TAG_LEN as u8;

/// The socket, what was read and not yet served, and frames not yet
/// written.
#[derive(Debug)]
pub(crate) struct WsPlain {
    stream: TcpStream,
    /// Input not yet taken: a partial frame, or frames behind a pause.
    rbuf: BytesMut,
    /// A fragmented message in progress.
    reader: FrameReader,
    /// Frames not yet written (answers already framed, pongs, a close
    /// reply).
    frames: BytesMut,
    /// Bytes read since the last data message.
    wire: usize,
    /// How much to read at a time.
    read_size: usize,
    /// The last read stopped at a pause: `rbuf` holds whole frames.
    paused: bool,
    /// Data messages the last read served (pings, pongs and fragments
    /// are not input for the idle timeout), up to 255.
    data: u8,
    /// Bytes a package carries beyond its header's length: the tag, once
    /// the connection is sealed ([`Transport::begin_sealed`]).
    tag: u8,
    /// Whether to read once more after a short read.
    ahead: ReadAhead,
}

/// What a live upgrade carries of a plain WebSocket connection besides its
/// descriptor, its unread input and its unwritten packages.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WsState {
    /// The frame reader (a fragmented message in progress).
    pub reader: FrameReader,
    /// Frames made and not yet written.
    pub frames: Bytes,
    /// Bytes read since the last data message.
    pub wire: usize,
    /// Read size.
    pub read_size: usize,
    /// The connection is sealed: its packages carry a tag.
    #[serde(default)]
    pub sealed: bool,
}

impl WsPlain {
    /// A connection whose upgrade just completed; messages up to
    /// `max_message` bytes, read `read_size` bytes at a time.
    pub(super) fn new(stream: TcpStream, max_message: usize, read_size: usize) -> WsPlain {
        let _ = stream.set_nodelay(true);
        WsPlain {
            stream,
            rbuf: BytesMut::new(),
            reader: FrameReader::new(max_message),
            frames: BytesMut::new(),
            wire: 0,
            read_size,
            paused: false,
            data: 0,
            tag: 0,
            ahead: ReadAhead::default(),
        }
    }

    /// A connection taken over from an old process, with what it had read
    /// and not served.
    pub(super) fn restored(stream: TcpStream, unread: &[u8], state: WsState) -> WsPlain {
        let _ = stream.set_nodelay(true);
        WsPlain {
            stream,
            rbuf: BytesMut::from(unread),
            reader: state.reader,
            frames: BytesMut::from(&state.frames[..]),
            wire: state.wire,
            read_size: state.read_size,
            paused: !unread.is_empty(),
            data: 0,
            tag: if state.sealed { TAG } else { 0 },
            ahead: ReadAhead::default(),
        }
    }

    /// The socket's descriptor.
    pub(super) fn stream_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Input read and not yet served.
    pub(super) fn unread(&self) -> &[u8] {
        &self.rbuf
    }

    /// The rest of the state a move carries.
    pub(super) fn state(&self) -> WsState {
        WsState {
            reader: self.reader.clone(),
            frames: Bytes::copy_from_slice(&self.frames),
            wire: self.wire,
            read_size: self.read_size,
            sealed: self.tag != 0,
        }
    }

    /// Serves the whole frames in `input`, until a pause.
    fn serve_frames(
        &mut self,
        input: &mut BytesMut,
        conn: &mut Connection,
        pending: &mut BytesMut,
        serve: &mut impl Serve,
    ) -> Result<Flow, End> {
        loop {
            let (frame, wire) = match self.reader.read(input) {
                Ok(Some(next)) => next,
                Ok(None) => return Ok(Flow::More),
                Err(e) => return Err(ProtocolError::WebSocket(e.close_code()).into()),
            };
            let message = match frame {
                Frame::Binary(payload) => {
                    self.wire = 0;
                    self.data = self.data.saturating_add(1);
                    Received::Binary(payload)
                }
                Frame::Text => Received::Text,
                Frame::Ping(payload) => {
                    websocket::write_frame(Opcode::Pong, &payload, &mut self.frames);
                    Received::Control
                }
                Frame::Pong => Received::Control,
                Frame::Close(code) => {
                    // Answers already made go first, then the reply.
                    websocket::packages_to_frames(pending, &mut self.frames, usize::from(self.tag));
                    websocket::write_close(websocket::close_reply(code), &mut self.frames);
                    Received::Close
                }
                Frame::Fragment => {
                    self.wire = self.wire.saturating_add(wire);
                    conn.wire_without_data(self.wire)?;
                    continue;
                }
            };
            if !matches!(message, Received::Binary(_)) {
                self.wire = self.wire.saturating_add(wire);
                conn.wire_without_data(self.wire)?;
            }
            if let Some(input) = conn.message(message, pending)?
                && serve(conn, input, pending)? == Flow::Pause
            {
                return Ok(Flow::Pause);
            }
        }
    }

    /// Reads what arrived and serves its frames (see [`Transport::read`]).
    fn read_frames(
        &mut self,
        conn: &mut Connection,
        pending: &mut BytesMut,
        serve: &mut impl Serve,
    ) -> Result<Read, End> {
        if self.paused || !self.rbuf.is_empty() {
            self.ahead.waited();
            if !self.paused {
                if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 2 {
                    self.rbuf.reserve(self.read_size);
                }
                match self.stream.try_read_buf(&mut self.rbuf) {
                    Ok(0) => return Ok(Read::Eof),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read::Nothing),
                    Err(e) => return Err(e.kind().into()),
                }
            }
            let mut input = std::mem::take(&mut self.rbuf);
            let flow = with_scratch(|_, output| {
                self.serve_and_write(&mut input, conn, pending, output, serve)
            })?;
            self.rbuf = input;
            release_if_empty(&mut self.rbuf);
            self.paused = flow? == Flow::Pause;
            return Ok(Read::Data);
        }
        with_scratch(|input, output| {
            // As over TCP: a short read clears the readable mark when the
            // read after it rarely finds anything (`ReadAhead`).
            let cleared = match read_into(&self.stream, input, self.ahead.clear_if_short()) {
                Ok((0, _)) => {
                    self.ahead.read(false, false);
                    return Ok(Read::Eof);
                }
                Ok((_, cleared)) => cleared,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ahead.read(false, false);
                    return Ok(Read::Nothing);
                }
                Err(e) => return Err(e.kind().into()),
            };
            self.ahead.read(true, cleared);
            let flow = self.serve_and_write(input, conn, pending, output, serve)?;
            if self.data > 1 {
                // The client has more than one request in flight.
                self.ahead.several();
            }
            let paused = matches!(flow, Ok(Flow::Pause));
            if !input.is_empty() {
                self.rbuf.extend_from_slice(input);
                if !paused {
                    // The start of a frame: the reader makes room for the
                    // rest of it (it takes nothing from a partial frame).
                    let _ = self.reader.read(&mut self.rbuf);
                }
            }
            self.paused = flow? == Flow::Pause;
            Ok(Read::Data)
        })
    }

    /// Serves the whole frames in `input` (until a pause). When nothing
    /// waits to go out, the answers are made in `output` (the thread's
    /// scratch buffer), framed and written at once, and only what the
    /// socket refuses is kept; otherwise they queue in `pending` behind
    /// what is there. The serving's own error, if any, is in the inner
    /// result; the outer one is a failed write.
    fn serve_and_write(
        &mut self,
        input: &mut BytesMut,
        conn: &mut Connection,
        pending: &mut BytesMut,
        output: &mut BytesMut,
        serve: &mut impl Serve,
    ) -> Result<Result<Flow, End>, End> {
        if !pending.is_empty() || !self.frames.is_empty() {
            return Ok(self.serve_frames(input, conn, pending, serve));
        }
        let flow = self.serve_frames(input, conn, output, serve);
        websocket::packages_to_frames(output, &mut self.frames, usize::from(self.tag));
        let written = write_now(&self.stream, &self.frames)?;
        self.frames.advance(written);
        // The frames may share the scratch buffer: let go of it (keeping
        // an own copy of what the socket refused), so that it is reused.
        self.frames = if self.frames.is_empty() {
            BytesMut::new()
        } else {
            BytesMut::from(&self.frames[..])
        };
        // Whole packages were all framed; anything else stays in order.
        pending.extend_from_slice(output);
        Ok(flow)
    }

    /// Frames what is in `pending` and writes what the socket takes now.
    fn write_ready(&mut self, pending: &mut BytesMut) -> Result<(), End> {
        websocket::packages_to_frames(pending, &mut self.frames, usize::from(self.tag));
        release_if_empty(pending);
        let written = write_now(&self.stream, &self.frames)?;
        self.frames.advance(written);
        release_if_empty(&mut self.frames);
        Ok(())
    }
}

impl Transport for WsPlain {
    const MAPPING: Mapping = Mapping::Messages;
    const RESTS: bool = true;

    fn can_rest(&self) -> bool {
        self.rbuf.is_empty() && !self.paused && self.frames.is_empty()
    }

    fn rest(
        open: super::driver::OpenConn<WsPlain>,
        opened: super::driver::Opened<WsPlain>,
        user: std::sync::Arc<super::user::User>,
        handle: std::sync::Arc<super::handle::ConnHandle>,
    ) {
        let state = Box::new(opened.transport.state());
        super::rest::lay_down(
            super::rest::Kept::Ws(open, state),
            opened.transport.stream,
            opened.conn,
            user,
            handle,
        );
    }

    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        self.stream
            .poll_read_ready(cx)
            .map_err(|e| End::from(e.kind()))
    }

    fn has_buffered(&self) -> bool {
        self.paused
    }

    /// Input kept from before (frames behind a pause, or the start of a
    /// frame) is served from the connection's own buffer, read into as
    /// needed; otherwise the socket is read into the worker thread's large
    /// scratch buffer (as over TCP), and only what is left of it (a partial
    /// frame, frames behind a pause) is copied into the connection's own.
    fn read(
        &mut self,
        conn: &mut Connection,
        pending: &mut BytesMut,
        mut serve: impl Serve,
    ) -> Result<Read, End> {
        self.data = 0;
        let read = self.read_frames(conn, pending, &mut serve)?;
        // Only data messages count as input (for the idle timeout).
        Ok(match read {
            Read::Data if self.data == 0 => Read::Nothing,
            other => other,
        })
    }

    fn flush(&mut self, pending: &mut BytesMut) -> Result<(), End> {
        self.write_ready(pending)
    }

    fn begin_sealed(&mut self, pending: &mut BytesMut) {
        // The `200 OK` in the clear, everything after with its tag.
        websocket::packages_to_frames(pending, &mut self.frames, 0);
        self.tag = TAG;
    }

    fn queued(&self) -> usize {
        self.frames.len()
    }

    fn wants_write(&self, pending: &BytesMut) -> bool {
        !pending.is_empty() || !self.frames.is_empty()
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, pending: &mut BytesMut) -> Result<(), End> {
        loop {
            self.write_ready(pending)?;
            if self.frames.is_empty() {
                return Ok(());
            }
            match self.stream.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e.kind().into()),
                Poll::Pending => return Ok(()),
            }
        }
    }

    /// Sends what is queued, then a close frame with `code`, and waits for
    /// the client's close frame (or the end of the connection).
    async fn close(
        &mut self,
        mut pending: BytesMut,
        code: u16,
        closed: impl FnOnce() + Send,
        stop_waiting: impl Future<Output = ()> + Send,
    ) {
        websocket::packages_to_frames(&mut pending, &mut self.frames, usize::from(self.tag));
        websocket::write_close(code, &mut self.frames);
        let frames = std::mem::take(&mut self.frames);
        let sent = self.stream.write_all(&frames).await;
        drop((pending, frames));
        closed();
        if sent.is_err() {
            return;
        }
        let reader = &mut self.reader;
        let (stream, rbuf) = (&mut self.stream, &mut self.rbuf);
        let answered = async {
            loop {
                loop {
                    match reader.read(rbuf) {
                        Ok(Some((Frame::Close(_), _))) | Err(_) => return,
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                    }
                }
                rbuf.reserve(512);
                match stream.read_buf(rbuf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::select! {
            () = answered => {}
            () = stop_waiting => {}
        }
    }

    fn abort(&mut self, end: &End) -> impl Future<Output = ()> + Send {
        // The reply to a client's close frame is queued: send it.
        let answer = matches!(end, End::PeerClosed) && !self.frames.is_empty();
        async move {
            if answer {
                let _ = self.stream.write_all(&self.frames).await;
                self.frames.clear();
            }
        }
    }

    fn as_movable(&mut self) -> Option<super::transport::Movable<'_>> {
        Some(super::transport::Movable::WebSocket(self))
    }
}
