//! x25519 suite (in progress)
