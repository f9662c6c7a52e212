//! The login server and the message gate, as a library.
//!
//! `main.rs` only parses flags into a [`config::Config`] and calls
//! [`serve`], which binds the configured listeners and runs the configured
//! role; tests call [`run`] with listeners bound to `127.0.0.1:0` and their
//! own shutdown future.
//!
//! The rules a player's session and connection follow are state machines
//! without I/O in the `gate-core` crate; [`players`] drives them over TCP
//! and WebSocket.

pub mod agent;
pub mod backend;
mod clock;
pub mod cluster;
pub mod config;
pub mod logging;
pub mod login;
pub mod net;
pub mod ops;
pub mod players;
pub mod reload;
mod run;
pub mod shard;
pub mod tls;
pub mod upgrade;

pub use run::{
    Components, GateLinkLayer, Reload, RunError, authenticator, run, run_with, serve,
    serve_reloadable,
};
