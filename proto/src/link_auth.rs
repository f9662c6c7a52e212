//! Mutual authentication of a gate ↔ service link, and of a login node ↔
//! gate control link, with a shared secret.
//!
//! The gate opens every link with a [`LinkChallenge`](crate::backend::LinkChallenge)
//! of 32 random bytes (`gate_nonce`); the service answers in its `Register`
//! with 32 random bytes of its own (`service_nonce`) and
//! [`service_proof`]; the gate checks it ([`verify`], constant time) and
//! answers in `RegisterAck` with [`gate_proof`], which the service checks.
//! Both proofs are HMAC-SHA256 under the secret over both nonces, so a
//! recorded exchange proves nothing on another link, and the two directions
//! use different labels, so one side's proof is never valid for the other.
//!
//! ```text
//! service_proof = HMAC-SHA256(secret, "gatelink v1 service" ‖ gate_nonce ‖ service_nonce
//!                                     ‖ BE32(len service) ‖ service ‖ BE32(len instance) ‖ instance)
//! gate_proof    = HMAC-SHA256(secret, "gatelink v1 gate" ‖ gate_nonce ‖ service_nonce)
//! ```
//!
//! A control link ([`crate::control`]) runs the same exchange with its own
//! labels ([`login_proof`], [`control_gate_proof`]), so no proof made on
//! one kind of link is valid on the other.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Length of each nonce.
pub const NONCE_LEN: usize = 32;

/// Shortest secret accepted: 16 bytes.
pub const MIN_SECRET_LEN: usize = 16;

const SERVICE_LABEL: &[u8] = b"gatelink v1 service";
const GATE_LABEL: &[u8] = b"gatelink v1 gate";
const LOGIN_LABEL: &[u8] = b"gatecontrol v1 login";
const CONTROL_GATE_LABEL: &[u8] = b"gatecontrol v1 gate";

type HmacSha256 = Hmac<Sha256>;

/// The link secret of a deployment: what every gate and service of it
/// shares. `Debug` never shows it; it is wiped when it drops.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkSecret(zeroize::Zeroizing<Vec<u8>>);

/// Why a link secret is not usable.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("the link secret is {0} bytes; at least {MIN_SECRET_LEN} are needed")]
    TooShort(usize),
    /// The file cannot be read.
    #[error("cannot read the link secret file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl LinkSecret {
    /// A secret from these bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<LinkSecret, SecretError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort(bytes.len()));
        }
        Ok(LinkSecret(zeroize::Zeroizing::new(bytes)))
    }

    /// The secret in a file: its contents, without trailing whitespace (so
    /// a file written by `echo` or an editor works).
    pub fn from_file(path: &Path) -> Result<LinkSecret, SecretError> {
        let mut bytes =
            zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| SecretError::Read {
                path: path.display().to_string(),
                source,
            })?);
        while bytes.last().is_some_and(u8::is_ascii_whitespace) {
            bytes.pop();
        }
        LinkSecret::new(std::mem::take(&mut *bytes))
    }

    /// The secret's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkSecret({} bytes)", self.0.len())
    }
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    <HmacSha256 as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// HMAC-SHA256 under `secret` over `label ‖ gate_nonce ‖ peer_nonce`, then
/// each of `names` as `BE32(len) ‖ bytes`.
fn labelled_mac(
    secret: &[u8],
    label: &[u8],
    gate_nonce: &[u8],
    peer_nonce: &[u8],
    names: &[&str],
) -> HmacSha256 {
    let mut m = mac(secret);
    m.update(label);
    m.update(gate_nonce);
    m.update(peer_nonce);
    for part in names {
        m.update(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        m.update(part.as_bytes());
    }
    m
}

fn proof_mac(secret: &[u8], gate_nonce: &[u8], peer_nonce: &[u8], which: Proof<'_>) -> HmacSha256 {
    match which {
        Proof::Service { service, instance } => labelled_mac(
            secret,
            SERVICE_LABEL,
            gate_nonce,
            peer_nonce,
            &[service, instance],
        ),
        Proof::Gate => labelled_mac(secret, GATE_LABEL, gate_nonce, peer_nonce, &[]),
        Proof::Login { node } => labelled_mac(secret, LOGIN_LABEL, gate_nonce, peer_nonce, &[node]),
        Proof::ControlGate => labelled_mac(secret, CONTROL_GATE_LABEL, gate_nonce, peer_nonce, &[]),
    }
}

fn finish(m: HmacSha256) -> Vec<u8> {
    m.finalize().into_bytes().to_vec()
}

/// The service's proof (see the module docs).
pub fn service_proof(
    secret: &[u8],
    gate_nonce: &[u8],
    service_nonce: &[u8],
    service: &str,
    instance: &str,
) -> Vec<u8> {
    finish(proof_mac(
        secret,
        gate_nonce,
        service_nonce,
        Proof::Service { service, instance },
    ))
}

/// The gate's proof (see the module docs).
pub fn gate_proof(secret: &[u8], gate_nonce: &[u8], service_nonce: &[u8]) -> Vec<u8> {
    finish(proof_mac(secret, gate_nonce, service_nonce, Proof::Gate))
}

/// A login node's proof on a control link (`proto/control.proto`):
/// `HMAC-SHA256(secret, "gatecontrol v1 login" ‖ gate_nonce ‖ login_nonce ‖
/// BE32(len node) ‖ node)`.
pub fn login_proof(secret: &[u8], gate_nonce: &[u8], login_nonce: &[u8], node: &str) -> Vec<u8> {
    finish(proof_mac(
        secret,
        gate_nonce,
        login_nonce,
        Proof::Login { node },
    ))
}

/// A gate's proof on a control link:
/// `HMAC-SHA256(secret, "gatecontrol v1 gate" ‖ gate_nonce ‖ login_nonce)`.
pub fn control_gate_proof(secret: &[u8], gate_nonce: &[u8], login_nonce: &[u8]) -> Vec<u8> {
    finish(proof_mac(
        secret,
        gate_nonce,
        login_nonce,
        Proof::ControlGate,
    ))
}

/// Which proof [`verify`] checks.
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// A service's, for these names.
    Service {
        /// The registration's service name.
        service: &'a str,
        /// The registration's instance id.
        instance: &'a str,
    },
    /// The gate's, on a backend link.
    Gate,
    /// A login node's, on a control link, for its node id.
    Login {
        /// The `Hello`'s node id.
        node: &'a str,
    },
    /// The gate's, on a control link.
    ControlGate,
}

/// Checks `proof` in constant time. Nonces of the wrong length fail.
pub fn verify(
    secret: &[u8],
    gate_nonce: &[u8],
    service_nonce: &[u8],
    which: Proof<'_>,
    proof: &[u8],
) -> bool {
    if gate_nonce.len() != NONCE_LEN || service_nonce.len() != NONCE_LEN {
        return false;
    }
    proof_mac(secret, gate_nonce, service_nonce, which)
        .verify_slice(proof)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn secrets_are_read_trimmed_and_never_shown() {
        assert!(matches!(
            LinkSecret::new(b"short".to_vec()),
            Err(SecretError::TooShort(5))
        ));
        let path = std::env::temp_dir().join(format!("link-secret-{}", std::process::id()));
        std::fs::write(&path, b"0123456789abcdef0123\n").unwrap();
        let secret = LinkSecret::from_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(secret.bytes(), b"0123456789abcdef0123");
        assert_eq!(format!("{secret:?}"), "LinkSecret(20 bytes)");
        assert!(LinkSecret::from_file(&path).is_err());
    }

    #[test]
    fn proofs_verify_only_with_the_same_inputs() {
        let (g, s) = ([1u8; 32], [2u8; 32]);
        let p = service_proof(SECRET, &g, &s, "chat", "chat-1");
        let who = Proof::Service {
            service: "chat",
            instance: "chat-1",
        };
        assert!(verify(SECRET, &g, &s, who, &p));
        assert!(!verify(
            b"another secret of 32 bytes......",
            &g,
            &s,
            who,
            &p
        ));
        assert!(
            !verify(SECRET, &[3; 32], &s, who, &p),
            "another link's nonce"
        );
        let other = Proof::Service {
            service: "chat",
            instance: "chat-2",
        };
        assert!(!verify(SECRET, &g, &s, other, &p), "another instance");
        // The names are length-prefixed: ("ab", "c") is not ("a", "bc").
        let shifted = service_proof(SECRET, &g, &s, "cha", "tchat-1");
        assert_ne!(shifted, p);
        assert!(
            !verify(SECRET, &g, &s, Proof::Gate, &p),
            "directions differ"
        );
        let gp = gate_proof(SECRET, &g, &s);
        assert!(verify(SECRET, &g, &s, Proof::Gate, &gp));
        assert!(!verify(SECRET, &g, &s, Proof::Gate, &gp[..31]));
        assert!(!verify(SECRET, &g[..31], &s, Proof::Gate, &gp));
        assert!(!verify(SECRET, &g, &s, Proof::Gate, &[]));
    }

    #[test]
    fn control_link_proofs_are_their_own() {
        let (g, l) = ([4u8; 32], [5u8; 32]);
        let p = login_proof(SECRET, &g, &l, "login-1");
        let who = Proof::Login { node: "login-1" };
        assert!(verify(SECRET, &g, &l, who, &p));
        assert!(!verify(
            SECRET,
            &g,
            &l,
            Proof::Login { node: "login-2" },
            &p
        ));
        // A login node's proof is no service registration, and the reverse.
        let as_service = Proof::Service {
            service: "login-1",
            instance: "",
        };
        assert!(!verify(SECRET, &g, &l, as_service, &p));
        let sp = service_proof(SECRET, &g, &l, "login-1", "");
        assert!(!verify(SECRET, &g, &l, who, &sp));
        let gp = control_gate_proof(SECRET, &g, &l);
        assert!(verify(SECRET, &g, &l, Proof::ControlGate, &gp));
        assert!(!verify(SECRET, &g, &l, Proof::Gate, &gp));
        assert!(!verify(
            SECRET,
            &g,
            &l,
            Proof::ControlGate,
            &gate_proof(SECRET, &g, &l)
        ));
    }
}
