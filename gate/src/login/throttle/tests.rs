//! Tests of the throttle's buckets and tables.
use super::*;

const S: Duration = Duration::from_secs(1);

fn throttle() -> Throttle {
    Throttle::new(ThrottleConfig {
        user: Policy {
            burst: 3,
            interval: 10 * S,
        },
        source: Policy {
            burst: 10,
            interval: S,
        },
        logins: Policy {
            burst: 30,
            interval: 2 * S,
        },
        trusted_for: 3600 * S,
        max_users: 1000,
        max_sources: 1000,
    })
}

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
}

#[test]
fn a_bucket_allows_its_burst_then_one_per_interval() {
    let p = Policy {
        burst: 3,
        interval: 10 * S,
    };
    // A stamp far from the clock's start, so nothing saturates.
    let t0 = Stamp(1 << 40);
    let mut full_at = t0;
    let taken: Vec<bool> = (0..5).map(|_| p.take(&mut full_at, t0)).collect();
    assert_eq!(taken, [true, true, true, false, false]);
    assert!(!p.take(&mut full_at, t0 + 9 * S));
    assert!(p.take(&mut full_at, t0 + 10 * S));
    assert!(!p.take(&mut full_at, t0 + 10 * S));
    p.give_back(&mut full_at, t0 + 10 * S);
    assert!(p.take(&mut full_at, t0 + 10 * S));
    let off = Policy { burst: 0, ..p };
    assert!((0..100).all(|_| off.take(&mut full_at, t0)));
}

#[test]
fn extreme_intervals_never_turn_a_bucket_off() {
    let t0 = Stamp(1 << 40);
    // Sub-microsecond: still a burst.
    let tiny = Policy {
        burst: 3,
        interval: Duration::from_nanos(1),
    };
    let mut full_at = t0;
    let taken = (0..10).filter(|_| tiny.take(&mut full_at, t0)).count();
    assert_eq!(taken, 3);
    // Longer than the clock: at most the burst, then closed for good.
    for interval in [
        Duration::MAX,
        Duration::from_secs(200_000 * 365 * 24 * 3600),
    ] {
        let huge = Policy { burst: 5, interval };
        let mut full_at = t0;
        let taken = (0..50).filter(|_| huge.take(&mut full_at, t0)).count();
        assert!(taken <= 5, "{taken} taken with {interval:?}");
        assert!(!huge.take(&mut full_at, t0 + Duration::from_secs(3600)));
    }
}

#[test]
fn stamps_count_microseconds_from_the_throttle_start() {
    let t = throttle();
    assert_eq!(t.stamp(t.epoch), Stamp(0));
    assert_eq!(
        t.stamp(t.epoch + 3 * S + Duration::from_micros(7)),
        Stamp(3_000_007)
    );
    // Before the start: the start.
    if let Some(before) = t.epoch.checked_sub(S) {
        assert_eq!(t.stamp(before), Stamp(0));
    }
    assert_eq!(Stamp(5) + Duration::MAX, Stamp(u64::MAX));
    assert_eq!(Stamp(5) + Duration::from_nanos(1), Stamp(6));
    assert_eq!(Stamp(5).checked_sub(Duration::from_micros(6)), None);
    assert_eq!(
        Stamp(9).saturating_duration_since(Stamp(12)),
        Duration::ZERO
    );
}

#[test]
fn guesses_from_many_addresses_are_bounded_per_user() {
    let t = throttle();
    let t0 = Instant::now();
    let mut checked = 0;
    // 600 guesses over a minute, each from a new address.
    for n in 0..600u32 {
        let now = t0 + Duration::from_millis(100 * u64::from(n));
        if let Ok(a) = t.attempt(b"alice", ip(n), now) {
            checked += 1;
            a.failed(now);
        } else {
            assert_eq!(t.attempt(b"alice", ip(n), now).err(), Some(Throttled::User));
        }
    }
    // The burst, then one per 10 s over 60 s.
    assert_eq!(checked, 3 + 5);
}

#[test]
fn a_success_gives_back_only_its_own_token() {
    let t = throttle();
    let t0 = Instant::now();
    t.attempt(b"alice", ip(1), t0).unwrap().failed(t0);
    t.attempt(b"alice", ip(2), t0).unwrap().failed(t0);
    // The owner, from a new address, logs in: the two failures stay.
    t.attempt(b"alice", ip(3), t0).unwrap().succeeded(t0);
    t.attempt(b"alice", ip(4), t0).unwrap().failed(t0);
    assert_eq!(t.attempt(b"alice", ip(5), t0).err(), Some(Throttled::User));
}

#[test]
fn a_trusted_address_is_not_locked_out_by_guesses_elsewhere() {
    let t = throttle();
    let t0 = Instant::now();
    let home = ip(100);
    t.attempt(b"alice", home, t0).unwrap().succeeded(t0);
    for n in 0..50 {
        if let Ok(a) = t.attempt(b"alice", ip(n), t0) {
            a.failed(t0);
        }
    }
    assert_eq!(t.attempt(b"alice", ip(77), t0).err(), Some(Throttled::User));
    for _ in 0..20 {
        let a = t.attempt(b"alice", home, t0).expect("home is trusted");
        assert!(a.trusted());
        a.succeeded(t0);
    }
    // Wrong passwords from home drain home's own bucket only...
    for _ in 0..3 {
        t.attempt(b"alice", home, t0).unwrap().failed(t0);
    }
    // ...after which home is one more address, and the name is throttled.
    assert_eq!(t.attempt(b"alice", home, t0).err(), Some(Throttled::User));
    // Trust lapses.
    let later = t0 + 3600 * S;
    let a = t.attempt(b"alice", home, later).unwrap();
    assert!(!a.trusted());
}

#[test]
fn an_address_guessing_many_names_is_throttled() {
    let t = throttle();
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    let t0 = Instant::now();
    for n in 0..10 {
        t.attempt(format!("user{n}").as_bytes(), v6, t0)
            .unwrap()
            .failed(t0);
    }
    // Its whole /64 is one source.
    let neighbour: IpAddr = "2001:db8::ffff:1".parse().unwrap();
    assert_eq!(
        t.attempt(b"someone", neighbour, t0).err(),
        Some(Throttled::Source)
    );
    assert!(
        t.attempt(b"someone", "2001:db9::1".parse().unwrap(), t0)
            .is_ok()
    );
    // IPv4-mapped is IPv4.
    let mapped: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
    for n in 0..10 {
        t.attempt(format!("u{n}").as_bytes(), mapped, t0)
            .unwrap()
            .failed(t0);
    }
    assert_eq!(
        t.attempt(b"x", "10.0.0.9".parse().unwrap(), t0).err(),
        Some(Throttled::Source)
    );
}

#[test]
fn many_players_behind_one_address_log_in_at_once() {
    let t = throttle();
    let t0 = Instant::now();
    let nat = ip(7);
    let names: Vec<String> = (0..100).map(|n| format!("player{n}")).collect();
    let running: Vec<Attempt<'_>> = names
        .iter()
        .map(|name| t.attempt(name.as_bytes(), nat, t0).expect("not throttled"))
        .collect();
    for attempt in running {
        attempt.succeeded(t0);
    }
}

#[test]
fn an_undecided_attempt_gives_its_tokens_back() {
    let t = throttle();
    let t0 = Instant::now();
    for _ in 0..10 {
        drop(t.attempt(b"alice", ip(1), t0).unwrap());
    }
    assert_eq!(t.sizes(), (0, 0), "nothing kept for undecided logins");
}

#[test]
fn tables_stay_bounded_and_keep_the_most_guessed_names() {
    let t = Throttle::new(ThrottleConfig {
        max_users: 128,
        max_sources: 128,
        ..throttle().config
    });
    let t0 = Instant::now();
    for _ in 0..3 {
        t.attempt(b"target", ip(0), t0).unwrap().failed(t0);
    }
    for n in 0..10_000u32 {
        if let Ok(a) = t.attempt(format!("name{n}").as_bytes(), ip(n + 1), t0) {
            a.failed(t0);
        }
    }
    let (users, sources) = t.sizes();
    assert!(users <= 128 + SHARDS, "{users}");
    assert!(sources <= 128 + SHARDS, "{sources}");
    assert_eq!(
        t.attempt(b"target", ip(99_999), t0).err(),
        Some(Throttled::User),
        "the guessed name kept its failures"
    );
}

#[test]
fn one_user_logging_in_again_and_again_is_bounded() {
    let t = throttle();
    let t0 = Instant::now();
    let home = ip(1);
    let mut allowed = 0;
    // 10,000 logins a second for ten seconds, every one right.
    for n in 0..100_000u64 {
        let now = t0 + Duration::from_micros(100 * n);
        match t.attempt(b"alice", home, now) {
            Ok(a) => {
                allowed += 1;
                let key = a.succeeded(now);
                t.logged_in(key, now);
            }
            Err(e) => assert_eq!(e, Throttled::Logins),
        }
    }
    // The burst, then one per 2 s.
    assert!((30..=30 + 5 + 1).contains(&allowed), "{allowed}");
    // Other users are not affected, and the bucket refills.
    assert!(t.attempt(b"bob", home, t0 + 10 * S).is_ok());
    assert!(t.attempt(b"alice", home, t0 + 200 * S).is_ok());
}
