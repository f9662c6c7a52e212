//! A QA client's whole state: the login, the gate connection, the next
//! request number, the requests in flight and the responses received.
//!
//! The shell and the script runner both drive a [`Session`]; it keeps the
//! bookkeeping (round-trip times, what is pending, the last response per
//! request number) so both show the same facts in the same words.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use codec::{GateStatus, Response, ResponseFlag, Welcome};
use loginproto::handshake::SessionSecret;
use loginproto::login::Suite;
use loginproto::token::Credentials;

use crate::error::ClientError;
use crate::gate::{Extensions, GateArgs, GateConn, Inbound, Ticket};
use crate::login::{LoginArgs, login_pinned};
use crate::text;

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Login server address.
    pub login_addr: String,
    /// Gate address.
    pub gate_addr: String,
    /// User name (uid).
    pub user: String,
    /// Gate server name.
    pub server: String,
    /// Password.
    pub password: String,
    /// Crypt suite.
    pub suite: Suite,
    /// The login server's pinned long-term public key, if any.
    pub server_key: Option<[u8; 32]>,
    /// Deadline of each network step.
    pub timeout: Duration,
    /// Whether handshakes opt in to the gate's extensions (push, kick
    /// reasons, heartbeat); the subcommands' default is
    /// [`Extensions::OptIn`], `--plain` gives [`Extensions::Plain`].
    pub extensions: Extensions,
    /// Whether opted-in handshakes of an x25519 session ask for the sealed
    /// channel (the subcommands' default; `--no-seal` to not).
    pub seal: bool,
    /// Once the gate welcomed the opt-in, a heartbeat is sent when nothing
    /// was sent for this long (or a third of the gate's idle timeout, if
    /// shorter) while waiting for the gate; zero: never.
    pub heartbeat: Duration,
}

impl SessionConfig {
    /// The configuration the shared login and gate options name.
    pub fn new(args: &LoginArgs, gate: &GateArgs) -> SessionConfig {
        SessionConfig {
            login_addr: args.login_addr.clone(),
            gate_addr: gate.gate.clone(),
            user: args.user.clone(),
            server: args.server.clone(),
            password: args.password.clone(),
            suite: args.suite.into(),
            server_key: args.server_key,
            timeout: args.timeout,
            extensions: gate.extensions(),
            seal: !gate.no_seal,
            heartbeat: gate.heartbeat,
        }
    }
}

/// One-off changes to a login (a script's `login user=… password=…`).
#[derive(Debug, Clone, Default)]
pub struct LoginOverrides {
    /// Log in as this user instead.
    pub user: Option<String>,
    /// With this password instead.
    pub password: Option<String>,
    /// To this server name instead.
    pub server: Option<String>,
    /// With this suite instead.
    pub suite: Option<Suite>,
}

/// Which handshake index to use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IndexSpec {
    /// One more than the highest index tried so far (1 at first).
    #[default]
    Next,
    /// The last index the gate accepted (reusing it gets 403).
    Last,
    /// This number.
    Number(u64),
    /// This text, sent verbatim (for malformed-index tests).
    Text(String),
}

/// How to build a handshake; the default is a correct one with the next
/// index. The overrides exist to provoke each refusal on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectSpec {
    /// The index.
    pub index: IndexSpec,
    /// Put this uid into the username instead of the logged-in one.
    pub user: Option<String>,
    /// Put this subid into the username instead of the login's.
    pub subid: Option<String>,
    /// Sign with a wrong secret (expect 401).
    pub bad_mac: bool,
    /// Send this extension field verbatim instead of the configured one
    /// (`Some(empty)` sends none: a plain handshake).
    pub ext: Option<Vec<u8>>,
}

/// A request sent and not answered yet.
#[derive(Debug, Clone)]
pub struct Pending {
    /// What was sent.
    pub content: Bytes,
    /// When.
    pub sent_at: Instant,
}

/// The last response received for a request number.
#[derive(Debug, Clone)]
pub struct Received {
    /// OK or ERROR.
    pub flag: ResponseFlag,
    /// The response body.
    pub content: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// Time since the request was (last) sent, when it was pending.
    pub rtt: Option<Duration>,
}

/// Something that came from the gate.
#[derive(Debug, Clone)]
pub enum Event {
    /// A response, push, push-gap or kick package.
    Message(Incoming),
    /// The gate accepted the extension opt-in (right after `200 OK`).
    Welcome {
        /// What it serves (version, idle timeout).
        welcome: Welcome,
        /// The sequence number of the session's last push.
        last_push: u32,
    },
    /// The answer to a [`Session::ping`] (answers to the automatic
    /// heartbeats are not reported).
    Pong {
        /// Time since the ping was sent.
        rtt: Duration,
    },
    /// The gate closed the connection.
    Closed,
}

/// A package from the gate with the round-trip time of its request.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The parsed package.
    pub response: Response,
    /// Time since its request was sent (responses to pending requests only).
    pub rtt: Option<Duration>,
}

impl Incoming {
    /// One line for people, e.g. `<- s=0 ok "echo" (1.2ms)`.
    pub fn describe(&self) -> String {
        let r = &self.response;
        let rtt = self
            .rtt
            .map(|d| format!(" ({})", text::duration(d)))
            .unwrap_or_default();
        match r.flag {
            ResponseFlag::OK => format!("<- s={} ok {}{rtt}", r.number, text::payload(&r.content)),
            ResponseFlag::ERROR if r.content.is_empty() => format!("<- s={} error{rtt}", r.number),
            ResponseFlag::ERROR => {
                format!("<- s={} error {}{rtt}", r.number, text::payload(&r.content))
            }
            ResponseFlag::PUSH => format!("<- push #{} {}", r.number, text::payload(&r.content)),
            ResponseFlag::PUSH_GAP => format!(
                "<- push gap: pushes up to #{} were lost (dropped from the gate's backlog)",
                r.number
            ),
            ResponseFlag::KICK => format!("<- kicked: {}", text::payload(&r.content)),
            other => format!(
                "<- s={} flag={} {}{rtt}",
                r.number,
                other.0,
                text::payload(&r.content)
            ),
        }
    }
}

/// A QA client: login, gate connection and bookkeeping.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    conn: Option<GateConn>,
    login_time: Option<Duration>,
    handshake_time: Option<Duration>,
    highest_index: u64,
    accepted_index: Option<u64>,
    /// The request number the next [`Session::send`] without one uses.
    next_number: u32,
    pending: BTreeMap<u32, Pending>,
    responses: BTreeMap<u32, Received>,
    rtt: Histogram<u64>,
    pushes: u64,
    /// When something was last sent (requests and heartbeats).
    last_sent: Instant,
    /// Heartbeats not answered yet, oldest first: when a [`Session::ping`]
    /// was sent, or `None` for an automatic one.
    pings: VecDeque<Option<Instant>>,
    /// The reason of the kick package received on this login, if any.
    kicked: Option<Bytes>,
}

impl Session {
    /// A session that has not logged in yet.
    pub fn new(cfg: SessionConfig) -> Session {
        Session {
            cfg,
            conn: None,
            login_time: None,
            handshake_time: None,
            highest_index: 0,
            accepted_index: None,
            next_number: 0,
            pending: BTreeMap::new(),
            responses: BTreeMap::new(),
            rtt: new_histogram(),
            pushes: 0,
            last_sent: Instant::now(),
            pings: VecDeque::new(),
            kicked: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Changes the deadline of later network steps.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.cfg.timeout = timeout;
        if let Some(conn) = self.conn.as_mut() {
            conn.set_timeout(timeout);
        }
    }

    /// The ticket of the current login.
    pub fn ticket(&self) -> Option<&Ticket> {
        self.conn.as_ref().map(GateConn::ticket)
    }

    /// Whether a login succeeded.
    pub fn is_logged_in(&self) -> bool {
        self.conn.is_some()
    }

    /// Whether a handshaken gate connection is open.
    pub fn is_connected(&self) -> bool {
        self.conn.as_ref().is_some_and(GateConn::is_connected)
    }

    /// Logs in (again). A new login is a new gate session: the index, the
    /// request numbers, the pending requests and the responses start over.
    pub async fn login(&mut self, over: &LoginOverrides) -> Result<Ticket, ClientError> {
        let user = over.user.as_deref().unwrap_or(&self.cfg.user);
        let server = over.server.as_deref().unwrap_or(&self.cfg.server);
        let password = over.password.as_deref().unwrap_or(&self.cfg.password);
        let suite = over.suite.unwrap_or(self.cfg.suite);
        let creds = Credentials::new(user.as_bytes(), server.as_bytes(), password.as_bytes());
        let started = Instant::now();
        let success = login_pinned(
            &self.cfg.login_addr,
            suite,
            creds,
            self.cfg.server_key,
            self.cfg.timeout,
        )
        .await?;
        self.login_time = Some(started.elapsed());
        let ticket = Ticket::new(user.as_bytes(), server.as_bytes(), &success);
        self.conn = None;
        self.highest_index = 0;
        self.accepted_index = None;
        self.next_number = 0;
        self.pending.clear();
        self.responses.clear();
        self.pings.clear();
        self.kicked = None;
        let mut conn = GateConn::new(&self.cfg.gate_addr, ticket.clone(), self.cfg.timeout);
        conn.set_extensions(self.cfg.extensions.clone());
        conn.set_seal(self.cfg.seal);
        self.conn = Some(conn);
        Ok(ticket)
    }

    /// Forgets the login and drops the connection.
    pub fn forget_login(&mut self) {
        self.conn = None;
    }

    /// The index [`IndexSpec::Next`] would use.
    pub fn next_index(&self) -> u64 {
        self.highest_index.saturating_add(1)
    }

    /// The last index the gate accepted.
    pub fn accepted_index(&self) -> Option<u64> {
        self.accepted_index
    }

    /// Drops the current connection and handshakes on a new one as `spec`
    /// says. Returns the gate's status; the connection is kept only on
    /// `200 OK`. Returns the index text used alongside.
    pub async fn connect(
        &mut self,
        spec: &ConnectSpec,
    ) -> Result<(GateStatus, String), ClientError> {
        let conn = self.conn.as_mut().ok_or(ClientError::NotLoggedIn)?;
        let index = match &spec.index {
            IndexSpec::Next => self.highest_index.saturating_add(1).to_string(),
            IndexSpec::Last => self.accepted_index.unwrap_or(0).to_string(),
            IndexSpec::Number(n) => n.to_string(),
            IndexSpec::Text(text) => text.clone(),
        };
        let mut ticket = conn.ticket().clone();
        if let Some(user) = &spec.user {
            ticket.uid = user.as_bytes().to_vec();
        }
        if let Some(subid) = &spec.subid {
            ticket.subid = subid.as_bytes().to_vec();
        }
        if spec.bad_mac {
            ticket.secret = match ticket.secret {
                SessionSecret::Skynet(mut key) => {
                    key[0] ^= 0xff;
                    SessionSecret::Skynet(key)
                }
                SessionSecret::X25519(mut key) => {
                    key[0] ^= 0xff;
                    SessionSecret::X25519(key)
                }
            };
        }
        if let Ok(n) = index.parse::<u64>() {
            self.highest_index = self.highest_index.max(n);
        }
        let ext = match &spec.ext {
            Some(ext) if ext.is_empty() => None,
            Some(ext) => Some(ext.clone()),
            None => conn.handshake_ext(),
        };
        let started = Instant::now();
        self.pings.clear();
        let status = conn
            .connect_with(&ticket.handshake(index.as_bytes(), ext.as_deref()))
            .await?;
        self.handshake_time = Some(started.elapsed());
        self.last_sent = Instant::now();
        if status == GateStatus::OK {
            self.accepted_index = index.parse().ok().or(self.accepted_index);
        }
        Ok((status, index))
    }

    /// Closes the gate connection without logging out.
    pub fn disconnect(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.disconnect();
        }
    }

    /// The request number the next [`Session::send`] without one would use.
    pub fn next_number(&self) -> u32 {
        self.next_number
    }

    /// Sends `content` as a request with request number `number`, or with
    /// the next one. Returns the number used.
    pub async fn send(&mut self, number: Option<u32>, content: Bytes) -> Result<u32, ClientError> {
        let conn = self.conn.as_mut().ok_or(ClientError::NotLoggedIn)?;
        let number = number.unwrap_or(self.next_number);
        conn.send(&content, number).await?;
        self.last_sent = Instant::now();
        self.next_number = self.next_number.max(number.wrapping_add(1));
        self.pending.insert(
            number,
            Pending {
                content,
                sent_at: Instant::now(),
            },
        );
        Ok(number)
    }

    /// Sends a heartbeat; its answer comes as [`Event::Pong`].
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        let conn = self.conn.as_mut().ok_or(ClientError::NotLoggedIn)?;
        conn.ping().await?;
        self.last_sent = Instant::now();
        self.pings.push_back(Some(self.last_sent));
        Ok(())
    }

    /// Heartbeats sent with [`Session::ping`] and not answered yet.
    pub fn pings_pending(&self) -> usize {
        self.pings.iter().filter(|p| p.is_some()).count()
    }

    /// Whether the current connection opted in to the gate's extensions.
    pub fn is_opted_in(&self) -> bool {
        self.conn.as_ref().is_some_and(GateConn::is_opted_in)
    }

    /// Whether the current connection is sealed.
    pub fn is_sealed(&self) -> bool {
        self.conn.as_ref().is_some_and(GateConn::is_sealed)
    }

    /// The sequence number of the last push received in this login.
    pub fn last_push(&self) -> u32 {
        self.conn.as_ref().map_or(0, GateConn::last_push)
    }

    /// The reason of the kick package received on this login, if any.
    pub fn kicked(&self) -> Option<&Bytes> {
        self.kicked.as_ref()
    }

    /// The interval of automatic heartbeats on the current connection:
    /// only once the gate welcomed the opt-in and has an idle timeout.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        let welcome = self.conn.as_ref()?.welcome()?;
        heartbeat_interval(self.cfg.heartbeat, welcome.idle_ms)
    }

    /// The next thing the gate sends. While waiting on a connection whose
    /// gate welcomed the opt-in, sends a heartbeat whenever nothing was
    /// sent for [`Session::heartbeat_interval`] (its answer is not
    /// reported). Cancel safe; never completes while there is no
    /// connection.
    pub async fn recv(&mut self) -> Result<Event, ClientError> {
        let response = loop {
            let Some(conn) = self.conn.as_mut() else {
                return std::future::pending().await;
            };
            let due = conn
                .welcome()
                .and_then(|w| heartbeat_interval(self.cfg.heartbeat, w.idle_ms))
                .map(|interval| self.last_sent + interval);
            let inbound = match due {
                Some(due) => {
                    tokio::select! {
                        inbound = conn.recv_inbound() => Some(inbound?),
                        () = tokio::time::sleep_until(due.into()) => None,
                    }
                }
                None => Some(conn.recv_inbound().await?),
            };
            match inbound {
                // The heartbeat is due.
                None => {
                    conn.ping().await?;
                    self.last_sent = Instant::now();
                    self.pings.push_back(None);
                }
                Some(None) => return Ok(Event::Closed),
                Some(Some(Inbound::Welcome { welcome, last_push })) => {
                    return Ok(Event::Welcome { welcome, last_push });
                }
                Some(Some(Inbound::Pong)) => {
                    if let Some(Some(sent_at)) = self.pings.pop_front() {
                        return Ok(Event::Pong {
                            rtt: sent_at.elapsed(),
                        });
                    }
                }
                Some(Some(Inbound::Response(response))) => break response,
            }
        };
        let now = Instant::now();
        let mut rtt = None;
        match response.flag {
            ResponseFlag::KICK => {
                self.pushes += 1;
                self.kicked = Some(response.content.clone());
            }
            ResponseFlag::PUSH | ResponseFlag::PUSH_GAP => self.pushes += 1,
            flag => {
                rtt = self
                    .pending
                    .remove(&response.number)
                    .map(|p| now.saturating_duration_since(p.sent_at));
                if let Some(rtt) = rtt {
                    let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
                    self.rtt.saturating_record(micros.max(1));
                }
                self.responses.insert(
                    response.number,
                    Received {
                        flag,
                        content: response.content.clone(),
                        at: now,
                        rtt,
                    },
                );
            }
        }
        Ok(Event::Message(Incoming { response, rtt }))
    }

    /// Requests sent and not answered, by request number.
    pub fn pending(&self) -> &BTreeMap<u32, Pending> {
        &self.pending
    }

    /// The last response received per request number.
    pub fn responses(&self) -> &BTreeMap<u32, Received> {
        &self.responses
    }

    /// Login, handshake and round-trip times, one line each.
    pub fn timings(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let show = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), text::duration);
        lines.push(format!("login      {}", show(self.login_time)));
        lines.push(format!("handshake  {}", show(self.handshake_time)));
        let h = &self.rtt;
        if h.is_empty() {
            lines.push("round trip no responses yet".to_owned());
        } else {
            let us = |v: u64| text::duration(Duration::from_micros(v));
            lines.push(format!(
                "round trip n={} min {} p50 {} p90 {} p99 {} max {}",
                h.len(),
                us(h.min()),
                us(h.value_at_quantile(0.5)),
                us(h.value_at_quantile(0.9)),
                us(h.value_at_quantile(0.99)),
                us(h.max()),
            ));
        }
        if self.pushes > 0 {
            lines.push(format!(
                "pushes     {} received (last push #{})",
                self.pushes,
                self.last_push()
            ));
        }
        lines
    }
}

/// Heartbeats every `configured`, or every third of the gate's idle
/// timeout if that is shorter; none when either is zero.
fn heartbeat_interval(configured: Duration, idle_ms: u32) -> Option<Duration> {
    if configured.is_zero() || idle_ms == 0 {
        return None;
    }
    Some(configured.min(Duration::from_millis(u64::from(idle_ms)) / 3))
}

/// A latency histogram in microseconds: 1 µs to 1 hour, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_follow_the_welcome() {
        let twenty = Duration::from_secs(20);
        // The gate's 60 s idle timeout: every 20 s.
        assert_eq!(heartbeat_interval(twenty, 60_000), Some(twenty));
        // A shorter idle timeout: a third of it.
        assert_eq!(
            heartbeat_interval(twenty, 3_000),
            Some(Duration::from_secs(1))
        );
        // No idle timeout, or heartbeats off: none.
        assert_eq!(heartbeat_interval(twenty, 0), None);
        assert_eq!(heartbeat_interval(Duration::ZERO, 60_000), None);
    }
}
