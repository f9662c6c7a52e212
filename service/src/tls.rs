//! TLS on the links to the gates, for gates that serve their backend
//! listener over TLS (`backend.tls_cert_file`). The service trusts the CA
//! certificates of one PEM file and checks each gate's certificate against
//! the host (or IP address) of the gate address it dials. The link's own
//! proof of the link secret still runs inside TLS.

use std::io;
use std::path::Path;
use std::sync::Arc;

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
        let config =
            tlsfiles::client_config(path).map_err(|e| ServiceError::Config(e.to_string()))?;
        Ok(LinkTls(TlsConnector::from(Arc::new(config))))
    }

    /// Runs the TLS handshake on `stream`, a connection to `addr`
    /// (`host:port`).
    pub(crate) async fn connect(
        &self,
        addr: &str,
        stream: TcpStream,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static> {
        let name = tlsfiles::server_name(addr)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.0.connect(name, stream).await
    }
}
