//! Live upgrade: a new gate process takes over a running one's listening
//! sockets, connections and sessions, so an upgrade logs nobody out.
//!
//! * [`old`]: the running process serves the upgrade socket and hands
//!   over;
//! * [`new`]: the new process takes over instead of binding;
//! * [`frames`]: messages and file descriptors on the upgrade socket;
//! * [`state`]: the messages and the versioned state format;
//! * the gate's part, parking connections and writing sessions out, is
//!   `crate::players::handoff`.
//!
//! What moves: the listening sockets, every TCP client connection (its
//! socket, its unread input and unwritten output, its connection machine)
//! and every session (secret, index, response cache, push backlog,
//! deadlines), so TCP clients notice nothing. WebSocket connections are
//! closed with 1012 and reconnect with their next index, without a login.
//! Login dialogues and requests in flight finish in the old process first.
//! At every moment exactly one process accepts and serves: the new one
//! starts only once the old one has committed, and any failure before
//! that leaves the old one serving as if nothing had happened.

pub mod frames;
pub mod new;
pub mod old;
pub mod state;
