//! Where the login server's randomness comes from.
//!
//! `loginproto` takes its randomness as bytes; this is the one place the
//! login server makes them. Production uses a CSPRNG per thread seeded from
//! the OS ([`ThreadRandom`]), or the OS CSPRNG itself ([`OsRandom`], one
//! system call per login); tests pin the values ([`FixedRandom`]) to replay
//! skynet's transcripts, whose server was pinned the same way.

use std::fmt;

use loginproto::login::ServerRandom;
use loginproto::skynet::random_key;
use rand::rngs::SysRng;
use rand::{Rng, TryRng};

/// The OS random generator failed (practically never; the login is then
/// closed without a status line).
#[derive(Debug, thiserror::Error)]
#[error("OS random generator failed: {0}")]
pub struct RandomError(String);

/// Makes the randomness of one server-side login.
pub trait RandomSource: Send + Sync + 'static {
    /// Fresh challenge and private keys for one login.
    fn server_random(&self) -> Result<ServerRandom, RandomError>;
}

/// rand's `ThreadRng`: ChaCha12 per thread, seeded from the OS CSPRNG and
/// reseeded from it after every 64 KiB of output (about 1,300 logins). The
/// default: it spares the system call per login of [`OsRandom`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRandom;

impl RandomSource for ThreadRandom {
    fn server_random(&self) -> Result<ServerRandom, RandomError> {
        let mut bytes = [0u8; 48];
        rand::rng().fill_bytes(&mut bytes);
        Ok(split(&bytes))
    }
}

/// The OS CSPRNG (`getrandom`), one system call per login.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn server_random(&self) -> Result<ServerRandom, RandomError> {
        let mut bytes = [0u8; 48];
        SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| RandomError(e.to_string()))?;
        Ok(split(&bytes))
    }
}

/// Cuts 48 random bytes into the values of one login.
fn split(bytes: &[u8; 48]) -> ServerRandom {
    let mut challenge = [0u8; 8];
    let mut skynet_key = [0u8; 8];
    let mut x25519_key = [0u8; 32];
    challenge.copy_from_slice(&bytes[..8]);
    skynet_key.copy_from_slice(&bytes[8..16]);
    x25519_key.copy_from_slice(&bytes[16..]);
    ServerRandom {
        // skynet's randomkey() never returns all zero; keep that for
        // both values it makes (spec §3.1).
        challenge: random_key(challenge),
        skynet_key: random_key(skynet_key),
        x25519_key,
    }
}

/// The same values for every login: for tests and reproductions only (a
/// server using it is trivially broken).
#[derive(Clone)]
pub struct FixedRandom(pub ServerRandom);

impl fmt::Debug for FixedRandom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FixedRandom").field(&self.0).finish()
    }
}

impl RandomSource for FixedRandom {
    fn server_random(&self) -> Result<ServerRandom, RandomError> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn differs_between_logins(source: &dyn RandomSource) {
        let a = source.server_random().unwrap();
        let b = source.server_random().unwrap();
        assert_ne!(a.challenge, b.challenge);
        assert_ne!(a.skynet_key, b.skynet_key);
        assert_ne!(a.x25519_key, b.x25519_key);
        assert_ne!(a.skynet_key, [0; 8]);
        assert_ne!(a.challenge, [0; 8]);
    }

    #[test]
    fn os_random_differs_between_logins() {
        differs_between_logins(&OsRandom);
    }

    #[test]
    fn thread_random_differs_between_logins_and_threads() {
        differs_between_logins(&ThreadRandom);
        let here = ThreadRandom.server_random().unwrap();
        let there = std::thread::spawn(|| ThreadRandom.server_random().unwrap())
            .join()
            .unwrap();
        assert_ne!(here.x25519_key, there.x25519_key);
    }
}
