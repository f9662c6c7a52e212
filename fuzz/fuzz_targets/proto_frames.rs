//! The gate ↔ service framing (`proto::framing`) on arbitrary bytes in
//! arbitrary reads, through both directions' decoders at once (the
//! service's, decoding `GateFrame`s, and the gate's, decoding
//! `ServiceFrame`s), with a frame limit taken from the input. Decoding
//! never panics and follows the length header exactly: a frame consumes
//! `4 + len` bytes, a partial one nothing, a header over the limit is
//! `TooLarge` with that length; a malformed body is a `Decode` error, after
//! which that direction stops (a real link closes). Every decoded frame
//! re-encodes (with the other side's codec) and decodes to the same
//! message, and so does a request payload that parses as a route envelope.
//! At the end of the stream, `decode_eof` fails exactly when a partial
//! frame is left.
#![no_main]

use fuzz::frames::{Side, round_trip};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::backend::gate_frame;
use proto::framing::{DEFAULT_MAX_FRAME_LEN, GateCodec, ServiceCodec};
use proto::route::RouteEnvelope;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    // Small limits make `TooLarge` reachable; 0 is the default (1 MiB).
    let max = match limit {
        0 => DEFAULT_MAX_FRAME_LEN,
        n => usize::from(n) * 4,
    };
    let mut service = Side::new(ServiceCodec::with_max_frame_len(max));
    let mut gate = Side::new(GateCodec::with_max_frame_len(max));
    for read in fuzz::reads(rest) {
        for frame in service.feed(read) {
            round_trip(
                &frame,
                &mut GateCodec::with_max_frame_len(usize::MAX),
                &mut ServiceCodec::with_max_frame_len(usize::MAX),
            );
            if let Some(gate_frame::Kind::Request(req)) = &frame.kind
                && let Ok(env) = RouteEnvelope::decode(req.payload.clone())
            {
                let again = RouteEnvelope::decode(env.encode_to_vec().as_slice())
                    .expect("a re-encoded envelope decodes");
                assert_eq!(again, env);
            }
        }
        for frame in gate.feed(read) {
            round_trip(
                &frame,
                &mut ServiceCodec::with_max_frame_len(usize::MAX),
                &mut GateCodec::with_max_frame_len(usize::MAX),
            );
        }
    }
    service.finish();
    gate.finish();
});
