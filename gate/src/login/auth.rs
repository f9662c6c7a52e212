//! Who may log in: the [`Authenticator`] trait and the two built-in ones.
//!
//! The login server hands the decrypted token's parts to an authenticator
//! and answers `401 Unauthorized` on any refusal. The trait returns a boxed
//! future so it stays object safe and so a later authenticator can ask a
//! backend service over the network (the server bounds every call with
//! `login.auth_timeout`).
//!
//! * [`AccountsFile`]: `user:PHC-hash` lines with argon2 hashes, verified on
//!   a fixed pool of hashing threads with one reused memory block each
//!   ([`super::hashing`]), so a slow hash never stalls the runtime and a
//!   login storm cannot grow the process's memory.
//! * [`DemoAuth`]: skynet's example `logind`: any user, password `password`.
//!   Only for demos and load tests; the server warns loudly when it runs.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use argon2::password_hash::PasswordHasher;
use argon2::{Argon2, PasswordHash};
use bytes::Bytes;

use super::hashing::{HashPool, Submit};
use crate::login::placement::BoxFuture;
use crate::reload::Live;

/// What the client claimed in its login token (`user@server:password`, each
/// part base64-decoded); `Debug` hides the password.
pub use loginproto::token::Credentials;

/// Why an authenticator refused. Every variant but [`AuthError::Busy`] is
/// answered `401 Unauthorized`; the distinction is for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The credentials are wrong (unknown user or wrong password).
    #[error("denied: {0}")]
    Denied(String),
    /// The authenticator could not decide (backend down, overloaded, broken
    /// hash). The client is refused all the same.
    #[error("authenticator unavailable: {0}")]
    Unavailable(String),
    /// The authenticator did not answer within `login.auth_timeout`.
    #[error("authenticator timed out")]
    Timeout,
    /// The authenticator has more work waiting than it may queue (the
    /// hashing pool's queue is full): answered `503 Service Unavailable`,
    /// like any overload, and the credentials were not checked.
    #[error("authenticator busy: {0}")]
    Busy(String),
}

/// Decides whether credentials are good and which uid they log in as.
///
/// Object safe (`Arc<dyn Authenticator>`); implementations may do I/O.
pub trait Authenticator: Send + Sync + 'static {
    /// Checks `credentials`; `Ok(uid)` logs the client in as `uid`.
    fn authenticate(&self, credentials: Credentials) -> BoxFuture<'_, Result<Bytes, AuthError>>;

    /// A short name for logs (`"accounts"`, `"demo"`, …).
    fn name(&self) -> &'static str;

    /// The hashing pool the authenticator checks passwords on, if it has
    /// one (its numbers are exported as metrics).
    fn hash_pool(&self) -> Option<HashPool> {
        None
    }
}

/// skynet's example `logind`: any user name with password `password` logs
/// in, with the user name as uid. Never use it in production.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoAuth;

impl DemoAuth {
    /// The only password the demo accepts.
    pub const PASSWORD: &'static [u8] = b"password";
}

impl Authenticator for DemoAuth {
    fn authenticate(&self, credentials: Credentials) -> BoxFuture<'_, Result<Bytes, AuthError>> {
        Box::pin(async move {
            // The demo password is public, so a constant-time compare buys nothing.
            if credentials.user.is_empty() {
                Err(AuthError::Denied("empty user name".into()))
            } else if credentials.password.as_slice() == Self::PASSWORD {
                Ok(Bytes::from(credentials.user))
            } else {
                Err(AuthError::Denied("wrong password".into()))
            }
        })
    }

    fn name(&self) -> &'static str {
        "demo"
    }
}

/// A malformed accounts file, with where it went wrong.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The file could not be read.
    #[error("cannot read accounts file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is not `user:PHC-hash`, or its hash does not parse.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file (or `<memory>` for [`AccountsFile::parse`]).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Accounts from a file of `user:PHC-hash` lines.
///
/// Blank lines and lines starting with `#` are ignored; surrounding
/// whitespace (and a CR from CRLF files) is trimmed. The user name is
/// everything before the last `:` (PHC strings never contain `:`, so a user
/// name may). Hashes must be argon2 (`$argon2id$…`, `$argon2i$…`,
/// `$argon2d$…`); [`hash_password`] makes them. The uid of a user is its
/// name.
///
/// Verifications run on a [`HashPool`]: one thread per core by default,
/// each reusing one block of the largest memory cost in the file, so the
/// hashing memory is at most `cores × that cost` (38 MiB on two cores with
/// the default 19 MiB), however fast logins arrive. Logins beyond it wait
/// in the pool's bounded queue; past that they are answered `503`.
///
/// Clones share the accounts: [`AccountsFile::replace`] (a configuration
/// reload) changes them for every clone at once, and for the login server
/// holding one.
#[derive(Clone)]
pub struct AccountsFile {
    table: Arc<Live<Table>>,
    pool: HashPool,
}

/// The accounts of one reading of the file.
struct Table {
    accounts: HashMap<Bytes, Arc<PasswordHash>>,
    /// Verified against for unknown users, so that the time a refusal takes
    /// does not tell which user names exist (`None`: no accounts at all).
    dummy: Option<Arc<PasswordHash>>,
}

impl fmt::Debug for AccountsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountsFile")
            .field("accounts", &self.len())
            .finish_non_exhaustive()
    }
}

/// How a new reading of the accounts file differs from the accounts in
/// use ([`AccountsFile::changes`]), in numbers of user names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountsChanges {
    /// Names that are new.
    pub added: usize,
    /// Names that are gone.
    pub removed: usize,
    /// Names whose hash changed.
    pub changed: usize,
}

impl AccountsChanges {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        *self == AccountsChanges::default()
    }
}

impl fmt::Display for AccountsChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} added, {} removed, {} changed",
            self.added, self.removed, self.changed
        )
    }
}

impl AccountsFile {
    /// Reads and checks an accounts file.
    pub fn load(path: &Path) -> Result<AccountsFile, AccountsError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccountsError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_named(&text, path)
    }

    /// Parses accounts from text (the contents of an accounts file).
    pub fn parse(text: &str) -> Result<AccountsFile, AccountsError> {
        Self::parse_named(text, Path::new("<memory>"))
    }

    fn parse_named(text: &str, path: &Path) -> Result<AccountsFile, AccountsError> {
        let bad = |line: usize, reason: String| AccountsError::Line {
            path: path.to_owned(),
            line,
            reason,
        };
        let mut accounts = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.rsplit_once(':') else {
                return Err(bad(number, "expected `user:$argon2id$...`".into()));
            };
            if user.is_empty() {
                return Err(bad(number, "empty user name".into()));
            }
            let parsed = PasswordHash::new(hash)
                .map_err(|e| bad(number, format!("invalid PHC hash for {user:?}: {e}")))?;
            if !parsed.algorithm.as_str().starts_with("argon2") {
                return Err(bad(
                    number,
                    format!(
                        "hash for {user:?} uses {:?}; only argon2 is supported",
                        parsed.algorithm.as_str()
                    ),
                ));
            }
            if parsed.salt.is_none() || parsed.hash.is_none() {
                return Err(bad(
                    number,
                    format!("hash for {user:?} lacks its salt or output"),
                ));
            }
            // Catch hashes whose parameters argon2 cannot run with now, not
            // at the first login.
            argon2::Params::try_from(&parsed)
                .map_err(|e| bad(number, format!("bad argon2 parameters for {user:?}: {e}")))?;
            if accounts
                .insert(Bytes::copy_from_slice(user.as_bytes()), Arc::new(parsed))
                .is_some()
            {
                return Err(bad(number, format!("user {user:?} is listed twice")));
            }
        }
        // Same parameters as a real account, so that an unknown user costs
        // as much time as a wrong password.
        let dummy = match accounts.values().next() {
            None => None,
            Some(sample) => {
                let params = argon2::Params::try_from(sample.as_ref())
                    .map_err(|e| bad(0, format!("cannot read argon2 parameters: {e}")))?;
                let hash = hash_with(b"not the password of any user", params)
                    .map_err(|e| bad(0, format!("cannot compute the dummy hash: {e}")))?;
                Some(Arc::new(PasswordHash::new(&hash).map_err(|e| {
                    bad(0, format!("cannot parse the dummy hash: {e}"))
                })?))
            }
        };
        Ok(AccountsFile {
            table: Arc::new(Live::new(Table { accounts, dummy })),
            pool: HashPool::per_core(),
        })
    }

    /// How the accounts of `other` (a new reading of the file) differ
    /// from these.
    pub fn changes(&self, other: &AccountsFile) -> AccountsChanges {
        let (old, new) = (self.table.load(), other.table.load());
        let mut changes = AccountsChanges::default();
        for (user, hash) in &new.accounts {
            match old.accounts.get(user) {
                None => changes.added += 1,
                Some(before) if before.to_string() != hash.to_string() => changes.changed += 1,
                Some(_) => {}
            }
        }
        changes.removed = old
            .accounts
            .keys()
            .filter(|user| !new.accounts.contains_key(*user))
            .count();
        changes
    }

    /// Takes the accounts of `other` (a new reading of the file) for this
    /// file and every clone of it: logins checked from now on use them; a
    /// check already running finishes against the hash it started with.
    /// Sessions of removed users are not ended (they logged in while they
    /// were allowed to).
    pub fn replace(&self, other: &AccountsFile) {
        let table = other.table.load();
        self.table.store(Table {
            accounts: table.accounts.clone(),
            dummy: table.dummy.clone(),
        });
    }

    /// Verifies on `pool` instead of the default one (one worker per core).
    #[must_use]
    pub fn with_pool(mut self, pool: HashPool) -> AccountsFile {
        self.pool = pool;
        self
    }

    /// The hashing pool (its workers, peak and memory, for tests and
    /// metrics).
    pub fn pool(&self) -> &HashPool {
        &self.pool
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.table.load().accounts.len()
    }

    /// Whether the file lists no account (every login is then refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Authenticator for AccountsFile {
    fn hash_pool(&self) -> Option<HashPool> {
        Some(self.pool.clone())
    }

    fn authenticate(&self, credentials: Credentials) -> BoxFuture<'_, Result<Bytes, AuthError>> {
        Box::pin(async move {
            let table = self.table.load();
            let known = table.accounts.get(credentials.user.as_slice());
            let is_known = known.is_some();
            let Some(hash) = known.or(table.dummy.as_ref()).map(Arc::clone) else {
                return Err(AuthError::Denied("unknown user".into()));
            };
            // argon2 takes tens of milliseconds on purpose: it runs on the
            // pool's threads, never the runtime's. If this future is
            // dropped (auth timeout) a queued job is skipped and a running
            // one finishes unheard.
            let answer = self
                .pool
                .submit(credentials.password, hash)
                .map_err(|e| match e {
                    Submit::Busy => AuthError::Busy("password hashing queue full".into()),
                    Submit::Closed => AuthError::Unavailable("hashing pool closed".into()),
                })?;
            let verified = answer
                .await
                .map_err(|_| AuthError::Unavailable("hashing worker failed".into()))?;
            match (is_known, verified) {
                (false, _) => Err(AuthError::Denied("unknown user".into())),
                (true, Ok(true)) => Ok(Bytes::from(credentials.user)),
                (true, Ok(false)) => Err(AuthError::Denied("wrong password".into())),
                (true, Err(e)) => Err(AuthError::Unavailable(format!("cannot verify: {e}"))),
            }
        })
    }

    fn name(&self) -> &'static str {
        "accounts"
    }
}

/// Hashes a password into an argon2id PHC string (argon2's default
/// parameters, a fresh random salt from the OS), the format of the
/// accounts file.
pub fn hash_password(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    hash_with(password, argon2::Params::default())
}

/// [`hash_password`] with explicit argon2id costs: memory in KiB,
/// iterations, lanes. Tests use cheap ones; production should keep the
/// defaults (19456 KiB, 2, 1) or raise them.
pub fn hash_password_with(
    password: &[u8],
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
) -> Result<String, argon2::password_hash::Error> {
    let params = argon2::Params::new(m_cost_kib, t_cost, p_cost, None)?;
    hash_with(password, params)
}

fn hash_with(
    password: &[u8],
    params: argon2::Params,
) -> Result<String, argon2::password_hash::Error> {
    let argon2 = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    Ok(argon2.hash_password(password)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: the tests check behaviour, not hardness.
    fn cheap(password: &[u8]) -> String {
        hash_password_with(password, 8, 1, 1).unwrap()
    }

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials::new(user, "sample", password)
    }

    #[tokio::test]
    async fn demo_accepts_only_the_demo_password() {
        let demo = DemoAuth;
        assert_eq!(
            demo.authenticate(creds("hello", "password")).await,
            Ok(Bytes::from_static(b"hello"))
        );
        assert!(matches!(
            demo.authenticate(creds("hello", "wrong")).await,
            Err(AuthError::Denied(_))
        ));
        assert!(demo.authenticate(creds("", "password")).await.is_err());
    }

    #[tokio::test]
    async fn accounts_verify_argon2() {
        let hash = cheap(b"s3cret");
        assert!(hash.starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
        let text = format!("# players\n\nalice:{hash}\r\n  b:o:b:{hash}  \n");
        let accounts = AccountsFile::parse(&text).unwrap();
        assert_eq!(accounts.len(), 2);
        assert_eq!(
            accounts.authenticate(creds("alice", "s3cret")).await,
            Ok(Bytes::from_static(b"alice"))
        );
        assert_eq!(
            accounts.authenticate(creds("b:o:b", "s3cret")).await,
            Ok(Bytes::from_static(b"b:o:b"))
        );
        assert_eq!(
            accounts.authenticate(creds("alice", "wrong")).await,
            Err(AuthError::Denied("wrong password".into()))
        );
        assert_eq!(
            accounts.authenticate(creds("mallory", "s3cret")).await,
            Err(AuthError::Denied("unknown user".into()))
        );
    }

    #[tokio::test]
    async fn a_replaced_file_holds_for_every_clone() {
        let (a, b) = (cheap(b"a"), cheap(b"b"));
        let accounts = AccountsFile::parse(&format!("alice:{a}\nbob:{b}\n")).unwrap();
        let serving = accounts.clone();
        let reread = AccountsFile::parse(&format!("alice:{b}\ncarol:{a}\n")).unwrap();
        assert_eq!(
            accounts.changes(&reread),
            AccountsChanges {
                added: 1,
                removed: 1,
                changed: 1
            }
        );
        accounts.replace(&reread);
        assert!(accounts.changes(&reread).is_empty());
        assert_eq!(
            serving.authenticate(creds("carol", "a")).await,
            Ok(Bytes::from_static(b"carol"))
        );
        assert_eq!(
            serving.authenticate(creds("alice", "b")).await,
            Ok(Bytes::from_static(b"alice"))
        );
        assert!(serving.authenticate(creds("bob", "b")).await.is_err());
    }

    #[test]
    fn malformed_files_name_the_line() {
        let hash = cheap(b"x");
        let cases = [
            (format!("a:{hash}\nno colon here\n"), 2, "expected"),
            (format!("\n:{hash}\n"), 2, "empty user"),
            ("a:$argon2id$garbage\n".to_owned(), 1, "invalid PHC"),
            ("a:$argon2id$v=19$m=19456,t=2,p=1\n".to_owned(), 1, "lacks"),
            (format!("a:{hash}\n# c\na:{hash}\n"), 3, "twice"),
            (
                "a:$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n".to_owned(),
                1,
                "only argon2",
            ),
        ];
        for (text, line_no, needle) in cases {
            match AccountsFile::parse(&text) {
                Err(AccountsError::Line { line, reason, .. }) => {
                    assert_eq!(line, line_no, "{text:?}: {reason}");
                    assert!(reason.contains(needle), "{text:?}: {reason}");
                }
                other => panic!("{text:?}: expected a line error, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn empty_file_refuses_everyone() {
        let accounts = AccountsFile::parse("# nobody yet\n").unwrap();
        assert!(accounts.is_empty());
        assert!(accounts.authenticate(creds("alice", "x")).await.is_err());
    }

    #[test]
    fn default_hash_is_argon2id_with_default_cost() {
        let hash = hash_password(b"pw").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = AccountsFile::load(Path::new("/nonexistent/accounts")).unwrap_err();
        assert!(matches!(err, AccountsError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/accounts"));
    }
}
