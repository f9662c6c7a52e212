//! The login queue shared by every login node of a cluster: one token
//! bucket and one ticket counter in Redis ([`Directory::admission_take`]),
//! so the admission rate is the cluster's and the order is first come,
//! first served across nodes.
//!
//! A login takes a ticket (one round trip; a login that finds the queue
//! empty and a token there goes on at once). While any of its logins wait,
//! each login node polls the queue's head every [`POLL_EVERY`] and wakes
//! the waiters it passed. A ticket whose client left is still admitted in
//! its turn (its token is spent for nothing), unlike the in-process queue:
//! noting departures in Redis would cost every waiting login more round
//! trips than the rare lost token is worth.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::warn;

use redis::Value;

use super::directory::{DirError, Directory, parse_u64, shape, text};
use crate::login::admission::{AdmissionConfig, Admit, NOTICE_EVERY, Position, Refused};
use crate::login::placement::BoxFuture;

/// How often a login node with waiting logins reads the queue's head.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// The cluster-wide queue, as one login node uses it.
#[derive(Debug)]
pub struct SharedAdmission {
    dir: Directory,
    cfg: AdmissionConfig,
    head: watch::Receiver<u64>,
    waiters: Arc<AtomicUsize>,
    wake_poller: Arc<Notify>,
}

impl SharedAdmission {
    /// A queue on `dir`'s Redis with `cfg` (every login node of a cluster
    /// should have the same settings). Starts this node's poller task.
    pub fn new(dir: Directory, cfg: AdmissionConfig) -> SharedAdmission {
        let (tx, head) = watch::channel(0);
        let waiters = Arc::new(AtomicUsize::new(0));
        let wake_poller = Arc::new(Notify::new());
        tokio::spawn(poll(
            dir.clone(),
            cfg,
            tx,
            Arc::clone(&waiters),
            Arc::clone(&wake_poller),
        ));
        SharedAdmission {
            dir,
            cfg,
            head,
            waiters,
            wake_poller,
        }
    }

    async fn wait(
        &self,
        ticket: u64,
        head: u64,
        report: &mut (dyn FnMut(Position) + Send),
    ) -> Result<(), Refused> {
        let started = Instant::now();
        let deadline = started + self.cfg.timeout;
        let rate = f64::from(self.cfg.rate.max(1));
        let mut heads = self.head.clone();
        let mut head = head.max(*heads.borrow());
        let mut reported: Option<(u64, Instant)> = None;
        loop {
            if ticket <= head {
                return Ok(());
            }
            let now = Instant::now();
            let ahead = ticket - head - 1;
            if reported.is_none_or(|(last, at)| last != ahead && now - at >= NOTICE_EVERY) {
                report(Position {
                    ahead,
                    wait: Duration::from_secs_f64((ahead + 1) as f64 / rate),
                    ticket,
                });
                reported = Some((ahead, now));
            }
            tokio::select! {
                changed = heads.changed() => {
                    if changed.is_err() {
                        return Err(Refused::Unavailable("the queue's poller stopped".into()));
                    }
                    head = head.max(*heads.borrow_and_update());
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Refused::TimedOut(self.cfg.timeout));
                }
                // Re-report now and then even if the head stands still.
                () = tokio::time::sleep(NOTICE_EVERY) => {}
            }
        }
    }
}

/// Counts a waiting login while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admit for SharedAdmission {
    fn admit<'a>(
        &'a self,
        report: &'a mut (dyn FnMut(Position) + Send),
    ) -> BoxFuture<'a, Result<(), Refused>> {
        Box::pin(async move {
            if self.cfg.rate == 0 {
                return Ok(());
            }
            let taken = self
                .dir
                .admission_take(self.cfg.rate, self.cfg.burst, self.cfg.max_queue)
                .await
                .map_err(|e| Refused::Unavailable(e.to_string()))?;
            match taken {
                Take::Admitted => Ok(()),
                Take::Full(waiting) => Err(Refused::QueueFull(
                    usize::try_from(waiting).unwrap_or(usize::MAX),
                )),
                Take::Ticket { ticket, head } => {
                    self.waiters.fetch_add(1, Ordering::AcqRel);
                    let _waiting = Waiting(&self.waiters);
                    self.wake_poller.notify_one();
                    self.wait(ticket, head, report).await
                }
            }
        })
    }
}

/// Reads the head every [`POLL_EVERY`] while logins of this node wait;
/// sleeps otherwise. Ends when the queue is dropped.
async fn poll(
    dir: Directory,
    cfg: AdmissionConfig,
    tx: watch::Sender<u64>,
    waiters: Arc<AtomicUsize>,
    wake: Arc<Notify>,
) {
    let mut failing = false;
    loop {
        if waiters.load(Ordering::Acquire) == 0 {
            tokio::select! {
                () = wake.notified() => {}
                () = tx.closed() => return,
            }
            continue;
        }
        match dir.admission_head(cfg.rate, cfg.burst).await {
            Ok(head) => {
                failing = false;
                tx.send_if_modified(|h| {
                    let moved = head > *h;
                    *h = (*h).max(head);
                    moved
                });
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cannot read the login queue (Redis unreachable?)");
                }
                failing = true;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_EVERY) => {}
            () = tx.closed() => return,
        }
    }
}

/// What [`Directory::admission_take`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The queue was empty and a token was there: go on.
    Admitted,
    /// `max_queue` logins wait already.
    Full(u64),
    /// Wait for this ticket; the head was at `head` then.
    Ticket {
        /// This login's ticket.
        ticket: u64,
        /// Tickets admitted so far.
        head: u64,
    },
}

/// The queue's Redis calls (one script, `scripts::ADMISSION`).
impl Directory {
    fn admission_call(
        &self,
        mode: &str,
        rate: u32,
        burst: u32,
        max_queue: usize,
    ) -> redis::ScriptInvocation<'_> {
        let mut inv = self.scripts.admission.key(self.keys().queue());
        inv.arg(mode)
            .arg(rate.max(1))
            .arg(burst.max(1))
            .arg(u64::try_from(max_queue).unwrap_or(u64::MAX));
        inv
    }

    /// One login arrives at the cluster-wide queue (see [`Take`]).
    pub async fn admission_take(
        &self,
        rate: u32,
        burst: u32,
        max_queue: usize,
    ) -> Result<Take, DirError> {
        let v = self
            .run(self.admission_call("take", rate, burst, max_queue))
            .await?;
        let Value::Array(items) = &v else {
            return Err(shape("admission", &v));
        };
        let field = |i: usize| items.get(i).and_then(text).and_then(|b| parse_u64(&b));
        match items.first().and_then(text).as_deref() {
            Some(b"ok") => Ok(Take::Admitted),
            Some(b"full") => Ok(Take::Full(field(1).unwrap_or(0))),
            Some(b"ticket") => match (field(1), field(2)) {
                (Some(ticket), Some(head)) => Ok(Take::Ticket { ticket, head }),
                _ => Err(shape("admission", &v)),
            },
            _ => Err(shape("admission", &v)),
        }
    }

    /// The queue's head (tickets admitted so far), after moving it on.
    pub async fn admission_head(&self, rate: u32, burst: u32) -> Result<u64, DirError> {
        let v = self
            .run(self.admission_call("poll", rate, burst, 0))
            .await?;
        match &v {
            Value::Array(items) => items
                .get(1)
                .and_then(text)
                .and_then(|b| parse_u64(&b))
                .ok_or_else(|| shape("admission", &v)),
            _ => Err(shape("admission", &v)),
        }
    }
}
