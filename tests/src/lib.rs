//! Shared helpers of the end-to-end tests: servers on 127.0.0.1:0, scripted
//! clients, controllable agents.

pub mod backend;
pub mod client;
pub mod login;
pub mod msg;
pub mod player;
pub mod push;
pub mod relay;
pub mod replay;
#[path = "../../gate/tests/support/scratch.rs"]
pub mod scratch;
