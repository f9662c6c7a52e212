//! The window and its map against a plain ordered map, on runs of
//! numbers as clients make them and on numbers anywhere.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// A small window, so that runs outgrow it.
const W: usize = 16;
/// How far past it a number still joins it.
const G: usize = 4;

type Small = Entries<u64, W, G>;

/// What happens to the entries; numbers are picked from a list as the
/// ops run: the next one on it, or one already picked.
#[derive(Debug, Clone)]
enum Op {
    /// Files the next number of the list (if it has no entry).
    Next(u64),
    /// Files (or changes) an already picked number.
    Again(usize, u64),
    /// Takes an already picked number's entry out.
    Remove(usize),
    /// Adds one to every entry, dropping those whose value is then a
    /// multiple of this.
    Retain(u64),
}

/// Numbers as the cache sees them: mostly a run upwards from somewhere
/// (near the end of the u32 range too), sometimes a jump past the
/// window's reach, sometimes any number.
fn numbers() -> impl Strategy<Value = Vec<u32>> {
    (
        prop_oneof![Just(0u32), Just(u32::MAX - 40), any::<u32>()],
        proptest::collection::vec(
            prop_oneof![
                8 => 1u32..3,
                1 => 3u32..(G as u32 + 3),
                1 => 12u32..40,
                1 => any::<u32>(),
            ],
            1..200,
        ),
    )
        .prop_map(|(start, steps)| {
            let mut at = start;
            steps
                .into_iter()
                .map(|step| {
                    at = at.wrapping_add(step);
                    at
                })
                .collect()
        })
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            6 => any::<u64>().prop_map(Op::Next),
            2 => (any::<usize>(), any::<u64>()).prop_map(|(i, v)| Op::Again(i, v)),
            4 => any::<usize>().prop_map(Op::Remove),
            1 => (2u64..6).prop_map(Op::Retain),
        ],
        1..400,
    )
}

fn check(entries: &Small, model: &BTreeMap<u32, u64>) -> Result<(), TestCaseError> {
    prop_assert_eq!(entries.len(), model.len());
    prop_assert_eq!(entries.is_empty(), model.is_empty());
    let mut listed: Vec<(u32, u64)> = entries.iter().map(|(n, v)| (n, *v)).collect();
    listed.sort_unstable();
    let expected: Vec<(u32, u64)> = model.iter().map(|(&n, &v)| (n, v)).collect();
    prop_assert_eq!(&listed, &expected);
    prop_assert_eq!(entries.values().count(), model.len());
    for (&n, &v) in model {
        prop_assert_eq!(entries.get(n), Some(&v));
    }
    // The window starts and ends with an entry, and is never longer than
    // its bound.
    prop_assert!(entries.window.len() <= W);
    if !entries.window.is_empty() {
        prop_assert!(entries.window.front().is_some_and(Option::is_some));
        prop_assert!(entries.window.back().is_some_and(Option::is_some));
    }
    prop_assert_eq!(
        entries.in_window as usize,
        entries.window.iter().filter(|s| s.is_some()).count()
    );
    // The map is there only while it holds something.
    prop_assert!(entries.spill.as_ref().is_none_or(|spill| !spill.is_empty()));
    Ok(())
}

proptest! {
    #[test]
    fn behaves_as_a_map(numbers in numbers(), ops in ops()) {
        let mut entries = Small::default();
        let mut model = BTreeMap::new();
        let mut picked = 0;
        for op in ops {
            let insert = match op {
                Op::Next(v) if picked < numbers.len() => {
                    picked += 1;
                    Some((numbers[picked - 1], v))
                }
                Op::Again(i, v) if picked > 0 => Some((numbers[i % picked], v)),
                _ => None,
            };
            if let Some((n, v)) = insert {
                prop_assert_eq!(entries.get(n).is_some(), model.contains_key(&n));
                if model.contains_key(&n) {
                    *entries.get_mut(n).unwrap() = v;
                } else {
                    entries.insert(n, v);
                }
                model.insert(n, v);
            }
            match op {
                Op::Remove(i) if picked > 0 => {
                    let n = numbers[i % picked];
                    prop_assert_eq!(entries.remove(n), model.remove(&n));
                    prop_assert_eq!(entries.get_mut(n), None);
                }
                Op::Retain(k) => {
                    let mut seen = 0;
                    entries.retain(|_, v| {
                        seen += 1;
                        *v = v.wrapping_add(1);
                        *v % k != 0
                    });
                    prop_assert_eq!(seen, model.len());
                    model.retain(|_, v| {
                        *v = v.wrapping_add(1);
                        *v % k != 0
                    });
                }
                _ => {}
            }
            check(&entries, &model)?;
        }
        for v in entries.values_mut() {
            *v = 7;
        }
        prop_assert!(entries.values().all(|&v| v == 7));
        // Written out and read back: the same entries.
        let text = serde_json::to_string(&entries).unwrap();
        let back: Small = serde_json::from_str(&text).unwrap();
        let model: BTreeMap<u32, u64> = model.keys().map(|&n| (n, 7)).collect();
        check(&back, &model)?;
    }
}

#[test]
fn a_run_upwards_stays_in_the_window() {
    let mut entries: Entries<u64> = Entries::default();
    for n in 1000..1300u32 {
        entries.insert(n, u64::from(n));
        if n >= 1256 {
            entries.remove(n - 256);
        }
    }
    assert!(entries.spill.is_none());
    assert_eq!(entries.len(), 256);
    assert_eq!(entries.window.len(), 256);
    assert_eq!(entries.get(1299), Some(&1299));
    assert_eq!(entries.get(1043), None);
}

#[test]
fn an_entry_kept_while_the_numbers_move_far_on_goes_to_the_map() {
    let mut entries: Entries<u64> = Entries::default();
    entries.insert(5, 5);
    for n in 6..(6 + 2 * WINDOW as u32) {
        entries.insert(n, u64::from(n));
        entries.remove(n.wrapping_sub(10).max(6));
    }
    assert!(entries.window.len() <= WINDOW);
    assert_eq!(entries.get(5), Some(&5), "in the map");
    assert!(entries.spill.as_ref().unwrap().contains_key(&5));
    // A number far off goes to the map at once.
    entries.insert(1_000_000, 1);
    assert!(entries.spill.as_ref().unwrap().contains_key(&1_000_000));
    assert_eq!(entries.remove(5), Some(5));
}

#[test]
fn every_session_pays_little_for_it() {
    // A cache per session, most of them never used: no allocation, and
    // 16 bytes more than the hash map it replaces.
    assert!(std::mem::size_of::<Entries<super::super::Entry>>() <= 48);
}

#[test]
fn the_window_follows_a_run_that_moved_away() {
    let mut entries: Entries<u64> = Entries::default();
    // An answer that waits, at the window's start; then the client
    // numbers from 1 again.
    entries.insert(1000, 0);
    for n in 1..=100u32 {
        entries.insert(n, u64::from(n));
    }
    assert_eq!(entries.len(), 101);
    // At the 16th number of the new run in the map, the window moved
    // there; the rest of the run joined it.
    assert_eq!(entries.base, REBASE_AT as u32);
    assert_eq!(entries.in_window as usize, 100 - REBASE_AT + 1);
    assert_eq!(entries.spill.as_ref().unwrap().len(), REBASE_AT);
    assert_eq!(entries.get(1000), Some(&0));
    assert!(entries.spill.as_ref().unwrap().contains_key(&1000));
}

#[test]
fn scattered_numbers_cost_no_window_memory() {
    let mut entries: Entries<u64> = Entries::default();
    for i in 0..2000u32 {
        entries.insert(i.wrapping_mul(63), u64::from(i));
    }
    assert_eq!(entries.len(), 2000);
    assert!(
        entries.window.capacity() <= 8,
        "{}",
        entries.window.capacity()
    );
    assert_eq!(entries.in_window, 1);
    // Whatever the numbers, the window stays within its slots.
    let mut entries: Entries<u64> = Entries::default();
    for i in 0..5000u32 {
        entries.insert(i * 2, 0);
    }
    assert!(entries.window.len() <= WINDOW);
    assert!(
        entries.window.capacity() <= WINDOW,
        "{}",
        entries.window.capacity()
    );
}

#[test]
fn written_out_as_a_map_of_numbers() {
    let mut entries: Entries<u64> = Entries::default();
    entries.insert(7, 70u64);
    entries.insert(9, 90);
    entries.insert(4_000_000_000, 1);
    let text = serde_json::to_value(&entries).unwrap();
    assert_eq!(text, serde_json::json!({"7": 70, "9": 90, "4000000000": 1}));
}
