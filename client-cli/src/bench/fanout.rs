//! Push fan-out load (`--push-fanout`): every connection is opted in to
//! the gate's extensions and has sent a join request once; then connection
//! 0, the speaker, sends say requests carrying `fanout:<n>` while every
//! connection (the speaker too) reads the pushes the agent makes of them.
//! The speaker keeps `depth` messages whose own copy has not come back in
//! flight, so the gate's queues stay bounded. Each push is checked
//! (sequence numbers without gaps, no gap notice, no kick) and its latency
//! taken from the time the speaker sent message `n` (a shared table of
//! send times, indexed by `n`).

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use codec::ResponseFlag;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::echo::read_done;
use super::load::{Conn, LoadState, MEASURE, Plan, STOP, Stats};

/// Size of the fan-out send-time table (message `n` at `n % FANOUT_RING`):
/// more than any `--depth`, and far more than a member can lag behind
/// before the gate cuts it as a slow reader.
pub(super) const FANOUT_RING: usize = 1 << 16;

/// The marker a fan-out message carries, followed by its decimal number.
const FANOUT_MARK: &[u8] = b"fanout:";

/// A fan-out connection that has sent nothing for this long sends a
/// heartbeat, so the gate's idle timeout (60 s by default) spares members
/// that only read.
const FANOUT_HEARTBEAT: Duration = Duration::from_secs(20);

/// The number after [`FANOUT_MARK`] in a push, if any.
fn fanout_number(content: &[u8]) -> Option<u64> {
    let at = content
        .windows(FANOUT_MARK.len())
        .position(|w| w == FANOUT_MARK)?;
    let digits = &content[at + FANOUT_MARK.len()..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(digits.get(..end)?).ok()?.parse().ok()
}

/// Drives one fan-out connection: the speaker (player 0) sends messages
/// and reads its copies; every connection reads and checks the pushes,
/// until the speaker stopped and every message it sent was delivered here
/// (or nothing arrives for `--response-timeout`).
pub(super) async fn drive_fanout(
    conn: Conn,
    plan: &Plan,
    shared: &LoadState,
    stats: &RefCell<Stats>,
) {
    let Conn {
        i,
        mut stream,
        buf: mut rbuf,
        mut last_push,
        // A fan-out is never sealed (`--seal` conflicts with it).
        channel: _,
    } = conn;
    let speaker = i == 0;
    let depth = plan.depth as u64;
    let quota = if speaker { plan.requests } else { Some(0) };
    let mut said_rx = shared.said.subscribe();
    let mut wbuf = BytesMut::with_capacity(depth as usize * (plan.fanout_say.len() + 32));
    let (mut said, mut answered, mut got) = (0u64, 0u64, 0u64);
    let mut failure: Option<String> = None;
    let timeout = plan.response_timeout;
    let mut last_read = Instant::now();
    let mut last_sent = Instant::now();
    let mut total: Option<u64> = None;
    let mut published = !speaker;
    loop {
        let phase = shared.phase.load(Ordering::Relaxed);
        if speaker {
            let may_say = phase < STOP && quota.is_none_or(|q| said < q);
            while may_say && said < got + depth && quota.is_none_or(|q| said < q) {
                let content = format!("{} fanout:{said}", plan.fanout_say);
                let len = content.len() + 4;
                wbuf.put_u16(u16::try_from(len).unwrap_or(u16::MAX));
                wbuf.put_slice(content.as_bytes());
                wbuf.put_u32(said as u32);
                let now = Instant::now();
                shared.sent_ns[(said as usize) % FANOUT_RING]
                    .store(shared.nanos_since_epoch(now), Ordering::Relaxed);
                said += 1;
            }
            if !may_say && !published {
                published = true;
                shared.said.send_replace(Some(said));
            }
        }
        if !wbuf.is_empty() {
            // Flushed too: a TLS stream keeps what the socket did not
            // take until then.
            if let Err(e) = async {
                stream.write_all(&wbuf).await?;
                stream.flush().await
            }
            .await
            {
                failure = Some(format!("write failed: {e}"));
                break;
            }
            wbuf.clear();
            last_sent = Instant::now();
        }
        if total.is_none() {
            total = *said_rx.borrow_and_update();
        }
        if let Some(total) = total {
            if got >= total && (!speaker || answered >= said) {
                break;
            }
        }
        let next_heartbeat = last_sent + FANOUT_HEARTBEAT;
        let give_up = last_read + timeout;
        let read = tokio::select! {
            read = stream.read_buf(&mut rbuf) => read,
            changed = said_rx.changed(), if total.is_none() => {
                if changed.is_err() {
                    failure = Some("the run ended without a message count".to_owned());
                    break;
                }
                continue;
            }
            () = tokio::time::sleep_until(next_heartbeat.min(give_up).into()) => {
                let now = Instant::now();
                if now >= give_up {
                    failure = Some(format!(
                        "no push for {}",
                        crate::text::duration(timeout)
                    ));
                    break;
                }
                if now >= next_heartbeat {
                    wbuf.put_u16(0);
                }
                continue;
            }
        };
        if let Err(e) = read_done(read, "the gate") {
            failure = Some(e);
            break;
        }
        let now = Instant::now();
        last_read = now;
        let measuring = shared.phase.load(Ordering::Relaxed) == MEASURE;
        let mut st = stats.borrow_mut();
        let mut delivered = 0;
        while rbuf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rbuf[0], rbuf[1]]));
            if rbuf.len() < 2 + len {
                break;
            }
            let frame = &rbuf[2..2 + len];
            // An empty package answers a heartbeat.
            if let Some(split) = frame.len().checked_sub(5) {
                let (content, trailer) = frame.split_at(split);
                let flag = ResponseFlag(trailer[0]);
                let seq = u32::from_be_bytes([trailer[1], trailer[2], trailer[3], trailer[4]]);
                match flag {
                    ResponseFlag::PUSH => {
                        if seq != last_push.wrapping_add(1) {
                            st.error(shared, || format!("push #{seq} after #{last_push}"));
                        }
                        last_push = seq;
                        if let Some(n) = fanout_number(content) {
                            got += 1;
                            delivered += 1;
                            if measuring {
                                let sent = shared.sent_ns[(n as usize) % FANOUT_RING]
                                    .load(Ordering::Relaxed);
                                let at = shared.nanos_since_epoch(now);
                                st.record(Duration::from_nanos(at.saturating_sub(sent)));
                            }
                        }
                    }
                    ResponseFlag::PUSH_GAP => {
                        st.error(shared, || format!("pushes up to #{seq} lost"));
                        last_push = seq;
                    }
                    ResponseFlag::KICK => st.error(shared, || {
                        format!("kicked: {}", crate::text::payload(content))
                    }),
                    ResponseFlag::WELCOME => {}
                    ResponseFlag::OK if speaker => answered += 1,
                    _ => {
                        answered += 1;
                        st.error(shared, || {
                            format!(
                                "answer flag {} s={seq} {}",
                                flag.0,
                                crate::text::payload(content)
                            )
                        });
                    }
                }
            } else if len != 0 {
                st.error(shared, || format!("malformed package of {len} bytes"));
            }
            rbuf.advance(2 + len);
        }
        drop(st);
        shared.received.fetch_add(delivered, Ordering::Relaxed);
    }
    if !published {
        // The speaker failed: tell the members how much there is to wait for.
        shared.said.send_replace(Some(said));
    }
    let expected = total.or(*shared.said.borrow()).unwrap_or(said);
    let mut st = stats.borrow_mut();
    st.said += said;
    st.sent += expected;
    st.received += got;
    st.lost += expected.saturating_sub(got);
    if let Some(message) = failure {
        st.error(shared, || message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_numbers_are_found_in_any_push_text() {
        assert_eq!(fanout_number(b"[bench] bench0: fanout:42"), Some(42));
        assert_eq!(fanout_number(b"fanout:7 tail"), Some(7));
        assert_eq!(fanout_number(b"* bench3 joined bench"), None);
        assert_eq!(fanout_number(b"fanout:"), None);
        assert_eq!(fanout_number(b"fanout:x1"), None);
    }
}
