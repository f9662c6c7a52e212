//! What other parties queue for a session's connection (pushes, and
//! answers made by other tasks), and how the connection takes it.

use bytes::{Bytes, BytesMut};
use codec::message::{MAX_RESPONSE_CONTENT, ResponseFlag};
use serde::{Deserialize, Serialize};

use super::{Conn, ConnId, Effect, PushRefused, Session, State};
use crate::End;
use crate::wire::{self, Package};

/// Most packages' room an emptied outbox keeps for the next ones
/// ([`Session::write_outbox`]): a connection that is sent answers or
/// pushes all the time does not allocate for each batch, and one that got
/// a burst once does not keep its room.
pub const OUTBOX_KEPT: usize = 32;

/// Something queued for the bound connection by another party (a late
/// answer, a push).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outgoing {
    /// A complete response package.
    Response {
        /// Its request number. Serialized under its old name, so that state
        /// written out by a gate before the rename reads back unchanged.
        #[serde(rename = "session")]
        number: u32,
        /// The package.
        package: Package,
    },
    /// A push, framed when written: the payload is shared with the backlog
    /// (and, for a push to all, with every other session's).
    Push {
        /// Its sequence number.
        seq: u32,
        /// Its payload.
        payload: Bytes,
    },
}

impl Outgoing {
    /// Bytes it takes on the wire.
    pub fn wire_len(&self) -> usize {
        match self {
            Outgoing::Response { package, .. } => package.len(),
            Outgoing::Push { payload, .. } => wire::flagged_len(payload.len()),
        }
    }

    /// Appends it to `out`.
    pub fn write_to(&self, out: &mut BytesMut) {
        match self {
            Outgoing::Response { package, .. } => out.extend_from_slice(package),
            Outgoing::Push { seq, payload } => {
                wire::write_flagged(out, payload, ResponseFlag::PUSH, *seq);
            }
        }
    }
}

impl<C: Conn> Session<C> {
    /// Numbers `payload` as the session's next push, keeps it for replay
    /// and, on an opted-in connection, queues it. The effect wakes that
    /// connection, or cuts it when its queue is full (the push stays in
    /// the backlog for its reconnect).
    pub fn push(&mut self, payload: Bytes) -> Result<(u32, Option<Effect<C>>), PushRefused> {
        if payload.len() > MAX_RESPONSE_CONTENT {
            return Err(PushRefused::TooLarge);
        }
        if matches!(self.state, State::Ended(_)) {
            return Err(PushRefused::Ended);
        }
        let seq = self
            .pushes
            .push(
                payload.clone(),
                self.limits.push_backlog,
                self.limits.push_backlog_bytes,
            )
            .ok_or(PushRefused::Exhausted)?;
        let effect = match &mut self.state {
            State::Online(b) if b.ext => {
                let len = wire::flagged_len(payload.len());
                if b.outbox_bytes as usize + len > self.limits.send_queue_bytes {
                    // The task has not even taken what is queued: the
                    // client does not read.
                    Some(Effect::Close {
                        conn: b.conn.clone(),
                        cause: End::SlowReader,
                        farewell: None,
                    })
                } else {
                    self.queue(Outgoing::Push { seq, payload })
                        .map(Effect::Wake)
                }
            }
            _ => None,
        };
        Ok((seq, effect))
    }

    /// Writes what was queued for `conn` to `out` (nothing if it is not
    /// the session's connection) and returns how many packages that was.
    /// The outbox keeps its allocation (up to [`OUTBOX_KEPT`] packages) for
    /// the next ones.
    pub fn write_outbox(&mut self, conn: ConnId, out: &mut BytesMut) -> usize {
        let State::Online(b) = &mut self.state else {
            return 0;
        };
        if b.conn.id() != conn {
            return 0;
        }
        b.outbox_bytes = 0;
        let written = b.outbox.len();
        for item in b.outbox.drain(..) {
            item.write_to(out);
        }
        if written > 0 {
            self.cache.outbox_written();
        }
        if b.outbox.capacity() > OUTBOX_KEPT {
            b.outbox = Vec::new();
        }
        written
    }

    /// Bytes queued for the bound connection and not yet taken by it (0
    /// when no connection is bound).
    pub fn queued_bytes(&self) -> usize {
        match &self.state {
            State::Online(b) => b.outbox_bytes as usize,
            _ => 0,
        }
    }

    /// Queues `item` for the bound connection; the connection to wake, if
    /// its outbox was empty. (A connection whose outbox holds something
    /// was woken when the first of it came and has not taken it yet; it
    /// takes everything at once.)
    pub(super) fn queue(&mut self, item: Outgoing) -> Option<C> {
        let State::Online(b) = &mut self.state else {
            return None;
        };
        b.outbox_bytes = b
            .outbox_bytes
            .saturating_add(u32::try_from(item.wire_len()).unwrap_or(u32::MAX));
        let first = b.outbox.is_empty();
        b.outbox.push(item);
        first.then(|| b.conn.clone())
    }
}
