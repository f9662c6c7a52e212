//! `LuaNumber::parse` against Lua's own `tonumber` (the reference oracle).
//!
//! `data/lua_tonumber.txt` was produced by running `data/gen_lua_tonumber.lua`
//! in a stock Lua 5.4 interpreter (same `l_str2int`/`l_str2d`/`strtod` path as
//! the Lua 5.5 bundled with skynet) over ~3800 hand-picked and random inputs:
//! integers, overflow, wrapping hex, decimal and hex floats near rounding
//! ties, subnormals and overflow, whitespace, signs and near-miss garbage.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use codec::LuaNumber;

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn parse_matches_lua_tonumber() {
    let data = include_str!("data/lua_tonumber.txt");
    let mut checked = 0;
    let mut failures = Vec::new();
    for line in data.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split(' ').collect();
        let input = unhex(fields[0]);
        let got = LuaNumber::parse(&input);
        let ok = match (fields[1], got) {
            ("none", None) => true,
            ("int", Some(LuaNumber::Int(i))) => fields[2].parse::<i64>().unwrap() == i,
            ("float", Some(LuaNumber::Float(f))) => {
                u64::from_str_radix(fields[2], 16).unwrap() == f.to_bits()
            }
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{:?}: lua {} / ours {got:?}",
                String::from_utf8_lossy(&input),
                fields[1..].join(" ")
            ));
        }
        checked += 1;
    }
    assert!(checked > 3000, "only {checked} cases read");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
