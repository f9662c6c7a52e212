//! Echo load: each connection keeps `depth` requests in flight in slots.
//! The request number is `generation << slot_bits | slot`, so a response
//! finds its slot with a mask and the slot checks it is the generation in
//! flight. A response is checked (request number, ok byte, the echoed
//! payload, which carries the number in its first bytes so a swapped reply
//! is caught) and its slot is refilled at once. Everything one read
//! brought in is answered with one write; buffers are reused, so the hot
//! path does not allocate.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use loginproto::seal::{self, Channel};

use super::load::{LoadState, MEASURE, Plan, STOP, Stats};
use crate::net::Stream;

/// One in-flight request slot.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    pub(super) number: u32,
    pub(super) sent_at: Instant,
    pub(super) busy: bool,
}

/// The payload of a request: a fixed pattern whose first bytes (up to 4)
/// are the request number, so each echo is distinguishable.
pub(super) struct Payload {
    template: Vec<u8>,
}

impl Payload {
    pub(super) fn new(size: usize) -> Payload {
        Payload {
            template: (0..size).map(|i| b'a' + (i % 26) as u8).collect(),
        }
    }

    fn stamp_len(&self) -> usize {
        self.template.len().min(4)
    }

    /// Appends the request package with request number `number` to `out`.
    pub(super) fn encode(&self, number: u32, out: &mut BytesMut) {
        let len = self.template.len() + 4;
        // Sizes are validated up front to fit one package.
        out.put_u16(u16::try_from(len).unwrap_or(u16::MAX));
        let start = out.len();
        out.put_slice(&self.template);
        let stamp = self.stamp_len();
        out[start..start + stamp].copy_from_slice(&number.to_be_bytes()[..stamp]);
        out.put_u32(number);
    }

    fn matches(&self, number: u32, content: &[u8]) -> bool {
        let stamp = self.stamp_len();
        content.len() == self.template.len()
            && content[..stamp] == number.to_be_bytes()[..stamp]
            && content[stamp..] == self.template[stamp..]
    }
}

/// A response that failed its check.
pub(super) struct Bad {
    /// The slot it answered, when the request number was the one in flight.
    pub(super) slot: Option<usize>,
    pub(super) message: String,
}

/// Drives one echo connection until it has nothing in flight and may send
/// no more, or it fails.
pub(super) async fn drive_echo(
    mut stream: Stream,
    mut rbuf: BytesMut,
    mut channel: Option<Channel>,
    quota: Option<u64>,
    plan: &Plan,
    shared: &LoadState,
    stats: &RefCell<Stats>,
) {
    let depth = plan.depth;
    let slot_bits = usize::BITS - (depth - 1).leading_zeros();
    let slot_mask = (1u32 << slot_bits).wrapping_sub(1);
    let step = 1u32 << slot_bits.min(31);
    let payload = Payload::new(plan.size);
    let mut wbuf = BytesMut::with_capacity(depth * (plan.size + 6) + 64);
    let started = Instant::now();
    let mut slots = vec![
        Slot {
            number: 0,
            sent_at: started,
            busy: false,
        };
        depth
    ];
    let mut sent: u64 = 0;
    let mut outstanding: usize = 0;
    let may_send = |sent: u64| quota.is_none_or(|q| sent < q);
    for (k, slot) in slots.iter_mut().enumerate() {
        if !may_send(sent) {
            break;
        }
        slot.number = k as u32;
        slot.busy = true;
        payload.encode(slot.number, &mut wbuf);
        sent += 1;
        outstanding += 1;
    }
    let timeout = plan.response_timeout;
    let mut last_progress = started;
    let sleep = tokio::time::sleep(timeout);
    tokio::pin!(sleep);
    let mut failure: Option<String> = None;
    loop {
        if let Err(e) = write_batch(&mut stream, &mut wbuf, channel.as_mut()).await {
            failure = Some(e);
            break;
        }
        if outstanding == 0 {
            break;
        }
        let read = tokio::select! {
            biased;
            read = stream.read_buf(&mut rbuf) => read,
            () = &mut sleep => {
                let deadline = last_progress + timeout;
                if Instant::now() >= deadline {
                    failure = Some(format!(
                        "no response for {} with {outstanding} in flight",
                        crate::text::duration(timeout)
                    ));
                    break;
                }
                sleep.as_mut().reset(deadline.into());
                continue;
            }
        };
        if let Err(e) = read_done(read, "the server") {
            failure = Some(e);
            break;
        }
        let now = Instant::now();
        last_progress = now;
        let phase = shared.phase.load(Ordering::Relaxed);
        let measuring = phase == MEASURE;
        let stopping = phase >= STOP;
        let mut st = stats.borrow_mut();
        let (got, failed) = take_answers(
            &mut rbuf,
            channel.as_mut(),
            &mut slots,
            slot_mask,
            &payload,
            measuring.then_some(now),
            &mut st,
            shared,
            |slots, k| {
                outstanding -= 1;
                if !stopping && may_send(sent) {
                    let number = slots[k].number.wrapping_add(step);
                    slots[k] = Slot {
                        number,
                        sent_at: now,
                        busy: true,
                    };
                    payload.encode(number, &mut wbuf);
                    sent += 1;
                    outstanding += 1;
                }
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

/// What a read of the connection gave: `Err` with the failure when the
/// peer (`who`) closed it or it failed.
pub(super) fn read_done(read: std::io::Result<usize>, who: &str) -> Result<(), String> {
    match read {
        Ok(0) => Err(format!("{who} closed the connection")),
        Err(e) => Err(format!("read failed: {e}")),
        Ok(_) => Ok(()),
    }
}

/// Seals what `wbuf` holds (on a sealed connection) and writes it all,
/// flushed (a TLS stream keeps what the socket did not take until then; a
/// no-op over plain TCP); leaves `wbuf` empty.
pub(super) async fn write_batch(
    stream: &mut Stream,
    wbuf: &mut BytesMut,
    channel: Option<&mut Channel>,
) -> Result<(), String> {
    if wbuf.is_empty() {
        return Ok(());
    }
    if let Some(channel) = channel {
        seal::seal_packages(&mut channel.send, wbuf, 0).map_err(|e| e.to_string())?;
    }
    async {
        stream.write_all(wbuf).await?;
        stream.flush().await
    }
    .await
    .map_err(|e| format!("write failed: {e}"))?;
    wbuf.clear();
    Ok(())
}

/// A connection's driver is done: what it sent, the requests it never
/// got answers to, and the failure that stopped it, into its stats.
pub(super) fn settle(
    stats: &RefCell<Stats>,
    shared: &LoadState,
    sent: u64,
    outstanding: usize,
    failure: Option<String>,
) {
    let mut st = stats.borrow_mut();
    st.sent += sent;
    st.lost += outstanding as u64;
    if let Some(message) = failure {
        st.error(shared, || message);
    }
}

/// Takes every whole answer in `rbuf` (opened first on a sealed
/// connection) and checks it against `slots`, recording its latency from
/// the slot's `sent_at` when `measuring` is the time it came; each slot
/// answered is marked free and handed to `answered`. Returns how many
/// packages came, and the failure that stopped the connection, if any.
#[allow(clippy::too_many_arguments)]
pub(super) fn take_answers(
    rbuf: &mut BytesMut,
    mut channel: Option<&mut Channel>,
    slots: &mut [Slot],
    mask: u32,
    payload: &Payload,
    measuring: Option<Instant>,
    st: &mut Stats,
    shared: &LoadState,
    mut answered: impl FnMut(&mut [Slot], usize),
) -> (u64, Option<String>) {
    let extra = if channel.is_some() { seal::TAG_LEN } else { 0 };
    let mut got = 0;
    while rbuf.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rbuf[0], rbuf[1]]));
        if rbuf.len() < 2 + len + extra {
            break;
        }
        if let Some(channel) = channel.as_deref_mut() {
            let (data, tag) = rbuf[2..2 + len + extra].split_at_mut(len);
            if let Err(e) = channel.recv.open_in_place(data, tag) {
                return (got, Some(e.to_string()));
            }
        }
        got += 1;
        let answer = match check(&rbuf[2..2 + len], slots, mask, payload) {
            Ok(k) => {
                if let Some(now) = measuring {
                    st.record(now.saturating_duration_since(slots[k].sent_at));
                }
                Some(k)
            }
            Err(bad) => {
                st.error(shared, || bad.message);
                bad.slot
            }
        };
        if let Some(k) = answer {
            slots[k].busy = false;
            answered(slots, k);
        }
        rbuf.advance(2 + len + extra);
    }
    (got, None)
}

/// Checks one response package against the slots; `Ok(slot)` when it is
/// the right answer to the request in flight there.
pub(super) fn check(
    frame: &[u8],
    slots: &[Slot],
    mask: u32,
    payload: &Payload,
) -> Result<usize, Bad> {
    let n = frame.len();
    if n < 5 {
        return Err(Bad {
            slot: None,
            message: format!("malformed response package of {n} bytes"),
        });
    }
    let number = u32::from_be_bytes([frame[n - 4], frame[n - 3], frame[n - 2], frame[n - 1]]);
    let flag = frame[n - 5];
    let content = &frame[..n - 5];
    let k = (number & mask) as usize;
    match slots.get(k) {
        Some(slot) if slot.busy && slot.number == number => {}
        _ => {
            return Err(Bad {
                slot: None,
                message: format!("response for request number {number}, which is not in flight"),
            });
        }
    }
    if flag != 1 {
        return Err(Bad {
            slot: Some(k),
            message: format!("s={number}: ok byte {flag} (expected 1)"),
        });
    }
    if !payload.matches(number, content) {
        return Err(Bad {
            slot: Some(k),
            message: format!(
                "s={number}: payload is not the echo ({} bytes: {})",
                content.len(),
                crate::text::payload(content)
            ),
        });
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_the_request_number() {
        let p = Payload::new(16);
        let mut out = BytesMut::new();
        p.encode(0x01020304, &mut out);
        assert_eq!(&out[..2], &[0, 20]);
        assert_eq!(&out[2..6], &[1, 2, 3, 4]);
        assert_eq!(&out[18..], &[1, 2, 3, 4]);
        assert!(p.matches(0x01020304, &out[2..18]));
        assert!(!p.matches(0x01020305, &out[2..18]));
        assert!(!p.matches(0x01020304, &out[2..17]));

        let tiny = Payload::new(2);
        let mut out = BytesMut::new();
        tiny.encode(0xaabbccdd, &mut out);
        assert_eq!(&out[..], &[0, 6, 0xaa, 0xbb, 0xaa, 0xbb, 0xcc, 0xdd]);
        assert!(tiny.matches(0xaabbccdd, &[0xaa, 0xbb]));
        assert!(Payload::new(0).matches(7, &[]));
    }

    fn response(content: &[u8], flag: u8, number: u32) -> Vec<u8> {
        let mut frame = content.to_vec();
        frame.push(flag);
        frame.extend_from_slice(&number.to_be_bytes());
        frame
    }

    #[test]
    fn check_finds_the_slot_and_rejects_wrong_answers() {
        let p = Payload::new(8);
        let now = Instant::now();
        let slots = [
            Slot {
                number: 4,
                sent_at: now,
                busy: true,
            },
            Slot {
                number: 1,
                sent_at: now,
                busy: true,
            },
            Slot {
                number: 2,
                sent_at: now,
                busy: false,
            },
        ];
        let mask = 3;
        let echo = |s: u32| {
            let mut out = BytesMut::new();
            p.encode(s, &mut out);
            out[2..10].to_vec()
        };
        assert_eq!(
            check(&response(&echo(4), 1, 4), &slots, mask, &p).ok(),
            Some(0)
        );
        assert_eq!(
            check(&response(&echo(1), 1, 1), &slots, mask, &p).ok(),
            Some(1)
        );
        // Not in flight: an old generation, an idle slot, a slot out of range.
        for s in [0, 2, 3] {
            let bad = check(&response(&echo(s), 1, s), &slots, mask, &p)
                .err()
                .unwrap();
            assert_eq!(bad.slot, None);
        }
        let bad = check(&response(&[], 0, 4), &slots, mask, &p).err().unwrap();
        assert_eq!(bad.slot, Some(0));
        assert!(bad.message.contains("ok byte 0"));
        let bad = check(&response(&echo(1), 1, 4), &slots, mask, &p)
            .err()
            .unwrap();
        assert_eq!(bad.slot, Some(0));
        assert!(bad.message.contains("not the echo"));
        assert!(check(&[1, 2, 3], &slots, mask, &p).is_err());
    }
}
