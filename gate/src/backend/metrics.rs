//! The backend's counters.

use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counters of every link, since the backend was made.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Seconds from sending a request to a service to its answer.
    pub(crate) latency: prometheus_client::metrics::histogram::Histogram,
    pub(crate) registered: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) failed_on_close: AtomicU64,
    pub(crate) late: AtomicU64,
    pub(crate) unroutable: AtomicU64,
    pub(crate) congested: AtomicU64,
    pub(crate) pushes: AtomicU64,
    pub(crate) kicks: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            // 100 µs .. ~13 s.
            latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 18),
            ),
            registered: AtomicU64::default(),
            refused: AtomicU64::default(),
            requests: AtomicU64::default(),
            answered: AtomicU64::default(),
            timed_out: AtomicU64::default(),
            failed_on_close: AtomicU64::default(),
            late: AtomicU64::default(),
            unroutable: AtomicU64::default(),
            congested: AtomicU64::default(),
            pushes: AtomicU64::default(),
            kicks: AtomicU64::default(),
        }
    }
}

/// A snapshot of the backend's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendMetrics {
    /// Links registered now.
    pub links: usize,
    /// Sessions the backend agent knows now.
    pub sessions: usize,
    /// Registrations accepted.
    pub registered: u64,
    /// Registrations refused (any reason).
    pub refused: u64,
    /// Requests sent to services.
    pub requests: u64,
    /// Requests answered by their service in time.
    pub answered: u64,
    /// Requests answered with an error because their deadline passed.
    pub timed_out: u64,
    /// Requests answered with an error because their link closed.
    pub failed_on_close: u64,
    /// Answers that came after their deadline (dropped).
    pub late: u64,
    /// Requests answered with an error at once: no instance for them, or
    /// not a route envelope in route mode.
    pub unroutable: u64,
    /// Requests refused at once because their instance was at its stated
    /// `max_in_flight`, or its link's send queue was full.
    pub congested: u64,
    /// `Push` frames received.
    pub pushes: u64,
    /// `Kick` frames received.
    pub kicks: u64,
}
