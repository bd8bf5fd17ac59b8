//! A throwaway ejabberd 23.01 (Debian package) for integration tests.
//!
//! This file owns everything about running ejabberd in tests: the generated `ejabberd.yml`
//! (c2s without TLS, plain SASL, internal auth, mod_roster/disco/ping/offline), the
//! `ejabberdctl.cfg` (own node name, own distribution port on loopback, no epmd, no scheduler
//! busy-waiting), starting the VM as the `ejabberd` user with its own `HOME`, registering users
//! through `ejabberdctl`, and stopping it without leaving `beam.smp` / `erl_child_setup` /
//! `inet_gethost` processes behind.
//!
//! The component and XEP-0356 part is not written here: it is the admin-facing snippet
//! `etc/ejabberd/extpresence.yml`, copied with `example.com` / `change-me` / `5347` replaced and
//! pulled in with ejabberd's own `include_config_file` (which merges its `listen`, `acl`,
//! `access_rules` and `modules` into ours), so that snippet is what the tests exercise.
//!
//! Uses only std, tokio (`rt`, `time`, `net`) and tempfile. Everything listens on 127.0.0.1 and
//! every wait is bounded.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where Debian installs the control script.
const EJABBERDCTL: &str = "/usr/sbin/ejabberdctl";
/// The system user the Debian package runs ejabberd as; ejabberdctl refuses anyone else but root.
const EJABBERD_USER: &str = "ejabberd";
/// Longest wait for the c2s and component ports after starting the VM.
const START_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest wait for a graceful stop (SIGTERM) before the VM is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for processes to disappear after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest run of one `ejabberdctl` command (a VM boot, ~0.3 s).
const CTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How many `ejabberdctl` commands run at once in [`Ejabberd::register`].
const CTL_PARALLEL: usize = 4;
/// The admin-facing snippet the component / privilege part comes from.
const SNIPPET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/ejabberd/extpresence.yml");
const API_SNIPPET: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/etc/ejabberd/extpresence-api.yml"
);

/// Which admin API the server opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    None,
    /// Every command from loopback (benchmarks).
    All,
    /// etc/ejabberd/extpresence-api.yml.
    Sessions,
}

/// Makes node names unique within this test process (the pid makes them unique across processes).
static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// A running (or stopped, see [`Ejabberd::stop`]) ejabberd with its own config, logs and spool in
/// [`Ejabberd::dir`]. Dropping it kills the VM.
pub struct Ejabberd {
    /// Client port (plaintext, `starttls: false`) on 127.0.0.1.
    pub c2s_port: u16,
    /// Port of the `ejabberd_http` listener serving mod_http_api at `/api` on 127.0.0.1, when
    /// started with [`Ejabberd::start_with_api`] (commands allowed from 127.0.0.1 only).
    pub api_port: Option<u16>,
    /// XEP-0114 component port (`ejabberd_service`) on 127.0.0.1.
    pub component_port: u16,
    /// `etc/` (config), `logs/`, `spool/` (mnesia), `home/` (Erlang cookie), `stdout.log`.
    pub dir: tempfile::TempDir,
    /// The virtual host.
    pub domain: String,
    /// The component's domain.
    pub component: String,
    /// Erlang distribution port (ejabberdctl talks to the node through it).
    dist_port: u16,
    /// Erlang node name; fixed for the life of the spool (mnesia is bound to it).
    node: String,
    /// uid/gid to switch to when running as root.
    run_as: Option<(u32, u32)>,
    /// The `ejabberdctl` script (checked at start: missing ejabberd is a loud failure).
    ctl: PathBuf,
    /// The `ejabberdctl foreground` shell (own process group; the VM is its child) while
    /// running; `None` after [`Ejabberd::stop`].
    server: Option<Child>,
}

impl Ejabberd {
    /// Start a throwaway ejabberd for virtual host `domain` with component `component` and
    /// `secret`, using `etc/ejabberd/extpresence.yml` for the component/privilege part. Waits
    /// (bounded) until the c2s and component ports accept TCP, else panics with the log tail.
    /// Panics (never skips) when ejabberd is not installed.
    pub async fn start(domain: &str, component: &str, secret: &str) -> Ejabberd {
        Ejabberd::start_opts(domain, component, secret, Api::None).await
    }

    /// Like [`start`](Self::start), plus an `ejabberd_http` listener on a free loopback port
    /// ([`Ejabberd::api_port`]) with mod_http_api at `/api` and `api_permissions` allowing every
    /// command from 127.0.0.1 (benchmarks use `send_stanza`, `register`, `add_rosteritem`; the
    /// last needs mod_admin_extra, loaded too).
    pub async fn start_with_api(domain: &str, component: &str, secret: &str) -> Ejabberd {
        Ejabberd::start_opts(domain, component, secret, Api::All).await
    }

    /// Like [`start`](Self::start), plus `etc/ejabberd/extpresence-api.yml` (the admin API as the
    /// README tells admins to open it for `[observe] ejabberd_api`: `connected_users_info` only)
    /// on [`Ejabberd::api_port`].
    pub async fn start_with_session_api(domain: &str, component: &str, secret: &str) -> Ejabberd {
        Ejabberd::start_opts(domain, component, secret, Api::Sessions).await
    }

    async fn start_opts(domain: &str, component: &str, secret: &str, api: Api) -> Ejabberd {
        let mut attempt = 1;
        loop {
            let mut ejabberd = Ejabberd::prepare(domain, component, secret, api);
            match ejabberd.try_launch().await {
                Ok(()) => return ejabberd,
                // Another process (a client's outbound socket, another server) took one of the
                // free ports between picking it and ejabberd binding it: new ports, once more.
                Err(text) if attempt < 3 && text.contains("eaddrinuse") => attempt += 1,
                Err(text) => panic!("{text}"),
            }
        }
    }

    /// The node's directory and configuration on fresh free ports, not started yet.
    fn prepare(domain: &str, component: &str, secret: &str, api: Api) -> Ejabberd {
        let ctl = find_ejabberdctl();
        let run_as = run_as();
        // As root, under /tmp: a TMPDIR such as /root/tmp would not be reachable for `ejabberd`.
        let parent = match run_as {
            Some(_) => PathBuf::from("/tmp"),
            None => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new()
            .prefix("extpresence-ejabberd-")
            .tempdir_in(parent)
            .expect("create a temp dir for ejabberd");
        let [c2s_port, component_port, dist_port, api_port] = free_ports();
        let api_port = (api != Api::None).then_some(api_port);
        let node = format!(
            "extp{}n{}@localhost",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        );
        let root = dir.path();
        for sub in ["etc", "logs", "spool", "home"] {
            fs::create_dir(root.join(sub)).expect("create ejabberd dirs");
        }

        let snippet = fs::read_to_string(SNIPPET)
            .unwrap_or_else(|e| panic!("cannot read the ejabberd snippet {SNIPPET}: {e}"));
        let snippet = substitute_snippet(&snippet, domain, component, secret, component_port);
        let etc = root.join("etc");
        fs::write(etc.join("extpresence.yml"), snippet).expect("write extpresence.yml");
        let mut includes = vec![etc.join("extpresence.yml")];
        if api == Api::Sessions {
            let port = api_port.expect("api port");
            let text = fs::read_to_string(API_SNIPPET)
                .unwrap_or_else(|e| panic!("cannot read {API_SNIPPET}: {e}"));
            assert!(
                text.contains("port: 5281"),
                "{API_SNIPPET} no longer says port: 5281"
            );
            fs::write(
                etc.join("extpresence-api.yml"),
                text.replace("port: 5281", &format!("port: {port}")),
            )
            .expect("write extpresence-api.yml");
            includes.push(etc.join("extpresence-api.yml"));
        }
        let own_api = if api == Api::All { api_port } else { None };
        fs::write(
            etc.join("ejabberd.yml"),
            main_config(domain, c2s_port, own_api, &includes),
        )
        .expect("write ejabberd.yml");
        fs::write(
            etc.join("ejabberdctl.cfg"),
            format!(
                "# Generated by tests/common/ejabberd.rs\n\
                 ERLANG_NODE={node}\n\
                 ERL_DIST_PORT={dist_port}\n\
                 ERL_OPTIONS=\"+sbwt none +sbwtdcpu none +sbwtdio none\"\n\
                 EJABBERD_BYPASS_WARNINGS=true\n"
            ),
        )
        .expect("write ejabberdctl.cfg");
        // The distribution listener would bind 0.0.0.0 otherwise. (INET_DIST_INTERFACE in
        // ejabberdctl.cfg would do the same but boots an extra VM on every ejabberdctl call.)
        fs::write(
            etc.join("vm.args"),
            "-kernel inet_dist_use_interface {127,0,0,1}\n",
        )
        .expect("write vm.args");
        // ejabberdctl points ERL_INETRC here; an empty file silences "inetrc not found".
        fs::write(etc.join("inetrc"), "").expect("write inetrc");
        if let Some((uid, gid)) = run_as {
            chown_tree(root, uid, gid);
        }

        Ejabberd {
            c2s_port,
            api_port,
            component_port,
            dir,
            domain: domain.to_string(),
            component: component.to_string(),
            dist_port,
            node,
            run_as,
            ctl,
            server: None,
        }
    }

    /// Register `users` (local parts) on the virtual host with `password`, a few `ejabberdctl`
    /// calls at a time. A user that already exists is fine.
    pub async fn register(&self, users: &[&str], password: &str) {
        for chunk in users.chunks(CTL_PARALLEL) {
            let calls: Vec<_> = chunk
                .iter()
                .map(|user| {
                    let cmd = self.ctl_command(&["register", user, &self.domain, password]);
                    tokio::task::spawn_blocking(move || run_bounded(cmd))
                })
                .collect();
            for (user, call) in chunk.iter().zip(calls) {
                let (ok, output) = call.await.expect("ejabberdctl task");
                if !ok && !output.contains("already registered") {
                    panic!(
                        "ejabberdctl register {user} {} failed: {output}\n{}",
                        self.domain,
                        self.log_tail()
                    );
                }
            }
        }
    }

    /// Run any `ejabberdctl` command against this node; returns (success, stdout + stderr).
    pub async fn ctl(&self, args: &[&str]) -> (bool, String) {
        let cmd = self.ctl_command(args);
        tokio::task::spawn_blocking(move || run_bounded(cmd))
            .await
            .expect("ejabberdctl task")
    }

    /// Stop the server gracefully (SIGTERM to the VM, bounded; SIGKILL after that), keeping the
    /// dir, the mnesia spool (users, rosters) and the ports. No-op when already stopped.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        let tree = descendants(child.id());
        // The VM is the child of the ejabberdctl shell; SIGTERM makes it shut down cleanly and
        // the shell exits after it.
        let vms: Vec<&Proc> = tree
            .iter()
            .filter(|p| p.ppid == child.id() && p.comm.starts_with("beam"))
            .collect();
        if vms.is_empty() {
            signal_group(child.id(), "TERM");
        } else {
            for vm in vms {
                signal(vm, "TERM");
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if exited(&mut child) && tree.iter().all(|p| !p.alive()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        kill_all(&mut child, &tree);
        if !exited(&mut child) || tree.iter().any(Proc::alive) {
            panic!(
                "ejabberd did not stop within {:?} even after SIGKILL\n{}",
                STOP_TIMEOUT + KILL_TIMEOUT,
                self.log_tail()
            );
        }
        eprintln!(
            "ejabberd ignored SIGTERM for {STOP_TIMEOUT:?} and was killed\n{}",
            self.log_tail()
        );
    }

    /// Start again (after [`Ejabberd::stop`]) on the same ports and spool, waiting until the
    /// ports accept.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "ejabberd is still running");
        self.launch().await;
    }

    /// Whether the VM is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Pids of the `ejabberdctl` shell and everything under it (VM, `erl_child_setup`,
    /// `inet_gethost`): for checking that nothing is left after a stop or drop.
    pub fn processes(&self) -> Vec<u32> {
        match &self.server {
            Some(child) => std::iter::once(child.id())
                .chain(descendants(child.id()).into_iter().map(|p| p.pid))
                .collect(),
            None => Vec::new(),
        }
    }

    /// The Erlang node name (unique per instance, fixed across restarts).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The server log: `ejabberd.log`, `error.log`, and the captured stdout/stderr of all runs.
    pub fn log(&self) -> String {
        let root = self.dir.path();
        let mut out = String::new();
        for file in ["logs/ejabberd.log", "logs/error.log", "stdout.log"] {
            let text = fs::read_to_string(root.join(file)).unwrap_or_default();
            out.push_str(&format!("===== {file} =====\n{text}\n"));
        }
        out
    }

    /// The last lines of each log, for panic messages.
    pub fn log_tail(&self) -> String {
        let root = self.dir.path();
        let mut out = format!("ejabberd dir: {}\n", root.display());
        // stdout repeats ejabberd.log, but also has what the VM prints before logging starts.
        for (file, lines) in [
            ("logs/ejabberd.log", 50),
            ("logs/error.log", 20),
            ("stdout.log", 20),
        ] {
            let text = fs::read_to_string(root.join(file)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!(
                "----- tail of {file} -----\n{}\n",
                tail.join("\n")
            ));
        }
        out
    }

    /// An `ejabberdctl` invocation for this node (own config dir, logs, spool, HOME, user).
    fn ctl_command(&self, args: &[&str]) -> Command {
        let root = self.dir.path();
        let mut cmd = Command::new(&self.ctl);
        cmd.arg("--config-dir")
            .arg(root.join("etc"))
            .arg("--logs")
            .arg(root.join("logs"))
            .arg("--spool")
            .arg(root.join("spool"))
            .args(args)
            .current_dir(root.join("spool"))
            // Nothing from the caller's environment (EJABBERD_CONFIG_PATH, ERL_*, …) leaks in.
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", root.join("home"))
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Start the VM in the foreground (a child of ours, in its own process group) and wait for
    /// the ports.
    async fn launch(&mut self) {
        if let Err(text) = self.try_launch().await {
            panic!("{text}");
        }
    }

    /// [`launch`](Self::launch), saying why it failed instead of panicking.
    async fn try_launch(&mut self) -> Result<(), String> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stdout.log"))
            .expect("open stdout.log");
        let err = out.try_clone().expect("clone stdout.log");
        let mut cmd = self.ctl_command(&["foreground"]);
        cmd.stdout(out).stderr(err).process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.ctl.display()));
        // From here on Drop cleans up, also when the wait below panics.
        self.server = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.server = None;
                return Err(format!(
                    "ejabberd exited during startup ({status})\n{}",
                    self.log_tail()
                ));
            }
            // Listeners accept before every module and Mnesia table is ready (CI once saw
            // `register` fail with `{no_exists,passwd,storage_type}` right after the ports
            // opened), so also wait for `ejabberdctl status` to say the application runs.
            if accepts(self.c2s_port).await
                && accepts(self.component_port).await
                && self.ctl(&["status"]).await.0
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "ejabberd did not accept on c2s port {} and component port {} within {:?}\n{}",
                    self.c2s_port,
                    self.component_port,
                    START_TIMEOUT,
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let tree = descendants(child.id());
            kill_all(&mut child, &tree);
        }
    }
}

/// The snippet with the test's names; panics if a placeholder is missing (the snippet changed).
fn substitute_snippet(
    snippet: &str,
    domain: &str,
    component: &str,
    secret: &str,
    port: u16,
) -> String {
    for placeholder in ["status.example.com", "change-me", "port: 5347"] {
        assert!(
            snippet.contains(placeholder),
            "{SNIPPET} no longer contains {placeholder:?}: update tests/common/ejabberd.rs"
        );
    }
    snippet
        .replace("status.example.com", component)
        .replace("example.com", domain)
        .replace("change-me", secret)
        .replace("5347", &port.to_string())
}

/// Our part of ejabberd.yml; the snippet is merged in by `include_config_file`. With `api_port`,
/// an `ejabberd_http` listener serving mod_http_api at `/api`, open to 127.0.0.1 only.
fn main_config(domain: &str, c2s_port: u16, api_port: Option<u16>, includes: &[PathBuf]) -> String {
    let includes: String = includes
        .iter()
        .map(|p| format!("  - \"{}\"\n", p.display()))
        .collect();
    // (listener entry, top-level permissions, module) for the HTTP API, or nothing.
    let (api_listener, api_permissions, api_module) = match api_port {
        None => (String::new(), "", ""),
        Some(port) => (
            format!(
                r#"  -
    port: {port}
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
"#
            ),
            r#"
# Replaces the default permissions, so the console one (ejabberdctl) is repeated here.
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
  "loopback http api":
    from:
      - mod_http_api
    who:
      ip: 127.0.0.1/8
    what: "*"
"#,
            // mod_admin_extra has the roster commands (add_rosteritem, …).
            "  mod_http_api: {}\n  mod_admin_extra: {}\n",
        ),
    };
    format!(
        r#"# Generated by tests/common/ejabberd.rs
hosts:
  - "{domain}"
loglevel: info
hide_sensitive_log_data: false
certfiles: []
auth_method: internal
auth_password_format: plain

listen:
  -
    port: {c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: false
{api_listener}
acl:
  local:
    user_regexp: ""

access_rules:
  local:
    allow: local
  c2s:
    allow: all

shaper_rules:
  max_user_offline_messages: 5000

# mod_roster carries subscriptions (pending ones too) and presence; ejabberd has no separate
# presence module.
modules:
  mod_roster:
    versioning: false
  mod_disco: {{}}
  mod_ping: {{}}
  mod_offline: {{}}
{api_module}
# The component listener, acl, access rule and mod_privilege: etc/ejabberd/extpresence.yml
# (and the admin API of etc/ejabberd/extpresence-api.yml, if asked for).
include_config_file:
{includes}{api_permissions}"#
    )
}

fn find_ejabberdctl() -> PathBuf {
    if Path::new(EJABBERDCTL).is_file() {
        return PathBuf::from(EJABBERDCTL);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("ejabberdctl");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "ejabberd is not installed ({EJABBERDCTL} not found): these tests need it; \
         apt-get install -y ejabberd (Debian bookworm, 23.01)"
    );
}

/// As root: the `ejabberd` user's uid/gid to switch to. As the `ejabberd` user: nothing.
fn run_as() -> Option<(u32, u32)> {
    let me = fs::metadata("/proc/self").expect("read /proc/self").uid();
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let ejabberd = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == EJABBERD_USER).then(|| {
            (
                f[2].parse::<u32>().expect("uid"),
                f[3].parse::<u32>().expect("gid"),
            )
        })
    });
    let Some((uid, gid)) = ejabberd else {
        panic!(
            "no `{EJABBERD_USER}` user: ejabberd is not installed; \
             apt-get install -y ejabberd (Debian bookworm, 23.01)"
        );
    };
    if me == uid {
        None
    } else if me == 0 {
        Some((uid, gid))
    } else {
        panic!(
            "ejabberd tests must run as root or as the `{EJABBERD_USER}` user \
             (ejabberdctl refuses anyone else); running as uid {me}"
        );
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() {
        for entry in fs::read_dir(path).expect("read dir") {
            chown_tree(&entry.expect("dir entry").path(), uid, gid);
        }
    }
}

/// Four distinct free loopback ports (c2s, component, Erlang distribution, HTTP API).
fn free_ports() -> [u16; 4] {
    let listeners: Vec<std::net::TcpListener> = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    let port = |i: usize| listeners[i].local_addr().expect("local addr").port();
    [port(0), port(1), port(2), port(3)]
}

async fn accepts(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Run a short command with a deadline; returns (success, stdout + stderr).
fn run_bounded(mut cmd: Command) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + CTL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for ejabberdctl") {
            break status;
        }
        if Instant::now() >= deadline {
            signal_group(child.id(), "KILL");
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {CTL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut output = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut output);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut output);
    }
    (status.success(), output)
}

/// A process as seen in /proc, identified by pid and start time (so a reused pid is not hit).
#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    ppid: u32,
    start: u64,
    comm: String,
}

impl Proc {
    fn read(pid: u32) -> Option<(Proc, char)> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid … ; comm may contain spaces and parentheses.
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let state = rest.first()?.chars().next()?;
        let ppid = rest.get(1)?.parse().ok()?;
        // Field 22 (starttime) is the 20th after the comm.
        let start = rest.get(19)?.parse().ok()?;
        Some((
            Proc {
                pid,
                ppid,
                start,
                comm,
            },
            state,
        ))
    }

    /// Still running (a zombie or a new process with the same pid does not count).
    fn alive(&self) -> bool {
        matches!(Proc::read(self.pid), Some((p, state)) if p.start == self.start && !matches!(state, 'Z' | 'X'))
    }
}

/// All live descendants of `root` (not `root` itself).
fn descendants(root: u32) -> Vec<Proc> {
    let mut children: HashMap<u32, Vec<Proc>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some((p, state)) = Proc::read(pid) {
                if !matches!(state, 'Z' | 'X') {
                    children.entry(p.ppid).or_default().push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for p in children.remove(&pid).unwrap_or_default() {
            todo.push(p.pid);
            out.push(p);
        }
    }
    out
}

fn signal(p: &Proc, sig: &str) {
    if p.alive() {
        kill(&p.pid.to_string(), sig);
    }
}

fn signal_group(pgid: u32, sig: &str) {
    kill(&format!("-{pgid}"), sig);
}

fn kill(target: &str, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn exited(child: &mut Child) -> bool {
    !matches!(child.try_wait(), Ok(None))
}

/// SIGKILL every process of `tree` (the VM's helpers run in their own sessions), deepest
/// first, so that the still-living parents reap them (fewer zombies for init); then the
/// ejabberdctl shell's process group. Waits (bounded) until they are gone.
fn kill_all(child: &mut Child, tree: &[Proc]) {
    // Helpers started after `tree` was taken count too.
    let mut all: Vec<Proc> = tree.to_vec();
    for p in descendants(child.id()) {
        if !all.iter().any(|q| q.pid == p.pid) {
            all.push(p);
        }
    }
    // `descendants` lists parents before their children.
    for p in all.iter().rev() {
        signal(p, "KILL");
    }
    // The shell exits by itself once the VM is dead.
    let deadline = Instant::now() + Duration::from_secs(1);
    while !exited(child) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    signal_group(child.id(), "KILL");
    let deadline = Instant::now() + KILL_TIMEOUT;
    while Instant::now() < deadline {
        if exited(child) && all.iter().all(|p| !p.alive()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
