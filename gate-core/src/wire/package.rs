//! [`Package`]: a response package as a session keeps it, small ones in
//! place.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use codec::message::ResponseFlag;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest package (header included) a [`Package`] holds in place: 31
/// content bytes of skynet's response layout.
pub const INLINE: usize = 38;

/// A complete response package (header included), as a user's response
/// cache and its connection's outbox keep it.
///
/// Most answers of a game are small, and a cache keeps up to 256 of them
/// per user: one of up to [`INLINE`] bytes lives inside the value (40
/// bytes in all, as much as a [`Bytes`] handle and its tag), so making,
/// cloning and dropping it touches no other memory and no reference count.
/// A longer one is a shared [`Bytes`]. Either way it reads as the bytes of
/// the package ([`Deref`]), compares by them and is written out as them.
#[derive(Clone)]
pub struct Package(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Bytes),
}

impl Package {
    /// The package `content ‖ flag ‖ BE32(number)` in place, if it is at
    /// most [`INLINE`] bytes long.
    pub fn inline(content: &[u8], flag: ResponseFlag, number: u32) -> Option<Package> {
        let len = super::flagged_len(content.len());
        if len > INLINE {
            return None;
        }
        // `BE16(len - 2) ‖ content ‖ flag ‖ BE32(number)` written in
        // place, piece by piece: the same bytes as
        // `codec::message::Response::put`, without its generic buffer
        // (a tenth of the session path's time went there).
        let mut bytes = [0; INLINE];
        let (header, rest) = bytes.split_at_mut(2);
        header.copy_from_slice(&u16::try_from(len - 2).ok()?.to_be_bytes());
        let (body, rest) = rest.split_at_mut(content.len());
        body.copy_from_slice(content);
        let (flag_byte, rest) = rest.split_first_mut()?;
        *flag_byte = flag.0;
        rest.get_mut(..4)?.copy_from_slice(&number.to_be_bytes());
        Some(Package(Repr::Inline {
            len: u8::try_from(len).ok()?,
            bytes,
        }))
    }

    /// The package in `bytes`, copied in place when it is short enough.
    pub fn copy_from_slice(bytes: &[u8]) -> Package {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE => {
                let mut inline = [0; INLINE];
                inline[..bytes.len()].copy_from_slice(bytes);
                Package(Repr::Inline { len, bytes: inline })
            }
            _ => Package(Repr::Shared(Bytes::copy_from_slice(bytes))),
        }
    }

    /// Whether the package lives in place (no allocation of its own).
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }
}

impl From<Bytes> for Package {
    /// A package short enough to live in place is copied there; a longer
    /// one keeps sharing `bytes`.
    fn from(bytes: Bytes) -> Package {
        if bytes.len() <= INLINE {
            Package::copy_from_slice(&bytes)
        } else {
            Package(Repr::Shared(bytes))
        }
    }
}

impl Deref for Package {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(bytes) => bytes,
        }
    }
}

impl AsRef<[u8]> for Package {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Package {
    fn eq(&self, other: &Package) -> bool {
        **self == **other
    }
}

impl Eq for Package {}

impl fmt::Debug for Package {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.escape_ascii())
    }
}

impl Serialize for Package {
    /// As the bytes of the package, the way a [`Bytes`] is written.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self)
    }
}

impl<'de> Deserialize<'de> for Package {
    /// What [`Bytes`] reads (a package written as one reads back the same).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Package, D::Error> {
        Bytes::deserialize(deserializer).map(Package::from)
    }
}
