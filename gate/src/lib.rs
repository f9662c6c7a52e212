//! The login server and the message gate, as a library.
//!
//! `main.rs` only parses flags and calls [`run`]; tests call [`run`] with
//! listeners bound to `127.0.0.1:0` and their own shutdown future.

pub mod agent;
pub mod backend;
pub mod config;
pub mod link;
pub mod login;
pub mod msg;
pub mod net;
mod run;

pub use run::{Components, GateLinkLayer, RunError, authenticator, run, run_with};
pub mod raw_echo;
