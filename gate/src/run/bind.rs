//! The listeners of a process, bound from its configuration, with the
//! secrets and certificates they need loaded first (see [`super::serve`]
//! for which role binds which).

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::{Components, RunError};
use crate::backend::{Backend, LinkSecret};
use crate::config::Config;
use crate::net::{LISTEN_BACKLOG, listen};

/// A listener on `addr`; `what` names it in the error.
/// A listening socket taken over from an old process on the same address
/// (a live upgrade) comes first.
pub(super) fn listener(addr: SocketAddr, what: &'static str) -> Result<TcpListener, RunError> {
    if let Some(inherited) = crate::upgrade::new::inherited_listener(addr) {
        return inherited.map_err(|source| RunError::Listen { what, addr, source });
    }
    listen(addr, LISTEN_BACKLOG).map_err(|source| RunError::Listen { what, addr, source })
}

/// What a process with a gate binds for it: the gate's listener, and the
/// components that go with it (its WebSocket listener, the backend
/// listener) together with the operations listener `ops`, bound before.
pub(super) fn gate_side(
    config: &Config,
    ops: Option<TcpListener>,
) -> Result<(TcpListener, Components), RunError> {
    let gate = listener(config.gate.listen, "gate")?;
    let components = Components {
        ops,
        web_gate: web(config, config.web.gate_listen)?,
        tls_gate: tls(config.tls.gate_listen)?,
        backend: backend(config)?,
        ..Components::default()
    };
    Ok((gate, components))
}

/// The operations listener, if `ops.listen` is set.
pub(super) fn ops(config: &Config) -> Result<Option<TcpListener>, RunError> {
    config
        .ops
        .listen
        .map(|addr| listener(addr, "operations"))
        .transpose()
}

/// A WebSocket listener on `addr`, unless `web.enabled` is off.
pub(super) fn web(config: &Config, addr: SocketAddr) -> Result<Option<TcpListener>, RunError> {
    if !config.web.enabled {
        return Ok(None);
    }
    listener(addr, "WebSocket").map(Some)
}

/// A TLS listener on `addr`, if set.
pub(super) fn tls(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, RunError> {
    addr.map(|addr| listener(addr, "TLS")).transpose()
}

/// The backend listener services dial, if `backend.listen` is set: its
/// link secret loaded (required), TLS when both certificate files are set.
pub(super) fn backend(config: &Config) -> Result<Option<Backend>, RunError> {
    let Some(addr) = config.backend.listen else {
        return Ok(None);
    };
    let path = config.backend.secret_file.as_ref().ok_or_else(|| {
        RunError::Config(
            "backend services need a link secret: set backend.secret_file \
             (--link-secret-file FILE); make one with `gate link-secret > FILE`"
                .to_owned(),
        )
    })?;
    let secret = LinkSecret::from_file(path).map_err(|e| RunError::Config(e.to_string()))?;
    let mut backend = Backend::new(config.backend.clone(), listener(addr, "backend")?, secret);
    match (&config.backend.tls_cert_file, &config.backend.tls_key_file) {
        (Some(cert), Some(key)) => {
            let tls =
                crate::tls::acceptor(cert, key).map_err(|e| RunError::Config(e.to_string()))?;
            backend = backend.with_tls(tls);
        }
        (None, None) => {}
        _ => {
            return Err(RunError::Config(
                "backend.tls_cert_file and backend.tls_key_file go together".to_owned(),
            ));
        }
    }
    Ok(Some(backend))
}

/// Duplicates of every listening socket of a process (`named` and those
/// of `components`), named, for the next process of a live upgrade.
pub(super) fn duplicates(
    named: &[(&str, &TcpListener)],
    components: &Components,
) -> Vec<(String, std::os::fd::OwnedFd)> {
    use std::os::fd::AsFd;
    let dup = |name: &str, l: &TcpListener| {
        l.as_fd()
            .try_clone_to_owned()
            .ok()
            .map(|fd| (name.to_owned(), fd))
    };
    let mut out: Vec<_> = named.iter().filter_map(|(n, l)| dup(n, l)).collect();
    out.extend(
        components
            .web_login
            .as_ref()
            .and_then(|l| dup("web_login", l)),
    );
    out.extend(
        components
            .web_gate
            .as_ref()
            .and_then(|l| dup("web_gate", l)),
    );
    out.extend(
        components
            .tls_login
            .as_ref()
            .and_then(|l| dup("tls_login", l)),
    );
    out.extend(
        components
            .tls_gate
            .as_ref()
            .and_then(|l| dup("tls_gate", l)),
    );
    out.extend(components.ops.as_ref().and_then(|l| dup("ops", l)));
    out.extend(
        components
            .backend
            .as_ref()
            .and_then(Backend::listener_fd)
            .map(|fd| ("backend".to_owned(), fd)),
    );
    out
}
