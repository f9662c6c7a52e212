//! The login queue: admit logins at a configured rate, first come first
//! served, instead of failing them when players arrive faster (a server
//! opening, a mass reconnect after an outage).
//!
//! A login reaches the queue after its key line (line 2), before the server
//! answers it: nothing expensive (key agreement is done, but not the
//! authenticator's password hash) runs before admission. Admission is a
//! token bucket of `rate` per second holding at most `burst` tokens; a login
//! that finds the queue empty and a token takes it and goes on at once (the
//! normal case costs one lock). Otherwise it takes a ticket (the next
//! number) and waits until the head of the queue passes it; the head moves
//! one ticket per token. A login whose client leaves while waiting gives
//! its place up without using a token. At most `max_queue` logins wait; one
//! more is refused at once (`503`).
//!
//! [`Admission::admit`] reports the position (logins admitted before this
//! one) and an estimate of the wait while it waits, so the dialogue can
//! tell x25519 clients that asked (`docs/PROTOCOL.md`, queue notices).
//! Time is tokio's, so tests drive it with a paused clock.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How often a waiting login re-reports a changed position, at most.
pub const NOTICE_EVERY: Duration = Duration::from_secs(1);

/// Why a login was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `max_queue` logins are waiting already.
    #[error("the login queue is full ({0} waiting)")]
    QueueFull(usize),
    /// The login waited longer than the queue's deadline.
    #[error("waited in the login queue longer than {0:?}")]
    TimedOut(Duration),
    /// The queue cannot be reached (a cluster's queue lives in Redis).
    #[error("login queue unavailable: {0}")]
    Unavailable(String),
}

/// Queue settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionConfig {
    /// Logins admitted per second; 0 turns the queue off.
    pub rate: u32,
    /// Tokens the bucket holds (logins admitted at once after a quiet
    /// spell).
    pub burst: u32,
    /// Most logins waiting at once.
    pub max_queue: usize,
    /// Longest a login waits before it is refused.
    pub timeout: Duration,
}

impl AdmissionConfig {
    /// The queue settings of a login server's configuration.
    pub fn of(config: &crate::config::LoginConfig) -> AdmissionConfig {
        AdmissionConfig {
            rate: config.admission_rate,
            burst: config.admission_burst,
            max_queue: config.queue_max,
            timeout: config.queue_timeout,
        }
    }
}

/// The queue's books: the token bucket that admits at `rate`, and the
/// ticket numbers handed out, admitted and abandoned.
#[derive(Debug)]
struct TicketBook {
    /// The settings (a configuration reload may change them).
    cfg: AdmissionConfig,
    /// Admissions the bucket holds now (up to the burst).
    tokens: f64,
    /// When `tokens` was last refilled.
    last: Instant,
    /// Tickets handed out: the last ticket's number.
    tail: u64,
    /// Tickets admitted: every ticket up to this one may go.
    head: u64,
    /// Tickets above `head` whose login left.
    gone: BTreeSet<u64>,
}

/// A login queue: the in-process [`Admission`], or the cluster-wide one of
/// the login nodes ([`crate::cluster::SharedAdmission`]).
pub trait Admit: Send + Sync + std::fmt::Debug + 'static {
    /// Waits for this login's turn, calling `report` with its position
    /// when it starts waiting and then at most once per [`NOTICE_EVERY`]
    /// while the position changes. Cancel safe: a login dropped while
    /// waiting gives its place up.
    fn admit<'a>(
        &'a self,
        report: &'a mut (dyn FnMut(Position) + Send),
    ) -> crate::login::placement::BoxFuture<'a, Result<(), Refused>>;

    /// Whether logins go through the queue at all (the in-process queue
    /// with a rate of 0 admits every login at once: the dialogue skips
    /// it).
    fn active(&self) -> bool {
        true
    }
}

impl Admit for Admission {
    fn admit<'a>(
        &'a self,
        report: &'a mut (dyn FnMut(Position) + Send),
    ) -> crate::login::placement::BoxFuture<'a, Result<(), Refused>> {
        Box::pin(Admission::admit(self, report))
    }

    fn active(&self) -> bool {
        self.rate.load(Ordering::Relaxed) != 0
    }
}

/// The in-process queue. Share it (`Arc`) between all dialogues of a login
/// server. Its settings may change while logins wait
/// ([`Admission::reconfigure`]).
#[derive(Debug)]
pub struct Admission {
    /// `cfg.rate`, read without the lock by logins that find the queue
    /// off.
    rate: AtomicU32,
    book: Mutex<TicketBook>,
}

/// A position report while a login waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Logins admitted before this one.
    pub ahead: u64,
    /// The estimated wait.
    pub wait: Duration,
    /// The login's ticket: its place in the arrival order.
    pub ticket: u64,
}

impl Admission {
    /// A queue with `cfg`, its bucket full.
    pub fn new(cfg: AdmissionConfig) -> Admission {
        Admission {
            rate: AtomicU32::new(cfg.rate),
            book: Mutex::new(TicketBook {
                tokens: f64::from(cfg.burst.max(1)),
                last: Instant::now(),
                tail: 0,
                head: 0,
                gone: BTreeSet::new(),
                cfg,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> AdmissionConfig {
        self.lock().cfg
    }

    /// Changes the settings while logins wait (a configuration reload).
    /// The bucket is refilled at the old rate up to now, then runs at the
    /// new one; a smaller burst or queue bound takes nothing from logins
    /// already waiting (only newcomers are refused); a rate of 0 turns the
    /// queue off and admits every waiting login at its next look (within
    /// about a second). The wait deadline of a login is the one it started
    /// with.
    pub fn reconfigure(&self, cfg: AdmissionConfig) {
        let mut st = self.lock();
        self.advance(&mut st, Instant::now());
        if st.cfg.rate == 0 {
            // The queue was off: a quiet spell, the bucket is full.
            st.tokens = f64::from(cfg.burst.max(1));
        }
        st.cfg = cfg;
        st.tokens = st.tokens.min(f64::from(cfg.burst.max(1)));
        if cfg.rate == 0 {
            st.head = st.tail;
            st.gone.clear();
        }
        self.rate.store(cfg.rate, Ordering::Relaxed);
    }

    /// Logins waiting now.
    pub fn waiting(&self) -> usize {
        let st = self.lock();
        usize::try_from(st.tail - st.head).unwrap_or(usize::MAX) - st.gone.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TicketBook> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refills the bucket up to `now` and moves the head over as many
    /// waiting tickets as there are tokens.
    fn advance(&self, st: &mut TicketBook, now: Instant) {
        let elapsed = now.saturating_duration_since(st.last).as_secs_f64();
        st.last = now;
        if st.cfg.rate == 0 {
            // Off: whoever still waits goes.
            st.head = st.tail;
            st.gone.clear();
            return;
        }
        st.tokens = (st.tokens + elapsed * rate_of(&st.cfg)).min(f64::from(st.cfg.burst.max(1)));
        while st.head < st.tail {
            let next = st.head + 1;
            if st.gone.remove(&next) {
                st.head = next;
                continue;
            }
            if st.tokens < 1.0 {
                break;
            }
            st.tokens -= 1.0;
            st.head = next;
        }
    }

    /// Waits for this login's turn. `report` is called with the position
    /// when the login starts waiting and then whenever it changed, at most
    /// once per [`NOTICE_EVERY`]. Cancel safe: a login dropped while
    /// waiting gives its place up.
    pub async fn admit(&self, mut report: impl FnMut(Position)) -> Result<(), Refused> {
        if self.rate.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let (ticket, timeout) = {
            let mut st = self.lock();
            self.advance(&mut st, started);
            if st.cfg.rate == 0 {
                return Ok(());
            }
            if st.head == st.tail && st.tokens >= 1.0 {
                st.tokens -= 1.0;
                return Ok(());
            }
            let waiting = usize::try_from(st.tail - st.head).unwrap_or(usize::MAX) - st.gone.len();
            if waiting >= st.cfg.max_queue {
                return Err(Refused::QueueFull(waiting));
            }
            st.tail += 1;
            (st.tail, st.cfg.timeout)
        };
        let mut place = Place {
            queue: self,
            ticket,
            admitted: false,
        };
        let deadline = started + timeout;
        let mut reported: Option<(u64, Instant)> = None;
        loop {
            let now = Instant::now();
            let (ahead, tokens, rate) = {
                let mut st = self.lock();
                self.advance(&mut st, now);
                if ticket <= st.head {
                    place.admitted = true;
                    return Ok(());
                }
                // Tickets between the head and ours, not counting those
                // that left.
                let gone = u64::try_from(st.gone.range(st.head + 1..ticket).count()).unwrap_or(0);
                (ticket - st.head - 1 - gone, st.tokens, rate_of(&st.cfg))
            };
            if now >= deadline {
                return Err(Refused::TimedOut(timeout));
            }
            // Our turn comes when `ahead + 1` tokens have arrived.
            let due = Duration::from_secs_f64(((ahead + 1) as f64 - tokens).max(0.0) / rate);
            let changed =
                reported.is_none_or(|(last, at)| last != ahead && now - at >= NOTICE_EVERY);
            if changed {
                report(Position {
                    ahead,
                    wait: due,
                    ticket,
                });
                reported = Some((ahead, now));
            }
            // Wake when it should be our turn, or to report, whichever is
            // first; then look again (others may have left meanwhile).
            // Logins that arrived together would all report at the same
            // instants: spread them over half a second by ticket, so the
            // reports do not delay the admissions due meanwhile.
            let spread = Duration::from_millis(ticket % 500);
            let wake = (now + due.max(Duration::from_millis(1)))
                .min(now + NOTICE_EVERY + spread)
                .min(deadline);
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// Admissions per second of `cfg` (at least one, so waits stay finite).
fn rate_of(cfg: &AdmissionConfig) -> f64 {
    f64::from(cfg.rate.max(1))
}

/// A ticket in the queue; gives its place up if dropped before admission.
struct Place<'a> {
    queue: &'a Admission,
    ticket: u64,
    admitted: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.admitted {
            return;
        }
        let mut st = self.queue.lock();
        if self.ticket > st.head {
            st.gone.insert(self.ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn queue(rate: u32, burst: u32, max_queue: usize) -> Arc<Admission> {
        Arc::new(Admission::new(AdmissionConfig {
            rate,
            burst,
            max_queue,
            timeout: Duration::from_secs(60),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn logins_are_admitted_in_order_at_the_rate() {
        let q = queue(10, 2, 100);
        let start = Instant::now();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..12u32 {
            let (q, order) = (Arc::clone(&q), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let mut first = None;
                q.admit(|p| {
                    first.get_or_insert(p.ahead);
                })
                .await
                .unwrap();
                order.lock().unwrap().push((i, start.elapsed(), first));
            }));
            // Arrivals a moment (one timer tick) apart, so arrival order
            // is defined.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let ids: Vec<u32> = order.iter().map(|(i, _, _)| *i).collect();
        assert_eq!(ids, (0..12).collect::<Vec<_>>(), "first come, first served");
        // Two from the burst at once, then one per 100 ms.
        assert!(order[1].1 <= Duration::from_millis(2));
        assert_eq!(order[1].2, None, "the burst never waits");
        assert_eq!(order[2].2, Some(0));
        assert_eq!(order[11].2, Some(9));
        let last = order[11].1;
        assert!(
            last >= Duration::from_millis(990) && last <= Duration::from_millis(1020),
            "{last:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_and_a_login_that_leaves_gives_its_place_up() {
        let q = queue(1, 1, 2);
        q.admit(|_| {}).await.unwrap(); // the one token
        let a = tokio::spawn({
            let q = Arc::clone(&q);
            async move { q.admit(|_| {}).await }
        });
        let b = tokio::spawn({
            let q = Arc::clone(&q);
            async move { q.admit(|_| {}).await }
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(q.waiting(), 2);
        assert_eq!(q.admit(|_| {}).await, Err(Refused::QueueFull(2)));
        // The first waiter leaves: the second moves up and is admitted by
        // the next token, a second later.
        a.abort();
        let _ = a.await;
        assert_eq!(q.waiting(), 1);
        let before = Instant::now();
        b.await.unwrap().unwrap();
        let waited = before.elapsed();
        assert!(waited <= Duration::from_millis(1001), "{waited:?}");
        assert_eq!(q.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_login_waiting_past_the_deadline_is_refused() {
        let q = Arc::new(Admission::new(AdmissionConfig {
            rate: 1,
            burst: 1,
            max_queue: 10,
            timeout: Duration::from_millis(1500),
        }));
        q.admit(|_| {}).await.unwrap(); // the one token
        let spawn = |q: &Arc<Admission>| {
            let q = Arc::clone(q);
            tokio::spawn(async move { q.admit(|_| {}).await })
        };
        // Due after 1 s and after 2 s: the second is past the deadline.
        let first = spawn(&q);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let second = spawn(&q);
        assert_eq!(first.await.unwrap(), Ok(()));
        assert_eq!(
            second.await.unwrap(),
            Err(Refused::TimedOut(Duration::from_millis(1500)))
        );
        assert_eq!(q.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_holds_for_waiting_logins_and_zero_lets_them_all_go() {
        let q = queue(1, 1, 100);
        q.admit(|_| {}).await.unwrap(); // the one token
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let q = Arc::clone(&q);
                tokio::spawn(async move { q.admit(|_| {}).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(q.waiting(), 5);
        let before = Instant::now();
        q.reconfigure(AdmissionConfig {
            rate: 0,
            ..q.config()
        });
        assert_eq!(q.waiting(), 0);
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        assert!(before.elapsed() <= Duration::from_secs(2));
        // Off: nobody waits; on again at 1/s with a burst of one.
        q.admit(|_| {}).await.unwrap();
        q.reconfigure(AdmissionConfig {
            rate: 1,
            burst: 1,
            max_queue: 0,
            timeout: Duration::from_secs(60),
        });
        q.admit(|_| {}).await.unwrap();
        assert_eq!(q.admit(|_| {}).await, Err(Refused::QueueFull(0)));
    }

    #[tokio::test]
    async fn rate_zero_is_off() {
        let q = queue(0, 0, 0);
        for _ in 0..1000 {
            q.admit(|_| {}).await.unwrap();
        }
    }
}
