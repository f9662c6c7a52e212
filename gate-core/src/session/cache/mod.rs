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

use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

use self::entries::Entries;
pub use self::entries::NumberHasher;
use self::evict::Evictions;
use crate::wire::{self, Package};

mod entries;
mod evict;
mod restore;

/// Identifies one authenticated connection of the gate. Plays the role of
/// skynet's version `V` in the cache (see the module docs). Never reused.
pub type ConnId = u64;

/// Bytes an entry costs besides its package (slot and fields), so that
/// the byte bound also bounds the number of entries. A slot is 80 bytes
/// in the window of consecutive numbers, 88 in the map of the others
/// (see `entries`), with an answer of up to 38 bytes in it, so small
/// answers are counted a little above what they take.
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
    Resend(Package),
    /// The answer of this request number was dropped to keep the cache
    /// within its byte bound: send this error response instead of running
    /// the request again (the same for every later request with it).
    Lost(Package),
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
    pub package: &'a Package,
    /// `true` when it goes to a newer connection than the one it was asked
    /// on (the fix for skynet's lost "completed after reconnect" response).
    pub late: bool,
}

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
    resp: Option<Package>,
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
        ENTRY_COST + self.resp.as_ref().map_or(0, |p| p.len())
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
#[serde(from = "restore::Stored")]
pub struct ResponseCache {
    entries: Entries<Entry>,
    /// skynet's per-user counter `N`.
    counter: u32,
    /// skynet's `expired_number` `E`.
    expired: u32,
    next_exec: u64,
    /// What the entries cost ([`ENTRY_COST`] each plus their packages).
    bytes: usize,
    /// The bound on `bytes` for answered entries.
    max_bytes: usize,
    /// The numbers the byte bound made lost, and its next victims. Boxed:
    /// most sessions never lose an answer. Written out as the lost
    /// numbers, as it always was.
    lost: Option<Box<Evictions>>,
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
            entries: Entries::default(),
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
        let e = match self.entries.get_mut(number) {
            None => {
                if self.lost.as_ref().is_some_and(|l| l.lost.contains(number)) {
                    // Its answer was dropped for the byte bound: an error,
                    // now and for every later request with this number.
                    return OnRequest::Lost(wire::error_response(number).into());
                }
                self.entries.insert(number, fresh);
                self.bytes += ENTRY_COST;
                while self.bytes > self.max_bytes && self.evict_one(Some(number)) {}
                return OnRequest::Execute(exec);
            }
            Some(e) if e.ver == MaybeConn::some(conn) => {
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
            Some(e) => e,
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
        package: Package,
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
        package: Package,
        live: Option<ConnId>,
        queued: bool,
    ) -> Option<Delivery<'_>> {
        let touched = self.tick();
        let e = self.entries.get_mut(number)?;
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
        let package = self.entries.get(number)?.resp.as_ref()?;
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
            .get(number)
            .is_some_and(|e| e.exec == exec && e.resp.is_none())
            && let Some(old) = self.entries.remove(number)
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
        match evict::evict_one(&mut self.entries, &mut self.lost, spare) {
            Some(cost) => {
                self.bytes -= cost;
                true
            }
            None => false,
        }
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
        self.lost
            .as_deref()
            .map(|l| l.lost.clone())
            .unwrap_or_default()
    }

    /// The retirement stamp of an answered request number, if it is cached.
    pub fn stamp(&self, number: u32) -> Option<u32> {
        self.entries
            .get(number)
            .filter(|e| e.resp.is_some())
            .map(|e| e.stamp)
    }

    /// The request numbers with a cached response, sorted.
    pub fn answered_numbers(&self) -> Vec<u32> {
        let mut numbers: Vec<u32> = self
            .entries
            .iter()
            .filter(|(_, e)| e.resp.is_some())
            .map(|(s, _)| s)
            .collect();
        numbers.sort_unstable();
        numbers
    }

    /// Drops everything (the session ended). Results of handlers still
    /// running are discarded when they arrive.
    pub fn clear(&mut self) {
        self.entries = Entries::default();
        self.lost = None;
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests;
