//! The gate's one timer facility and clock: every session deadline (the
//! reconnect window) and every connection deadline (idle timeout,
//! half-close grace) of the gate, served by one task, instead of a task or a
//! `Sleep` per user.
//!
//! A timing wheel of [`TICK`] slots kept in a `BTreeMap` (only the slots in
//! use exist): arming is a push into the slot of the deadline, rounded up
//! to the next tick; the task sleeps until the first slot and fires it
//! whole. An entry costs the size of `T` (two words) in its slot.
//!
//! Timers are lazy: an entry only says "look at this session (connection)
//! at this time". Whoever it names checks its own deadline when it fires
//! and re-arms if it moved, so nothing is ever removed early and a stale
//! entry is a no-op. Callers add an entry only when the new deadline is
//! earlier than the one already armed, which keeps about one entry per
//! session or connection.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use gate_core::Time;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The resolution of the wheel: deadlines fire at most this much late.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// See the module docs; `T` says what an entry names.
#[derive(Debug)]
pub(crate) struct Timers<T> {
    slots: Mutex<BTreeMap<u32, Vec<T>>>,
    /// Wakes the task when a slot earlier than all others is armed.
    earlier: Notify,
    /// Tick 0.
    epoch: Instant,
}

impl<T> Timers<T> {
    /// Timers whose time 0 is `epoch` (a new process of a live upgrade
    /// takes the old one's clock, so the deadlines it hands over hold).
    pub(crate) fn with_epoch(epoch: Instant) -> Timers<T> {
        Timers {
            slots: Mutex::new(BTreeMap::new()),
            earlier: Notify::new(),
            epoch,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, Vec<T>>> {
        // One insert or one split per critical section: never inconsistent.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tick of `when`, rounded up (an entry never fires early), never
    /// 0 (callers use 0 for "none"). A `u32` of 10 ms ticks lasts 497
    /// days; later deadlines fire then.
    pub(crate) fn tick(&self, when: Instant) -> u32 {
        let since = when.saturating_duration_since(self.epoch);
        let tick = since.as_nanos().div_ceil(TICK.as_nanos()).max(1);
        u32::try_from(tick).unwrap_or(u32::MAX)
    }

    /// `when` as the machines' [`Time`] (since the timers' epoch).
    pub(crate) fn time(&self, when: Instant) -> Time {
        Time::from_epoch(when.saturating_duration_since(self.epoch))
    }

    /// The machines' `time` as an instant.
    pub(crate) fn instant(&self, time: Time) -> Instant {
        self.epoch + time.since_epoch()
    }

    /// The time now, as the machines see it.
    pub(crate) fn now(&self) -> Time {
        self.time(Instant::now())
    }

    /// The instant of `tick`.
    pub(crate) fn instant_of(&self, tick: u32) -> Instant {
        self.epoch + TICK * tick
    }

    /// Arms `timer` for `when`.
    pub(crate) fn at(&self, when: Instant, timer: T) {
        let tick = self.tick(when);
        let earliest = {
            let mut slots = self.lock();
            let earliest = slots
                .first_key_value()
                .is_none_or(|(first, _)| tick < *first);
            slots.entry(tick).or_default().push(timer);
            earliest
        };
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// Removes the entries of slot `tick` that `armed` picks (an entry
    /// whose subject is gone for good: its memory need not wait for the
    /// deadline).
    pub(crate) fn remove(&self, tick: u32, armed: impl Fn(&T) -> bool) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(&tick) {
            slot.retain(|t| !armed(t));
            if slot.is_empty() {
                slots.remove(&tick);
            }
        }
    }

    /// Entries armed (live or stale).
    pub(crate) fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Fires entries as they come due, calling `fire` with the entry and
    /// the time, until `stop` is cancelled. Never holds the wheel's lock
    /// while `fire` runs.
    pub(crate) async fn run(&self, stop: CancellationToken, fire: impl Fn(T, Instant)) {
        loop {
            let next = self.lock().first_key_value().map(|(tick, _)| *tick);
            // `notify_one` keeps a permit when nobody waits, so an earlier
            // slot armed between the look and the wait is not missed.
            let wait = async {
                match next {
                    Some(tick) => tokio::time::sleep_until(self.instant_of(tick)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = self.earlier.notified() => continue,
                () = wait => {}
            }
            let now = Instant::now();
            let due = {
                let mut slots = self.lock();
                // `tick` rounds up: the slots at or before `now` are due.
                let since = now.saturating_duration_since(self.epoch);
                let now_tick = since.as_nanos() / TICK.as_nanos();
                let first_later = u32::try_from(now_tick + 1).unwrap_or(u32::MAX);
                let later = slots.split_off(&first_later);
                std::mem::replace(&mut *slots, later)
            };
            for timer in due.into_values().flatten() {
                fire(timer, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_in_order_never_early_and_wakes_for_an_earlier_entry() {
        let timers = Arc::new(Timers::with_epoch(Instant::now()));
        let fired = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (timers, fired, stop) = (timers.clone(), fired.clone(), stop.clone());
            async move {
                timers
                    .run(stop, |name: &'static str, now| {
                        fired.lock().unwrap().push((name, now));
                    })
                    .await;
            }
        });
        let t0 = Instant::now();
        timers.at(t0 + Duration::from_secs(300), "late");
        tokio::task::yield_now().await;
        // Armed while the task sleeps for 300 s: it wakes for this one.
        timers.at(t0 + Duration::from_millis(55), "soon");
        timers.at(t0 + Duration::from_millis(55), "soon too");
        tokio::time::sleep(Duration::from_secs(1)).await;
        {
            let fired = fired.lock().unwrap();
            assert_eq!(fired.len(), 2);
            assert_eq!((fired[0].0, fired[1].0), ("soon", "soon too"));
            assert!(fired[0].1 >= t0 + Duration::from_millis(55));
            assert!(fired[0].1 <= t0 + Duration::from_millis(55) + TICK);
        }
        assert_eq!(timers.len(), 1);
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(fired.lock().unwrap().len(), 3);
        assert!(fired.lock().unwrap()[2].1 >= t0 + Duration::from_secs(300));
        assert_eq!(timers.len(), 0);
        stop.cancel();
        task.await.unwrap();
    }
}
