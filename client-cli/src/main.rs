//! `client`: a QA shell, a script runner and a load generator for the login
//! server and message gate (and skynet's, which speak the same bytes).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use client_cli::bench::BenchCmd;
use client_cli::login::LoginCmd;
use client_cli::script::RunCmd;
use client_cli::shell::ShellCmd;

#[derive(Debug, Parser)]
#[command(name = "client", version, about, long_about = None)]
struct Cli {
    /// Trust the CA certificates in this PEM file for `tls://` and `wss://`
    /// addresses (a gate with `[tls]` listeners or `web.tls_cert_file`)
    /// [default: the system's roots are not used: tls:// and wss:// need
    /// this].
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the login dialogue; print the subid and secret, or the status and what it means.
    Login(LoginCmd),
    /// Log in, connect to the gate, then type requests (reads stdin when it is not a terminal).
    Shell(ShellCmd),
    /// Run a QA script (format: client-cli/SCRIPTS.md); exit 0 only if every expectation held.
    Run(RunCmd),
    /// Load generator: many simulated players, pipelined requests, latency percentiles.
    Bench(BenchCmd),
    /// Call a gate's admin API (operations listener): summary, user, kick,
    /// push, drain, metrics.
    Admin(client_cli::admin::AdminCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(ca) = &cli.tls_ca_file
        && let Err(e) = client_cli::net::trust_ca_file(ca)
    {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Login(cmd) => client_cli::login::run(cmd).await,
            Command::Shell(cmd) => client_cli::shell::run(cmd).await,
            Command::Run(cmd) => client_cli::script::run(cmd).await,
            Command::Bench(cmd) => client_cli::bench::run(cmd).await,
            Command::Admin(cmd) => client_cli::admin::run(cmd).await,
        }
    })
}
