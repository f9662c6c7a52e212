//! `client shell`: log in, connect, then type requests.
//!
//! A typed line is sent as a request with the next request number
//! (skynet's "session", shown as `s=N`); responses, pushes and kicks print
//! as they arrive, tagged with request number and flag, so
//! out-of-order replies are visible (`<- push #7 "text"`,
//! `<- kicked: "reason"`). The connection opts in to the gate's extensions
//! unless `--plain`: pushes missed while disconnected are replayed on
//! `:reconnect`, and a heartbeat keeps a quiet session open. Lines starting with `:` are commands
//! (`:help`). On a terminal the prompt has line editing and history
//! (rustyline, on its own thread, printing through its external printer so
//! arriving responses do not garble the line being typed); without a
//! terminal the shell reads stdin line by line and echoes each line, so it
//! can be scripted. At the end of input it waits for pending responses (up
//! to `--timeout`) before leaving.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use rustyline::ExternalPrinter;
use rustyline::error::ReadlineError;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::login::{LoginArgs, secret_bytes};
use crate::session::{ConnectSpec, Event, IndexSpec, LoginOverrides, Session, SessionConfig};
use crate::{Output, StdoutOutput, text};

/// Options of `client shell`.
#[derive(Debug, Clone, Args)]
pub struct ShellCmd {
    #[command(flatten)]
    pub login: LoginArgs,
    #[command(flatten)]
    pub gate: crate::gate::GateArgs,
    /// History file of the interactive prompt (`none` keeps no file).
    #[arg(long, value_name = "FILE", default_value = "~/.client_history")]
    pub history: String,
}

const HELP: &str = "\
TEXT                 send TEXT as a request with the next request number
:send TEXT           the same; for text starting with ':' (\"quoted\" takes \\n \\xHH escapes)
:hex HEX             send bytes given in hex (de ad be ef)
:file PATH           send a file's bytes
:resend N [TEXT]     send request number N again (default content: what was sent as N)
:ping                send a heartbeat (opted-in connections; a plain one is closed for it)
:drop                close the gate connection without logging out
:reconnect [INDEX]   new connection, handshake with index+1 (or INDEX: an old one gets 403)
:login               log in again (new subid; the old session is kicked) and connect
:logout              drop the connection and forget the login
:pending             requests sent and not answered yet
:cache               the last response received per request number
:timings             login, handshake and round-trip times, pushes received
:wait [DURATION]     wait until no request or :ping is pending (default: --timeout)
:help                this list
:quit                leave (also Ctrl-D)";

/// What the shell loop ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellSummary {
    /// Requests still unanswered on an open connection when the shell ended.
    pub unanswered: usize,
}

/// Logs in and connects as `cfg` says, printing what happens to `out`;
/// `Err` (already printed) when the login fails. A refused handshake is
/// printed but not fatal: the shell can `:reconnect`.
pub async fn start(cfg: SessionConfig, out: &mut (dyn Output + Send)) -> Result<Session, String> {
    let mut shell = Shell {
        session: Session::new(cfg),
        out,
        sent: BTreeMap::new(),
    };
    shell.login_and_connect().await?;
    Ok(shell.session)
}

/// Runs the shell on a started `session` over `input` lines, printing to
/// `out`, until the input ends or `:quit`; then waits for pending responses
/// (up to the session's timeout).
///
/// With `echo`, each input line is printed as `> line` first (for
/// transcripts of non-interactive runs).
pub async fn run_shell(
    session: Session,
    mut input: mpsc::Receiver<String>,
    out: &mut (dyn Output + Send),
    echo: bool,
) -> ShellSummary {
    let mut shell = Shell {
        session,
        out,
        sent: BTreeMap::new(),
    };
    shell
        .out
        .line("type a line to send it as a request; :help lists commands");
    loop {
        let step = tokio::select! {
            line = input.recv() => Step::Line(line),
            event = shell.session.recv() => Step::Event(event),
        };
        match step {
            Step::Line(None) => break,
            Step::Line(Some(line)) => {
                if echo {
                    shell.out.line(&format!("> {line}"));
                }
                if !shell.command(&line).await {
                    break;
                }
            }
            Step::Event(event) => shell.show(event),
        }
    }
    let timeout = shell.session.config().timeout;
    shell.wait(timeout).await;
    let unanswered = if shell.session.is_connected() {
        shell.session.pending().len()
    } else {
        0
    };
    ShellSummary { unanswered }
}

enum Step {
    Line(Option<String>),
    Event(Result<Event, crate::ClientError>),
}

struct Shell<'o> {
    session: Session,
    out: &'o mut (dyn Output + Send),
    /// What was sent per request number, for `:resend N`.
    sent: BTreeMap<u32, Bytes>,
}

impl Shell<'_> {
    async fn login_and_connect(&mut self) -> Result<(), String> {
        let cfg = self.session.config().clone();
        match self.session.login(&LoginOverrides::default()).await {
            Ok(ticket) => {
                let line = format!(
                    "login {}@{} via {} ({}) -> 200, subid {}, secret {}",
                    cfg.user,
                    cfg.server,
                    cfg.login_addr,
                    cfg.suite,
                    String::from_utf8_lossy(&ticket.subid),
                    text::hex(secret_bytes(&ticket.secret)),
                );
                self.out.line(&line);
            }
            Err(err) => {
                let message = format!(
                    "login {}@{} via {}: {err}",
                    cfg.user, cfg.server, cfg.login_addr
                );
                self.out.line(&message);
                return Err(message);
            }
        }
        self.sent.clear();
        self.connect(IndexSpec::Next).await;
        Ok(())
    }

    async fn connect(&mut self, index: IndexSpec) {
        let spec = ConnectSpec {
            index,
            ..ConnectSpec::default()
        };
        let gate = self.session.config().gate_addr.clone();
        let line = match self.session.connect(&spec).await {
            Ok((status, index)) if status.code() == 200 => {
                let mode = if self.session.is_opted_in() {
                    let sealed = if self.session.is_sealed() {
                        "sealed, "
                    } else {
                        ""
                    };
                    format!(
                        " ({sealed}opting in, pushes seen up to #{})",
                        self.session.last_push()
                    )
                } else {
                    String::new()
                };
                format!("connect {gate} index={index} -> {status}{mode}")
            }
            Ok((status, index)) => format!(
                "connect {gate} index={index} -> {status}: {} (connection closed)",
                text::gate_status_meaning(status)
            ),
            Err(err) => format!("connect {gate}: {err}"),
        };
        self.out.line(&line);
    }

    fn show(&mut self, event: Result<Event, crate::ClientError>) {
        let line = match event {
            Ok(Event::Message(message)) => message.describe(),
            Ok(Event::Pong { rtt }) => format!("<- pong ({})", text::duration(rtt)),
            Ok(Event::Welcome { welcome, last_push }) => {
                let heartbeat = match self.session.heartbeat_interval() {
                    Some(every) => format!(", heartbeat every {}", text::duration(every)),
                    None => String::new(),
                };
                let idle = match welcome.idle_ms {
                    0 => "no idle timeout".to_owned(),
                    ms => format!(
                        "idle timeout {}",
                        text::duration(Duration::from_millis(u64::from(ms)))
                    ),
                };
                format!(
                    "<- welcome: extensions v{} on, {idle}{heartbeat}; the session's pushes go up to #{last_push}",
                    welcome.version
                )
            }
            Ok(Event::Closed) if self.session.kicked().is_some() => {
                "!! the gate closed the connection: the session is over (:login to start over)"
                    .to_owned()
            }
            Ok(Event::Closed) => {
                "!! the gate closed the connection (:reconnect to come back)".to_owned()
            }
            Err(err) => format!("!! {err}"),
        };
        self.out.line(&line);
    }

    async fn send(&mut self, number: Option<u32>, content: Bytes) {
        if !self.session.is_connected() {
            self.out
                .line("!! not connected (:reconnect, or :login for a new session)");
            return;
        }
        match self.session.send(number, content.clone()).await {
            Ok(s) => {
                let resend = if number.is_some() { " (resend)" } else { "" };
                self.out
                    .line(&format!("-> s={s} {}{resend}", text::payload(&content)));
                self.sent.insert(s, content);
            }
            Err(err) => self.out.line(&format!("!! send failed: {err}")),
        }
    }

    /// Runs one input line; `false` ends the shell.
    async fn command(&mut self, line: &str) -> bool {
        let Some(command) = line.strip_prefix(':') else {
            if !line.is_empty() {
                self.send(None, Bytes::copy_from_slice(line.as_bytes()))
                    .await;
            }
            return true;
        };
        let (word, arg) = command
            .split_once(char::is_whitespace)
            .map_or((command, ""), |(w, a)| (w, a.trim()));
        match word {
            "send" => match text_arg(arg) {
                Ok(bytes) => self.send(None, Bytes::from(bytes)).await,
                Err(e) => self.out.line(&format!("!! {e}")),
            },
            "hex" => match text::parse_hex(arg) {
                Ok(bytes) => self.send(None, Bytes::from(bytes)).await,
                Err(e) => self.out.line(&format!("!! {e}")),
            },
            "file" => match tokio::fs::read(arg).await {
                Ok(bytes) => self.send(None, Bytes::from(bytes)).await,
                Err(e) => self.out.line(&format!("!! cannot read {arg:?}: {e}")),
            },
            "resend" => {
                let (number, rest) = arg
                    .split_once(char::is_whitespace)
                    .map_or((arg, ""), |(n, r)| (n, r.trim()));
                let Ok(number) = number.parse::<u32>() else {
                    self.out.line("!! usage: :resend N [TEXT]");
                    return true;
                };
                let content = if rest.is_empty() {
                    self.sent.get(&number).cloned().unwrap_or_default()
                } else {
                    match text_arg(rest) {
                        Ok(bytes) => Bytes::from(bytes),
                        Err(e) => {
                            self.out.line(&format!("!! {e}"));
                            return true;
                        }
                    }
                };
                self.send(Some(number), content).await;
            }
            "ping" => {
                if !self.session.is_connected() {
                    self.out.line("!! not connected");
                } else if let Err(err) = self.session.ping().await {
                    self.out.line(&format!("!! ping failed: {err}"));
                } else {
                    self.out.line("-> ping");
                }
            }
            "drop" => {
                self.session.disconnect();
                self.out
                    .line("connection dropped; the gate keeps the session (:reconnect)");
            }
            "reconnect" => {
                let index = match arg {
                    "" => IndexSpec::Next,
                    text => match text.parse::<u64>() {
                        Ok(n) => IndexSpec::Number(n),
                        Err(_) => IndexSpec::Text(text.to_owned()),
                    },
                };
                self.connect(index).await;
            }
            "login" => {
                if let Err(e) = self.login_and_connect().await {
                    self.out.line(&format!("!! {e}"));
                }
            }
            "logout" => {
                self.session.forget_login();
                self.out.line(
                    "logged out locally: connection closed, login forgotten (the protocol has no \
                     logout message; the gate ends the session after its reconnect window, or at \
                     once when this user logs in again); :login to start over",
                );
            }
            "pending" => self.pending(),
            "cache" => self.cache(),
            "timings" => {
                for line in self.session.timings() {
                    self.out.line(&line);
                }
            }
            "wait" => {
                let timeout = if arg.is_empty() {
                    Ok(self.session.config().timeout)
                } else {
                    text::parse_duration(arg)
                };
                match timeout {
                    Ok(timeout) => self.wait(timeout).await,
                    Err(e) => self.out.line(&format!("!! {e}")),
                }
            }
            "help" | "h" | "?" => {
                for line in HELP.lines() {
                    self.out.line(line);
                }
            }
            "quit" | "exit" | "q" => return false,
            other => self
                .out
                .line(&format!("!! unknown command :{other} (:help lists them)")),
        }
        true
    }

    fn pending(&mut self) {
        if self.session.pending().is_empty() {
            self.out.line("nothing pending");
            return;
        }
        let now = Instant::now();
        let lines: Vec<String> = self
            .session
            .pending()
            .iter()
            .map(|(s, p)| {
                format!(
                    "s={s} {} sent {} ago",
                    text::payload(&p.content),
                    text::duration(now.saturating_duration_since(p.sent_at))
                )
            })
            .collect();
        for line in lines {
            self.out.line(&line);
        }
    }

    fn cache(&mut self) {
        if self.session.responses().is_empty() {
            self.out.line("no responses yet");
            return;
        }
        let now = Instant::now();
        let lines: Vec<String> = self
            .session
            .responses()
            .iter()
            .map(|(s, r)| {
                let flag = if r.flag == codec::ResponseFlag::OK {
                    "ok".to_owned()
                } else if r.flag == codec::ResponseFlag::ERROR {
                    "error".to_owned()
                } else {
                    format!("flag={}", r.flag.0)
                };
                let rtt = r
                    .rtt
                    .map(|d| format!(", rtt {}", text::duration(d)))
                    .unwrap_or_default();
                format!(
                    "s={s} {flag} {} (received {} ago{rtt})",
                    text::payload(&r.content),
                    text::duration(now.saturating_duration_since(r.at))
                )
            })
            .collect();
        for line in lines {
            self.out.line(&line);
        }
    }

    /// Prints what arrives until nothing is pending (requests, `:ping`s) or
    /// `timeout` passes.
    async fn wait(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while (!self.session.pending().is_empty() || self.session.pings_pending() > 0)
            && self.session.is_connected()
        {
            match tokio::time::timeout_at(deadline, self.session.recv()).await {
                Ok(event) => self.show(event),
                Err(_) => {
                    let n = self.session.pending().len();
                    self.out.line(&format!(
                        "!! {n} request(s) still pending after {}",
                        text::duration(timeout)
                    ));
                    return;
                }
            }
        }
    }
}

/// A command argument: `"quoted"` with escapes, or the text as typed.
fn text_arg(arg: &str) -> Result<Vec<u8>, String> {
    match arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
        Some(inner) if arg.len() >= 2 => text::unescape(inner),
        _ => Ok(arg.as_bytes().to_vec()),
    }
}

/// Prints through rustyline so output does not garble the prompt.
struct PrinterOutput<P>(P);

impl<P: ExternalPrinter + Send> Output for PrinterOutput<P> {
    fn line(&mut self, text: &str) {
        let _ = self.0.print(format!("{text}\n"));
    }
}

fn history_path(spec: &str) -> Option<PathBuf> {
    if spec == "none" || spec.is_empty() {
        return None;
    }
    match spec.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(rest)),
        None => Some(PathBuf::from(spec)),
    }
}

/// The lines of `reader` (stdin when there is no terminal) as the shell's
/// input; the channel closes at end of input.
pub fn lines_from<R>(reader: R) -> mpsc::Receiver<String>
where
    R: tokio::io::AsyncBufRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut lines = reader.lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// `client shell`.
pub async fn run(cmd: ShellCmd) -> ExitCode {
    let cfg = SessionConfig::new(&cmd.login, &cmd.gate);
    let Ok(session) = start(cfg, &mut StdoutOutput).await else {
        return ExitCode::FAILURE;
    };
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let summary = if interactive {
        let mut editor = match rustyline::DefaultEditor::new() {
            Ok(editor) => editor,
            Err(e) => {
                eprintln!("error: cannot start the line editor: {e}");
                return ExitCode::FAILURE;
            }
        };
        let printer = match editor.create_external_printer() {
            Ok(printer) => printer,
            Err(e) => {
                eprintln!("error: cannot start the line editor: {e}");
                return ExitCode::FAILURE;
            }
        };
        let history = history_path(&cmd.history);
        let (tx, rx) = mpsc::channel::<String>(64);
        // The editor blocks on the terminal, so it gets its own thread. It
        // handles `:quit` itself so the terminal is restored before exit.
        let editor_thread = std::thread::spawn(move || {
            if let Some(path) = &history {
                let _ = editor.load_history(path);
            }
            loop {
                match editor.readline("> ") {
                    Ok(line) => {
                        let _ = editor.add_history_entry(line.as_str());
                        let quit = matches!(line.trim(), ":quit" | ":exit" | ":q");
                        if quit || tx.blocking_send(line).is_err() {
                            break;
                        }
                    }
                    Err(ReadlineError::Interrupted) => continue,
                    Err(_) => break,
                }
            }
            if let Some(path) = &history {
                let _ = editor.save_history(path);
            }
        });
        let mut out = PrinterOutput(printer);
        let summary = run_shell(session, rx, &mut out, false).await;
        let _ = editor_thread.join();
        summary
    } else {
        let rx = lines_from(tokio::io::BufReader::new(tokio::io::stdin()));
        run_shell(session, rx, &mut StdoutOutput, true).await
    };
    if summary.unanswered == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
