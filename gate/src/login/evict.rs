//! Fair eviction of silent login dialogues when every login slot is
//! taken.
//!
//! Idle sockets from a handful of addresses (each under its per-source
//! bound) can fill `max_connections`; waiting for them to time out keeps
//! real players out for the whole dialogue deadline. So when the slots are
//! full and someone new connects, the oldest dialogue whose client has not
//! said anything yet (no key line) gives its slot up. A client that has
//! talked — one in the middle of its key exchange, or waiting in the login
//! queue — is never evicted, and neither is one younger than
//! `login.evict_silent_after`: a real client sends its key line at once.

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
    started: Instant,
    /// The client sent its first line.
    talking: AtomicBool,
    /// Chosen for eviction (never chosen twice).
    chosen: AtomicBool,
    /// Tells the dialogue to give its slot up.
    pub(super) evict: Notify,
}

impl Seat {
    /// The client has talked: it keeps its slot.
    pub(super) fn talked(&self) {
        self.talking.store(true, Ordering::Release);
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

    /// Registers a dialogue that starts now.
    pub(super) fn enter(self: &Arc<Self>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let seat = Arc::new(Seat {
            started: Instant::now(),
            talking: AtomicBool::new(false),
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

    /// Tells the oldest silent dialogue (at least `min_age` old) to give
    /// its slot up; `false` if there is none.
    pub(crate) fn evict_one(&self, min_age: Duration) -> bool {
        let now = Instant::now();
        let victim = self
            .lock()
            .values()
            .filter(|s| {
                !s.talking.load(Ordering::Acquire)
                    && !s.chosen.load(Ordering::Acquire)
                    && now.saturating_duration_since(s.started) >= min_age
            })
            .min_by_key(|s| s.started)
            .cloned();
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
    async fn the_oldest_silent_dialogue_goes_first() {
        const MIN_AGE: Duration = Duration::from_millis(500);
        let table = Arc::new(Dialogues::default());
        let old = table.enter();
        tokio::time::advance(Duration::from_millis(10)).await;
        let talking = table.enter();
        talking.seat.talked();
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
            "a client that talked keeps its slot"
        );
        assert_eq!(table.evicted(), 2);
        drop((old, younger));
        assert_eq!(table.lock().len(), 1);
    }
}
