//! `gate run`: the flags of the default subcommand, laid over the config
//! file into one [`Config`], and the process that serves it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use gate::config::{Config, duration};
use serde::{Deserialize, Serialize};

use super::sections::{
    BackendFlags, ClusterFlags, GateFlags, LogFlags, LoginFlags, OpsFlags, WebFlags, opt_duration,
};

/// Options of `gate run`. Precedence: defaults < `--config` file < flags.
///
/// Each flag names a field of the configuration (`--login-listen` is
/// `[login] listen`): the flags are serialized into a TOML table of the
/// same shape and laid over the file's, so they are never copied field by
/// field, and every field a flag does not cover is still settable in the
/// file.
#[derive(Debug, Args, Serialize)]
pub(crate) struct RunArgs {
    /// TOML configuration file (sections `[login]`, `[gate]`, `[backend]`,
    /// `[cluster]`, `[ops]`, `[web]` and `[log]`, top-level `accounts` and
    /// `shutdown_grace`; every field optional; durations as "5s", "300ms",
    /// "5m"). SIGHUP or `POST /admin/reload` read it again and apply what
    /// can change while running (limits, accounts, login queue, log level
    /// and format, TLS certificates), all or nothing; flags keep winning
    /// over it. Without it, reloads are refused.
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
    #[command(flatten)]
    tls: super::sections::TlsFlags,
    #[command(flatten)]
    upgrade: super::sections::UpgradeFlags,
    #[command(flatten)]
    log: LogFlags,
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
    pub(crate) fn config(&self) -> anyhow::Result<Config> {
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

    /// Reads the configuration, sets up logging, then runs the configured
    /// role until SIGINT or SIGTERM, reloading the configuration on SIGHUP.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let config = self.config()?;
        gate::logging::init(&config.log).map_err(anyhow::Error::msg)?;
        let path = self.config.clone();
        let source = gate::reload::ConfigSource {
            path,
            read: Box::new(move || self.config().map_err(|e| format!("{e:#}"))),
        };
        let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
        // The servers run as a task on a worker thread, not on this one
        // (`block_on`): the connection tasks their accept loops spawn then
        // go to that worker's own queue instead of the shared injection
        // queue, which wakes another thread for every connection.
        runtime.block_on(async {
            let serve = async move {
                gate::serve_reloadable(config, Some(source), shutdown_signal()).await?;
                anyhow::Ok(())
            };
            match tokio::spawn(serve).await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(anyhow::anyhow!("the server task was cancelled: {e}")),
            }
        })
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
