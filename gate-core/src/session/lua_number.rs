//! `serde` for [`LuaNumber`] (the codec crate has no serde): an integer
//! index stays an integer, a float index a float, so `3` and `3.0` never
//! swap on the way through a written-out state.

use codec::message::LuaNumber;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
enum Number {
    Int(i64),
    Float(f64),
}

pub(super) fn serialize<S: Serializer>(n: &LuaNumber, s: S) -> Result<S::Ok, S::Error> {
    match *n {
        LuaNumber::Int(i) => Number::Int(i),
        LuaNumber::Float(f) => Number::Float(f),
    }
    .serialize(s)
}

pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LuaNumber, D::Error> {
    Ok(match Number::deserialize(d)? {
        Number::Int(i) => LuaNumber::Int(i),
        Number::Float(f) => LuaNumber::Float(f),
    })
}
