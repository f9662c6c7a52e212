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

use super::directory::{Directory, Take};
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
