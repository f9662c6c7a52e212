//! The gate's own WebSocket frame reader (`gate_core::websocket`), fed a
//! hostile client's bytes cut at arbitrary points, with its state written
//! out and read back between cuts (a live upgrade moving the connection).
//!
//! Checks: no panic; every complete read takes bytes from the front of the
//! input and says so; a message never exceeds the limit; after an error
//! the harness stops, as the transport does; the same bytes fed whole and
//! fed in pieces give the same frames; and packages written as frames read
//! back as the same binary messages.

#![no_main]

use bytes::{BufMut, BytesMut};
use gate_core::websocket::{Frame, FrameReader, packages_to_frames};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fn read_all(input: &[u8], cuts: &[u8], moved: bool) -> (Vec<Frame>, bool) {
    let mut reader = FrameReader::new(LIMIT);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    let mut cut = cuts.iter().cycle();
    while at < input.len() {
        let step = usize::from(*cut.next().unwrap_or(&255)).max(1);
        let end = (at + step).min(input.len());
        buf.extend_from_slice(&input[at..end]);
        at = end;
        loop {
            let before = buf.len();
            match reader.read(&mut buf) {
                Ok(Some((frame, taken))) => {
                    assert_eq!(before - buf.len(), taken, "a read says what it took");
                    if let Frame::Binary(payload) = &frame {
                        assert!(payload.len() <= LIMIT);
                    }
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "nothing taken without a frame");
                    break;
                }
                Err(_) => return (frames, true),
            }
        }
        if moved {
            let json = serde_json::to_string(&reader).expect("serializes");
            reader = serde_json::from_str(&json).expect("reads back");
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let (cuts, input) = data.split_at(data.len().min(8));
    let whole = read_all(input, &[255], false);
    let pieces = read_all(input, cuts, true);
    assert_eq!(whole, pieces, "cut points and moves change nothing");

    // Packages out, frames back in (masked as a client would send them).
    let mut packages = BytesMut::new();
    for chunk in input.chunks(usize::from(cuts.first().copied().unwrap_or(7)).max(1)) {
        packages.put_u16(chunk.len() as u16);
        packages.put_slice(chunk);
    }
    let mut frames = BytesMut::new();
    packages_to_frames(&mut packages, &mut frames, 0);
    assert!(packages.is_empty());
    let mut masked = BytesMut::new();
    let mut rest = &frames[..];
    while let [b0, b1, tail @ ..] = rest {
        let (len, skip) = match b1 & 0x7f {
            126 => (usize::from(u16::from_be_bytes([tail[0], tail[1]])), 2),
            n => (usize::from(n), 0),
        };
        masked.put_slice(&[*b0, 0x80 | b1]);
        masked.put_slice(&tail[..skip]);
        masked.put_slice(&[0, 0, 0, 0]);
        masked.put_slice(&tail[skip..skip + len]);
        rest = &tail[skip + len..];
    }
    let (back, failed) = read_all(&masked, &[255], false);
    assert!(!failed);
    let payloads: Vec<_> = input
        .chunks(usize::from(cuts.first().copied().unwrap_or(7)).max(1))
        .map(|c| Frame::Binary(bytes::Bytes::copy_from_slice(c)))
        .collect();
    assert_eq!(back, payloads);
});
