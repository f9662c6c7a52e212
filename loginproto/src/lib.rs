//! Crypt suites and the login / gate-handshake state machines, sans-IO.
//!
//! Nothing here touches a socket, a clock or the OS random generator: callers
//! pass bytes in, take bytes out, and hand in whatever randomness a step needs.
//!
//! * [`skynet`]: skynet's `crypt` primitives, bit-exact (64-bit DH, hmac64,
//!   hashkey, DES-ECB, its lenient base64). Weak by design; kept for existing
//!   clients.
//! * [`modern`]: the x25519 suite (X25519, HKDF-SHA256, HMAC-SHA256 proofs,
//!   ChaCha20-Poly1305 sealed token); its module docs describe the wire.
//! * [`login`]: the login dialogue's state machines, server and client, both
//!   suites.
//! * [`handshake`]: gate handshake usernames, signing and MAC verification.
//! * [`seal`]: the sealed gate channel (ChaCha20-Poly1305 per package).
//! * [`token`]: the `b64(user)@b64(server):b64(password)` login token.

pub mod handshake;
pub mod login;
pub mod modern;
pub mod seal;
pub mod skynet;
pub mod token;
