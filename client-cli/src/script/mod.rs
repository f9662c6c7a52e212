//! `client run SCRIPT`: QA scripts in a small line-based format
//! (`client-cli/SCRIPTS.md`), parsed by [`parse`] (into the types of
//! [`steps`], splitting lines with `words`) and run by [`exec`].

pub mod exec;
pub mod parse;
pub mod steps;
mod words;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

pub use self::exec::{Failure, Report, run_script};
pub use self::parse::{ParseError, Script};
use crate::login::LoginArgs;
use crate::session::SessionConfig;
use crate::{StdoutOutput, text};

/// Options of `client run`.
#[derive(Debug, Clone, Args)]
pub struct RunCmd {
    /// The script to run (format: client-cli/SCRIPTS.md).
    #[arg(value_name = "SCRIPT")]
    pub script: PathBuf,
    #[command(flatten)]
    pub login: LoginArgs,
    #[command(flatten)]
    pub gate: crate::gate::GateArgs,
    /// Print only a failure and the summary, not every step.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Reads and parses a script file.
pub fn load(path: &Path) -> Result<Script, String> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Script::parse(&path.display().to_string(), &source, base_dir).map_err(|e| e.to_string())
}

/// `client run`: exit code 0 only if every expectation held.
pub async fn run(cmd: RunCmd) -> ExitCode {
    let script = match load(&cmd.script) {
        Ok(script) => script,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let cfg = SessionConfig::new(&cmd.login, &cmd.gate);
    match run_script(&script, cfg, &mut StdoutOutput, cmd.quiet).await {
        Ok(report) => {
            outln!(
                "PASS {}: {} steps, {} checks, {}",
                script.name,
                report.steps,
                report.checks,
                text::duration(report.elapsed)
            );
            ExitCode::SUCCESS
        }
        Err(failure) => {
            outln!("FAIL {failure}");
            ExitCode::FAILURE
        }
    }
}
