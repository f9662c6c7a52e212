//! Credential checks by a backend service: the [`Authenticator`] used when
//! `login.auth = "service"`.
//!
//! Each login sends one `AuthRequest` to an instance of
//! `backend.auth_service` (chosen by a stable hash of the user name, like
//! agent bindings) and waits for its `AuthReply` up to
//! `login.auth_timeout`. Allow logs the user in as the reply's uid (the
//! user name when empty); a deny, no registered instance, the instance's
//! link closing, or the deadline all answer `401` (the login server's one
//! refusal status), with the reason in the login log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proto::backend::auth_reply;

use super::instance::Instance;
use super::state::BackendState;
use crate::login::placement::BoxFuture;
use crate::login::{AuthError, Authenticator, Credentials};

/// Asks the `auth` service. Made by
/// [`Backend::authenticator`](super::Backend::authenticator).
pub struct ServiceAuth {
    pub(crate) shared: Arc<BackendState>,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for ServiceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAuth")
            .field("service", &self.shared.cfg.auth_service)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Removes a waiting auth request from its link when the login stops
/// waiting, whichever way (answer, deadline, the login server's own
/// timeout dropping the future).
struct Forget<'a> {
    link: &'a Instance,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.link.forget_auth(self.id);
    }
}

impl Authenticator for ServiceAuth {
    fn authenticate(&self, credentials: Credentials) -> BoxFuture<'_, Result<Bytes, AuthError>> {
        Box::pin(async move {
            let service = &self.shared.cfg.auth_service;
            let Some(link) = self.shared.registry.pick(service, &credentials.user, None) else {
                return Err(AuthError::Unavailable(format!(
                    "no instance of the {service:?} service is registered"
                )));
            };
            let user = Bytes::from(credentials.user);
            let deadline_ms = u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX);
            let Some((id, verdict)) = link.auth(
                user.clone(),
                Bytes::from(credentials.server),
                Bytes::copy_from_slice(&credentials.password),
                deadline_ms,
            ) else {
                return Err(AuthError::Unavailable(format!(
                    "{} is closing",
                    link.name()
                )));
            };
            let _forget = Forget { link: &link, id };
            match tokio::time::timeout(self.timeout, verdict).await {
                Err(_) => Err(AuthError::Timeout),
                Ok(Err(_)) => Err(AuthError::Unavailable(format!(
                    "{} closed before answering",
                    link.name()
                ))),
                Ok(Ok(Some(auth_reply::Result::Allow(allow)))) => Ok(if allow.uid.is_empty() {
                    user
                } else {
                    allow.uid
                }),
                Ok(Ok(Some(auth_reply::Result::Deny(deny)))) => Err(AuthError::Denied(deny.reason)),
                Ok(Ok(None)) => Err(AuthError::Unavailable(
                    "the auth service's reply has no verdict".into(),
                )),
            }
        })
    }

    fn name(&self) -> &'static str {
        "service"
    }
}
