//! TLS for the links between processes (rustls with the ring provider):
//! the control link between login and gate nodes, and the backend link
//! between services and gates, where they cross machines.
//!
//! TLS here authenticates the server (the gate) by certificate and
//! encrypts the link; the link's own challenge-response (a proof of the
//! shared secret, `proto::link_auth`) still runs inside it and still
//! authenticates both ends. Certificates and keys are PEM files; the dialing
//! side trusts the CA certificates in one PEM file and checks the name (or
//! IP address) it dialled against the certificate.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
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
    /// A PEM file cannot be read or holds nothing usable.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listening side: the certificate chain in `cert` (PEM, leaf first)
/// and its private key in `key` (PEM, PKCS#8, PKCS#1 or SEC1).
pub fn acceptor(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(ServerTls(TlsAcceptor::from(Arc::new(config))))
}

/// The dialing side: trusts the CA certificates in `ca` (PEM).
pub fn connector(ca: &Path) -> Result<ClientTls, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
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
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
    Ok(Box::new(connector.0.connect(name, stream).await?))
}
