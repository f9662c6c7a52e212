//! A service's settings, each with its default, and the builder that fills
//! them in.

use std::time::Duration;

use proto::link_auth::LinkSecret;

use crate::error::ServiceError;

/// Settings of a [`Service`](crate::Service). Build with
/// [`Config::new`] (all defaults) or [`Service::builder`](crate::Service::builder).
#[derive(Debug, Clone)]
pub struct Config {
    /// Backend addresses (`host:port`) of the gates to serve; one link
    /// each, resolved again on every connect, kept for the life of the
    /// service. In a cluster one is enough: the gates announce the others
    /// (see [`Service::run`](crate::Service::run)). No default: at least
    /// one.
    pub gates: Vec<String>,
    /// The name routes and the gate's configuration use (`chat` for
    /// `chat.say`; `auth` for the login server's credential check).
    /// Required, no `.` in it.
    pub service: String,
    /// Unique among instances of the service. Default:
    /// `<service>-<pid>-<random hex>`, fresh per process, so a restarted
    /// instance is a new instance to the gate.
    pub instance_id: String,
    /// Routes served in route mode (`service.method`). Default: empty,
    /// meaning every route of `service`.
    pub routes: Vec<String>,
    /// Receive session events of every user, not only those bound to this
    /// instance. Default: false.
    pub all_session_events: bool,
    /// Requests and auth checks handled at once, across all gates; beyond
    /// it a request is answered "overloaded" at once. Default: 1024.
    pub max_in_flight: usize,
    /// Send a ping this often. Default: 5 s.
    pub heartbeat_interval: Duration,
    /// Treat a gate that sent nothing for this long as dead, close and
    /// reconnect (widened to three of the gate's announced ping intervals if
    /// that is longer). Checked at each ping. Default: 15 s.
    pub heartbeat_timeout: Duration,
    /// Limit for connecting and for the gate's answer to the registration.
    /// Default: 5 s.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to
    /// `backoff_max`, each delay jittered to between half and all of it.
    /// Default: 100 ms.
    pub backoff_initial: Duration,
    /// Longest reconnect delay. Default: 10 s.
    pub backoff_max: Duration,
    /// Largest frame sent or accepted, in bytes. Default: 1 MiB
    /// ([`proto::framing::DEFAULT_MAX_FRAME_LEN`]).
    pub max_frame_len: usize,
    /// Frames queued per link before senders wait (and the link stops
    /// reading requests until the writer catches up); pongs and pings may
    /// use as much again, so they never wait behind answers. Default: 1024.
    pub send_queue: usize,
    /// On shutdown, how long in-flight requests may take to finish before
    /// the links close anyway. Default: 10 s.
    pub drain_timeout: Duration,
    /// The deployment's link secret, which the service proves it knows
    /// when it registers and checks the gate knows too
    /// (`proto::link_auth`). Required, no default.
    pub secret: Option<LinkSecret>,
    /// Dial the gates over TLS, trusting these CAs (for gates with
    /// `backend.tls_cert_file`). Default: none, plain TCP.
    pub tls: Option<crate::LinkTls>,
}

impl Config {
    /// Defaults for `service`, with no gate yet.
    pub fn new(service: impl Into<String>) -> Self {
        let service = service.into();
        let instance_id = format!(
            "{service}-{}-{:08x}",
            std::process::id(),
            crate::backoff::random_u64() as u32
        );
        Config {
            gates: Vec::new(),
            service,
            instance_id,
            routes: Vec::new(),
            all_session_events: false,
            max_in_flight: 1024,
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_frame_len: proto::framing::DEFAULT_MAX_FRAME_LEN,
            send_queue: 1024,
            drain_timeout: Duration::from_secs(10),
            secret: None,
            tls: None,
        }
    }

    /// Refuses settings the library cannot run with, before any connect.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let bad = |why: &str| Err(ServiceError::Config(why.to_owned()));
        if self.service.is_empty() || self.service.contains('.') {
            return bad("service name must be non-empty and contain no '.'");
        }
        if self.instance_id.is_empty() {
            return bad("instance id must be non-empty");
        }
        if self.gates.is_empty() {
            return bad("at least one gate address is required");
        }
        if self.secret.is_none() {
            return bad("a link secret is required (the gate's backend.secret_file)");
        }
        if let Some(route) = self
            .routes
            .iter()
            .find(|r| proto::split_route(r).is_none_or(|(service, _)| service != self.service))
        {
            return Err(ServiceError::Config(format!(
                "route {route:?} is not of the form {}.method",
                self.service
            )));
        }
        if self.max_in_flight == 0 || self.send_queue == 0 {
            return bad("max_in_flight and send_queue must be at least 1");
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_timeout < self.heartbeat_interval {
            return bad("heartbeat_interval must be > 0 and ≤ heartbeat_timeout");
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return bad("backoff_initial must be > 0 and ≤ backoff_max");
        }
        Ok(())
    }
}

/// Fills in a [`Config`]; finish with [`Builder::build`].
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) config: Config,
}

impl Builder {
    /// Sets the link secret (required; the same as the gates').
    pub fn link_secret(mut self, secret: LinkSecret) -> Self {
        self.config.secret = Some(secret);
        self
    }

    /// Dials the gates over TLS (see [`crate::LinkTls`]).
    pub fn tls(mut self, tls: crate::LinkTls) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// Adds a gate address to serve (call once per gate).
    pub fn gate(mut self, addr: impl Into<String>) -> Self {
        self.config.gates.push(addr.into());
        self
    }

    /// Sets the instance id (default: `<service>-<pid>-<random>`).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.config.instance_id = id.into();
        self
    }

    /// Declares the routes served in route mode (default: all of the service).
    pub fn routes<I, S>(mut self, routes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.routes = routes.into_iter().map(Into::into).collect();
        self
    }

    /// Asks for every user's session events (default: only bound users').
    pub fn all_session_events(mut self, yes: bool) -> Self {
        self.config.all_session_events = yes;
        self
    }

    /// Requests handled at once (default 1024).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.config.max_in_flight = n;
        self
    }

    /// Ping interval and dead-gate timeout (default 5 s and 15 s).
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self.config.heartbeat_timeout = timeout;
        self
    }

    /// Reconnect delays (default 100 ms doubling up to 10 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.config.backoff_initial = initial;
        self.config.backoff_max = max;
        self
    }

    /// Connect + registration limit (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Largest frame (default 1 MiB).
    pub fn max_frame_len(mut self, len: usize) -> Self {
        self.config.max_frame_len = len;
        self
    }

    /// Shutdown grace for in-flight requests (default 10 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// Edits any setting the builder has no method for.
    pub fn configure(mut self, edit: impl FnOnce(&mut Config)) -> Self {
        edit(&mut self.config);
        self
    }

    /// The service, ready to [`run`](crate::Service::run).
    pub fn build<H: crate::Handler>(self, handler: H) -> Result<crate::Service<H>, ServiceError> {
        crate::Service::new(self.config, handler)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        let mut config = Config::new("chat");
        config.gates.push("127.0.0.1:8899".into());
        config.secret = Some(LinkSecret::new(b"0123456789abcdef".to_vec()).unwrap());
        config
    }

    #[test]
    fn defaults_are_valid_once_a_gate_and_a_secret_are_set() {
        assert!(Config::new("chat").validate().is_err());
        let mut config = valid();
        config.secret = None;
        assert!(config.validate().is_err(), "no secret");
        let config = valid();
        config.validate().unwrap();
        assert!(config.instance_id.starts_with("chat-"));
    }

    #[test]
    fn routes_must_belong_to_the_service() {
        let mut config = valid();
        config.routes = vec!["chat.say".into()];
        config.validate().unwrap();
        config.routes = vec!["echo.say".into()];
        assert!(config.validate().is_err());
        config.routes = vec!["chat".into()];
        assert!(config.validate().is_err());
    }

    #[test]
    fn nonsense_is_refused() {
        for edit in [
            (|c: &mut Config| c.service = "a.b".into()) as fn(&mut Config),
            |c| c.instance_id.clear(),
            |c| c.max_in_flight = 0,
            |c| c.heartbeat_timeout = Duration::from_millis(1),
            |c| c.backoff_initial = Duration::ZERO,
        ] {
            let mut config = valid();
            edit(&mut config);
            assert!(config.validate().is_err());
        }
    }
}
