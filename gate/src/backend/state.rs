//! What the backend's parts share: settings, the registry of instances, the
//! session table and the counters.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::metrics::Metrics;
use super::pending::Refusals;
use super::registry::Registry;
use super::sessions::Sessions;
use crate::config::BackendConfig;
use proto::link_auth::LinkSecret;

/// What the backend's parts share.
pub(crate) struct BackendState {
    pub(crate) cfg: BackendConfig,
    /// What every service link must prove it knows.
    pub(crate) secret: LinkSecret,
    /// TLS on the listener, if configured.
    pub(crate) tls: Option<crate::tls::ServerTls>,
    pub(crate) registry: Registry,
    pub(crate) sessions: Sessions,
    pub(crate) metrics: Arc<Metrics>,
    /// Links refused or closed before they proved the secret.
    pub(crate) refusals: Arc<Refusals>,
    pub(crate) next_link: AtomicU64,
    /// The cluster's gates, as last announced (cluster mode): every new
    /// link is told it after its registration.
    pub(crate) gate_list: std::sync::Mutex<Option<proto::backend::GateList>>,
}

impl std::fmt::Debug for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendState").finish_non_exhaustive()
    }
}
