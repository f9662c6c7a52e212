//! Configuration reload without a restart: what a running process needs
//! to change its settings while it serves.

mod live;

pub use self::live::Live;
