//! Loopback ports for the gate processes a test starts.
//!
//! A port the kernel gives for `bind(0)` comes from its ephemeral range,
//! where every outgoing connection takes its local port from too: between
//! the test learning the port and the gate binding it, a connection
//! another test opens may take it, and the gate stops with "address
//! already in use". These ports come from below that range, where no
//! connection takes one by itself: picked at random, and free when
//! picked.

use std::net::{SocketAddr, TcpListener};

/// Lowest port picked.
const FLOOR: u16 = 10_000;

/// A free port on 127.0.0.1, below the kernel's ephemeral range.
pub fn free_port() -> u16 {
    let ceiling = ephemeral_start().unwrap_or(32_768);
    if ceiling <= FLOOR + 1_000 {
        // An unusual range: the kernel's pick, as a last resort.
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
    }
    for _ in 0..1_000 {
        let port = rand::random_range(FLOOR..ceiling);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FLOOR}..{ceiling}");
}

/// A free address on 127.0.0.1 (see [`free_port`]).
#[allow(dead_code)]
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_start() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}
