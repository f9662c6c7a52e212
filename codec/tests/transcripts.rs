//! Replays the live skynet transcripts (`testdata/vectors/*_transcript.json`)
//! through the codecs.
//!
//! Per connection and direction, each step's bytes are fed in the pieces the
//! transcript gives (the handshake of `basic` arrives as 1 + 5 + rest bytes,
//! some writes hold two packages). After every step the decoded frames,
//! re-encoded, must equal the bytes consumed so far; every frame is checked
//! against the step's `decoded` fields through the typed parsers
//! (handshake, request, gate status, response, login status line), and the
//! typed encoders must reproduce the exact package. At the end each stream is
//! decoded again one byte at a time and must give the same frames.
//!
//! Steps too long to record in full (`hex_prefix`/`hex_suffix`/`length`) are
//! checked for a consistent length header, then fed as prefix ‖ filler ‖
//! suffix, the filler repeating the byte where prefix and suffix meet (the
//! recorded contents are runs of one byte). Only the filler is synthetic.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tokio_util::codec::{Decoder, Encoder};

use codec::{
    GateStatus, Handshake, LineCodec, LineError, LoginStatus, LuaNumber, PackageCodec, Request,
    Response, ResponseFlag,
};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/vectors");

fn load(name: &str) -> Value {
    let path = format!("{VECTORS}/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex {text}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("missing string {key} in {v}"))
}

fn u64_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("missing number {key} in {v}"))
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Gate,
    Login,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Dir {
    ClientToServer,
    ServerToClient,
}

/// One direction of one connection.
#[derive(Default)]
struct Half {
    buf: BytesMut,
    line: LineCodec,
    /// Every byte fed, in order.
    fed: Vec<u8>,
    /// Every frame decoded, re-encoded.
    reencoded: BytesMut,
    frames: Vec<Bytes>,
}

struct Conn {
    kind: Kind,
    c2s: Half,
    s2c: Half,
    /// The decoder refused the stream (only `line_over_limit` may do this).
    failed: bool,
    server_closed_after_failure: bool,
    closed: bool,
}

impl Conn {
    /// End-of-connection checks.
    fn finish(&self, file: &str, conn_name: &str) {
        if self.failed {
            assert!(
                self.server_closed_after_failure,
                "{file}/{conn_name}: refused stream but the server did not close"
            );
        } else {
            self.c2s.check_bytewise(self.kind);
            self.s2c.check_bytewise(self.kind);
        }
    }
}

#[derive(Default)]
struct Stats {
    steps: usize,
    synthetic_steps: usize,
    handshakes: usize,
    requests: usize,
    statuses: usize,
    responses: usize,
    lines: usize,
    failures: Vec<(String, String)>,
}

impl Half {
    /// Feeds one piece and decodes all complete frames. `Err` if the decoder
    /// refused the stream.
    fn feed(&mut self, kind: Kind, piece: &[u8]) -> Result<Vec<Bytes>, LineError> {
        self.fed.extend_from_slice(piece);
        self.buf.extend_from_slice(piece);
        let mut out = Vec::new();
        loop {
            let frame = match kind {
                Kind::Gate => PackageCodec.decode(&mut self.buf).unwrap(),
                Kind::Login => self.line.decode(&mut self.buf)?,
            };
            let Some(frame) = frame else { break };
            match kind {
                Kind::Gate => PackageCodec
                    .encode(frame.clone(), &mut self.reencoded)
                    .unwrap(),
                Kind::Login => self
                    .line
                    .encode(frame.clone(), &mut self.reencoded)
                    .unwrap(),
            }
            self.frames.push(frame.clone());
            out.push(frame);
        }
        let consumed = self.fed.len() - self.buf.len();
        assert_eq!(
            &self.reencoded[..],
            &self.fed[..consumed],
            "re-encoded frames differ from the bytes they came from"
        );
        Ok(out)
    }

    /// Decodes the whole stream again, one byte per read.
    fn check_bytewise(&self, kind: Kind) {
        let mut buf = BytesMut::new();
        let mut line = LineCodec::new();
        let mut frames = Vec::new();
        for &b in &self.fed {
            buf.extend_from_slice(&[b]);
            loop {
                let frame = match kind {
                    Kind::Gate => PackageCodec.decode(&mut buf).unwrap(),
                    Kind::Login => line.decode(&mut buf).unwrap(),
                };
                match frame {
                    Some(f) => frames.push(f),
                    None => break,
                }
            }
        }
        assert_eq!(frames, self.frames, "byte-by-byte decoding differs");
        assert!(buf.is_empty(), "leftover bytes at end of stream");
    }
}

/// The bytes of a step: `hex`, or prefix ‖ filler ‖ suffix for long ones.
fn step_bytes(step: &Value, kind: Kind) -> (Vec<u8>, bool) {
    if let Some(hex) = step["hex"].as_str() {
        return (unhex(hex), false);
    }
    let prefix = unhex(str_field(step, "hex_prefix"));
    let suffix = unhex(str_field(step, "hex_suffix"));
    let length = u64_field(step, "length") as usize;
    assert!(prefix.len() + suffix.len() <= length);
    match kind {
        Kind::Gate => {
            let n = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
            assert_eq!(n + 2, length, "length header inconsistent with length");
        }
        Kind::Login => {
            assert_eq!(suffix.last(), Some(&b'\n'), "long line must end in LF");
            assert!(!prefix.contains(&b'\n'));
        }
    }
    let fill = *prefix.last().unwrap();
    assert_eq!(suffix[0], fill, "prefix and suffix do not meet in a run");
    let mut bytes = prefix.clone();
    bytes.resize(length - suffix.len(), fill);
    bytes.extend_from_slice(&suffix);
    (bytes, true)
}

/// The expected description of each frame a step delivers.
fn expected_frames(decoded: &Value) -> Vec<&Value> {
    if let Some(list) = decoded["packages"].as_array() {
        return list.iter().collect();
    }
    if decoded["type"] == "fragment" {
        return Vec::new();
    }
    vec![decoded]
}

fn check_handshake(frame: &Bytes, want: &Value, stats: &mut Stats) {
    stats.handshakes += 1;
    let ty = str_field(want, "type");
    assert_eq!(ty, "handshake", "first package must be the handshake");
    if let Some(text) = want["text"].as_str() {
        assert_eq!(&frame[..], text.as_bytes());
    }
    let parsed = Handshake::parse(frame);
    let colons = frame.iter().filter(|&&b| b == b':').count();
    assert_eq!(parsed.is_some(), colons >= 2, "split of {frame:?}");
    let Some(username) = want["username"].as_str() else {
        return;
    };
    let h = parsed.unwrap();
    assert_eq!(&h.username[..], username.as_bytes());
    assert_eq!(&h.index[..], str_field(want, "index").as_bytes());
    assert_eq!(h.signed_text(), str_field(want, "hmac_input").as_bytes());
    assert_eq!(
        String::from_utf8(h.mac.to_vec()).unwrap(),
        base64(&unhex(str_field(want, "hmac")))
    );
    assert_eq!(h.ext, None);
    let index = str_field(want, "index");
    let number = h.index_number();
    match index {
        "abc" => assert_eq!(number, None),
        "0x10" => assert!(matches!(number, Some(LuaNumber::Int(16)))),
        decimal => assert!(matches!(number, Some(LuaNumber::Int(i)) if i.to_string() == decimal)),
    }
    let payload = Handshake::encode(&h.username, &h.index, &h.mac, None);
    assert_eq!(&payload[..], &frame[..], "Handshake::encode");
}

fn check_request(frame: &Bytes, want: &Value, original: &[u8], stats: &mut Stats) {
    stats.requests += 1;
    assert_eq!(str_field(want, "type"), "request");
    let parsed = Request::parse(frame.clone());
    if want.get("session").is_none() {
        // Invalid package (shorter than 4 bytes): the gate closes.
        assert!(frame.len() < 4);
        assert_eq!(parsed, None);
        return;
    }
    let r = parsed.unwrap();
    assert_eq!(u64::from(r.number), u64_field(want, "session"));
    assert_eq!(r.content.len() as u64, u64_field(want, "content_length"));
    if let Some(content) = want["content"].as_str() {
        assert_eq!(&r.content[..], content.as_bytes());
    }
    let mut out = BytesMut::new();
    Request::encode(&r.content, r.number, &mut out).unwrap();
    assert_eq!(&out[..], original, "Request::encode");
}

fn check_status(frame: &Bytes, want: &Value, stats: &mut Stats) {
    stats.statuses += 1;
    assert_eq!(frame.len() as u64, u64_field(want, "length"));
    let status = GateStatus::from_payload(frame).unwrap();
    assert_eq!(status.text(), str_field(want, "status"));
}

fn check_response(frame: &Bytes, want: &Value, original: &[u8], stats: &mut Stats) {
    stats.responses += 1;
    assert_eq!(frame.len() as u64, u64_field(want, "length"));
    let r = Response::parse(frame.clone()).unwrap();
    assert_eq!(u64::from(r.flag.0), u64_field(want, "ok"));
    assert!(r.flag == ResponseFlag::OK || r.flag == ResponseFlag::ERROR);
    assert_eq!(u64::from(r.number), u64_field(want, "session"));
    if let Some(hex) = want["content_hex"].as_str() {
        assert_eq!(&r.content[..], &unhex(hex)[..]);
        assert_eq!(&r.content[..], str_field(want, "content").as_bytes());
    } else {
        assert_eq!(r.content.len() as u64, u64_field(want, "content_length"));
    }
    let mut out = BytesMut::new();
    Response::encode(&r.content, r.flag, r.number, &mut out).unwrap();
    assert_eq!(&out[..], original, "Response::encode");
}

fn check_gate_step(
    half_frames_before: usize,
    dir: Dir,
    frames: &[Bytes],
    step: &Value,
    stats: &mut Stats,
) {
    let Some(decoded) = step.get("decoded") else {
        panic!("gate step without decoded: {step}");
    };
    let wants = expected_frames(decoded);
    assert_eq!(frames.len(), wants.len(), "frame count of step {step}");
    for (i, (frame, want)) in frames.iter().zip(wants).enumerate() {
        let first = half_frames_before + i == 0;
        let mut original = BytesMut::new();
        codec::encode_package(frame, &mut original).unwrap();
        match (dir, first) {
            (Dir::ClientToServer, true) => check_handshake(frame, want, stats),
            (Dir::ClientToServer, false) => check_request(frame, want, &original, stats),
            (Dir::ServerToClient, true) => check_status(frame, want, stats),
            (Dir::ServerToClient, false) => check_response(frame, want, &original, stats),
        }
        if let Some(reassembled) = want["reassembled_hex"].as_str() {
            assert_eq!(&original[..], &unhex(reassembled)[..]);
        }
    }
}

fn check_login_step(dir: Dir, piece: &[u8], frames: &[Bytes], step: &Value, stats: &mut Stats) {
    stats.lines += frames.len();
    // Every recorded login write holds whole lines.
    let lfs = piece.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(frames.len(), lfs, "line count of step {step}");
    let mut joined = Vec::new();
    for line in frames {
        joined.extend_from_slice(line);
        joined.push(b'\n');
    }
    assert_eq!(joined, piece);
    if let Some(text) = step["text"].as_str() {
        assert_eq!(joined, text.as_bytes());
    }
    if dir == Dir::ServerToClient && step["note"] == "status line" {
        let (status, rest) = LoginStatus::parse_line(&frames[0]).unwrap();
        let rebuilt = if status == LoginStatus::OK {
            LoginStatus::ok_line(rest)
        } else {
            status.line()
        };
        assert_eq!(rebuilt, piece, "status line rebuilt");
    }
}

fn run_file(name: &str, stats: &mut Stats) {
    let doc = load(name);
    // Connections can span scenarios ("on connection C: ..."), so they are
    // tracked for the whole file.
    let mut conns: HashMap<String, Conn> = HashMap::new();
    for scenario in doc["scenarios"].as_array().unwrap() {
        let scenario_name = str_field(scenario, "name");
        for step in scenario["steps"].as_array().unwrap() {
            let conn_name = step["conn"].as_str().unwrap_or("").to_owned();
            let ctx = format!("{name} / {scenario_name} / {conn_name}: {step}");
            if let Some(event) = step["event"].as_str() {
                match event {
                    "connect" => {
                        let kind = match str_field(step, "port") {
                            "gate" => Kind::Gate,
                            "login" => Kind::Login,
                            other => panic!("unknown port {other}"),
                        };
                        let conn = Conn {
                            kind,
                            c2s: Half::default(),
                            s2c: Half::default(),
                            failed: false,
                            server_closed_after_failure: false,
                            closed: false,
                        };
                        // Unnamed connections are reused by later scenarios.
                        if let Some(old) = conns.insert(conn_name.clone(), conn) {
                            assert!(old.closed, "connect on an open connection: {ctx}");
                            old.finish(name, &conn_name);
                        }
                    }
                    "server_closed" | "client_close" => {
                        let conn = conns.get_mut(&conn_name).expect(&ctx);
                        conn.closed = true;
                        if conn.failed {
                            assert_eq!(event, "server_closed", "{ctx}");
                            conn.server_closed_after_failure = true;
                        } else {
                            assert!(conn.c2s.buf.is_empty(), "partial frame at close: {ctx}");
                            assert!(conn.s2c.buf.is_empty(), "partial frame at close: {ctx}");
                        }
                    }
                    "nothing_received" | "still_open" => {}
                    other => panic!("unknown event {other}: {ctx}"),
                }
                continue;
            }
            stats.steps += 1;
            let dir = match str_field(step, "dir") {
                "C->S" => Dir::ClientToServer,
                "S->C" => Dir::ServerToClient,
                other => panic!("unknown dir {other}"),
            };
            let conn = conns.get_mut(&conn_name).expect(&ctx);
            assert!(
                !conn.failed,
                "data after the decoder refused the stream: {ctx}"
            );
            let kind = conn.kind;
            let (piece, synthetic) = step_bytes(step, kind);
            stats.synthetic_steps += usize::from(synthetic);
            let half = match dir {
                Dir::ClientToServer => &mut conn.c2s,
                Dir::ServerToClient => &mut conn.s2c,
            };
            let before = half.frames.len();
            match half.feed(kind, &piece) {
                Ok(frames) => match kind {
                    Kind::Gate => check_gate_step(before, dir, &frames, step, stats),
                    Kind::Login => check_login_step(dir, &piece, &frames, step, stats),
                },
                Err(LineError::TooLong) => {
                    conn.failed = true;
                    stats
                        .failures
                        .push((scenario_name.to_owned(), conn_name.clone()));
                }
                Err(e) => panic!("{e}: {ctx}"),
            }
        }
    }
    for (conn_name, conn) in &conns {
        conn.finish(name, conn_name);
    }
}

#[test]
fn msgserver_transcript_roundtrips() {
    let mut stats = Stats::default();
    run_file("msgserver_transcript.json", &mut stats);
    eprintln!(
        "msgserver: {} steps ({} synthetic), {} handshakes, {} requests, {} statuses, {} responses, {} login lines",
        stats.steps,
        stats.synthetic_steps,
        stats.handshakes,
        stats.requests,
        stats.statuses,
        stats.responses,
        stats.lines
    );
    assert!(stats.handshakes >= 25 && stats.requests >= 60);
    assert!(stats.statuses >= 25 && stats.responses >= 50);
    assert_eq!(stats.synthetic_steps, 3);
    assert!(stats.failures.is_empty());
}

#[test]
fn login_transcript_roundtrips() {
    let mut stats = Stats::default();
    run_file("login_transcript.json", &mut stats);
    eprintln!(
        "login: {} steps ({} synthetic), {} lines, gate: {} handshakes, {} requests",
        stats.steps, stats.synthetic_steps, stats.lines, stats.handshakes, stats.requests
    );
    assert!(stats.lines >= 40);
    assert_eq!(stats.synthetic_steps, 2);
    // Exactly one stream goes over skynet's 8 KiB limit, and the server
    // closed it.
    assert_eq!(
        stats.failures,
        vec![("line_over_limit".to_owned(), String::new())]
    );
}

#[test]
fn crlf_line_keeps_its_cr() {
    let doc = load("login_transcript.json");
    let scenario = doc["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "crlf_line_ending")
        .unwrap();
    let step = scenario["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["dir"] == "C->S")
        .unwrap();
    let mut buf = BytesMut::from(&unhex(str_field(step, "hex"))[..]);
    let line = LineCodec::new().decode(&mut buf).unwrap().unwrap();
    assert_eq!(&line[..], b"LlDyrbvFc00=\r");
}
