//! The `tidings` server binary.
//!
//! ```sh
//! cargo run --release -p server -- --bind 127.0.0.1:3000 --data-dir data
//! ```
//! `--help` lists every flag; each has a `TIDINGS_*` environment variable.

use clap::Parser;
use tidings::Config;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        // Logs go to stderr; stdout carries only the "listening on" line, for scripts.
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    let listener = tokio::net::TcpListener::bind(config.bind).await?;
    // Printed on stdout, so scripts and tests that bind port 0 can find the server.
    println!("listening on http://{}", listener.local_addr()?);
    tidings::run(listener, config, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
