//! Fair eviction of stalled login dialogues when every login slot is
//! taken.
//!
//! Idle sockets, or key exchanges abandoned half-way, from a handful of
//! addresses (each under its per-source bound) can fill
//! `max_connections`; waiting for them to time out keeps real players out
//! for the whole dialogue deadline. So when the slots are full and someone
//! new connects, the dialogue that has been waiting for its client the
//! longest gives its slot up. A dialogue waiting on the server — checking a
//! password, placing the user, waiting in the login queue — is never
//! evicted, and neither is one whose client has kept it waiting less than
//! `login.evict_silent_after`: a real client answers each line at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The dialogues holding a login slot.
#[derive(Debug, Default)]
pub(crate) struct Dialogues {
    seats: Mutex<HashMap<u64, Arc<Seat>>>,
    next: AtomicU64,
    evicted: AtomicU64,
}

/// One dialogue's seat.
#[derive(Debug)]
pub(super) struct Seat {
    /// Since when the dialogue waits for its client (`None`: it waits on
    /// the server).
    waiting: Mutex<Option<Instant>>,
    /// Chosen for eviction (never chosen twice).
    chosen: AtomicBool,
    /// Tells the dialogue to give its slot up.
    pub(super) evict: Notify,
}

impl Seat {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The dialogue waits for its client's next line from now.
    pub(super) fn client_turn(&self) {
        *self.waiting() = Some(Instant::now());
    }

    /// The client answered: the server's turn (never evicted).
    pub(super) fn server_turn(&self) {
        *self.waiting() = None;
    }
}

/// A dialogue's registration; leaves the table when dropped.
#[derive(Debug)]
pub(super) struct Registered {
    table: Arc<Dialogues>,
    id: u64,
    pub(super) seat: Arc<Seat>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}

impl Dialogues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Seat>>> {
        self.seats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Dialogues in progress.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Registers a dialogue that starts now.
    pub(super) fn enter(self: &Arc<Self>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        // A new dialogue waits for its client from the start.
        let seat = Arc::new(Seat {
            waiting: Mutex::new(Some(Instant::now())),
            chosen: AtomicBool::new(false),
            evict: Notify::new(),
        });
        self.lock().insert(id, Arc::clone(&seat));
        Registered {
            table: Arc::clone(self),
            id,
            seat,
        }
    }

    /// Tells the dialogue that has waited for its client the longest (at
    /// least `min_age`) to give its slot up; `false` if there is none.
    pub(crate) fn evict_one(&self, min_age: Duration) -> bool {
        let now = Instant::now();
        let victim = self
            .lock()
            .values()
            .filter(|s| !s.chosen.load(Ordering::Acquire))
            .filter_map(|s| {
                let since = (*s.waiting())?;
                (now.saturating_duration_since(since) >= min_age).then_some((since, s))
            })
            .min_by_key(|(since, _)| *since)
            .map(|(_, s)| Arc::clone(s));
        let Some(victim) = victim else {
            return false;
        };
        victim.chosen.store(true, Ordering::Release);
        victim.evict.notify_one();
        self.evicted.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Dialogues evicted so far.
    #[cfg(test)]
    fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_dialogue_stalled_longest_goes_first() {
        const MIN_AGE: Duration = Duration::from_millis(500);
        let table = Arc::new(Dialogues::default());
        let old = table.enter();
        tokio::time::advance(Duration::from_millis(10)).await;
        let talking = table.enter();
        talking.seat.server_turn();
        let younger = table.enter();
        assert!(!table.evict_one(MIN_AGE), "nobody is old enough yet");
        tokio::time::advance(MIN_AGE).await;
        assert!(table.evict_one(MIN_AGE));
        let evicted = tokio::time::timeout(Duration::from_millis(1), old.seat.evict.notified());
        assert!(evicted.await.is_ok());
        assert!(table.evict_one(MIN_AGE), "then the next silent one");
        assert!(younger.seat.chosen.load(Ordering::Acquire));
        assert!(
            !table.evict_one(MIN_AGE),
            "a dialogue waiting on the server keeps its slot"
        );
        // Once it waits for its client again, it can go too.
        talking.seat.client_turn();
        tokio::time::advance(MIN_AGE).await;
        assert!(table.evict_one(MIN_AGE));
        assert_eq!(table.evicted(), 3);
        drop((old, younger));
        assert_eq!(table.lock().len(), 1);
        drop(talking);
        assert!(table.lock().is_empty());
    }
}
