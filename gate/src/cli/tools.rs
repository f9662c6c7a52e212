//! The small subcommands that make what a deployment needs: a server
//! key (`keygen`), an accounts file line (`hash-password`), a link secret
//! (`link-secret`).

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

/// Options of `gate keygen`.
#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the private key (must not exist yet).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

impl KeygenArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
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

/// Options of `gate hash-password`.
#[derive(Debug, Args)]
pub(crate) struct HashPasswordArgs {
    /// The password (visible in the process list and shell history; prefer
    /// stdin) [default: the first line of stdin].
    #[arg(long, value_name = "PASSWORD")]
    pub(crate) password: Option<String>,
}

impl HashPasswordArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
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

/// `gate link-secret`: prints 32 random bytes as 64 hex digits.
pub(crate) fn link_secret() {
    let secret: [u8; 32] = rand::random();
    println!(
        "{}",
        secret
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
}
