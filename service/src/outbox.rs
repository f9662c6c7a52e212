//! The send side of one link: a shared output buffer that every sender
//! encodes its frames into, and the writer task that writes whatever
//! accumulated in one `write`.
//!
//! No channel message, task wake-up or write per frame: a sender encodes
//! straight into the buffer under a short lock (the link's reader appends a
//! whole batch of answers at once), and the writer swaps the buffer out and
//! writes it, so under load many answers share a syscall. The gate's side
//! of the link is built the same way.
//!
//! The buffer is bounded by [`Config::send_queue`](crate::Config) frames.
//! Senders that may wait (answers of requests that ran on their own task,
//! pushes) wait for the writer to make room; the reader holds its batch
//! back and stops reading meanwhile. The reader's control frames (pongs,
//! pings, goodbye) never wait, so heartbeats do not queue behind answers
//! and a gate that stops reading cannot stall the reader's silence
//! detection: they may use a second `send_queue` of room, past which they
//! are dropped.

use std::io;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard};

use bytes::{BufMut, BytesMut};
use prost::Message;
use proto::backend::{Response, ServiceFrame, service_frame::Kind};
use proto::framing::HEADER_LEN;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tracing::{error, warn};

/// A write buffer larger than this (grown by a large frame) is not reused.
const KEEP_CAPACITY: usize = 256 * 1024;

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The buffer holds its bound of frames.
    Full,
    /// The link is gone (or going): nothing more is written.
    Closed,
}

#[derive(Debug)]
struct State {
    /// Encoded frames not yet taken by the writer.
    buf: BytesMut,
    /// How many frames `buf` holds.
    frames: usize,
    /// Someone waits for room (so the writer knows to wake them).
    waiting: bool,
    /// No more frames are accepted; the writer writes what is left and
    /// shuts the socket's write side down.
    closed: bool,
}

/// One link's output buffer. Shared by the reader, request tasks and
/// [`GateHandle`](crate::GateHandle)s.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Frames to write, or closed.
    writer_wake: Notify,
    /// Room was made, or closed.
    room: Notify,
    max_frames: usize,
    max_frame_len: usize,
}

impl Outbox {
    pub(crate) fn new(max_frames: usize, max_frame_len: usize) -> Self {
        Outbox {
            state: Mutex::new(State {
                buf: BytesMut::new(),
                frames: 0,
                waiting: false,
                closed: false,
            }),
            writer_wake: Notify::new(),
            room: Notify::new(),
            max_frames,
            // The length header cannot say more (the codec caps it alike).
            max_frame_len: max_frame_len.min(u32::MAX as usize),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent (an encode
        // that fails writes nothing), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The largest frame body this link sends.
    pub(crate) fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Queues `frame` if there is room below `limit` frames; hands it back
    /// when not, so the caller can wait and retry without a copy (boxing it
    /// would allocate on every refusal, which is when the link is busiest).
    #[allow(clippy::result_large_err)]
    fn push_within(
        &self,
        frame: ServiceFrame,
        limit: usize,
    ) -> Result<(), (Refused, ServiceFrame)> {
        let mut st = self.lock();
        if st.closed {
            return Err((Refused::Closed, frame));
        }
        if st.frames >= limit {
            st.waiting = true;
            return Err((Refused::Full, frame));
        }
        let was_empty = st.buf.is_empty();
        if encode(frame, &mut st.buf, self.max_frame_len) {
            st.frames += 1;
        }
        drop(st);
        if was_empty {
            self.writer_wake.notify_one();
        }
        Ok(())
    }

    /// Queues a control frame of the reader (pong, ping, goodbye) without
    /// waiting; dropped when even the control allowance is used up.
    pub(crate) fn push_control(&self, frame: ServiceFrame) -> Result<(), Refused> {
        self.push_within(frame, self.max_frames.saturating_mul(2))
            .map_err(|(why, _)| why)
    }

    /// Queues `frame`, waiting while the buffer is full.
    pub(crate) async fn send(&self, mut frame: ServiceFrame) -> Result<(), Refused> {
        loop {
            // Registered before the check, so room made in between is not
            // missed.
            let mut made_room = pin!(self.room.notified());
            made_room.as_mut().enable();
            match self.push_within(frame, self.max_frames) {
                Ok(()) => return Ok(()),
                Err((Refused::Closed, _)) => return Err(Refused::Closed),
                Err((Refused::Full, back)) => frame = back,
            }
            made_room.await;
        }
    }

    /// Appends `frames` already encoded frames (the reader's batch) unless
    /// the buffer is full; `batch` is left empty on success.
    pub(crate) fn try_append(&self, batch: &mut BytesMut, frames: usize) -> Result<(), Refused> {
        let mut st = self.lock();
        if st.closed {
            return Err(Refused::Closed);
        }
        if st.frames >= self.max_frames {
            st.waiting = true;
            return Err(Refused::Full);
        }
        let was_empty = st.buf.is_empty();
        if was_empty {
            // Hand the batch's buffer over instead of copying it.
            std::mem::swap(&mut st.buf, batch);
        } else {
            st.buf.extend_from_slice(batch);
            batch.clear();
        }
        st.frames += frames;
        drop(st);
        if was_empty {
            self.writer_wake.notify_one();
        }
        Ok(())
    }

    /// [`try_append`](Self::try_append), waiting while the buffer is full.
    pub(crate) async fn append(&self, batch: &mut BytesMut, frames: usize) -> Result<(), Refused> {
        loop {
            let mut made_room = pin!(self.room.notified());
            made_room.as_mut().enable();
            match self.try_append(batch, frames) {
                Err(Refused::Full) => made_room.await,
                done => return done,
            }
        }
    }

    /// Accepts nothing more; the writer writes what is queued, then shuts
    /// the write side down. Waiting senders fail.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.writer_wake.notify_one();
        self.room.notify_waiters();
    }

    /// The frames queued now, taken out (for tests).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> Vec<ServiceFrame> {
        use tokio_util::codec::Decoder;

        let mut buf = BytesMut::new();
        let _ = self.take(&mut buf);
        let mut codec = proto::framing::GateCodec::new();
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buf).expect("frames we encoded") {
            out.push(frame);
        }
        out
    }

    /// Takes what is queued into `out` (which must be empty), waking the
    /// senders waiting for room. `None` once closed and empty.
    fn take(&self, out: &mut BytesMut) -> Option<()> {
        let mut st = self.lock();
        if st.buf.is_empty() {
            return if st.closed { None } else { Some(()) };
        }
        std::mem::swap(&mut st.buf, out);
        st.frames = 0;
        let wake = std::mem::take(&mut st.waiting);
        drop(st);
        if wake {
            self.room.notify_waiters();
        }
        Some(())
    }
}

/// Encodes `frame` with its length header at the end of `buf`; `false` if
/// nothing was written.
///
/// A response too large for a frame becomes an error response, so the
/// client gets an answer now instead of the gate's deadline later. Other
/// senders check sizes first; should a frame slip through, dropping it
/// beats dropping the link.
pub(crate) fn encode(frame: ServiceFrame, buf: &mut BytesMut, max_frame_len: usize) -> bool {
    let len = frame.encoded_len();
    if len <= max_frame_len {
        write_frame(&frame, len, buf);
        return true;
    }
    let Some(Kind::Response(response)) = &frame.kind else {
        error!(len, max_frame_len, "frame too large; dropped");
        return false;
    };
    let id = response.request_id;
    warn!(
        request_id = id,
        len, max_frame_len, "response too large for a frame"
    );
    let error: ServiceFrame = Response::error(
        id,
        format!("response of {len} bytes exceeds the frame limit of {max_frame_len} bytes"),
    )
    .into();
    let len = error.encoded_len();
    if len > max_frame_len {
        error!(
            request_id = id,
            "even an error response exceeds the frame limit; dropped"
        );
        return false;
    }
    write_frame(&error, len, buf);
    true
}

/// Appends `BE32(len) ‖ frame`, `len` being `frame.encoded_len()` (at most
/// `u32::MAX`, see [`Outbox::new`]), as the framing module does.
fn write_frame(frame: &ServiceFrame, len: usize, buf: &mut BytesMut) {
    let start = buf.len();
    // Zeroed room, encoded into as a plain slice: prost writes a slice
    // byte by byte without a call per byte, which a `BytesMut` costs.
    buf.resize(start + HEADER_LEN + len, 0);
    let mut out = &mut buf[start..];
    out.put_u32(len as u32);
    if let Err(err) = frame.encode(&mut out) {
        // Cannot happen: the room is exactly `encoded_len`.
        error!(%err, "frame cannot be encoded; dropped");
        buf.truncate(start);
    }
}

/// Writes what accumulates in `outbox`, one `write` per batch, until it is
/// closed and empty; then shuts the write side down so the gate sees a
/// clean end of stream.
pub(crate) async fn write_loop(
    outbox: std::sync::Arc<Outbox>,
    mut write: Box<dyn AsyncWrite + Send + Unpin>,
) -> io::Result<()> {
    let mut out = BytesMut::new();
    loop {
        outbox.writer_wake.notified().await;
        // Let the tasks that are running now add their answers first: one
        // write then carries many of them, which saves syscalls here and in
        // the gate.
        tokio::task::yield_now().await;
        loop {
            if outbox.take(&mut out).is_none() {
                write.shutdown().await?;
                return Ok(());
            }
            if out.is_empty() {
                break;
            }
            write.write_all(&out).await?;
            if out.capacity() > KEEP_CAPACITY {
                // A rare large frame: do not keep its buffer for good.
                out = BytesMut::new();
            } else {
                out.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use proto::backend::{Pong, Response};
    use tokio_util::codec::Decoder;

    use super::*;

    fn frames_in(buf: &mut BytesMut) -> Vec<ServiceFrame> {
        let mut codec = proto::framing::GateCodec::new();
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(buf).unwrap() {
            out.push(frame);
        }
        assert!(buf.is_empty());
        out
    }

    #[tokio::test]
    async fn senders_wait_for_room_and_control_frames_get_more() {
        let outbox = Arc::new(Outbox::new(2, 1024));
        outbox
            .send(Response::ok(1, Bytes::new()).into())
            .await
            .unwrap();
        outbox
            .send(Response::ok(2, Bytes::new()).into())
            .await
            .unwrap();
        // Full for ordinary senders, not yet for control frames.
        let pong: ServiceFrame = Pong {
            nonce: 1,
            sent_at_ms: 0,
        }
        .into();
        outbox.push_control(pong.clone()).unwrap();
        outbox.push_control(pong.clone()).unwrap();
        assert_eq!(outbox.push_control(pong), Err(Refused::Full));
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(Response::ok(3, Bytes::new()).into()).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());

        let mut out = BytesMut::new();
        outbox.take(&mut out).unwrap();
        assert_eq!(frames_in(&mut out).len(), 4);
        waiting.await.unwrap().unwrap();
        outbox.take(&mut out).unwrap();
        assert_eq!(
            frames_in(&mut out),
            vec![ServiceFrame::from(Response::ok(3, Bytes::new()))]
        );
    }

    #[tokio::test]
    async fn closing_fails_waiters_and_ends_after_the_rest() {
        let outbox = Arc::new(Outbox::new(1, 1024));
        let mut batch = BytesMut::new();
        assert!(encode(
            Response::ok(1, Bytes::new()).into(),
            &mut batch,
            1024
        ));
        outbox.try_append(&mut batch, 1).unwrap();
        assert!(batch.is_empty());
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(Response::ok(2, Bytes::new()).into()).await }
        });
        tokio::task::yield_now().await;
        outbox.close();
        assert_eq!(waiting.await.unwrap(), Err(Refused::Closed));
        let mut out = BytesMut::new();
        assert!(outbox.take(&mut out).is_some());
        assert_eq!(frames_in(&mut out).len(), 1);
        assert!(outbox.take(&mut out).is_none());
    }

    #[test]
    fn frames_encode_as_the_codec_does() {
        use tokio_util::codec::Encoder;

        for frame in [
            ServiceFrame::from(Response::ok(u64::MAX, Bytes::from(vec![7u8; 300]))),
            Pong {
                nonce: 1,
                sent_at_ms: 2,
            }
            .into(),
            ServiceFrame { kind: None },
        ] {
            let mut ours = BytesMut::from(&b"before"[..]);
            assert!(encode(frame.clone(), &mut ours, 1024));
            let mut theirs = BytesMut::from(&b"before"[..]);
            proto::framing::ServiceCodec::new()
                .encode(frame, &mut theirs)
                .unwrap();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn oversize_responses_become_errors_and_other_frames_are_dropped() {
        use proto::backend::{Push, response};

        let mut buf = BytesMut::new();
        let big = Response::ok(2, Bytes::from(vec![0u8; 2048]));
        assert!(encode(big.into(), &mut buf, 1024));
        let [
            ServiceFrame {
                kind: Some(Kind::Response(fitted)),
            },
        ] = &frames_in(&mut buf)[..]
        else {
            panic!("not one response");
        };
        assert_eq!(fitted.request_id, 2);
        assert!(matches!(
            fitted.result,
            Some(response::Result::Error(ref why)) if why.contains("exceeds")
        ));
        // Not even the error fits: nothing.
        assert!(!encode(
            Response::ok(3, Bytes::from(vec![0u8; 64])).into(),
            &mut buf,
            16
        ));
        assert!(!encode(
            Push::to_all(Bytes::from(vec![0u8; 64])).into(),
            &mut buf,
            16
        ));
        assert!(buf.is_empty());
    }
}
