//! The request path of one authenticated connection: from a request to
//! the session (cache, in-flight bound) and the agent, and the answer due
//! at once back into the write buffer.

use std::sync::Arc;

use bytes::BytesMut;
use codec::message::Request;
use gate_core::End;
use gate_core::session::{Completion, Effect, ExecId, OnRequest, RequestRefused};

use super::core::{Bound, GateCore};
use super::handle::{Asked, ConnHandle};
use super::metrics::bump;
use super::user::{User, response_package};
use crate::agent::{AgentRequest, Dispatch, SessionCtx, SessionHandle};

/// An authenticated connection as the request path sees it: the gate, the
/// user and its session handle for the agent, and this connection's handle.
pub(super) struct PlayerConn<'a> {
    pub(super) core: &'a Arc<GateCore>,
    pub(super) user: Arc<User>,
    pub(super) ctx: SessionCtx,
    pub(super) handle: Arc<ConnHandle>,
}

impl<'a> PlayerConn<'a> {
    /// The connection `handle`, whose handshake bound it to `bound.user`.
    pub(super) fn new(core: &'a Arc<GateCore>, bound: &Bound, handle: Arc<ConnHandle>) -> Self {
        PlayerConn {
            core,
            ctx: SessionCtx::new(Arc::clone(&bound.user) as Arc<dyn SessionHandle>),
            user: Arc::clone(&bound.user),
            handle,
        }
    }

    /// Moves what other tasks queued for this connection (late answers,
    /// pushes) into `out`.
    pub(super) fn take_outbox(&self, out: &mut BytesMut) {
        self.user.lock().session.write_outbox(self.handle.id, out);
    }

    /// Requests of the user still running.
    pub(super) fn inflight(&self) -> u32 {
        self.user.lock().session.inflight()
    }

    /// Why this connection is no longer its session's: what it was asked
    /// to close for (its session ended, or a newer connection took over).
    fn unbound(&self) -> End {
        match self.handle.asked() {
            Asked::Close(end) => end,
            Asked::Nothing | Asked::Drain => End::Superseded,
        }
    }

    /// One request (spec §5.4, §5.5); an answer due now goes to `out`.
    pub(super) fn request(&self, req: Request, out: &mut BytesMut) -> Result<(), End> {
        let (core, user) = (self.core, &self.user);
        let number = req.number;
        let conn = self.handle.id;
        let outcome = user.lock().session.request(conn, number);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(RequestRefused::NotBound { .. }) => return Err(self.unbound()),
            Err(RequestRefused::TooManyInflight) => return Err(End::TooManyInflight),
        };
        match outcome {
            OnRequest::Execute(exec) => {
                core.metrics.requests.bump();
                let running = Running { user, number, exec };
                let dispatch = core
                    .agent
                    .request(&self.ctx, AgentRequest::new(number, req.content, exec));
                std::mem::forget(running);
                if let Dispatch::Ready(result) = dispatch {
                    let completion = {
                        let mut state = user.lock();
                        let state = &mut *state;
                        let package = response_package(user, number, result, &mut state.slab);
                        state
                            .session
                            .complete(number, exec, package, Some((conn, &mut *out)))
                    };
                    if let Completion::Wake(other) = completion {
                        core.perform(user, [Effect::Wake(other)]);
                    }
                }
            }
            OnRequest::Resend(package) => {
                bump(&core.metrics.resends);
                out.extend_from_slice(&package);
            }
            OnRequest::Lost(package) => {
                bump(&core.metrics.lost);
                out.extend_from_slice(&package);
            }
            OnRequest::Absorbed => bump(&core.metrics.absorbed),
            OnRequest::Conflict => return Err(End::Conflict),
        }
        Ok(())
    }
}

/// Undoes a request's bookkeeping if the agent panics while running it
/// (forgotten when the agent returns): the request no longer counts as in
/// flight, and its number is free again.
struct Running<'a> {
    user: &'a User,
    number: u32,
    exec: ExecId,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.user.lock().session.abandon(self.number, self.exec);
    }
}
