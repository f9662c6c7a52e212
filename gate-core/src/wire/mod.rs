//! The packages the gate sends, built from `codec`'s types: responses,
//! the extension packages (welcome, push, push gap, kick) and status
//! packages. Pure functions; `docs/PROTOCOL.md` is the description a client
//! author reads.

use bytes::{Bytes, BytesMut};
use codec::message::{MAX_RESPONSE_CONTENT, Response, ResponseFlag};
use codec::package::{HEADER_LEN, encode_package};
use codec::status::GateStatus;

mod package;

pub use self::package::{INLINE, Package};

/// Wire size of a package of skynet's response layout with `len` content
/// bytes: header, content, flag byte, BE32 request number.
pub fn flagged_len(len: usize) -> usize {
    HEADER_LEN + len + 5
}

/// Appends `content ‖ flag ‖ BE32(number)` as one package. Content that
/// does not fit in a package is left out rather than framed wrongly; every
/// caller checks or cuts it first (a debug build asserts so).
pub fn write_flagged(out: &mut BytesMut, content: &[u8], flag: ResponseFlag, number: u32) {
    let encoded = Response::encode(content, flag, number, out);
    debug_assert!(encoded.is_ok(), "a package of {} bytes", content.len());
}

/// The error response `00 ‖ BE32(number)` (spec §5.4: a handler that
/// raised).
pub fn error_response(number: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(flagged_len(0));
    write_flagged(&mut out, &[], ResponseFlag::ERROR, number);
    out.freeze()
}

/// The response package of a handler's answer: `content ‖ 01 ‖ number`,
/// or the error response when there is no content or it is larger than
/// one package may carry (65530 bytes).
pub fn response(number: u32, content: Option<&[u8]>) -> Bytes {
    match content {
        Some(content) if content.len() <= MAX_RESPONSE_CONTENT => {
            let mut out = BytesMut::with_capacity(flagged_len(content.len()));
            write_flagged(&mut out, content, ResponseFlag::OK, number);
            out.freeze()
        }
        _ => error_response(number),
    }
}

/// What a session's answer slab ([`response_in`]) holds: answers of up to
/// a quarter of it are cut from it, so several medium answers share one
/// allocation.
pub const SLAB: usize = 512;

/// [`response`] as a [`Package`] for a session to keep: in place when it
/// is at most [`INLINE`] bytes long, else cut from `slab` when it is
/// small: the medium answers a session keeps in its cache share one
/// allocation of [`SLAB`] bytes instead of one each, which is freed when
/// the last of them goes.
/// A slab that has no room left is replaced; larger answers get their own
/// allocation.
///
/// One slab per session: its answers retire together, so a slab lives
/// about as long as the answers in it, and one session's cached answers
/// never keep another's memory.
pub fn response_in(slab: &mut BytesMut, number: u32, content: Option<&[u8]>) -> Package {
    let (content, flag) = match content {
        Some(content) if content.len() <= MAX_RESPONSE_CONTENT => (content, ResponseFlag::OK),
        _ => (&[][..], ResponseFlag::ERROR),
    };
    if let Some(package) = Package::inline(content, flag, number) {
        return package;
    }
    let len = flagged_len(content.len());
    if len > SLAB / 4 {
        let mut out = BytesMut::with_capacity(len);
        write_flagged(&mut out, content, flag, number);
        return out.freeze().into();
    }
    if slab.capacity() - slab.len() < len {
        *slab = BytesMut::with_capacity(SLAB);
    }
    write_flagged(slab, content, flag, number);
    slab.split().freeze().into()
}

/// Appends the empty package: the answer to an opted-in client's
/// heartbeat.
pub fn write_heartbeat(out: &mut BytesMut) {
    out.extend_from_slice(&[0, 0]);
}

/// The length of the first whole package in `buf` (header included), or
/// all of `buf` if it holds less.
pub fn first_package_len(buf: &[u8]) -> usize {
    match buf {
        [hi, lo, rest @ ..] => {
            (2 + usize::from(u16::from_be_bytes([*hi, *lo]))).min(2 + rest.len())
        }
        _ => buf.len(),
    }
}

/// Appends a status package (`200 OK`, `404 User Not Found`, ...).
pub fn write_status(out: &mut BytesMut, status: GateStatus) {
    // A status text always fits in a package.
    let _ = encode_package(status.text().as_bytes(), out);
}

/// Appends the kick package `reason ‖ 03 ‖ BE32(0)`, the reason cut to
/// what fits in a package (at a character boundary).
pub fn write_kick(out: &mut BytesMut, reason: &str) {
    let mut end = reason.len().min(MAX_RESPONSE_CONTENT);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    write_flagged(out, &reason.as_bytes()[..end], ResponseFlag::KICK, 0);
}

#[cfg(test)]
mod tests {
    use codec::package::decode_package;

    use super::*;

    #[test]
    fn responses_and_errors() {
        assert_eq!(&error_response(7)[..], b"\x00\x05\x00\x00\x00\x00\x07");
        assert_eq!(
            &response(7, Some(b"ok"))[..],
            b"\x00\x07ok\x01\x00\x00\x00\x07"
        );
        assert_eq!(response(7, None), error_response(7));
        let big = vec![0u8; MAX_RESPONSE_CONTENT + 1];
        assert_eq!(response(7, Some(&big)), error_response(7));
        assert_eq!(flagged_len(2), 9);
    }

    #[test]
    fn answers_in_place_or_cut_from_a_slab_are_the_same_bytes() {
        let mut slab = BytesMut::new();
        // Up to 31 content bytes: in place, the slab untouched; the same
        // bytes as the codec writes, for every length and any number.
        for len in 0..=31u8 {
            let content: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37) ^ len).collect();
            for number in [0, 9, 0x0102_0304, u32::MAX] {
                let package = response_in(&mut slab, number, Some(&content));
                assert!(package.is_inline(), "{len}");
                assert_eq!(&package[..], &response(number, Some(&content))[..]);
                let mut flagged = BytesMut::new();
                write_flagged(&mut flagged, &content, ResponseFlag::PUSH, number);
                let inline = Package::inline(&content, ResponseFlag::PUSH, number);
                assert_eq!(inline.as_deref(), Some(&flagged[..]), "{len} {number}");
            }
        }
        assert_eq!(slab.capacity(), 0);
        assert!(Package::inline(&[0; 32], ResponseFlag::OK, 1).is_none());
        let medium = [b'm'; 40];
        let cut: Vec<Package> = (0..100u32)
            .map(|n| response_in(&mut slab, n, Some(&medium)))
            .collect();
        for (n, package) in (0..100u32).zip(&cut) {
            assert!(!package.is_inline());
            assert_eq!(&package[..], &response(n, Some(&medium))[..]);
        }
        // Medium answers share allocations: consecutive ones are adjacent.
        let adjacent = cut
            .windows(2)
            .filter(|w| w[0].as_ptr() as usize + w[0].len() == w[1].as_ptr() as usize)
            .count();
        assert!(adjacent >= 80, "{adjacent} of 99 adjacent");
        // Errors and large answers.
        assert_eq!(&response_in(&mut slab, 7, None)[..], &error_response(7)[..]);
        let big = vec![1u8; SLAB];
        assert_eq!(
            &response_in(&mut slab, 8, Some(&big))[..],
            &response(8, Some(&big))[..]
        );
        let too_big = vec![1u8; MAX_RESPONSE_CONTENT + 1];
        assert_eq!(
            &response_in(&mut slab, 9, Some(&too_big))[..],
            &error_response(9)[..]
        );
        // The slab's memory outlives the slab while an answer holds it.
        let kept = cut[3].clone();
        drop((cut, slab));
        assert_eq!(&kept[..], &response(3, Some(&medium))[..]);
    }

    #[test]
    fn a_package_is_written_out_and_read_back_as_bytes() {
        for len in [0, 31, 32, 200] {
            let bytes = response(5, Some(&vec![b'p'; len]));
            let package = Package::from(bytes.clone());
            assert_eq!(package.is_inline(), bytes.len() <= INLINE);
            let text = serde_json::to_string(&package).unwrap();
            assert_eq!(text, serde_json::to_string(&bytes).unwrap());
            let back: Package = serde_json::from_str(&text).unwrap();
            assert_eq!(back, package);
            assert_eq!(
                format!("{package:?}"),
                format!("b\"{}\"", bytes.escape_ascii())
            );
        }
        assert!(std::mem::size_of::<Option<Package>>() <= 40);
    }

    #[test]
    fn kick_package_layout_and_long_reasons() {
        let mut out = BytesMut::new();
        write_kick(&mut out, "bye");
        assert_eq!(&out[..], b"\x00\x08bye\x03\x00\x00\x00\x00");
        // A reason too long for one package is cut at a character boundary.
        let reason = "é".repeat(40_000);
        let mut out = BytesMut::new();
        write_kick(&mut out, &reason);
        let payload = decode_package(&mut out).unwrap();
        let kick = Response::parse(payload).unwrap();
        assert_eq!((kick.flag, kick.number), (ResponseFlag::KICK, 0));
        assert_eq!(kick.content.len(), MAX_RESPONSE_CONTENT);
        assert!(std::str::from_utf8(&kick.content).is_ok());
    }
}
