//! Tier: the binary alone (no server).
//!
//! The man page as `generate-assets` writes it for the package: every command and option of the
//! command line is in it, every page it refers to exists, `man` and `groff` render it without a
//! warning, and what it says of exit codes and signals is what the binary does (each checked by
//! doing it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_extpresence");

/// The page, generated into a temp dir: (the dir, the page's path, its roff text).
fn generate() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("generate-assets")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = dir.path().join("extpresence.1");
    let roff = std::fs::read_to_string(&page).unwrap();
    (dir, page, roff)
}

/// A program the test needs; absent, the test fails saying how to get it.
fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(
        found,
        "{program} is missing: install the Debian package {package} (bash scripts/install-deps.sh)"
    );
}

/// `man -l` of the page, as text (`MANWIDTH` columns), with its stderr.
fn man(page: &Path, width: &str) -> (String, String) {
    require("man", "man-db");
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", width)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .unwrap();
    assert!(out.status.success(), "man -l failed: {out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The help of `args` (e.g. `["token", "--help"]`): its command names and its long options.
fn help(args: &[&str]) -> (Vec<String>, Vec<String>) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut commands = Vec::new();
    let mut options = Vec::new();
    let mut section = "";
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if !line.starts_with(' ') {
            section = line;
            continue;
        }
        let word = line.split_whitespace().next().unwrap_or("");
        match section {
            "Commands:" if word != "help" => commands.push(word.to_string()),
            // An option's own line (not a wrapped description).
            "Options:" if line.trim_start().starts_with('-') => {
                if let Some(long) = line.split_whitespace().find(|w| w.starts_with("--")) {
                    options.push(long.trim_end_matches(',').to_string());
                }
            }
            _ => {}
        }
    }
    (commands, options)
}

/// Every command (`set`, `token create`, …) of the command line, with its own long options.
fn commands(path: &[&str], out: &mut Vec<(String, Vec<String>)>) {
    let mut args = path.to_vec();
    args.push("--help");
    let (subs, _) = help(&args);
    for sub in subs {
        let mut p = path.to_vec();
        p.push(&sub);
        let mut a = p.clone();
        a.push("--help");
        let (_, options) = help(&a);
        out.push((p.join(" "), options));
        commands(&p, out);
    }
}

/// The roff text of section `name` (up to the next `.SH`).
fn section<'a>(roff: &'a str, name: &str) -> &'a str {
    let head = roff
        .lines()
        .find(|l| {
            l.strip_prefix(".SH ")
                .is_some_and(|h| h.trim_matches('"') == name)
        })
        .unwrap_or_else(|| panic!("no section {name}:\n{roff}"));
    let start = roff.find(head).unwrap() + head.len();
    let end = roff[start..]
        .find("\n.SH ")
        .map_or(roff.len(), |e| start + e);
    &roff[start..end]
}

/// Every command and option of the command line is documented (so `status` or
/// `check-config --connect`, once added to the clap definitions, are too), the daemon is
/// described, and the sections an admin looks for are there.
#[test]
fn every_command_and_option_documented() {
    let (_dir, _page, roff) = generate();
    for name in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "EXIT STATUS",
        "FILES",
        "ENVIRONMENT",
        "SIGNALS",
        "EXAMPLES",
        "SEE ALSO",
    ] {
        section(&roff, name);
    }
    let description = section(&roff, "DESCRIPTION");
    assert!(
        description.contains("Without a command, extpresence runs the daemon"),
        "{description}"
    );

    let (_, global) = help(&["--help"]);
    assert!(global.contains(&"--config".to_string()), "{global:?}");
    for long in &global {
        let roffed = format!("\\fB{}\\fR", long.replace('-', "\\-"));
        assert!(
            section(&roff, "OPTIONS").contains(&roffed),
            "{long} not in OPTIONS"
        );
    }
    let mut all = Vec::new();
    commands(&[], &mut all);
    assert!(all.len() >= 9, "{all:?}");
    let documented = section(&roff, "COMMANDS");
    let parts: Vec<&str> = documented.split("\n.SS ").collect();
    for (command, options) in &all {
        let title = format!("\"extpresence {}\"", command.replace('-', "\\-"));
        let part = parts
            .iter()
            .find(|p| p.starts_with(&title))
            .unwrap_or_else(|| panic!("no subsection for {command}"));
        for long in options {
            if global.contains(long) {
                continue;
            }
            let roffed = format!("\\fB{}\\fR", long.replace('-', "\\-"));
            assert!(part.contains(&roffed), "{command} {long} not documented");
        }
    }
    // The hidden packaging command is not.
    assert!(!roff.contains("generate\\-assets"));
}

/// Every `name(n)` the page refers to is this page or a page installed on the system; nothing
/// like the old `extpresence-set(1)`.
#[test]
fn every_reference_resolves() {
    let (_dir, page, roff) = generate();
    require("man", "man-db");
    // Font changes and escaped hyphens removed, `.BR name (n)` and `\fBname\fR(n)` both read.
    let plain = roff
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
        .replace("\\-", "-");
    let mut refs = BTreeSet::new();
    for line in plain.lines() {
        let line = line.strip_prefix(".BR ").unwrap_or(line);
        let bytes: Vec<char> = line.chars().collect();
        for (i, c) in bytes.iter().enumerate() {
            if *c != '(' || i == 0 {
                continue;
            }
            let close = match bytes[i..].iter().position(|c| *c == ')') {
                Some(p) => i + p,
                None => continue,
            };
            let number: String = bytes[i + 1..close].iter().collect();
            if !number.starts_with(|c: char| c.is_ascii_digit()) || number.len() > 3 {
                continue;
            }
            let before = bytes[..i].iter().collect::<String>();
            let before = before.trim_end();
            let name: String = before
                .chars()
                .rev()
                .take_while(|c| c.is_alphanumeric() || "._-+".contains(*c))
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if !name.is_empty() {
                refs.insert((name, number));
            }
        }
    }
    assert!(
        refs.contains(&("systemctl".to_string(), "1".to_string())),
        "the reference parser found {refs:?}"
    );
    let generated = page.file_name().unwrap().to_string_lossy().into_owned();
    for (name, number) in &refs {
        if format!("{name}.{number}") == generated {
            continue;
        }
        let found = Command::new("man")
            .args(["-w", number, name])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "the page refers to {name}({number}), which is neither generated nor installed"
        );
    }
}

/// `man` and `groff` render the page without a single warning.
#[test]
fn renders_without_warnings() {
    let (_dir, page, _) = generate();
    let (text, warnings) = man(&page, "80");
    assert_eq!(warnings, "", "man --warnings");
    assert!(text.contains("EXIT STATUS") && text.contains("extpresence token create"));
    require("groff", "groff-base");
    let out = Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .arg(&page)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "groff -ww");
}

/// A configuration for the daemon in `dir` (HTTP on `listen`, no XMPP server needed).
fn config(dir: &Path, listen: &str) -> PathBuf {
    let path = dir.join("extpresence.toml");
    std::fs::write(
        &path,
        format!(
            r#"[xmpp]
component = "status.example.com"
server = "127.0.0.1:9"
secret = "s3cret"
domains = ["example.com"]
reconnect_max_secs = 1
[http]
listen = "{listen}"
api_keys = ["k"]
[store]
path = "{}"
"#,
            dir.join("statuses.redb").display()
        ),
    )
    .unwrap();
    path
}

/// The daemon on `config`, until "HTTP API listening" is logged: the child and its stderr file.
fn daemon(config: &Path) -> (std::process::Child, PathBuf) {
    let log = config.with_extension("log");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("HTTP API listening")
    {
        assert!(start.elapsed() < Duration::from_secs(20), "never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, log)
}

fn wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each exit code is produced by doing what the page says produces it, and the page lists
/// exactly those; SIGTERM and SIGINT stop cleanly (0), SIGHUP reconnects the link and the daemon
/// stays up, as SIGNALS says.
#[test]
fn exit_codes_and_signals_are_the_real_ones() {
    let (_d, _page, roff) = generate();
    let exit = section(&roff, "EXIT STATUS");
    let listed: BTreeSet<i32> = exit
        .split(".TP\n\\fB")
        .skip(1)
        .map(|p| p.split("\\fR").next().unwrap().parse().unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], config: &Path| {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("EXTPRESENCE_URL")
            .env_remove("EXTPRESENCE_KEY")
            .env_remove("EXTPRESENCE_KEY_FILE")
            .output()
            .unwrap()
            .status
            .code()
            .unwrap()
    };
    let good = config(dir.path(), "127.0.0.1:0");
    let mut seen = BTreeSet::new();
    // 0: a valid configuration.
    seen.insert(run(&["check-config"], &good));
    // 2: a wrong command line.
    seen.insert(run(&["--no-such-option"], &good));
    // 3: a client command that cannot reach the daemon (nothing listens on port 9).
    let key = dir.path().join("key");
    std::fs::write(&key, "k\n").unwrap();
    let key = key.display().to_string();
    seen.insert(run(
        &[
            "--url",
            "http://127.0.0.1:9",
            "--key-file",
            &key,
            "get",
            "alice@example.com",
        ],
        &good,
    ));
    // 64: an invalid configuration.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = config(bad_dir.path(), "nowhere");
    seen.insert(run(&["check-config"], &bad));
    // 69: the HTTP address is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_dir = tempfile::tempdir().unwrap();
    let busy = config(busy_dir.path(), &taken.local_addr().unwrap().to_string());
    seen.insert(run(&[], &busy));

    // 1: the daemon fails while starting (the store's directory cannot be made).
    let fail_dir = tempfile::tempdir().unwrap();
    let fail = config(fail_dir.path(), "127.0.0.1:0");
    let text = std::fs::read_to_string(&fail)
        .unwrap()
        .replace("statuses.redb", "file/statuses.redb");
    std::fs::write(fail_dir.path().join("file"), "a file, not a directory").unwrap();
    std::fs::write(&fail, text).unwrap();
    seen.insert(run(&[], &fail));

    // Signals: SIGTERM and SIGINT stop cleanly with 0; SIGHUP kills.
    let signal = |config: &Path, sig: &str| {
        let (mut child, log) = daemon(config);
        let sent = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        (wait(&mut child), std::fs::read_to_string(log).unwrap())
    };
    for sig in ["TERM", "INT"] {
        let (status, log) = signal(&good, sig);
        assert_eq!(status.code(), Some(0), "SIG{sig}: {log}");
        assert!(log.contains(&format!("SIG{sig} received")), "{log}");
        assert!(log.contains("stopped"), "{log}");
        seen.insert(0);
    }
    // SIGHUP: the daemon stays up and says it reconnects the link; SIGTERM then stops it.
    let (mut child, log) = daemon(&good);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("SIGHUP received")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "SIGHUP not logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP ended the daemon"
    );
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(wait(&mut child).code(), Some(0));
    let signals = section(&roff, "SIGNALS");
    assert!(
        signals.contains("\\fBSIGHUP\\fR\nConnects the XMPP component link again at once"),
        "{signals}"
    );

    assert_eq!(
        listed, seen,
        "EXIT STATUS lists {listed:?}, the binary gives {seen:?}"
    );
}
