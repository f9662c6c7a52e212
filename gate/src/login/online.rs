//! The login server's view of who is logged in, and skynet's
//! `login_handler` on top of it.
//!
//! Two pieces of state per uid, as in skynet's `logind`/`loginserver`:
//!
//! * the **in-progress lock** (multilogin off): held from just before the
//!   login handler runs until it returns; a second login of the same uid
//!   reaching that point meanwhile is answered `406` (spec §4.5);
//! * the **online table** `uid → (server, subid)`: a successful login of a
//!   uid already online first kicks the old session (spec §6.3).
//!
//! The gates report ended sessions through [`LoginLink`]; an entry is only
//! removed when the reported subid is the one on record, so a late report
//! about an older session can never remove a newer one.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use bytes::Bytes;

use crate::login::placement::{
    BoxFuture, End, GateLink, LoginLink, LoginRefusal, LoginRequest, Placer,
};
use crate::shard::ShardedMap;

/// Where a uid is logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineSession {
    /// The gate's server name.
    pub server: Bytes,
    /// The subid the gate allocated (decimal text).
    pub subid: Bytes,
}

/// The online table and the per-uid login locks. Shared (`Arc`) between
/// the login server and, as their [`LoginLink`], the gates.
#[derive(Debug, Default)]
pub struct OnlineTable {
    in_progress: ShardedMap<Bytes, ()>,
    /// One entry per logged-in user, so kept small: the server by its
    /// number in `servers`, the subid as a number where it is one (the
    /// gates' own subids always are).
    online: ShardedMap<Bytes, Entry>,
    /// The server names the entries refer to; only names of gates that
    /// took a login (or a configured gate's, restored) are added, so the
    /// list stays as short as the list of gates ([`GateLink::login`]
    /// refuses other names).
    servers: RwLock<Vec<Bytes>>,
}

/// How [`OnlineTable`] keeps an [`OnlineSession`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    server: u32,
    subid: Subid,
}

/// A subid as the online table keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subid {
    /// Canonical decimal text of this number (no sign, no leading zero).
    Number(u64),
    /// Anything else, as given.
    Text(Box<[u8]>),
}

impl Subid {
    fn new(text: &[u8]) -> Subid {
        let canonical = !text.is_empty()
            && text.len() <= 20
            && text.iter().all(u8::is_ascii_digit)
            && (text[0] != b'0' || text.len() == 1);
        let number = canonical
            .then(|| std::str::from_utf8(text).ok()?.parse::<u64>().ok())
            .flatten();
        match number {
            Some(n) => Subid::Number(n),
            None => Subid::Text(text.into()),
        }
    }

    fn to_bytes(&self) -> Bytes {
        match self {
            Subid::Number(n) => Bytes::from(n.to_string()),
            Subid::Text(text) => Bytes::copy_from_slice(text),
        }
    }

    fn is(&self, text: &[u8]) -> bool {
        match self {
            Subid::Number(_) => *self == Subid::new(text),
            Subid::Text(own) => **own == *text,
        }
    }
}

pub use crate::login::placement::PlaceError;

/// The one-process [`Placer`]: the online table and the gates of this
/// process.
#[derive(Clone)]
pub struct LocalPlacer {
    /// Who is online (the gates report ended sessions to it).
    pub online: Arc<OnlineTable>,
    /// The gates.
    pub gates: Arc<dyn GateLink>,
    /// `login.multilogin`.
    pub multilogin: bool,
}

impl std::fmt::Debug for LocalPlacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPlacer")
            .field("online", &self.online.len())
            .field("multilogin", &self.multilogin)
            .finish_non_exhaustive()
    }
}

impl Placer for LocalPlacer {
    fn place(&self, req: LoginRequest) -> BoxFuture<'static, Result<Bytes, PlaceError>> {
        Box::pin(Arc::clone(&self.online).place(Arc::clone(&self.gates), self.multilogin, req))
    }
}

impl OnlineTable {
    /// An empty table.
    pub fn new() -> OnlineTable {
        OnlineTable::default()
    }

    /// Where `uid` is logged in, if anywhere.
    pub fn session(&self, uid: &[u8]) -> Option<OnlineSession> {
        let entry = self.online.get(uid)?;
        let server = self.servers().get(entry.server as usize)?.clone();
        Some(OnlineSession {
            server,
            subid: entry.subid.to_bytes(),
        })
    }

    fn servers(&self) -> RwLockReadGuard<'_, Vec<Bytes>> {
        self.servers.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The number of the server `name` in `servers`, added if new.
    fn server_number(&self, name: &Bytes) -> u32 {
        if let Some(i) = self.servers().iter().position(|s| s == name) {
            return i as u32;
        }
        let mut servers = self.servers.write().unwrap_or_else(PoisonError::into_inner);
        match servers.iter().position(|s| s == name) {
            Some(i) => i as u32,
            None => {
                servers.push(name.clone());
                (servers.len() - 1) as u32
            }
        }
    }

    /// Number of uids online.
    pub fn len(&self) -> usize {
        self.online.len()
    }

    /// Whether nobody is online.
    pub fn is_empty(&self) -> bool {
        self.online.is_empty()
    }

    /// Takes the in-progress lock of `uid`, or `None` if another login of it
    /// holds it. Released when the guard drops.
    pub fn try_lock(self: &Arc<Self>, uid: &Bytes) -> Option<InProgress> {
        let mut shard = self.in_progress.shard(uid);
        if shard.contains_key(uid) {
            return None;
        }
        shard.insert(uid.clone(), ());
        Some(InProgress {
            table: Arc::clone(self),
            uid: uid.clone(),
        })
    }

    /// Removes `uid` if it is still recorded as `(server, subid)`. Returns
    /// whether it was.
    pub fn remove_if(&self, uid: &[u8], server: &[u8], subid: &[u8]) -> bool {
        let Some(server) = self.servers().iter().position(|s| s == server) else {
            return false;
        };
        self.online
            .remove_if(uid, |e| e.server as usize == server && e.subid.is(subid))
            .is_some()
    }

    fn set_online(&self, uid: Bytes, session: OnlineSession) {
        let entry = Entry {
            server: self.server_number(&session.server),
            subid: Subid::new(&session.subid),
        };
        self.online.insert(uid, entry);
    }

    /// Records `uid` as online on `server` with `subid` (a session taken
    /// over from an old process in a live upgrade).
    pub fn restore(&self, uid: Bytes, server: Bytes, subid: Bytes) {
        self.set_online(uid, OnlineSession { server, subid });
    }

    /// skynet's `login_handler` (spec §4.2 steps 7–8, §6.1):
    ///
    /// 1. unless `multilogin`, take the uid's in-progress lock, else
    ///    [`PlaceError::InProgress`] (`406`);
    /// 2. an unknown server is refused (`403`) before anything else changes;
    /// 3. if the uid is online, kick that session through the gate and wait
    ///    until it is gone; if it is still on record afterwards, refuse (`403`);
    /// 4. ask the gate to log the user in; its refusal is `403`;
    /// 5. record `uid → (server, subid)` and return the subid.
    ///
    /// Callers must let this future run to completion once it has started
    /// (the login server polls it in place and moves it to a task of its
    /// own if the dialogue is dropped): dropping it between the gate's
    /// answer and step 4 would leave a session the table does not know.
    pub async fn place(
        self: Arc<Self>,
        gates: Arc<dyn GateLink>,
        multilogin: bool,
        req: LoginRequest,
    ) -> Result<Bytes, PlaceError> {
        let (server, uid) = (req.server.clone(), req.uid.clone());
        let _lock = if multilogin {
            None
        } else {
            Some(self.try_lock(&uid).ok_or(PlaceError::InProgress)?)
        };
        if !gates.has_server(&server) {
            return Err(
                LoginRefusal::UnknownServer(String::from_utf8_lossy(&server).into_owned()).into(),
            );
        }
        if let Some(old) = self.session(&uid) {
            gates
                .kick(
                    old.server.clone(),
                    uid.clone(),
                    old.subid.clone(),
                    End::Relogin,
                )
                .await;
            // The kick resolves once the session is gone; its gate normally
            // reported the end already, this covers a gate that did not.
            self.remove_if(&uid, &old.server, &old.subid);
            if self.session(&uid).is_some() {
                // Only reachable with multilogin on: another login of the
                // uid finished while this one was kicking.
                return Err(LoginRefusal::AlreadyOnline.into());
            }
        }
        let subid = gates.login(req).await?;
        self.set_online(
            uid,
            OnlineSession {
                server,
                subid: subid.clone(),
            },
        );
        Ok(subid)
    }
}

impl LoginLink for OnlineTable {
    fn session_ended(&self, server: &[u8], uid: &[u8], subid: &[u8], reason: &End) {
        let removed = self.remove_if(uid, server, subid);
        tracing::debug!(
            uid = %crate::logging::esc(uid),
            server = %crate::logging::esc(server),
            subid = %crate::logging::esc(subid),
            cause = reason.label(),
            removed,
            "session ended"
        );
    }
}

/// The in-progress lock of one uid; released on drop.
#[derive(Debug)]
pub struct InProgress {
    table: Arc<OnlineTable>,
    uid: Bytes,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.table.in_progress.shard(&self.uid).remove(&self.uid);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use loginproto::handshake::SessionSecret;
    use tokio::sync::{Notify, oneshot};

    use super::*;

    /// A gate link that allocates subids 1, 2, 3… and records kicks; a
    /// login can be held until released.
    #[derive(Default)]
    struct FakeGates {
        next: AtomicU32,
        kicks: Mutex<Vec<(Bytes, Bytes)>>,
        table: Mutex<Option<Arc<OnlineTable>>>,
        hold: Mutex<Option<(oneshot::Sender<()>, Arc<Notify>)>>,
    }

    impl GateLink for FakeGates {
        fn login(&self, req: LoginRequest) -> BoxFuture<'_, Result<Bytes, LoginRefusal>> {
            Box::pin(async move {
                let hold = self.hold.lock().unwrap().take();
                if let Some((entered, release)) = hold {
                    let _ = entered.send(());
                    release.notified().await;
                }
                if req.server != "sample" {
                    return Err(LoginRefusal::UnknownServer("nosuch".into()));
                }
                let n = self.next.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(Bytes::from(n.to_string()))
            })
        }

        fn has_server(&self, server: &[u8]) -> bool {
            server == b"sample"
        }

        fn kick(&self, server: Bytes, uid: Bytes, subid: Bytes, _: End) -> BoxFuture<'_, ()> {
            Box::pin(async move {
                self.kicks
                    .lock()
                    .unwrap()
                    .push((uid.clone(), subid.clone()));
                let table = self.table.lock().unwrap().clone();
                if let Some(table) = table {
                    table.session_ended(&server, &uid, &subid, &End::Kicked("x".into()));
                }
            })
        }
    }

    fn secret() -> SessionSecret {
        SessionSecret::Skynet([7; 8])
    }

    fn request(server: &[u8], uid: &[u8]) -> LoginRequest {
        LoginRequest {
            server: Bytes::copy_from_slice(server),
            uid: Bytes::copy_from_slice(uid),
            user: Bytes::copy_from_slice(uid),
            secret: secret(),
        }
    }

    async fn place(
        table: &Arc<OnlineTable>,
        gates: &Arc<FakeGates>,
        uid: &'static str,
    ) -> Result<Bytes, PlaceError> {
        let gates: Arc<dyn GateLink> = gates.clone();
        Arc::clone(table)
            .place(gates, false, request(b"sample", uid.as_bytes()))
            .await
    }

    #[tokio::test]
    async fn relogin_kicks_and_late_end_keeps_new_session() {
        let table = Arc::new(OnlineTable::new());
        let gates = Arc::new(FakeGates::default());
        *gates.table.lock().unwrap() = Some(table.clone());
        assert_eq!(place(&table, &gates, "hello").await.unwrap(), "1");
        assert_eq!(place(&table, &gates, "hello").await.unwrap(), "2");
        assert_eq!(
            *gates.kicks.lock().unwrap(),
            vec![(Bytes::from_static(b"hello"), Bytes::from_static(b"1"))]
        );
        // A late report about subid 1 does not remove subid 2.
        table.session_ended(b"sample", b"hello", b"1", &End::Logout);
        assert_eq!(table.session(b"hello").unwrap().subid, "2");
        table.session_ended(b"sample", b"hello", b"2", &End::Logout);
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn kick_that_does_not_report_still_clears_the_entry() {
        let table = Arc::new(OnlineTable::new());
        let gates = Arc::new(FakeGates::default());
        assert_eq!(place(&table, &gates, "hello").await.unwrap(), "1");
        assert_eq!(place(&table, &gates, "hello").await.unwrap(), "2");
        assert_eq!(table.len(), 1);
    }

    #[tokio::test]
    async fn concurrent_login_of_same_uid_is_406() {
        let table = Arc::new(OnlineTable::new());
        let gates = Arc::new(FakeGates::default());
        let (entered_tx, entered_rx) = oneshot::channel();
        let release = Arc::new(Notify::new());
        *gates.hold.lock().unwrap() = Some((entered_tx, release.clone()));
        let first = tokio::spawn({
            let (table, gates) = (table.clone(), gates.clone());
            async move { place(&table, &gates, "alice").await }
        });
        entered_rx.await.unwrap();
        assert_eq!(
            place(&table, &gates, "alice").await,
            Err(PlaceError::InProgress)
        );
        // Other uids are not affected.
        assert_eq!(place(&table, &gates, "bob").await.unwrap(), "1");
        release.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), "2");
        // The lock is released after the handler returned.
        assert_eq!(place(&table, &gates, "alice").await.unwrap(), "3");
    }

    #[tokio::test]
    async fn unknown_server_does_not_kick_the_online_session() {
        let table = Arc::new(OnlineTable::new());
        let gates = Arc::new(FakeGates::default());
        assert_eq!(place(&table, &gates, "hello").await.unwrap(), "1");
        let link: Arc<dyn GateLink> = gates.clone();
        let err = table
            .clone()
            .place(link, false, request(b"nosuch", b"hello"))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            PlaceError::Refused(LoginRefusal::UnknownServer(_))
        ));
        assert!(gates.kicks.lock().unwrap().is_empty());
        assert_eq!(table.session(b"hello").unwrap().subid, "1");
    }

    #[tokio::test]
    async fn gate_refusal_releases_the_lock() {
        let table = Arc::new(OnlineTable::new());
        let gates: Arc<dyn GateLink> = Arc::new(FakeGates::default());
        let uid = Bytes::from_static(b"hello");
        let err = table
            .clone()
            .place(gates.clone(), false, request(b"nosuch", &uid))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            PlaceError::Refused(LoginRefusal::UnknownServer(_))
        ));
        assert!(table.try_lock(&uid).is_some());
        assert!(table.is_empty());
    }

    #[test]
    fn subids_are_kept_exactly_as_given() {
        let table = OnlineTable::new();
        let cases: [&[u8]; 7] = [
            b"0",
            b"7",
            b"18446744073709551615",
            b"18446744073709551616",
            b"007",
            b"",
            b"x-1",
        ];
        for (i, subid) in cases.iter().enumerate() {
            let uid = Bytes::from(format!("u{i}"));
            table.restore(
                uid.clone(),
                Bytes::from_static(b"sample"),
                Bytes::copy_from_slice(subid),
            );
            let session = table.session(&uid).unwrap();
            assert_eq!(&session.subid[..], *subid);
            assert_eq!(session.server, "sample");
        }
        // "007" is not "7": a report must name the subid on record.
        assert!(!table.remove_if(b"u4", b"sample", b"7"));
        assert!(!table.remove_if(b"u1", b"sample", b"07"));
        assert!(!table.remove_if(b"u1", b"other", b"7"));
        assert!(table.remove_if(b"u4", b"sample", b"007"));
        assert!(table.remove_if(b"u1", b"sample", b"7"));
        assert!(table.remove_if(b"u3", b"sample", b"18446744073709551616"));
        assert!(table.remove_if(b"u5", b"sample", b""));
        assert_eq!(table.len(), 3);
    }
}
