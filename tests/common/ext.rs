//! Running the real `extpresence` binary against a test server, and a minimal HTTP/1.1 client.
//!
//! [`Ext::start`] writes a config into a temp dir (HTTP on `127.0.0.1:0`), starts the built binary,
//! and waits for its "HTTP API listening" log line to learn the bound address. The client is raw
//! HTTP over a `TcpStream`, so tests can also send what a polite client would not (chunked bodies
//! without Content-Length, odd methods).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// The API key the test config accepts.
pub const API_KEY: &str = "test-api-key";

/// A running `extpresence` process.
pub struct Ext {
    /// Bound HTTP address.
    pub http: SocketAddr,
    child: Option<Child>,
    /// Everything the process logged so far.
    log: Arc<Mutex<String>>,
    /// Config file path (kept for restarts).
    pub config: PathBuf,
    _dir: tempfile::TempDir,
    link_up: watch::Receiver<usize>,
    /// Extra environment for the next (re)start.
    pub env: Vec<(String, String)>,
    /// A program (and its arguments) that runs the binary, e.g. `prlimit --nofile=1024:1024`
    /// (it must exec the binary, so the process id stays the binary's).
    pub launcher: Vec<String>,
}

impl Ext {
    /// Start the binary against a component listener at `component_port`, serving `domain`.
    pub async fn start(component_port: u16, domain: &str, component: &str, secret: &str) -> Ext {
        Ext::start_with(component_port, domain, component, secret, |c| c).await
    }

    /// Like [`start`](Self::start), with the generated config passed through `tweak` first.
    pub async fn start_with(
        component_port: u16,
        domain: &str,
        component: &str,
        secret: &str,
        tweak: impl FnOnce(String) -> String,
    ) -> Ext {
        Ext::start_with_env(component_port, domain, component, secret, tweak, Vec::new()).await
    }

    /// Like [`start_with`](Self::start_with), with extra environment for the process (e.g. a
    /// `RUST_LOG` of the operator's default, for benchmarks), kept for restarts.
    pub async fn start_with_env(
        component_port: u16,
        domain: &str,
        component: &str,
        secret: &str,
        tweak: impl FnOnce(String) -> String,
        env: Vec<(String, String)>,
    ) -> Ext {
        Ext::start_launched(
            component_port,
            domain,
            component,
            secret,
            tweak,
            env,
            Vec::new(),
        )
        .await
    }

    /// Like [`start_with_env`](Self::start_with_env), with the binary run by `launcher`.
    pub async fn start_launched(
        component_port: u16,
        domain: &str,
        component: &str,
        secret: &str,
        tweak: impl FnOnce(String) -> String,
        env: Vec<(String, String)>,
        launcher: Vec<String>,
    ) -> Ext {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("extpresence.toml");
        let store = dir.path().join("state/statuses.redb");
        let store = store.display();
        std::fs::write(
            &config,
            tweak(format!(
                r#"[xmpp]
component = "{component}"
server = "127.0.0.1:{component_port}"
secret = "{secret}"
domains = ["{domain}"]
keepalive_secs = 10
reconnect_max_secs = 2

[status]
default_resource = "tigase-external"
default_priority = -1

[http]
listen = "127.0.0.1:0"
api_keys = ["{API_KEY}"]
# Tests and benchmarks flood on purpose; tests/access.rs sets low limits to test them.
rate_per_sec = 1000000
rate_burst = 1000000
global_rate_per_sec = 1000000
global_rate_burst = 1000000

[store]
path = "{store}"
"#
            )),
        )
        .expect("write config");
        let mut ext = Ext {
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: None,
            log: Arc::default(),
            config,
            _dir: dir,
            link_up: watch::channel(0).1,
            env,
            launcher,
        };
        ext.spawn().await;
        ext
    }

    /// Start the process with the config file, and wait until it listens. The log and the
    /// privileged-link count start afresh.
    async fn spawn(&mut self) {
        let mut command = match self.launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let mut child = command
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,extpresence=debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start extpresence");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, mut addr_rx) = watch::channel(None::<SocketAddr>);
        let (up_tx, up_rx) = watch::channel(0usize);
        let log2 = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("HTTP API listening") {
                    // `addr=…` in text logs, `"addr":"…"` in JSON logs.
                    let text = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="));
                    let json = line
                        .split_once("\"addr\":\"")
                        .and_then(|(_, rest)| rest.split('"').next());
                    if let Some(a) = text.or(json).and_then(|a| a.parse().ok()) {
                        let _ = addr_tx.send(Some(a));
                    }
                }
                if line.contains("XEP-0356 privileges granted") {
                    up_tx.send_modify(|n| *n += 1);
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let http = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(a) = *addr_rx.borrow_and_update() {
                    return a;
                }
                if addr_rx.changed().await.is_err() {
                    panic!("extpresence exited before listening");
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "extpresence did not start listening; log:\n{}",
                log.lock().unwrap()
            )
        });
        self.http = http;
        self.child = Some(child);
        self.log = log;
        self.link_up = up_rx;
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kill the process with SIGKILL (no shutdown of any kind) and reap it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("SIGKILL");
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .expect("killed extpresence did not exit");
        }
    }

    /// Start the process again with the same config and store (after [`kill`](Self::kill) or
    /// [`terminate`](Self::terminate)).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "extpresence is still running");
        self.spawn().await;
    }

    /// Wait until the link has been up (privileges granted) `n` times in total.
    pub async fn wait_privileged(&mut self, n: usize) {
        let ok = tokio::time::timeout(Duration::from_secs(30), async {
            while *self.link_up.borrow_and_update() < n {
                if self.link_up.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(
            matches!(ok, Ok(true)),
            "extpresence link not privileged {n} time(s); log:\n{}",
            self.log()
        );
    }

    /// Wait (bounded) until the process has logged a line containing `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let found = tokio::time::timeout(Duration::from_secs(15), async {
            while !self.log().contains(needle) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "extpresence never logged {needle:?}; log:\n{}",
            self.log()
        );
    }

    /// What the process logged.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Send SIGTERM and wait (bounded) for the exit status code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let code = terminate_child(self.child.as_mut()?).await;
        self.child = None;
        code
    }

    /// POST a body to `path` (relative to the HTTP root) with the given content type and the
    /// API key in the query.
    pub async fn post(&self, path: &str, content_type: &str, body: &str) -> (u16, String) {
        let sep = if path.contains('?') { '&' } else { '?' };
        request(
            self.http,
            "POST",
            &format!("{path}{sep}api-key={API_KEY}"),
            &[("Content-Type", content_type)],
            body.as_bytes(),
        )
        .await
    }

    /// [`Ext::post`] that must be answered 200 (else panic with the answer); returns the body.
    pub async fn post_ok(&self, path: &str, content_type: &str, body: &str) -> String {
        let (code, answer) = self.post(path, content_type, body).await;
        assert_eq!(code, 200, "POST {path}: {answer}");
        answer
    }
}

/// The `extpresence` binary: `EXTPRESENCE_BIN` when set (benchmarks compare builds or wrap it in
/// a profiler); else Cargo names it for tests; an example (the demo) finds it beside its own
/// directory (`target/<profile>/examples/demo` → `target/<profile>/extpresence`).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EXTPRESENCE_BIN") {
        return PathBuf::from(path);
    }
    if let Some(path) = option_env!("CARGO_BIN_EXE_extpresence") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let path = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("extpresence"))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} not found: build it first (cargo build --bin extpresence)",
        path.display()
    );
    path
}

/// Send SIGTERM to an `extpresence` process and wait (at most 15 s, else panic) for its exit
/// status code.
pub async fn terminate_child(child: &mut Child) -> Option<i32> {
    let pid = child.id()?;
    // kill(1) via the command line keeps the tests free of unsafe code.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await;
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("extpresence did not exit within 15 s of SIGTERM")
        .expect("wait");
    status.code()
}

/// Send one HTTP/1.1 request with a Content-Length body and return (status, body).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    raw_request(addr, &raw).await
}

/// Send raw bytes as a request and return (status, body) of the response.
pub async fn raw_request(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(addr).await.expect("connect to HTTP");
        s.write_all(raw).await.expect("write request");
        let mut buf = Vec::new();
        // The server may answer before reading all of a large body and then close.
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in response: {text:?}"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, body)
    })
    .await
    .expect("HTTP request timed out")
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
