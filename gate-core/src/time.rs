//! Time as the machines see it: a plain number the driver passes in.
//!
//! The machines never read a clock. The driver picks an epoch (its start,
//! say) and hands every event the time since then as a [`Time`]; deadlines
//! come back as [`Time`]s for it to arm. Being a plain count of
//! nanoseconds, a `Time` can be written out with the state and read back by
//! another process, which re-bases it onto its own epoch.

use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time: nanoseconds since the driver's epoch. Lasts 584 years.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time(u64);

impl Time {
    /// The epoch itself.
    pub const ZERO: Time = Time(0);

    /// The time `since` after the epoch (saturating past 584 years).
    pub fn from_epoch(since: Duration) -> Time {
        Time(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    /// How long after the epoch this is.
    pub fn since_epoch(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    /// Saturates instead of overflowing: a deadline "never" stays never.
    fn add(self, rhs: Duration) -> Time {
        let rhs = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(rhs))
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl Sub<Duration> for Time {
    type Output = Time;

    /// Saturates at the epoch.
    fn sub(self, rhs: Duration) -> Time {
        let rhs = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_sub(rhs))
    }
}

impl Sub<Time> for Time {
    type Output = Duration;

    /// [`Time::saturating_since`].
    fn sub(self, rhs: Time) -> Duration {
        self.saturating_since(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_epoch(Duration::from_secs(3));
        assert_eq!(t + Duration::from_secs(2) - t, Duration::from_secs(2));
        assert_eq!(t - (t + Duration::from_secs(1)), Duration::ZERO);
        assert_eq!(
            (t + Duration::MAX).since_epoch(),
            Duration::from_nanos(u64::MAX)
        );
        assert!(Time::ZERO < t);
    }
}
