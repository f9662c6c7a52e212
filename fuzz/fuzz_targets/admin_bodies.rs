//! The admin API's JSON bodies (`gate::ops::parse_body`) on arbitrary
//! bytes, as each route reads them: parsing never panics, and a body that
//! parses re-serializes to one that parses to the same value (so what an
//! operator sent is exactly what the gate acts on).
#![no_main]

use gate::ops::{DrainBody, KickBody, PushBody, parse_body};
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    if let Ok(body) = parse_body::<T>(data) {
        let again = serde_json::to_vec(&body).expect("a parsed body serializes");
        assert_eq!(parse_body::<T>(&again).expect("and parses again"), body);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<KickBody>(data);
    round_trip::<PushBody>(data);
    round_trip::<DrainBody>(data);
});
