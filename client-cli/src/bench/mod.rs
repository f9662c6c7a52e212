//! `client bench`: many simulated players against a gate (or against the raw
//! framed echo server, as the baseline), with every response checked.
//!
//! The coordinator here sets up the worker threads of `load`, switches the
//! phases (setup → warmup → measure → stop), shows progress, and turns the
//! merged counts into a [`BenchReport`] (`report`, which also writes it as
//! text or JSON): requests/s, latency percentiles
//! from an HDR histogram, and sent / received / errors / lost. A run with an
//! error or a lost response fails ([`BenchReport::check`]).
//!
//! `--push-fanout` measures server push instead: pushes delivered per
//! second to `--conns` opted-in members and the latency from a message to
//! each delivery (see `fanout`). It needs an agent that pushes what one user
//! says to everyone who joined — the chat example service, or any agent
//! with the same two requests (`--fanout-join`, `--fanout-say`).

mod echo;
mod fanout;
mod load;
mod open;
mod report;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{mpsc, oneshot, watch};

use codec::MAX_RESPONSE_CONTENT;

use self::load::{Kind, LoadState, MEASURE, Plan, STOP, Stats, WARMUP};
pub use self::report::{BenchReport, ORDER_SLACK, QueueReport};
use crate::login::SuiteName;
use crate::text;

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// Options of `client bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchCmd {
    /// Address of the login server, `host:port` or `ws://host:port` for
    /// WebSocket (not used with --raw).
    #[arg(
        long = "login",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:8001"
    )]
    pub login: String,
    /// Address of the message gate, `host:port` or `ws://host:port` for
    /// WebSocket; with --raw, of the raw framed echo server (TCP).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8888")]
    pub gate: String,
    /// Gate server name to log in to.
    #[arg(long, value_name = "NAME", default_value = "sample")]
    pub server: String,
    /// Player i logs in as user `P` followed by i (bench0, bench1, …).
    #[arg(long, value_name = "P", default_value = "bench")]
    pub user_prefix: String,
    /// Password of every player.
    #[arg(long, value_name = "PW", default_value = "password")]
    pub password: String,
    /// Crypt suite of the logins and handshakes.
    #[arg(long, value_enum, default_value_t = SuiteName::X25519)]
    pub suite: SuiteName,
    /// Connections (players); with --logins, clients logging in concurrently.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub conns: usize,
    /// Requests in flight per connection (pipelining); at most 65536 (the
    /// gate closes a connection above its max_inflight_per_user, 128 by default).
    #[arg(long, value_name = "D", default_value_t = 1)]
    pub depth: usize,
    /// Request payload in bytes (at most 65530).
    #[arg(long, value_name = "BYTES", default_value_t = 16)]
    pub size: usize,
    /// How long to measure after the warmup (250ms, 1.5s, 10 = seconds); with
    /// --idle, how long to hold the sessions.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = text::parse_duration, conflicts_with = "requests")]
    pub duration: Duration,
    /// Stop after N requests (logins with --logins) in total instead of after
    /// --duration; those sent during a warmup count. [default: unset]
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Load before measuring starts; not counted in the figures. [default: 1,
    /// or 0 with --requests]
    #[arg(long, value_name = "SECS", value_parser = text::parse_duration)]
    pub warmup: Option<Duration>,
    /// Measure logins/s instead of messages: each of --conns clients logs in
    /// again and again (the gate kicks the previous session each time).
    #[arg(long, conflicts_with_all = ["raw", "idle"])]
    pub logins: bool,
    /// With --logins: ask the login server for queue notices (x25519) and
    /// report the queue: how many waited, the deepest position, and logins
    /// admitted out of queue order (their line 3 more than 250 ms before
    /// that of a login queued before them; the worst inversion is shown).
    #[arg(long, requires = "logins")]
    pub queue_notices: bool,
    /// Talk to a raw framed echo server (no login, no handshake): the baseline.
    #[arg(long)]
    pub raw: bool,
    /// Log in --conns players, connect and handshake, then hold the sessions
    /// idle for --duration (no requests) and check none was closed. (Echo
    /// and idle runs handshake like plain skynet clients, so the gate's
    /// idle timeout for opted-in connections does not apply.) Prints
    /// `ready N` on stderr once all are up (for memory measurements).
    #[arg(long)]
    pub idle: bool,
    /// With --idle: handshake with the extension field `v=1` (opted in), so
    /// the gate's idle timeout for opted-in connections applies to the
    /// sessions (the client sends no heartbeat).
    #[arg(long, requires = "idle")]
    pub opt_in: bool,
    /// Echo (or --idle): handshake opted in and ask for the sealed channel
    /// (x25519 suite): every request and answer is sealed with
    /// ChaCha20-Poly1305, to measure what sealing costs.
    #[arg(long, conflicts_with_all = ["raw", "logins", "push_fanout"])]
    pub seal: bool,
    /// Echo in an open loop: every connection sends this many requests per
    /// second on schedule (connections spread over the period), whether or
    /// not its answers have come, as game clients do; --depth bounds the
    /// requests in flight per connection. Latency counts from when a
    /// request was due, so a server that falls behind shows in it
    /// (coordinated omission corrected). The report gives the offered and
    /// the achieved rate. Fractions are allowed (0.5: one every 2 s).
    #[arg(long, value_name = "PER_SECOND", conflicts_with_all = ["logins", "idle", "push_fanout"])]
    pub rate: Option<f64>,
    /// Print `measuring` on stderr when the measured window starts and
    /// `measured` when it ends, so a script can take the server's CPU time
    /// over the window alone (setup and warmup left out).
    #[arg(long)]
    pub mark_window: bool,
    /// With --idle: close each connection right after its handshake, so the
    /// sessions are away (waiting in their reconnect window) and nothing is
    /// held open.
    #[arg(long, requires = "idle")]
    pub away: bool,
    /// Measure push fan-out: every connection opts in to the gate's
    /// extensions and sends --fanout-join once; then connection 0 sends
    /// `<--fanout-say> fanout:<n>` requests (--depth of them whose own push
    /// has not come back yet) and every connection checks and counts the
    /// pushes carrying `fanout:<n>`. Reports pushes delivered/s and the
    /// latency from the message to each delivery; --requests counts
    /// messages. Needs an agent that pushes what is said to every member,
    /// the speaker included: e.g. the chat example service as the gate's
    /// agent service (`cargo run -p service --example chat`).
    #[arg(long, conflicts_with_all = ["raw", "idle", "logins"])]
    pub push_fanout: bool,
    /// The request every fan-out connection sends once before the load.
    #[arg(long, value_name = "TEXT", default_value = "join bench")]
    pub fanout_join: String,
    /// The fan-out speaker's request, followed by ` fanout:<n>`.
    #[arg(long, value_name = "TEXT", default_value = "say")]
    pub fanout_say: String,
    /// Print one JSON object instead of the text report (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Also write the latency distribution to FILE as an HdrHistogram
    /// percentile file (`.hgrm`, values in milliseconds), for plotting.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<std::path::PathBuf>,
    /// Worker threads driving the connections (each a single-threaded
    /// runtime with one task for all its connections). [default: cores]
    #[arg(long, value_name = "N", default_value_t = default_workers(), hide_default_value = true)]
    pub workers: usize,
    /// A connection that gets no response for this long while requests are in
    /// flight gives up; those requests count as lost.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = text::parse_duration)]
    pub response_timeout: Duration,
    /// Logins + handshakes run at once per worker while connections are set up.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub setup_concurrency: usize,
    /// Deadline of each login, connect and handshake during setup.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = text::parse_duration)]
    pub timeout: Duration,
    /// Dial the gate from these local addresses, connection i from the
    /// (i mod n)-th (e.g. 127.0.0.2,127.0.0.3): one source address gives
    /// about 28,000 connections to one port. [default: the system's choice]
    #[arg(long, value_name = "IP,...", value_delimiter = ',')]
    pub source_addrs: Vec<std::net::IpAddr>,
}

impl BenchCmd {
    /// Options for a run against `gate` with every default (for tests and
    /// embedding: adjust the fields, then call [`bench()`]).
    pub fn new(gate: &str) -> BenchCmd {
        BenchCmd {
            login: "127.0.0.1:8001".into(),
            gate: gate.to_owned(),
            server: "sample".into(),
            user_prefix: "bench".into(),
            password: "password".into(),
            suite: SuiteName::X25519,
            conns: 64,
            depth: 1,
            size: 16,
            duration: Duration::from_secs(10),
            requests: None,
            warmup: None,
            logins: false,
            queue_notices: false,
            raw: false,
            idle: false,
            opt_in: false,
            seal: false,
            rate: None,
            mark_window: false,
            away: false,
            push_fanout: false,
            fanout_join: "join bench".into(),
            fanout_say: "say".into(),
            json: false,
            hgrm: None,
            workers: default_workers(),
            response_timeout: Duration::from_secs(5),
            setup_concurrency: 32,
            timeout: Duration::from_secs(10),
            source_addrs: Vec::new(),
        }
    }

    /// The warmup in effect: as given, else 1 s (none with --requests).
    pub fn warmup(&self) -> Duration {
        self.warmup.unwrap_or(if self.requests.is_some() {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        })
    }

    fn kind(&self) -> Kind {
        if self.logins {
            Kind::Logins
        } else if self.idle {
            Kind::Idle
        } else if self.push_fanout {
            Kind::Fanout
        } else {
            Kind::Echo
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.conns == 0 {
            return Err("--conns must be at least 1".into());
        }
        if !(1..=65536).contains(&self.depth) {
            return Err("--depth must be 1..=65536".into());
        }
        if self.size > MAX_RESPONSE_CONTENT {
            return Err(format!(
                "--size {} does not fit: an echo carries at most {MAX_RESPONSE_CONTENT} bytes",
                self.size
            ));
        }
        if self.workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        if self.requests == Some(0) {
            return Err("--requests must be at least 1".into());
        }
        if self.idle && self.requests.is_some() {
            return Err("--idle holds sessions for --duration; --requests does not apply".into());
        }
        if self.seal && self.suite != SuiteName::X25519 {
            return Err("--seal needs the x25519 suite (skynet's keys cannot seal)".into());
        }
        if self
            .rate
            .is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 1_000_000.0))
        {
            return Err("--rate must be a number of requests per second above 0".into());
        }
        if self.push_fanout && self.raw {
            return Err("--push-fanout needs the gate (pushes), not --raw".into());
        }
        Ok(())
    }
}

/// Runs a bench; `progress` shows a progress bar on stderr (only drawn on a
/// terminal). `Err` only for invalid options.
pub async fn bench(cmd: &BenchCmd, progress: bool) -> Result<BenchReport, String> {
    cmd.validate()?;
    let kind = cmd.kind();
    let plan = Arc::new(Plan {
        kind,
        raw: cmd.raw,
        login_addr: cmd.login.clone(),
        gate_addr: cmd.gate.clone(),
        server: cmd.server.clone(),
        user_prefix: cmd.user_prefix.clone(),
        password: cmd.password.clone(),
        suite: cmd.suite.into(),
        conns: cmd.conns,
        depth: cmd.depth,
        size: cmd.size,
        requests: cmd.requests,
        response_timeout: cmd.response_timeout,
        setup_concurrency: cmd.setup_concurrency,
        timeout: cmd.timeout,
        fanout_join: cmd.fanout_join.clone(),
        fanout_say: cmd.fanout_say.clone(),
        source_addrs: cmd.source_addrs.clone(),
        opt_in: cmd.opt_in,
        seal: cmd.seal,
        rate: cmd.rate,
        away: cmd.away,
        queue_notices: cmd.queue_notices,
    });
    let shared = Arc::new(LoadState::new(kind));
    let workers = cmd.workers.min(cmd.conns).max(1);
    let (phase_tx, phase_rx) = watch::channel(load::SETUP);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut done = Vec::with_capacity(workers);
    let setup_started = Instant::now();
    for w in 0..workers {
        let ids: Vec<usize> = (w..cmd.conns).step_by(workers).collect();
        let (plan, shared, ready, phase) = (
            Arc::clone(&plan),
            Arc::clone(&shared),
            ready_tx.clone(),
            phase_rx.clone(),
        );
        let (tx, rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("bench-{w}"))
            .spawn(move || {
                let _ = tx.send(load::worker(ids, plan, shared, ready, phase));
            });
        if let Err(e) = spawned {
            return Err(format!("cannot start worker thread: {e}"));
        }
        done.push(rx);
    }
    drop(ready_tx);
    let mut established = 0;
    for _ in 0..workers {
        match ready_rx.recv().await {
            Some(ready) => established += ready.established,
            None => break,
        }
    }
    let setup = setup_started.elapsed();

    let by_count = cmd.requests.is_some();
    let bar = progress_bar(cmd, progress && !cmd.json && established > 0);
    let set_phase = |phase: u8| {
        shared.phase.store(phase, Ordering::Relaxed);
        let _ = phase_tx.send(phase);
    };
    let mut all_done = futures::future::join_all(done);
    let mut finished: Option<Vec<Result<Stats, oneshot::error::RecvError>>> = None;
    let started = Instant::now();
    let measured;
    if established == 0 {
        set_phase(STOP);
        measured = Duration::ZERO;
    } else if kind == Kind::Idle {
        eprintln!("ready {established}");
        set_phase(MEASURE);
        let measure_started = Instant::now();
        tick_until(
            &bar,
            &shared,
            started,
            Some(started + cmd.duration),
            &mut all_done,
            &mut finished,
            by_count,
        )
        .await;
        measured = measure_started.elapsed();
        set_phase(STOP);
    } else {
        // Without a warmup the load starts measured, so no response can slip
        // in between the two phases.
        if !cmd.warmup().is_zero() {
            set_phase(WARMUP);
            tick_until(
                &bar,
                &shared,
                started,
                Some(started + cmd.warmup()),
                &mut all_done,
                &mut finished,
                by_count,
            )
            .await;
        }
        set_phase(MEASURE);
        if cmd.mark_window {
            eprintln!("measuring");
        }
        let measure_started = Instant::now();
        let end = cmd
            .requests
            .is_none()
            .then(|| measure_started + cmd.duration);
        tick_until(
            &bar,
            &shared,
            started,
            end,
            &mut all_done,
            &mut finished,
            by_count,
        )
        .await;
        measured = measure_started.elapsed();
        set_phase(STOP);
        if cmd.mark_window {
            eprintln!("measured");
        }
    }
    let results = match finished {
        Some(results) => results,
        None => all_done.await,
    };
    bar.finish_and_clear();

    let mut total = Stats::new();
    for result in results {
        match result {
            Ok(stats) => total.merge(&stats),
            Err(_) => {
                total.errors += 1;
                total.samples.push("a worker thread panicked".into());
            }
        }
    }
    Ok(BenchReport {
        mode: match kind {
            Kind::Echo => "echo",
            Kind::Logins => "logins",
            Kind::Idle => "idle",
            Kind::Fanout => "fanout",
        },
        target: if cmd.raw { "raw" } else { "gate" },
        addr: if cmd.logins {
            cmd.login.clone()
        } else {
            cmd.gate.clone()
        },
        suite: if cmd.raw { "none" } else { plan.suite.name() },
        sealed: cmd.seal,
        offered_rps: cmd.rate.map(|r| r * cmd.conns as f64),
        conns: cmd.conns,
        established: if kind == Kind::Logins {
            cmd.conns as u64
        } else {
            total.established
        },
        depth: cmd.depth,
        size: cmd.size,
        workers,
        setup,
        warmup: cmd.warmup(),
        measured,
        requests: total.measured,
        sent: total.sent,
        received: total.received,
        said: total.said,
        errors: total.errors,
        lost: total.lost,
        queue: cmd
            .queue_notices
            .then(|| QueueReport::from_logins(&total.queue)),
        latency: total.hist,
        error_samples: total.samples,
    })
}

/// Updates the progress bar until `end`, or until every worker finished
/// (their results are then left in `finished`).
async fn tick_until<F>(
    bar: &ProgressBar,
    shared: &LoadState,
    started: Instant,
    end: Option<Instant>,
    all_done: &mut F,
    finished: &mut Option<F::Output>,
    by_count: bool,
) where
    F: std::future::Future + Unpin,
{
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let mut last = (Instant::now(), shared.received.load(Ordering::Relaxed));
    let sleep_end = async {
        match end {
            Some(end) => tokio::time::sleep_until(end.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_end);
    if finished.is_some() {
        return;
    }
    loop {
        tokio::select! {
            () = &mut sleep_end => return,
            results = &mut *all_done, if finished.is_none() => {
                // Every connection is done (count reached, or all failed):
                // nothing left to wait for.
                *finished = Some(results);
                return;
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                let received = shared.received.load(Ordering::Relaxed);
                let rate = (received - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, received);
                if by_count {
                    bar.set_position(received);
                } else {
                    bar.set_position(now.duration_since(started).as_millis() as u64);
                }
                bar.set_message(format!(
                    "{received} done, {rate:.0}/s, {} errors",
                    shared.errors.load(Ordering::Relaxed)
                ));
            }
        }
    }
}

fn progress_bar(cmd: &BenchCmd, show: bool) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let length = match cmd.requests {
        Some(n) if cmd.push_fanout => n.saturating_mul(cmd.conns as u64),
        Some(n) => n,
        None => (cmd.warmup() + cmd.duration).as_millis() as u64,
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
    {
        bar.set_style(style);
    }
    bar
}

/// `client bench`: prints the report (text or `--json`); exit code 0 only
/// when nothing was wrong or lost.
pub async fn run(cmd: BenchCmd) -> ExitCode {
    match bench(&cmd, true).await {
        Ok(report) => {
            if let Some(path) = &cmd.hgrm
                && let Err(e) = std::fs::write(path, report.hgrm())
            {
                eprintln!("error: cannot write {}: {e}", path.display());
                return ExitCode::from(2);
            }
            if cmd.json {
                outln!("{}", report.to_json());
            } else {
                outln!("{}", report.human());
            }
            if report.check().is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
