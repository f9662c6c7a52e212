//! rustls configurations from PEM files, and the server name of an address.
//!
//! The gate, the service library and the client each speak TLS somewhere
//! (links between processes, `wss://`), and each needs the same three
//! things: read a certificate chain and its key from PEM files, trust the
//! CA certificates of one PEM file, and check a peer's certificate against
//! the host part of the `host:port` it dialled. This crate does exactly
//! that once, so the three agree on what a usable file is and word their
//! errors the same way. The sockets and the handshake stay with the
//! callers (tokio-rustls takes the configurations built here).
//!
//! Every configuration uses rustls' *ring* provider and its safe default
//! protocol versions (TLS 1.2 and 1.3); no client certificates are asked
//! for or sent.
//!
//! ```no_run
//! use std::path::Path;
//!
//! # fn main() -> Result<(), tlsfiles::Error> {
//! // The listening side: a chain (leaf first) and its key.
//! let server = tlsfiles::server_config(Path::new("cert.pem"), Path::new("key.pem"))?;
//! // The dialing side: the CAs to trust, and the name to check.
//! let client = tlsfiles::client_config(Path::new("ca.pem"))?;
//! let name = tlsfiles::server_name("gate.example:7000")?;
//! # let _ = (server, client, name);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, InvalidDnsNameError, PrivateKeyDer, ServerName};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why a TLS configuration or a server name cannot be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A PEM file cannot be read, does not parse, holds nothing usable, or
    /// holds a CA certificate rustls refuses.
    #[error("{}: {why}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the configuration as a whole (e.g. a key that does
    /// not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The host part of an address is neither a DNS name nor an IP address.
    #[error("{host}: {why}")]
    ServerName {
        /// The host part as given.
        host: String,
        /// What rustls said of it.
        why: InvalidDnsNameError,
    },
}

fn file_error(path: &Path, why: impl ToString) -> Error {
    Error::File {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

/// The certificates in the PEM file `path`, in file order (for a chain:
/// the leaf first).
///
/// A file without any certificate is an error: it is always a wrong path
/// or a wrong file, and failing here names it, where a handshake failing
/// later would not.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The first private key in the PEM file `path` (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// A root store holding every CA certificate in the PEM file `path`.
///
/// A certificate rustls refuses as a trust anchor is reported against the
/// file, as is a file without any.
pub fn root_store(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| file_error(path, e))? {
        roots
            .add(cert.map_err(|e| file_error(path, e))?)
            .map_err(|e| file_error(path, e))?;
    }
    if roots.is_empty() {
        return Err(file_error(path, "no CA certificate in the file"));
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listening side's configuration: the certificate chain in `cert`
/// (PEM, leaf first) and its private key in `key`; no client certificates.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, Error> {
    let chain = certificates(cert)?;
    let key = private_key(key)?;
    Ok(ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?)
}

/// The certificate chain in `cert` (PEM, leaf first) with its private key
/// in `key`, checked to belong together, ready for a certificate resolver
/// (a server that changes its certificate while it runs hands these out
/// per handshake, see [`server_config_resolving`]).
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, Error> {
    let chain = certificates(cert)?;
    let key = private_key(key)?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider())?))
}

/// The listening side's configuration with the certificate chosen by
/// `resolver` at each handshake (as [`server_config`] otherwise: safe
/// defaults, no client certificates).
pub fn server_config_resolving(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<ServerConfig, Error> {
    Ok(ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver))
}

/// The dialing side's configuration: trusts the CA certificates in `ca`
/// (PEM) and nothing else (no system roots); no client certificate.
pub fn client_config(ca: &Path) -> Result<ClientConfig, Error> {
    let roots = root_store(ca)?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The host part of `addr`: `host` of `host:port`, the address inside the
/// brackets of `[v6]:port`, or `addr` itself when it has no port.
///
/// ```
/// assert_eq!(tlsfiles::host("gate.example:7000"), "gate.example");
/// assert_eq!(tlsfiles::host("[::1]:7000"), "::1");
/// assert_eq!(tlsfiles::host("127.0.0.1"), "127.0.0.1");
/// ```
pub fn host(addr: &str) -> &str {
    addr.rsplit_once(':')
        .map_or(addr, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// The name a certificate must carry for a connection dialled to `addr`
/// (`host:port`): the DNS name or IP address of its [`host`].
pub fn server_name(addr: &str) -> Result<ServerName<'static>, Error> {
    let host = host(addr);
    ServerName::try_from(host.to_owned()).map_err(|why| Error::ServerName {
        host: host.to_owned(),
        why,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// PEM files of a CA and a `127.0.0.1` certificate it signed, in a
    /// directory of their own (removed on drop).
    struct Files {
        dir: PathBuf,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    }

    impl Files {
        fn new() -> Files {
            // One directory per test, so tests running at once never share.
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "tlsfiles-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let ca_key = rcgen::KeyPair::generate().expect("CA key");
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed");
            let issuer = rcgen::Issuer::new(ca_params, ca_key);
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
                .expect("params")
                .signed_by(&key, &issuer)
                .expect("signed");
            let files = Files {
                ca: dir.join("ca.pem"),
                cert: dir.join("cert.pem"),
                key: dir.join("key.pem"),
                dir,
            };
            std::fs::write(&files.ca, ca_cert.pem()).expect("write");
            std::fs::write(&files.cert, cert.pem()).expect("write");
            std::fs::write(&files.key, key.serialize_pem()).expect("write");
            files
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.join(name);
            std::fs::write(&path, text).expect("write");
            path
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_certificate_and_its_key_make_a_server_config() {
        let files = Files::new();
        assert_eq!(certificates(&files.cert).expect("chain").len(), 1);
        server_config(&files.cert, &files.key).expect("server config");
    }

    #[test]
    fn a_ca_file_makes_a_client_config() {
        let files = Files::new();
        assert_eq!(root_store(&files.ca).expect("roots").len(), 1);
        client_config(&files.ca).expect("client config");
    }

    #[test]
    fn a_missing_file_names_the_file() {
        let files = Files::new();
        let missing = files.dir.join("missing.pem");
        for error in [
            server_config(&missing, &files.key).expect_err("no cert"),
            server_config(&files.cert, &missing).expect_err("no key"),
            client_config(&missing).expect_err("no CA"),
        ] {
            assert!(matches!(error, Error::File { ref path, .. } if *path == missing));
            assert!(
                error
                    .to_string()
                    .starts_with(&missing.display().to_string())
            );
        }
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let files = Files::new();
        let empty = files.write("empty.pem", "");
        assert_eq!(
            certificates(&empty).expect_err("empty").to_string(),
            format!("{}: no certificate in the file", empty.display())
        );
        assert_eq!(
            client_config(&empty).expect_err("empty").to_string(),
            format!("{}: no CA certificate in the file", empty.display())
        );
        // A key file holds no certificate either.
        assert!(server_config(&files.key, &files.key).is_err());
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let files = Files::new();
        let other = files.write(
            "other-key.pem",
            &rcgen::KeyPair::generate().expect("key").serialize_pem(),
        );
        let error = server_config(&files.cert, &other).expect_err("mismatch");
        assert!(matches!(error, Error::Rustls(_)), "{error}");
        assert!(error.to_string().starts_with("TLS configuration: "));
    }

    #[test]
    fn a_certified_key_checks_the_key_against_the_certificate() {
        let files = Files::new();
        let key = certified_key(&files.cert, &files.key).expect("certified key");
        assert_eq!(key.cert, certificates(&files.cert).expect("chain"));
        let other = files.write(
            "other-key.pem",
            &rcgen::KeyPair::generate().expect("key").serialize_pem(),
        );
        assert!(matches!(
            certified_key(&files.cert, &other),
            Err(Error::Rustls(_))
        ));
    }

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        assert_eq!(
            server_name("gate.example:7000").expect("dns"),
            ServerName::try_from("gate.example").expect("dns")
        );
        assert_eq!(
            server_name("127.0.0.1:7000").expect("v4"),
            ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
        );
        assert_eq!(
            server_name("[::1]:7000").expect("v6"),
            ServerName::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST).into())
        );
        assert_eq!(host("no-port"), "no-port");
        let error = server_name("bad host!:1").expect_err("not a name");
        assert!(matches!(error, Error::ServerName { ref host, .. } if host == "bad host!"));
        assert!(error.to_string().starts_with("bad host!: "));
    }
}
