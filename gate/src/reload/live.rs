//! [`Live`]: a value a configuration reload replaces while readers use it.

use std::sync::{Arc, PoisonError, RwLock};

/// A shared value that can be replaced as a whole. Readers take a
/// snapshot ([`Live::load`]) and keep it for as long as they need one
/// consistent value (a session keeps the limits it started with); a
/// replacement ([`Live::store`]) is seen by the next `load`.
#[derive(Debug)]
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Live<T> {
        Live(RwLock::new(Arc::new(value)))
    }

    /// The current value. A poisoned lock still holds a whole value (it is
    /// only ever replaced as one), so it is used.
    pub fn load(&self) -> Arc<T> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the value for every later [`Live::load`].
    pub fn store(&self, value: T) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_outlives_a_replacement() {
        let live = Live::new(1);
        let before = live.load();
        live.store(2);
        assert_eq!((*before, *live.load()), (1, 2));
    }
}
