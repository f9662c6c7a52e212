//! The request path of one authenticated connection: from the packages
//! read to the session (cache, in-flight cap) and the agent, and the
//! answers due at once back into the write buffer.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use codec::message::Request;
use codec::package::PackageCodec;
use tokio_util::codec::Decoder;

use tokio::time::Instant;

use super::core::{Bound, GateCore, Timer, User, response_package};
use super::end::End;
use super::handle::{CloseCause, ConnHandle};
use super::metrics::bump;
use crate::agent::{AgentRequest, Dispatch, SessionCtx, SessionHandle};
use crate::session::{Completion, ExecId, OnRequest, RequestRefused};

/// What the session loop works with: the gate, the user and its session
/// handle, this connection's handle, and whether the client opted in.
pub(super) struct Link<'a> {
    pub(super) core: &'a Arc<GateCore>,
    pub(super) user: Arc<User>,
    pub(super) ctx: SessionCtx,
    pub(super) handle: Arc<ConnHandle>,
    pub(super) ext: bool,
}

impl<'a> Link<'a> {
    /// The link of a connection that completed its handshake.
    pub(super) fn new(core: &'a Arc<GateCore>, bound: Bound) -> Link<'a> {
        Link {
            core,
            ctx: SessionCtx::new(Arc::clone(&bound.user) as Arc<dyn SessionHandle>),
            user: bound.user,
            handle: bound.handle,
            ext: bound.ext,
        }
    }
}

impl Link<'_> {
    /// Starts the idle timer of an authenticated connection, if it has an
    /// idle timeout; then reads must note their input (`true`).
    pub(super) fn start_idle_timer(&self) -> bool {
        let Some(timeout) = self.core.cfg.idle_timeout(self.ext) else {
            return false;
        };
        let now = Instant::now();
        self.handle.note_input(self.core.timers.tick(now));
        self.core
            .timers
            .at(now + timeout, Timer::Idle(Arc::downgrade(&self.handle)));
        true
    }

    /// Notes input now (for the idle timeout).
    pub(super) fn note_input(&self) {
        self.handle
            .note_input(self.core.timers.tick(Instant::now()));
    }

    /// Moves responses and pushes other tasks queued for this connection
    /// into `out`.
    fn take_outbox(&self, out: &mut BytesMut) {
        let outbox = self.user.lock().session.take_outbox(self.handle.id);
        for item in outbox {
            item.write_to(out);
        }
    }

    /// The handle woke the connection: `Err` with how it ends, or, when it
    /// stays open, what other tasks queued for it moved into `out` and
    /// `Ok(draining)` (answering what was asked and, draining, no more).
    pub(super) fn woken(&self, out: &mut BytesMut) -> Result<bool, End> {
        let draining = match self.handle.close_cause() {
            CloseCause::Open => false,
            CloseCause::Drain => true,
            CloseCause::Idle => return Err(End::IdleTimeout),
            CloseCause::Superseded => return Err(End::Superseded),
            CloseCause::SlowReader => return Err(End::SlowReader),
            CloseCause::SessionEnded => return Err(End::SessionEnded),
            CloseCause::ShutdownNow => return Err(End::ShutdownNow),
        };
        self.take_outbox(out);
        Ok(draining)
    }
}

/// The next complete package in `input`, if any.
pub(super) fn decode(input: &mut BytesMut) -> Result<Option<Bytes>, End> {
    PackageCodec.decode(input).map_err(|_| End::InvalidPackage)
}

/// Runs every complete package in `input`, appending responses to `out`.
pub(super) fn serve(input: &mut BytesMut, out: &mut BytesMut, link: &Link<'_>) -> Result<(), End> {
    while let Some(frame) = decode(input)? {
        serve_package(frame, out, link)?;
    }
    Ok(())
}

/// Runs one package's payload (a request, or a heartbeat), appending what
/// is due now to `out`.
pub(super) fn serve_package(frame: Bytes, out: &mut BytesMut, link: &Link<'_>) -> Result<(), End> {
    if frame.is_empty() && link.ext {
        // Heartbeat of an opted-in client: answered with an empty
        // package. (A plain client is closed for it, as by skynet.)
        out.extend_from_slice(&[0, 0]);
        return Ok(());
    }
    let req = Request::parse(frame).ok_or(End::InvalidPackage)?;
    request(out, link, req)
}

/// One request (spec §5.4, §5.5); a response due now goes to `out`.
fn request(out: &mut BytesMut, link: &Link<'_>, req: Request) -> Result<(), End> {
    let (core, user) = (link.core, &link.user);
    let session = req.number;
    let conn = link.handle.id;
    let outcome = user.lock().session.request(conn, session);
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(RequestRefused::NotBound { ended: true }) => return Err(End::SessionEnded),
        // Superseded between two packages of one batch.
        Err(RequestRefused::NotBound { ended: false }) => return Err(End::Superseded),
        Err(RequestRefused::TooManyInflight) => return Err(End::TooManyInflight),
    };
    match outcome {
        OnRequest::Execute(exec) => {
            core.metrics.requests.bump();
            let running = Running {
                user,
                session,
                exec,
            };
            let dispatch = core
                .agent
                .request(&link.ctx, AgentRequest::new(session, req.content, exec));
            std::mem::forget(running);
            if let Dispatch::Ready(result) = dispatch {
                let package = response_package(user, session, result);
                let completion =
                    user.lock()
                        .session
                        .complete(session, exec, package, Some((conn, &mut *out)));
                if let Completion::Wake(other) = completion {
                    other.wake();
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
        OnRequest::Conflict => {
            bump(&core.metrics.conflicts);
            return Err(End::Conflict);
        }
    }
    Ok(())
}

/// Undoes a request's bookkeeping if the agent panics while running it
/// (forgotten when the agent returns): the request no longer counts as in
/// flight, and its session is free again.
struct Running<'a> {
    user: &'a User,
    session: u32,
    exec: ExecId,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.user.lock().session.abandon(self.session, self.exec);
    }
}
