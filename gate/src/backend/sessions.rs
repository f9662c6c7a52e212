//! The gate's sessions as the backend sees them, by uid, with the agent
//! instance each is bound to.

use std::sync::Arc;

use bytes::Bytes;

use super::instance::Instance;
use crate::agent::SessionCtx;
use crate::shard::ShardedMap;

/// One session as the backend sees it.
pub(crate) struct Entry {
    pub(crate) ctx: SessionCtx,
    /// The agent instance the user is bound to (agent mode); `None` until
    /// an instance of the agent service exists.
    pub(crate) bound: Option<Arc<Instance>>,
}

/// The gate's sessions by uid, with their agent binding; sharded, so the
/// request path of different users does not share a lock.
#[derive(Default)]
pub(crate) struct Sessions {
    pub(crate) map: ShardedMap<Bytes, Entry>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    /// The subid of `uid`'s session, if it has one.
    pub(crate) fn subid(&self, uid: &[u8]) -> Option<Bytes> {
        self.map.shard(uid).get(uid).map(|e| e.ctx.subid().clone())
    }

    /// Ends `uid`'s session quietly (a service's `Logout`); only the session
    /// `subid` unless it is empty.
    pub(crate) fn logout(&self, uid: &[u8], subid: &[u8]) {
        let ctx = self
            .map
            .shard(uid)
            .get(uid)
            .filter(|e| subid.is_empty() || e.ctx.subid() == subid)
            .map(|e| e.ctx.clone());
        // Outside the shard lock: ending the session calls back into
        // `BackendAgent::event`.
        if let Some(ctx) = ctx {
            ctx.logout();
        }
    }

    /// Number of sessions known (for metrics).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
