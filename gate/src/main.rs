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

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use gate::backend::Backend;
use gate::config::{AuthSource, Config};
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
}

/// Options of `gate run`. Precedence: defaults < `--config` file < flags.
#[derive(Debug, Args)]
struct RunArgs {
    /// TOML configuration file (sections `[login]`, `[gate]` and `[backend]`, top-level
    /// `accounts` and `shutdown_grace_ms`; every field optional).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Login server listen address [default: 127.0.0.1:8001].
    #[arg(long, value_name = "ADDR")]
    login_listen: Option<SocketAddr>,
    /// Message gate listen address [default: 127.0.0.1:8888].
    #[arg(long, value_name = "ADDR")]
    gate_listen: Option<SocketAddr>,
    /// The gate's server name, as clients put it in their token [default: sample].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Accounts file of `user:$argon2id$...` lines (see `gate hash-password`)
    /// [default: none: demo authentication, any user with password `password`].
    #[arg(long, value_name = "FILE")]
    accounts: Option<PathBuf>,
    /// Most gate connections open at once, authenticated or not [default: 65536].
    #[arg(long, value_name = "N")]
    maxclient: Option<usize>,
    /// Refuse the weak skynet suite (8-byte DH keys get 401); only x25519
    /// clients can log in [default: the skynet suite is accepted].
    #[arg(long)]
    no_skynet_suite: bool,
    /// Let several logins of one uid run at once (no 406) [default: off].
    #[arg(long)]
    multilogin: bool,
    /// Most login connections open at once; further clients wait [default: 1024].
    #[arg(long, value_name = "N")]
    login_max_connections: Option<usize>,
    /// Deadline of the whole login dialogue, in ms [default: 10000].
    #[arg(long, value_name = "MS")]
    dialogue_timeout_ms: Option<u64>,
    /// Deadline of one authenticator call, in ms [default: 3000].
    #[arg(long, value_name = "MS")]
    auth_timeout_ms: Option<u64>,
    /// Deadline from gate accept to a complete handshake, in ms [default: 10000].
    #[arg(long, value_name = "MS")]
    handshake_timeout_ms: Option<u64>,
    /// How long a disconnected user stays logged in, in ms [default: 300000].
    #[arg(long, value_name = "MS")]
    reconnect_window_ms: Option<u64>,
    /// Most unread bytes queued per gate connection before it is cut [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    send_queue_bytes: Option<usize>,
    /// Most requests of one user in flight at once [default: 128].
    #[arg(long, value_name = "N")]
    max_inflight_per_user: Option<usize>,
    /// skynet's expired_number: size of the per-user response cache [default: 128].
    #[arg(long, value_name = "N")]
    expired_number: Option<u32>,
    /// Time in-flight work gets to finish on SIGINT/SIGTERM, in ms [default: 5000].
    #[arg(long, value_name = "MS")]
    shutdown_grace_ms: Option<u64>,
    /// Most pushes kept per user for replay after a reconnect (0: none; at
    /// most push_backlog_bytes of payload, config file) [default: 64].
    #[arg(long, value_name = "N")]
    push_backlog: Option<usize>,
    /// Close a connection that opted in to the extensions after this long
    /// without a byte from the client, in ms (0: never) [default: 60000].
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<u64>,
    /// The same for plain skynet connections, which send nothing while idle
    /// [default: 0: never, as skynet].
    #[arg(long, value_name = "MS")]
    plain_idle_timeout_ms: Option<u64>,
    /// Listen for backend game services on this address (services dial the
    /// gate, e.g. 127.0.0.1:8899) [default: none: no backends, the built-in
    /// echo agent answers].
    #[arg(long, value_name = "ADDR")]
    backend_listen: Option<SocketAddr>,
    /// The backend service users are bound to in agent mode [default: agent].
    #[arg(long, value_name = "NAME")]
    agent_service: Option<String>,
    /// Every request payload is a route envelope (`service.method` + body);
    /// an empty route goes to the user's agent [default: off: payloads go
    /// unchanged to the user's agent].
    #[arg(long)]
    route_mode: bool,
    /// How long a backend service may take to answer a request before the
    /// client gets an error response, in ms [default: 5000].
    #[arg(long, value_name = "MS")]
    request_timeout_ms: Option<u64>,
    /// Who checks credentials: `accounts` (the --accounts file, or demo
    /// authentication) or `service` (the backend service `auth`, needs
    /// --backend-listen) [default: accounts].
    #[arg(long, value_enum, value_name = "SOURCE")]
    auth: Option<AuthSource>,
}

impl RunArgs {
    /// Defaults, then the config file, then the flags.
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => Config::default(),
        };
        set(&mut config.login.listen, self.login_listen);
        set(&mut config.gate.listen, self.gate_listen);
        set(&mut config.gate.name, self.name.clone());
        if self.accounts.is_some() {
            config.accounts.clone_from(&self.accounts);
        }
        set(&mut config.gate.maxclient, self.maxclient);
        if self.no_skynet_suite {
            config.login.allow_skynet_suite = false;
        }
        if self.multilogin {
            config.login.multilogin = true;
        }
        set(
            &mut config.login.max_connections,
            self.login_max_connections,
        );
        set(
            &mut config.login.dialogue_timeout_ms,
            self.dialogue_timeout_ms,
        );
        set(&mut config.login.auth_timeout_ms, self.auth_timeout_ms);
        set(
            &mut config.gate.handshake_timeout_ms,
            self.handshake_timeout_ms,
        );
        set(
            &mut config.gate.reconnect_window_ms,
            self.reconnect_window_ms,
        );
        set(&mut config.gate.send_queue_bytes, self.send_queue_bytes);
        set(
            &mut config.gate.max_inflight_per_user,
            self.max_inflight_per_user,
        );
        set(&mut config.gate.expired_number, self.expired_number);
        set(&mut config.gate.push_backlog, self.push_backlog);
        set(&mut config.gate.idle_timeout_ms, self.idle_timeout_ms);
        set(
            &mut config.gate.plain_idle_timeout_ms,
            self.plain_idle_timeout_ms,
        );
        set(&mut config.shutdown_grace_ms, self.shutdown_grace_ms);
        if self.backend_listen.is_some() {
            config.backend.listen = self.backend_listen;
        }
        set(
            &mut config.backend.agent_service,
            self.agent_service.clone(),
        );
        if self.route_mode {
            config.backend.route_mode = true;
        }
        set(
            &mut config.backend.request_timeout_ms,
            self.request_timeout_ms,
        );
        set(&mut config.login.auth, self.auth);
        Ok(config)
    }

    async fn run(self) -> anyhow::Result<()> {
        let config = self.config()?;
        let login = listen(config.login.listen, LISTEN_BACKLOG)
            .with_context(|| format!("cannot listen on {} (login)", config.login.listen))?;
        let gate = listen(config.gate.listen, LISTEN_BACKLOG)
            .with_context(|| format!("cannot listen on {} (gate)", config.gate.listen))?;
        let mut components = gate::Components::default();
        if let Some(addr) = config.backend.listen {
            let listener = listen(addr, LISTEN_BACKLOG)
                .with_context(|| format!("cannot listen on {addr} (backend)"))?;
            components.backend = Some(Backend::new(config.backend.clone(), listener));
        }
        gate::run_with(login, gate, config, components, shutdown_signal()).await?;
        Ok(())
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
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
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                // Colour codes only on a terminal: a log file stays plain text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
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
            "--request-timeout-ms",
            "250",
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
        assert_eq!(config.backend.request_timeout_ms, 250);
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
        for expected in [
            format!("[default: {}]", d.login.listen),
            format!("[default: {}]", d.gate.listen),
            format!("[default: {}]", d.gate.name),
            format!("[default: {}]", d.gate.maxclient),
            format!("[default: {}]", d.login.max_connections),
            format!("[default: {}]", d.login.dialogue_timeout_ms),
            format!("[default: {}]", d.login.auth_timeout_ms),
            format!("[default: {}]", d.gate.handshake_timeout_ms),
            format!("[default: {}]", d.gate.reconnect_window_ms),
            format!("[default: {}]", d.gate.send_queue_bytes),
            format!("[default: {}]", d.gate.max_inflight_per_user),
            format!("[default: {}]", d.gate.expired_number),
            format!("[default: {}]", d.shutdown_grace_ms),
            format!("[default: {}]", d.backend.agent_service),
            format!("[default: {}]", d.backend.request_timeout_ms),
            "[default: accounts]".to_owned(),
            "[default: none: no backends".to_owned(),
        ] {
            assert!(help.contains(&expected), "--help lacks {expected}");
        }
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
