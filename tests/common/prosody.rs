//! A throwaway Prosody 0.12 (Debian package) for integration tests.
//!
//! This file owns everything about running Prosody in tests: the generated config (plaintext c2s
//! with SASL PLAIN, internal plain-text storage, the XEP-0114 component [`COMPONENT`] with
//! `validate_from_addresses = false`, XEP-0356 `privileged_entities` through mod_privilege from
//! prosody-modules), starting `prosody -F` as a child process in a temp dir on free loopback
//! ports, registering users with `prosodyctl`, stopping and restarting it on the same ports and
//! data, and killing it on drop.
//!
//! Readiness is judged from Prosody's own log, not only from a TCP connect: when a port is taken,
//! Prosody 0.12 logs "Failed to open server port …" and keeps running with the service
//! "Activated … on no ports", so a TCP probe could succeed against somebody else's listener.
//! Every wait is bounded; failures panic with the log tail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};

use super::{free_port, COMPONENT, DOMAIN, SECRET};

/// The server binary from the Debian package.
const PROSODY: &str = "/usr/bin/prosody";
/// The control script from the Debian package.
const PROSODYCTL: &str = "/usr/bin/prosodyctl";
/// Longest wait for both ports after starting the process.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for a graceful exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest run of one `prosodyctl` command.
const CTL_TIMEOUT: Duration = Duration::from_secs(15);
/// Set this environment variable to keep the temp dirs (config, data, logs) after the test.
pub const KEEP_ENV: &str = "EXTPRESENCE_KEEP_TEST_DIRS";
/// How often `start` picks new ports when Prosody reports a port as taken.
const PORT_ATTEMPTS: usize = 3;

/// A running (or stopped) Prosody with its own config, data and logs in [`Prosody::dir`].
pub struct Prosody {
    /// Plaintext c2s port on 127.0.0.1.
    pub c2s_port: u16,
    /// XEP-0114 component port on 127.0.0.1.
    pub component_port: u16,
    /// Config, data, pid file, admin socket and logs; removed on drop.
    pub dir: tempfile::TempDir,
    /// The generated config file (inside `dir`).
    pub config: PathBuf,
    /// Applied to the generated config text (tests of misconfigurations).
    tweak: fn(String) -> String,
    child: Option<Child>,
}

/// Why a start attempt failed.
enum StartError {
    /// Prosody said one of our ports is in use: try other ports.
    PortInUse,
    /// Anything else: give up.
    Fatal(String),
}

impl Prosody {
    /// Start a throwaway Prosody on free loopback ports and wait until both the c2s and the
    /// component listener are up (bounded). Panics, never skips, when Prosody is missing.
    pub async fn start() -> Prosody {
        Prosody::start_with(|config| config).await
    }

    /// Like [`start`](Self::start), with the generated config passed through `tweak` first
    /// (e.g. to leave out a line an admin might forget).
    pub async fn start_with(tweak: fn(String) -> String) -> Prosody {
        assert!(
            Path::new(PROSODY).exists() && Path::new(PROSODYCTL).exists(),
            "Prosody is not installed ({PROSODY}, {PROSODYCTL}); these tests need it: \
             apt-get install -y prosody prosody-modules"
        );
        let mut dir = tempfile::Builder::new()
            .prefix("prosody-test-")
            .tempdir()
            .expect("create temp dir for Prosody");
        if std::env::var_os(KEEP_ENV).is_some() {
            dir.disable_cleanup(true);
            eprintln!("{KEEP_ENV} set: keeping {}", dir.path().display());
        }
        fs::create_dir_all(dir.path().join("data")).expect("create data dir");
        fs::create_dir_all(dir.path().join("certs")).expect("create certs dir");
        let config = dir.path().join("prosody.cfg.lua");
        let mut server = Prosody {
            c2s_port: 0,
            component_port: 0,
            dir,
            config,
            tweak,
            child: None,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            server.c2s_port = free_port();
            server.component_port = loop {
                let p = free_port();
                if p != server.c2s_port {
                    break p;
                }
            };
            server.write_config();
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(StartError::PortInUse) if attempt < PORT_ATTEMPTS => {
                    server.kill_now().await;
                }
                Err(StartError::PortInUse) => {
                    panic!(
                        "Prosody found its ports taken {PORT_ATTEMPTS} times\n{}",
                        server.log_tail()
                    )
                }
                Err(StartError::Fatal(why)) => panic!("{why}\n{}", server.log_tail()),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Register each user as `user@DOMAIN` with [`super::PASSWORD`], one `prosodyctl` call each.
    pub async fn register(&self, users: &[&str]) {
        for user in users {
            let out = timeout(
                CTL_TIMEOUT,
                Command::new(PROSODYCTL)
                    .arg("--config")
                    .arg(&self.config)
                    .args(["register", user, DOMAIN, super::PASSWORD])
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .unwrap_or_else(|_| panic!("prosodyctl register {user} took over {CTL_TIMEOUT:?}"))
            .expect("run prosodyctl");
            assert!(
                out.status.success(),
                "prosodyctl register {user} {DOMAIN} failed ({}):\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Stop the server: SIGTERM, wait (bounded) for the exit, else SIGKILL. Keeps dir and ports.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        if timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
            eprintln!("Prosody ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
            let _ = child.start_kill();
            let _ = timeout(STOP_TIMEOUT, child.wait()).await;
        }
    }

    /// Start the stopped server again on the same ports and data dir; waits until both ports
    /// are up.
    pub async fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "start_again: Prosody is still running"
        );
        match self.spawn_and_wait().await {
            Ok(()) => {}
            Err(StartError::PortInUse) => panic!(
                "Prosody could not get its ports back ({} / {})\n{}",
                self.c2s_port,
                self.component_port,
                self.log_tail()
            ),
            Err(StartError::Fatal(why)) => panic!("{why}\n{}", self.log_tail()),
        }
    }

    /// Write the config again with `tweak` (e.g. the identity: the config an admin fixed),
    /// without restarting: apply it with [`shell`](Self::shell) (`config:reload()`, `module
    /// reload …`) as an admin would.
    pub fn rewrite_config(&mut self, tweak: fn(String) -> String) {
        self.tweak = tweak;
        self.write_config();
    }

    /// `prosodyctl shell <args>` against this server's admin socket (bounded); returns stdout.
    /// Panics when it fails.
    pub async fn shell(&self, args: &[&str]) -> String {
        let out = timeout(
            CTL_TIMEOUT,
            Command::new(PROSODYCTL)
                .arg("--config")
                .arg(&self.config)
                .arg("shell")
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("prosodyctl shell {args:?} took over {CTL_TIMEOUT:?}"))
        .expect("run prosodyctl");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success() && stdout.contains("OK"),
            "prosodyctl shell {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Path of the info-level log (a debug-level log is `debug.log` beside it, and Prosody's
    /// console output is `console.log`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("prosody.log")
    }

    /// Contents of the info-level log (all runs of this server).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The last lines of the info log and of the console output, for panic messages.
    pub fn log_tail(&self) -> String {
        let tail = |name: &str| {
            let text = fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- Prosody log tail ({}) ---\n{}\n--- Prosody console ---\n{}",
            self.log_path().display(),
            tail("prosody.log"),
            tail("console.log")
        )
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        // The component and privilege part is the admin-facing snippet from etc/prosody, with the
        // test's names, secret and port: the snippet we document is the one we test.
        let snippet_path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/etc/prosody/extpresence.cfg.lua"
        );
        let snippet =
            fs::read_to_string(snippet_path).expect("read etc/prosody/extpresence.cfg.lua");
        for placeholder in [
            "status.example.com",
            "\"example.com\"",
            "change-me",
            "{ 5347 }",
        ] {
            assert!(
                snippet.contains(placeholder),
                "{snippet_path} lost its placeholder {placeholder}"
            );
        }
        let snippet = snippet
            .replace("status.example.com", COMPONENT)
            .replace("example.com", DOMAIN)
            .replace("change-me", SECRET)
            .replace("{ 5347 }", &format!("{{ {} }}", self.component_port));
        let config = format!(
            r#"-- Generated by tests/common/prosody.rs
run_as_root = true
daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
certificates = "{d}/certs"
admin_socket = "{d}/prosody.sock"
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "offline"; "posix"; "admin_shell" }}
modules_disabled = {{ "s2s"; "tls" }}
log = {{ info = "{d}/prosody.log"; debug = "{d}/debug.log" }}

-- etc/prosody/extpresence.cfg.lua:
{snippet}
"#,
            c2s = self.c2s_port,
        );
        fs::write(&self.config, (self.tweak)(config)).expect("write prosody.cfg.lua");
    }

    /// Spawn `prosody -F` and wait until the log of this run shows both listeners activated on
    /// our ports and both accept TCP.
    async fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let log_path = self.log_path();
        let offset = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0) as usize;
        let console = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("console.log"))
            .expect("open console.log");
        let child = Command::new(PROSODY)
            .arg("-F")
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("dup console.log"))
            .stderr(console)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| StartError::Fatal(format!("cannot spawn {PROSODY}: {e}")))?;
        self.child = Some(child);

        let c2s_ok = format!("Activated service 'c2s' on [127.0.0.1]:{}", self.c2s_port);
        let component_ok = format!(
            "Activated service 'component' on [127.0.0.1]:{}",
            self.component_port
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = fs::read(&log_path).unwrap_or_default();
            let run = String::from_utf8_lossy(text.get(offset..).unwrap_or_default());
            if run.contains("Failed to open server port") {
                return Err(StartError::PortInUse);
            }
            if run.contains(&c2s_ok)
                && run.contains(&component_ok)
                && accepts(self.c2s_port).await
                && accepts(self.component_port).await
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(StartError::Fatal(format!(
                        "Prosody exited during startup with {status}"
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError::Fatal(format!(
                    "Prosody did not listen on c2s {} and component {} within {START_TIMEOUT:?}",
                    self.c2s_port, self.component_port
                )));
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL and reap (bounded), for a failed start attempt.
    async fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = timeout(STOP_TIMEOUT, child.wait()).await;
        }
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // Reap it here so no zombie outlives the test; SIGKILL makes this quick.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}

/// Whether 127.0.0.1:`port` accepts a TCP connection within a second.
async fn accepts(port: u16) -> bool {
    matches!(
        timeout(
            Duration::from_secs(1),
            TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}
