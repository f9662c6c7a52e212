//! The per-user response cache of spec §5.5, as a plain data structure.
//!
//! It decides, for every request the gate receives, whether the handler
//! runs, a cached response is resent, the request is absorbed by one that is
//! still running, or the connection must close ("Conflict session"); and,
//! for every handler that finishes, which connection (if any) gets the
//! answer. It never touches a socket or a clock, so the whole algorithm —
//! including skynet's retirement counter — is tested here directly against
//! the live transcript (`cache_retirement`).
//!
//! # Connection generations instead of versions
//!
//! skynet compares an entry's version stamp with the user's current
//! handshake index `V`. `V` changes exactly when a handshake succeeds, and in
//! this gate every successful handshake binds a new connection and closes
//! the older one, so "the version of the connection" and "the connection"
//! are the same thing. The cache therefore stamps entries with a
//! [`ConnId`] (unique per gate, never reused), which keeps the index, a Lua
//! number that may be a float, out of the hot path.
//!
//! # Differences from skynet (spec §7 bugs), on purpose
//!
//! * **Late responses go to the newest connection.** skynet sends a response
//!   only to the connection the request (or its last re-send) came from; if
//!   that one is gone, the response is cached stamped with the version
//!   current *at completion*. When the client has already reconnected, a
//!   re-send on the new connection then finds an entry of its own version
//!   and **runs the request a second time** (`completed_after_reconnect`).
//!   Here a response whose connection is gone is delivered to the user's
//!   current connection if there is one, and an entry is stamped with the
//!   connection it was *delivered* on (none if it was not delivered), so a
//!   request whose answer the client never received is always answered from
//!   the cache, never executed again.
//! * **Only answers the live connection carried age by count.** skynet's
//!   retirement (below) drops the oldest answers once `2E` were touched,
//!   whether the client got them or not; a client that reconnects after its
//!   requests completed while it was away (or whose connection died with
//!   answers unread), sends `E` new requests and then re-sends the old ones,
//!   had some of them run twice. Here an answer counts as delivered only
//!   while the connection it went to is alive: answers that completed with
//!   no connection, and every answer an ended connection carried, are
//!   *unconfirmed* and stay until the client re-sends them (then they are
//!   delivered again and age like any other), the session ends, or the byte
//!   bound below forces them out. The visible change: a request number
//!   answered on an earlier connection keeps answering from the cache (not
//!   running anew) until the byte bound retires it — number requests
//!   upwards for the whole login session, as skynet's own client does.
//! * **Bounded by bytes.** All cached answers of a user, plus a fixed cost
//!   per entry, stay within `max_bytes`. When an answer must go to keep
//!   that bound (the oldest first), its request number is
//!   remembered as **lost**: every later request with that number, on any
//!   connection of the session, is answered with an error response (ok
//!   byte 0) instead of running, so a bound never turns into a silent
//!   second execution. Lost numbers are kept as a
//!   few ranges ([`LostNumbers`]); when there are too many, the two closest
//!   ranges merge, so a number between them also answers with an error
//!   instead of running (clients number their requests upwards, below the
//!   numbers they still use).
//! * **Remaining edge, documented:** a late response is marked `late`; the
//!   first request for that number on the connection it was delivered to
//!   is answered from the cache (it is most likely a re-send that crossed
//!   the delivery on the wire), so such a client may receive the same answer
//!   twice — but a request is never executed twice. A client that reuses
//!   that request number for a *new* request on that same connection gets
//!   the cached answer once; the next reuse runs normally. Until that first
//!   request comes, a late answer does not age by count (only the byte
//!   bound retires it, as lost): the client did not ask for it on that
//!   connection and may re-send it after any number of new requests.
//! * **A conflict does not forget the request.** skynet's "Conflict
//!   session" (a request number sent a third time on one connection
//!   while its handler runs) closes the connection and drops the entry, so
//!   the client's re-send on its next connection runs the request again. Here
//!   the connection is closed the same way, but the entry stays: the
//!   re-send gets the running request's answer.
//! * Oversize responses are the caller's business: the gate turns them into
//!   error responses before they reach [`ResponseCache::complete`], so no
//!   entry is left "running" forever (spec §5.6).

use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU64;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::wire;

/// Identifies one authenticated connection of the gate. Plays the role of
/// skynet's version `V` in the cache (see the module docs). Never reused.
pub type ConnId = u64;

/// Bytes an entry costs besides its package (map slot and fields), so
/// that the byte bound also bounds the number of entries.
pub const ENTRY_COST: usize = 64;

/// Identifies one execution of a handler, so the result of an orphaned
/// handler (its entry was dropped by a Conflict and its number reused) can
/// never fill a newer entry of the same number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExecId(u64);

/// What to do with a request (spec §5.5, first block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnRequest {
    /// A new request: run the handler and report its result with
    /// [`ResponseCache::complete`] and this id.
    Execute(ExecId),
    /// Send this cached response package (header included) to the
    /// connection the request came from; the request's content is ignored.
    Resend(Bytes),
    /// The answer of this request number was dropped to keep the cache
    /// within its byte bound: send this error response instead of running
    /// the request again (the same for every later request with it).
    Lost(Bytes),
    /// The handler of this number is still running; its response will go
    /// to the connection the request came from. Nothing to send now.
    Absorbed,
    /// skynet's "Conflict session": close the connection without a
    /// response. Unlike skynet, the running handler's answer is kept for a
    /// re-send on the next connection, so the request never runs twice.
    Conflict,
}

/// A response to send: which connection, which package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The connection to write to.
    pub conn: ConnId,
    /// The complete response package (header included), as cached.
    pub package: &'a Bytes,
    /// `true` when it goes to a newer connection than the one it was asked
    /// on (the fix for skynet's lost "completed after reconnect" response).
    pub late: bool,
}

/// Hashes request numbers so that numbers close together sit close
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

type NumberMap = HashMap<u32, Entry, BuildHasherDefault<NumberHasher>>;

/// An `Option<ConnId>` in 8 bytes instead of 16 (the id plus one; ids
/// count up from 0 and never reach `u64::MAX`): the cache's slots are what
/// its footprint is made of. Written out as the `Option<ConnId>` it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MaybeConn(Option<NonZeroU64>);

impl MaybeConn {
    const NONE: MaybeConn = MaybeConn(None);

    fn some(conn: ConnId) -> MaybeConn {
        MaybeConn(NonZeroU64::new(conn.wrapping_add(1)))
    }

    fn get(self) -> Option<ConnId> {
        self.0.map(|n| n.get() - 1)
    }

    fn is_none(self) -> bool {
        self.0.is_none()
    }

    fn is_some(self) -> bool {
        self.0.is_some()
    }
}

impl Serialize for MaybeConn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for MaybeConn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Option::<ConnId>::deserialize(deserializer)?.map_or(MaybeConn::NONE, MaybeConn::some))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// Connection waiting for the response (none = nothing pending).
    target: MaybeConn,
    /// The response package, `None` while the handler runs.
    resp: Option<Bytes>,
    /// The connection generation this entry belongs to (skynet's `ver`):
    /// the connection the answer was delivered on; `None` for an answer
    /// that no connection got yet.
    ver: MaybeConn,
    /// Retirement stamp (skynet's `index` at the last touch).
    stamp: u32,
    /// The execution whose result may fill `resp`.
    exec: ExecId,
    /// Delivered to a connection it was not asked on: the next request for
    /// this number on that connection is answered from the cache.
    late: bool,
    /// Queued for its connection but not yet written: kept like an
    /// undelivered answer until it is. Stale once the outbox was written
    /// after `queued_at` (see [`ResponseCache::outbox_written`]).
    queued: bool,
    /// The cache's `drains` when it was queued. Not written out: a
    /// restored cache counts from 0 again, so an answer written before a
    /// live upgrade looks queued until the restored connection's first
    /// write (it then only waits a little longer to age).
    #[serde(skip)]
    queued_at: u16,
    /// When it was last touched (for the byte bound: oldest first).
    touched: u64,
}

impl Entry {
    fn cost(&self) -> usize {
        ENTRY_COST + self.resp.as_ref().map_or(0, Bytes::len)
    }

    /// Answered, and no connection ever got the answer.
    fn undelivered(&self) -> bool {
        self.resp.is_some() && self.ver.is_none() && self.target.is_none()
    }

    /// Answered, and the answer may not have left the gate yet (`drains`:
    /// the cache's count of outbox writes).
    fn unsent(&self, drains: u16) -> bool {
        self.undelivered() || (self.queued && self.queued_at == drains)
    }
}

/// Most ranges [`LostNumbers`] keeps before merging the closest two.
pub const MAX_LOST_RANGES: usize = 32;

/// Request numbers whose answers were dropped to keep the byte bound, as
/// sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostNumbers {
    ranges: Vec<(u32, u32)>,
}

impl LostNumbers {
    /// Whether `number` is lost.
    pub fn contains(&self, number: u32) -> bool {
        let at = self.ranges.partition_point(|&(_, hi)| hi < number);
        self.ranges.get(at).is_some_and(|&(lo, _)| lo <= number)
    }

    /// Marks `number` lost; merges the two closest ranges when there are
    /// more than [`MAX_LOST_RANGES`].
    pub fn insert(&mut self, number: u32) {
        let at = self.ranges.partition_point(|&(_, hi)| hi < number);
        if self.ranges.get(at).is_some_and(|&(lo, _)| lo <= number) {
            return;
        }
        self.ranges.insert(at, (number, number));
        // Join with the neighbours it touches.
        if at + 1 < self.ranges.len() && self.ranges[at + 1].0 == number.wrapping_add(1) {
            self.ranges[at].1 = self.ranges[at + 1].1;
            self.ranges.remove(at + 1);
        }
        if at > 0 && self.ranges[at - 1].1.wrapping_add(1) == number {
            self.ranges[at - 1].1 = self.ranges[at].1;
            self.ranges.remove(at);
        }
        if self.ranges.len() > MAX_LOST_RANGES {
            let closest = (1..self.ranges.len())
                .min_by_key(|&i| self.ranges[i].0 - self.ranges[i - 1].1)
                .unwrap_or(1);
            self.ranges[closest - 1].1 = self.ranges[closest].1;
            self.ranges.remove(closest);
        }
    }

    /// Number of ranges.
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }
}

/// The response cache of one user.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResponseCache {
    entries: NumberMap,
    /// skynet's per-user counter `N`.
    counter: u32,
    /// skynet's `expired_number` `E`.
    expired: u32,
    next_exec: u64,
    /// What the entries cost ([`ENTRY_COST`] each plus their packages).
    bytes: usize,
    /// The bound on `bytes` for answered entries.
    max_bytes: usize,
    /// Boxed: most sessions never lose an answer.
    lost: Option<Box<LostNumbers>>,
    /// How many times the connection's outbox was written
    /// ([`ResponseCache::outbox_written`]); wraps.
    #[serde(skip)]
    drains: u16,
}

impl ResponseCache {
    /// An empty cache retiring with `expired_number` = `expired` (skynet:
    /// 128), keeping answered entries within `max_bytes`. Does not allocate
    /// until the first request.
    pub fn new(expired: u32, max_bytes: usize) -> ResponseCache {
        ResponseCache {
            entries: NumberMap::default(),
            counter: 0,
            expired,
            next_exec: 0,
            bytes: 0,
            max_bytes,
            lost: None,
            drains: 0,
        }
    }

    /// The next number of the cache's one counter: execution ids and the
    /// age of entries (for the byte bound) both come from it.
    fn tick(&mut self) -> u64 {
        self.next_exec = self.next_exec.wrapping_add(1);
        self.next_exec
    }

    /// A request for `number` arrived on `conn`, which must be the user's
    /// current connection (the gate closes superseded ones before they get
    /// here).
    pub fn request(&mut self, conn: ConnId, number: u32) -> OnRequest {
        let touched = self.tick();
        let exec = ExecId(touched);
        let fresh = Entry {
            target: MaybeConn::some(conn),
            resp: None,
            ver: MaybeConn::NONE,
            stamp: 0,
            exec,
            late: false,
            queued: false,
            queued_at: 0,
            touched,
        };
        let e = match self.entries.entry(number) {
            Slot::Vacant(slot) => {
                if self.lost.as_ref().is_some_and(|l| l.contains(number)) {
                    // Its answer was dropped for the byte bound: an error,
                    // now and for every later request with this number.
                    return OnRequest::Lost(wire::error_response(number));
                }
                slot.insert(fresh);
                self.bytes += ENTRY_COST;
                while self.bytes > self.max_bytes && self.evict_one(Some(number)) {}
                return OnRequest::Execute(exec);
            }
            Slot::Occupied(slot) if slot.get().ver == MaybeConn::some(conn) => {
                let e = slot.into_mut();
                if e.resp.is_none() {
                    // Re-sent twice in this generation while still running:
                    // skynet's conflict closes the connection. The request
                    // keeps running (skynet drops the entry, so a re-send
                    // on the next connection runs it again): its answer
                    // waits for that re-send like any other.
                    e.target = MaybeConn::NONE;
                    e.ver = MaybeConn::NONE;
                    return OnRequest::Conflict;
                }
                if !e.late {
                    // Answered in this generation: the request number is
                    // reused for a brand-new request.
                    self.bytes -= e.cost();
                    *e = fresh;
                    self.bytes += ENTRY_COST;
                    return OnRequest::Execute(exec);
                }
                // Fix: a late delivery here; answered from the cache, once
                // (see module docs).
                e
            }
            Slot::Occupied(slot) => slot.into_mut(),
        };
        // Re-send: from an older generation, or never completed.
        e.target = MaybeConn::some(conn);
        e.ver = MaybeConn::some(conn);
        e.stamp = self.counter;
        e.late = false;
        e.queued = false;
        e.touched = touched;
        let Some(package) = e.resp.clone() else {
            return OnRequest::Absorbed;
        };
        e.target = MaybeConn::NONE;
        self.counter = self.counter.saturating_add(1);
        self.retire();
        OnRequest::Resend(package)
    }

    /// The handler of `(number, exec)` finished with `package` (the
    /// complete response package). `live` is the user's current
    /// authenticated connection, if any. Returns where to send the package;
    /// `None` when nobody can get it now (it stays cached for a re-send) or
    /// when the execution was orphaned by a Conflict (its result is dropped).
    pub fn complete(
        &mut self,
        number: u32,
        exec: ExecId,
        package: Bytes,
        live: Option<ConnId>,
    ) -> Option<Delivery<'_>> {
        self.complete_queued(number, exec, package, live, false)
    }

    /// [`ResponseCache::complete`]; with `queued`, a package delivered to
    /// `live` goes to its outbox rather than straight out, and counts as
    /// unsent until [`ResponseCache::outbox_written`] (or
    /// [`ResponseCache::connection_ended`] if the connection goes first).
    pub fn complete_queued(
        &mut self,
        number: u32,
        exec: ExecId,
        package: Bytes,
        live: Option<ConnId>,
        queued: bool,
    ) -> Option<Delivery<'_>> {
        let touched = self.tick();
        let e = self.entries.get_mut(&number)?;
        if e.exec != exec || e.resp.is_some() {
            return None;
        }
        e.touched = touched;
        self.bytes += package.len();
        e.resp = Some(package);
        e.stamp = self.counter;
        let delivered = match (e.target.get(), live) {
            (_, None) => {
                // Not delivered: any later request for it is a re-send.
                e.ver = MaybeConn::NONE;
                e.late = false;
                None
            }
            (target, Some(live)) => {
                let late = target != Some(live);
                e.ver = MaybeConn::some(live);
                e.late = late;
                e.queued = queued;
                e.queued_at = self.drains;
                Some((live, late))
            }
        };
        e.target = MaybeConn::NONE;
        self.counter = self.counter.saturating_add(1);
        // The entry just answered has the highest stamp and is the newest,
        // so retirement keeps it, and the byte bound spares it (it may go
        // past the bound by this one answer until the next touch).
        self.retire_sparing(Some(number));
        let (conn, late) = delivered?;
        let package = self.entries.get(&number)?.resp.as_ref()?;
        Some(Delivery {
            conn,
            package,
            late,
        })
    }

    /// Forgets a request that was classified [`OnRequest::Execute`] but will
    /// not run after all (the gate refused it, or the agent panicked).
    pub fn abandon(&mut self, number: u32, exec: ExecId) {
        if self
            .entries
            .get(&number)
            .is_some_and(|e| e.exec == exec && e.resp.is_none())
            && let Some(old) = self.entries.remove(&number)
        {
            self.bytes -= old.cost();
        }
    }

    /// Everything queued for the connection was written to it: every
    /// answer queued so far counts as sent, without a lookup of each (an
    /// answer's queued mark is stale once the count moved past it).
    pub fn outbox_written(&mut self) {
        self.drains = self.drains.wrapping_add(1);
    }

    /// Connection `conn` ended: every answer it carried may not have
    /// reached the client, so each counts as undelivered again (kept until
    /// re-sent, see the module docs).
    pub fn connection_ended(&mut self, conn: ConnId) {
        for e in self.entries.values_mut() {
            if e.ver == MaybeConn::some(conn) && e.target.is_none() && e.resp.is_some() {
                e.ver = MaybeConn::NONE;
                e.late = false;
                e.queued = false;
            }
        }
    }

    /// skynet's retirement: only once `N ≥ 2E`, drop answered entries
    /// stamped below `E`, shift the others down by `E`, restart `N` above
    /// the highest remaining stamp. Running entries and entries waiting for
    /// a connection are skipped entirely, and so are answers that may not
    /// have left the gate (see the module docs). Then the byte bound.
    fn retire(&mut self) {
        self.retire_sparing(None);
    }

    /// [`ResponseCache::retire`], never evicting `spare` for the byte bound.
    fn retire_sparing(&mut self, spare: Option<u32>) {
        let expired = self.expired;
        let drains = self.drains;
        if self.counter >= expired.saturating_mul(2) {
            let mut max = 0;
            let mut freed = 0;
            self.entries.retain(|_, e| {
                // A late answer went to a connection that never asked for
                // it: its re-send may come any number of requests later
                // (the client sends new requests first), so it does not
                // age by count; only the byte bound retires it (as lost).
                if e.resp.is_none() || e.target.is_some() || e.unsent(drains) || e.late {
                    return true;
                }
                // Written out: forget the stale mark, so that it cannot
                // match the count again when it wraps.
                e.queued = false;
                if e.stamp < expired {
                    freed += e.cost();
                    return false;
                }
                e.stamp -= expired;
                max = max.max(e.stamp);
                true
            });
            self.bytes -= freed;
            self.counter = max.saturating_add(1);
        }
        while self.bytes > self.max_bytes && self.evict_one(spare) {}
    }

    /// Drops the oldest answer and marks its request number lost. `false` when
    /// only running requests are left.
    fn evict_one(&mut self, spare: Option<u32>) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(s, e)| e.resp.is_some() && e.target.is_none() && Some(**s) != spare)
            .min_by_key(|(_, e)| e.touched)
            .map(|(number, _)| *number);
        let Some(number) = victim else {
            return false;
        };
        if let Some(old) = self.entries.remove(&number) {
            self.bytes -= old.cost();
        }
        self.lost.get_or_insert_default().insert(number);
        true
    }

    /// skynet's counter `N` (for tests and metrics).
    pub fn counter(&self) -> u32 {
        self.counter
    }

    /// Number of entries, running or answered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the entries cost in bytes ([`ENTRY_COST`] each plus packages).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Answers no connection got yet.
    pub fn undelivered(&self) -> usize {
        self.entries.values().filter(|e| e.undelivered()).count()
    }

    /// The request numbers whose answers were dropped for the byte bound.
    pub fn lost(&self) -> LostNumbers {
        self.lost.as_deref().cloned().unwrap_or_default()
    }

    /// The retirement stamp of an answered request number, if it is cached.
    pub fn stamp(&self, number: u32) -> Option<u32> {
        self.entries
            .get(&number)
            .filter(|e| e.resp.is_some())
            .map(|e| e.stamp)
    }

    /// The request numbers with a cached response, sorted.
    pub fn answered_numbers(&self) -> Vec<u32> {
        let mut numbers: Vec<u32> = self
            .entries
            .iter()
            .filter(|(_, e)| e.resp.is_some())
            .map(|(s, _)| *s)
            .collect();
        numbers.sort_unstable();
        numbers
    }

    /// Drops everything (the session ended). Results of handlers still
    /// running are discarded when they arrive.
    pub fn clear(&mut self) {
        self.entries = NumberMap::default();
        self.lost = None;
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_numbers_hash_to_every_other_slot_with_varied_tags() {
        use std::hash::BuildHasher;
        let hasher = BuildHasherDefault::<NumberHasher>::default();
        let hashes: Vec<u64> = (1000u32..1064).map(|n| hasher.hash_one(n)).collect();
        for pair in hashes.windows(2) {
            assert_eq!((pair[1] as u32).wrapping_sub(pair[0] as u32), 2);
        }
        // The top 7 bits are the tag the map compares first.
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(tags.len() > 32, "only {} distinct tags", tags.len());
    }

    #[test]
    fn a_connection_in_8_bytes_is_written_out_as_before() {
        for conn in [None, Some(0), Some(7), Some(u64::MAX - 1)] {
            let packed = conn.map_or(MaybeConn::NONE, MaybeConn::some);
            assert_eq!(packed.get(), conn);
            let text = serde_json::to_string(&packed).unwrap();
            assert_eq!(text, serde_json::to_string(&conn).unwrap());
            let back: MaybeConn = serde_json::from_str(&text).unwrap();
            assert_eq!(back, packed);
        }
    }

    #[test]
    fn a_slot_stays_within_80_bytes() {
        // The map's slots are what the cache's footprint is made of.
        assert!(std::mem::size_of::<(u32, Entry)>() <= 80);
    }

    fn pkg(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    /// Runs a request whose handler answers at once on `conn`.
    fn immediate(cache: &mut ResponseCache, conn: ConnId, number: u32, text: &str) -> OnRequest {
        let outcome = cache.request(conn, number);
        if let OnRequest::Execute(exec) = outcome {
            let d = cache.complete(number, exec, pkg(text), Some(conn)).unwrap();
            assert_eq!(d.conn, conn);
            assert!(!d.late);
        }
        outcome
    }

    fn exec(outcome: OnRequest) -> ExecId {
        match outcome {
            OnRequest::Execute(e) => e,
            other => panic!("expected Execute, got {other:?}"),
        }
    }

    #[test]
    fn basic_and_reconnect_resend() {
        let mut c = ResponseCache::new(128, usize::MAX);
        // Connection 1: number 1 answered, then reused: a new request.
        assert!(matches!(
            immediate(&mut c, 1, 1, "hello"),
            OnRequest::Execute(_)
        ));
        assert!(matches!(
            immediate(&mut c, 1, 1, "world"),
            OnRequest::Execute(_)
        ));
        // Connection 2: a re-send gets the cached "world", then reuse is new.
        assert_eq!(c.request(2, 1), OnRequest::Resend(pkg("world")));
        assert!(matches!(
            immediate(&mut c, 2, 1, "again"),
            OnRequest::Execute(_)
        ));
    }

    #[test]
    fn pending_resend_goes_to_the_new_connection() {
        let mut c = ResponseCache::new(128, usize::MAX);
        let e = exec(c.request(1, 5));
        // Connection 1 gone, connection 2 re-sends: absorbed.
        assert_eq!(c.request(2, 5), OnRequest::Absorbed);
        let d = c.complete(5, e, pkg("slow"), Some(2)).unwrap();
        assert_eq!((d.conn, d.late), (2, false));
        // A duplicate while in flight on the same connection is absorbed and
        // gets a single response; a later reuse is new.
        let e = exec(c.request(2, 6));
        assert_eq!(c.request(2, 6), OnRequest::Absorbed);
        assert!(c.complete(6, e, pkg("dup"), Some(2)).is_some());
        assert!(matches!(c.request(2, 6), OnRequest::Execute(_)));
    }

    #[test]
    fn conflict_closes_but_keeps_the_running_request() {
        let mut c = ResponseCache::new(128, usize::MAX);
        let running = exec(c.request(1, 7));
        assert_eq!(c.request(1, 7), OnRequest::Absorbed);
        assert_eq!(c.request(1, 7), OnRequest::Conflict);
        // Next connection: number 7 is still the same request.
        assert_eq!(c.request(2, 7), OnRequest::Absorbed);
        let d = c.complete(7, running, pkg("q"), Some(2)).unwrap();
        assert_eq!((d.conn, d.late), (2, false));
        assert_eq!(c.request(3, 7), OnRequest::Resend(pkg("q")));
        // Answered while no connection is bound: kept for the re-send.
        let running = exec(c.request(3, 8));
        assert_eq!(c.request(3, 8), OnRequest::Absorbed);
        assert_eq!(c.request(3, 8), OnRequest::Conflict);
        assert_eq!(c.complete(8, running, pkg("r"), None), None);
        assert_eq!(c.request(4, 8), OnRequest::Resend(pkg("r")));
    }

    #[test]
    fn late_response_goes_to_newest_connection_and_is_never_rerun() {
        let mut c = ResponseCache::new(128, usize::MAX);
        let e = exec(c.request(1, 8));
        // Connection 2 authenticated before the handler finished.
        let d = c.complete(8, e, pkg("slow-8"), Some(2)).unwrap();
        assert_eq!((d.conn, d.late), (2, true));
        // A re-send that crossed the delivery is answered from the cache...
        assert_eq!(c.request(2, 8), OnRequest::Resend(pkg("slow-8")));
        // ...once; then the request number is free for new requests.
        assert!(matches!(c.request(2, 8), OnRequest::Execute(_)));
    }

    #[test]
    fn a_late_answer_waits_for_its_resend_past_retirement() {
        // The answer to 8 reaches connection 2 unasked; the client sends
        // far more than 2E new requests before it re-sends 8.
        let mut c = ResponseCache::new(4, usize::MAX);
        let e = exec(c.request(1, 8));
        assert!(c.complete(8, e, pkg("slow-8"), Some(2)).unwrap().late);
        for n in 100..120 {
            let e = exec(c.request(2, n));
            assert!(c.complete(n, e, pkg("new"), Some(2)).is_some());
        }
        assert_eq!(c.request(2, 8), OnRequest::Resend(pkg("slow-8")));
    }

    #[test]
    fn response_without_any_connection_is_resent_on_the_next() {
        let mut c = ResponseCache::new(128, usize::MAX);
        let e = exec(c.request(1, 9));
        assert_eq!(c.complete(9, e, pkg("away"), None), None);
        assert_eq!(c.request(2, 9), OnRequest::Resend(pkg("away")));
        // Re-stamped with connection 2: reuse there is new.
        assert!(matches!(c.request(2, 9), OnRequest::Execute(_)));
    }

    #[test]
    fn skynet_completed_after_reconnect_is_fixed() {
        // skynet: the answer is cached with V' and a re-send on V' re-runs.
        // Here: delivered on 2, a re-send on 2 is served from the cache, a
        // re-send on 3 too.
        let mut c = ResponseCache::new(128, usize::MAX);
        let e = exec(c.request(1, 8));
        assert!(c.complete(8, e, pkg("slow-8"), Some(2)).is_some());
        assert_eq!(c.request(2, 8), OnRequest::Resend(pkg("slow-8")));
        assert_eq!(c.request(3, 8), OnRequest::Resend(pkg("slow-8")));
    }

    #[test]
    fn abandon_forgets_a_refused_request() {
        let mut c = ResponseCache::new(128, usize::MAX);
        let e = exec(c.request(1, 1));
        c.abandon(1, e);
        assert!(c.is_empty());
        assert!(matches!(c.request(1, 1), OnRequest::Execute(_)));
    }

    #[test]
    fn running_entries_are_never_retired() {
        let mut c = ResponseCache::new(2, usize::MAX);
        let running = exec(c.request(1, 100));
        for s in 0..20 {
            immediate(&mut c, 1, s, "x");
        }
        assert!(c.counter() <= 4);
        let d = c.complete(100, running, pkg("late"), Some(1)).unwrap();
        assert_eq!(d.package, &pkg("late"));
    }

    #[test]
    fn sequential_traffic_keeps_between_e_and_2e() {
        let mut c = ResponseCache::new(128, usize::MAX);
        for s in 0..300 {
            immediate(&mut c, 1, s, "x");
        }
        // Spec §5.5: after 300 requests on a fresh user, N = 172 and the
        // numbers 128..299 are cached.
        assert_eq!(c.counter(), 172);
        assert_eq!(c.answered_numbers(), (128..300).collect::<Vec<_>>());
        assert_eq!(c.stamp(128), Some(0));
        assert_eq!(c.stamp(299), Some(171));
    }

    #[test]
    fn zero_expired_number_does_not_panic() {
        let mut c = ResponseCache::new(0, usize::MAX);
        for s in 0..10 {
            immediate(&mut c, 1, s, "x");
        }
        assert!(c.counter() >= 1);
    }

    /// Replays the `cache_retirement` scenario of the live transcript: the
    /// probe outcomes (new request vs cached resend) and the model
    /// checkpoints (counter, cached ranges, stamps) must all match, but for
    /// the one deliberate difference: answers that an ended connection
    /// carried are kept until re-sent, so six probes on bob-3 of numbers
    /// answered on bob-1 and bob-2 are answered from the cache where skynet
    /// had retired them.
    #[test]
    fn model_matches_cache_retirement_transcript_but_keeps_unconfirmed_answers() {
        let kept = std::cell::RefCell::new(Vec::new());
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/vectors/msgserver_transcript.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let scenario = doc["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "cache_retirement")
            .unwrap();
        let probes = scenario["probe_outcomes"].as_array().unwrap();
        let checkpoints = scenario["model_checkpoints"].as_array().unwrap();
        assert_eq!(checkpoints.len(), 3);

        let mut cache = ResponseCache::new(128, usize::MAX);
        let probe = |cache: &mut ResponseCache, conn: ConnId, name: &str| {
            for p in probes.iter().filter(|p| p["connection"] == name) {
                let number = u32::try_from(p["session"].as_u64().unwrap()).unwrap();
                let unconfirmed = cache.entries.get(&number).is_some_and(Entry::undelivered);
                let outcome = immediate(cache, conn, number, "probe");
                let got = match outcome {
                    OnRequest::Execute(_) => "new",
                    OnRequest::Resend(_) => "resend",
                    other => panic!("probe {number}: {other:?}"),
                };
                let expected = if unconfirmed {
                    if p["outcome"] == "new" {
                        kept.borrow_mut().push(number);
                    }
                    "resend"
                } else {
                    p["outcome"].as_str().unwrap()
                };
                assert_eq!(got, expected, "{name} number {number}");
            }
        };
        let check = |cache: &ResponseCache, cp: &serde_json::Value| {
            assert_eq!(
                u64::from(cache.counter()),
                cp["index"].as_u64().unwrap(),
                "{cp}"
            );
            let mut expected = Vec::new();
            for range in cp["cached_session_ranges"].as_array().unwrap() {
                let lo = range[0].as_u64().unwrap();
                let hi = range[1].as_u64().unwrap();
                expected.extend((lo..=hi).map(|s| u32::try_from(s).unwrap()));
            }
            // skynet's entries, plus the unconfirmed answers of bob's
            // earlier connections.
            let mut ours = expected.clone();
            ours.extend(
                cache
                    .entries
                    .iter()
                    .filter(|(_, e)| e.undelivered())
                    .map(|(s, _)| *s),
            );
            ours.sort_unstable();
            ours.dedup();
            assert_eq!(cache.answered_numbers(), ours, "{cp}");
            for (number, stamp) in cp["stamps_of_range_ends"].as_object().unwrap() {
                let number: u32 = number.parse().unwrap();
                if cache.entries.get(&number).is_some_and(Entry::undelivered) {
                    continue;
                }
                assert_eq!(
                    cache.stamp(number).map(u64::from),
                    stamp.as_u64(),
                    "stamp of {number} at {cp}"
                );
            }
        };

        // bob-1: 300 new requests, numbers 1000..1299.
        for s in 1000..1300 {
            assert!(matches!(
                immediate(&mut cache, 1, s, "fast"),
                OnRequest::Execute(_)
            ));
        }
        check(&cache, &checkpoints[0]);
        cache.connection_ended(1);
        // bob-2: 4 probes, then 200 new requests 2000..2199.
        probe(&mut cache, 2, "bob-2");
        for s in 2000..2200 {
            assert!(matches!(
                immediate(&mut cache, 2, s, "fast"),
                OnRequest::Execute(_)
            ));
        }
        check(&cache, &checkpoints[1]);
        cache.connection_ended(2);
        // bob-3: probes only.
        probe(&mut cache, 3, "bob-3");
        check(&cache, &checkpoints[2]);
        assert_eq!(*kept.borrow(), vec![1255, 1129, 1299, 2000, 2050, 2079]);
    }
    /// The defect the byte bound and the undelivered rule fix: answers that
    /// completed while the client was away survive any number of new
    /// requests until they are re-sent.
    #[test]
    fn undelivered_answers_are_not_retired_by_count() {
        let mut c = ResponseCache::new(128, usize::MAX);
        let execs: Vec<ExecId> = (0..128).map(|s| exec(c.request(1, s))).collect();
        // Connection 1 resets; everything completes while away.
        for (s, e) in (0..128).zip(execs) {
            assert_eq!(c.complete(s, e, pkg(&format!("r{s}")), None), None);
        }
        assert_eq!(c.undelivered(), 128);
        // Connection 2: 20 new requests, then far more than 2E others.
        for s in 1000..1300 {
            immediate(&mut c, 2, s, "new");
        }
        for s in 0..128 {
            assert_eq!(c.request(2, s), OnRequest::Resend(pkg(&format!("r{s}"))));
        }
        assert_eq!(c.undelivered(), 0);
    }

    #[test]
    fn byte_bound_drops_the_oldest_and_answers_lost_with_an_error() {
        // Room for two 100-byte answers.
        let mut c = ResponseCache::new(128, 2 * (ENTRY_COST + 100));
        let away = exec(c.request(1, 1));
        assert_eq!(c.complete(1, away, Bytes::from(vec![1; 100]), None), None);
        immediate(&mut c, 2, 2, &"d".repeat(100));
        assert!(c.bytes() <= 2 * (ENTRY_COST + 100));
        // A third answer: the oldest (1) goes.
        immediate(&mut c, 2, 3, &"e".repeat(100));
        assert_eq!(c.answered_numbers(), vec![2, 3]);
        assert!(c.lost().contains(1));
        // A re-send of 1 on a new connection: an error, not a new run...
        assert_eq!(c.request(3, 1), OnRequest::Lost(wire::error_response(1)));
        // ...and so is every later request with that number.
        assert_eq!(c.request(3, 1), OnRequest::Lost(wire::error_response(1)));
        assert_eq!(c.request(4, 1), OnRequest::Lost(wire::error_response(1)));
        assert_eq!(c.answered_numbers(), vec![2, 3]);
        assert!(c.bytes() <= 2 * (ENTRY_COST + 100));
    }

    #[test]
    fn running_entries_are_never_evicted() {
        let mut c = ResponseCache::new(128, ENTRY_COST);
        let running: Vec<ExecId> = (0..4).map(|s| exec(c.request(1, s))).collect();
        assert_eq!(c.len(), 4);
        let d = c.complete(0, running[0], pkg("x"), Some(1)).unwrap();
        // Delivered, and kept past the bound until the next touch...
        assert_eq!(d.package, &pkg("x"));
        assert!(matches!(c.request(1, 9), OnRequest::Execute(_)));
        // ...which drops it: a re-send gets an error.
        assert!(c.lost().contains(0));
    }

    #[test]
    fn answers_of_an_ended_connection_wait_for_their_resend() {
        let mut c = ResponseCache::new(1, usize::MAX);
        let e = exec(c.request(1, 5));
        c.complete(5, e, pkg("five"), Some(1)).unwrap();
        c.connection_ended(1);
        assert_eq!(c.undelivered(), 1);
        for s in 10..20 {
            immediate(&mut c, 2, s, "x");
        }
        assert_eq!(c.request(2, 5), OnRequest::Resend(pkg("five")));
        // Delivered on the live connection again: now it ages.
        for s in 20..30 {
            immediate(&mut c, 2, s, "x");
        }
        assert!(matches!(c.request(2, 5), OnRequest::Execute(_)));
    }

    #[test]
    fn lost_numbers_merge() {
        let mut l = LostNumbers::default();
        for s in [5, 7, 6, 100] {
            l.insert(s);
        }
        assert_eq!(l.ranges, vec![(5, 7), (100, 100)]);
        assert!(l.contains(6) && !l.contains(8) && !l.contains(4));
        // Over the bound the closest ranges merge: never fewer numbers.
        let mut l = LostNumbers::default();
        for s in (0..200).map(|i| i * 10) {
            l.insert(s);
        }
        assert_eq!(l.ranges(), MAX_LOST_RANGES);
        for s in (0..200).map(|i| i * 10) {
            assert!(l.contains(s));
        }
        l.insert(u32::MAX);
        assert!(l.contains(u32::MAX));
    }
}
