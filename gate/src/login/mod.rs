//! The login server (skynet's `snax.loginserver` with `examples/login`'s
//! `logind` handlers), wire-compatible byte for byte.
//!
//! * [`server`]: the listeners, connection limits, shutdown; each
//!   connection's dialogue is run by `dialogue`, closed by `closing`.
//! * [`admission`]: the login queue (admission rate, first come first
//!   served).
//! * [`auth`]: the [`Authenticator`] trait, the accounts file, the demo.
//! * [`hashing`]: the fixed pool of argon2 workers the accounts file
//!   verifies on.
//! * [`online`]: the online table, the multilogin lock, `login_handler`.
//! * [`gates`]: the in-process registry of gates the login server places
//!   users on.
//! * [`random`]: the source of challenges and private keys.
//! * [`throttle`]: password guesses per user name and per source address.
//! * [`server_key`]: the long-term key clients may pin, on disk.

pub mod admission;
pub mod auth;
mod closing;
mod detach;
mod dialogue;
mod evict;
pub mod gates;
pub mod hashing;
pub mod metrics;
pub mod online;
pub mod placement;
pub mod random;
pub mod server;
pub mod server_key;
pub mod throttle;

pub use self::auth::{
    AccountsChanges, AccountsError, AccountsFile, AuthError, Authenticator, Credentials, DemoAuth,
};
pub use self::gates::Gates;
pub use self::online::{LocalPlacer, OnlineSession, OnlineTable};
pub use self::random::{FixedRandom, OsRandom, RandomSource, ThreadRandom};
pub use self::server::{LoginLimits, LoginServer};
