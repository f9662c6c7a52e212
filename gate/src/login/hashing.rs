//! A fixed pool of argon2 workers, each reusing one memory block.
//!
//! An argon2 verification needs its whole memory cost at once (19 MiB for
//! the default parameters). Allocated per hash, a login storm leaves the
//! allocator holding hundreds of megabytes it never gives back (a storm of
//! 5 s took the gate from 7 MB to 807 MB). Here each of a fixed number of
//! worker threads owns one buffer, grown once to the largest cost it meets
//! and reused for every hash after, so the pool's memory is at most
//! `workers × largest block` whatever the login rate.
//!
//! Verifications beyond the workers wait in a bounded queue; a full queue
//! refuses at once ([`Submit::Busy`]) rather than holding more memory or
//! more waiting logins. Threads, not the blocking pool: the blocking pool
//! grows to 512 threads, each of which would keep its own block.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

/// Verifications that may wait per worker; past them a login is told the
/// server is busy. A wait of a few hashes each (tens of milliseconds) is
/// well inside the login's authenticator deadline.
pub const QUEUE_PER_WORKER: usize = 32;

/// What a worker answers.
pub type Verdict = Result<bool, String>;

struct Job {
    password: Zeroizing<Vec<u8>>,
    hash: Arc<PasswordHash>,
    reply: oneshot::Sender<Verdict>,
}

/// Counters shared with the workers.
#[derive(Debug, Default)]
struct Counters {
    /// Submitted, not yet taken by a worker.
    queued: AtomicUsize,
    /// Refused because the queue was full.
    busy: AtomicU64,
    running: AtomicUsize,
    peak: AtomicUsize,
    /// Bytes of argon2 memory the workers hold, all together.
    memory: AtomicUsize,
}

/// What [`HashPool::stats`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Worker threads.
    pub workers: usize,
    /// Verifications running now.
    pub running: usize,
    /// Verifications waiting for a worker now.
    pub queued: usize,
    /// Verifications refused because the queue was full, ever.
    pub busy: u64,
    /// Most verifications that ever ran at once.
    pub peak_running: usize,
    /// Bytes of argon2 memory the workers hold now.
    pub memory_bytes: usize,
}

/// A submission that did not reach a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submit {
    /// The queue is full: the server is busy.
    Busy,
    /// The queue is closed (never, while the pool lives).
    Closed,
}

/// The pool (see the module docs). Cloning shares it; the workers stop
/// when the last clone is dropped.
#[derive(Clone)]
pub struct HashPool {
    jobs: SyncSender<Job>,
    /// Kept so the queue stays open even if no worker thread could start
    /// (then logins wait out `login.auth_timeout`, as for a stuck
    /// authenticator, instead of failing differently).
    _receiver: Arc<Mutex<Receiver<Job>>>,
    workers: usize,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for HashPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashPool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl HashPool {
    /// `workers` threads (at least one) and a queue of `queue` waiting
    /// verifications.
    pub fn new(workers: usize, queue: usize) -> HashPool {
        Self::spawn(workers.max(1), queue)
    }

    /// One worker per core, [`QUEUE_PER_WORKER`] waiting each: a core can
    /// run one hash at a time, so more workers would only hold more memory.
    pub fn per_core() -> HashPool {
        Self::sized(0, 0)
    }

    /// `workers` threads (0: one per core) and `queue` waiting
    /// verifications (0: [`QUEUE_PER_WORKER`] per worker): the
    /// `login.hash_workers` and `login.hash_queue` settings.
    pub fn sized(workers: usize, queue: usize) -> HashPool {
        let workers = match workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let queue = match queue {
            0 => workers * QUEUE_PER_WORKER,
            n => n,
        };
        Self::new(workers, queue)
    }

    fn spawn(workers: usize, queue: usize) -> HashPool {
        let (jobs, receiver) = sync_channel(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let counters = Arc::new(Counters::default());
        let mut started = 0;
        for n in 0..workers {
            let receiver = Arc::clone(&receiver);
            let counters = Arc::clone(&counters);
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || work(&receiver, &counters));
            // A thread the OS refuses is one worker fewer, not a crash.
            if spawned.is_ok() {
                started += 1;
            }
        }
        HashPool {
            jobs,
            _receiver: receiver,
            workers: started,
            counters,
        }
    }

    /// Queues the check of `password` against `hash`; the receiver gets
    /// whether it matches.
    pub fn submit(
        &self,
        password: Zeroizing<Vec<u8>>,
        hash: Arc<PasswordHash>,
    ) -> Result<oneshot::Receiver<Verdict>, Submit> {
        let (reply, answer) = oneshot::channel();
        // Counted before the send: a worker may take the job at once.
        self.counters.queued.fetch_add(1, Ordering::AcqRel);
        let sent = self.jobs.try_send(Job {
            password,
            hash,
            reply,
        });
        if sent.is_err() {
            self.counters.queued.fetch_sub(1, Ordering::AcqRel);
        }
        match sent {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => {
                self.counters.busy.fetch_add(1, Ordering::Relaxed);
                Err(Submit::Busy)
            }
            Err(TrySendError::Disconnected(_)) => Err(Submit::Closed),
        }
    }

    /// Workers, the most that ran at once, memory held.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            workers: self.workers,
            running: self.counters.running.load(Ordering::Relaxed),
            queued: self.counters.queued.load(Ordering::Relaxed),
            busy: self.counters.busy.load(Ordering::Relaxed),
            peak_running: self.counters.peak.load(Ordering::Relaxed),
            memory_bytes: self.counters.memory.load(Ordering::Relaxed),
        }
    }
}

/// One worker: takes jobs until the pool is dropped.
fn work(receiver: &Mutex<Receiver<Job>>, counters: &Counters) {
    // This worker's argon2 memory, grown to the largest cost met, reused.
    let mut blocks: Vec<Block> = Vec::new();
    loop {
        // The lock is held only while waiting for the next job, so one
        // idle worker waits in `recv` and the others on the lock.
        let job = receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        let Ok(job) = job else { return };
        counters.queued.fetch_sub(1, Ordering::AcqRel);
        // A login whose dialogue is gone needs no answer.
        if job.reply.is_closed() {
            continue;
        }
        let running = counters.running.fetch_add(1, Ordering::AcqRel) + 1;
        counters.peak.fetch_max(running, Ordering::AcqRel);
        let before = blocks.len();
        let verdict = verify(&job.password, &job.hash, &mut blocks);
        if blocks.len() > before {
            counters
                .memory
                .fetch_add((blocks.len() - before) * Block::SIZE, Ordering::Relaxed);
        }
        counters.running.fetch_sub(1, Ordering::AcqRel);
        let _ = job.reply.send(verdict);
    }
}

/// Checks `password` against the PHC `hash` in `blocks`, growing them if
/// this hash's memory cost needs more.
fn verify(password: &[u8], hash: &PasswordHash, blocks: &mut Vec<Block>) -> Verdict {
    let algorithm = Algorithm::try_from(hash.algorithm.as_str()).map_err(|e| e.to_string())?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).map_err(|e| e.to_string())?,
        None => Version::default(),
    };
    let params = Params::try_from(hash).map_err(|e| e.to_string())?;
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return Err("hash without salt or output".into());
    };
    let needed = params.block_count();
    if blocks.len() < needed {
        blocks.resize(needed, Block::new());
    }
    let expected = expected.as_bytes();
    let mut out = Zeroizing::new(vec![0u8; expected.len()]);
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, out.as_mut_slice(), &mut blocks[..needed])
        .map_err(|e| e.to_string())?;
    Ok(bool::from(out.as_slice().ct_eq(expected)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::auth::hash_password_with;

    fn parsed(hash: &str) -> Arc<PasswordHash> {
        Arc::new(PasswordHash::new(hash).unwrap())
    }

    #[tokio::test]
    async fn many_verifications_use_at_most_the_workers_and_their_blocks() {
        let pool = HashPool::new(2, 64);
        let right = parsed(&hash_password_with(b"right", 64, 1, 1).unwrap());
        // Another line's parameters: a larger block, still verified.
        let big = parsed(&hash_password_with(b"big", 256, 2, 1).unwrap());
        let mut answers = Vec::new();
        for n in 0..40 {
            let (password, hash, expect): (&[u8], _, _) = match n % 4 {
                0 => (b"right", &right, true),
                1 => (b"wrong", &right, false),
                2 => (b"big", &big, true),
                _ => (b"right", &big, false),
            };
            let answer = pool
                .submit(Zeroizing::new(password.to_vec()), Arc::clone(hash))
                .expect("the queue holds 64");
            answers.push((answer, expect));
        }
        for (n, (answer, expect)) in answers.into_iter().enumerate() {
            assert_eq!(answer.await.unwrap(), Ok(expect), "verification {n}");
        }
        let stats = pool.stats();
        assert_eq!(stats.workers, 2);
        assert!(stats.peak_running <= 2, "{stats:?}");
        assert!(stats.peak_running >= 1, "{stats:?}");
        // Each worker holds at most the largest block (256 KiB), once.
        assert!(stats.memory_bytes <= 2 * 256 * 1024, "{stats:?}");
        assert!(stats.memory_bytes >= 256 * 1024, "{stats:?}");
    }

    #[tokio::test]
    async fn a_full_queue_is_busy() {
        // No worker: nothing leaves the queue.
        let pool = HashPool::spawn(0, 2);
        let hash = parsed(&hash_password_with(b"x", 8, 1, 1).unwrap());
        let submit = || pool.submit(Zeroizing::new(b"x".to_vec()), Arc::clone(&hash));
        let _a = submit().unwrap();
        let _b = submit().unwrap();
        assert_eq!(submit().err(), Some(Submit::Busy));
        let stats = pool.stats();
        assert_eq!((stats.queued, stats.busy, stats.running), (2, 1, 0));
    }

    #[test]
    fn broken_hash_is_an_error_not_a_match() {
        let mut blocks = Vec::new();
        let hash = PasswordHash::new("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ").unwrap();
        assert!(verify(b"x", &hash, &mut blocks).is_err());
    }
}
