//! The login server's metrics (Prometheus, `prometheus-client`): logins by
//! suite and status, and how long the dialogues took. Registered on the
//! operations listener's registry (`crate::ops`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The labels of a finished login: a bounded set (two suites and `none`,
/// the status codes and `none`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    /// `skynet`, `x25519`, or `none` (ended before the key line).
    pub suite: &'static str,
    /// The status code sent, or `none` (closed, timed out, cut).
    pub status: &'static str,
}

/// The login server's metrics. Cheap to update; shared by every dialogue.
#[derive(Debug)]
pub struct LoginMetrics {
    logins: Family<LoginLabels, Counter>,
    duration: Histogram,
}

impl Default for LoginMetrics {
    fn default() -> Self {
        LoginMetrics {
            logins: Family::default(),
            // 1 ms .. ~16 s.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }
}

impl LoginMetrics {
    /// Counts one finished dialogue.
    pub fn record(&self, labels: LoginLabels, seconds: f64) {
        self.logins.get_or_create(&labels).inc();
        self.duration.observe(seconds);
    }

    /// Registers the metrics on `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gate_logins",
            "Login dialogues finished, by suite and status",
            self.logins.clone(),
        );
        registry.register_with_unit(
            "gate_login_duration",
            "Time from accept to the status line (queue waits included)",
            Unit::Seconds,
            self.duration.clone(),
        );
    }
}

/// The label text of a status code.
pub fn status_label(code: Option<u16>) -> &'static str {
    match code {
        Some(200) => "200",
        Some(401) => "401",
        Some(403) => "403",
        Some(406) => "406",
        Some(429) => "429",
        Some(503) => "503",
        Some(_) => "other",
        None => "none",
    }
}
