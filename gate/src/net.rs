//! Listening sockets for the binaries (the gate's login, gate and backend
//! listeners, and `raw-echo`), all set up the same way.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Accept queue length of [`listen`]. A load generator or a crowd of
/// players reconnecting after a restart opens hundreds of connections at
/// once; with the usual 128, the connections that do not fit wait for a
/// SYN retransmission (about a second) before they are even accepted. The
/// kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with `SO_REUSEADDR` (a restarted server
/// binds again while old connections linger in TIME_WAIT), `TCP_NODELAY`
/// (on Linux, accepted sockets inherit it, which spares a system call per
/// connection) and an accept queue of `backlog`.
///
/// Must be called from within a tokio runtime.
pub fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), LISTEN_BACKLOG).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        if cfg!(target_os = "linux") {
            assert!(server.nodelay().unwrap());
        }
        server.write_all(b"hi").await.unwrap();
        let mut got = [0; 2];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
    }

    #[tokio::test]
    async fn rebinding_a_port_in_time_wait_works() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // The server closes first: its side goes to TIME_WAIT.
        drop(server);
        drop(client);
        drop(listener);
        listen(addr, 16).unwrap();
    }
}
