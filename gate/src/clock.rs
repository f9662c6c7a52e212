//! One clock read per batch of work instead of one per request.
//!
//! A connection's read serves every request that arrived at once, and a
//! service link's read dispatches every answer that arrived at once; each
//! request to a service needs the time (for its deadline) and each answer
//! needs it again (for the latency histogram). Inside [`batch`], [`now`]
//! reads the clock on its first call and returns that same instant for the
//! rest of the batch; outside, it reads the clock every time. A batch is
//! one pass over data already in memory (microseconds), far below the
//! millisecond resolution of request deadlines and latency buckets.
//!
//! The clock is tokio's, so tests on a paused clock see paused time.

use std::cell::Cell;

use tokio::time::Instant;

/// The state of this thread's batch clock.
#[derive(Clone, Copy)]
enum Batch {
    /// Not in a batch: every [`now`] reads the clock.
    Off,
    /// In a batch, no one asked for the time yet.
    Armed,
    /// In a batch, at this time.
    At(Instant),
}

thread_local! {
    static BATCH: Cell<Batch> = const { Cell::new(Batch::Off) };
}

/// The time: the batch's time inside [`batch`], read at its first use;
/// the clock's otherwise.
pub(crate) fn now() -> Instant {
    BATCH.with(|batch| match batch.get() {
        Batch::Off => Instant::now(),
        Batch::At(at) => at,
        Batch::Armed => {
            let at = Instant::now();
            batch.set(Batch::At(at));
            at
        }
    })
}

/// Runs `work` as one batch: every [`now`] inside it returns the same
/// instant. Nested batches share the outer one's time.
pub(crate) fn batch<R>(work: impl FnOnce() -> R) -> R {
    /// Ends the batch also when `work` panics.
    struct End(bool);
    impl Drop for End {
        fn drop(&mut self) {
            if self.0 {
                BATCH.with(|batch| batch.set(Batch::Off));
            }
        }
    }
    let outer = BATCH.with(|batch| match batch.get() {
        Batch::Off => {
            batch.set(Batch::Armed);
            false
        }
        _ => true,
    });
    let _end = End(!outer);
    work()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until the clock has moved past `t` (nanosecond clocks move
    /// between any two reads that are not the same instruction).
    fn after(t: Instant) -> Instant {
        loop {
            let now = Instant::now();
            if now > t {
                return now;
            }
            std::hint::spin_loop();
        }
    }

    #[test]
    fn a_batch_reads_the_clock_once() {
        let (first, second, inner, moved) = batch(|| {
            let first = now();
            let moved = after(first);
            (first, now(), batch(now), moved)
        });
        assert!(moved > first);
        assert_eq!(second, first, "the batch's time stays put");
        assert_eq!(inner, first, "a nested batch shares the outer time");
        let outside = now();
        assert!(outside >= moved, "off after the batch");
        let next = batch(|| {
            after(outside);
            now()
        });
        assert!(next > outside, "a new batch reads anew, at its first use");
        assert_ne!(now(), after(now()), "outside a batch, every call reads");
    }

    #[test]
    fn a_panicking_batch_ends() {
        let caught = std::panic::catch_unwind(|| batch(|| panic!("in the batch")));
        assert!(caught.is_err());
        BATCH.with(|batch| assert!(matches!(batch.get(), Batch::Off)));
    }
}
