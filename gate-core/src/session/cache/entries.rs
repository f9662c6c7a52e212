//! The cache's entries by request number: a window of consecutive numbers
//! kept in order, and a map for the others.
//!
//! Clients number their requests upwards, one by one, so the numbers a
//! cache holds are nearly always a run: the answers of the last few
//! hundred requests and the requests running. A run is kept as a ring of
//! slots, one per number from the window's first (`base`) on, so finding
//! an entry is a subtraction, a new request's number is the slot after
//! the last, and the cache's sweeps ([`Entries::retain`]) walk one block
//! of memory in order. No hashing, no probing, no control bytes, and no
//! tombstones.
//!
//! A number that is not the next of the run (a client numbering at
//! random, a number reused from long ago) goes to a map instead
//! ([`NumberMap`]), as every entry did before; so does the oldest entry
//! when the window would pass [`WINDOW`] slots (an answer kept while the
//! numbers moved far on). Each number is in one place only; the map is
//! looked at only when it holds something. A window is at most
//! [`WINDOW`] slots whatever numbers a client sends, so its memory is
//! bounded apart from the cache's byte bound; and if the run moves away
//! from the window (it goes on in the map, which grows past twice what
//! the window holds, as when a client starts numbering elsewhere while a
//! few old answers wait), the window starts over at the run. A client
//! alternating between runs makes it start over now and then, at most
//! once every three requests, moving what the window held.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Hashes request numbers for the map of the numbers outside the
/// window of consecutive ones, so that numbers close together sit close
/// together. The low bits of the hash, where the map takes a slot from,
/// are twice the number: clients number their requests upwards, so a
/// batch of requests and their answers touch neighbouring slots (a few
/// cache lines of the player's map, not one line each, scattered), and
/// every other slot stays free, so that removing an entry leaves an empty
/// slot rather than a tombstone (a run of full slots would fill the map
/// with tombstones and make it rebuild itself over and over). The high
/// bits, which the map compares first within a group of slots, come from
/// one multiplication (Fibonacci hashing, as FxHash does).
///
/// Numbers are client-chosen, but each user has a map of its own with at
/// most a few hundred entries, so a client can only slow itself down;
/// SipHash's flooding resistance buys nothing here and costs several
/// times more per request.
#[derive(Debug, Default, Clone, Copy)]
pub struct NumberHasher(u64);

impl Hasher for NumberHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        let mixed = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = (mixed & 0xFFFF_FFFF_0000_0000) | u64::from(n << 1);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The map of the numbers outside the window.
pub(super) type NumberMap<V> = HashMap<u32, V, BuildHasherDefault<NumberHasher>>;

/// How far past the window's last slot a new number may come and still
/// join it: the next number, or the one after (the skipped slot stays
/// empty).
pub(super) const GAP: usize = 2;

/// Most slots in the window (80 bytes each). A cache keeps up to `2E`
/// answers plus what runs (skynet's `E` is 128, the in-flight bound 128),
/// so a window this long holds the run of a client numbering upwards;
/// past it, its first entries move to the map.
pub(super) const WINDOW: usize = 512;

/// The map holds at least this many, more than twice what the window
/// holds, and the number just filed there follows the one filed before:
/// the run has moved away, the window starts over at it.
const REBASE_AT: usize = 16;

/// Entries by request number (see the module docs); at most `W` slots in
/// the window, which a number up to `G` past its end joins (the tests
/// use small ones).
#[derive(Debug)]
pub(super) struct Entries<V, const W: usize = WINDOW, const G: usize = GAP> {
    /// The slots of the numbers `base`, `base + 1`, …; the first and the
    /// last hold an entry (unless the window is empty).
    window: VecDeque<Option<V>>,
    /// The number of `window[0]` (wrapping, as request numbers do).
    base: u32,
    /// Entries in the window.
    in_window: u32,
    /// Entries outside the window; boxed, made when first needed: every
    /// session has a cache, and most never need it.
    spill: Option<Box<Spill<V>>>,
}

/// The map of the numbers outside the window, and the last number a new
/// entry was filed there under (a run going on there is one more).
#[derive(Debug)]
struct Spill<V> {
    map: NumberMap<V>,
    last: u32,
}

impl<V> Default for Spill<V> {
    fn default() -> Self {
        Spill {
            map: NumberMap::default(),
            last: 0,
        }
    }
}

impl<V> std::ops::Deref for Spill<V> {
    type Target = NumberMap<V>;

    fn deref(&self) -> &NumberMap<V> {
        &self.map
    }
}

impl<V> std::ops::DerefMut for Spill<V> {
    fn deref_mut(&mut self) -> &mut NumberMap<V> {
        &mut self.map
    }
}

impl<V, const W: usize, const G: usize> Default for Entries<V, W, G> {
    fn default() -> Self {
        Entries {
            window: VecDeque::new(),
            base: 0,
            in_window: 0,
            spill: None,
        }
    }
}

impl<V, const W: usize, const G: usize> Entries<V, W, G> {
    /// The window's slot of `number`, if the window spans it.
    fn slot(&self, number: u32) -> Option<usize> {
        let offset = number.wrapping_sub(self.base) as usize;
        (offset < self.window.len()).then_some(offset)
    }

    /// The entry of `number`.
    pub(super) fn get(&self, number: u32) -> Option<&V> {
        if let Some(Some(entry)) = self.slot(number).map(|i| &self.window[i]) {
            return Some(entry);
        }
        self.spill.as_ref()?.get(&number)
    }

    /// The entry of `number`, to change.
    pub(super) fn get_mut(&mut self, number: u32) -> Option<&mut V> {
        if let Some(i) = self.slot(number)
            && self.window[i].is_some()
        {
            return self.window[i].as_mut();
        }
        self.spill.as_mut()?.get_mut(&number)
    }

    /// Files `entry` under `number`, which has none.
    pub(super) fn insert(&mut self, number: u32, entry: V) {
        debug_assert!(self.get(number).is_none(), "{number} filed twice");
        if self.window.is_empty() {
            self.base = number;
            self.window.push_back(Some(entry));
            self.in_window = 1;
            return;
        }
        let mut offset = number.wrapping_sub(self.base) as usize;
        let len = self.window.len();
        if offset < len {
            self.window[offset] = Some(entry);
            self.in_window += 1;
            return;
        }
        if offset - len >= G {
            let spill = self.spill.get_or_insert_default();
            spill.insert(number, entry);
            let goes_on = spill.last == number.wrapping_sub(1);
            spill.last = number;
            // The run goes on in the map (the number before was filed
            // there last) and the map outgrew the window: the window
            // follows the run.
            if goes_on && spill.len() >= REBASE_AT && spill.len() > 2 * self.in_window as usize {
                self.rebase(number);
            }
            return;
        }
        // Past the end, close enough: the window moves on to it, its
        // first entries to the map if it would grow too long (and the
        // empty slots then first with them).
        while offset >= W || matches!(self.window.front(), Some(None)) {
            self.spill_front();
            offset -= 1;
        }
        if self.window.is_empty() {
            self.base = number;
            offset = 0;
        }
        self.window.resize_with(offset, || None);
        self.window.push_back(Some(entry));
        self.in_window += 1;
    }

    /// Takes the entry of `number` out.
    pub(super) fn remove(&mut self, number: u32) -> Option<V> {
        if let Some(i) = self.slot(number)
            && let Some(entry) = self.window[i].take()
        {
            self.in_window -= 1;
            self.trim();
            return Some(entry);
        }
        let spill = self.spill.as_mut()?;
        let entry = spill.remove(&number);
        if spill.is_empty() {
            self.spill = None;
        }
        entry
    }

    /// Keeps the entries for which `keep` is true (it may change them).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(u32, &mut V) -> bool) {
        let base = self.base;
        let mut dropped = 0;
        for (i, slot) in self.window.iter_mut().enumerate() {
            if let Some(entry) = slot
                && !keep(base.wrapping_add(i as u32), entry)
            {
                *slot = None;
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.in_window -= dropped;
            self.trim();
        }
        if let Some(spill) = &mut self.spill {
            spill.retain(|&number, entry| keep(number, entry));
            if spill.is_empty() {
                self.spill = None;
            }
        }
    }

    /// Every entry with its number, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &V)> {
        let base = self.base;
        self.window
            .iter()
            .enumerate()
            .filter_map(move |(i, slot)| Some((base.wrapping_add(i as u32), slot.as_ref()?)))
            .chain(
                self.spill
                    .iter()
                    .flat_map(|spill| spill.iter().map(|(&number, entry)| (number, entry))),
            )
    }

    /// Every entry.
    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, entry)| entry)
    }

    /// Every entry, to change.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.window
            .iter_mut()
            .filter_map(Option::as_mut)
            .chain(self.spill.iter_mut().flat_map(|spill| spill.values_mut()))
    }

    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        self.in_window as usize + self.spill.as_ref().map_or(0, |spill| spill.len())
    }

    /// Whether there are none.
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts the window over at `number` (in the map): the window's
    /// entries go to the map, `number`'s comes out of it. Costs what the
    /// window holds, which inserts put there one by one since it last
    /// started over.
    fn rebase(&mut self, number: u32) {
        let spill = self.spill.get_or_insert_default();
        let base = self.base;
        for (i, slot) in self.window.drain(..).enumerate() {
            if let Some(entry) = slot {
                spill.insert(base.wrapping_add(i as u32), entry);
            }
        }
        self.in_window = 0;
        if let Some(entry) = spill.remove(&number) {
            self.base = number;
            self.window.push_back(Some(entry));
            self.in_window = 1;
        }
    }

    /// Calls `f` with every entry and its number, in no particular order
    /// (faster than [`Entries::iter`] for a whole pass).
    pub(super) fn for_each(&self, mut f: impl FnMut(u32, &V)) {
        let base = self.base;
        for (i, slot) in self.window.iter().enumerate() {
            if let Some(entry) = slot {
                f(base.wrapping_add(i as u32), entry);
            }
        }
        if let Some(spill) = &self.spill {
            for (&number, entry) in spill.iter() {
                f(number, entry);
            }
        }
    }

    /// Moves the window's first slot out: its entry, if any, to the map.
    fn spill_front(&mut self) {
        if let Some(Some(entry)) = self.window.pop_front() {
            self.in_window -= 1;
            self.spill.get_or_insert_default().insert(self.base, entry);
        }
        self.base = self.base.wrapping_add(1);
    }

    /// Drops the empty slots at both ends (all of them once none holds an
    /// entry), so that the window starts and ends with an entry.
    fn trim(&mut self) {
        if self.in_window == 0 {
            self.window.clear();
            return;
        }
        while let Some(None) = self.window.front() {
            self.window.pop_front();
            self.base = self.base.wrapping_add(1);
        }
        while let Some(None) = self.window.back() {
            self.window.pop_back();
        }
    }
}

/// Written out as a map of number to entry, as the cache always was.
impl<V: Serialize, const W: usize, const G: usize> Serialize for Entries<V, W, G> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de, V: Deserialize<'de>, const W: usize, const G: usize> Deserialize<'de>
    for Entries<V, W, G>
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = NumberMap::<V>::deserialize(deserializer)?;
        let mut numbered: Vec<(u32, V)> = map.into_iter().collect();
        // In order, so that a run fills the window again.
        numbered.sort_unstable_by_key(|&(number, _)| number);
        let mut entries = Entries::default();
        for (number, entry) in numbered {
            entries.insert(number, entry);
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests;
