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
//!
//! A listening side's certificate can change while it serves
//! ([`ServerTls::replace`], a configuration reload): each handshake asks
//! for the certificate in use, so new handshakes get the new one and
//! connections already up keep the session they made.

use std::io;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The listening side's TLS configuration (certificate and key). Clones
/// share the certificate: [`ServerTls::replace`] changes it for all.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    keys: Arc<Keys>,
}

/// A certificate chain and its key, read and checked
/// ([`ServerKey::load`]), ready to replace a listener's
/// ([`ServerTls::replace`]).
#[derive(Clone)]
pub struct ServerKey(Arc<CertifiedKey>);

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKey(..)")
    }
}

impl ServerKey {
    /// The chain in `cert` (PEM, leaf first) and its private key in `key`
    /// (PEM), checked to belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerKey, TlsError> {
        Ok(ServerKey(tlsfiles::certified_key(cert, key)?))
    }
}

/// The certificate every handshake of a listener is given.
#[derive(Debug)]
struct Keys(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Keys {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

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
    let ServerKey(key) = ServerKey::load(cert, key)?;
    let keys = Arc::new(Keys(RwLock::new(key)));
    let config = tlsfiles::server_config_resolving(Arc::clone(&keys) as _)?;
    Ok(ServerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        keys,
    })
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
        self.acceptor.accept(stream).await
    }

    /// Whether `key` holds the certificate chain served now.
    pub fn serves(&self, key: &ServerKey) -> bool {
        self.keys
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .cert
            == key.0.cert
    }

    /// Serves `key` to every handshake from now on; connections already
    /// up are not touched.
    pub fn replace(&self, key: &ServerKey) {
        *self.keys.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&key.0);
    }
}

/// The server side of an accepted connection: TLS if `acceptor` is given.
pub async fn accept(acceptor: Option<&ServerTls>, stream: TcpStream) -> io::Result<BoxIo> {
    match acceptor {
        Some(acceptor) => Ok(Box::new(acceptor.acceptor.accept(stream).await?)),
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
