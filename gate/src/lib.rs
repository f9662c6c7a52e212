//! The login server and the message gate, as a library.
//!
//! `main.rs` only parses flags into a [`config::Config`] and calls
//! [`serve`], which binds the configured listeners and runs the configured
//! role; tests call [`run`] with listeners bound to `127.0.0.1:0` and their
//! own shutdown future.
//!
//! The life of one player's session is [`session`], a sans-IO state
//! machine; [`msg`] drives it over TCP.

pub mod agent;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod logging;
pub mod login;
pub mod msg;
pub mod net;
pub mod ops;
mod run;
pub mod session;
pub mod shard;
pub mod tls;
pub mod wire;

pub use run::{Components, GateLinkLayer, RunError, authenticator, run, run_with, serve};
