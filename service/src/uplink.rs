//! One link to one gate, for the life of the service: connect, register,
//! serve, and reconnect with backoff when the link is lost.
//!
//! The steps are modules of their own: [`crate::register`] dials the gate
//! and registers (TLS, the gate's challenge, the proofs of the link
//! secret), [`crate::connection`] serves one registered connection. This
//! module is the loop around them and what ends it: shutdown, a permanent
//! refusal, or a lost link to dial again.

use std::sync::Arc;

use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::backoff::Backoff;
use crate::config::Config;
pub(crate) use crate::connection::InFlight;
use crate::error::ServiceError;
use crate::gate::{GateHandle, Gates};
use crate::handler::Handler;
use crate::register::connect_and_serve;

/// What every link of a service shares.
#[derive(Debug)]
pub(crate) struct ServiceState<H> {
    pub(crate) config: Config,
    pub(crate) handler: H,
    pub(crate) gates: Gates,
    /// Bounds the requests handled at once across all links.
    pub(crate) permits: Arc<InFlight>,
    /// The cluster's gates as last announced by a gate (`(server name,
    /// backend address)`); `None` until one does.
    pub(crate) discovered: tokio::sync::watch::Sender<Option<Vec<(String, String)>>>,
}

/// How one connection ended.
pub(crate) enum End {
    /// Shutdown was requested (and the link drained), or came during a
    /// connect.
    Shutdown,
    /// Stop the whole service.
    Fatal(ServiceError),
    /// Reconnect. `registered` resets the backoff: the gate was reachable,
    /// so the next attempt should be quick.
    Lost { registered: bool, why: String },
}

pub(crate) fn lost(registered: bool, why: impl ToString) -> End {
    End::Lost {
        registered,
        why: why.to_string(),
    }
}

/// Runs the link to `gate` until shutdown (`Ok`) or a permanent refusal.
/// A gate found in the cluster (`announced`: its server name and address)
/// is also let go once its link is lost while the cluster no longer
/// announces it (it left; a link that stays up is kept whatever the
/// announcements say, since a gate missing from one list may only be late
/// to register again).
pub(crate) async fn run<H: Handler>(
    shared: Arc<ServiceState<H>>,
    gate: GateHandle,
    shutdown: CancellationToken,
    announced: Option<(String, String)>,
) -> Result<(), ServiceError> {
    let gone = || {
        announced.as_ref().is_some_and(|(name, addr)| {
            shared
                .discovered
                .borrow()
                .as_ref()
                .is_some_and(|list| !list.iter().any(|(n, a)| n == name && a == addr))
        })
    };
    let mut backoff = Backoff::new(shared.config.backoff_initial, shared.config.backoff_max);
    loop {
        match connect_and_serve(&shared, &gate, &shutdown).await {
            End::Shutdown => return Ok(()),
            End::Fatal(err) => {
                error!(%err, "giving up on this gate");
                return Err(err);
            }
            End::Lost { registered, why } => {
                if gone() {
                    tracing::info!(%why, "link lost to a gate that left the cluster: let go");
                    return Ok(());
                }
                if registered {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                if registered {
                    warn!(%why, ?delay, "link lost; reconnecting");
                } else {
                    warn!(%why, ?delay, "cannot register with the gate; retrying");
                }
                // A new list of the cluster's gates may say this one left.
                let mut lists = shared.discovered.subscribe();
                let listed = async {
                    loop {
                        if lists.changed().await.is_err() || gone() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = sleep(delay) => {}
                    () = listed, if announced.is_some() => {}
                }
                if gone() {
                    tracing::info!("the gate left the cluster: let go");
                    return Ok(());
                }
            }
        }
    }
}
