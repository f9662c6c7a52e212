//! The login node ↔ gate node control link (`proto/control.proto`) on
//! arbitrary bytes in arbitrary reads, through both directions' decoders
//! at once (the gate's, decoding `LoginFrame`s, and the login node's,
//! decoding `ControlFrame`s), with the same checks as `proto_frames`:
//! decoding never panics, follows the length header exactly, stops after a
//! malformed body, and every decoded frame round-trips through the other
//! side's codec. The same bytes are also read as a session directory
//! record (`gate::cluster::record::Record`, what a gate reads back from
//! Redis): a record that parses re-encodes to a record equal to it.
#![no_main]

use fuzz::frames::{Side, round_trip};
use gate::cluster::record::Record;
use libfuzzer_sys::fuzz_target;
use proto::framing::{ControlCodec, DEFAULT_MAX_FRAME_LEN, LoginCodec};

fuzz_target!(|data: &[u8]| {
    if let Some(record) = Record::decode(data) {
        assert_eq!(Record::decode(&record.encode()), Some(record));
    }
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let max = match limit {
        0 => DEFAULT_MAX_FRAME_LEN,
        n => usize::from(n) * 4,
    };
    let mut gate = Side::new(ControlCodec::with_max_frame_len(max));
    let mut login = Side::new(LoginCodec::with_max_frame_len(max));
    for read in fuzz::reads(rest) {
        for frame in gate.feed(read) {
            round_trip(
                &frame,
                &mut LoginCodec::with_max_frame_len(usize::MAX),
                &mut ControlCodec::with_max_frame_len(usize::MAX),
            );
        }
        for frame in login.feed(read) {
            round_trip(
                &frame,
                &mut ControlCodec::with_max_frame_len(usize::MAX),
                &mut LoginCodec::with_max_frame_len(usize::MAX),
            );
        }
    }
    gate.finish();
    login.finish();
});
