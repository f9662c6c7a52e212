//! The registered service instances, by service name, and the choice of
//! one for a key (rendezvous hashing, `backend::hash`).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

use super::hash::{key_hash, score};
use super::instance::Instance;

#[derive(Debug, Default)]
struct Inner {
    by_service: HashMap<String, Vec<Arc<Instance>>>,
    /// Links registered with `all_session_events`.
    listeners: Vec<Arc<Instance>>,
}

/// The live links, by service. Read on every route-mode request and on
/// every (re)binding; written only when a link registers or goes away.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: RwLock<Inner>,
    /// Bumped on every change, so callers can wait for registrations.
    changed: watch::Sender<u64>,
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry {
            inner: RwLock::new(Inner::default()),
            changed: watch::Sender::new(0),
        }
    }

    // A panic while holding the lock cannot leave the maps half updated
    // (each update is one push or remove), so a poisoned lock is usable.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Adds a link; returns the link it replaces (same service and
    /// instance id), which the caller closes.
    pub(crate) fn insert(&self, link: Arc<Instance>) -> Option<Arc<Instance>> {
        let replaced = {
            let mut inner = self.write();
            let instances = inner.by_service.entry(link.service.clone()).or_default();
            let replaced = match instances.iter().position(|l| l.instance == link.instance) {
                Some(at) => Some(std::mem::replace(&mut instances[at], Arc::clone(&link))),
                None => {
                    instances.push(Arc::clone(&link));
                    None
                }
            };
            if let Some(old) = &replaced {
                inner.listeners.retain(|l| !Arc::ptr_eq(l, old));
            }
            if link.all_events {
                inner.listeners.push(link);
            }
            replaced
        };
        self.bump();
        replaced
    }

    /// Removes `link` if it is still registered (a replaced link is not).
    pub(crate) fn remove(&self, link: &Arc<Instance>) {
        let removed = {
            let mut inner = self.write();
            let mut removed = false;
            if let Some(instances) = inner.by_service.get_mut(&link.service) {
                let before = instances.len();
                instances.retain(|l| !Arc::ptr_eq(l, link));
                removed = instances.len() != before;
                if instances.is_empty() {
                    inner.by_service.remove(&link.service);
                }
            }
            inner.listeners.retain(|l| !Arc::ptr_eq(l, link));
            removed
        };
        if removed {
            self.bump();
        }
    }

    /// Tells waiters that something about the links changed (a goodbye).
    pub(crate) fn touch(&self) {
        self.bump();
    }

    /// The instance of `service` for `key`: the routable one with the
    /// highest rendezvous score, among those serving `route` if given.
    pub(crate) fn pick(
        &self,
        service: &str,
        key: &[u8],
        route: Option<&str>,
    ) -> Option<Arc<Instance>> {
        let key = key_hash(key);
        let inner = self.read();
        inner
            .by_service
            .get(service)?
            .iter()
            .filter(|l| l.is_routable() && route.is_none_or(|r| l.serves(r)))
            .max_by_key(|l| score(key, l.hash))
            .cloned()
    }

    /// Calls `f` on every routable link registered with
    /// `all_session_events`. `f` must not register or remove links.
    pub(crate) fn for_each_listener(&self, mut f: impl FnMut(&Arc<Instance>)) {
        for link in &self.read().listeners {
            if link.is_routable() {
                f(link);
            }
        }
    }

    /// Every registered link.
    pub(crate) fn all(&self) -> Vec<Arc<Instance>> {
        self.read().by_service.values().flatten().cloned().collect()
    }

    /// Number of routable instances of `service`.
    pub(crate) fn count(&self, service: &str) -> usize {
        self.read()
            .by_service
            .get(service)
            .map_or(0, |v| v.iter().filter(|l| l.is_routable()).count())
    }

    /// A receiver that sees every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
