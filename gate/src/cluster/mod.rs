//! Many login nodes and many gate nodes on one Redis.
//!
//! ```text
//! clients ──▶ login nodes (stateless) ──control link──▶ gate nodes
//!                 │  begin: lock, target, old record        │ commit / end
//!                 └──────────────▶  Redis  ◀─────────────────┘ registry lease
//! services ──authenticated backend links──▶ every gate node
//! ```
//!
//! * [`record`]: key names and the directory record format;
//! * [`redis_link`]: the connection to Redis (directly or through
//!   Sentinel), and the fence raised when the directory may have lost data;
//! * [`directory`]: the registry and the session directory, changed only by
//!   the compare-and-set scripts of `scripts`;
//! * [`gate_node`]: registration and its heartbeat, record removal when a
//!   session ends, the answers to control calls;
//! * [`control`]: the gate node's control listener login nodes dial;
//! * [`login_node`]: the control links and the [`ClusterPlacer`];
//! * [`admission`]: the login queue all login nodes share.
//!
//! The two node roles are started by [`crate::serve`] (`cluster.role`).
//!
//! The rules the directory keeps, and the test of each, are listed in the
//! README's "Cluster" section.

pub mod admission;
pub mod control;
pub mod directory;
pub mod gate_node;
pub mod login_node;
pub mod record;
pub mod redis_link;
mod scripts;

pub use self::admission::SharedAdmission;
pub use self::directory::{Directory, DirectoryOptions};
pub use self::gate_node::{DirectoryLink, GateNode};
pub use self::login_node::{ClusterPlacer, ControlLinks};
