//! What a bench run found: [`BenchReport`] (throughput, latency
//! percentiles, counts, the verdict of [`BenchReport::check`]) and, for a
//! login run with queue notices, [`QueueReport`]; each written as text for
//! people and as JSON for the bench scripts.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::load;
use crate::text;

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
    /// The connections were sealed (`--seal`).
    pub sealed: bool,
    /// Open loop (`--rate`): requests per second offered, all connections.
    pub offered_rps: Option<f64>,
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
            "offered_rps": self.offered_rps,
            "sealed": self.sealed,
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
                if let Some(offered) = self.offered_rps {
                    lines.push(format!(
                        "open loop  {offered:.0} requests/s offered, {:.1} % achieved; latency from when each was due",
                        if offered > 0.0 { 100.0 * self.rps() / offered } else { 0.0 }
                    ));
                }
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
