//! Dialling, optionally from a chosen local address: one loopback source
//! address gives a load generator about 28,000 connections to one port (the
//! ephemeral port range), so `client bench --source-addrs 127.0.0.2,...`
//! spreads connections over several.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream, lookup_host};

/// Connects to `addr` (`host:port`), from `source` (port chosen by the
/// kernel) when given. Tries each address `addr` resolves to of the same
/// family as `source`, in order.
pub async fn connect(addr: &str, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let mut last = None;
    for target in lookup_host(addr).await? {
        if target.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = if source.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{addr} has no address of the family of {source}"),
        )
    }))
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn connects_from_the_given_source() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let source: IpAddr = "127.0.0.2".parse().unwrap();
        let stream = connect(&addr, Some(source)).await.unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), source);
        assert_eq!(stream.local_addr().unwrap().ip(), source);
        let plain = connect(&addr, None).await.unwrap();
        assert!(plain.local_addr().unwrap().ip().is_loopback());
        let v6: IpAddr = "::1".parse().unwrap();
        assert!(connect(&addr, Some(v6)).await.is_err());
    }
}
