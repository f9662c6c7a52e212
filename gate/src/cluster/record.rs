//! The bytes the cluster keeps in Redis: key names and directory records.
//!
//! Every key starts with the configured prefix (`cluster.key_prefix`,
//! default `gate:`), so several deployments can share one Redis:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}gate:{server}` | hash, expires after the lease | the gate node serving `server`: `node`, `epoch`, `client` (TCP), `web` (`ws://` or `wss://` URL, empty: none), `backend` (where services dial; empty: none), `control`, `ops`, `online`, `draining` |
//! | `{prefix}user:{uid}` | string | the uid's session: a [`Record`] |
//! | `{prefix}lock:{uid}` | string, expires | the token of the login of `uid` in progress |
//! | `{prefix}gates` | set | the server names of the registered gates (for the gate list services get) |
//! | `{prefix}queue` | hash | the cluster-wide login queue: `tokens`, `last`, `head`, `tail` |
//! | `{prefix}intact` | string | the run id of the Redis server the directory was last known whole on (see [`super::redis_link`]) |
//! | `{prefix}fence` | string, expires | present while the directory may miss records: logins that would need a missing one wait |

use std::fmt;

use bytes::Bytes;

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (e.g. `gate:`).
    pub fn new(prefix: impl Into<String>) -> Keys {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, kind: &str, name: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + kind.len() + 1 + name.len());
        key.extend_from_slice(self.prefix.as_bytes());
        key.extend_from_slice(kind.as_bytes());
        key.push(b':');
        key.extend_from_slice(name);
        key
    }

    /// The registry entry of the gate serving `server`.
    pub fn gate(&self, server: &[u8]) -> Vec<u8> {
        self.key("gate", server)
    }

    /// The directory record of `uid`.
    pub fn user(&self, uid: &[u8]) -> Vec<u8> {
        self.key("user", uid)
    }

    /// The login lock of `uid`.
    pub fn lock(&self, uid: &[u8]) -> Vec<u8> {
        self.key("lock", uid)
    }

    /// The cluster-wide login queue.
    pub fn queue(&self) -> Vec<u8> {
        self.plain("queue")
    }

    /// The set of server names with a registry entry (entries lapse on
    /// their own; names are removed when found lapsed).
    pub fn gates(&self) -> Vec<u8> {
        self.plain("gates")
    }

    /// The marker of a whole directory (absent: Redis lost its data).
    pub fn intact(&self) -> Vec<u8> {
        self.plain("intact")
    }

    /// The fence: present while records may be missing.
    pub fn fence(&self) -> Vec<u8> {
        self.plain("fence")
    }

    fn plain(&self, name: &str) -> Vec<u8> {
        let mut key = self.prefix.as_bytes().to_vec();
        key.extend_from_slice(name.as_bytes());
        key
    }
}

/// One directory record: the session of a uid, on the gate serving
/// `server` since boot `epoch`, with `subid`. Stored as
/// `epoch LF subid LF server` (the server name last, so it may hold any
/// byte but LF in the first two fields, which are decimal).
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// The gate's boot epoch.
    pub epoch: u64,
    /// The session's subid (decimal text).
    pub subid: Bytes,
    /// The gate's server name.
    pub server: Bytes,
}

impl Record {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.subid.len() + self.server.len());
        out.extend_from_slice(self.epoch.to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&self.subid);
        out.push(b'\n');
        out.extend_from_slice(&self.server);
        out
    }

    /// Reads stored bytes; `None` if they are not a record.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let mut parts = bytes.splitn(3, |&b| b == b'\n');
        let epoch = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let subid = parts.next()?;
        let server = parts.next()?;
        if subid.is_empty() || !subid.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(Record {
            epoch,
            subid: Bytes::copy_from_slice(subid),
            server: Bytes::copy_from_slice(server),
        })
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Record({}@{}#{})",
            crate::logging::esc(&self.subid),
            crate::logging::esc(&self.server),
            self.epoch
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let r = Record {
            epoch: 1_700_000_000_123_456,
            subid: Bytes::from_static(b"42"),
            server: Bytes::from_static(b"sample\nwith lf"),
        };
        assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
        assert_eq!(r.encode(), b"1700000000123456\n42\nsample\nwith lf");
        for bad in [&b""[..], b"1\n2", b"x\n1\ns", b"1\n\ns", b"1\nab\ns"] {
            assert_eq!(Record::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_carry_the_prefix() {
        let k = Keys::new("g1:");
        assert_eq!(k.gate(b"sample"), b"g1:gate:sample");
        assert_eq!(k.user(b"alice"), b"g1:user:alice");
        assert_eq!(k.lock(b"alice"), b"g1:lock:alice");
    }
}
