//! Backend game services: the gate's side of the `proto::backend` RPC.
//!
//! Services dial the gate (`[backend] listen`) and register (name, instance
//! id, protocol version, routes); the gate hands them client requests and
//! session events, and takes their answers, pushes, kicks and logouts. The
//! service side is the `service` crate; the wire is `proto/proto/*.proto`.
//!
//! * [`Backend`]: the listener and registry of links; [`Backend::agent`]
//!   is the gate's [`Agent`], [`Backend::authenticator`] the login server's
//!   [`Authenticator`] for `login.auth = "service"`.
//! * `serve`: the task of one service link — registration, reading the
//!   service's frames, writing, heartbeats.
//! * `instance`: one registered instance — requests and answers, events,
//!   pacing (see its docs for the cost per request).
//! * `inflight`: an instance's requests in flight and their deadlines,
//!   without a timer per request.
//! * `registry`: the live instances by service; `hash`: the rendezvous
//!   hash that picks one.
//! * `sessions`: the session table with the agent bindings; `agent`: the
//!   routing of requests and events.
//! * `auth`: the credential check through the `auth` service.
//! * `state`, `metrics`: what these parts share.
//!
//! # Registration
//!
//! The first frame of a link must be `Register`, within
//! `backend.register_timeout`. The gate refuses (with a
//! `RegisterRefused`, then closes) a major protocol version other than its
//! own ([`RegisterRefused::incompatible`](proto::backend::RegisterRefused::incompatible),
//! naming both versions; the service stops instead of retrying), an empty
//! service name or instance id, a `.` in the name, or a route not of the
//! form `service.method` (`INVALID`); and any registration once the gate is
//! shutting down (`SHUTTING_DOWN`, retryable). Otherwise it answers
//! `RegisterAck`. A registration with the instance id of a live link
//! replaces that link (most likely a restarted process whose old
//! connection is not yet known dead): the older link is closed and its
//! in-flight requests fail.
//!
//! # Routing: how the gate decides where a payload goes
//!
//! One switch, `backend.route_mode`, decides for the whole gate, never the
//! payload's content:
//!
//! * **off (default, skynet's agent model)**: every request payload goes,
//!   unchanged and with an empty route, to the user's agent instance.
//! * **on**: every request payload must be a `RouteEnvelope` (`proto/route`).
//!   A non-empty route `service.method` goes to an instance of `service`
//!   that serves that route (its registered `routes`, or any route of the
//!   service when it listed none), with the envelope's body as payload. An
//!   empty route goes to the user's agent instance, so agent mode and route
//!   mode work together on one gate (the chat example answers both). A
//!   payload that is not an envelope, a malformed route, or a route no
//!   registered instance serves gets an error response at once.
//!
//! Why not "a payload that decodes as an envelope is routed, anything else
//! goes to the agent"? Protobuf decoding is permissive: the empty payload
//! decodes as an empty envelope, and so do many byte strings of a game's
//! own encoding (any payload that happens to start with a valid field 1
//! string). Guessing would misroute some agent-mode payloads depending on
//! their bytes — a bug that shows up only for certain messages. A per-gate
//! switch is unambiguous, costs no decode in agent mode, and the client and
//! the operator both know which protocol the gate speaks.
//!
//! **Agent binding.** The agent instance of a user is chosen among the
//! routable instances of `backend.agent_service` by rendezvous hashing of
//! the uid when the session starts (or on its first request if no instance
//! existed then), and stored: the user sticks to it while it lives, even
//! when new instances join. When the bound instance's link closes (or it
//! says goodbye) the user is re-bound on its next request or session event;
//! the new instance first gets the session's `LOGIN` event. Route-mode
//! requests to other services pick an instance by the same hash of the uid
//! (stable while the set of instances is), without storing it.
//!
//! When no instance of the needed service is registered the request gets
//! an error response at once.
//!
//! # Deadlines and lost links
//!
//! Every request carries `deadline_ms`, from `backend.request_timeout`
//! (default 5 s). A request not answered by then gets an error response
//! (ok byte 0) and a `warn` log line; the late answer is dropped (counted
//! in [`BackendMetrics::late`]). When a link closes — the service
//! disconnects, breaks the framing, stays silent past
//! `backend.heartbeat_timeout`, or is replaced — every request in flight
//! on it is answered with an error response at once, and its users are
//! re-bound on their next request.
//!
//! # Session events
//!
//! Each session event goes to the user's bound agent instance and to every
//! instance registered with `all_session_events` (once each): `LOGIN` when
//! the login server places the user, `BACK` on every successful handshake
//! (the first one after the login too), `AWAY` when the connection goes,
//! `LOGOUT` with reason `logout` / `expired` / `shutdown`, or `KICKED` with
//! the kick's reason.
//!
//! # From services
//!
//! `Push` (one user, a list, or all) goes to the gate's push API; `Kick`
//! ends the session with its reason ([`MsgGate::kick`]; an empty subid
//! means the uid's current session); `Logout` ends it quietly. The gate
//! answers `Ping` with `Pong`, pings every link each heartbeat interval
//! (announced in the ack), and closes one silent for the heartbeat timeout.
//!
//! # Shutdown
//!
//! When the gate starts shutting down, every link gets a `Goodbye` and new
//! registrations are refused; the links stay up while the message gate
//! drains, so requests in flight are still answered and the final `LOGOUT`
//! events are delivered; then the links are flushed and closed.

mod agent;
mod auth;
mod dispatch;
mod hash;
mod inflight;
mod instance;
mod metrics;
pub(crate) mod pending;
mod registry;
mod serve;
mod sessions;
mod state;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::agent::BackendAgent;
pub use self::auth::ServiceAuth;
pub use self::metrics::BackendMetrics;
use self::metrics::Metrics;
use self::pending::{PendingLinks, Refusals};
use self::registry::Registry;
use self::serve::Serving;
use self::sessions::Sessions;
use self::state::BackendState;
pub use proto::link_auth::LinkSecret;

use crate::agent::Agent;
use crate::config::BackendConfig;
use crate::login::Authenticator;
use crate::net::{self, AtCapacity};
use crate::players::MsgGate;

/// The gate's backend: the listener services dial, and the registry of
/// their links. Cheap to clone.
#[derive(Clone)]
pub struct Backend {
    shared: Arc<BackendState>,
    listener: Arc<Mutex<Option<TcpListener>>>,
    addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("addr", &self.addr)
            .field("agent_service", &self.shared.cfg.agent_service)
            .field("route_mode", &self.shared.cfg.route_mode)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// A backend that will accept service links on `listener` (its
    /// `config.listen` is not used: the caller binds). Nothing is accepted
    /// until [`Backend::serve`].
    pub fn new(config: BackendConfig, listener: TcpListener, secret: LinkSecret) -> Backend {
        let addr = listener.local_addr().ok();
        Backend {
            shared: Arc::new(BackendState {
                cfg: config,
                secret,
                tls: None,
                registry: Registry::new(),
                sessions: Sessions::default(),
                metrics: Arc::new(Metrics::default()),
                refusals: Refusals::new("backend"),
                next_link: AtomicU64::new(0),
                gate_list: std::sync::Mutex::default(),
            }),
            listener: Arc::new(Mutex::new(Some(listener))),
            addr,
        }
    }

    /// Serves the links over TLS (`backend.tls_cert_file`). Call before
    /// the backend is shared.
    #[must_use]
    pub fn with_tls(mut self, tls: crate::tls::ServerTls) -> Backend {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.tls = Some(tls);
        }
        self
    }

    /// A duplicate of the listening socket, while it is not serving yet (a
    /// live upgrade hands it to the next process).
    pub fn listener_fd(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        let listener = self.listener.lock().ok()?;
        listener.as_ref()?.as_fd().try_clone_to_owned().ok()
    }

    /// Where services connect.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The settings in force.
    pub fn config(&self) -> &BackendConfig {
        &self.shared.cfg
    }

    /// The gate's agent: routes requests to services (see the module docs).
    pub fn agent(&self) -> Arc<dyn Agent> {
        Arc::new(BackendAgent {
            shared: Arc::clone(&self.shared),
        })
    }

    /// The login server's authenticator asking `backend.auth_service`,
    /// each check bounded by `timeout` (`login.auth_timeout`).
    pub fn authenticator(&self, timeout: Duration) -> Arc<dyn Authenticator> {
        Arc::new(ServiceAuth {
            shared: Arc::clone(&self.shared),
            timeout,
        })
    }

    /// Number of instances of `service` that take new work now.
    pub fn instances(&self, service: &str) -> usize {
        self.shared.registry.count(service)
    }

    /// Waits until exactly `n` instances of `service` take new work (for
    /// tests and readiness checks; no polling).
    pub async fn wait_instances(&self, service: &str, n: usize) {
        let mut changed = self.shared.registry.subscribe();
        while self.instances(service) != n {
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until at least one instance of `service` is registered.
    pub async fn wait_any(&self, service: &str) {
        let mut changed = self.shared.registry.subscribe();
        while self.instances(service) == 0 {
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Tells every linked service, and every service that links later,
    /// the cluster's gates (`(server name, backend address)`), so services
    /// configured with one gate find the others. Does nothing if the list
    /// is the one announced last.
    pub fn announce_gates(&self, gates: Vec<(String, String)>) {
        let list = proto::backend::GateList {
            gates: gates
                .into_iter()
                .map(|(name, backend)| proto::backend::GateInfo { name, backend })
                .collect(),
        };
        {
            let mut last = self
                .shared
                .gate_list
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.as_ref() == Some(&list) {
                return;
            }
            *last = Some(list.clone());
        }
        for link in self.shared.registry.all() {
            link.send(list.clone().into());
        }
    }

    /// Links refused or closed before they proved the secret, by cause
    /// (the `cause` label of `gate_backend_refused_links_total`).
    pub fn refused_links(&self) -> Vec<(&'static str, u64)> {
        self.shared.refusals.totals().to_vec()
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> BackendMetrics {
        let m = &self.shared.metrics;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BackendMetrics {
            links: self.shared.registry.all().len(),
            sessions: self.shared.sessions.len(),
            registered: get(&m.registered),
            refused: get(&m.refused),
            requests: get(&m.requests),
            answered: get(&m.answered),
            timed_out: get(&m.timed_out),
            failed_on_close: get(&m.failed_on_close),
            late: get(&m.late),
            unroutable: get(&m.unroutable),
            congested: get(&m.congested),
            pushes: get(&m.pushes),
            kicks: get(&m.kicks),
        }
    }

    /// The distribution of service answer times (seconds from sending a
    /// request to its answer), for the metrics.
    pub fn latency(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.shared.metrics.latency.clone()
    }

    /// Accepts service links until `stop` is cancelled, pushing and kicking
    /// through `gate`. When `draining` is cancelled (the gate starts
    /// shutting down) every link gets a `Goodbye` and new registrations are
    /// refused, but links stay up; `stop` (once the gate has drained) flushes
    /// and closes them, and this returns once they are closed.
    ///
    /// At most `backend.max_pending_links` links that have not proved the
    /// secret are open at once (`max_pending_per_source` from one
    /// address): that permit is taken before `accept` and moved into the
    /// link's task. A link that proves the secret trades it for one of
    /// `backend.max_links`.
    ///
    /// Call it once; a second call returns an error.
    pub async fn serve(
        &self,
        gate: MsgGate,
        draining: CancellationToken,
        stop: CancellationToken,
    ) -> io::Result<()> {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| io::Error::other("Backend::serve called twice"))?;
        let shared = &self.shared;
        tracing::info!(
            addr = ?self.addr,
            agent_service = %shared.cfg.agent_service,
            route_mode = shared.cfg.route_mode,
            "backend listening"
        );
        let serving = Arc::new(Serving {
            state: Arc::clone(shared),
            links: Arc::new(Semaphore::new(
                shared.cfg.max_links.clamp(1, Semaphore::MAX_PERMITS),
            )),
            gate,
            draining: draining.clone(),
            stop: stop.clone(),
        });
        // Accepts are bounded by the pending budget: a link moves to a
        // `max_links` slot only once it has proved the secret.
        let pending = PendingLinks::new(
            shared.cfg.max_pending_links,
            shared.cfg.max_pending_per_source,
            Arc::clone(&shared.refusals),
        );
        let tracker = TaskTracker::new();
        // Every link hears a goodbye when the gate starts draining (each
        // also says it when `stop` closes it, in case `stop` comes first).
        let goodbyes = async {
            draining.cancelled().await;
            for link in shared.registry.all() {
                link.say_goodbye(serve::GOODBYE);
            }
            std::future::pending::<()>().await;
        };
        let accepting = net::accept_loop(
            listener,
            pending.budget(),
            AtCapacity::Close,
            stop.cancelled(),
            "backend",
            |stream, addr, permit| match pending.admit(addr.ip(), permit) {
                Some(slot) => {
                    tracker.spawn(serve::run(Arc::clone(&serving), stream, addr, slot));
                }
                // Counted; the summary says it, not a line per refusal.
                None => drop(stream),
            },
        );
        let summaries = Arc::clone(&shared.refusals).summarise(stop.clone());
        tokio::select! {
            () = accepting => {}
            () = goodbyes => {}
            () = summaries => {}
        }
        tracker.close();
        tracker.wait().await;
        // Once more, so the refusals of the last second are not lost.
        shared.refusals.flush();
        tracing::info!("backend stopped");
        Ok(())
    }
}
