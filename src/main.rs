//! The `extpresence` binary: command line, tracing, configuration, signals. Everything else is in
//! the library ([`extpresence::run`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Set and read the presence of XMPP users over HTTP (XEP-0114 component).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); EXTPRESENCE__SECTION__KEY variables override it.
    #[arg(
        long,
        global = true,
        default_value = "/etc/extpresence/extpresence.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit (non-zero with a message when it is invalid).
    CheckConfig,
}

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when the HTTP listener cannot be bound (EX_UNAVAILABLE).
const EXIT_BIND: u8 = 69;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr a broken pipe: journald restarted, or the
        // parent that read it died) is lost, nothing more. By default tracing-subscriber reports
        // that with `eprintln!`, which panics on the same broken stderr: the task that logged
        // died, e.g. the signal handler, and SIGTERM no longer stopped the daemon (seen in a
        // benchmark run whose parent was killed).
        .log_internal_errors(false)
        .init();

    let settings = match extpresence::config::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "extpresence: invalid configuration {}: {e}",
                cli.config.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        println!(
            "configuration {} is valid: component {}, server {}, domains {:?}, HTTP on {}",
            cli.config.display(),
            settings.component,
            settings.server,
            settings.domains,
            settings.listen
        );
        return ExitCode::SUCCESS;
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("extpresence: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(settings.listen).await {
            Ok(l) => l,
            Err(e) => {
                error!(listen = %settings.listen, error = %e, "cannot listen for HTTP");
                return ExitCode::from(EXIT_BIND);
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        match extpresence::run(settings, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!(error = %e, "extpresence failed");
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    shutdown.cancel();
}
