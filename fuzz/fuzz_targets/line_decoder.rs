//! Login line framing (`LineCodec`) on arbitrary bytes in arbitrary reads,
//! with a limit taken from the input: decoding never panics, lines never
//! hold an LF nor reach the limit, re-encoding gives back the consumed
//! bytes, and `TooLong` comes exactly when more than the limit is buffered.
#![no_main]

use bytes::BytesMut;
use codec::{LineCodec, LineError};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let Some((limit_bytes, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    // Small limits hit the limit often; 8192 is skynet's.
    let limit = match u16::from_le_bytes(*limit_bytes) % 1024 {
        0 => LineCodec::DEFAULT_MAX_BUFFERED,
        n => usize::from(n),
    };
    let mut codec = LineCodec::with_limit(limit);
    let mut buf = BytesMut::new();
    let mut fed = Vec::new();
    let mut again = BytesMut::new();
    for read in fuzz::reads(rest) {
        fed.extend_from_slice(read);
        buf.extend_from_slice(read);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(line)) => {
                    assert!(!line.contains(&b'\n'));
                    assert!(line.len() < limit);
                    codec
                        .encode(&line[..], &mut again)
                        .expect("no LF in a decoded line");
                }
                Ok(None) => {
                    assert!(buf.len() <= limit);
                    break;
                }
                Err(LineError::TooLong) => {
                    assert!(buf.len() > limit);
                    assert_eq!(&again[..], &fed[..fed.len() - buf.len()]);
                    return;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(&again[..], &fed[..fed.len() - buf.len()]);
    }
    // End of stream: any partial line is discarded.
    while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
    assert!(buf.is_empty());
});
