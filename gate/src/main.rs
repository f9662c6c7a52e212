//! `gate`: the login server and message gate binary.
//!
//! Thin on purpose: parse flags, set up logging, call the library. With no
//! subcommand it runs the demo of skynet's `examples/login` (login server on
//! 127.0.0.1:8001, gate `sample` on 127.0.0.1:8888, echo agent, demo
//! authentication unless an accounts file is given). With
//! `--backend-listen` game services dial the gate and answer its requests
//! instead of the echo agent (`gate::backend`).

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

use gate::backend::{Backend, LinkSecret};
use gate::config::{AuthSource, Config, Role, duration};
use gate::net::{LISTEN_BACKLOG, listen};

/// Login server + message gate, wire-compatible with skynet's
/// snax.loginserver / snax.msgserver.
///
/// Logging: RUST_LOG (an env-filter, default `info`).
#[derive(Debug, Parser)]
#[command(name = "gate", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the login server and the gate (the default).
    Run(Box<RunArgs>),
    /// Print the argon2id PHC hash of a password, for the accounts file.
    HashPassword(HashPasswordArgs),
    /// Print a new random link secret (64 hex digits) for `backend.secret_file`
    /// and the services' `--link-secret-file`.
    LinkSecret,
    /// Write a new long-term server key to FILE (for `login.server_key_file`)
    /// and print its public key, which clients pin (`client --server-key`).
    Keygen(KeygenArgs),
}

/// Options of `gate keygen`.
#[derive(Debug, Args)]
struct KeygenArgs {
    /// Where to write the private key (must not exist yet).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

impl KeygenArgs {
    fn run(self) -> anyhow::Result<()> {
        use std::io::Write;
        let (private, public) = gate::login::server_key::generate();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&self.out)
            .with_context(|| format!("cannot create {}", self.out.display()))?;
        writeln!(file, "{private}").context("cannot write the key")?;
        println!("{public}");
        Ok(())
    }
}

/// Options of `gate run`. Precedence: defaults < `--config` file < flags.
///
/// Each flag names a field of the configuration (`--login-listen` is
/// `[login] listen`): the flags are serialized into a TOML table of the
/// same shape and laid over the file's, so they are never copied field by
/// field, and every field a flag does not cover is still settable in the
/// file.
#[derive(Debug, Args, Serialize)]
struct RunArgs {
    /// TOML configuration file (sections `[login]`, `[gate]`, `[backend]`,
    /// `[cluster]`, `[ops]` and `[web]`, top-level `accounts` and `shutdown_grace`; every field
    /// optional; durations as "5s", "300ms", "5m").
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Accounts file of `user:$argon2id$...` lines (see `gate hash-password`)
    /// [default: none: demo authentication, any user with password `password`].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    accounts: Option<PathBuf>,
    /// Time in-flight work gets to finish on SIGINT/SIGTERM, and after a
    /// client's FIN [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    shutdown_grace: Option<Duration>,
    #[command(flatten)]
    login: LoginFlags,
    #[command(flatten)]
    gate: GateFlags,
    #[command(flatten)]
    backend: BackendFlags,
    #[command(flatten)]
    cluster: ClusterFlags,
    #[command(flatten)]
    ops: OpsFlags,
    #[command(flatten)]
    web: WebFlags,
    /// Log lines as text (for people) or JSON objects (for log shippers)
    /// [default: text].
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
    #[serde(skip)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per event (tracing's JSON formatter).
    Json,
}

/// `[ops]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
struct OpsFlags {
    /// Serve /metrics, /healthz, /readyz and the admin API on this address
    /// [default: none: off].
    #[arg(id = "ops_listen", long = "ops-listen", value_name = "ADDR")]
    #[serde(rename = "listen", skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// File with the admin API's bearer token (e.g. from `gate
    /// link-secret`) [default: none: admin calls get 401].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token_file: Option<PathBuf>,
}

/// `[web]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
struct WebFlags {
    /// Do not serve WebSocket clients [default: WebSocket listeners on].
    #[arg(id = "no_web", long = "no-web")]
    #[serde(
        rename = "enabled",
        skip_serializing_if = "is_false",
        serialize_with = "negated"
    )]
    no_web: bool,
    /// The login server's WebSocket listen address [default: 127.0.0.1:8002].
    #[arg(
        id = "web_login_listen",
        long = "web-login-listen",
        value_name = "ADDR"
    )]
    #[serde(rename = "login_listen", skip_serializing_if = "Option::is_none")]
    login_listen: Option<SocketAddr>,
    /// The gate's WebSocket listen address [default: 127.0.0.1:8889].
    #[arg(id = "web_gate_listen", long = "web-gate-listen", value_name = "ADDR")]
    #[serde(rename = "gate_listen", skip_serializing_if = "Option::is_none")]
    gate_listen: Option<SocketAddr>,
    /// An origin whose pages may connect over WebSocket
    /// (`scheme://host[:port]`, or `*` for any); repeat for more. Requests
    /// without an Origin header are always allowed [default:
    /// http://127.0.0.1:8080 and http://localhost:8080, the demo page].
    #[arg(
        id = "web_allowed_origin",
        long = "web-allowed-origin",
        value_name = "ORIGIN"
    )]
    #[serde(rename = "allowed_origins", skip_serializing_if = "Vec::is_empty")]
    allowed_origins: Vec<String>,
}

/// `[cluster]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
struct ClusterFlags {
    /// What this process runs: `all` (login server and gate, no Redis),
    /// `login` (a login node of a cluster) or `gate` (a gate node)
    /// [default: all].
    #[arg(long, value_enum, value_name = "ROLE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<gate::config::Role>,
    /// Redis holding the cluster's registry and session directory, e.g.
    /// redis://127.0.0.1:6379 (login and gate nodes) [default: none].
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<String>,
    /// This node's id in the registry and logs [default: <role>-<pid>].
    #[arg(long, value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    /// Gate nodes: where login nodes dial the control link [default: 127.0.0.1:8890].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    control_listen: Option<SocketAddr>,
    /// File with the secret of the control links between login and gate
    /// nodes (make one with `gate link-secret`); required for both roles
    /// [default: none].
    #[arg(
        id = "cluster_secret_file",
        long = "cluster-secret-file",
        value_name = "FILE"
    )]
    #[serde(rename = "secret_file", skip_serializing_if = "Option::is_none")]
    secret_file: Option<PathBuf>,
    /// How long a gate node's registration lives without a heartbeat; a
    /// killed gate stops owning its users after it [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    lease: Option<Duration>,
    /// Prefix of every Redis key [default: gate:].
    #[arg(long, value_name = "PREFIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    key_prefix: Option<String>,
}

/// `[login]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
struct LoginFlags {
    /// Login server listen address [default: 127.0.0.1:8001].
    #[arg(id = "login_listen", long = "login-listen", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// File with the server's long-term key (from `gate keygen`); clients
    /// that pin its public key get logins a man in the middle cannot read
    /// or complete [default: none].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    server_key_file: Option<PathBuf>,
    /// Refuse logins that do not pin the server key [default: off].
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    require_pinned: bool,
    /// Refuse the weak skynet suite (8-byte DH keys get 401); only x25519
    /// clients can log in [default: the skynet suite is accepted].
    #[arg(long)]
    #[serde(
        rename = "allow_skynet_suite",
        skip_serializing_if = "is_false",
        serialize_with = "negated"
    )]
    no_skynet_suite: bool,
    /// Let several logins of one uid run at once (no 406) [default: off].
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    multilogin: bool,
    /// Most login connections open at once; further clients wait [default: 1024].
    #[arg(long = "login-max-connections", value_name = "N")]
    #[serde(rename = "max_connections", skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
    /// Deadline of the whole login dialogue [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    dialogue_timeout: Option<Duration>,
    /// Deadline of one authenticator call [default: 3s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    auth_timeout: Option<Duration>,
    /// Logins admitted per second; beyond it logins wait in a first come,
    /// first served queue (x25519 clients that ask are told their place)
    /// [default: 0: no queue].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    admission_rate: Option<u32>,
    /// Most logins waiting in the queue; one more gets 503 [default: 10000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_max: Option<usize>,
    /// Who checks credentials: `accounts` (the --accounts file, or demo
    /// authentication) or `service` (the backend service `auth`, needs
    /// --backend-listen) [default: accounts].
    #[arg(long, value_enum, value_name = "SOURCE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<AuthSource>,
}

/// `[gate]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
struct GateFlags {
    /// Message gate listen address [default: 127.0.0.1:8888].
    #[arg(id = "gate_listen", long = "gate-listen", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// The gate's server name, as clients put it in their token [default: sample].
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// Most gate connections open at once, authenticated or not [default: 65536].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    maxclient: Option<usize>,
    /// Deadline from gate accept to a complete handshake [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    handshake_timeout: Option<Duration>,
    /// How long a disconnected user stays logged in [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    reconnect_window: Option<Duration>,
    /// Most unread bytes queued per gate connection before it is cut [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    send_queue_bytes: Option<usize>,
    /// Most requests of one user in flight at once [default: 128].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_inflight_per_user: Option<usize>,
    /// skynet's expired_number: size of the per-user response cache [default: 128].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    expired_number: Option<u32>,
    /// Most bytes of cached answers per user [default: 262144].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_bytes: Option<usize>,
    /// Most pushes kept per user for replay after a reconnect (0: none; at
    /// most push_backlog_bytes of payload, config file) [default: 64].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    push_backlog: Option<usize>,
    /// Close a connection that opted in to the extensions after this long
    /// without a byte from the client (0s: never) [default: 1m].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    idle_timeout: Option<Duration>,
    /// The same for plain skynet connections, which send nothing while idle
    /// [default: 0s: never, as skynet].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    plain_idle_timeout: Option<Duration>,
}

/// `[backend]` fields settable by flag.
#[derive(Debug, Args, Serialize)]
struct BackendFlags {
    /// Listen for backend game services on this address (services dial the
    /// gate, e.g. 127.0.0.1:8899) [default: none: no backends, the built-in
    /// echo agent answers].
    #[arg(id = "backend_listen", long = "backend-listen", value_name = "ADDR")]
    #[serde(rename = "listen", skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// The backend service users are bound to in agent mode [default: agent].
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_service: Option<String>,
    /// Every request payload is a route envelope (`service.method` + body);
    /// an empty route goes to the user's agent [default: off: payloads go
    /// unchanged to the user's agent].
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    route_mode: bool,
    /// How long a backend service may take to answer a request before the
    /// client gets an error response [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    request_timeout: Option<Duration>,
    /// File with the link secret services must prove they know (make one
    /// with `gate link-secret`); required with --backend-listen [default: none].
    #[arg(long = "link-secret-file", value_name = "FILE")]
    #[serde(rename = "secret_file", skip_serializing_if = "Option::is_none")]
    secret_file: Option<PathBuf>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn negated<S: serde::Serializer>(b: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(!*b)
}

/// `Option<Duration>` flags, written like the file's durations.
mod opt_duration {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => gate::config::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

/// Lays `over` onto `base`, table by table.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl RunArgs {
    /// Defaults, then the config file, then the flags.
    fn config(&self) -> anyhow::Result<Config> {
        let mut table = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let flags = toml::Table::try_from(self).context("cannot represent the flags")?;
        merge(&mut table, flags);
        let source = self.config.as_ref().map_or("the flags".to_owned(), |p| {
            format!("{} and the flags", p.display())
        });
        Config::deserialize(table).with_context(|| format!("invalid configuration in {source}"))
    }

    async fn run(self) -> anyhow::Result<()> {
        let config = self.config()?;
        let role = config.cluster.role;
        let ops_listener = match config.ops.listen {
            Some(addr) => Some(
                listen(addr, LISTEN_BACKLOG)
                    .with_context(|| format!("cannot listen on {addr} (operations)"))?,
            ),
            None => None,
        };
        let login_listener = || {
            listen(config.login.listen, LISTEN_BACKLOG)
                .with_context(|| format!("cannot listen on {} (login)", config.login.listen))
        };
        let gate_listener = || {
            listen(config.gate.listen, LISTEN_BACKLOG)
                .with_context(|| format!("cannot listen on {} (gate)", config.gate.listen))
        };
        let web_listener = |addr: SocketAddr| -> anyhow::Result<Option<tokio::net::TcpListener>> {
            if !config.web.enabled {
                return Ok(None);
            }
            listen(addr, LISTEN_BACKLOG)
                .map(Some)
                .with_context(|| format!("cannot listen on {addr} (WebSocket)"))
        };
        if role == Role::Login {
            let login = login_listener()?;
            let components = gate::Components {
                ops: ops_listener,
                web_login: web_listener(config.web.login_listen)?,
                ..gate::Components::default()
            };
            gate::cluster::run_login_node(login, config, components, shutdown_signal()).await?;
            return Ok(());
        }
        let gate = gate_listener()?;
        let mut components = gate::Components {
            ops: ops_listener,
            web_gate: web_listener(config.web.gate_listen)?,
            ..gate::Components::default()
        };
        if let Some(addr) = config.backend.listen {
            let path = config.backend.secret_file.as_ref().context(
                "backend services need a link secret: set backend.secret_file \
                 (--link-secret-file FILE); make one with `gate link-secret > FILE`",
            )?;
            let secret = LinkSecret::from_file(path)?;
            let listener = listen(addr, LISTEN_BACKLOG)
                .with_context(|| format!("cannot listen on {addr} (backend)"))?;
            let mut backend = Backend::new(config.backend.clone(), listener, secret);
            match (&config.backend.tls_cert_file, &config.backend.tls_key_file) {
                (Some(cert), Some(key)) => {
                    backend = backend.with_tls(gate::tls::acceptor(cert, key)?);
                }
                (None, None) => {}
                _ => anyhow::bail!("backend.tls_cert_file and backend.tls_key_file go together"),
            }
            components.backend = Some(backend);
        }
        if role == Role::Gate {
            let addr = config.cluster.control_listen;
            let control = listen(addr, LISTEN_BACKLOG)
                .with_context(|| format!("cannot listen on {addr} (control)"))?;
            gate::cluster::run_gate_node(gate, control, config, components, shutdown_signal())
                .await?;
            return Ok(());
        }
        let login = login_listener()?;
        components.web_login = web_listener(config.web.login_listen)?;
        gate::run_with(login, gate, config, components, shutdown_signal()).await?;
        Ok(())
    }
}

/// Options of `gate hash-password`.
#[derive(Debug, Args)]
struct HashPasswordArgs {
    /// The password (visible in the process list and shell history; prefer
    /// stdin) [default: the first line of stdin].
    #[arg(long, value_name = "PASSWORD")]
    password: Option<String>,
}

impl HashPasswordArgs {
    fn run(self) -> anyhow::Result<()> {
        let password = match self.password {
            Some(password) => password,
            None => {
                let stdin = std::io::stdin();
                if stdin.is_terminal() {
                    eprintln!("password (echoed), then Enter:");
                }
                let mut line = String::new();
                stdin
                    .lock()
                    .read_line(&mut line)
                    .context("cannot read the password from stdin")?;
                line.trim_end_matches(['\n', '\r']).to_owned()
            }
        };
        anyhow::ensure!(!password.is_empty(), "empty password");
        let hash = gate::login::auth::hash_password(password.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot hash: {e}"))?;
        println!("{hash}");
        Ok(())
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(Box::new(cli.run))) {
        Command::HashPassword(args) => args.run(),
        Command::Keygen(args) => args.run(),
        Command::LinkSecret => {
            let secret: [u8; 32] = rand::random();
            println!(
                "{}",
                secret
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            Ok(())
        }
        Command::Run(args) => {
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
            let logs = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            match args.log_format {
                LogFormat::Json => logs.json().init(),
                // Colour codes only on a terminal: a log file stays plain text.
                LogFormat::Text => logs
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .init(),
            }
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
            // The servers run as a task on a worker thread, not on this one
            // (`block_on`): the connection tasks their accept loops spawn then
            // go to that worker's own queue instead of the shared injection
            // queue, which wakes another thread for every connection.
            runtime.block_on(async {
                match tokio::spawn(args.run()).await {
                    Ok(result) => result,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => Err(anyhow::anyhow!("the server task was cancelled: {e}")),
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_flags_give_the_skynet_demo() {
        let cli = Cli::try_parse_from(["gate"]).unwrap();
        assert!(cli.command.is_none());
        let config = cli.run.config().unwrap();
        assert_eq!(config.login.listen, "127.0.0.1:8001".parse().unwrap());
        assert_eq!(config.gate.listen, "127.0.0.1:8888".parse().unwrap());
        assert_eq!(config.gate.name, "sample");
        assert!(config.accounts.is_none());
        assert!(config.login.allow_skynet_suite);
        assert!(!config.login.multilogin);
        assert!(config.backend.listen.is_none());
        assert!(!config.backend.route_mode);
        assert_eq!(config.login.auth, AuthSource::Accounts);
    }

    #[test]
    fn backend_flags_set_the_backend_section() {
        let cli = Cli::try_parse_from([
            "gate",
            "--backend-listen",
            "127.0.0.1:8899",
            "--agent-service",
            "echo",
            "--route-mode",
            "--request-timeout",
            "250ms",
            "--auth",
            "service",
        ])
        .unwrap();
        let config = cli.run.config().unwrap();
        assert_eq!(
            config.backend.listen,
            Some("127.0.0.1:8899".parse().unwrap())
        );
        assert_eq!(config.backend.agent_service, "echo");
        assert!(config.backend.route_mode);
        assert_eq!(config.backend.request_timeout, Duration::from_millis(250));
        assert_eq!(config.login.auth, AuthSource::Service);
    }

    #[test]
    fn flags_override_the_file() {
        let path = std::env::temp_dir().join(format!("gate-main-test-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[gate]\nname = \"world\"\nmaxclient = 10\n[login]\nmultilogin = false\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "gate",
            "run",
            "--config",
            path.to_str().unwrap(),
            "--maxclient",
            "20",
            "--no-skynet-suite",
            "--multilogin",
            "--login-listen",
            "0.0.0.0:9001",
        ])
        .unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!("expected run");
        };
        let config = args.config().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(config.gate.name, "world");
        assert_eq!(config.gate.maxclient, 20);
        assert!(!config.login.allow_skynet_suite);
        assert!(config.login.multilogin);
        assert_eq!(config.login.listen, "0.0.0.0:9001".parse().unwrap());
    }

    #[test]
    fn help_defaults_match_config_defaults() {
        let help = Cli::command().render_long_help().to_string();
        let d = Config::default();
        let dur = |d: Duration| humantime::format_duration(d).to_string();
        for expected in [
            format!("[default: {}]", d.login.listen),
            format!("[default: {}]", d.gate.listen),
            format!("[default: {}]", d.gate.name),
            format!("[default: {}]", d.gate.maxclient),
            format!("[default: {}]", d.login.max_connections),
            format!("[default: {}]", dur(d.login.dialogue_timeout)),
            format!("[default: {}]", dur(d.login.auth_timeout)),
            format!("[default: {}]", dur(d.gate.handshake_timeout)),
            format!("[default: {}]", dur(d.gate.reconnect_window)),
            format!("[default: {}]", dur(d.gate.idle_timeout)),
            format!("[default: {}]", d.gate.send_queue_bytes),
            format!("[default: {}]", d.gate.max_inflight_per_user),
            format!("[default: {}]", d.gate.expired_number),
            format!("[default: {}]", d.gate.cache_bytes),
            format!("[default: {}]", dur(d.shutdown_grace)),
            format!("[default: {}]", d.backend.agent_service),
            format!("[default: {}]", dur(d.backend.request_timeout)),
            "[default: accounts]".to_owned(),
            "[default: none: no backends".to_owned(),
        ] {
            assert!(help.contains(&expected), "--help lacks {expected}");
        }
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let cli = Cli::try_parse_from([
            "gate",
            "--shutdown-grace",
            "1s",
            "--dialogue-timeout",
            "2s",
            "--auth-timeout",
            "3s",
            "--handshake-timeout",
            "4s",
            "--reconnect-window",
            "5s",
            "--idle-timeout",
            "6s",
            "--plain-idle-timeout",
            "7s",
            "--send-queue-bytes",
            "8",
            "--max-inflight-per-user",
            "9",
            "--expired-number",
            "10",
            "--cache-bytes",
            "11",
            "--push-backlog",
            "12",
            "--login-max-connections",
            "13",
            "--name",
            "world",
            "--accounts",
            "acc.txt",
        ])
        .unwrap();
        let c = cli.run.config().unwrap();
        let s = Duration::from_secs;
        assert_eq!(c.shutdown_grace, s(1));
        assert_eq!(c.gate().shutdown_grace, s(1));
        assert_eq!(
            (c.login.dialogue_timeout, c.login.auth_timeout),
            (s(2), s(3))
        );
        assert_eq!(
            (c.gate.handshake_timeout, c.gate.reconnect_window),
            (s(4), s(5))
        );
        assert_eq!(
            (c.gate.idle_timeout, c.gate.plain_idle_timeout),
            (s(6), s(7))
        );
        assert_eq!(
            (
                c.gate.send_queue_bytes,
                c.gate.max_inflight_per_user,
                c.gate.expired_number
            ),
            (8, 9, 10)
        );
        assert_eq!((c.gate.cache_bytes, c.gate.push_backlog), (11, 12));
        assert_eq!(c.login.max_connections, 13);
        assert_eq!(c.gate.name, "world");
        assert_eq!(c.accounts, Some(PathBuf::from("acc.txt")));
        assert!(Cli::try_parse_from(["gate", "--idle-timeout", "soon"]).is_err());
    }

    #[test]
    fn hash_password_takes_a_flag() {
        let cli = Cli::try_parse_from(["gate", "hash-password", "--password", "pw"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::HashPassword(HashPasswordArgs {
                password: Some(_)
            }))
        ));
    }
}
