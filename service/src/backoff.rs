//! Reconnect delays: exponential, capped, with jitter.
//!
//! Jitter matters when a gate restarts: every service instance notices at
//! the same moment, and without it they would all reconnect in lockstep at
//! every step of the backoff. Each delay is drawn between half and all of
//! the current step ("equal jitter"), so there is always some wait but the
//! herd spreads out.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A random number from the standard library's per-process hash seed (plus
/// a counter), so jitter and instance ids need no RNG dependency. Not for
/// secrets.
pub(crate) fn random_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// The delay sequence of one link.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            step: initial,
            // xorshift must not start at 0.
            rng: random_u64() | 1,
        }
    }

    /// Back to the first step, after a link that registered.
    pub(crate) fn reset(&mut self) {
        self.step = self.initial;
    }

    /// The next delay: in `[step/2, step]`, then the step doubles (capped).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        let half = step / 2;
        let spread = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            0
        } else {
            self.next_random() % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: plenty for spreading reconnects.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(1000));
        let mut step = ms(100);
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} outside {step:?}"
            );
            step = (step * 2).min(ms(1000));
        }
        backoff.reset();
        assert!(backoff.next_delay() <= ms(100));
    }

    #[test]
    fn jitter_spreads_instances() {
        let ms = Duration::from_millis;
        let delays: std::collections::HashSet<_> = (0..16)
            .map(|_| Backoff::new(ms(1000), ms(1000)).next_delay())
            .collect();
        assert!(delays.len() > 1, "every instance drew the same delay");
    }
}
