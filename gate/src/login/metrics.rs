//! The login server's metrics (Prometheus, `prometheus-client`): logins by
//! suite and status, how long the dialogues took, logins throttled by
//! reason, and the password hashing pool's workers, queue and memory.
//! Registered on the operations listener's registry (`crate::ops`).

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::hashing::HashPool;
use super::throttle::Throttled;

/// The labels of a finished login: a bounded set (two suites and `none`,
/// the status codes and `none`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    /// `skynet`, `x25519`, or `none` (ended before the key line).
    pub suite: &'static str,
    /// The status code sent, or `none` (closed, timed out, cut).
    pub status: &'static str,
}

/// The label of a throttled login: why.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThrottleLabels {
    /// `user`, `source` or `logins`.
    reason: &'static str,
}

/// The login server's metrics. Cheap to update; shared by every dialogue.
#[derive(Debug)]
pub struct LoginMetrics {
    logins: Family<LoginLabels, Counter>,
    duration: Histogram,
    throttled: Family<ThrottleLabels, Counter>,
    /// The authenticator's hashing pool, read at scrape time.
    pool: Arc<OnceLock<HashPool>>,
}

impl Default for LoginMetrics {
    fn default() -> Self {
        LoginMetrics {
            logins: Family::default(),
            // 1 ms .. ~16 s.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            throttled: Family::default(),
            pool: Arc::default(),
        }
    }
}

impl LoginMetrics {
    /// Counts one finished dialogue.
    pub fn record(&self, labels: LoginLabels, seconds: f64) {
        self.logins.get_or_create(&labels).inc();
        self.duration.observe(seconds);
    }

    /// Counts one login the throttle answered.
    pub fn throttled(&self, why: Throttled) {
        let reason = match why {
            Throttled::User => "user",
            Throttled::Source => "source",
            Throttled::Logins => "logins",
        };
        self.throttled
            .get_or_create(&ThrottleLabels { reason })
            .inc();
    }

    /// Exports `pool`'s numbers (the first pool set stays).
    pub fn watch_pool(&self, pool: HashPool) {
        let _ = self.pool.set(pool);
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
        registry.register(
            "gate_login_throttled",
            "Logins answered by the throttle before the password was checked, by reason",
            self.throttled.clone(),
        );
        registry.register_collector(Box::new(PoolCollector(Arc::clone(&self.pool))));
    }
}

/// Reads the hashing pool on each scrape.
#[derive(Debug)]
struct PoolCollector(Arc<OnceLock<HashPool>>);

impl Collector for PoolCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(pool) = self.0.get() else {
            return Ok(());
        };
        let stats = pool.stats();
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let gauges = [
            (
                "gate_login_hash_workers",
                "Threads checking argon2 passwords",
                stats.workers,
            ),
            (
                "gate_login_hash_running",
                "Password checks running now",
                stats.running,
            ),
            (
                "gate_login_hash_queued",
                "Password checks waiting for a hashing thread",
                stats.queued,
            ),
            (
                "gate_login_hash_memory_bytes",
                "Bytes of argon2 memory the hashing threads hold",
                stats.memory_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(as_i64(value));
            g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let busy = ConstCounter::new(stats.busy);
        busy.encode(e.encode_descriptor(
            "gate_login_hash_busy",
            "Password checks refused (503) because the hashing queue was full",
            None,
            busy.metric_type(),
        )?)
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
