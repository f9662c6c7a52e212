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
//!   session whose answer the client never received is always answered from
//!   the cache, never executed again.
//! * **Remaining edge, documented:** a late response is marked `late`; the
//!   first request for that session on the connection it was delivered to
//!   is answered from the cache (it is most likely a re-send that crossed
//!   the delivery on the wire), so such a client may receive the same answer
//!   twice — but a request is never executed twice. A client that reuses
//!   that session number for a *new* request on that same connection gets
//!   the cached answer once; the next reuse runs normally.
//! * Oversize responses are the caller's business: the gate turns them into
//!   error responses before they reach [`ResponseCache::complete`], so no
//!   entry is left "running" forever (spec §5.6).

use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;

/// Identifies one authenticated connection of the gate. Plays the role of
/// skynet's version `V` in the cache (see the module docs). Never reused.
pub type ConnId = u64;

/// Identifies one execution of a handler, so the result of an orphaned
/// handler (its entry was dropped by a Conflict and the session reused) can
/// never fill a newer entry of the same session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The session's handler is still running; its response will go to the
    /// connection the request came from. Nothing to send now.
    Absorbed,
    /// skynet's "Conflict session": close the connection without a
    /// response. The entry is gone; the running handler's result will be
    /// discarded.
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

/// Hashes session numbers by one multiplication (Fibonacci hashing, as
/// FxHash does). Sessions are client-chosen, but each user has a map of its
/// own with at most a few hundred entries, so a client can only slow
/// itself down; SipHash's flooding resistance buys nothing here and costs
/// several times more per request.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionHasher(u64);

impl Hasher for SessionHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type SessionMap = HashMap<u32, Entry, BuildHasherDefault<SessionHasher>>;

#[derive(Debug)]
struct Entry {
    /// Connection waiting for the response (`None` = nothing pending).
    target: Option<ConnId>,
    /// The response package, `None` while the handler runs.
    resp: Option<Bytes>,
    /// The connection generation this entry belongs to (skynet's `ver`).
    ver: Option<ConnId>,
    /// Retirement stamp (skynet's `index` at the last touch).
    stamp: u32,
    /// The execution whose result may fill `resp`.
    exec: ExecId,
    /// Delivered to a connection it was not asked on: the next request for
    /// this session on that connection is answered from the cache.
    late: bool,
}

/// The response cache of one user.
#[derive(Debug)]
pub struct ResponseCache {
    entries: SessionMap,
    /// skynet's per-user counter `N`.
    counter: u32,
    /// skynet's `expired_number` `E`.
    expired: u32,
    next_exec: u64,
}

impl ResponseCache {
    /// An empty cache retiring with `expired_number` = `expired` (skynet: 128).
    /// Does not allocate until the first request.
    pub fn new(expired: u32) -> ResponseCache {
        ResponseCache {
            entries: SessionMap::default(),
            counter: 0,
            expired,
            next_exec: 0,
        }
    }

    /// A request for `session` arrived on `conn`, which must be the user's
    /// current connection (the gate closes superseded ones before they get
    /// here).
    pub fn request(&mut self, conn: ConnId, session: u32) -> OnRequest {
        let exec = ExecId(self.next_exec);
        let fresh = Entry {
            target: Some(conn),
            resp: None,
            ver: None,
            stamp: 0,
            exec,
            late: false,
        };
        let e = match self.entries.entry(session) {
            Slot::Vacant(slot) => {
                slot.insert(fresh);
                self.next_exec = self.next_exec.wrapping_add(1);
                return OnRequest::Execute(exec);
            }
            Slot::Occupied(slot) if slot.get().ver == Some(conn) => {
                if slot.get().resp.is_none() {
                    // Re-sent twice in this generation while still running.
                    slot.remove();
                    return OnRequest::Conflict;
                }
                let e = slot.into_mut();
                if !e.late {
                    // Answered in this generation: the session number is
                    // reused for a brand-new request.
                    *e = fresh;
                    self.next_exec = self.next_exec.wrapping_add(1);
                    return OnRequest::Execute(exec);
                }
                // Fix: a late delivery here; answered from the cache, once
                // (see module docs).
                e
            }
            Slot::Occupied(slot) => slot.into_mut(),
        };
        // Re-send: from an older generation, or never completed.
        e.target = Some(conn);
        e.ver = Some(conn);
        e.stamp = self.counter;
        e.late = false;
        let Some(package) = e.resp.clone() else {
            return OnRequest::Absorbed;
        };
        e.target = None;
        self.counter = self.counter.saturating_add(1);
        self.retire();
        OnRequest::Resend(package)
    }

    /// The handler of `(session, exec)` finished with `package` (the
    /// complete response package). `live` is the user's current
    /// authenticated connection, if any. Returns where to send the package;
    /// `None` when nobody can get it now (it stays cached for a re-send) or
    /// when the execution was orphaned by a Conflict (its result is dropped).
    pub fn complete(
        &mut self,
        session: u32,
        exec: ExecId,
        package: Bytes,
        live: Option<ConnId>,
    ) -> Option<Delivery<'_>> {
        let e = self.entries.get_mut(&session)?;
        if e.exec != exec || e.resp.is_some() {
            return None;
        }
        e.resp = Some(package);
        e.stamp = self.counter;
        let delivered = match (e.target, live) {
            (_, None) => {
                // Not delivered: any later request for it is a re-send.
                e.ver = None;
                e.late = false;
                None
            }
            (target, Some(live)) => {
                let late = target != Some(live);
                e.ver = Some(live);
                e.late = late;
                Some((live, late))
            }
        };
        e.target = None;
        self.counter = self.counter.saturating_add(1);
        self.retire();
        let (conn, late) = delivered?;
        // The entry was just stamped with the highest stamp, so retirement
        // kept it.
        let package = self.entries.get(&session)?.resp.as_ref()?;
        Some(Delivery {
            conn,
            package,
            late,
        })
    }

    /// Forgets a request that was classified [`OnRequest::Execute`] but will
    /// not run after all (the gate refused it, e.g. too many in flight).
    pub fn abandon(&mut self, session: u32, exec: ExecId) {
        if self
            .entries
            .get(&session)
            .is_some_and(|e| e.exec == exec && e.resp.is_none())
        {
            self.entries.remove(&session);
        }
    }

    /// skynet's retirement: only once `N ≥ 2E`, drop answered entries
    /// stamped below `E`, shift the others down by `E`, restart `N` above
    /// the highest remaining stamp. Entries waiting for a connection are
    /// skipped entirely.
    fn retire(&mut self) {
        let expired = self.expired;
        if self.counter < expired.saturating_mul(2) {
            return;
        }
        let mut max = 0;
        self.entries.retain(|_, e| {
            if e.target.is_some() {
                return true;
            }
            if e.stamp < expired {
                return false;
            }
            e.stamp -= expired;
            max = max.max(e.stamp);
            true
        });
        self.counter = max.saturating_add(1);
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

    /// The retirement stamp of an answered session, if it is cached.
    pub fn stamp(&self, session: u32) -> Option<u32> {
        self.entries
            .get(&session)
            .filter(|e| e.resp.is_some())
            .map(|e| e.stamp)
    }

    /// Sessions with a cached response, sorted.
    pub fn answered_sessions(&self) -> Vec<u32> {
        let mut sessions: Vec<u32> = self
            .entries
            .iter()
            .filter(|(_, e)| e.resp.is_some())
            .map(|(s, _)| *s)
            .collect();
        sessions.sort_unstable();
        sessions
    }

    /// Drops everything (logout). Results of handlers still running are
    /// discarded when they arrive.
    pub fn clear(&mut self) {
        self.entries = SessionMap::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    /// Runs a request whose handler answers at once on `conn`.
    fn immediate(cache: &mut ResponseCache, conn: ConnId, session: u32, text: &str) -> OnRequest {
        let outcome = cache.request(conn, session);
        if let OnRequest::Execute(exec) = outcome {
            let d = cache
                .complete(session, exec, pkg(text), Some(conn))
                .unwrap();
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
        let mut c = ResponseCache::new(128);
        // Connection 1: session 1 answered, then reused: a new request.
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
        let mut c = ResponseCache::new(128);
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
    fn conflict_drops_the_entry_and_the_orphan() {
        let mut c = ResponseCache::new(128);
        let orphan = exec(c.request(1, 7));
        assert_eq!(c.request(1, 7), OnRequest::Absorbed);
        assert_eq!(c.request(1, 7), OnRequest::Conflict);
        // Next connection: session 7 is free again.
        let fresh = exec(c.request(2, 7));
        // The orphan finishes first: discarded, the new entry stays running.
        assert_eq!(c.complete(7, orphan, pkg("orphan"), Some(2)), None);
        assert!(c.complete(7, fresh, pkg("q"), Some(2)).is_some());
        assert_eq!(c.request(3, 7), OnRequest::Resend(pkg("q")));
    }

    #[test]
    fn late_response_goes_to_newest_connection_and_is_never_rerun() {
        let mut c = ResponseCache::new(128);
        let e = exec(c.request(1, 8));
        // Connection 2 authenticated before the handler finished.
        let d = c.complete(8, e, pkg("slow-8"), Some(2)).unwrap();
        assert_eq!((d.conn, d.late), (2, true));
        // A re-send that crossed the delivery is answered from the cache...
        assert_eq!(c.request(2, 8), OnRequest::Resend(pkg("slow-8")));
        // ...once; then the session number is free for new requests.
        assert!(matches!(c.request(2, 8), OnRequest::Execute(_)));
    }

    #[test]
    fn response_without_any_connection_is_resent_on_the_next() {
        let mut c = ResponseCache::new(128);
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
        let mut c = ResponseCache::new(128);
        let e = exec(c.request(1, 8));
        assert!(c.complete(8, e, pkg("slow-8"), Some(2)).is_some());
        assert_eq!(c.request(2, 8), OnRequest::Resend(pkg("slow-8")));
        assert_eq!(c.request(3, 8), OnRequest::Resend(pkg("slow-8")));
    }

    #[test]
    fn abandon_forgets_a_refused_request() {
        let mut c = ResponseCache::new(128);
        let e = exec(c.request(1, 1));
        c.abandon(1, e);
        assert!(c.is_empty());
        assert!(matches!(c.request(1, 1), OnRequest::Execute(_)));
    }

    #[test]
    fn running_entries_are_never_retired() {
        let mut c = ResponseCache::new(2);
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
        let mut c = ResponseCache::new(128);
        for s in 0..300 {
            immediate(&mut c, 1, s, "x");
        }
        // Spec §5.5: after 300 requests on a fresh user, N = 172 and the
        // sessions 128..299 are cached.
        assert_eq!(c.counter(), 172);
        assert_eq!(c.answered_sessions(), (128..300).collect::<Vec<_>>());
        assert_eq!(c.stamp(128), Some(0));
        assert_eq!(c.stamp(299), Some(171));
    }

    #[test]
    fn zero_expired_number_does_not_panic() {
        let mut c = ResponseCache::new(0);
        for s in 0..10 {
            immediate(&mut c, 1, s, "x");
        }
        assert!(c.counter() >= 1);
    }

    /// Replays the `cache_retirement` scenario of the live transcript: the
    /// probe outcomes (new request vs cached resend) and the model
    /// checkpoints (counter, cached ranges, stamps) must all match.
    #[test]
    fn model_matches_cache_retirement_transcript() {
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

        let mut cache = ResponseCache::new(128);
        let probe = |cache: &mut ResponseCache, conn: ConnId, name: &str| {
            for p in probes.iter().filter(|p| p["connection"] == name) {
                let session = u32::try_from(p["session"].as_u64().unwrap()).unwrap();
                let outcome = immediate(cache, conn, session, "probe");
                let got = match outcome {
                    OnRequest::Execute(_) => "new",
                    OnRequest::Resend(_) => "resend",
                    other => panic!("probe {session}: {other:?}"),
                };
                assert_eq!(got, p["outcome"], "{name} session {session}");
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
            assert_eq!(cache.answered_sessions(), expected, "{cp}");
            for (session, stamp) in cp["stamps_of_range_ends"].as_object().unwrap() {
                let session: u32 = session.parse().unwrap();
                assert_eq!(
                    cache.stamp(session).map(u64::from),
                    stamp.as_u64(),
                    "stamp of {session} at {cp}"
                );
            }
        };

        // bob-1: 300 new requests, sessions 1000..1299.
        for s in 1000..1300 {
            assert!(matches!(
                immediate(&mut cache, 1, s, "fast"),
                OnRequest::Execute(_)
            ));
        }
        check(&cache, &checkpoints[0]);
        // bob-2: 4 probes, then 200 new requests 2000..2199.
        probe(&mut cache, 2, "bob-2");
        for s in 2000..2200 {
            assert!(matches!(
                immediate(&mut cache, 2, s, "fast"),
                OnRequest::Execute(_)
            ));
        }
        check(&cache, &checkpoints[1]);
        // bob-3: probes only.
        probe(&mut cache, 3, "bob-3");
        check(&cache, &checkpoints[2]);
    }
}
