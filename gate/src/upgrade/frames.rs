//! Frames on the upgrade socket: a JSON message with, optionally, file
//! descriptors passed along (`SCM_RIGHTS`).
//!
//! A frame is an 8-byte header (the JSON length and the number of
//! descriptors, both big-endian `u32`), sent in one `sendmsg` with the
//! descriptors attached, then the JSON. At most [`MAX_FDS`] descriptors go
//! with one frame (the kernel's own limit per message is 253). Blocking
//! I/O on a Unix stream socket: the exchange runs on a thread of its own.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

/// Most descriptors one frame carries.
pub const MAX_FDS: usize = 200;

/// Largest JSON body accepted (the whole state of a gate with tens of
/// thousands of sessions and their caches fits many times over).
pub const MAX_BODY: usize = 1 << 30;

/// Sends `body` with `fds` attached.
pub fn send(stream: &mut UnixStream, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(
        fds.len() <= MAX_FDS,
        "at most {MAX_FDS} descriptors a frame"
    );
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| (n as usize) <= MAX_BODY)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&len.to_be_bytes());
    header[4..].copy_from_slice(&(fds.len() as u32).to_be_bytes());
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "descriptors do not fit the ancillary buffer",
        ));
    }
    // The header's first bytes carry the descriptors; the rest goes plain.
    let sent = sendmsg(
        stream.as_fd(),
        &[io::IoSlice::new(&header)],
        &mut ancillary,
        SendFlags::NOSIGNAL,
    )?;
    stream.write_all(&header[sent..])?;
    stream.write_all(body)?;
    stream.flush()
}

/// Receives one frame: its body and the descriptors that came with it.
/// `Ok(None)` at a clean end of the stream before a frame.
pub fn recv(stream: &mut UnixStream) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut header = [0u8; 8];
    let mut got = 0;
    let mut fds = Vec::new();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    while got < header.len() {
        let mut ancillary = RecvAncillaryBuffer::new(&mut space);
        let received = recvmsg(
            stream.as_fd(),
            &mut [io::IoSliceMut::new(&mut header[got..])],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for message in ancillary.drain() {
            if let RecvAncillaryMessage::ScmRights(passed) = message {
                fds.extend(passed);
            }
        }
        if received.bytes == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += received.bytes;
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let want = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_BODY || want > MAX_FDS || fds.len() != want {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "bad frame: {len} bytes, {want} descriptors announced, {} passed",
                fds.len()
            ),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(Some((body, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_descriptors_arrive_together() {
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let (x, y) = UnixStream::pair().expect("pair");
        send(&mut a, b"first", &[x.as_fd(), y.as_fd()]).expect("send");
        // Larger than the socket's buffer: written while the other end reads.
        let sender = std::thread::spawn(move || {
            send(&mut a, &vec![7u8; 300_000], &[]).expect("send");
        });
        let (body, fds) = recv(&mut b).expect("recv").expect("a frame");
        assert_eq!(body, b"first");
        assert_eq!(fds.len(), 2);
        // The passed descriptors are the same sockets.
        let mut passed = UnixStream::from(fds.into_iter().next().expect("fd"));
        passed.write_all(b"hi").expect("write");
        let mut read = [0u8; 2];
        (&y).read_exact(&mut read).expect("read");
        assert_eq!(&read, b"hi");
        let (body, fds) = recv(&mut b).expect("recv").expect("a frame");
        assert_eq!((body.len(), fds.len()), (300_000, 0));
        sender.join().expect("the sender");
        assert!(recv(&mut b).expect("clean end").is_none());
    }
}
