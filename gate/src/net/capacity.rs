//! A bound on connections open at once (`gate.maxclient`,
//! `login.max_connections`) that can change while connections hold it.
//!
//! The bound is a semaphore whose permits the accept loops take before
//! `accept` ([`super::accept_loop`]). Raising it adds permits. Lowering
//! it takes away the permits that are free; those held by open
//! connections cannot be taken without closing them, so they are owed:
//! a task takes each one as its connection closes, until the debt is paid.
//! No connection is closed by a lower bound; new ones are refused until
//! fewer than the new bound are open.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Semaphore;

/// A resizable bound (see the module docs). Clones share it.
#[derive(Debug, Clone)]
pub struct Capacity {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    permits: Arc<Semaphore>,
    books: Mutex<Books>,
}

#[derive(Debug)]
struct Books {
    /// The bound as configured.
    size: usize,
    /// Permits still to take away as connections close.
    debt: usize,
    /// Whether the task taking them runs.
    collecting: bool,
}

impl Inner {
    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Capacity {
    /// A bound of `size` (at most [`Semaphore::MAX_PERMITS`]).
    pub fn new(size: usize) -> Capacity {
        let size = size.min(Semaphore::MAX_PERMITS);
        Capacity {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(size)),
                books: Mutex::new(Books {
                    size,
                    debt: 0,
                    collecting: false,
                }),
            }),
        }
    }

    /// The semaphore the accept loops take permits of.
    pub fn permits(&self) -> Arc<Semaphore> {
        Arc::clone(&self.inner.permits)
    }

    /// The bound as last set.
    pub fn size(&self) -> usize {
        self.inner.books().size
    }

    /// Sets the bound to `size`. Never closes a connection: permits held
    /// beyond a lower bound are taken back as their connections close.
    /// Lowering spawns a task on the current tokio runtime for that.
    pub fn resize(&self, size: usize) {
        let size = size.min(Semaphore::MAX_PERMITS);
        let mut books = self.inner.books();
        if size > books.size {
            let more = size - books.size;
            let forgiven = more.min(books.debt);
            books.debt -= forgiven;
            self.inner.permits.add_permits(more - forgiven);
        } else if size < books.size {
            let fewer = books.size - size;
            let taken = self.inner.permits.forget_permits(fewer);
            books.debt += fewer - taken;
            if books.debt > 0 && !books.collecting {
                books.collecting = true;
                tokio::spawn(collect(Arc::clone(&self.inner)));
            }
        }
        books.size = size;
    }
}

/// Takes permits away as connections give them back, until nothing is
/// owed. The semaphore is fair: a permit given back goes to this waiter
/// before any later accept.
async fn collect(inner: Arc<Inner>) {
    loop {
        let Ok(permit) = Arc::clone(&inner.permits).acquire_owned().await else {
            return;
        };
        let mut books = inner.books();
        if books.debt > 0 {
            books.debt -= 1;
            permit.forget();
        }
        if books.debt == 0 {
            books.collecting = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn raising_adds_permits_at_once() {
        let capacity = Capacity::new(1);
        let permits = capacity.permits();
        let _held = Arc::clone(&permits).try_acquire_owned().unwrap();
        assert!(permits.try_acquire().is_err());
        capacity.resize(3);
        assert_eq!(permits.available_permits(), 2);
        assert_eq!(capacity.size(), 3);
    }

    #[tokio::test]
    async fn lowering_below_the_open_connections_closes_none_and_waits_for_them() {
        let capacity = Capacity::new(4);
        let permits = capacity.permits();
        let held: Vec<_> = (0..3)
            .map(|_| Arc::clone(&permits).try_acquire_owned().unwrap())
            .collect();
        capacity.resize(1);
        assert_eq!(permits.available_permits(), 0);
        // Two connections close: both permits are taken back.
        let mut held = held.into_iter();
        drop(held.next());
        drop(held.next());
        tokio::task::yield_now().await;
        assert_eq!(permits.available_permits(), 0);
        // The last one closes: the bound of one is free again.
        drop(held.next());
        let one = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            Arc::clone(&permits).acquire_owned(),
        )
        .await
        .expect("a permit")
        .unwrap();
        assert!(permits.try_acquire().is_err());
        drop(one);
    }

    #[tokio::test]
    async fn raising_again_forgives_what_was_owed() {
        let capacity = Capacity::new(2);
        let permits = capacity.permits();
        let a = Arc::clone(&permits).try_acquire_owned().unwrap();
        let b = Arc::clone(&permits).try_acquire_owned().unwrap();
        capacity.resize(0);
        capacity.resize(3);
        drop((a, b));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(permits.available_permits(), 3);
        assert_eq!(capacity.size(), 3);
    }
}
