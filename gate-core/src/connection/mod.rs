//! Every rule one client connection follows, as a state machine without
//! I/O: the one place to read how a connection is treated.
//!
//! A [`Connection`] lives from accept to close. The driver feeds it what
//! arrived (bytes of a TCP stream, or WebSocket messages) and the time, and
//! it answers with what to do: the next [`Input`] for the session (the
//! handshake package, a request), bytes to write (heartbeat answers, a
//! refusal's status, the farewell), the next deadline
//! ([`Connection::poll_timeout`]), or how the connection ends ([`End`]).
//! The session's own rules (index, cache, pushes, the in-flight bound) are
//! [`crate::session`]'s; this machine carries its packages.
//!
//! # Phases
//!
//! ```text
//!   accept ──▶ Handshake ──(first package accepted)──▶ Open ──▶ (End)
//!                 │  deadline, refused, EOF                │  EOF: answers, then HalfClosed
//!                 └──────────────────────────────▶ (End)   │  drain: answers, then Shutdown
//! ```
//!
//! # The rules
//!
//! * **Framing.** Over a stream, packages are BE16-length-prefixed
//!   ([`Mapping::Stream`]); over WebSocket each binary message is one
//!   package ([`Mapping::Messages`]): a text message is a protocol error
//!   (close 1003), one over 65535 bytes too (1009).
//! * **Handshake deadline.** The first package must arrive within
//!   `handshake_timeout` of the accept ([`End::HandshakeTimeout`]).
//! * **Heartbeat.** An opted-in client's empty package is answered with an
//!   empty package; from a plain client it is an invalid request, as in
//!   skynet (closed).
//! * **Idle timeout.** A connection that sends nothing for its idle
//!   timeout (opted-in and plain clients have their own, 0 = none) is
//!   closed ([`End::IdleTimeout`]).
//! * **Half-close.** After the client's FIN nothing more is read; once what
//!   it asked is answered and written, or after the grace, the connection
//!   closes ([`End::HalfClosed`]).
//! * **Control-frame budget** (WebSocket): at most [`MAX_CONTROL_RUN`]
//!   pings and pongs between two data messages, and at most
//!   [`MAX_WIRE_WITHOUT_DATA`] bytes that complete no data message; beyond
//!   either the client is closed with 1008.
//! * **Slow reader.** More than `send_queue_bytes` waiting to be written:
//!   cut at once ([`End::SlowReader`]), no farewell.
//! * **Sealed channel** (`docs/PROTOCOL.md` §3.2). A connection whose
//!   handshake asked for it ([`Connection::accepted`] with a channel)
//!   opens every package it is given after the handshake
//!   (`BE16(len) ‖ ciphertext ‖ tag` on a stream, `ciphertext ‖ tag` as a
//!   WebSocket message) with the next counter; one that fails (altered,
//!   dropped, replayed, reordered) closes the connection
//!   ([`ProtocolError::BadSeal`]), after what was already asked is
//!   answered. Everything written after the `200 OK` is sealed: the
//!   machine's own heartbeat answers, and whatever the driver writes,
//!   through [`Connection::seal_from`].
//! * **Drain** (gate shutdown): nothing more is read; once what was asked
//!   is answered and written, the connection closes ([`End::Shutdown`]),
//!   an opted-in client told so with a kick package.
//! * **How it closes** is [`End`]'s: graceful or not, the close code; the
//!   farewell is the session's queued packages and its kick, or for a
//!   shutdown the kick written by [`Connection::farewell`].

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::message::Request;
use codec::package::{MAX_PAYLOAD, decode_package};
use codec::status::GateStatus;
use loginproto::seal::{self, Channel, Direction, TAG_LEN};
use serde::{Deserialize, Serialize};

use crate::end::{End, ProtocolError};
use crate::time::Time;
use crate::wire;

/// How long a closing connection may take to write what is queued and
/// see the client close, before the socket is dropped.
pub const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Control messages (pings, pongs) a WebSocket client may send between
/// two data messages. Each costs a wake-up and a pong written back; a
/// client sending nothing else has no use for more.
pub const MAX_CONTROL_RUN: u8 = 64;

/// Bytes a WebSocket client may send without completing a data message:
/// control frames, empty or tiny fragments. A package of 65535 bytes cut
/// into one-byte fragments takes about 460 KiB; more than this is a flood.
pub const MAX_WIRE_WITHOUT_DATA: usize = 1 << 20;

/// The settings a connection lives by (from the gate's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// From accept to the handshake package.
    pub handshake_timeout: Duration,
    /// Silence after which an opted-in connection is closed (zero: never).
    pub idle_timeout: Duration,
    /// The same for a plain skynet connection (zero: never).
    pub plain_idle_timeout: Duration,
    /// Bytes waiting to be written beyond which the client is cut.
    pub send_queue_bytes: usize,
    /// After the client's FIN, how long its requests may take to be
    /// answered.
    pub half_close_grace: Duration,
}

impl Default for ConnLimits {
    fn default() -> ConnLimits {
        ConnLimits {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            plain_idle_timeout: Duration::ZERO,
            send_queue_bytes: 1 << 20,
            half_close_grace: Duration::from_secs(5),
        }
    }
}

impl ConnLimits {
    /// The idle timeout of a connection that opted in to the extensions
    /// (`true`) or not, if it has one.
    pub fn idle(&self, opted_in: bool) -> Option<Duration> {
        let idle = if opted_in {
            self.idle_timeout
        } else {
            self.plain_idle_timeout
        };
        (!idle.is_zero()).then_some(idle)
    }
}

/// How packages travel on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mapping {
    /// A byte stream (TCP, TLS): BE16 length, then the payload.
    Stream,
    /// WebSocket: one binary message per package.
    Messages,
}

/// A WebSocket message, as the connection sees it (the driver maps its
/// WebSocket library's type onto this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A binary message: one package's payload.
    Binary(Bytes),
    /// A text message (not part of the gate's mapping).
    Text,
    /// A ping, a pong, or a raw frame (answered by the WebSocket layer).
    Control,
    /// The client's close frame, or the end of the input.
    Close,
}

/// What the session must be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The first package: the handshake, to check and then
    /// [`Connection::accepted`] or [`Connection::refuse`].
    Handshake(Bytes),
    /// A request.
    Request(Request),
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Waiting for the handshake package until the deadline.
    Handshake {
        /// When it is too late.
        deadline: Time,
    },
    /// Authenticated: requests and answers.
    Open,
}

/// One connection's rules and state (see the module docs). Plain data: the
/// limits are the gate's configuration, given again when it is read back
/// ([`Connection::with_limits`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    #[serde(skip)]
    limits: Arc<ConnLimits>,
    /// Before the handshake: when it is too late. After the client's FIN:
    /// when it is closed even if not all is answered. Else unused.
    deadline: Time,
    /// When the client last sent something (for the idle timeout).
    last_input: Time,
    mapping: Mapping,
    /// The handshake was accepted.
    open: bool,
    /// The client opted in to the extensions (heartbeats, the kick).
    opted_in: bool,
    /// Asked to drain: no more reading, close once answered.
    draining: bool,
    /// The client's FIN came: no more reading; closed once answered or at
    /// `deadline`.
    half_closed: bool,
    /// WebSocket control messages since the last data message.
    controls: u8,
    /// The sealed channel, if the handshake asked for it (boxed: most
    /// connections have none, and every idle one is kept small).
    #[serde(default)]
    seal: Option<Box<SealState>>,
}

/// A sealed connection's channel: both directions' keys and counters (a
/// live upgrade carries them to the new process, as plain data).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "SealData", into = "SealData")]
struct SealState {
    /// What the gate seals with (gate to client).
    send: Direction,
    /// What the gate opens with (client to gate).
    recv: Direction,
}

/// [`SealState`] written out.
#[derive(Serialize, Deserialize)]
struct SealData {
    send_key: [u8; 32],
    send_next: u64,
    recv_key: [u8; 32],
    recv_next: u64,
}

impl From<SealData> for SealState {
    fn from(data: SealData) -> SealState {
        SealState {
            send: Direction::from_parts(data.send_key, data.send_next),
            recv: Direction::from_parts(data.recv_key, data.recv_next),
        }
    }
}

impl From<SealState> for SealData {
    fn from(state: SealState) -> SealData {
        SealData {
            send_key: *state.send.key(),
            send_next: state.send.next(),
            recv_key: *state.recv.key(),
            recv_next: state.recv.next(),
        }
    }
}

impl SealState {
    /// Opens one package's body with the receiving direction.
    fn open(&mut self, body: BytesMut) -> Result<Bytes, End> {
        self.recv
            .open_body(body)
            .map_err(|_| ProtocolError::BadSeal.into())
    }
}

impl Connection {
    /// A connection accepted at `now`, with the handshake deadline running.
    pub fn new(now: Time, mapping: Mapping, limits: Arc<ConnLimits>) -> Connection {
        Connection {
            deadline: now + limits.handshake_timeout,
            limits,
            last_input: now,
            mapping,
            open: false,
            opted_in: false,
            draining: false,
            half_closed: false,
            controls: 0,
            seal: None,
        }
    }

    /// A connection read back from its written-out state, living by
    /// `limits` from now on.
    pub fn with_limits(mut self, limits: Arc<ConnLimits>) -> Connection {
        self.limits = limits;
        self
    }

    /// Where the connection is.
    pub fn phase(&self) -> Phase {
        if self.open {
            Phase::Open
        } else {
            Phase::Handshake {
                deadline: self.deadline,
            }
        }
    }

    /// How packages travel on it.
    pub fn mapping(&self) -> Mapping {
        self.mapping
    }

    /// Whether the client opted in to the extensions.
    pub fn opted_in(&self) -> bool {
        self.opted_in
    }

    /// Whether the connection is sealed (`docs/PROTOCOL.md` §3.2).
    pub fn sealed(&self) -> bool {
        self.seal.is_some()
    }

    /// Seals the whole plain packages written to `out[start..]` (the
    /// driver calls this after each write of packages), if the connection
    /// is sealed; otherwise leaves them.
    pub fn seal_from(&mut self, out: &mut BytesMut, start: usize) -> Result<(), End> {
        match &mut self.seal {
            Some(state) if out.len() > start => seal::seal_packages(&mut state.send, out, start)
                .map_err(|_| ProtocolError::BadSeal.into()),
            _ => Ok(()),
        }
    }

    /// Whether the driver should read from the socket: not after the
    /// client's FIN, not while draining.
    pub fn reading(&self) -> bool {
        !self.draining && !self.half_closed
    }

    /// Whether [`Connection::input_at`] must be told when input arrives
    /// (only an open connection with an idle timeout cares; the driver
    /// can skip reading the clock otherwise).
    pub fn tracks_input(&self) -> bool {
        self.open && self.limits.idle(self.opted_in).is_some()
    }

    /// Input arrived at `now`.
    pub fn input_at(&mut self, now: Time) {
        self.last_input = now;
    }

    /// The next input in `received` (bytes read from a stream), taking it
    /// off the front; heartbeats are answered into `out` on the way. `None`
    /// when `received` holds no complete package (it keeps the partial
    /// one).
    pub fn next_input(
        &mut self,
        received: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<Input>, End> {
        loop {
            let payload = match &mut self.seal {
                Some(state) if self.open => match seal::decode_sealed(received) {
                    Some(body) => state.open(body)?,
                    None => return Ok(None),
                },
                _ => match decode_package(received) {
                    Some(payload) => payload,
                    None => return Ok(None),
                },
            };
            if let Some(input) = self.package(payload, out)? {
                return Ok(Some(input));
            }
        }
    }

    /// What a received WebSocket message means: an input, nothing (a
    /// control message, a heartbeat answered into `out`), or the end.
    pub fn message(&mut self, message: Message, out: &mut BytesMut) -> Result<Option<Input>, End> {
        match message {
            Message::Binary(payload) if payload.len() > self.max_message() => {
                Err(ProtocolError::TooLarge.into())
            }
            Message::Binary(payload) => {
                self.controls = 0;
                let payload = match &mut self.seal {
                    Some(state) if self.open => state.open(BytesMut::from(payload))?,
                    _ => payload,
                };
                self.package(payload, out)
            }
            Message::Text => Err(ProtocolError::TextMessage.into()),
            Message::Control => {
                self.controls = self.controls.saturating_add(1);
                if self.controls > MAX_CONTROL_RUN {
                    return Err(ProtocolError::ControlFlood.into());
                }
                Ok(None)
            }
            Message::Close => Err(End::PeerClosed),
        }
    }

    /// `bytes` arrived on a WebSocket connection since its last data
    /// message (frame headers, control frames, fragments): over
    /// [`MAX_WIRE_WITHOUT_DATA`] the client is flooding.
    pub fn wire_without_data(&self, bytes: usize) -> Result<(), End> {
        if bytes > MAX_WIRE_WITHOUT_DATA {
            return Err(ProtocolError::ControlFlood.into());
        }
        Ok(())
    }

    /// The largest WebSocket data message: a package, and its tag once
    /// sealed.
    fn max_message(&self) -> usize {
        if self.seal.is_some() && self.open {
            MAX_PAYLOAD + TAG_LEN
        } else {
            MAX_PAYLOAD
        }
    }

    /// One package's payload.
    fn package(&mut self, payload: Bytes, out: &mut BytesMut) -> Result<Option<Input>, End> {
        if !self.open {
            return Ok(Some(Input::Handshake(payload)));
        }
        if payload.is_empty() && self.opted_in {
            // Heartbeat: answered with an empty package.
            let start = out.len();
            wire::write_heartbeat(out);
            self.seal_from(out, start)?;
            return Ok(None);
        }
        Request::parse(payload)
            .map(|request| Some(Input::Request(request)))
            .ok_or(End::Protocol(ProtocolError::InvalidPackage))
    }

    /// The handshake was accepted at `now`: the connection is open, its
    /// idle timeout (if any) running from now, sealed with `seal` if the
    /// handshake asked for it. The driver writes the `200 OK` before this
    /// (it is the one package a sealed connection sends in the clear) and
    /// seals everything after.
    pub fn accepted(&mut self, now: Time, opted_in: bool, seal: Option<Channel>) {
        self.open = true;
        self.opted_in = opted_in;
        self.last_input = now;
        self.seal = seal.map(|Channel { send, recv }| Box::new(SealState { send, recv }));
    }

    /// The handshake was refused with `status` (`None`: without one, the
    /// gate is not taking connections): the status is written to `out` and
    /// the connection ends. Packages pipelined behind the handshake are the
    /// caller's to discard.
    pub fn refuse(&mut self, status: Option<GateStatus>, out: &mut BytesMut) -> End {
        if let Some(status) = status {
            wire::write_status(out, status);
        }
        End::HandshakeRefused(status.map(GateStatus::code))
    }

    /// The client shut down its write side at `now` (end of input). Before
    /// the handshake that ends the connection; after it, nothing more is
    /// read and what was asked is answered within the grace.
    pub fn input_ended(&mut self, now: Time) -> Option<End> {
        if !self.open {
            return Some(End::PeerClosed);
        }
        if !self.half_closed {
            self.half_closed = true;
            self.deadline = now + self.limits.half_close_grace;
        }
        None
    }

    /// The gate is shutting down: read nothing more, close once answered.
    /// Before the handshake the connection just ends.
    pub fn drain(&mut self) -> Option<End> {
        self.draining = true;
        (!self.open).then_some(End::Shutdown)
    }

    /// After each round of work: whether the connection ends, given the
    /// bytes waiting to be written (`queued`) and the session's requests
    /// still running (`inflight`).
    pub fn check(&self, queued: usize, inflight: u32) -> Option<End> {
        if queued > self.limits.send_queue_bytes {
            return Some(End::SlowReader);
        }
        if queued == 0 && inflight == 0 {
            if self.draining {
                return Some(End::Shutdown);
            }
            if self.half_closed {
                return Some(End::HalfClosed);
            }
        }
        None
    }

    /// When [`Connection::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Time> {
        if !self.open || self.half_closed {
            // The handshake deadline, or the half-close grace (reading
            // has stopped: no idle timeout then).
            return Some(self.deadline);
        }
        let idle = self.limits.idle(self.opted_in).filter(|_| self.reading())?;
        Some(self.last_input + idle)
    }

    /// The clock reached `now`: the handshake deadline, the idle timeout or
    /// the half-close grace may be over.
    pub fn handle_timeout(&mut self, now: Time) -> Option<End> {
        if !self.open {
            return (now >= self.deadline).then_some(End::HandshakeTimeout);
        }
        if self.half_closed {
            return (now >= self.deadline).then_some(End::HalfClosed);
        }
        let idle = self.limits.idle(self.opted_in).filter(|_| self.reading())?;
        (now >= self.last_input + idle).then_some(End::IdleTimeout)
    }

    /// Writes what the client is told before a graceful close for `end`
    /// that its session did not already say (the session's farewell is
    /// its queued packages and its kick): a shutdown kick for an opted-in
    /// client (sealed if the connection is).
    pub fn farewell(&mut self, end: &End, out: &mut BytesMut) {
        if self.opted_in
            && self.open
            && matches!(end, End::Shutdown)
            && let Some(text) = end.kick_text()
        {
            let start = out.len();
            wire::write_kick(out, text);
            // A channel that cannot seal any more says nothing.
            if self.seal_from(out, start).is_err() {
                out.truncate(start);
            }
        }
    }
}
