//! A library for backend game services behind the gate, and the template
//! for a studio's own.
//!
//! A service implements [`Handler`] (answer requests; optionally react to
//! session events and check credentials) and runs a [`Service`]. The library
//! does the rest of the protocol of `proto::backend`:
//!
//! - **dials** every configured gate's backend port and **registers**
//!   (name, instance id, [`proto::PROTOCOL_VERSION`], routes); a gate
//!   speaking another major version refuses, and [`Service::run`] returns
//!   [`ServiceError::IncompatibleVersion`] instead of retrying;
//! - answers a request whose handler is done at its first poll right where
//!   it was read, batched with the other answers of that read, and runs one
//!   that has to wait on its own task (so it holds up nobody); at most
//!   [`Config::max_in_flight`] at once (beyond that the gate is answered
//!   "overloaded" at once, so nothing queues without bound and heartbeats
//!   keep flowing);
//! - answers the gate's pings, pings it, and treats a gate silent past
//!   [`Config::heartbeat_timeout`] as dead;
//! - **reconnects** a lost link with exponential backoff and jitter, and
//!   registers again, so a gate restart needs no service restart;
//! - on shutdown (a [`CancellationToken`]) says goodbye, finishes in-flight
//!   requests within [`Config::drain_timeout`], and closes.
//!
//! Outside a request, [`Gates`] (all gates) and [`GateHandle`] (one gate)
//! push to users and kick or log them out.
//!
//! ```no_run
//! use bytes::Bytes;
//! use service::{Context, Handler, Request, Service};
//! use tokio_util::sync::CancellationToken;
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     async fn request(&self, ctx: Context, req: Request) -> Result<Bytes, String> {
//!         // Tell the user something out of band, then answer.
//!         let _ = ctx.gate().push(req.uid.clone(), "echoing").await;
//!         Ok(req.payload)
//!     }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // The same secret as the gates' `backend.secret_file`.
//! let secret = service::LinkSecret::from_file("link.secret".as_ref())?;
//! let service = Service::builder("echo")
//!     .gate("127.0.0.1:8899")
//!     .link_secret(secret)
//!     .build(Echo)?;
//! let shutdown = CancellationToken::new();
//! service.run(shutdown).await?;
//! # Ok(())
//! # }
//! ```

mod backoff;
mod config;
mod connection;
mod error;
mod gate;
mod handler;
mod outbox;
mod register;
mod tls;
mod uplink;

use std::sync::Arc;

use tokio::task::JoinSet;
use tracing::Instrument;

pub use crate::config::{Builder, Config};
pub use crate::error::ServiceError;
pub use crate::gate::{GateHandle, Gates, SendError};
pub use crate::handler::{
    AuthDecision, AuthRequest, Context, FnHandler, Handler, Request, SessionEvent, SessionKind,
    handler_fn,
};
pub use crate::tls::LinkTls;
// Re-exported so a service needs no direct dependency to name them.
pub use bytes::Bytes;
pub use proto::link_auth::LinkSecret;
pub use tokio_util::sync::CancellationToken;

/// A configured service, ready to [`run`](Service::run).
#[derive(Debug)]
pub struct Service<H> {
    shared: Arc<uplink::ServiceState<H>>,
    handles: Vec<GateHandle>,
}

impl Service<()> {
    /// Starts a [`Builder`] with the defaults of [`Config::new`].
    pub fn builder(service: impl Into<String>) -> Builder {
        Builder {
            config: Config::new(service),
        }
    }
}

impl<H: Handler> Service<H> {
    /// A service with these settings and this handler; checks the settings.
    pub fn new(config: Config, handler: H) -> Result<Self, ServiceError> {
        config.validate()?;
        let handles: Vec<GateHandle> = config
            .gates
            .iter()
            .map(|addr| GateHandle::new(addr.clone(), config.max_frame_len))
            .collect();
        let shared = Arc::new(uplink::ServiceState {
            permits: Arc::new(uplink::InFlight::new(config.max_in_flight)),
            gates: Gates::new(handles.clone()),
            discovered: tokio::sync::watch::Sender::new(None),
            config,
            handler,
        });
        Ok(Service { shared, handles })
    }

    /// The handles to every gate, usable before and while the service runs
    /// (e.g. by a timer task that pushes news).
    pub fn gates(&self) -> Gates {
        self.shared.gates.clone()
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The handler (e.g. to inspect its state in tests).
    pub fn handler(&self) -> &H {
        &self.shared.handler
    }

    /// Serves every gate until `shutdown` is cancelled (then drains and
    /// returns `Ok`), or until a gate refuses the service for good (then
    /// stops the other links and returns the error). Lost links are retried,
    /// not returned.
    ///
    /// In a cluster, gates announce the cluster's gates to their services:
    /// the service links to every announced gate it has no link to yet; a
    /// link to a gate found that way ends once it is lost while the gate
    /// is no longer announced (it left). The configured gates are always
    /// served.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServiceError> {
        // A child, so a fatal refusal can stop the other links without
        // cancelling the caller's token.
        let stop = shutdown.child_token();
        let mut links = JoinSet::new();
        for gate in self.handles {
            spawn_link(&mut links, &self.shared, gate, stop.clone(), None);
        }
        let mut announcements = self.shared.discovered.subscribe();
        let mut result = Ok(());
        loop {
            tokio::select! {
                joined = links.join_next() => {
                    let Some(joined) = joined else { break };
                    match joined {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => {
                            stop.cancel();
                            if result.is_ok() {
                                result = Err(err);
                            }
                        }
                        // A link task panicking is a bug of this library: surface it.
                        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                        Err(_) => {}
                    }
                }
                changed = announcements.changed(), if !stop.is_cancelled() => {
                    if changed.is_err() {
                        continue;
                    }
                    let list = announcements.borrow_and_update().clone();
                    if let Some(list) = list {
                        link_announced(&list, &self.shared, &mut links, &stop);
                    }
                }
            }
        }
        result
    }
}

fn spawn_link<H: Handler>(
    links: &mut JoinSet<Result<(), ServiceError>>,
    shared: &Arc<uplink::ServiceState<H>>,
    gate: GateHandle,
    stop: CancellationToken,
    announced: Option<(String, String)>,
) {
    let config = &shared.config;
    let span = tracing::info_span!(
        "link",
        gate = %gate.addr(),
        service = %config.service,
        instance = %config.instance_id,
    );
    let discovered = announced.is_some();
    let shared = Arc::clone(shared);
    links.spawn(
        async move {
            let result = uplink::run(Arc::clone(&shared), gate.clone(), stop, announced).await;
            if discovered {
                shared.gates.remove(&gate);
            }
            result
        }
        .instrument(span),
    );
}

/// Links to every announced gate the service has no link to yet (a gate
/// is known by its backend address or, once linked, by its server name, so
/// a configured gate is not dialled twice). Links to gates no longer
/// announced end by themselves once lost (see `uplink::run`).
fn link_announced<H: Handler>(
    announced: &[(String, String)],
    shared: &Arc<uplink::ServiceState<H>>,
    links: &mut JoinSet<Result<(), ServiceError>>,
    stop: &CancellationToken,
) {
    for (name, backend) in announced {
        if backend.is_empty() {
            continue;
        }
        let known = shared
            .gates
            .iter()
            .any(|g| g.addr() == backend || g.gate_name().as_deref() == Some(name.as_str()));
        if known {
            continue;
        }
        tracing::info!(gate = %backend, server = %name, "gate found in the cluster: linking");
        let gate = GateHandle::new(backend.clone(), shared.config.max_frame_len);
        shared.gates.add(gate.clone());
        spawn_link(
            links,
            shared,
            gate,
            stop.clone(),
            Some((name.clone(), backend.clone())),
        );
    }
}
