//! `client bench`: many simulated players against a gate (or against the raw
//! framed echo server, as the baseline), with every response checked.
//!
//! The coordinator here sets up the worker threads of `load`, switches the
//! phases (setup → warmup → measure → stop), shows progress, and turns the
//! merged counts into a [`BenchReport`]: requests/s, latency percentiles
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

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{mpsc, oneshot, watch};

use codec::MAX_RESPONSE_CONTENT;

use self::load::{Kind, LoadState, MEASURE, Plan, STOP, Stats, WARMUP};
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
        if self.push_fanout && self.raw {
            return Err("--push-fanout needs the gate (pushes), not --raw".into());
        }
        Ok(())
    }
}

/// The outcome of a bench run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// `echo`, `logins`, `idle` or `fanout`.
    pub mode: &'static str,
    /// `gate` or `raw`.
    pub target: &'static str,
    /// The address driven.
    pub addr: String,
    /// The suite (gate runs).
    pub suite: &'static str,
    /// Connections asked for.
    pub conns: usize,
    /// Connections set up (for --logins: clients).
    pub established: u64,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Payload bytes.
    pub size: usize,
    /// Worker threads.
    pub workers: usize,
    /// Time to set up the connections.
    pub setup: Duration,
    /// Warmup length.
    pub warmup: Duration,
    /// Length of the measured window.
    pub measured: Duration,
    /// Responses (logins; pushes for a fan-out) completed in the measured
    /// window.
    pub requests: u64,
    /// Requests sent in total (warmup and drain included); for a fan-out,
    /// pushes due: messages × members.
    pub sent: u64,
    /// Responses received in total; for a fan-out, pushes delivered.
    pub received: u64,
    /// Fan-out: messages the speaker sent (0 otherwise).
    pub said: u64,
    /// Wrong responses, failed logins, failed connections.
    pub errors: u64,
    /// Requests never answered.
    pub lost: u64,
    /// Latencies in µs of the measured window.
    pub latency: Histogram<u64>,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Logins with queue notices: what the queue did to them.
    pub queue: Option<QueueReport>,
}

/// The login queue as a `--logins --queue-notices` run saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueReport {
    /// Logins that finished.
    pub logins: u64,
    /// Of those, how many were queued (got a notice).
    pub queued: u64,
    /// The deepest first position seen.
    pub max_position: u64,
    /// Logins admitted more than [`ORDER_SLACK`] before a login that was
    /// queued before them (first come, first served is the rule).
    pub out_of_order: u64,
    /// The most any login was admitted before one queued before it, in ms.
    pub worst_inversion_ms: u64,
}

/// How much earlier than a login queued before it (a lower number in the
/// server's arrival order, from its notices) a login may be admitted (its
/// line 3 arrive) before it counts as out of order: the server admits in
/// order, but the client sees it through the network and its own busy
/// reading of thousands of connections: with 5,000 clients arriving at
/// once on two shared cores, both processes are saturated for the first
/// half second, and line 3s sent then arrive up to ~150 ms out of order
/// (never later in the run). The worst inversion is reported either way.
pub const ORDER_SLACK: Duration = Duration::from_millis(250);

impl QueueReport {
    pub(crate) fn from_logins(logins: &[load::QueuedLogin]) -> QueueReport {
        let mut queued: Vec<(u64, u64)> = logins
            .iter()
            .filter_map(|l| l.number.map(|n| (n, l.admitted_ns)))
            .collect();
        queued.sort_unstable();
        let slack = u64::try_from(ORDER_SLACK.as_nanos()).unwrap_or(u64::MAX);
        let mut latest_before = 0u64;
        let mut out_of_order = 0;
        let mut worst = 0u64;
        for &(_, done) in &queued {
            worst = worst.max(latest_before.saturating_sub(done));
            if done.saturating_add(slack) < latest_before {
                out_of_order += 1;
            }
            latest_before = latest_before.max(done);
        }
        QueueReport {
            logins: logins.len() as u64,
            queued: queued.len() as u64,
            max_position: logins.iter().filter_map(|l| l.position).max().unwrap_or(0),
            out_of_order,
            worst_inversion_ms: worst / 1_000_000,
        }
    }
}

impl BenchReport {
    /// Requests (logins) per second in the measured window.
    pub fn rps(&self) -> f64 {
        let secs = self.measured.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// `Err` with a one-line reason when anything was wrong or lost, or
    /// nothing was set up.
    pub fn check(&self) -> Result<(), String> {
        if self.errors > 0 || self.lost > 0 {
            let first = self
                .error_samples
                .first()
                .map(|s| format!("; first error: {s}"))
                .unwrap_or_default();
            return Err(format!(
                "{} errors, {} lost responses{first}",
                self.errors, self.lost
            ));
        }
        if self.established == 0 {
            return Err("no connection could be set up".into());
        }
        if let Some(q) = self.queue
            && q.out_of_order > 0
        {
            return Err(format!(
                "{} logins admitted out of queue order",
                q.out_of_order
            ));
        }
        Ok(())
    }

    fn quantile_us(&self, q: f64) -> u64 {
        if self.latency.is_empty() {
            0
        } else {
            self.latency.value_at_quantile(q)
        }
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": self.mode,
            "target": self.target,
            "addr": self.addr,
            "suite": self.suite,
            "conns": self.conns,
            "established": self.established,
            "depth": self.depth,
            "size": self.size,
            "workers": self.workers,
            "setup_s": self.setup.as_secs_f64(),
            "warmup_s": self.warmup.as_secs_f64(),
            "duration_s": self.measured.as_secs_f64(),
            "requests": self.requests,
            "rps": self.rps().round(),
            "said": self.said,
            "sent": self.sent,
            "received": self.received,
            "errors": self.errors,
            "lost": self.lost,
            "p50_us": self.quantile_us(0.5),
            "p90_us": self.quantile_us(0.9),
            "p99_us": self.quantile_us(0.99),
            "p999_us": self.quantile_us(0.999),
            "max_us": if self.latency.is_empty() { 0 } else { self.latency.max() },
            "mean_us": if self.latency.is_empty() { 0.0 } else { (self.latency.mean() * 10.0).round() / 10.0 },
            "error_samples": self.error_samples,
            "queue": self.queue.map(|q| serde_json::json!({
                "logins": q.logins,
                "queued": q.queued,
                "max_position": q.max_position,
                "out_of_order": q.out_of_order,
                "worst_inversion_ms": q.worst_inversion_ms,
            })),
            "ok": self.check().is_ok(),
        })
    }

    /// The latency distribution in HdrHistogram's percentile format
    /// (`.hgrm`: value, percentile, total count, 1/(1-percentile); values in
    /// milliseconds), five steps per halving of the remaining tail.
    pub fn hgrm(&self) -> String {
        use std::fmt::Write;
        let ms = |us: f64| us / 1000.0;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
        let mut total = 0u64;
        for v in self.latency.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let inverse = if q < 1.0 {
                format!("{:14.2}", 1.0 / (1.0 - q))
            } else {
                format!("{:>14}", "inf")
            };
            let _ = writeln!(
                out,
                "{:12.3} {:14.12} {:10} {inverse}",
                ms(v.value_iterated_to() as f64),
                q,
                total
            );
        }
        let (mean, stdev, max) = if self.latency.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            (
                ms(self.latency.mean()),
                ms(self.latency.stdev()),
                ms(self.latency.max() as f64),
            )
        };
        let _ = writeln!(
            out,
            "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]\n#[Max     = {max:12.3}, Total count    = {:12}]",
            self.latency.len()
        );
        out
    }

    /// The report for people, several lines.
    pub fn human(&self) -> String {
        let us = |v: u64| text::duration(Duration::from_micros(v));
        let mut lines = Vec::new();
        let target = if self.target == "raw" {
            format!("raw echo {}", self.addr)
        } else {
            format!("gate {} ({} suite)", self.addr, self.suite)
        };
        match self.mode {
            "logins" => lines.push(format!(
                "bench      logins against {target}: {} concurrent clients, {} workers",
                self.conns, self.workers
            )),
            "idle" => lines.push(format!(
                "bench      idle sessions against {target}: {} sessions, {} workers",
                self.conns, self.workers
            )),
            "fanout" => lines.push(format!(
                "bench      push fan-out against {target}: 1 speaker, {} members, {} messages in flight, {} workers",
                self.conns, self.depth, self.workers
            )),
            _ => lines.push(format!(
                "bench      {target}: {} conns x depth {}, {}-byte payload, {} workers",
                self.conns, self.depth, self.size, self.workers
            )),
        }
        if self.mode != "logins" {
            lines.push(format!(
                "setup      {} of {} connections in {}",
                self.established,
                self.conns,
                text::duration(self.setup)
            ));
        }
        match self.mode {
            "idle" => lines.push(format!(
                "held       {} sessions for {}",
                self.established,
                text::duration(self.measured)
            )),
            mode => {
                let unit = match mode {
                    "logins" => "logins",
                    "fanout" => "pushes",
                    _ => "requests",
                };
                lines.push(format!(
                    "measured   {} after {} warmup",
                    text::duration(self.measured),
                    text::duration(self.warmup)
                ));
                lines.push(format!(
                    "{unit:<10} {} ({:.0} {unit}/s)",
                    self.requests,
                    self.rps()
                ));
                if let Some(q) = &self.queue {
                    lines.push(format!(
                        "queue      {} of {} logins waited (deepest position {}), {} admitted out of queue order (worst by {} ms)",
                        q.queued, q.logins, q.max_position, q.out_of_order, q.worst_inversion_ms
                    ));
                }
                lines.push(format!(
                    "latency    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                    us(self.quantile_us(0.5)),
                    us(self.quantile_us(0.9)),
                    us(self.quantile_us(0.99)),
                    us(self.quantile_us(0.999)),
                    us(if self.latency.is_empty() {
                        0
                    } else {
                        self.latency.max()
                    }),
                ));
            }
        }
        if self.mode == "fanout" {
            lines.push(format!(
                "checked    {} messages said, pushes due {}, delivered {}, errors {}, lost {}",
                self.said, self.sent, self.received, self.errors, self.lost
            ));
        } else {
            lines.push(format!(
                "checked    sent {}, received {}, errors {}, lost {}",
                self.sent, self.received, self.errors, self.lost
            ));
        }
        for sample in &self.error_samples {
            lines.push(format!("error      {sample}"));
        }
        lines.push(match self.check() {
            Ok(()) => "result     OK".to_owned(),
            Err(reason) => format!("result     FAILED: {reason}"),
        });
        lines.join("\n")
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
                println!("{}", report.to_json());
            } else {
                println!("{}", report.human());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_report_counts_logins_admitted_before_one_queued_earlier() {
        let ms = 1_000_000;
        let login = |number: Option<u64>, position: Option<u64>, at_ms: u64| load::QueuedLogin {
            position,
            number,
            admitted_ns: at_ms * ms,
        };
        let logins = [
            login(None, None, 1),
            login(Some(5), Some(0), 10),
            login(Some(6), Some(1), 220),
            // Queued after 6, admitted 200 ms before it: within the slack.
            login(Some(7), Some(2), 20),
            login(Some(8), Some(3), 700),
            // Queued after 8, admitted 600 ms before it: out of order.
            login(Some(9), Some(4), 100),
        ];
        let report = QueueReport::from_logins(&logins);
        assert_eq!(report.logins, 6);
        assert_eq!(report.queued, 5);
        assert_eq!(report.max_position, 4);
        assert_eq!(report.out_of_order, 1);
        assert_eq!(report.worst_inversion_ms, 600);
    }
}
