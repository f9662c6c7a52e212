//! Open-loop echo load (`client bench --rate R`): each connection sends R
//! requests per second on a fixed schedule, whether or not its answers
//! have come, as a game's players do, instead of waiting for an answer
//! before the next request (the closed loop of [`super::echo`]).
//!
//! A request's latency counts from when it was *due*, not from when it
//! went out: if the server falls behind and a connection's `--depth`
//! slots are all in flight, the requests that come due wait in a backlog
//! and their wait is part of their latency (coordinated omission
//! corrected, as wrk2 does). Connections start at evenly spread phases of
//! the period, so the offered load is smooth rather than in bursts.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use loginproto::seal::Channel;

use super::echo::{Payload, Slot, read_done, settle, take_answers, write_batch};
use super::load::{LoadState, MEASURE, Plan, STOP, Stats};
use crate::net::Stream;

/// Drives one connection at `rate` requests per second, starting `phase`
/// (0 to 1) of a period late, until the run stops and what it sent is
/// answered, or it fails.
#[allow(clippy::too_many_arguments)]
pub(super) async fn drive_open(
    mut stream: Stream,
    mut rbuf: BytesMut,
    mut channel: Option<Channel>,
    rate: f64,
    phase: f64,
    quota: Option<u64>,
    plan: &Plan,
    shared: &LoadState,
    stats: &RefCell<Stats>,
) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let depth = plan.depth;
    let slot_bits = usize::BITS - (depth - 1).leading_zeros();
    let slot_mask = (1u32 << slot_bits).wrapping_sub(1);
    let step = 1u32 << slot_bits.min(31);
    let payload = Payload::new(plan.size);
    let mut wbuf = BytesMut::with_capacity(depth.min(64) * (plan.size + 6) + 64);
    let started = Instant::now();
    // Each slot's first request number is its index.
    let mut slots: Vec<Slot> = (0..depth)
        .map(|k| Slot {
            number: (k as u32).wrapping_sub(step),
            sent_at: started,
            busy: false,
        })
        .collect();
    let mut free: Vec<usize> = (0..depth).rev().collect();
    // Requests due and not sent yet (no free slot): when they were due.
    let mut backlog: VecDeque<Instant> = VecDeque::new();
    let mut next_due = started + period.mul_f64(phase.clamp(0.0, 1.0));
    let mut sent: u64 = 0;
    let mut outstanding: usize = 0;
    let may_send = |n: u64| quota.is_none_or(|q| n < q);
    let timeout = plan.response_timeout;
    let mut last_progress = started;
    let due = tokio::time::sleep_until(next_due.into());
    tokio::pin!(due);
    let silence = tokio::time::sleep(timeout);
    tokio::pin!(silence);
    let mut failure: Option<String> = None;
    loop {
        let now = Instant::now();
        let stopping = shared.phase.load(Ordering::Relaxed) >= STOP;
        if stopping {
            // What never went out is not a lost request.
            backlog.clear();
        } else {
            while next_due <= now && may_send(sent + backlog.len() as u64) {
                backlog.push_back(next_due);
                next_due += period;
            }
        }
        while let (Some(&k), Some(&due_at)) = (free.last(), backlog.front()) {
            free.pop();
            backlog.pop_front();
            let slot = &mut slots[k];
            slot.number = slot.number.wrapping_add(step);
            slot.sent_at = due_at;
            slot.busy = true;
            payload.encode(slot.number, &mut wbuf);
            sent += 1;
            outstanding += 1;
        }
        if let Err(e) = write_batch(&mut stream, &mut wbuf, channel.as_mut()).await {
            failure = Some(e);
            break;
        }
        let more = !stopping && may_send(sent + backlog.len() as u64);
        if outstanding == 0 && !more {
            break;
        }
        if outstanding == 0 {
            // Nothing to wait for but the next send: the silence deadline
            // starts over from there.
            last_progress = next_due;
        }
        due.as_mut().reset(next_due.into());
        silence.as_mut().reset((last_progress + timeout).into());
        let read = tokio::select! {
            biased;
            read = stream.read_buf(&mut rbuf) => read,
            () = &mut due, if more => continue,
            () = &mut silence, if outstanding > 0 => {
                failure = Some(format!(
                    "no response for {} with {outstanding} in flight",
                    crate::text::duration(timeout)
                ));
                break;
            }
        };
        if let Err(e) = read_done(read, "the server") {
            failure = Some(e);
            break;
        }
        let now = Instant::now();
        last_progress = now;
        let measuring = shared.phase.load(Ordering::Relaxed) == MEASURE;
        let mut st = stats.borrow_mut();
        // Latency from when each request was due (`sent_at`): coordinated
        // omission corrected.
        let (got, failed) = take_answers(
            &mut rbuf,
            channel.as_mut(),
            &mut slots,
            slot_mask,
            &payload,
            measuring.then_some(now),
            &mut st,
            shared,
            |_, k| {
                outstanding -= 1;
                free.push(k);
            },
        );
        failure = failed;
        st.received += got;
        drop(st);
        shared.received.fetch_add(got, Ordering::Relaxed);
        if failure.is_some() {
            break;
        }
    }
    settle(stats, shared, sent, outstanding, failure);
}
