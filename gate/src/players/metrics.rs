//! The gate's counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use gate_core::{End, ProtocolError};

/// A snapshot of the gate's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateMetrics {
    /// Connections open now (authenticated or not).
    pub connections: usize,
    /// Users logged in now.
    pub sessions: usize,
    /// Connections closed at accept because maxclient were open.
    pub refused_at_accept: u64,
    /// Connections closed at accept because their source address had
    /// `max_connections_per_source` open.
    pub refused_per_source: u64,
    /// Successful handshakes.
    pub handshakes_ok: u64,
    /// Refused handshakes (any status, or none at shutdown).
    pub handshakes_refused: u64,
    /// Re-sent sessions answered from the cache.
    pub resends: u64,
    /// Re-sent sessions whose answer was dropped for the cache's byte
    /// bound, answered with an error response instead of running again.
    pub lost: u64,
    /// Re-sent sessions absorbed by a handler still running.
    pub absorbed: u64,
    /// "Conflict session" closes.
    pub conflicts: u64,
    /// Connections cut because their send queue was full.
    pub slow_readers_cut: u64,
    /// Sessions ended (any reason).
    pub sessions_ended: u64,
    /// Pushes accepted (numbered and kept), one per user reached.
    pub pushes: u64,
    /// Pushes refused (payload too large, or no such session).
    pub pushes_refused: u64,
    /// Push-gap notices sent to reconnecting clients that were too far
    /// behind.
    pub push_gaps: u64,
    /// Connections closed for sending nothing within the idle timeout.
    pub idle_timeouts: u64,
    /// Handshakes accepted that asked for the sealed channel.
    pub sealed_handshakes: u64,
    /// Sealed connections closed for a package that failed to open.
    pub bad_seals: u64,
    /// Entries in the gate's timer queue (live and stale).
    pub timers: usize,
    /// Requests run by the agent (re-sends answered from the cache are in
    /// `resends`).
    pub requests: u64,
    /// Responses made (ok byte 1).
    pub responses: u64,
    /// Error responses made (ok byte 0).
    pub error_responses: u64,
    /// Sessions ended, by cause (in the order of [`SESSION_ENDS`]).
    pub ended_by: [u64; SESSION_ENDS.len()],
    /// Connections cut for going over `max_inflight_per_user`.
    pub inflight_cut: u64,
    /// Pushes replayed to reconnecting clients (sent again after a
    /// reconnect because the client had not seen them).
    pub pushes_replayed: u64,
    /// Connections closed for sending no complete handshake in time.
    pub handshake_timeouts: u64,
    /// Refused handshakes, by status (in the order of
    /// [`RefusedStatus::ALL`]).
    pub refused_by: [u64; RefusedStatus::ALL.len()],
    /// WebSocket connections open now (part of `connections`).
    pub websocket_connections: usize,
    /// WebSocket upgrades refused for a page origin not allowed (`403`).
    pub websocket_origin_refused: u64,
    /// WebSocket upgrades that failed otherwise (not an upgrade request,
    /// or the client left during it).
    pub websocket_upgrades_failed: u64,
    /// WebSocket connections closed for breaking the protocol or the
    /// mapping (close codes 1002, 1003, 1007, 1009).
    pub websocket_protocol_closes: u64,
    /// Connections resting now (part of `connections`: open, without a
    /// task; `gate.rest_after`).
    pub resting_connections: usize,
    /// Resting connections woken (by input, or by the gate: a push, a
    /// deadline, a kick).
    pub rest_wakes: u64,
}

/// The status a refused handshake got, as a bounded label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedStatus {
    /// `400 Bad Request`.
    BadRequest,
    /// `401 Unauthorized`.
    Unauthorized,
    /// `403 Index Expired`.
    IndexExpired,
    /// `404 User Not Found`.
    NotFound,
    /// `426 Seal Required`.
    SealRequired,
    /// Closed without a status (shutting down).
    None,
}

impl RefusedStatus {
    /// Every status, in a fixed order.
    pub const ALL: [RefusedStatus; 6] = [
        RefusedStatus::BadRequest,
        RefusedStatus::Unauthorized,
        RefusedStatus::IndexExpired,
        RefusedStatus::NotFound,
        RefusedStatus::SealRequired,
        RefusedStatus::None,
    ];

    /// The label text.
    pub fn name(self) -> &'static str {
        match self {
            RefusedStatus::BadRequest => "400",
            RefusedStatus::Unauthorized => "401",
            RefusedStatus::IndexExpired => "403",
            RefusedStatus::NotFound => "404",
            RefusedStatus::SealRequired => "426",
            RefusedStatus::None => "none",
        }
    }

    /// The label of a refusal's status.
    pub fn of(status: Option<codec::status::GateStatus>) -> RefusedStatus {
        match status.map(codec::status::GateStatus::code) {
            Some(400) => RefusedStatus::BadRequest,
            Some(401) => RefusedStatus::Unauthorized,
            Some(403) => RefusedStatus::IndexExpired,
            Some(404) => RefusedStatus::NotFound,
            Some(426) => RefusedStatus::SealRequired,
            _ => RefusedStatus::None,
        }
    }
}

/// The label of each slot of [`GateMetrics::ended_by`]: the ways a
/// session ends, each [`End::label`] of its kind.
pub const SESSION_ENDS: [&str; 5] = ["relogin", "kicked", "logout", "expired", "shutdown"];

/// The slot of [`GateMetrics::ended_by`] counting `end`, if it ends a
/// session.
fn session_end_slot(end: &End) -> Option<usize> {
    match end {
        End::Relogin => Some(0),
        End::Kicked(_) => Some(1),
        End::Logout => Some(2),
        End::Expired => Some(3),
        End::Shutdown | End::ShutdownNow => Some(4),
        _ => None,
    }
}

/// A counter bumped on the request path by every worker thread, read
/// (rarely) by summing its cells.
///
/// The first [`OWNED`] threads that bump any such counter each own a cell
/// of it, on a line of its own: only that thread writes it, so a bump is a
/// plain load and store, not a locked read-modify-write (two of those per
/// request were a tenth of the request path's own time), and no two
/// threads fight over a line. Threads after those (more workers than
/// that, helper threads that come and go) share [`SHARED`] more cells,
/// spread by their order, bumped atomically. A cell's owner never changes
/// and its count never goes down, so the sum only grows.
#[derive(Debug, Default)]
pub(crate) struct Striped {
    cells: [Cell; OWNED + SHARED],
}

/// Threads that get a cell of their own.
const OWNED: usize = 24;

/// Cells the other threads share.
const SHARED: usize = 8;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Cell(AtomicU64);

/// Threads given a cell so far.
static THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's cell in every [`Striped`], and whether it owns it.
    static CELL: (usize, bool) = match THREADS.fetch_update(
        Ordering::Relaxed,
        Ordering::Relaxed,
        |n| Some(n.saturating_add(1)),
    ) {
        Ok(n) | Err(n) if n < OWNED => (n, true),
        Ok(n) | Err(n) => (OWNED + n % SHARED, false),
    };
}

impl Striped {
    pub(crate) fn bump(&self) {
        let (i, owned) = CELL.with(|c| *c);
        let cell = &self.cells[i].0;
        if owned {
            // Only this thread writes its cell.
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
        } else {
            cell.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.cells
            .iter()
            .fold(0, |sum, c| sum.wrapping_add(c.0.load(Ordering::Relaxed)))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) connections: AtomicUsize,
    pub(crate) refused_at_accept: AtomicU64,
    pub(crate) refused_per_source: AtomicU64,
    pub(crate) handshakes_ok: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) resends: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) absorbed: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) slow_readers_cut: AtomicU64,
    pub(crate) sessions_ended: AtomicU64,
    pub(crate) pushes: AtomicU64,
    pub(crate) pushes_refused: AtomicU64,
    pub(crate) push_gaps: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
    pub(crate) sealed_handshakes: AtomicU64,
    pub(crate) bad_seals: AtomicU64,
    /// Connections cut for going over the in-flight limit.
    pub(crate) inflight_cut: AtomicU64,
    /// Pushes replayed to reconnecting clients.
    pub(crate) pushes_replayed: AtomicU64,
    /// Connections that sent no complete handshake in time.
    pub(crate) handshake_timeouts: AtomicU64,
    /// Refused handshakes, by [`RefusedStatus`].
    pub(crate) refused_by: [AtomicU64; RefusedStatus::ALL.len()],
    /// Sessions ended, by [`SESSION_ENDS`].
    pub(crate) ended_by: [AtomicU64; SESSION_ENDS.len()],
    /// WebSocket connections open now.
    pub(crate) ws_connections: AtomicUsize,
    pub(crate) ws_origin_refused: AtomicU64,
    pub(crate) ws_upgrades_failed: AtomicU64,
    pub(crate) ws_protocol_closes: AtomicU64,
    /// Connections resting now.
    pub(crate) resting: AtomicUsize,
    pub(crate) rest_wakes: AtomicU64,
    pub(crate) requests: Striped,
    pub(crate) responses: Striped,
    pub(crate) error_responses: Striped,
}

impl Metrics {
    /// Counts a session that ended.
    pub(crate) fn session_ended(&self, end: &End) {
        bump(&self.sessions_ended);
        if let Some(slot) = session_end_slot(end) {
            bump(&self.ended_by[slot]);
        }
    }

    /// Counts how a connection ended, where a counter follows it.
    pub(crate) fn connection_ended(&self, end: &End) {
        match end {
            End::SlowReader => bump(&self.slow_readers_cut),
            End::IdleTimeout => bump(&self.idle_timeouts),
            End::Protocol(ProtocolError::BadSeal) => bump(&self.bad_seals),
            End::TooManyInflight => bump(&self.inflight_cut),
            End::Conflict => bump(&self.conflicts),
            End::HandshakeTimeout => {
                bump(&self.handshakes_refused);
                bump(&self.handshake_timeouts);
            }
            End::Protocol(
                ProtocolError::TextMessage
                | ProtocolError::TooLarge
                | ProtocolError::ControlFlood
                | ProtocolError::WebSocket(_),
            ) => bump(&self.ws_protocol_closes),
            _ => {}
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_end_labels_are_the_endings_own() {
        let ends = [
            End::Relogin,
            End::Kicked("x".into()),
            End::Logout,
            End::Expired,
            End::Shutdown,
        ];
        for end in ends {
            let slot = session_end_slot(&end).unwrap();
            assert_eq!(SESSION_ENDS[slot], end.label());
        }
        assert_eq!(session_end_slot(&End::IdleTimeout), None);
    }

    #[test]
    fn striped_counts_every_bump_of_every_thread() {
        // More threads than own a cell: the later ones share the rest.
        let counter = std::sync::Arc::new(Striped::default());
        let threads: Vec<_> = (0..OWNED + SHARED + 3)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        counter.bump();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.get(), (OWNED + SHARED + 3) as u64 * 10_000);
    }
}
