//! The gate's connection machine (`gate_core::connection::Connection`)
//! driven the way the driver drives it, by a hostile client and a random
//! scheduler: stream bytes or WebSocket messages, handshakes accepted or
//! refused, the client's FIN, a drain, answers and writes, and the clock
//! moving forward, in any order.
//!
//! Checks: no panic; the first input is the handshake and nothing but
//! requests follows once it is accepted; a `handle_timeout(now)` that ends
//! nothing leaves the next deadline after `now` (else the driver's timer
//! would fire again at once, forever); what the machine writes is whole
//! packages; the state reads back from its written-out form unchanged;
//! once an `End` is returned the harness stops, as the driver does.

#![no_main]

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::package::{MAX_PAYLOAD, decode_package};
use codec::status::GateStatus;
use gate_core::connection::{ConnLimits, Connection, Input, Mapping, Message, Phase};
use gate_core::{End, Time, wire};
use libfuzzer_sys::fuzz_target;

/// Reads the fuzzer's bytes as small numbers and byte strings; zeros (and
/// empty strings) once used up.
struct Fuzz<'a>(&'a [u8]);

impl<'a> Fuzz<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// Up to `len` bytes, fewer when the input runs out.
    fn take(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A duration of 0–2.55 s in steps of 10 ms: small enough that the
    /// timeouts are reached by a few clock steps.
    fn millis(&mut self) -> Duration {
        Duration::from_millis(u64::from(self.byte()) * 10)
    }
}

/// Everything the machine wrote is whole packages (heartbeat answers,
/// statuses, kicks): a client reading it never sees a cut frame.
fn check_whole(out: &BytesMut) {
    let mut buf = out.clone();
    while decode_package(&mut buf).is_some() {}
    assert!(buf.is_empty(), "a partial package was written");
}

/// The driver's side of one connection: the machine, what was read and
/// not yet taken (a partial package waits there for the next read), what
/// is waiting to be written, and the requests handed on and not yet
/// answered.
struct Driver {
    conn: Connection,
    limits: Arc<ConnLimits>,
    now: Time,
    received: BytesMut,
    out: BytesMut,
    inflight: u32,
}

impl Driver {
    /// What the driver does with one input; `Err` when it ends the
    /// connection (a refused handshake).
    fn input(&mut self, input: Input, data: &mut Fuzz) -> Result<(), End> {
        match input {
            Input::Handshake(_) => {
                assert!(
                    matches!(self.conn.phase(), Phase::Handshake { .. }),
                    "a handshake on an open connection"
                );
                // The session decides; here the fuzzer does.
                match data.byte() % 4 {
                    0 => {
                        let status = GateStatus::ALL[usize::from(data.byte()) % GateStatus::ALL.len()];
                        let status = (status != GateStatus::OK).then_some(status);
                        return Err(self.conn.refuse(status, &mut self.out));
                    }
                    choice => self.conn.accepted(self.now, choice == 1, None),
                }
            }
            Input::Request(_) => {
                assert_eq!(
                    self.conn.phase(),
                    Phase::Open,
                    "a request before the handshake"
                );
                self.inflight += 1;
            }
        }
        Ok(())
    }

    /// The driver notes when input arrived, as it does on every read.
    fn arrived(&mut self) {
        if self.conn.tracks_input() {
            self.conn.input_at(self.now);
        }
    }

    /// One step of the scheduler; `Err` with the end once the connection
    /// ends.
    fn step(&mut self, op: u8, data: &mut Fuzz) -> Result<(), End> {
        match op % 10 {
            // Bytes off the socket. The driver reads only while the machine
            // says so, and reads by mapping: a stream or messages.
            0 | 1 if self.conn.reading() => {
                self.arrived();
                match self.conn.mapping() {
                    Mapping::Stream => {
                        let len = usize::from(data.byte());
                        self.received.extend_from_slice(data.take(len));
                        while let Some(input) =
                            self.conn.next_input(&mut self.received, &mut self.out)?
                        {
                            self.input(input, data)?;
                        }
                    }
                    Mapping::Messages => {
                        let message = match data.byte() % 8 {
                            0 => Message::Text,
                            1 => Message::Control,
                            2 => Message::Close,
                            // Past the package limit (a WebSocket message
                            // may be longer than any package).
                            3 => Message::Binary(Bytes::from(vec![0; MAX_PAYLOAD + 1])),
                            _ => {
                                let len = usize::from(data.byte());
                                Message::Binary(Bytes::copy_from_slice(data.take(len)))
                            }
                        };
                        if let Some(input) = self.conn.message(message, &mut self.out)? {
                            self.input(input, data)?;
                        }
                    }
                }
            }
            2 if self.conn.reading() => {
                if let Some(end) = self.conn.input_ended(self.now) {
                    return Err(end);
                }
            }
            3 => {
                if let Some(end) = self.conn.drain() {
                    return Err(end);
                }
            }
            // A handler answered (its response joins what waits to be
            // written).
            4 if self.inflight > 0 => {
                self.inflight -= 1;
                let len = usize::from(data.byte()) * 8;
                let answer = wire::response(self.inflight, Some(&vec![b'a'; len]));
                self.out.extend_from_slice(&answer);
            }
            // The socket took everything.
            5 => self.out.clear(),
            // The clock moves; the timer fires (maybe early or late, as
            // timers do, so not only at the deadline).
            6 | 7 => {
                self.now += data.millis();
                if let Some(end) = self.conn.handle_timeout(self.now) {
                    return Err(end);
                }
                if let Some(at) = self.conn.poll_timeout() {
                    assert!(at > self.now, "deadline {at:?} not after {:?}", self.now);
                }
            }
            // Written out and read back (the upgrade handoff).
            8 => {
                let text = serde_json::to_string(&self.conn).expect("serializable");
                let back: Connection = serde_json::from_str(&text).expect("reads back");
                let back = back.with_limits(Arc::clone(&self.limits));
                assert_eq!(serde_json::to_string(&back).unwrap(), text);
                assert_eq!(back.phase(), self.conn.phase());
                assert_eq!(back.poll_timeout(), self.conn.poll_timeout());
                self.conn = back;
            }
            _ => {}
        }
        check_whole(&self.out);
        // After every round of work, as the driver checks.
        match self.conn.check(self.out.len(), self.inflight) {
            Some(end) => Err(end),
            None => Ok(()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut data = Fuzz(data);
    let limits = Arc::new(ConnLimits {
        handshake_timeout: data.millis(),
        idle_timeout: data.millis(),
        plain_idle_timeout: data.millis(),
        send_queue_bytes: usize::from(data.byte()) * 16,
        half_close_grace: data.millis(),
    });
    let mapping = if data.byte() & 1 == 0 {
        Mapping::Stream
    } else {
        Mapping::Messages
    };
    let mut d = Driver {
        conn: Connection::new(Time::ZERO, mapping, Arc::clone(&limits)),
        limits,
        now: Time::ZERO,
        received: BytesMut::new(),
        out: BytesMut::new(),
        inflight: 0,
    };
    while !data.0.is_empty() {
        let op = data.byte();
        if let Err(end) = d.step(op, &mut data) {
            // The driver's last words on a graceful end, then it stops.
            if end.graceful() {
                d.conn.farewell(&end, &mut d.out);
            }
            check_whole(&d.out);
            let _ = (end.close_code(), end.label(), end.kick_text());
            return;
        }
    }
});
