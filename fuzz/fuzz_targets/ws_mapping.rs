//! The WebSocket mapping (`codec::websocket`, `docs/PROTOCOL.md` §9) on
//! what a client can send: frames built from the input (any opcode, flags
//! and length, masked or not, fragmented or not, followed by raw bytes) go
//! into a server-side `MessageStream` with the gate's or the login's
//! limits. Reading never panics or hangs; what it yields is a well-formed
//! stream of packages or lines, exactly the messages' contents (mapping it
//! back to messages and again to bytes gives the same bytes); writing it
//! back out through the stream never panics.
#![no_main]

use bytes::BytesMut;
use codec::websocket::{Mapping, MessageStream};
use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Client frames from the input: each chunk is `flags ‖ len ‖ payload`;
/// `flags` gives FIN/RSV bits and the opcode, whether to mask, and the
/// length encoding. What is left after the last whole chunk is appended
/// raw.
fn frames(mut data: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    while data.len() >= 3 {
        let (flags, len) = (data[0], usize::from(u16::from_be_bytes([data[1], data[2]])));
        data = &data[3..];
        let len = len.min(data.len());
        let (payload, rest) = data.split_at(len);
        data = rest;
        // Mostly valid frames: FIN and a known opcode unless bits ask otherwise.
        let first = if flags & 0x80 == 0 {
            0x80 | [0x0, 0x1, 0x2, 0x8, 0x9, 0xA][usize::from(flags & 0x7) % 6]
        } else {
            flags ^ 0x80
        };
        wire.push(first);
        let masked = flags & 0x40 == 0;
        let mask_bit = if masked { 0x80 } else { 0 };
        if len < 126 && flags & 0x20 == 0 {
            wire.push(mask_bit | len as u8);
        } else if len <= 0xffff && flags & 0x10 == 0 {
            wire.push(mask_bit | 126);
            wire.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            wire.push(mask_bit | 127);
            wire.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            let mask = [0x37, 0xfa, 0x21, 0x3d];
            wire.extend_from_slice(&mask);
            wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            wire.extend_from_slice(payload);
        }
    }
    wire.extend_from_slice(data);
    wire
}

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    let mapping = if select & 1 == 0 {
        Mapping::Packages
    } else {
        Mapping::Lines
    };
    let max = mapping.max_message(512);
    let wire = frames(rest);
    let io = tokio::io::join(&wire[..], tokio::io::sink());
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    block_on(async {
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        let mut stream = MessageStream::new(ws, mapping);
        let mut read = Vec::new();
        let _ = stream.read_to_end(&mut read).await;

        // Well formed, and the same bytes again through the mapping.
        let mut buf = BytesMut::from(&read[..]);
        let mut again = BytesMut::new();
        loop {
            match mapping.outgoing(&mut buf) {
                Ok(Some(message)) => {
                    mapping
                        .incoming(&message, &mut again)
                        .expect("what was read maps back");
                }
                Ok(None) => break,
                Err(_) => panic!("a line read is not UTF-8"),
            }
        }
        assert!(buf.is_empty(), "read ends inside a unit: {:?}", &buf[..]);
        assert_eq!(&again[..], &read[..]);

        // Written back: cut into messages without a panic.
        let _ = stream.write_all(&read).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    });
});
