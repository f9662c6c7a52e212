//! `raw-echo`: the raw framed echo server used as the baseline of
//! `client bench --raw` (the server itself is this package's library).

use std::net::SocketAddr;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// A raw framed echo server: BE16 packages, each request `content ‖ BE32
/// session` answered `content ‖ 01 ‖ BE32 session`; no login, no handshake.
/// Or, with `--relay-to`, a byte relay in front of one.
#[derive(Debug, Parser)]
#[command(name = "raw-echo", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9999")]
    listen: SocketAddr,
    /// Be a byte relay to this address instead of an echo server: each
    /// client connection gets its own connection there, and bytes are
    /// copied both ways (the baseline of the gate's service path).
    #[arg(long, value_name = "ADDR")]
    relay_to: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let listener = raw_echo::listen(args.listen)?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    match args.relay_to {
        Some(upstream) => {
            println!("raw-echo relaying {} to {upstream}", listener.local_addr()?);
            raw_echo::relay(listener, upstream, shutdown).await;
        }
        None => {
            println!("raw-echo listening on {}", listener.local_addr()?);
            raw_echo::serve(listener, shutdown).await;
        }
    }
    Ok(())
}
