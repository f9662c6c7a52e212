//! Runs a parsed [`Script`] against a login server and a gate.
//!
//! Responses are matched by request number, not by arrival order: whatever arrives
//! while an `expect` waits for something else is kept in an inbox for later
//! expectations, so scripts stay deterministic when the gate answers out of
//! order. The inbox belongs to the current connection and is emptied by
//! `connect`, `reconnect`, `drop` and `login`. While a step waits (`expect`,
//! `ping`, and `sleep` on an open connection) the session keeps an opted-in
//! connection alive with heartbeats.

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;

use codec::ResponseFlag;

use super::parse::{Command, ExpectKind, Expectation, Matcher, Payload, Script, Step, Template};
use crate::Output;
use crate::error::ClientError;
use crate::session::{Event, Incoming, LoginOverrides, Session, SessionConfig};
use crate::text;

/// A failed step: where, what was expected, what came instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Script name.
    pub script: String,
    /// 1-based line of the step.
    pub line: usize,
    /// The step as written.
    pub step: String,
    /// What the step expected.
    pub expected: String,
    /// What happened.
    pub got: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}\n    expected {}\n    got      {}",
            self.script, self.line, self.step, self.expected, self.got
        )
    }
}

impl std::error::Error for Failure {}

/// What a passing run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Steps executed (a loop body counts once per iteration).
    pub steps: usize,
    /// Expectations that held (status checks included).
    pub checks: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// Runs `script`; every step is logged to `out` unless `quiet`.
pub async fn run_script(
    script: &Script,
    cfg: SessionConfig,
    out: &mut dyn Output,
    quiet: bool,
) -> Result<Report, Failure> {
    let started = Instant::now();
    let mut runner = Runner {
        timeout: cfg.timeout,
        session: Session::new(cfg),
        out,
        quiet,
        name: script.name.clone(),
        base_dir: script.base_dir.clone(),
        inbox: VecDeque::new(),
        awaiting: VecDeque::new(),
        closed_seen: false,
        steps: 0,
        checks: 0,
    };
    runner.run(&script.steps, None).await?;
    Ok(Report {
        steps: runner.steps,
        checks: runner.checks,
        elapsed: started.elapsed(),
    })
}

struct Runner<'o> {
    session: Session,
    timeout: Duration,
    out: &'o mut dyn Output,
    quiet: bool,
    name: String,
    base_dir: PathBuf,
    /// Messages received while waiting for something else.
    inbox: VecDeque<Incoming>,
    /// Sessions sent and not yet expected, oldest first.
    awaiting: VecDeque<u32>,
    /// The gate closed the current connection.
    closed_seen: bool,
    steps: usize,
    checks: usize,
}

/// What a wait got.
enum Got {
    Message(Incoming),
    Pong(Duration),
}

/// Why a wait ended without the message.
enum WaitEnd {
    Timeout,
    Closed,
    NotConnected,
    Error(ClientError),
}

impl Runner<'_> {
    async fn run(&mut self, steps: &[Step], i: Option<u64>) -> Result<(), Failure> {
        for step in steps {
            if let Command::Repeat { count, body } = &step.command {
                for n in 0..*count {
                    Box::pin(self.run(body, Some(u64::from(n)))).await?;
                }
                continue;
            }
            self.steps += 1;
            let done = self.step(step, i).await?;
            if !self.quiet {
                self.out.line(&format!("{:>4}  {done}", step.line));
            }
        }
        Ok(())
    }

    fn fail(&self, step: &Step, expected: impl Into<String>, got: impl Into<String>) -> Failure {
        Failure {
            script: self.name.clone(),
            line: step.line,
            step: step.source.clone(),
            expected: expected.into(),
            got: got.into(),
        }
    }

    /// Runs one step; returns what to log.
    async fn step(&mut self, step: &Step, i: Option<u64>) -> Result<String, Failure> {
        match &step.command {
            Command::Login {
                user,
                password,
                server,
                suite,
                expect,
                within,
            } => {
                let over = LoginOverrides {
                    user: user.clone(),
                    password: password.clone(),
                    server: server.clone(),
                    suite: *suite,
                };
                self.login(step, &over, *expect, *within).await
            }
            Command::Connect {
                spec,
                expect,
                reconnect,
            } => {
                let mut log = String::new();
                if !self.session.is_logged_in() {
                    log = self
                        .login(step, &LoginOverrides::default(), 200, None)
                        .await?;
                    log.push_str("; ");
                }
                let word = if *reconnect { "reconnect" } else { "connect" };
                self.inbox.clear();
                self.closed_seen = false;
                match self.session.connect(spec).await {
                    Ok((status, index)) if status.code() == *expect => {
                        self.checks += 1;
                        Ok(format!("{log}{word} index={index} -> {status}"))
                    }
                    Ok((status, index)) => Err(self.fail(
                        step,
                        format!("handshake status {expect}"),
                        format!(
                            "{status} for index {index} ({})",
                            text::gate_status_meaning(status)
                        ),
                    )),
                    Err(err) => {
                        Err(self.fail(step, format!("handshake status {expect}"), err.to_string()))
                    }
                }
            }
            Command::Drop => {
                self.session.disconnect();
                self.inbox.clear();
                self.closed_seen = false;
                Ok("drop (session kept on the gate)".to_owned())
            }
            Command::Send { number, payload } => {
                let content = match payload {
                    Payload::Text(t) => Bytes::from(t.expand(i)),
                    Payload::Bytes(b) => Bytes::from(b.clone()),
                    Payload::File(path) => {
                        let path = self.base_dir.join(path);
                        match tokio::fs::read(&path).await {
                            Ok(bytes) => Bytes::from(bytes),
                            Err(e) => {
                                return Err(self.fail(
                                    step,
                                    format!("to read {}", path.display()),
                                    e.to_string(),
                                ));
                            }
                        }
                    }
                };
                if !self.session.is_connected() {
                    return Err(self.fail(
                        step,
                        "an open gate connection (use connect first)",
                        "not connected",
                    ));
                }
                match self.session.send(*number, content.clone()).await {
                    Ok(s) => {
                        self.awaiting.retain(|&a| a != s);
                        self.awaiting.push_back(s);
                        Ok(format!("-> s={s} {}", text::payload(&content)))
                    }
                    Err(err) => Err(self.fail(step, "to send the request", err.to_string())),
                }
            }
            Command::Expect(exp) => self.expect(step, exp, i).await,
            Command::Ping { within } => {
                let within = within.unwrap_or(self.timeout);
                if !self.session.is_connected() {
                    return Err(self.fail(
                        step,
                        "an open gate connection (use connect first)",
                        "not connected",
                    ));
                }
                if let Err(err) = self.session.ping().await {
                    return Err(self.fail(step, "to send a heartbeat", err.to_string()));
                }
                match self
                    .wait_any(Instant::now() + within, |_| false, true)
                    .await
                {
                    Ok(Got::Pong(rtt)) => {
                        self.checks += 1;
                        Ok(format!("ping -> pong ({})", text::duration(rtt)))
                    }
                    Ok(Got::Message(_)) | Err(WaitEnd::Timeout) => Err(self.fail(
                        step,
                        "the heartbeat's answer",
                        format!("nothing within {}", text::duration(within)),
                    )),
                    Err(end) => Err(self.fail(step, "the heartbeat's answer", self.end_text(end))),
                }
            }
            Command::Sleep(d) => {
                let until = Instant::now() + *d;
                if self.session.is_connected() {
                    // Keep reading (into the inbox) so heartbeats go out and
                    // a close is noticed; then sleep out the rest.
                    if let Err(WaitEnd::Closed) = self.wait_for(until, |_| false).await {
                        self.closed_seen = true;
                    }
                }
                tokio::time::sleep_until(until.into()).await;
                Ok(format!("sleep {}", text::duration(*d)))
            }
            Command::Timeout(d) => {
                self.timeout = *d;
                self.session.set_timeout(*d);
                Ok(format!("timeout {}", text::duration(*d)))
            }
            Command::Print(t) => Ok(String::from_utf8_lossy(&t.expand(i)).into_owned()),
            Command::Repeat { .. } => Ok(String::new()),
        }
    }

    async fn login(
        &mut self,
        step: &Step,
        over: &LoginOverrides,
        expect: u16,
        within: Option<Duration>,
    ) -> Result<String, Failure> {
        self.inbox.clear();
        self.awaiting.clear();
        self.closed_seen = false;
        let timeout = self.timeout;
        if let Some(within) = within {
            self.session.set_timeout(within);
        }
        let result = self.session.login(over).await;
        self.session.set_timeout(timeout);
        match result {
            Ok(ticket) if expect == 200 => {
                let log = format!(
                    "login {} -> 200, subid {}",
                    String::from_utf8_lossy(&ticket.uid),
                    String::from_utf8_lossy(&ticket.subid)
                );
                self.checks += 1;
                Ok(log)
            }
            Ok(ticket) => {
                let got = format!("200 (subid {})", String::from_utf8_lossy(&ticket.subid));
                Err(self.fail(step, format!("login status {expect}"), got))
            }
            Err(err) => match err.login_status() {
                Some(status) if status.code() == expect => {
                    self.checks += 1;
                    Ok(format!("login -> {status}"))
                }
                Some(status) => Err(self.fail(
                    step,
                    format!("login status {expect}"),
                    format!("{status} ({})", text::login_status_meaning(status)),
                )),
                None => Err(self.fail(step, format!("login status {expect}"), err.to_string())),
            },
        }
    }

    async fn expect(
        &mut self,
        step: &Step,
        exp: &Expectation,
        i: Option<u64>,
    ) -> Result<String, Failure> {
        let started = Instant::now();
        let within = exp.within.unwrap_or(self.timeout);
        let deadline = started + within;
        if exp.kind == ExpectKind::Closed {
            if self.closed_seen {
                self.checks += 1;
                return Ok("expect closed: the gate closed the connection".to_owned());
            }
            return match self.wait_for(deadline, |_| false).await {
                Err(WaitEnd::Closed) => {
                    self.checks += 1;
                    Ok("expect closed: the gate closed the connection".to_owned())
                }
                Err(WaitEnd::Timeout) => Err(self.fail(
                    step,
                    "the gate to close the connection",
                    format!("it stayed open for {}", text::duration(within)),
                )),
                Err(end) => {
                    Err(self.fail(step, "the gate to close the connection", self.end_text(end)))
                }
                Ok(_) => Err(self.fail(step, "the gate to close the connection", "a message")),
            };
        }
        let target = match exp.kind {
            ExpectKind::Push => Target::Flag(ResponseFlag::PUSH, exp.seq),
            ExpectKind::Gap => Target::Flag(ResponseFlag::PUSH_GAP, exp.seq),
            ExpectKind::Kick => Target::Flag(ResponseFlag::KICK, None),
            _ => match exp.number {
                Some(s) => {
                    self.awaiting.retain(|&a| a != s);
                    Target::Number(s)
                }
                None => match self.awaiting.pop_front() {
                    Some(s) => Target::Number(s),
                    None => {
                        return Err(self.fail(
                            step,
                            "a request to wait for",
                            "every request sent was already expected; give session=N",
                        ));
                    }
                },
            },
        };
        let number = match target {
            Target::Number(s) => Some(s),
            Target::Flag(..) => None,
        };
        let want = |m: &Incoming| target.accepts(m);
        let expected = describe(exp, number, i);
        match self.wait_for(deadline, want).await {
            Ok(message) => {
                let flag_ok = match exp.kind {
                    ExpectKind::Ok => message.response.flag == ResponseFlag::OK,
                    ExpectKind::Error => message.response.flag == ResponseFlag::ERROR,
                    _ => true,
                };
                let content_ok = matches(&exp.matcher, &message.response.content, i)
                    .map_err(|e| self.fail(step, expected.clone(), e))?;
                if flag_ok && content_ok {
                    self.checks += 1;
                    Ok(format!("{} ✓", message.describe()))
                } else {
                    Err(self.fail(step, expected, message.describe()))
                }
            }
            Err(WaitEnd::Timeout) => {
                let mut got = format!("nothing within {}", text::duration(within));
                if let Some(s) = number {
                    got = format!("no response for s={s} within {}", text::duration(within));
                }
                if !self.inbox.is_empty() {
                    let seen: Vec<String> = self.inbox.iter().map(Incoming::describe).collect();
                    got.push_str(&format!(" (received meanwhile: {})", seen.join(", ")));
                }
                Err(self.fail(step, expected, got))
            }
            Err(end) => Err(self.fail(step, expected, self.end_text(end))),
        }
    }

    fn end_text(&self, end: WaitEnd) -> String {
        match end {
            WaitEnd::Timeout => "a timeout".to_owned(),
            WaitEnd::Closed => "the gate closed the connection".to_owned(),
            WaitEnd::NotConnected => "no gate connection (dropped, or never connected)".to_owned(),
            WaitEnd::Error(err) => err.to_string(),
        }
    }

    /// The first message `want` accepts: from the inbox, else from the gate
    /// (anything else that arrives meanwhile goes to the inbox).
    async fn wait_for(
        &mut self,
        deadline: Instant,
        want: impl Fn(&Incoming) -> bool,
    ) -> Result<Incoming, WaitEnd> {
        match self.wait_any(deadline, want, false).await? {
            Got::Message(message) => Ok(message),
            Got::Pong(_) => Err(WaitEnd::Timeout),
        }
    }

    /// [`Runner::wait_for`], also ending at the answer to a heartbeat if
    /// `pong` (otherwise such answers are ignored).
    async fn wait_any(
        &mut self,
        deadline: Instant,
        want: impl Fn(&Incoming) -> bool,
        pong: bool,
    ) -> Result<Got, WaitEnd> {
        if let Some(at) = self.inbox.iter().position(&want) {
            return self
                .inbox
                .remove(at)
                .map(Got::Message)
                .ok_or(WaitEnd::Timeout);
        }
        loop {
            if !self.session.is_connected() {
                return Err(if self.closed_seen {
                    WaitEnd::Closed
                } else {
                    WaitEnd::NotConnected
                });
            }
            let event = tokio::time::timeout_at(deadline.into(), self.session.recv()).await;
            match event {
                Err(_) => return Err(WaitEnd::Timeout),
                Ok(Err(err)) => return Err(WaitEnd::Error(err)),
                Ok(Ok(Event::Closed)) => {
                    self.closed_seen = true;
                    return Err(WaitEnd::Closed);
                }
                Ok(Ok(Event::Pong { rtt })) => {
                    if pong {
                        return Ok(Got::Pong(rtt));
                    }
                }
                // The gate accepted the opt-in; nothing to check.
                Ok(Ok(Event::Welcome { .. })) => {}
                Ok(Ok(Event::Message(message))) => {
                    if want(&message) {
                        return Ok(Got::Message(message));
                    }
                    self.inbox.push_back(message);
                }
            }
        }
    }
}

/// Which message an expectation takes.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The response (ok or error) to this request number.
    Number(u32),
    /// The next message with this flag (push, gap, kick), with this
    /// sequence number if given.
    Flag(ResponseFlag, Option<u32>),
}

impl Target {
    fn accepts(self, m: &Incoming) -> bool {
        let flag = m.response.flag;
        match self {
            Target::Number(s) => m.response.number == s && is_response(flag),
            Target::Flag(f, seq) => flag == f && seq.is_none_or(|n| m.response.number == n),
        }
    }
}

/// Whether a flag is a response's (not a push, gap or kick).
fn is_response(flag: ResponseFlag) -> bool {
    !matches!(
        flag,
        ResponseFlag::PUSH | ResponseFlag::PUSH_GAP | ResponseFlag::KICK
    )
}

/// What an expectation waits for, in words.
fn describe(exp: &Expectation, number: Option<u32>, i: Option<u64>) -> String {
    let show = |t: &Template| text::payload(&t.expand(i));
    let content = match &exp.matcher {
        Matcher::Any => "any content".to_owned(),
        Matcher::Exact(t) => format!("content {}", show(t)),
        Matcher::Prefix(t) => format!("content starting with {}", show(t)),
        Matcher::Regex(r) => format!(
            "content matching /{}/",
            r.replace("${i}", &i.map_or("${i}".into(), |i| i.to_string()))
        ),
    };
    let s = number.map(|s| format!("s={s} ")).unwrap_or_default();
    let seq = exp.seq.map(|n| format!(" #{n}")).unwrap_or_default();
    match exp.kind {
        ExpectKind::Ok => format!("{s}ok response with {content}"),
        ExpectKind::Error => format!("{s}error response with {content}"),
        ExpectKind::Push => format!("a push{seq} with {content}"),
        ExpectKind::Gap => format!("a push-gap notice{seq}"),
        ExpectKind::Kick => format!("a kick with {content}"),
        ExpectKind::Closed => "the gate to close the connection".to_owned(),
    }
}

fn matches(matcher: &Matcher, content: &[u8], i: Option<u64>) -> Result<bool, String> {
    Ok(match matcher {
        Matcher::Any => true,
        Matcher::Exact(t) => content == t.expand(i).as_slice(),
        Matcher::Prefix(t) => content.starts_with(&t.expand(i)),
        Matcher::Regex(pattern) => {
            let pattern = match i {
                Some(i) => pattern.replace("${i}", &i.to_string()),
                None => pattern.clone(),
            };
            regex::bytes::Regex::new(&pattern)
                .map_err(|e| format!("invalid regex /{pattern}/: {e}"))?
                .is_match(content)
        }
    })
}
