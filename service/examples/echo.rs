//! The echo service: answers every request with its payload.
//!
//! As the gate's agent service (agent mode) it behaves like skynet's
//! `msgagent`; in route mode it answers any `echo.*` route with the
//! envelope's body. Run several instances to see the gate spread users over
//! them:
//!
//! ```text
//! cargo run -p service --example echo -- --gate 127.0.0.1:8899 --link-secret-file link.secret
//! cargo run -p service --example echo -- --gate 127.0.0.1:8899 --link-secret-file link.secret --instance echo-2
//! ```

use clap::Parser;
use service::{CancellationToken, Context, Request, Service, handler_fn};

/// Echo service for the gate.
#[derive(Debug, Parser)]
struct Args {
    /// Backend address of a gate to serve; repeat for several gates. In a
    /// cluster one is enough: the gates announce the others.
    #[arg(long = "gate", default_value = "127.0.0.1:8899")]
    gates: Vec<String>,
    /// Service name to register as.
    #[arg(long, default_value = "echo")]
    name: String,
    /// Instance id (default: `<name>-<pid>-<random>`).
    #[arg(long)]
    instance: Option<String>,
    /// Requests handled at once.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// File with the link secret the gates were given (their
    /// `backend.secret_file`).
    #[arg(long, env = "GATE_LINK_SECRET_FILE", value_name = "FILE")]
    link_secret_file: std::path::PathBuf,
    /// Dial the gates over TLS, trusting the CA certificates in this PEM
    /// file (gates with `backend.tls_cert_file`) [default: plain TCP].
    #[arg(long, value_name = "FILE")]
    tls_ca_file: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let args = Args::parse();

    let mut builder = Service::builder(args.name).max_in_flight(args.max_in_flight);
    builder = builder.link_secret(service::LinkSecret::from_file(&args.link_secret_file)?);
    if let Some(ca) = &args.tls_ca_file {
        builder = builder.tls(service::LinkTls::from_ca_file(ca)?);
    }
    for gate in args.gates {
        builder = builder.gate(gate);
    }
    if let Some(id) = args.instance {
        builder = builder.instance_id(id);
    }
    let service = builder.build(handler_fn(|_ctx: Context, req: Request| async move {
        Ok(req.payload)
    }))?;

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    service.run(shutdown).await?;
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM, so in-flight requests finish.
async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
