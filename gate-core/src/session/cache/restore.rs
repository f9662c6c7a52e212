//! A cache read back from its written-out form (a live upgrade).

use serde::Deserialize;

use super::entries::Entries;
use super::evict::Evictions;
use super::{Entry, ResponseCache};

/// A [`ResponseCache`] as written out.
#[derive(Deserialize)]
pub(super) struct Stored {
    entries: Entries<Entry>,
    counter: u32,
    expired: u32,
    next_exec: u64,
    bytes: usize,
    max_bytes: usize,
    lost: Option<Box<Evictions>>,
}

impl From<Stored> for ResponseCache {
    /// The counter goes on from past every stamp read back, whatever wrote
    /// them: ids stay unique and the byte bound's order (see `evict`)
    /// holds.
    fn from(stored: Stored) -> ResponseCache {
        let newest = stored
            .entries
            .values()
            .map(|e| e.touched.max(e.exec.0))
            .max()
            .unwrap_or(0);
        ResponseCache {
            entries: stored.entries,
            counter: stored.counter,
            expired: stored.expired,
            next_exec: stored.next_exec.max(newest),
            bytes: stored.bytes,
            max_bytes: stored.max_bytes,
            lost: stored.lost,
            drains: 0,
        }
    }
}
