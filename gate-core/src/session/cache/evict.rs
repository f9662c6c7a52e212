//! The byte bound's evictions: which answer goes next, without a walk of
//! the whole cache for each one.
//!
//! A cache at its bound drops its oldest answer (by last touch) for every
//! new one. Finding it by walking every entry cost a few microseconds a
//! request with a few thousand answers waiting, and a client gets there
//! by leaving its answers unconfirmed (disconnecting). Instead one walk
//! lines up the [`LINE`] oldest answers it may drop, and the evictions
//! after it take them in turn, each checked again first: an answer
//! touched since (re-sent, or its number reused) or gone (retired) is
//! passed over. An answer the walk did not line up was touched after it,
//! or is younger than every answer in the line, so the line's oldest that
//! passes the check is the cache's oldest: the same victims, in the same
//! order, as a walk each time.

use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use super::entries::Entries;
use super::{Entry, LostNumbers};

/// Most answers one walk lines up.
const LINE: usize = 64;

/// What the byte bound has dropped, and what it drops next. Written out
/// as the lost numbers alone: the line is made again when needed.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct Evictions {
    /// The numbers whose answers were dropped.
    pub(super) lost: LostNumbers,
    /// `(touched, number)` of the answers to drop next, the oldest last.
    #[serde(skip)]
    line: Vec<(u64, u32)>,
}

/// Whether the byte bound may drop `e` (an answer that left the gate, or
/// never will: not one still running or waiting for its connection).
fn droppable(e: &Entry) -> bool {
    e.resp.is_some() && e.target.is_none()
}

/// Drops the oldest answer the bound may drop, not `spare`'s, and marks its
/// number lost; returns what it cost, `None` when nothing may go (only
/// running requests are left). `evictions` is made at the first one.
pub(super) fn evict_one(
    entries: &mut Entries<Entry>,
    evictions: &mut Option<Box<Evictions>>,
    spare: Option<u32>,
) -> Option<usize> {
    loop {
        let next = evictions.as_mut().and_then(|e| e.line.pop());
        let Some((touched, number)) = next else {
            let line = line_up(entries, spare);
            if line.is_empty() {
                return None;
            }
            evictions.get_or_insert_default().line = line;
            continue;
        };
        let current = entries
            .get(number)
            .is_some_and(|e| e.touched == touched && droppable(e));
        if !current || Some(number) == spare {
            continue;
        }
        #[cfg(test)]
        assert_eq!(
            Some(number),
            oldest(entries, spare),
            "the line's victim is the cache's oldest"
        );
        let old = entries.remove(number)?;
        evictions.get_or_insert_default().lost.insert(number);
        return Some(old.cost());
    }
}

/// The [`LINE`] oldest answers the bound may drop, the oldest last.
fn line_up(entries: &Entries<Entry>, spare: Option<u32>) -> Vec<(u64, u32)> {
    #[cfg(test)]
    WALKS.set(WALKS.get() + 1);
    // The youngest of those kept so far on top, to make way for an older.
    let mut kept: BinaryHeap<(u64, u32)> = BinaryHeap::with_capacity(LINE);
    entries.for_each(|number, e| {
        if !droppable(e) || Some(number) == spare {
            return;
        }
        if kept.len() < LINE {
            kept.push((e.touched, number));
        } else if kept
            .peek()
            .is_some_and(|&(youngest, _)| e.touched < youngest)
        {
            kept.pop();
            kept.push((e.touched, number));
        }
    });
    let mut line = kept.into_sorted_vec();
    line.reverse();
    line
}

#[cfg(test)]
thread_local! {
    /// Walks lining up victims on this thread.
    static WALKS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The oldest answer the bound may drop, found by a walk (the tests'
/// reference).
#[cfg(test)]
fn oldest(entries: &Entries<Entry>, spare: Option<u32>) -> Option<u32> {
    let mut victim: Option<(u64, u32)> = None;
    entries.for_each(|number, e| {
        if droppable(e)
            && Some(number) != spare
            && victim.is_none_or(|(touched, _)| e.touched < touched)
        {
            victim = Some((e.touched, number));
        }
    });
    victim.map(|(_, number)| number)
}

#[cfg(test)]
mod tests;
