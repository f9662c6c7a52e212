//! `gate`: the login server and message gate binary.
//!
//! Thin on purpose: parse flags into a configuration ([`cli`]), set up
//! logging, call the library ([`gate::serve`]). With no subcommand it runs
//! the demo of skynet's `examples/login` (login server on 127.0.0.1:8001,
//! gate `sample` on 127.0.0.1:8888, echo agent, demo authentication unless
//! an accounts file is given). With `--backend-listen` game services dial
//! the gate and answer its requests instead of the echo agent
//! (`gate::backend`).

mod cli;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    match Cli::parse().into_command() {
        Command::Run(args) => args.run(),
        Command::HashPassword(args) => args.run(),
        Command::Keygen(args) => args.run(),
        Command::LinkSecret => {
            cli::tools::link_secret();
            Ok(())
        }
    }
}
