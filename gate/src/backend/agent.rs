//! The backend agent: the [`Agent`] that hands each client request to a
//! service instance, and the table of sessions with their agent binding.
//!
//! See the module docs of [`crate::backend`] for the routing rule. In
//! short: with `route_mode` off every payload goes to the user's bound
//! agent instance; with it on every payload is a `RouteEnvelope`, and its
//! route picks the service (an empty route meaning the user's agent).

use std::any::Any;
use std::sync::Arc;

use prost::Message;
use proto::backend::{GateFrame, SessionEvent as EventFrame, SessionEventKind};
use proto::route::RouteEnvelope;
use tracing::debug;

use super::instance::Instance;
use super::metrics::bump;
use super::sessions::Entry;
use super::state::BackendState;
use crate::agent::{Agent, AgentRequest, Dispatch, RequestError, SessionCtx, SessionEvent};
use crate::logging::esc;
use gate_core::End;

/// The [`Agent`] of a gate with backends: routes requests to service
/// instances and forwards session events. Made by
/// [`Backend::agent`](super::Backend::agent).
pub struct BackendAgent {
    pub(crate) shared: Arc<BackendState>,
}

impl std::fmt::Debug for BackendAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendAgent")
            .field("agent_service", &self.shared.cfg.agent_service)
            .field("route_mode", &self.shared.cfg.route_mode)
            .finish()
    }
}

/// How [`BackendAgent::agent_link`] found the instance.
enum Binding {
    /// The user's existing binding.
    Kept(Arc<Instance>),
    /// A new binding (first one, or the old instance is gone): the instance
    /// has not heard of this session yet.
    New(Arc<Instance>),
    /// Not the session's binding: the uid has a newer session, which is
    /// bound instead.
    Other(Arc<Instance>),
}

impl BackendAgent {
    fn unroutable(&self, ctx: &SessionCtx, error: RequestError) -> Dispatch {
        bump(&self.shared.metrics.unroutable);
        debug!(
            uid = %esc(ctx.uid()),
            error = %esc(error.to_string().as_bytes()),
            "request not routable"
        );
        Dispatch::Ready(Err(error))
    }

    /// The user's agent instance, binding (or re-binding) it if needed.
    ///
    /// The session's memo keeps the binding this finds, so the common case
    /// (bound to an instance that still takes requests) touches no table.
    /// The binding changes only here, and only once the bound instance
    /// stops taking requests (it never takes them again), so the memo and
    /// the table agree whenever the memo is used.
    fn agent_link(&self, ctx: &SessionCtx) -> Option<Binding> {
        if let Some(link) = ctx.memo().get::<Instance>().filter(|l| l.is_routable()) {
            return Some(Binding::Kept(link));
        }
        let found = self.agent_link_slow(ctx)?;
        if let Binding::Kept(link) | Binding::New(link) = &found {
            ctx.memo()
                .set(Some(Arc::clone(link) as Arc<dyn Any + Send + Sync>));
        }
        Some(found)
    }

    /// [`agent_link`](Self::agent_link) through the sessions table.
    fn agent_link_slow(&self, ctx: &SessionCtx) -> Option<Binding> {
        let sh = &self.shared;
        let uid = ctx.uid();
        let mut shard = sh.sessions.map.shard(uid);
        let entry = shard.entry(uid.clone()).or_insert_with(|| Entry {
            ctx: ctx.clone(),
            bound: None,
        });
        if entry.ctx.subid() != ctx.subid() {
            if entry.ctx.is_active() {
                // A request of an older session of the uid, still running
                // while the new one exists: route it, but leave the new
                // session's binding alone (and this session's memo empty).
                drop(shard);
                return sh
                    .registry
                    .pick(&sh.cfg.agent_service, uid, None)
                    .map(Binding::Other);
            }
            *entry = Entry {
                ctx: ctx.clone(),
                bound: None,
            };
        }
        if let Some(link) = entry.bound.as_ref().filter(|l| l.is_routable()) {
            return Some(Binding::Kept(Arc::clone(link)));
        }
        let link = sh.registry.pick(&sh.cfg.agent_service, uid, None);
        entry.bound.clone_from(&link);
        link.map(Binding::New)
    }

    /// The user's agent instance; an instance it was just (re)bound to
    /// first hears the session's `LOGIN`, so a service that keeps per-user
    /// state learns about the user before its first request.
    fn agent_link_announced(&self, ctx: &SessionCtx) -> Option<Arc<Instance>> {
        match self.agent_link(ctx)? {
            Binding::Kept(link) | Binding::Other(link) => Some(link),
            Binding::New(link) => {
                link.send(event_frame(ctx, SessionEventKind::Login, String::new()));
                Some(link)
            }
        }
    }

    fn no_agent(&self) -> RequestError {
        RequestError::NoInstance {
            service: self.shared.cfg.agent_service.clone(),
        }
    }
}

fn event_frame(ctx: &SessionCtx, kind: SessionEventKind, reason: String) -> GateFrame {
    EventFrame {
        uid: ctx.uid().clone(),
        subid: ctx.subid().clone(),
        kind: kind as i32,
        reason,
    }
    .into()
}

impl Agent for BackendAgent {
    fn request(&self, ctx: &SessionCtx, req: AgentRequest) -> Dispatch {
        let sh = &self.shared;
        let mut body = None;
        if sh.cfg.route_mode {
            // `req.content` shares the connection's read buffer; the body is
            // a slice of it, encoded into the link's buffer before this
            // returns.
            let envelope = match RouteEnvelope::decode(req.content.clone()) {
                Ok(envelope) => envelope,
                Err(err) => {
                    return self.unroutable(ctx, RequestError::BadEnvelope(err.to_string()));
                }
            };
            if !envelope.route.is_empty() {
                let route = envelope.route;
                let Some((service, _)) = proto::split_route(&route) else {
                    return self.unroutable(
                        ctx,
                        RequestError::BadEnvelope(format!(
                            "malformed route {:?}",
                            esc(route.as_bytes()).to_string()
                        )),
                    );
                };
                let Some(link) = sh.registry.pick(service, ctx.uid(), Some(&route)) else {
                    return self.unroutable(
                        ctx,
                        RequestError::NoInstance {
                            service: service.to_owned(),
                        },
                    );
                };
                let (_, completer, pending) = req.defer_shared(ctx);
                link.request(ctx.uid(), ctx.subid(), &route, envelope.body, completer);
                return pending;
            }
            body = Some(envelope.body);
        }
        let Some(link) = self.agent_link_announced(ctx) else {
            return self.unroutable(ctx, self.no_agent());
        };
        // The content is encoded into the link's buffer before this
        // returns: no copy of it.
        let (content, completer, pending) = req.defer_shared(ctx);
        link.request(
            ctx.uid(),
            ctx.subid(),
            "",
            body.unwrap_or(content),
            completer,
        );
        pending
    }

    fn event(&self, ctx: &SessionCtx, event: SessionEvent) {
        let sh = &self.shared;
        let (kind, reason) = match &event {
            SessionEvent::Login => (SessionEventKind::Login, String::new()),
            SessionEvent::Back { .. } => (SessionEventKind::Back, String::new()),
            SessionEvent::Away => (SessionEventKind::Away, String::new()),
            SessionEvent::Ended(end) => {
                let kind = match end {
                    End::Kicked(_) | End::Relogin => SessionEventKind::Kicked,
                    _ => SessionEventKind::Logout,
                };
                (kind, end.kick_text().unwrap_or_default().to_owned())
            }
        };
        let bound = match event {
            SessionEvent::Login => {
                // A fresh session: bind now, the LOGIN below announces it.
                sh.sessions.map.shard(ctx.uid()).insert(
                    ctx.uid().clone(),
                    Entry {
                        ctx: ctx.clone(),
                        bound: None,
                    },
                );
                match self.agent_link(ctx) {
                    Some(Binding::Kept(link) | Binding::New(link) | Binding::Other(link)) => {
                        Some(link)
                    }
                    None => None,
                }
            }
            SessionEvent::Back { .. } | SessionEvent::Away => self.agent_link_announced(ctx),
            SessionEvent::Ended(_) => {
                let mut shard = sh.sessions.map.shard(ctx.uid());
                let is_this = shard
                    .get(ctx.uid())
                    .is_some_and(|e| e.ctx.subid() == ctx.subid());
                if is_this {
                    shard
                        .remove(ctx.uid())
                        .and_then(|e| e.bound)
                        .filter(|l| l.is_routable())
                } else {
                    None
                }
            }
        };
        let frame = event_frame(ctx, kind, reason);
        if let Some(link) = &bound {
            link.send(frame.clone());
        }
        sh.registry.for_each_listener(|link| {
            if !bound.as_ref().is_some_and(|b| Arc::ptr_eq(b, link)) {
                link.send(frame.clone());
            }
        });
    }
}
