//! The in-process gate registry: server name → [`MsgGate`], as the login
//! server's [`GateLink`].
//!
//! skynet's gates register themselves with `logind` by name when they open;
//! here the process that builds the gates registers them before the login
//! server starts. A login for a name nobody registered is refused with
//! [`LoginRefusal::UnknownServer`] (`403`, transcript `unknown_server`).

use std::collections::HashMap;

use bytes::Bytes;

use crate::login::placement::{BoxFuture, End, GateLink, LoginRefusal, LoginRequest};
use crate::players::MsgGate;

/// The gates of this process, by server name.
#[derive(Debug, Default, Clone)]
pub struct Gates {
    by_name: HashMap<Bytes, MsgGate>,
}

impl Gates {
    /// An empty registry.
    pub fn new() -> Gates {
        Gates::default()
    }

    /// Registers `gate` under its own name ([`MsgGate::name`]), replacing a
    /// gate of the same name.
    pub fn register(&mut self, gate: MsgGate) {
        let name = Bytes::copy_from_slice(gate.name().as_bytes());
        self.by_name.insert(name, gate);
    }

    /// The gate named `server`.
    pub fn gate(&self, server: &[u8]) -> Option<&MsgGate> {
        self.by_name.get(server)
    }

    /// Number of gates.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no gate is registered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

impl GateLink for Gates {
    fn login(&self, req: LoginRequest) -> BoxFuture<'_, Result<Bytes, LoginRefusal>> {
        Box::pin(async move {
            let Some(gate) = self.gate(&req.server) else {
                return Err(LoginRefusal::UnknownServer(
                    String::from_utf8_lossy(&req.server).into_owned(),
                ));
            };
            gate.login_as(req.uid, req.user, req.secret).await
        })
    }

    fn kick(&self, server: Bytes, uid: Bytes, subid: Bytes, reason: End) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(gate) = self.gate(&server) {
                gate.kick(&uid, &subid, reason).await;
            }
        })
    }

    fn has_server(&self, server: &[u8]) -> bool {
        self.by_name.contains_key(server)
    }
}
