//! The connection machine on a simulated clock. Every rule runs as one
//! table over both mappings: what a TCP client sends as BE16 packages a
//! WebSocket client sends as binary messages, and the machine must answer
//! the same.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::message::{Response, ResponseFlag};
use codec::package::{decode_package, encode_package};
use codec::status::GateStatus;

use super::*;

const MAPPINGS: [Mapping; 2] = [Mapping::Stream, Mapping::Messages];

fn limits() -> Arc<ConnLimits> {
    Arc::new(ConnLimits {
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        plain_idle_timeout: Duration::ZERO,
        send_queue_bytes: 1000,
        half_close_grace: Duration::from_secs(5),
    })
}

fn at(secs: u64) -> Time {
    Time::from_epoch(Duration::from_secs(secs))
}

/// One connection and what it wrote, fed the way its mapping carries
/// packages.
struct Client {
    conn: Connection,
    out: BytesMut,
}

impl Client {
    fn new(mapping: Mapping) -> Client {
        Client {
            conn: Connection::new(at(0), mapping, limits()),
            out: BytesMut::new(),
        }
    }

    /// An open connection (opted in or not), accepted at 0 s.
    fn open(mapping: Mapping, opted_in: bool) -> Client {
        let mut c = Client::new(mapping);
        assert!(matches!(
            c.send(b"user:1:mac"),
            Ok(Some(Input::Handshake(_)))
        ));
        c.conn.accepted(at(0), opted_in, None);
        c
    }

    /// Sends one package's payload; what the machine made of it.
    fn send(&mut self, payload: &[u8]) -> Result<Option<Input>, End> {
        match self.conn.mapping() {
            Mapping::Stream => {
                let mut received = BytesMut::new();
                encode_package(payload, &mut received).unwrap();
                let input = self.conn.next_input(&mut received, &mut self.out);
                if input.is_ok() {
                    assert!(received.is_empty());
                }
                input
            }
            Mapping::Messages => self.conn.message(
                Message::Binary(Bytes::copy_from_slice(payload)),
                &mut self.out,
            ),
        }
    }

    /// The payloads written so far, taken.
    fn written(&mut self) -> Vec<Bytes> {
        let mut payloads = Vec::new();
        while let Some(p) = decode_package(&mut self.out) {
            payloads.push(p);
        }
        assert!(self.out.is_empty());
        payloads
    }
}

fn request(payload: &[u8], number: u32) -> Vec<u8> {
    let mut p = payload.to_vec();
    p.extend_from_slice(&number.to_be_bytes());
    p
}

#[test]
fn handshake_deadline() {
    for mapping in MAPPINGS {
        let mut c = Client::new(mapping);
        assert_eq!(c.conn.poll_timeout(), Some(at(10)));
        assert_eq!(c.conn.handle_timeout(at(9)), None);
        assert_eq!(c.conn.handle_timeout(at(10)), Some(End::HandshakeTimeout));
        // Once accepted, the deadline no longer applies.
        let mut c = Client::open(mapping, false);
        assert_eq!(c.conn.poll_timeout(), None);
        assert_eq!(c.conn.handle_timeout(at(11)), None);
    }
}

#[test]
fn the_first_package_is_the_handshake_then_requests() {
    for mapping in MAPPINGS {
        let mut c = Client::new(mapping);
        let hs = b"dXNlcg==@c2FtcGxl#MQ==:1:bWFj";
        assert_eq!(
            c.send(hs),
            Ok(Some(Input::Handshake(Bytes::from_static(hs))))
        );
        c.conn.accepted(at(1), false, None);
        let Ok(Some(Input::Request(r))) = c.send(&request(b"hi", 7)) else {
            panic!("not a request");
        };
        assert_eq!((&r.content[..], r.number), (&b"hi"[..], 7));
    }
}

#[test]
fn several_packages_in_one_read_come_out_one_by_one() {
    let mut c = Client::open(Mapping::Stream, true);
    let mut received = BytesMut::new();
    encode_package(&request(b"a", 1), &mut received).unwrap();
    encode_package(b"", &mut received).unwrap();
    encode_package(&request(b"b", 2), &mut received).unwrap();
    received.extend_from_slice(&[0, 9, b'x']);
    let mut numbers = Vec::new();
    while let Some(Input::Request(r)) = c.conn.next_input(&mut received, &mut c.out).unwrap() {
        numbers.push(r.number);
    }
    assert_eq!(numbers, [1, 2]);
    // The heartbeat between them was answered; the partial package stays.
    assert_eq!(c.written(), vec![Bytes::new()]);
    assert_eq!(&received[..], &[0, 9, b'x']);
}

#[test]
fn heartbeats_are_answered_for_opted_in_clients_only() {
    for mapping in MAPPINGS {
        let mut c = Client::open(mapping, true);
        assert_eq!(c.send(b""), Ok(None));
        assert_eq!(c.written(), vec![Bytes::new()]);
        // A plain skynet client's empty package is an invalid request.
        let mut c = Client::open(mapping, false);
        let end = c.send(b"").unwrap_err();
        assert_eq!(end, End::Protocol(ProtocolError::InvalidPackage));
        assert_eq!(end.close_code(), 1008);
    }
}

#[test]
fn idle_timeout_for_opted_in_clients() {
    for mapping in MAPPINGS {
        let mut c = Client::open(mapping, true);
        assert!(c.conn.tracks_input());
        assert_eq!(c.conn.poll_timeout(), Some(at(60)));
        c.conn.input_at(at(50));
        // The deadline moved with the input: an early wake-up finds none.
        assert_eq!(c.conn.handle_timeout(at(60)), None);
        assert_eq!(c.conn.poll_timeout(), Some(at(110)));
        assert_eq!(c.conn.handle_timeout(at(110)), Some(End::IdleTimeout));
        // Plain clients have no idle timeout by default.
        let c = Client::open(mapping, false);
        assert!(!c.conn.tracks_input());
        assert_eq!(c.conn.poll_timeout(), None);
    }
}

#[test]
fn half_close_answers_then_closes() {
    for mapping in MAPPINGS {
        let mut c = Client::open(mapping, false);
        assert_eq!(c.conn.input_ended(at(3)), None);
        assert!(!c.conn.reading());
        // Answers still to write, or a request still running: not yet.
        assert_eq!(c.conn.check(12, 0), None);
        assert_eq!(c.conn.check(0, 1), None);
        assert_eq!(c.conn.check(0, 0), Some(End::HalfClosed));
        // Or the grace runs out.
        assert_eq!(c.conn.poll_timeout(), Some(at(8)));
        assert_eq!(c.conn.handle_timeout(at(8)), Some(End::HalfClosed));
        assert!(End::HalfClosed.graceful());
        // Before the handshake, the end of input is the end.
        let mut c = Client::new(mapping);
        assert_eq!(c.conn.input_ended(at(1)), Some(End::PeerClosed));
    }
}

#[test]
fn a_slow_reader_is_cut_by_bytes_without_a_farewell() {
    for mapping in MAPPINGS {
        let c = Client::open(mapping, true);
        assert_eq!(c.conn.check(1000, 0), None);
        let end = c.conn.check(1001, 0).unwrap();
        assert_eq!(end, End::SlowReader);
        assert!(!end.graceful());
        assert_eq!(end.close_code(), 1008);
    }
}

#[test]
fn the_inflight_bound_closes_with_policy_violation() {
    // The bound is the session's (per user); the connection closes for it
    // gracefully (what was answered is written first) with 1008.
    let end = End::TooManyInflight;
    assert!(end.graceful());
    assert_eq!(end.close_code(), 1008);
    assert!(!end.ends_session());
}

#[test]
fn drain_answers_what_was_asked_then_says_shutdown() {
    for mapping in MAPPINGS {
        let mut c = Client::open(mapping, true);
        assert_eq!(c.conn.drain(), None);
        assert!(!c.conn.reading());
        assert_eq!(c.conn.poll_timeout(), None);
        assert_eq!(c.conn.check(0, 2), None);
        let end = c.conn.check(0, 0).unwrap();
        assert_eq!(end, End::Shutdown);
        assert_eq!(end.close_code(), 1001);
        c.conn.farewell(&end, &mut c.out);
        let kick = Response::parse(c.written().remove(0)).unwrap();
        assert_eq!(
            (&kick.content[..], kick.flag),
            (&b"shutdown"[..], ResponseFlag::KICK)
        );
        // A plain client is not told; a connection still in its
        // handshake just ends.
        let mut c = Client::open(mapping, false);
        c.conn.farewell(&End::Shutdown, &mut c.out);
        assert!(c.written().is_empty());
        let mut c = Client::new(mapping);
        assert_eq!(c.conn.drain(), Some(End::Shutdown));
    }
}

#[test]
fn a_kick_closes_gracefully_after_the_sessions_farewell() {
    // The session writes its farewell (queued answers, then the kick); the
    // connection adds nothing of its own and closes normally.
    for mapping in MAPPINGS {
        let mut c = Client::open(mapping, true);
        let end = End::Kicked("maintenance".into());
        c.conn.farewell(&end, &mut c.out);
        assert!(c.written().is_empty());
        assert!(end.graceful());
        assert_eq!(end.close_code(), 1000);
        assert_eq!(end.kick_text(), Some("maintenance"));
    }
}

#[test]
fn protocol_errors_and_their_statuses() {
    for mapping in MAPPINGS {
        // A request shorter than its 4-byte number.
        let mut c = Client::open(mapping, true);
        assert_eq!(
            c.send(b"abc"),
            Err(End::Protocol(ProtocolError::InvalidPackage))
        );
        // A refused handshake writes its status, then ends.
        let mut c = Client::new(mapping);
        let end = c.conn.refuse(Some(GateStatus::UNAUTHORIZED), &mut c.out);
        assert_eq!(end, End::HandshakeRefused(Some(401)));
        assert_eq!(c.written(), vec![Bytes::from_static(b"401 Unauthorized")]);
        assert!(end.graceful());
        let end = c.conn.refuse(None, &mut c.out);
        assert_eq!(end, End::HandshakeRefused(None));
        assert!(c.written().is_empty());
    }
    // WebSocket only: the wrong kind of message, one too large, the close.
    let mut c = Client::open(Mapping::Messages, true);
    let text = c.conn.message(Message::Text, &mut c.out).unwrap_err();
    assert_eq!(text.close_code(), 1003);
    let big = Message::Binary(Bytes::from(vec![0; MAX_PAYLOAD + 1]));
    assert_eq!(
        c.conn.message(big, &mut c.out).unwrap_err().close_code(),
        1009
    );
    assert_eq!(c.conn.message(Message::Control, &mut c.out), Ok(None));
    assert_eq!(
        c.conn.message(Message::Close, &mut c.out),
        Err(End::PeerClosed)
    );
    assert!(!End::PeerClosed.graceful());
}

#[test]
fn websocket_control_frames_have_a_budget_between_data_messages() {
    let mut c = Client::open(Mapping::Messages, true);
    for _ in 0..3 {
        for _ in 0..MAX_CONTROL_RUN {
            assert_eq!(c.conn.message(Message::Control, &mut c.out), Ok(None));
        }
        // A data message renews the budget.
        assert!(c.send(&request(b"x", 1)).unwrap().is_some());
    }
    for _ in 0..MAX_CONTROL_RUN {
        c.conn.message(Message::Control, &mut c.out).unwrap();
    }
    let end = c.conn.message(Message::Control, &mut c.out).unwrap_err();
    assert_eq!(end, End::Protocol(ProtocolError::ControlFlood));
    assert_eq!(end.close_code(), 1008);
    // Bytes that complete no message are bounded too.
    assert!(c.conn.wire_without_data(MAX_WIRE_WITHOUT_DATA).is_ok());
    assert_eq!(
        c.conn.wire_without_data(MAX_WIRE_WITHOUT_DATA + 1),
        Err(End::Protocol(ProtocolError::ControlFlood))
    );
}

#[test]
fn the_state_is_plain_data() {
    let mut c = Client::open(Mapping::Messages, true);
    c.conn.input_at(at(30));
    c.conn.input_ended(at(31));
    let text = serde_json::to_string(&c.conn).unwrap();
    let back: Connection = serde_json::from_str(&text).unwrap();
    let back = back.with_limits(limits());
    assert_eq!(serde_json::to_string(&back).unwrap(), text);
    assert_eq!(back.poll_timeout(), c.conn.poll_timeout());
    assert_eq!(back.check(0, 0), Some(End::HalfClosed));
    assert!(back.opted_in() && !back.reading());
}

/// The sealed channel (`docs/PROTOCOL.md` §3.2), both mappings: what the
/// client seals opens; what the machine writes is sealed; a package that
/// does not open ends the connection; the counters survive a move.
mod sealed {
    use bytes::Buf;
    use loginproto::seal::{self, Channel};

    use super::*;

    /// An open, opted-in, sealed connection and the client's side of its
    /// channel.
    fn open(mapping: Mapping) -> (Client, Channel) {
        let mut c = Client::new(mapping);
        assert!(matches!(
            c.send(b"user:1:mac:v=1,seal=1"),
            Ok(Some(Input::Handshake(_)))
        ));
        c.conn
            .accepted(at(0), true, Some(Channel::gate(&[9; 32], b"1")));
        (c, Channel::client(&[9; 32], b"1"))
    }

    /// The client seals `payload` as its mapping carries it.
    fn send_sealed(
        c: &mut Client,
        client: &mut Channel,
        payload: &[u8],
    ) -> Result<Option<Input>, End> {
        let mut wire = BytesMut::new();
        seal::put_sealed(&mut client.send, payload, &mut wire).unwrap();
        deliver(c, wire)
    }

    fn deliver(c: &mut Client, mut wire: BytesMut) -> Result<Option<Input>, End> {
        match c.conn.mapping() {
            Mapping::Stream => c.conn.next_input(&mut wire, &mut c.out),
            Mapping::Messages => {
                wire.advance(2);
                c.conn.message(Message::Binary(wire.freeze()), &mut c.out)
            }
        }
    }

    /// The sealed packages written so far, opened.
    fn opened(c: &mut Client, client: &mut Channel) -> Vec<Bytes> {
        let mut got = Vec::new();
        while let Some(body) = seal::decode_sealed(&mut c.out) {
            got.push(client.recv.open_body(body).expect("opens"));
        }
        assert!(c.out.is_empty());
        got
    }

    #[test]
    fn requests_open_and_answers_are_sealed() {
        for mapping in MAPPINGS {
            let (mut c, mut client) = open(mapping);
            assert!(c.conn.sealed());
            let mut request = b"hello".to_vec();
            request.extend_from_slice(&7u32.to_be_bytes());
            match send_sealed(&mut c, &mut client, &request) {
                Ok(Some(Input::Request(r))) => {
                    assert_eq!((&r.content[..], r.number), (&b"hello"[..], 7));
                }
                other => panic!("{mapping:?}: {other:?}"),
            }
            // A heartbeat is answered sealed.
            assert_eq!(send_sealed(&mut c, &mut client, b""), Ok(None));
            // What the driver writes, sealed in order after it.
            let start = c.out.len();
            encode_package(b"answer one", &mut c.out).unwrap();
            encode_package(b"answer two", &mut c.out).unwrap();
            c.conn.seal_from(&mut c.out, start).unwrap();
            let got = opened(&mut c, &mut client);
            assert_eq!(got, [&b""[..], b"answer one", b"answer two"], "{mapping:?}");
        }
    }

    #[test]
    fn a_package_that_does_not_open_ends_the_connection() {
        for mapping in MAPPINGS {
            // Altered.
            let (mut c, mut client) = open(mapping);
            let mut wire = BytesMut::new();
            seal::put_sealed(&mut client.send, b"abcd1234", &mut wire).unwrap();
            wire[4] ^= 1;
            assert_eq!(
                deliver(&mut c, wire),
                Err(End::Protocol(ProtocolError::BadSeal)),
                "{mapping:?}"
            );
            // Plain where sealed is due: a message shorter than a tag
            // fails; on a stream it is the start of a longer package, and
            // fails once that much has come.
            let (mut c, _) = open(mapping);
            let mut wire = BytesMut::new();
            encode_package(b"abcd1234", &mut wire).unwrap();
            if mapping == Mapping::Stream {
                assert_eq!(c.conn.next_input(&mut wire, &mut c.out), Ok(None));
                wire.extend_from_slice(&[0; TAG_LEN]);
            }
            assert_eq!(
                deliver(&mut c, wire),
                Err(End::Protocol(ProtocolError::BadSeal)),
                "{mapping:?}"
            );
            // Replayed.
            let (mut c, mut client) = open(mapping);
            let mut wire = BytesMut::new();
            seal::put_sealed(&mut client.send, b"abcd1234", &mut wire).unwrap();
            assert!(deliver(&mut c, wire.clone()).is_ok());
            assert_eq!(
                deliver(&mut c, wire),
                Err(End::Protocol(ProtocolError::BadSeal))
            );
        }
        assert_eq!(End::Protocol(ProtocolError::BadSeal).close_code(), 1007);
    }

    #[test]
    fn a_sealed_message_may_carry_a_whole_package() {
        let (mut c, mut client) = open(Mapping::Messages);
        let mut request = vec![b'x'; MAX_PAYLOAD - 4];
        request.extend_from_slice(&1u32.to_be_bytes());
        assert!(matches!(
            send_sealed(&mut c, &mut client, &request),
            Ok(Some(Input::Request(_)))
        ));
        let too_large = Bytes::from(vec![0; MAX_PAYLOAD + TAG_LEN + 1]);
        assert_eq!(
            c.conn.message(Message::Binary(too_large), &mut c.out),
            Err(End::Protocol(ProtocolError::TooLarge))
        );
    }

    #[test]
    fn the_channel_moves_with_the_connection() {
        let (mut c, mut client) = open(Mapping::Stream);
        let mut request = b"one".to_vec();
        request.extend_from_slice(&1u32.to_be_bytes());
        assert!(send_sealed(&mut c, &mut client, &request).is_ok());
        let start = c.out.len();
        encode_package(b"first", &mut c.out).unwrap();
        c.conn.seal_from(&mut c.out, start).unwrap();
        assert_eq!(opened(&mut c, &mut client), [&b"first"[..]]);
        // Written out and read back (a live upgrade).
        let text = serde_json::to_string(&c.conn).unwrap();
        assert!(!text.contains("\"seal\":null"));
        let moved: Connection = serde_json::from_str(&text).unwrap();
        c.conn = moved.with_limits(limits());
        assert!(c.conn.sealed());
        assert!(
            send_sealed(&mut c, &mut client, &request).is_ok(),
            "counter 1"
        );
        let start = c.out.len();
        encode_package(b"second", &mut c.out).unwrap();
        c.conn.seal_from(&mut c.out, start).unwrap();
        assert_eq!(opened(&mut c, &mut client), [&b"second"[..]]);
        // A connection written out before sealing existed reads back plain.
        let plain = Client::open(Mapping::Stream, true);
        let mut value: serde_json::Value = serde_json::to_value(&plain.conn).unwrap();
        value.as_object_mut().unwrap().remove("seal");
        let old: Connection = serde_json::from_value(value).unwrap();
        assert!(!old.sealed());
    }
}
