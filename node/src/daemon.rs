//! What the `spoc-node` binary does once its arguments are parsed: settings, logging, the
//! runtime, signals, and the node itself.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{LogFormat, Settings};
use crate::service::{self, Node, OffsetClock, SystemClock};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn init_tracing(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second initialisation (in tests) is harmless, so its error is ignored.
    let _ = match settings.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs a node from its data directory until SIGTERM or Ctrl-C.
pub fn run(data_dir: &Path) -> Result<(), service::Error> {
    let settings = Settings::load(data_dir, &env)?;
    init_tracing(&settings);
    // A panic caught inside the node (a malformed change, for one) is logged, not printed.
    std::panic::set_hook(Box::new(|info| tracing::error!(%info, "panic")));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| service::Error::Stopped(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let clock: Arc<dyn service::Clock> = match settings.clock_offset_ms {
            0 => Arc::new(SystemClock),
            offset => {
                tracing::warn!(
                    offset_ms = offset,
                    "SPOC_CLOCK_OFFSET_MS moves this node's clock (for tests only)"
                );
                Arc::new(OffsetClock(offset))
            }
        };
        let node = Node::open(settings.clone(), &env, clock)?;
        let listener = tokio::net::TcpListener::bind(settings.api)
            .await
            .map_err(|e| service::Error::Api(format!("cannot listen on {}: {e}", settings.api)))?;
        // Without the socket (a path too long for one, say), the CLI uses the TCP address,
        // where the node proves it knows the caller's token before the caller sends it.
        let socket = match service::bind_socket(&settings.socket_path()) {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::warn!(error = %e, "serving the API on its TCP address only");
                None
            }
        };
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        let watcher = tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot watch SIGTERM");
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
                () = signals.cancelled() => {}
            }
            signals.cancel();
        });
        let result = service::run(node, listener, socket, shutdown.clone()).await;
        shutdown.cancel();
        let _ = watcher.await;
        result
    })
}

/// Prints a start-up or fatal error as one line, through the log and on stderr.
pub fn report_fatal(error: &service::Error) {
    tracing::error!(error = %error, "spoc-node stopped");
    // The binary's one line for the operator; the library itself never prints otherwise.
    #[allow(clippy::print_stderr)]
    {
        eprintln!("spoc-node: {error}");
    }
}
