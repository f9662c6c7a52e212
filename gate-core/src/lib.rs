//! The gate's rules as state machines without I/O.
//!
//! Two machines, each taking events with the time passed in and returning
//! what to do, so every rule is tested in memory on a simulated clock:
//!
//! * [`session`]: the life of one player's session on a gate (placed by a
//!   login, connections coming and going, the response cache, the push
//!   backlog, the reconnect window);
//! * [`connection`]: every rule of one transport connection (framing, the
//!   handshake deadline, heartbeats and the idle timeout, half-close, the
//!   send queue bound, drain, how it closes).
//!
//! [`End`] is the one word for why either ended. [`wire`] builds the
//! packages both send. The crate has no tokio, no sockets and no clock:
//! the `gate` crate's driver reads sockets and the clock and pumps these
//! machines. Their state is plain data (`serde`), so a running gate can
//! write it out and a new process read it back.

pub mod connection;
pub mod end;
pub mod session;
pub mod time;
pub mod websocket;
pub mod wire;

pub use end::{End, ProtocolError, RELOGIN_TEXT, TransportError};
pub use time::Time;
