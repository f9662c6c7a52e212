//! TLS for the links between processes (rustls with the ring provider):
//! the control link between login and gate nodes, and the backend link
//! between services and gates, where they cross machines.
//!
//! TLS here authenticates the server (the gate) by certificate and
//! encrypts the link; the link's own challenge-response (a proof of the
//! shared secret, `proto::link_auth`) still runs inside it and still
//! authenticates both ends. Certificates and keys are PEM files; the dialing
//! side trusts the CA certificates in one PEM file and checks the name (or
//! IP address) it dialled against the certificate. Reading the files is
//! `tlsfiles`' job, shared with the service library and the client.

use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The listening side's TLS configuration (certificate and key).
#[derive(Clone)]
pub struct ServerTls(TlsAcceptor);

/// The dialing side's TLS configuration (trusted CAs).
#[derive(Clone)]
pub struct ClientTls(TlsConnector);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls(..)")
    }
}

/// A byte stream a link runs on: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A link's stream, whichever it is.
pub type BoxIo = Box<dyn Io>;

/// Why a TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The settings do not make a configuration (e.g. a certificate
    /// without its key).
    #[error("{path}: {why}")]
    File {
        /// The setting or file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// A PEM file cannot be used, or rustls refused what it holds.
    #[error(transparent)]
    Files(#[from] tlsfiles::Error),
}

/// The listening side: the certificate chain in `cert` (PEM, leaf first)
/// and its private key in `key` (PEM, PKCS#8, PKCS#1 or SEC1).
pub fn acceptor(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
    let config = tlsfiles::server_config(cert, key)?;
    Ok(ServerTls(TlsAcceptor::from(Arc::new(config))))
}

/// The dialing side: trusts the CA certificates in `ca` (PEM).
pub fn connector(ca: &Path) -> Result<ClientTls, TlsError> {
    let config = tlsfiles::client_config(ca)?;
    Ok(ClientTls(TlsConnector::from(Arc::new(config))))
}

impl ServerTls {
    /// The TLS handshake on an accepted connection.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.0.accept(stream).await
    }
}

/// The server side of an accepted connection: TLS if `acceptor` is given.
pub async fn accept(acceptor: Option<&ServerTls>, stream: TcpStream) -> io::Result<BoxIo> {
    match acceptor {
        Some(acceptor) => Ok(Box::new(acceptor.0.accept(stream).await?)),
        None => Ok(Box::new(stream)),
    }
}

/// The client side of a connection to `addr` (`host:port`): TLS if
/// `connector` is given, checking the certificate against `host` (a DNS
/// name or an IP address).
pub async fn connect(
    connector: Option<&ClientTls>,
    addr: &str,
    stream: TcpStream,
) -> io::Result<BoxIo> {
    let Some(connector) = connector else {
        return Ok(Box::new(stream));
    };
    let name =
        tlsfiles::server_name(addr).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(Box::new(connector.0.connect(name, stream).await?))
}
