//! The login server and the message gate, as a library.
//!
//! `main.rs` only parses flags and calls [`run`]; tests call [`run`] with
//! listeners bound to `127.0.0.1:0` and their own shutdown future.
//!
//! The rules a player's session and connection follow are state machines
//! without I/O in the `gate-core` crate; [`players`] drives them over TCP
//! and WebSocket.

pub mod agent;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod esc;
pub mod login;
pub mod net;
pub mod ops;
pub mod placement;
pub mod players;
pub mod raw_echo;
mod run;
pub mod shard;
pub mod tls;
pub mod web;

pub use run::{Components, GateLinkLayer, RunError, authenticator, run, run_with};
