//! The `extpresence` binary: command line, tracing, configuration, signals. Everything else is in
//! the library ([`extpresence::run`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Set and read the presence of XMPP users over HTTP, via an XEP-0114 component
///
/// Without a command, extpresence runs the daemon: it keeps the component link to the XMPP
/// server, holds the statuses set over HTTP in its store and sends them to the users' contacts.
/// check-config validates the configuration; the other commands are a client of a running
/// daemon.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (TOML); EXTPRESENCE__SECTION__KEY variables override it. The client
    /// commands read it for the URL and an admin key when --url or a key are not given.
    #[arg(
        long,
        global = true,
        default_value = "/etc/extpresence/extpresence.toml"
    )]
    config: PathBuf,
    /// The running extpresence, e.g. http://127.0.0.1:8080 (client commands).
    #[arg(long, global = true, env = "EXTPRESENCE_URL")]
    url: Option<String>,
    /// A file whose first line is the API key (client commands; else EXTPRESENCE_KEY).
    #[arg(long, global = true, env = "EXTPRESENCE_KEY_FILE")]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit (non-zero with a message when it is invalid).
    CheckConfig {
        /// Also connect to the XMPP server with the configured component: check the handshake
        /// and the privileges granted for each served domain, then disconnect. When extpresence
        /// already answers on its HTTP port it is asked instead (a second connection would
        /// disturb it).
        #[arg(long)]
        connect: bool,
    },
    /// Show the running daemon's state, like `prosodyctl status`: the link and its last error,
    /// privileges per domain, the store, held statuses, observed sessions, the webhook backlog,
    /// version and uptime. Exits 0 when ready, 1 when not, 3 when it is not running.
    Status {
        /// Print the raw JSON report (GET /readyz).
        #[arg(long)]
        json: bool,
    },
    /// Set a user's status: `set alice@example.com away "On the phone" --expires 45m`.
    Set {
        /// The user, e.g. alice@example.com.
        user: String,
        /// The presence; offline clears the source.
        #[arg(value_parser = ["online", "chat", "away", "xa", "dnd", "offline"])]
        presence: String,
        /// The status text.
        status: Option<String>,
        /// The resource (default: the daemon's default resource).
        #[arg(long)]
        resource: Option<String>,
        /// The source, the system speaking (default: default).
        #[arg(long)]
        source: Option<String>,
        /// How long it holds, e.g. 90s, 45m, 2h (default: until cleared).
        #[arg(long)]
        expires: Option<String>,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Clear a user's status (one source of one resource by default; --source '*' for all).
    Clear {
        /// The user.
        user: String,
        /// The resource (default: the daemon's default resource).
        #[arg(long)]
        resource: Option<String>,
        /// The source (default: default).
        #[arg(long)]
        source: Option<String>,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show a user's presence: what contacts see, and every resource.
    Get {
        /// The user.
        user: String,
        /// Print the raw JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print presence events, one line each, until Ctrl-C (resumes after interruptions).
    Watch {
        /// Only this user (repeatable).
        #[arg(long = "user")]
        users: Vec<String>,
        /// Only users of this domain (repeatable).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Print each event's JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Manage per-user API tokens (admin key).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Write the man page and the bash and zsh completions into DIR (packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Where to write extpresence.1, extpresence.bash and _extpresence.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token for a user; it is shown once.
    Create {
        /// The user it acts for.
        user: String,
        /// What it may do.
        #[arg(long, default_value = "read-write", value_parser = ["read", "write", "read-write"])]
        access: String,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
        /// How long it works, e.g. 30d (default: until revoked).
        #[arg(long)]
        expires: Option<String>,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List the tokens (never their secrets).
    List {
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id.
    Revoke {
        /// The token's id (`token list`).
        id: String,
    },
}

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when the HTTP listener cannot be bound (EX_UNAVAILABLE).
const EXIT_BIND: u8 = 69;

fn init_tracing(json: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr a broken pipe: journald restarted, or the
        // parent that read it died) is lost, nothing more. By default tracing-subscriber reports
        // that with `eprintln!`, which panics on the same broken stderr: the task that logged
        // died, e.g. the signal handler, and SIGTERM no longer stopped the daemon (seen in a
        // benchmark run whose parent was killed).
        .log_internal_errors(false);
    if json {
        // One JSON object per line, with the fields of the current span and of every span above.
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let (check_only, connect) = match cli.command.take() {
        None => (false, false),
        Some(Command::CheckConfig { connect }) => (true, connect),
        Some(Command::Status { json }) => return status(json, &cli),
        Some(Command::GenerateAssets { dir }) => return generate_assets(&dir),
        Some(command) => return client(command, &cli),
    };

    let settings = match extpresence::config::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            // The error names the file (and line) or the environment variable at fault.
            eprintln!("extpresence: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if check_only {
        println!(
            "configuration {} is valid: component {}, server {}, domains {:?}, HTTP on {}",
            cli.config.display(),
            settings.component,
            settings.server,
            settings.domains,
            settings.listen
        );
        if !connect {
            return ExitCode::SUCCESS;
        }
        let Some(rt) = client_runtime() else {
            return ExitCode::FAILURE;
        };
        let (text, code) = rt.block_on(extpresence::cli::check_connect(&settings));
        print!("{text}");
        return ExitCode::from(code);
    }
    init_tracing(settings.log_json);

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
        let reconnect = std::sync::Arc::new(tokio::sync::Notify::new());
        // Installed here, before anything can send them a signal (a SIGHUP arriving before its
        // handler would end the process).
        let signals = Signals::install();
        tokio::spawn(signals.wait(shutdown.clone(), reconnect.clone()));
        match extpresence::run(settings, listener, shutdown, reconnect).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!(error = %e, "extpresence failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// The daemon's signal handlers.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            hup: signal(SignalKind::hangup()).expect("SIGHUP handler"),
        }
    }

    /// SIGTERM and SIGINT: the clean stop. SIGHUP: connect the component link again now
    /// (servers grant XEP-0356 privileges at connect, so a fixed server config takes effect
    /// without waiting for the next retry); nothing is reloaded.
    async fn wait(
        mut self,
        shutdown: CancellationToken,
        reconnect: std::sync::Arc<tokio::sync::Notify>,
    ) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { info!("SIGTERM received"); break; }
                _ = self.int.recv() => { info!("SIGINT received"); break; }
                _ = self.hup.recv() => {
                    info!(
                        "SIGHUP received: connecting the XMPP component link again (the \
                         configuration is not reloaded: restart to apply a change)"
                    );
                    reconnect.notify_one();
                }
            }
        }
        shutdown.cancel();
    }
}

/// The single-threaded runtime of a client command (the error said on stderr).
fn client_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("extpresence: cannot start the runtime: {e}"))
        .ok()
}

/// `extpresence status`: the running daemon's readiness report; 0 ready, 1 not, 3 not running.
fn status(json: bool, cli: &Cli) -> ExitCode {
    use extpresence::cli as c;
    let args = c::TargetArgs {
        url: cli.url.clone(),
        key_file: None,
        config: cli.config.clone(),
    };
    let url = match c::daemon_url(&args) {
        Ok(u) => u,
        Err(f) => {
            eprintln!("extpresence: {}", f.message);
            return ExitCode::from(f.code);
        }
    };
    let Some(runtime) = client_runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(c::status(&url, std::time::Duration::from_secs(5))) {
        Ok(report) => {
            if json {
                println!("{report}");
            } else {
                print!("{}", c::render_status(&report));
            }
            ExitCode::from(c::status_code(&report))
        }
        Err(f) => {
            eprintln!("extpresence: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Run a client command; the exit code says how it went (extpresence::cli).
fn client(command: Command, cli: &Cli) -> ExitCode {
    use extpresence::cli::{self as c, Client, Failure, Target, TargetArgs};
    let Some(runtime) = client_runtime() else {
        return ExitCode::FAILURE;
    };
    let args = TargetArgs {
        url: cli.url.clone(),
        key_file: cli.key_file.clone(),
        config: cli.config.clone(),
    };
    let result: Result<(), Failure> = runtime.block_on(async move {
        let expires = |e: &Option<String>| e.as_deref().map(c::parse_duration).transpose();
        let target = Target::resolve(&args)?;
        let client = Client::new(target);
        let print = |v: &serde_json::Value| println!("{v}");
        match command {
            Command::Set {
                user,
                presence,
                status,
                resource,
                source,
                expires: e,
                json,
            } => {
                let e = expires(&e)?;
                let v = client
                    .set(
                        &user,
                        &presence,
                        status.as_deref(),
                        resource.as_deref(),
                        source.as_deref(),
                        e,
                    )
                    .await?;
                if json {
                    print(&v);
                } else if presence == "offline" {
                    println!("{user}: cleared");
                    if let Some(why) = c::pending(&v) {
                        println!("delivery pending: {why}; extpresence status says what to fix");
                    }
                } else {
                    println!("{}", c::render_set(&v));
                }
            }
            Command::Clear {
                user,
                resource,
                source,
                json,
            } => {
                let v = client
                    .clear(&user, resource.as_deref(), source.as_deref())
                    .await?;
                if json {
                    print(&v);
                } else {
                    println!("{user}: cleared");
                    if let Some(why) = c::pending(&v) {
                        println!("delivery pending: {why}; extpresence status says what to fix");
                    }
                }
            }
            Command::Get { user, json } => {
                let v = client.get(&user).await?;
                if json {
                    print(&v);
                } else {
                    // The expiries are in the held statuses, which a contact's token may not
                    // read: then none is shown.
                    let held = client.held(&user).await.ok();
                    print!("{}", c::render_presence(&v, held.as_ref()));
                }
            }
            Command::Watch {
                users,
                domains,
                json,
            } => {
                let stop = CancellationToken::new();
                tokio::spawn({
                    let stop = stop.clone();
                    async move {
                        let _ = tokio::signal::ctrl_c().await;
                        stop.cancel();
                    }
                });
                let mut out = std::io::stdout();
                client.watch(&users, &domains, json, &mut out, stop).await?;
            }
            Command::Token { command } => match command {
                TokenCommand::Create {
                    user,
                    access,
                    name,
                    expires: e,
                    json,
                } => {
                    let e = expires(&e)?;
                    let v = client
                        .token_create(&user, &access, name.as_deref(), e)
                        .await?;
                    if json {
                        print(&v);
                    } else {
                        println!(
                            "{}\n(token {} for {}, {}; shown only now: keep it in a file with \
                             mode 600)",
                            v["token"].as_str().unwrap_or_default(),
                            v["id"].as_str().unwrap_or_default(),
                            v["user"].as_str().unwrap_or_default(),
                            v["access"].as_str().unwrap_or_default()
                        );
                    }
                }
                TokenCommand::List { json } => {
                    let v = client.token_list().await?;
                    if json {
                        print(&v);
                    } else {
                        print!("{}", c::render_tokens(&v));
                    }
                }
                TokenCommand::Revoke { id } => {
                    client.token_revoke(&id).await?;
                    println!("token {id} revoked");
                }
            },
            Command::CheckConfig { .. }
            | Command::Status { .. }
            | Command::GenerateAssets { .. } => {
                unreachable!("handled by main")
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::from(c::EXIT_OK),
        Err(f) => {
            eprintln!("extpresence: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// The man page and shell completions, from the clap definitions.
fn generate_assets(dir: &std::path::Path) -> ExitCode {
    use clap::CommandFactory;
    let result = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let exits = extpresence::man::DaemonExits {
            config: EXIT_CONFIG,
            bind: EXIT_BIND,
        };
        let man = extpresence::man::render(Cli::command(), &exits)?;
        std::fs::write(dir.join("extpresence.1"), man)?;
        for (shell, file) in [
            (clap_complete::Shell::Bash, "extpresence.bash"),
            (clap_complete::Shell::Zsh, "_extpresence"),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "extpresence", &mut out);
            std::fs::write(dir.join(file), out)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("extpresence: cannot write to {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
