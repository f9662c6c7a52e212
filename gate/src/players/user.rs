//! One logged-in user as the gate keeps it: who it is, its session behind
//! its own lock, and what the agent's [`SessionCtx`] reaches it through
//! ([`SessionHandle`]); and how a handler's result becomes the response
//! package the session caches ([`response_package`]).

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::{Bytes, BytesMut};
use gate_core::End;
use gate_core::session::{Completion, Effect, PushRefused, Session};
use gate_core::wire::{self, Package};
use loginproto::handshake::SessionSecret;

use super::core::GateCore;
use super::handle::ConnHandle;
use super::metrics::Metrics;
use crate::agent::{AgentMemo, Answer, RequestError, SessionHandle};
use crate::logging::esc;

/// Defines a handle on a user filed in a table by one of its names: the
/// item hashes, compares and is looked up (`Borrow<[u8]>`) as that name,
/// so the table keeps no copy of it (8 bytes an entry instead of 40).
macro_rules! filed_by {
    ($(#[$doc:meta])* $name:ident, $field:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub(super) struct $name(pub(super) Arc<User>);

        impl Hash for $name {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.0.$field[..].hash(state);
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &$name) -> bool {
                self.0.$field == other.0.$field
            }
        }

        impl Eq for $name {}

        impl Borrow<[u8]> for $name {
            fn borrow(&self) -> &[u8] {
                &self.0.$field
            }
        }
    };
}

filed_by!(
    /// A user in the table of uids.
    ByUid,
    uid
);
filed_by!(
    /// A user in the table of gate usernames.
    ByUsername,
    username
);

/// What a user's lock guards: the session and its armed timer.
#[derive(Debug)]
pub(crate) struct UserState {
    pub(crate) session: Session<Arc<ConnHandle>>,
    /// Where the session's medium answers are cut from (small ones live
    /// in their cache slot; [`wire::response_in`]).
    pub(crate) slab: BytesMut,
    /// The earliest deadline armed in the gate's timers for this session,
    /// as a tick of the timers (0: none).
    pub(super) timer_at: u32,
}

/// One logged-in user: who it is, and its session.
#[derive(Debug)]
pub(crate) struct User {
    pub(crate) uid: Bytes,
    pub(crate) subid: Bytes,
    pub(crate) username: Bytes,
    /// The username with the name the client logged in with, when the
    /// authenticator gave it another uid (the client signs with that one).
    /// Boxed: most users have none, and every session carries the field.
    pub(super) alias: Option<Box<Bytes>>,
    pub(crate) secret: SessionSecret,
    pub(super) core: Weak<GateCore>,
    /// The user itself, for handing out as the agent's session handle
    /// where only a reference is at hand.
    pub(super) me: Weak<User>,
    /// The gate's counters (a user's responses are counted as they are
    /// made, without reaching the gate through `core`).
    pub(super) metrics: Arc<Metrics>,
    /// What the agent keeps with the session (see [`AgentMemo`]).
    pub(super) agent_memo: AgentMemo,
    pub(super) state: Mutex<UserState>,
}

impl User {
    /// Locks the session. Every critical section leaves it consistent, so a
    /// poisoned lock (a panic elsewhere) is still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, UserState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn core(&self) -> Option<Arc<GateCore>> {
        self.core.upgrade()
    }
}

impl SessionHandle for User {
    fn uid(&self) -> &Bytes {
        &self.uid
    }

    fn subid(&self) -> &Bytes {
        &self.subid
    }

    fn username(&self) -> &Bytes {
        &self.username
    }

    fn is_active(&self) -> bool {
        !self.lock().session.is_ended()
    }

    fn end(&self, reason: End) {
        if let Some(core) = self.core() {
            core.end_by_handle(self, reason);
        }
    }

    fn push(&self, payload: Bytes) -> Result<u32, PushRefused> {
        match self.core() {
            Some(core) => core.push_to(self, payload),
            None => Err(PushRefused::Ended),
        }
    }

    fn agent_memo(&self) -> &AgentMemo {
        &self.agent_memo
    }

    fn complete_many(&self, answers: &mut dyn Iterator<Item = Answer>) {
        let mut wake = None;
        {
            let mut state = self.lock();
            let state = &mut *state;
            for (number, exec, result) in answers {
                let package = response_package(self, number, result, &mut state.slab);
                if let Completion::Wake(conn) = state.session.complete(number, exec, package, None)
                {
                    // Within one lock, always the same connection.
                    wake.get_or_insert(conn);
                }
            }
        }
        if let (Some(conn), Some(core)) = (wake, self.core()) {
            core.perform(self, [Effect::Wake(conn)]);
        }
    }
}

/// The response package of a handler's result; errors are logged here.
/// The log field keeps skynet's word, `session`, which operators and
/// existing log queries know the request number by.
pub(crate) fn response_package(
    user: &User,
    number: u32,
    result: Result<Bytes, RequestError>,
    slab: &mut BytesMut,
) -> Package {
    match &result {
        Ok(content) if content.len() <= codec::message::MAX_RESPONSE_CONTENT => {
            user.metrics.responses.bump();
        }
        _ => user.metrics.error_responses.bump(),
    }
    match result {
        Ok(content) => {
            if content.len() > codec::message::MAX_RESPONSE_CONTENT {
                tracing::debug!(
                    uid = %esc(&user.uid),
                    session = number,
                    len = content.len(),
                    "response does not fit in a package: sent as an error response"
                );
            }
            wire::response_in(slab, number, Some(&content))
        }
        Err(error) => {
            let error = error.to_string();
            tracing::debug!(
                uid = %esc(&user.uid),
                session = number,
                error = %esc(error.as_bytes()),
                "error response"
            );
            wire::response_in(slab, number, None)
        }
    }
}
