//! Whether a connection should read once more after a short read.
//!
//! A read that did not fill the buffer leaves the socket marked readable
//! (`try_read` clears the mark only when a read finds nothing), so the
//! driver reads again before it waits. Under pipelined load that second
//! read often finds the client's next requests without a trip through
//! epoll and a task wake-up; when each player has one request in flight,
//! it always finds the socket empty, and is one wasted `recvfrom` per
//! request. [`ReadAhead`] watches how often the read after a short read
//! finds something and, when that is rare, clears the mark with the short
//! read itself, as tokio's `poll_read` does; one short read in
//! [`PROBE_EVERY`] still leaves the mark, so a connection whose client
//! starts pipelining is noticed.

/// The hit rate is kept in 1/248ths: each look-ahead read moves it an
/// eighth of the way towards 248 (found data) or 0 (found nothing).
const FULL: u8 = 248;

/// Below this hit rate (about 10 %), short reads clear the readable mark.
const CLEAR_BELOW: u8 = 25;

/// While clearing, one short read in this many keeps the mark, to measure
/// the rate again.
const PROBE_EVERY: u8 = 8;

/// A connection's look-ahead statistics (3 bytes).
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadAhead {
    /// How often a look-ahead read found data, in 1/[`FULL`]ths.
    hits: u8,
    /// Short reads that cleared the mark since the last probe.
    cleared: u8,
    /// The last read returned data and left the mark set: the next read
    /// is a look-ahead.
    looking: bool,
}

impl Default for ReadAhead {
    fn default() -> ReadAhead {
        // Start by reading ahead, as a connection always did.
        ReadAhead {
            hits: FULL,
            cleared: 0,
            looking: false,
        }
    }
}

impl ReadAhead {
    /// Whether the next read, if short, should clear the readable mark.
    pub(super) fn clear_if_short(&mut self) -> bool {
        if self.hits >= CLEAR_BELOW {
            return false;
        }
        self.cleared += 1;
        if self.cleared >= PROBE_EVERY {
            self.cleared = 0;
            return false;
        }
        true
    }

    /// A read happened: `data` if it returned bytes, `cleared` if it
    /// cleared the readable mark.
    pub(super) fn read(&mut self, data: bool, cleared: bool) {
        if self.looking {
            let kept = self.hits - self.hits / 8;
            self.hits = if data { kept + FULL / 8 } else { kept };
        }
        self.looking = data && !cleared;
    }

    /// The connection waits for epoll before its next read.
    pub(super) fn waited(&mut self) {
        self.looking = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` rounds of a data read followed by a look-ahead read that
    /// finds `ahead`; returns how many of the data reads cleared the mark.
    fn rounds(r: &mut ReadAhead, n: usize, ahead: bool) -> usize {
        let mut cleared = 0;
        for _ in 0..n {
            let clear = r.clear_if_short();
            r.read(true, clear);
            if clear {
                cleared += 1;
                // No look-ahead read: the connection waits.
                continue;
            }
            let clear = r.clear_if_short();
            r.read(ahead, clear && ahead);
        }
        cleared
    }

    #[test]
    fn one_request_in_flight_stops_reading_ahead_and_probes_now_and_then() {
        let mut r = ReadAhead::default();
        assert_eq!(rounds(&mut r, 10, false), 0, "still learning");
        rounds(&mut r, 30, false);
        let cleared = rounds(&mut r, 80, false);
        assert!((65..=72).contains(&cleared), "{cleared} of 80");
    }

    #[test]
    fn pipelining_keeps_reading_ahead() {
        let mut r = ReadAhead::default();
        // One look-ahead in four finds data: above the threshold.
        for i in 0..400 {
            assert!(!r.clear_if_short());
            r.read(true, false);
            r.read(i % 4 == 0, false);
        }
        // A client that stops pipelining, then starts again.
        rounds(&mut r, 100, false);
        assert!(r.hits < CLEAR_BELOW);
        for _ in 0..100 {
            rounds(&mut r, 1, true);
        }
        assert!(r.hits >= CLEAR_BELOW, "noticed through the probes");
    }

    #[test]
    fn the_rate_stays_in_range() {
        let mut r = ReadAhead::default();
        for _ in 0..1000 {
            r.read(true, false);
        }
        assert!(r.hits <= FULL);
        r.waited();
        r.read(false, false);
        assert_eq!(r.hits, FULL, "a read after a wait is no look-ahead");
    }
}
