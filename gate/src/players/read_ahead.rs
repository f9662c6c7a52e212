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
//! read itself, as tokio's `poll_read` does. One read in [`PROBE_EVERY`]
//! of those that bring more than one request ([`ReadAhead::several`]: the
//! client has several in flight) still reads ahead, to notice a client
//! whose pipelining the look-ahead would pay for; a connection whose
//! client has one request in flight makes exactly one `recvfrom` a
//! request.

/// The hit rate is kept in 1/248ths: each look-ahead read moves it an
/// eighth of the way towards 248 (found data) or 0 (found nothing).
const FULL: u8 = 248;

/// Below this hit rate (about 10 %), short reads clear the readable mark.
const CLEAR_BELOW: u8 = 25;

/// While clearing, one read in this many of those with several requests
/// in it is followed by a look-ahead, to measure the rate again.
const PROBE_EVERY: u8 = 8;

/// A connection's look-ahead statistics (3 bytes).
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadAhead {
    /// How often a look-ahead read found data, in 1/[`FULL`]ths.
    hits: u8,
    /// While clearing: reads with several requests since the last probe;
    /// at [`PROBE_EVERY`], the next short read leaves the mark.
    several: u8,
    /// The last read returned data and left the mark set: the next read
    /// is a look-ahead.
    looking: bool,
}

impl Default for ReadAhead {
    fn default() -> ReadAhead {
        // Start by reading ahead, as a connection always did.
        ReadAhead {
            hits: FULL,
            several: 0,
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
        if self.several >= PROBE_EVERY {
            self.several = 0;
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

    /// The read just made brought more than one request.
    pub(super) fn several(&mut self) {
        if self.hits < CLEAR_BELOW && self.several < PROBE_EVERY {
            self.several += 1;
        }
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
    fn one_request_in_flight_stops_reading_ahead_for_good() {
        let mut r = ReadAhead::default();
        assert_eq!(rounds(&mut r, 10, false), 0, "still learning");
        rounds(&mut r, 30, false);
        assert_eq!(rounds(&mut r, 1000, false), 1000, "no read ahead at all");
    }

    #[test]
    fn pipelining_keeps_reading_ahead() {
        let mut r = ReadAhead::default();
        // One look-ahead in four finds data: above the threshold.
        for i in 0..400 {
            assert!(!r.clear_if_short());
            r.read(true, false);
            r.several();
            r.read(i % 4 == 0, false);
        }
        // A client that stops pipelining, then starts again: reads with
        // several requests probe now and then, and look-aheads that find
        // data bring the connection back to reading ahead.
        rounds(&mut r, 100, false);
        assert!(r.hits < CLEAR_BELOW);
        let mut reads = 0;
        while r.hits < CLEAR_BELOW {
            let clear = r.clear_if_short();
            r.read(true, clear);
            r.several();
            if !clear {
                r.read(true, false);
            }
            reads += 1;
            assert!(reads < 100, "never noticed");
        }
        // Several requests a read, but look-aheads that never find any (a
        // client sending bursts): one look-ahead in eight such reads.
        let mut wasted = 0;
        rounds(&mut r, 100, false);
        for _ in 0..800 {
            let clear = r.clear_if_short();
            r.read(true, clear);
            r.several();
            if !clear {
                wasted += 1;
                r.read(false, false);
            }
        }
        assert!((95..=105).contains(&wasted), "{wasted}");
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
