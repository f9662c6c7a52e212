//! A man in the middle for gate connections: a TCP relay between a client
//! and the gate that records every byte it passes, and on its first
//! connection can alter, drop or replay one sealed package, or rewrite the
//! handshake (`docs/PROTOCOL.md` §3.2).
//!
//! It reads packages the way the sealed channel frames them: the first
//! package each way is plain (the handshake, the status), every later one
//! `BE16(len) ‖ ciphertext ‖ 16-byte tag`. Later connections are passed
//! through untouched (a client reconnects through the same relay).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the relay does to its first connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Nothing: it only records (and reads the connection as sealed).
    Nothing,
    /// Nothing, and it reads nothing: every byte as it comes (for a
    /// connection that is not sealed).
    Raw,
    /// Flips one bit of the client's sealed package number `k` (from 0).
    FlipFromClient(usize),
    /// Drops the client's sealed package number `k`.
    DropFromClient(usize),
    /// Sends the client's sealed package number `k` twice.
    ReplayFromClient(usize),
    /// Flips one bit of the gate's sealed package number `k` (the welcome
    /// is number 0).
    FlipFromGate(usize),
    /// Removes `,seal=1` from the handshake's extension field.
    StripSeal,
}

/// See the module docs.
#[derive(Debug)]
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Every byte passed from clients to the gate, all connections.
    pub from_client: Arc<Mutex<Vec<u8>>>,
    /// Every byte passed from the gate to clients.
    pub from_gate: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    /// Starts a relay to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr, tamper: Tamper) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let from_client = Arc::new(Mutex::new(Vec::new()));
        let from_gate = Arc::new(Mutex::new(Vec::new()));
        let (c, g) = (Arc::clone(&from_client), Arc::clone(&from_gate));
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((client, _)) = listener.accept().await {
                let Ok(gate) = TcpStream::connect(upstream).await else {
                    return;
                };
                let tamper = if first { tamper } else { Tamper::Nothing };
                first = false;
                let (client_read, client_write) = client.into_split();
                let (gate_read, gate_write) = gate.into_split();
                tokio::spawn(pump(client_read, gate_write, Arc::clone(&c), tamper, true));
                tokio::spawn(pump(gate_read, client_write, Arc::clone(&g), tamper, false));
            }
        });
        Relay {
            addr,
            from_client,
            from_gate,
        }
    }

    /// Whether `needle` appears in what clients sent.
    pub fn client_sent(&self, needle: &[u8]) -> bool {
        contains(&self.from_client.lock().expect("lock"), needle)
    }

    /// Whether `needle` appears in what the gate sent.
    pub fn gate_sent(&self, needle: &[u8]) -> bool {
        contains(&self.from_gate.lock().expect("lock"), needle)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Passes one direction, package by package, tampering as asked.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Arc<Mutex<Vec<u8>>>,
    tamper: Tamper,
    client_side: bool,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    // Packages passed so far this way; the first is plain.
    let mut seen = 0usize;
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if tamper == Tamper::Raw {
            record.lock().expect("lock").extend_from_slice(&chunk[..n]);
            if to.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        while buf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            let whole = if seen == 0 { 2 + len } else { 2 + len + 16 };
            if buf.len() < whole {
                break;
            }
            let mut package: Vec<u8> = buf.drain(..whole).collect();
            let sealed = seen.checked_sub(1);
            seen += 1;
            match (tamper, sealed) {
                (Tamper::FlipFromClient(k), Some(i)) if client_side && i == k => {
                    package[2] ^= 0x01;
                }
                (Tamper::FlipFromGate(k), Some(i)) if !client_side && i == k => {
                    let last = package.len() - 1;
                    package[last] ^= 0x80;
                }
                (Tamper::DropFromClient(k), Some(i)) if client_side && i == k => continue,
                (Tamper::ReplayFromClient(k), Some(i)) if client_side && i == k => {
                    out.extend_from_slice(&package);
                }
                (Tamper::StripSeal, None) if client_side => {
                    let text = &package[2..];
                    if let Some(at) = text.windows(7).position(|w| w == b",seal=1") {
                        let mut payload = text[..at].to_vec();
                        payload.extend_from_slice(&text[at + 7..]);
                        package = (payload.len() as u16).to_be_bytes().to_vec();
                        package.extend_from_slice(&payload);
                    }
                }
                _ => {}
            }
            out.extend_from_slice(&package);
        }
        if out.is_empty() {
            continue;
        }
        record.lock().expect("lock").extend_from_slice(&out);
        if to.write_all(&out).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
