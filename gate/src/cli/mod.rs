//! The `gate` binary's command line: flags and subcommands (clap
//! derive), each subcommand's options next to its `run`. It belongs to the
//! binary, not the library: it turns flags into a [`gate::config::Config`]
//! and hands over to [`gate::serve`].
//!
//! * [`run`]: `gate run` (the default), its flags laid over the config file;
//! * [`sections`]: the flags of each config section (`[login]`, `[gate]`, ...);
//! * [`tools`]: `keygen`, `hash-password`, `link-secret`.

mod run;
mod sections;
pub(crate) mod tools;

use clap::{Parser, Subcommand};

pub(crate) use self::run::RunArgs;
pub(crate) use self::tools::{HashPasswordArgs, KeygenArgs};

/// Login server + message gate, wire-compatible with skynet's
/// snax.loginserver / snax.msgserver.
///
/// Logging: `--log-level` or `[log] level`, else RUST_LOG (an env-filter,
/// default `info`).
#[derive(Debug, Parser)]
#[command(name = "gate", version, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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

impl Cli {
    /// The subcommand to run: `run` when none is named.
    pub(crate) fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Run(Box::new(self.run)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use clap::CommandFactory;
    use gate::config::{AuthSource, Config};

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
            format!("[default: {}]", dur(d.gate.rest_after)),
            format!("[default: {}]", d.gate.send_queue_bytes),
            format!("[default: {}]", d.gate.max_inflight_per_user),
            format!("[default: {}]", d.gate.expired_number),
            format!("[default: {}]", d.gate.cache_bytes),
            format!("[default: {}]", dur(d.shutdown_grace)),
            format!("[default: {}]", d.backend.agent_service),
            format!("[default: {}]", dur(d.backend.request_timeout)),
            format!("[default: {}]", d.ops.max_connections),
            format!("[default: {}]", dur(d.ops.header_timeout)),
            format!("[default: {}]", dur(d.ops.idle_timeout)),
            format!("[default: {}]", dur(d.ops.request_timeout)),
            format!("[default: {}]", d.ops.failed_tokens_per_minute),
            format!("[default: {}]", d.backend.max_pending_links),
            format!("[default: {}]", d.backend.max_pending_per_source),
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
            "--ops-max-connections",
            "14",
            "--ops-header-timeout",
            "15s",
            "--ops-idle-timeout",
            "16s",
            "--ops-request-timeout",
            "17s",
            "--failed-tokens-per-minute",
            "18",
            "--max-pending-links",
            "19",
            "--max-pending-per-source",
            "20",
            "--rest-after",
            "21s",
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
        assert_eq!(c.gate.rest_after, s(21));
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
        assert_eq!(
            (
                c.ops.max_connections,
                c.ops.header_timeout,
                c.ops.idle_timeout,
                c.ops.request_timeout,
                c.ops.failed_tokens_per_minute
            ),
            (14, s(15), s(16), s(17), 18)
        );
        assert_eq!(
            (
                c.backend.max_pending_links,
                c.backend.max_pending_per_source
            ),
            (19, 20)
        );
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
