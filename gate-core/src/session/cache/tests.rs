//! Unit tests of the response cache, the skynet transcript's retirement
//! among them.

use super::*;

#[test]
fn neighbouring_numbers_hash_to_every_other_slot_with_varied_tags() {
    use std::hash::BuildHasher;
    let hasher = std::hash::BuildHasherDefault::<NumberHasher>::default();
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
fn a_slot_stays_within_88_bytes() {
    // The slots are what the cache's footprint is made of; a small answer
    // (up to 31 content bytes) lives in its slot, not in a buffer of its
    // own. A window slot has no number in it.
    assert!(std::mem::size_of::<(u32, Entry)>() <= 88);
    assert!(std::mem::size_of::<Option<Entry>>() <= 80);
}

fn pkg(text: &str) -> Package {
    Package::copy_from_slice(text.as_bytes())
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
            let unconfirmed = cache.entries.get(number).is_some_and(Entry::undelivered);
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
                .map(|(s, _)| s),
        );
        ours.sort_unstable();
        ours.dedup();
        assert_eq!(cache.answered_numbers(), ours, "{cp}");
        for (number, stamp) in cp["stamps_of_range_ends"].as_object().unwrap() {
            let number: u32 = number.parse().unwrap();
            if cache.entries.get(number).is_some_and(Entry::undelivered) {
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
    assert_eq!(
        c.complete(1, away, Package::copy_from_slice(&[1; 100]), None),
        None
    );
    immediate(&mut c, 2, 2, &"d".repeat(100));
    assert!(c.bytes() <= 2 * (ENTRY_COST + 100));
    // A third answer: the oldest (1) goes.
    immediate(&mut c, 2, 3, &"e".repeat(100));
    assert_eq!(c.answered_numbers(), vec![2, 3]);
    assert!(c.lost().contains(1));
    // A re-send of 1 on a new connection: an error, not a new run...
    assert_eq!(
        c.request(3, 1),
        OnRequest::Lost(wire::error_response(1).into())
    );
    // ...and so is every later request with that number.
    assert_eq!(
        c.request(3, 1),
        OnRequest::Lost(wire::error_response(1).into())
    );
    assert_eq!(
        c.request(4, 1),
        OnRequest::Lost(wire::error_response(1).into())
    );
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

/// skynet's retirement as the spec writes it (spec §5.5), for answers
/// delivered on a live connection: every request is stamped with `N`, and
/// once `N ≥ 2E` the answers stamped below `E` go and the others move down
/// by `E`.
#[derive(Default)]
struct SkynetModel {
    /// number → (stamp, connection it was answered on).
    answers: std::collections::BTreeMap<u32, (u32, ConnId)>,
    counter: u32,
}

impl SkynetModel {
    /// A request on `conn`, answered at once there: `true` when it is a
    /// re-send served from the cache (answered on another connection).
    fn request(&mut self, conn: ConnId, number: u32, expired: u32) -> bool {
        let resend = self.answers.get(&number).is_some_and(|&(_, c)| c != conn);
        self.answers.insert(number, (self.counter, conn));
        self.counter += 1;
        if self.counter >= expired * 2 {
            let mut max = 0;
            self.answers.retain(|_, (stamp, _)| {
                if *stamp < expired {
                    return false;
                }
                *stamp -= expired;
                max = max.max(*stamp);
                true
            });
            self.counter = max + 1;
        }
        resend
    }

    fn stamps(&self) -> Vec<(u32, u32)> {
        self.answers.iter().map(|(&n, &(s, _))| (n, s)).collect()
    }
}

fn stamps(cache: &ResponseCache) -> Vec<(u32, u32)> {
    let numbers = cache.answered_numbers();
    numbers
        .iter()
        .map(|&n| (n, cache.stamp(n).unwrap()))
        .collect()
}

proptest::proptest! {
    /// New requests (numbers reused or not) and re-sends on a newer
    /// connection, in any order: the cache keeps exactly skynet's answers
    /// and stamps, writes the stamps out, and goes on the same after being
    /// read back.
    #[test]
    fn retirement_matches_a_full_pass(
        expired in 1u32..6,
        ops in proptest::collection::vec((0u32..24, proptest::bool::ANY), 1..300),
        restore_at in 0usize..300,
    ) {
        let mut cache = ResponseCache::new(expired, usize::MAX);
        let mut model = SkynetModel::default();
        let mut conn = 1;
        for (i, (number, new_conn)) in ops.into_iter().enumerate() {
            if i == restore_at {
                let text = serde_json::to_string(&cache).unwrap();
                let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
                for (n, stamp) in model.stamps() {
                    let written = &doc["entries"][n.to_string()];
                    proptest::prop_assert_eq!(written["stamp"].as_u64(), Some(u64::from(stamp)));
                }
                cache = serde_json::from_str(&text).unwrap();
                proptest::prop_assert_eq!(serde_json::to_value(&cache).unwrap(), doc);
            }
            if new_conn {
                conn += 1;
            }
            let resend = model.request(conn, number, expired);
            // Answers in place and shared ones, through the read-back too.
            let answer = if number % 3 == 0 { "a longer answer, more than the 38 bytes that fit in place" } else { "x" };
            let outcome = immediate(&mut cache, conn, number, answer);
            proptest::prop_assert_eq!(matches!(outcome, OnRequest::Resend(_)), resend, "{:?}", outcome);
            proptest::prop_assert_eq!(cache.counter(), model.counter);
            proptest::prop_assert_eq!(stamps(&cache), model.stamps());
        }
    }
}

#[test]
fn an_answer_held_back_at_a_retirement_retires_at_the_next_once_written() {
    let mut c = ResponseCache::new(2, usize::MAX);
    let e = exec(c.request(1, 5));
    // Completed by another task: queued for connection 1, not written.
    assert!(
        c.complete_queued(5, e, pkg("five"), Some(1), true)
            .is_some()
    );
    for n in 100..104 {
        immediate(&mut c, 1, n, "x");
    }
    // Past a retirement that dropped older answers: 5 was held back.
    assert!(c.answered_numbers().contains(&5));
    c.outbox_written();
    for n in 104..108 {
        immediate(&mut c, 1, n, "x");
    }
    assert!(!c.answered_numbers().contains(&5));
    assert!(matches!(c.request(1, 5), OnRequest::Execute(_)));
}
