//! The login server's listener and per-connection driver.
//!
//! One task per connection pumps `loginproto`'s server state machine over
//! LF-framed lines. A connection permit is taken *before* `accept`, so at
//! most `login.max_connections` dialogues run and further clients wait in
//! the kernel's backlog instead of costing memory. The whole dialogue, from
//! accept to status line, runs under `login.dialogue_timeout`; the
//! authenticator call under `login.auth_timeout`.
//!
//! Differences from skynet, all invisible to a well-behaved client:
//!
//! * after the status line the server closes the connection (skynet leaves
//!   it open until the client closes, spec §4.4);
//! * a client that is silent for the whole dialogue deadline is closed
//!   without a status line (skynet has no timeout);
//! * an authenticator that does not answer in time is a `401`.
//!
//! The pieces: this module accepts and hands each connection to
//! `dialogue`, which runs it; `closing` writes the last
//! line and lingers for the client's FIN; `detach` keeps a login
//! handler running when its dialogue is dropped.
//!
//! # Cost per login
//!
//! A login is a short TCP connection, so most of its cost is the kernel's
//! (accept, six lines, close). The driver keeps its own part small:
//!
//! * one task per connection and nothing else: the login handler runs
//!   inline (it moves to a task of its own only if the dialogue is dropped
//!   while it runs, see `Detach`);
//! * a small read buffer and no write buffer (the state machine hands out
//!   complete lines, written straight to the socket);
//! * `TCP_NODELAY` is inherited from the listener where the OS does that
//!   (Linux), instead of one more system call per connection;
//! * delayed ACKs from the first line on (Linux `TCP_QUICKACK` off): every
//!   line the client sends is answered at once, so the ACK rides on the
//!   answer instead of costing a segment of its own;
//! * the status line and the FIN leave in one segment (the status is
//!   written with `MSG_MORE` on Linux, then `shutdown` pushes both);
//! * lingering reuses the read buffer and ends at once if the client's FIN
//!   is already there, without arming the linger timer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use codec::websocket::MessageStream;
use loginproto::login::{ServerConfig, StaticKey};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::admission::{Admission, AdmissionConfig, Admit};
use super::auth::Authenticator;
use super::dialogue::{DialoguePlace, Stop, connection};
use super::metrics::LoginMetrics;
use super::random::{RandomSource, ThreadRandom};
use super::throttle::{Policy, Throttle, ThrottleConfig};
use crate::config::{DEFAULT_SHUTDOWN_GRACE, LoginConfig};
use crate::login::placement::Placer;
use crate::net::web::WebPolicy;
use crate::net::{self, AtCapacity, Capacity, PerSource, RefusalLog};
use crate::reload::Live;

fn throttle(config: &LoginConfig) -> Throttle {
    Throttle::new(ThrottleConfig {
        user: Policy {
            burst: config.throttle_user_failures,
            interval: config.throttle_user_interval,
        },
        source: Policy {
            burst: config.throttle_source_failures,
            interval: config.throttle_source_interval,
        },
        logins: Policy {
            burst: config.throttle_user_logins,
            interval: config.throttle_user_login_interval,
        },
        trusted_for: config.throttle_trusted_for,
        max_users: config.throttle_max_entries,
        max_sources: config.throttle_max_entries,
    })
}

/// The login server: settings and the services it calls.
pub struct LoginServer {
    shared: LoginState,
    shutdown_grace: Duration,
}

pub(super) struct LoginState {
    /// The settings; a reload replaces them ([`LoginLimits`]), and a
    /// dialogue reads each field when it needs it.
    pub(super) config: Arc<Live<LoginConfig>>,
    /// `max_connections`, resizable while dialogues hold it.
    pub(super) capacity: Capacity,
    /// Dialogues per source address and network.
    pub(super) per_source: Arc<PerSource>,
    /// The in-process login queue, unless a shared one replaced it.
    pub(super) queue: Option<Arc<Admission>>,
    /// The key-exchange policy every dialogue starts from.
    pub(super) server: ServerConfig,
    pub(super) throttle: Throttle,
    pub(super) auth: Arc<dyn Authenticator>,
    pub(super) placer: Arc<dyn Placer>,
    pub(super) random: Arc<dyn RandomSource>,
    /// The login queue, when `admission_rate` is set.
    pub(super) admission: Option<Arc<dyn Admit>>,
    pub(super) metrics: Arc<LoginMetrics>,
    /// The dialogues holding a slot, for eviction when the slots are full.
    pub(super) dialogues: Arc<super::evict::Dialogues>,
    /// Throttled logins, summarised at most once per 10 s.
    pub(super) throttle_log: crate::net::RefusalLog,
}

impl std::fmt::Debug for LoginServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginServer")
            .field("config", &self.shared.config.load())
            .field("auth", &self.shared.auth.name())
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

impl LoginServer {
    /// A login server that authenticates with `auth` and places users with
    /// `placer` (one process: [`super::LocalPlacer`] over an [`super::OnlineTable`] the
    /// gates report ended sessions to). Randomness comes from a CSPRNG per
    /// thread seeded from the OS ([`ThreadRandom`]).
    pub fn new(
        config: LoginConfig,
        auth: Arc<dyn Authenticator>,
        placer: Arc<dyn Placer>,
    ) -> LoginServer {
        let metrics = Arc::new(LoginMetrics::default());
        if let Some(pool) = auth.hash_pool() {
            metrics.watch_pool(pool);
        }
        let queue = Arc::new(Admission::new(AdmissionConfig::of(&config)));
        LoginServer {
            shared: LoginState {
                capacity: Capacity::new(config.max_connections.max(1)),
                per_source: PerSource::with(
                    config.max_connections_per_source,
                    config.max_connections_per_network,
                    f64::from(config.new_connections_per_source),
                    config.sources,
                ),
                admission: Some(Arc::clone(&queue) as Arc<dyn Admit>),
                queue: Some(queue),
                metrics,
                dialogues: Arc::default(),
                throttle_log: crate::net::RefusalLog::new(
                    "login throttle",
                    Duration::from_secs(10),
                ),
                throttle: throttle(&config),
                server: ServerConfig {
                    allow_skynet: config.allow_skynet_suite,
                    static_key: None,
                    require_pinned: config.require_pinned,
                },
                config: Arc::new(Live::new(config)),
                auth,
                placer,
                random: Arc::new(ThreadRandom),
            },
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }

    /// Gives the server its long-term key: clients that pin its public key
    /// get a login a man in the middle cannot read or complete.
    #[must_use]
    pub fn with_server_key(mut self, key: StaticKey) -> LoginServer {
        self.shared.server.static_key = Some(key);
        self
    }

    /// How many login dialogues are in progress, readable after the
    /// server was moved into its serving task (a live upgrade waits for
    /// them to finish).
    pub fn dialogues(&self) -> Arc<dyn Fn() -> usize + Send + Sync> {
        let dialogues = Arc::clone(&self.shared.dialogues);
        Arc::new(move || dialogues.len())
    }

    /// The login metrics (register them on an operations registry).
    pub fn metrics(&self) -> Arc<LoginMetrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Replaces the login queue (a cluster's login nodes share one through
    /// Redis). Without this, `admission_rate` makes an in-process queue.
    #[must_use]
    pub fn with_admission(mut self, queue: Arc<dyn Admit>) -> LoginServer {
        self.shared.admission = Some(queue);
        self.shared.queue = None;
        self
    }

    /// The handle a configuration reload changes the server's limits
    /// through, usable while it serves.
    pub fn limits(&self) -> LoginLimits {
        LoginLimits {
            config: Arc::clone(&self.shared.config),
            capacity: self.shared.capacity.clone(),
            per_source: Arc::clone(&self.shared.per_source),
            queue: self.shared.queue.clone(),
        }
    }

    /// Replaces the random source (tests pin it to replay transcripts).
    #[must_use]
    pub fn with_random(mut self, random: Arc<dyn RandomSource>) -> LoginServer {
        self.shared.random = random;
        self
    }

    /// How long [`LoginServer::serve`] lets running dialogues finish after
    /// shutdown before it closes them. Default: 5 s.
    #[must_use]
    pub fn with_shutdown_grace(mut self, grace: Duration) -> LoginServer {
        self.shutdown_grace = grace;
        self
    }

    /// Accepts login connections until `shutdown` is cancelled; then stops
    /// accepting, lets running dialogues finish within the shutdown grace,
    /// closes the rest and returns.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        self.serve_with_web(listener, None, shutdown).await;
    }

    /// [`LoginServer::serve`], plus the same dialogue over WebSocket on
    /// `web` (`docs/PROTOCOL.md` §9): both listeners share the limits on
    /// dialogues at once and per source address.
    pub async fn serve_with_web(
        self,
        listener: TcpListener,
        web: Option<(TcpListener, Arc<WebPolicy>)>,
        shutdown: CancellationToken,
    ) {
        self.serve_listeners(listener, web, None, shutdown).await;
    }

    /// [`LoginServer::serve_with_web`], plus the same dialogue inside TLS
    /// on `tls` (`[tls] login_listen`); the TLS handshake must be done
    /// within `login.first_line_timeout`.
    pub async fn serve_listeners(
        self,
        listener: TcpListener,
        web: Option<(TcpListener, Arc<WebPolicy>)>,
        tls: Option<(TcpListener, crate::tls::ServerTls)>,
        shutdown: CancellationToken,
    ) {
        let shared = Arc::new(self.shared);
        if let Some(addr) = tls.as_ref().and_then(|(l, _)| l.local_addr().ok()) {
            info!(%addr, "login server listening for TLS clients");
        }
        let permits = shared.capacity.permits();
        let tracker = TaskTracker::new();
        // Cancelled when the grace period is over: ends every dialogue.
        let hard = CancellationToken::new();
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, auth = shared.auth.name(), "login server listening");
        }
        if let Some(addr) = web.as_ref().and_then(|(l, _)| l.local_addr().ok()) {
            info!(%addr, "login server listening for WebSocket clients");
        }
        // Each line is one complete message; do not let Nagle hold it back.
        // Linux gives accepted sockets the listener's setting.
        let inherits_nodelay = cfg!(target_os = "linux")
            && socket2::SockRef::from(&listener)
                .tcp_nodelay()
                .unwrap_or(false);
        let per_source = Arc::clone(&shared.per_source);
        let refusals = Arc::new(RefusalLog::new("login", Duration::from_secs(10)));
        let start = |stream: TcpStream,
                     addr: SocketAddr,
                     permit: Option<OwnedSemaphorePermit>,
                     via: &Via| {
            let Some(permit) = permit else { return };
            let source = match per_source.enter(addr.ip()) {
                Ok(source) => source,
                Err(refused) => {
                    refusals.refused(refused.label());
                    return;
                }
            };
            let place = DialoguePlace {
                _permit: permit,
                _source: source,
            };
            let shared = Arc::clone(&shared);
            let stop = Stop {
                soft: shutdown.clone(),
                hard: hard.clone(),
            };
            if !matches!(via, Via::Tcp) || !inherits_nodelay {
                let _ = stream.set_nodelay(true);
            }
            // The client answers each line at once and its answer
            // carries the ACK; a quick ACK would be a segment of its own.
            #[cfg(target_os = "linux")]
            let _ = socket2::SockRef::from(&stream).set_tcp_quickack(false);
            match via {
                Via::Tcp => {
                    tracker.spawn(connection(shared, stream, addr, place, stop));
                }
                Via::Tls(tls) => {
                    let tls = tls.clone();
                    tracker.spawn(async move {
                        // The TLS handshake must be done within the first
                        // line's deadline (it holds a dialogue slot that
                        // eviction cannot take back).
                        let accepted = tokio::select! {
                            accepted = timeout(shared.config.load().first_line_timeout, tls.accept(stream)) => accepted,
                            () = stop.hard.cancelled() => return,
                        };
                        match accepted {
                            Ok(Ok(stream)) => connection(shared, stream, addr, place, stop).await,
                            Ok(Err(e)) => {
                                debug!(%addr, error = %crate::logging::esc(e.to_string().as_bytes()), "TLS handshake failed");
                            }
                            Err(_) => debug!(%addr, "TLS handshake not done in time"),
                        }
                    });
                }
                Via::Web(policy) => {
                    let policy = Arc::clone(policy);
                    tracker.spawn(async move {
                        // The upgrade must be done within the first line's deadline (it
                        // holds a dialogue slot that eviction cannot take back).
                        let upgrade = tokio::select! {
                            upgraded = timeout(shared.config.load().first_line_timeout, policy.upgrade(stream, addr)) => upgraded,
                            () = stop.hard.cancelled() => return,
                        };
                        match upgrade {
                            Ok(Ok(ws)) => {
                                let stream = MessageStream::new(ws, policy.mapping());
                                connection(shared, stream, addr, place, stop).await;
                            }
                            Ok(Err(e)) => debug!(%addr, error = %e, "WebSocket upgrade failed"),
                            Err(_) => debug!(%addr, "WebSocket upgrade not done in time"),
                        }
                    });
                }
            }
        };
        let dialogues = Arc::clone(&shared.dialogues);
        let evictions = Arc::clone(&refusals);
        let config = Arc::clone(&shared.config);
        let at_capacity = AtCapacity::Evict(Arc::new(move || {
            let evicted = dialogues.evict_one(config.load().evict_silent_after);
            if evicted {
                evictions.refused("evicted_silent");
            }
            evicted
        }));
        // One accept loop per listener, each until the shutdown.
        let serve = |listener: TcpListener, what: &'static str, via: Via| {
            net::accept_loop(
                listener,
                Arc::clone(&permits),
                at_capacity.clone(),
                shutdown.cancelled(),
                what,
                move |stream, addr, permit| start(stream, addr, permit, &via),
            )
        };
        let tcp = serve(listener, "login", Via::Tcp);
        let web_loop = async {
            if let Some((listener, policy)) = web {
                serve(listener, "login (WebSocket)", Via::Web(policy)).await;
            }
        };
        let tls_loop = async {
            if let Some((listener, tls)) = tls {
                serve(listener, "login (TLS)", Via::Tls(tls)).await;
            }
        };
        tokio::join!(tcp, web_loop, tls_loop);
        tracker.close();
        if timeout(self.shutdown_grace, tracker.wait()).await.is_err() {
            info!(
                open = tracker.len(),
                "login shutdown grace over; closing dialogues"
            );
            hard.cancel();
            tracker.wait().await;
        }
        debug!("login server stopped");
    }
}

/// Changes a running login server's limits (a configuration reload; see
/// [`LoginLimits::reconfigure`]).
#[derive(Debug, Clone)]
pub struct LoginLimits {
    config: Arc<Live<LoginConfig>>,
    capacity: Capacity,
    per_source: Arc<PerSource>,
    queue: Option<Arc<Admission>>,
}

impl LoginLimits {
    /// Applies the limits of `new`; every other field keeps its value.
    /// The deadlines (`dialogue_timeout`, `first_line_timeout`,
    /// `auth_timeout`) hold for each deadline armed from now on (a
    /// dialogue's whole deadline is armed at its start); `max_connections` and the per-source bounds
    /// hold for the next connection (none open is closed); the login
    /// queue (`admission_rate`, `admission_burst`, `queue_max`,
    /// `queue_timeout`) changes at once, for logins waiting too, unless a
    /// cluster's shared queue replaced it; `evict_silent_after` holds for
    /// the next eviction.
    pub fn reconfigure(&self, new: &LoginConfig) {
        let current = self.config.load();
        let config = LoginConfig {
            max_connections: new.max_connections,
            max_connections_per_source: new.max_connections_per_source,
            max_connections_per_network: new.max_connections_per_network,
            new_connections_per_source: new.new_connections_per_source,
            dialogue_timeout: new.dialogue_timeout,
            first_line_timeout: new.first_line_timeout,
            auth_timeout: new.auth_timeout,
            evict_silent_after: new.evict_silent_after,
            admission_rate: new.admission_rate,
            admission_burst: new.admission_burst,
            queue_max: new.queue_max,
            queue_timeout: new.queue_timeout,
            ..LoginConfig::clone(&current)
        };
        self.capacity.resize(config.max_connections.max(1));
        self.per_source.set_bounds(
            config.max_connections_per_source,
            config.max_connections_per_network,
            f64::from(config.new_connections_per_source),
        );
        if let Some(queue) = &self.queue {
            queue.reconfigure(AdmissionConfig::of(&config));
        }
        self.config.store(config);
    }

    /// The settings as they apply now.
    pub fn config(&self) -> Arc<LoginConfig> {
        self.config.load()
    }
}

/// Which listener a login connection came in on.
enum Via {
    /// The plain TCP listener.
    Tcp,
    /// The WebSocket listener, with its policy.
    Web(Arc<WebPolicy>),
    /// The TLS listener, with its certificate.
    Tls(crate::tls::ServerTls),
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicU32, Ordering};

    use bytes::Bytes;
    use loginproto::login::{ServerConfig, ServerRandom};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::Instant;

    use super::*;
    use crate::login::auth::{AuthError, Credentials, DemoAuth};
    use crate::login::closing::Stream;
    use crate::login::online::{LocalPlacer, OnlineTable};
    use crate::login::placement::{GateLink, LoginRefusal, LoginRequest};
    use crate::login::random::FixedRandom;

    impl Stream for DuplexStream {
        async fn write_last(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.write_all(bytes).await
        }
    }

    /// Gate `sample` handing out subids 1, 2, 3…
    #[derive(Default)]
    struct Sample(AtomicU32);

    impl GateLink for Sample {
        fn login(
            &self,
            req: LoginRequest,
        ) -> crate::login::placement::BoxFuture<'_, Result<Bytes, LoginRefusal>> {
            Box::pin(async move {
                if req.server != "sample" {
                    return Err(LoginRefusal::UnknownServer("?".into()));
                }
                Ok(Bytes::from(
                    (self.0.fetch_add(1, Ordering::SeqCst) + 1).to_string(),
                ))
            })
        }

        fn kick(
            &self,
            _: Bytes,
            _: Bytes,
            _: Bytes,
            _: crate::login::placement::End,
        ) -> crate::login::placement::BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    /// Never answers.
    struct Stuck;

    impl Authenticator for Stuck {
        fn authenticate(
            &self,
            _: Credentials,
        ) -> crate::login::placement::BoxFuture<'_, Result<Bytes, AuthError>> {
            Box::pin(std::future::pending())
        }

        fn name(&self) -> &'static str {
            "stuck"
        }
    }

    fn shared(config: LoginConfig, auth: Arc<dyn Authenticator>) -> Arc<LoginState> {
        let placer = Arc::new(LocalPlacer {
            online: Arc::new(OnlineTable::new()),
            gates: Arc::new(Sample::default()),
            multilogin: config.multilogin,
        });
        let mut server = LoginServer::new(config, auth, placer).with_random(Arc::new(FixedRandom(
            ServerRandom {
                challenge: [0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18],
                skynet_key: [0x5e, 0x2f, 0x3a, 0x4b, 0x6c, 0x7d, 0x8e, 0x9f],
                x25519_key: [9; 32],
            },
        )));
        server.shared.server = ServerConfig::default();
        Arc::new(server.shared)
    }

    /// Runs one connection over an in-memory pipe; returns the client end
    /// and the connection task.
    fn start(shared: Arc<LoginState>) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let source = PerSource::new(1)
            .enter(SocketAddr::from(([127, 0, 0, 1], 1)).ip())
            .unwrap();
        let place = DialoguePlace {
            _permit: permit,
            _source: source,
        };
        let stop = Stop {
            soft: CancellationToken::new(),
            hard: CancellationToken::new(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let task = tokio::spawn(connection(shared, server, addr, place, stop));
        (client, task)
    }

    async fn expect(client: &mut DuplexStream, expected: &[u8]) {
        let mut got = vec![0; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }

    async fn expect_eof(client: &mut DuplexStream) {
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&rest), "");
    }

    /// Spec §4.6, then the server closes (our difference from skynet).
    async fn worked_example(client: &mut DuplexStream) {
        expect(client, b"obLD1OX2Bxg=\n").await;
        client.write_all(b"mE4UGCgyNe0=\n").await.unwrap();
        expect(client, b"xJrj5W34ITs=\n").await;
        client
            .write_all(b"c6P4IeDAXo4=\nEH1HqQmuX7xHgoao5iLQxJmFShp7rovgU1CW6aDaF7Q=\n")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn worked_example_then_close() {
        let (mut client, task) = start(shared(LoginConfig::default(), Arc::new(DemoAuth)));
        worked_example(&mut client).await;
        expect(&mut client, b"200 MQ==\n").await;
        expect_eof(&mut client).await;
        drop(client);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_is_closed_at_the_deadline_without_status() {
        let config = LoginConfig::default();
        // A client that never sends its key line is closed at the first
        // line's deadline, well before the dialogue's.
        let deadline = config.first_line_timeout;
        assert!(deadline < config.dialogue_timeout);
        let started = Instant::now();
        let (mut client, task) = start(shared(config, Arc::new(DemoAuth)));
        expect(&mut client, b"obLD1OX2Bxg=\n").await;
        expect_eof(&mut client).await;
        assert!(started.elapsed() >= deadline);
        assert!(started.elapsed() < deadline * 2);
        drop(client);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn authenticator_that_never_answers_is_401() {
        let config = LoginConfig::default();
        let limit = config.auth_timeout;
        let started = Instant::now();
        let (mut client, task) = start(shared(config, Arc::new(Stuck)));
        worked_example(&mut client).await;
        expect(&mut client, b"401 Unauthorized\n").await;
        assert!(started.elapsed() >= limit);
        expect_eof(&mut client).await;
        drop(client);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn lingering_is_bounded() {
        let (mut client, task) = start(shared(LoginConfig::default(), Arc::new(DemoAuth)));
        worked_example(&mut client).await;
        expect(&mut client, b"200 MQ==\n").await;
        expect_eof(&mut client).await;
        // The client never closes: the server stops waiting for it.
        task.await.unwrap();
        drop(client);
    }

    #[tokio::test]
    async fn over_limit_closes_without_status() {
        let config = LoginConfig {
            max_line_bytes: 16,
            ..LoginConfig::default()
        };
        let (mut client, task) = start(shared(config, Arc::new(DemoAuth)));
        expect(&mut client, b"obLD1OX2Bxg=\n").await;
        client.write_all(&[b'A'; 17]).await.unwrap();
        expect_eof(&mut client).await;
        drop(client);
        task.await.unwrap();
    }
}
