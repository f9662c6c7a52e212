//! TLS on the links to the gates, for gates that serve their backend
//! listener over TLS (`backend.tls_cert_file`). The service trusts the CA
//! certificates of one PEM file and checks each gate's certificate against
//! the host (or IP address) of the gate address it dials. The link's own
//! proof of the link secret still runs inside TLS.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::ServiceError;

/// How a service dials its gates over TLS: the CAs it trusts.
#[derive(Clone)]
pub struct LinkTls(TlsConnector);

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkTls(..)")
    }
}

impl LinkTls {
    /// Trusts the CA certificates in the PEM file `path`.
    pub fn from_ca_file(path: &Path) -> Result<LinkTls, ServiceError> {
        let bad = |why: String| ServiceError::Config(format!("{}: {why}", path.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("no CA certificate in the file".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(LinkTls(TlsConnector::from(Arc::new(config))))
    }

    /// Runs the TLS handshake on `stream`, a connection to `addr`
    /// (`host:port`).
    pub(crate) async fn connect(
        &self,
        addr: &str,
        stream: TcpStream,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static> {
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        self.0.connect(name, stream).await
    }
}
