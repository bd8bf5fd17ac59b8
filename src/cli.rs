//! The command-line client (`extpresence set|clear|get|watch|token`): the native API `/v1`
//! driven from the shell, with human-readable output (`--json` for the raw objects); `status`
//! (the running daemon's readiness report, like `prosodyctl status`) and `check-config
//! --connect` (one test connection to the XMPP server, or the running daemon asked instead).
//!
//! Where the server is: `--url` / `EXTPRESENCE_URL`, the key from `--key-file` /
//! `EXTPRESENCE_KEY_FILE` / `EXTPRESENCE_KEY`; without them (run on the server host) the daemon's
//! own configuration gives the URL (`[http] listen`) and an admin key. Exit codes: [`EXIT_OK`],
//! [`EXIT_REFUSED`] (the server's error message is shown), [`EXIT_USAGE`], [`EXIT_UNREACHABLE`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::access::Scope;
use crate::config::Settings;

/// Done.
pub const EXIT_OK: u8 = 0;
/// The server refused (its message is printed).
pub const EXIT_REFUSED: u8 = 1;
/// The command line is wrong (also clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// The server could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Longest wait for one answer (not for `watch`).
const TIMEOUT: Duration = Duration::from_secs(15);

/// A failure, with its exit code and a message that says what to do.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// For stderr.
    pub message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        message: message.into(),
    }
}

/// Where the server is and the key to use.
#[derive(Clone)]
pub struct Target {
    /// `http://host:port`, no trailing slash.
    pub url: String,
    key: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({}, key MASKED)", self.url)
    }
}

/// How the target was given on the command line.
#[derive(Debug, Default, Clone)]
pub struct TargetArgs {
    /// `--url` (or `EXTPRESENCE_URL`).
    pub url: Option<String>,
    /// `--key-file` (or `EXTPRESENCE_KEY_FILE`).
    pub key_file: Option<PathBuf>,
    /// `--config` (the daemon's configuration, read when URL or key are not given otherwise).
    pub config: PathBuf,
}

impl Target {
    /// Resolve the flags (clap fills them from `EXTPRESENCE_URL` and `EXTPRESENCE_KEY_FILE` too),
    /// then `EXTPRESENCE_KEY`, then the daemon's configuration.
    pub fn resolve(args: &TargetArgs) -> Result<Target, Failure> {
        let url = args.url.clone();
        let mut key = match &args.key_file {
            Some(path) => Some(read_key(path)?),
            None => std::env::var("EXTPRESENCE_KEY")
                .ok()
                .filter(|v| !v.trim().is_empty()),
        };
        let url = match url {
            Some(u) => u,
            None => {
                let settings = daemon_settings(&args.config, "no --url given")?;
                if key.is_none() {
                    key = admin_key(&settings);
                }
                listen_url(&settings)
            }
        };
        let key = match key {
            Some(k) => k,
            None => {
                let settings = daemon_settings(&args.config, "no API key given")?;
                admin_key(&settings).ok_or_else(|| {
                    usage(format!(
                        "no API key: give --key-file, EXTPRESENCE_KEY_FILE or EXTPRESENCE_KEY \
                         ({} has no admin key with write access)",
                        args.config.display()
                    ))
                })?
            }
        };
        Ok(Target {
            url: http_url(&url)?,
            key,
        })
    }
}

fn read_key(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read the key file {}: {e}", path.display())))?;
    text.lines()
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .ok_or_else(|| usage(format!("the key file {} is empty", path.display())))
}

/// The daemon's configuration, read because `missing` (what the command line did not give).
fn daemon_settings(config: &Path, missing: &str) -> Result<Settings, Failure> {
    crate::config::load(config).map_err(|e| {
        usage(format!(
            "{missing} and the daemon's configuration {} cannot be used ({e}); give --url and \
             --key-file, or EXTPRESENCE_URL and EXTPRESENCE_KEY_FILE",
            config.display()
        ))
    })
}

/// The first admin key with write access in the daemon's configuration.
fn admin_key(settings: &Settings) -> Option<String> {
    settings
        .keys
        .iter()
        .find(|(_, g)| g.scope == Scope::Admin && g.access == crate::access::Access::ReadWrite)
        .map(|(k, _)| k.expose().to_string())
}

/// Parse a duration such as `45m`, `2h`, `1h30m`, `90s` or `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, Failure> {
    humantime::parse_duration(s).map_err(|e| {
        usage(format!(
            "{s:?} is not a duration ({e}); e.g. 90s, 45m, 2h, 1h30m, 30d"
        ))
    })
}

/// An HTTP client of the target.
pub struct Client {
    http: reqwest::Client,
    target: Target,
}

/// An answer: status and parsed body (`Value::Null` when empty).
struct Answer {
    status: u16,
    body: Value,
}

fn unreachable(target: &Target, e: &reqwest::Error) -> Failure {
    let why = if e.is_timeout() {
        "no answer in time".to_string()
    } else if e.is_connect() {
        "connection refused or no route".to_string()
    } else {
        e.to_string()
    };
    Failure {
        code: EXIT_UNREACHABLE,
        message: format!(
            "extpresence at {} cannot be reached: {why}. Is it running (systemctl status \
             extpresence)? Is --url / EXTPRESENCE_URL right?",
            target.url
        ),
    }
}

/// The server's error message (`{"error":{"code","message"}}`), or the raw body.
fn refused(answer: &Answer) -> Failure {
    let message = match &answer.body {
        Value::Object(o) => o
            .get("error")
            .and_then(|e| {
                let msg = e.get("message")?.as_str()?;
                Some(match e.get("code").and_then(Value::as_str) {
                    Some(code) => format!("{msg} ({code})"),
                    None => msg.to_string(),
                })
            })
            .unwrap_or_else(|| answer.body.to_string()),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Failure {
        code: EXIT_REFUSED,
        message: format!("refused by the server ({}): {message}", answer.status),
    }
}

fn path_segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl Client {
    /// A client of `target`.
    pub fn new(target: Target) -> Client {
        Client {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client"),
            target,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Answer, Failure> {
        let r = req
            .header("Api-Key", &self.target.key)
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(|e| unreachable(&self.target, &e))?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(|e| unreachable(&self.target, &e))?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        let answer = Answer { status, body };
        if (200..300).contains(&status) {
            Ok(answer)
        } else {
            Err(refused(&answer))
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target.url)
    }

    /// `PUT /v1/users/{user}/status`.
    pub async fn set(
        &self,
        user: &str,
        presence: &str,
        status: Option<&str>,
        resource: Option<&str>,
        source: Option<&str>,
        expires: Option<Duration>,
    ) -> Result<Value, Failure> {
        let mut body = json!({ "presence": presence });
        if let Some(s) = status {
            body["status"] = json!(s);
        }
        if let Some(r) = resource {
            body["resource"] = json!(r);
        }
        if let Some(s) = source {
            body["source"] = json!(s);
        }
        if let Some(d) = expires {
            body["expires_in"] = json!(d.as_secs().max(1));
        }
        let req = self
            .http
            .put(self.url(&format!("/v1/users/{}/status", path_segment(user))))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        Ok(self.send(req).await?.body)
    }

    /// `DELETE /v1/users/{user}/status`.
    pub async fn clear(
        &self,
        user: &str,
        resource: Option<&str>,
        source: Option<&str>,
    ) -> Result<Value, Failure> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(r) = resource {
            query.push(("resource", r));
        }
        if let Some(s) = source {
            query.push(("source", s));
        }
        let req = self
            .http
            .delete(self.url(&format!("/v1/users/{}/status", path_segment(user))))
            .query(&query);
        Ok(self.send(req).await?.body)
    }

    /// `GET /v1/users/{user}/presence`.
    pub async fn get(&self, user: &str) -> Result<Value, Failure> {
        let req = self
            .http
            .get(self.url(&format!("/v1/users/{}/presence", path_segment(user))));
        Ok(self.send(req).await?.body)
    }

    /// `GET /v1/users/{user}/status`: the statuses held, with their expiry.
    pub async fn held(&self, user: &str) -> Result<Value, Failure> {
        let req = self
            .http
            .get(self.url(&format!("/v1/users/{}/status", path_segment(user))));
        Ok(self.send(req).await?.body)
    }

    /// `POST /v1/tokens`.
    pub async fn token_create(
        &self,
        user: &str,
        access: &str,
        name: Option<&str>,
        expires: Option<Duration>,
    ) -> Result<Value, Failure> {
        let mut body = json!({ "user": user, "access": access });
        if let Some(n) = name {
            body["name"] = json!(n);
        }
        if let Some(d) = expires {
            body["expires_in"] = json!(d.as_secs().max(1));
        }
        let req = self
            .http
            .post(self.url("/v1/tokens"))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        Ok(self.send(req).await?.body)
    }

    /// `GET /v1/tokens`.
    pub async fn token_list(&self) -> Result<Value, Failure> {
        Ok(self.send(self.http.get(self.url("/v1/tokens"))).await?.body)
    }

    /// `DELETE /v1/tokens/{id}`.
    pub async fn token_revoke(&self, id: &str) -> Result<Value, Failure> {
        let req = self
            .http
            .delete(self.url(&format!("/v1/tokens/{}", path_segment(id))));
        Ok(self.send(req).await?.body)
    }

    /// `GET /v1/events` as lines on `out`, one per event, until `stop`; reconnects (after 1 s,
    /// then backing off to 30 s) and resumes with `Last-Event-ID`. Returns an error only when the
    /// server refuses the stream (or never answers the first time).
    pub async fn watch(
        &self,
        users: &[String],
        domains: &[String],
        json: bool,
        out: &mut (dyn std::io::Write + Send),
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<(), Failure> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        for u in users {
            query.push(("user", u));
        }
        for d in domains {
            query.push(("domain", d));
        }
        let mut last_id: Option<String> = None;
        let mut connected_once = false;
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut req = self
                .http
                .get(self.url("/v1/events"))
                .query(&query)
                .header("Api-Key", &self.target.key)
                .header("Accept", "text/event-stream");
            if let Some(id) = &last_id {
                req = req.header("Last-Event-ID", id);
            }
            let response = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                r = req.send() => r,
            };
            let response = match response {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    return Err(refused(&Answer { status, body }));
                }
                Err(e) if !connected_once => return Err(unreachable(&self.target, &e)),
                Err(e) => {
                    eprintln!(
                        "extpresence: the event stream is down ({}); retrying in {}s",
                        unreachable(&self.target, &e).message,
                        backoff.as_secs()
                    );
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            connected_once = true;
            backoff = Duration::from_secs(1);
            // The stream is decoded as a whole (a character split across network chunks stays
            // whole), by the maintained SSE parser.
            let mut events = response.bytes_stream().eventsource();
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    e = events.next() => e,
                };
                let event = match next {
                    Some(Ok(event)) => event,
                    Some(Err(EventStreamError::Utf8(e))) => {
                        eprintln!("extpresence: the event stream is not UTF-8 ({e})");
                        break;
                    }
                    Some(Err(_)) | None => break, // ended or broken: reconnect
                };
                if !event.id.is_empty() {
                    last_id = Some(event.id.clone());
                }
                if event.data.is_empty() {
                    continue; // an id-only frame
                }
                let text = if json {
                    event.data
                } else {
                    render_event(&event.event, &event.data)
                };
                if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                    return Ok(()); // stdout closed (a pipe into head)
                }
            }
            eprintln!("extpresence: the event stream ended; resuming");
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }
}

/// One event as a line: `time user presence "status" (cause)`; a `reset` says events were lost.
fn render_event(kind: &str, data: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return format!("{kind}: {data}");
    };
    if kind == "reset" {
        return format!(
            "-- events were missed ({}); what follows is current",
            v.get("reason").and_then(Value::as_str).unwrap_or("reset")
        );
    }
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let mut line = format!("{} {} {}", s("at"), s("user"), s("presence"));
    if let Some(status) = v.get("status").and_then(Value::as_str) {
        line.push_str(&format!(" {status:?}"));
    }
    line.push_str(&format!(" ({})", s("cause")));
    line
}

/// When the winning source of `held`'s `resource` ends (RFC 3339), if it does.
fn held_until<'a>(held: Option<&'a Value>, resource: &str) -> Option<&'a str> {
    let r = held?
        .get("resources")?
        .as_array()?
        .iter()
        .find(|r| r.get("resource").and_then(Value::as_str) == Some(resource))?;
    let winner = r.get("effective")?.get("source")?;
    r.get("sources")?
        .as_array()?
        .iter()
        .find(|s| s.get("source") == Some(winner))?
        .get("expires_at")?
        .as_str()
}

/// A user's presence as people read it; with `held` (the statuses held, when the credential may
/// read them), a held resource's expiry as `set` shows it (`, until <RFC 3339>`).
pub fn render_presence(v: &Value, held: Option<&Value>) -> String {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut out = format!("{}: {}", s(v, "user"), s(v, "presence"));
    if let Some(status) = v.get("status").and_then(Value::as_str) {
        out.push_str(&format!(" {status:?}"));
    }
    if v.get("complete") == Some(&Value::Bool(false)) {
        out.push_str("  (the server may not have told every session)");
    }
    out.push('\n');
    for r in v
        .get("resources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let origin = match s(r, "origin").as_str() {
            "session" => "session".to_string(),
            _ => {
                let mut o = format!(
                    "held by {}",
                    r.get("sources")
                        .and_then(Value::as_array)
                        .map(|a| a
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                );
                if let Some(at) = held_until(held, &s(r, "resource")) {
                    o.push_str(&format!(", until {at}"));
                }
                o
            }
        };
        let status = r
            .get("status")
            .and_then(Value::as_str)
            .map(|t| format!("{t:?}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {:<20} {:<7} {:<24} priority {:>4}  since {}  {}\n",
            s(r, "resource"),
            s(r, "presence"),
            status,
            r.get("priority").and_then(Value::as_i64).unwrap_or(0),
            s(r, "since"),
            origin
        ));
    }
    out
}

/// A set's answer as people read it.
pub fn render_set(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let mut out = format!(
        "{}/{} source {}: {}",
        s("user"),
        s("resource"),
        s("source"),
        s("presence")
    );
    if let Some(status) = v.get("status").and_then(Value::as_str) {
        out.push_str(&format!(" {status:?}"));
    }
    if let Some(at) = v.get("expires_at").and_then(Value::as_str) {
        out.push_str(&format!(", until {at}"));
    }
    if let Some(e) = v.get("effective").filter(|e| e.is_object()) {
        let es = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
        let verb = if pending(v).is_some() {
            "contacts will see"
        } else {
            "contacts see"
        };
        out.push_str(&format!(
            "; {verb} {} (source {})",
            es("presence"),
            es("source")
        ));
    }
    if let Some(why) = pending(v) {
        out.push_str(&format!(
            "\ndelivery pending: {why}; it is held and delivered once that is fixed (extpresence \
             status says what to fix)"
        ));
    }
    out
}

/// Why an answer's change is held for later rather than delivered (`delivery: "pending"`).
pub fn pending(v: &Value) -> Option<&str> {
    (v.get("delivery").and_then(Value::as_str) == Some("pending")).then(|| {
        v.get("delivery_reason")
            .and_then(Value::as_str)
            .unwrap_or("not delivered yet")
    })
}

/// The token list as a table.
pub fn render_tokens(v: &Value) -> String {
    let mut out = format!(
        "{:<14} {:<32} {:<10} {:<24} {:<26} {}\n",
        "ID", "USER", "ACCESS", "NAME", "CREATED", "EXPIRES"
    );
    for t in v
        .get("tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |k: &str| match t.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "-".into(),
            Some(other) => other.to_string(),
        };
        out.push_str(&format!(
            "{:<14} {:<32} {:<10} {:<24} {:<26} {}\n",
            s("id"),
            s("user"),
            s("access"),
            s("name"),
            s("created_at"),
            s("expires_at")
        ));
    }
    out
}

/// The daemon's URL: `--url` / `EXTPRESENCE_URL`, else `[http] listen` of its configuration (a
/// wildcard address asked on loopback). No key: for `status`, which reads the public `/readyz`.
pub fn daemon_url(args: &TargetArgs) -> Result<String, Failure> {
    match &args.url {
        Some(u) => http_url(u),
        None => Ok(listen_url(&daemon_settings(
            &args.config,
            "no --url given",
        )?)),
    }
}

/// `url` without a trailing slash, if it is an http(s) URL.
fn http_url(url: &str) -> Result<String, Failure> {
    let url = url.trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(usage(format!(
            "--url {url:?} is not an http(s) URL (e.g. http://127.0.0.1:8080)"
        )));
    }
    Ok(url.to_string())
}

/// `http://` and the daemon's `[http] listen` (a wildcard address asked on loopback).
fn listen_url(settings: &Settings) -> String {
    let mut addr = settings.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

/// `extpresence status`: the running daemon's readiness report (`GET /readyz` as JSON, which
/// needs no key). `Err` with [`EXIT_UNREACHABLE`] when nothing answers there.
pub async fn status(url: &str, wait: Duration) -> Result<Value, Failure> {
    let not_running = |why: String| Failure {
        code: EXIT_UNREACHABLE,
        message: format!(
            "extpresence is not running at {url} ({why}); start it with systemctl start \
             extpresence, or give --url"
        ),
    };
    let r = reqwest::Client::builder()
        .connect_timeout(wait)
        .timeout(wait)
        .build()
        .expect("an HTTP client")
        .get(format!("{url}/readyz"))
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| not_running(e.to_string()))?;
    let text = r.text().await.map_err(|e| not_running(e.to_string()))?;
    serde_json::from_str::<Value>(&text)
        .ok()
        .filter(|v| v.get("ready").is_some())
        .ok_or_else(|| {
            not_running(format!(
                "what answers there is not extpresence: {:?}",
                text.chars().take(80).collect::<String>()
            ))
        })
}

/// The exit code of a readiness report: [`EXIT_OK`] when ready, else [`EXIT_REFUSED`].
pub fn status_code(report: &Value) -> u8 {
    if report["ready"] == true {
        EXIT_OK
    } else {
        EXIT_REFUSED
    }
}

/// A readiness report for people, like `prosodyctl status`.
pub fn render_status(r: &Value) -> String {
    use std::fmt::Write;
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut out = String::new();
    let uptime = Duration::from_secs(r["uptime_secs"].as_u64().unwrap_or(0));
    let _ = writeln!(
        out,
        "extpresence {}: {} (backend {}, up {}, since {})",
        s(&r["version"]),
        if r["ready"] == true {
            "ready"
        } else {
            "NOT READY"
        },
        s(&r["backend"]),
        humantime::format_duration(uptime),
        s(&r["started_at"])
    );
    let link = &r["link"];
    let _ = writeln!(
        out,
        "link:        {} since {} ({} as {}; {} attempts)",
        if link["up"] == true { "up" } else { "DOWN" },
        link["since"].as_str().unwrap_or("start"),
        s(&link["server"]),
        s(&link["component"]),
        link["attempts"].as_u64().unwrap_or(0)
    );
    if let Some(next) = link["next_attempt"].as_str() {
        let _ = writeln!(out, "             next attempt {next}");
    }
    if let Some(e) = link["last_error"].as_object() {
        let _ = writeln!(
            out,
            "last error:  {} at {}",
            e.get("error").map(s).unwrap_or_default(),
            e.get("at").map(s).unwrap_or_default()
        );
        if let Some(h) = e.get("hint").and_then(Value::as_str) {
            let _ = writeln!(out, "             hint: {h}");
        }
    }
    if let Some(p) = r["privileges"].as_object() {
        for (domain, v) in p {
            let mut what = s(&v["state"]);
            if let Some(roster) = v["roster"].as_str() {
                let _ = write!(what, " (roster {roster}");
                match v["presence"].as_str() {
                    Some(p) => {
                        let _ = write!(what, ", presence {p})");
                    }
                    None => what.push_str(", no presence)"),
                }
            }
            let _ = writeln!(out, "privileges:  {domain}: {what}");
        }
    }
    let condition = |name: &str| {
        r["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .map(|c| {
                if c["ok"] == true {
                    "ok".to_string()
                } else {
                    format!("FAILING: {}", s(&c["reason"]))
                }
            })
            .unwrap_or_else(|| "?".into())
    };
    let _ = writeln!(out, "store:       {}", condition("store"));
    let _ = writeln!(
        out,
        "webhooks:    outbox {}, backlog {} events",
        condition("webhook_outbox"),
        r["webhook_backlog"].as_u64().unwrap_or(0)
    );
    let _ = writeln!(
        out,
        "held:        {} statuses; observed sessions: {}",
        r["held"].as_u64().unwrap_or(0),
        r["observed_sessions"].as_u64().unwrap_or(0)
    );
    let failing: Vec<&Value> = r["conditions"]
        .as_array()
        .map(|cs| cs.iter().filter(|c| c["ok"] != true).collect())
        .unwrap_or_default();
    if !failing.is_empty() {
        out.push_str("not ready because:\n");
        for c in failing {
            let _ = writeln!(out, "  - {}: {}", s(&c["name"]), s(&c["reason"]));
            if let Some(fix) = c["fix"].as_str() {
                let _ = writeln!(out, "    fix: {fix}");
            }
            if let Some(at) = c["next_retry"].as_str() {
                let _ = writeln!(out, "    next retry: {at}");
            }
        }
    }
    out
}

/// `extpresence check-config --connect`: test the configured component against the XMPP
/// server: handshake, and (fan-out) the privileges granted for each served domain. When an
/// extpresence already answers on `[http] listen`, it is asked instead (a second component
/// connection would disturb it: Prosody refuses it, and on ejabberd its disconnect removes the
/// running instance's privileges). Returns the text to print and the exit code.
pub async fn check_connect(settings: &Settings) -> (String, u8) {
    use std::fmt::Write;
    let url = listen_url(settings);
    if let Ok(report) = status(&url, Duration::from_secs(2)).await {
        let text = format!(
            "extpresence already runs at {url}: asked it instead of connecting (a second \
             component connection would disturb it: Prosody refuses it, and on ejabberd its \
             disconnect removes the running instance's privileges)\n{}",
            render_status(&report)
        );
        return (text, status_code(&report));
    }
    let fanout = settings.backend == crate::config::BackendKind::Fanout;
    let domains: Vec<String> = settings.domains.iter().cloned().collect();
    let cfg = settings.link_config(
        Default::default(),
        crate::base::health::Health::new(domains.iter().map(String::as_str), fanout),
    );
    let checked = crate::xmpp::check::connect_once(&cfg, &domains, fanout).await;
    let mut out = String::new();
    let _ = write!(
        out,
        "connecting to {} as {}: ",
        settings.server, settings.component
    );
    if let Err(e) = &checked.handshake {
        let _ = writeln!(out, "FAILED: {e}");
        if let Some(h) = e.hint() {
            let _ = writeln!(out, "  hint: {h}");
        }
        return (out, EXIT_REFUSED);
    }
    out.push_str("handshake ok\n");
    let mut ok = true;
    if fanout {
        for (domain, p) in &checked.privileges {
            match p {
                Some((roster, presence)) if matches!(roster.as_deref(), Some("get" | "both")) => {
                    let _ = writeln!(
                        out,
                        "privileges:  {domain}: granted (roster {}, presence {})",
                        roster.as_deref().unwrap_or("none"),
                        presence.as_deref().unwrap_or("none")
                    );
                }
                Some((roster, _)) => {
                    ok = false;
                    let _ = writeln!(
                        out,
                        "privileges:  {domain}: MISSING: roster access is {:?}, rosters cannot \
                         be read",
                        roster.as_deref().unwrap_or("none")
                    );
                }
                None => {
                    ok = false;
                    let _ = writeln!(
                        out,
                        "privileges:  {domain}: MISSING: no XEP-0356 privilege advertisement \
                         within {:?}: see etc/prosody/extpresence.cfg.lua or \
                         etc/ejabberd/extpresence.yml (README, \"Setting up the server\")",
                        crate::xmpp::check::PRIVILEGE_WAIT
                    );
                }
            }
        }
        for other in &checked.others {
            let _ = writeln!(
                out,
                "privileges:  advertised by {other}, which is not in [xmpp] domains (the wrong \
                 VirtualHost?)"
            );
        }
    }
    out.push_str(if ok {
        "ok: extpresence can deliver\n"
    } else {
        "NOT OK: nothing would reach the contacts of the domains above\n"
    });
    (out, if ok { EXIT_OK } else { EXIT_REFUSED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("45m").unwrap(), Duration::from_secs(2700));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(2_592_000)
        );
        assert_eq!(parse_duration("soon").unwrap_err().code, EXIT_USAGE);
    }

    #[test]
    fn events_render_as_lines() {
        let line = render_event(
            "presence",
            r#"{"user":"alice@x","presence":"away","status":"Lunch","at":"2026-11-29T12:00:00.000Z","cause":"status"}"#,
        );
        assert_eq!(
            line,
            "2026-11-29T12:00:00.000Z alice@x away \"Lunch\" (status)"
        );
        assert!(render_event("reset", r#"{"reason":"lagged"}"#).contains("missed"));
    }

    #[test]
    fn user_text_is_quoted_not_interpreted() {
        let v = json!({"user":"alice@x","presence":"dnd","status":"a\u{1b}[31mred\n","complete":true,
            "resources":[{"resource":"phone","origin":"extpresence","presence":"dnd","status":"x","priority":-1,"since":"t","sources":["pbx"]}]});
        let text = render_presence(&v, None);
        assert!(
            !text.contains('\u{1b}'),
            "escape sequences are quoted: {text}"
        );
        assert!(text.contains("held by pbx"), "{text}");
    }

    #[test]
    fn get_shows_the_winning_sources_expiry_as_set_does() {
        let v = json!({"user":"alice@x","presence":"dnd","complete":true,"resources":[
            {"resource":"phone","origin":"extpresence","presence":"dnd","priority":-1,"since":"t","sources":["cal","pbx"]},
            {"resource":"desk","origin":"extpresence","presence":"away","priority":-1,"since":"t","sources":["cal"]}]});
        let held = json!({"user":"alice@x","resources":[
            {"resource":"phone","effective":{"presence":"dnd","source":"pbx","priority":-1},"sources":[
                {"source":"cal","presence":"away","priority":-1,"updated_at":"t","expires_at":"2026-11-29T15:00:00.000Z"},
                {"source":"pbx","presence":"dnd","priority":-1,"updated_at":"t","expires_at":"2026-11-29T13:05:00.000Z"}]},
            {"resource":"desk","effective":{"presence":"away","source":"cal","priority":-1},"sources":[
                {"source":"cal","presence":"away","priority":-1,"updated_at":"t","expires_at":null}]}]});
        let text = render_presence(&v, Some(&held));
        let set = render_set(&json!({"user":"alice@x","resource":"phone","source":"pbx",
            "presence":"dnd","expires_at":"2026-11-29T13:05:00.000Z"}));
        let until = set.split_once(", ").unwrap().1;
        assert_eq!(until, "until 2026-11-29T13:05:00.000Z");
        let phone = text.lines().find(|l| l.contains("phone")).unwrap();
        assert!(
            phone.ends_with(&format!("held by cal, pbx, {until}")),
            "{text}"
        );
        let desk = text.lines().find(|l| l.contains("desk")).unwrap();
        assert!(desk.ends_with("held by cal"), "{text}");
        assert_eq!(render_presence(&v, None).matches("until").count(), 0);
    }

    #[test]
    fn a_held_set_says_delivery_is_pending() {
        let v = json!({"user":"alice@x","resource":"r","source":"default","presence":"away",
            "effective":{"presence":"away","source":"default"},"delivery":"pending",
            "delivery_reason":"the XMPP component link is down"});
        let text = render_set(&v);
        assert!(text.contains("; contacts will see away"), "{text}");
        assert!(
            text.ends_with("\ndelivery pending: the XMPP component link is down; it is held and delivered once that is fixed (extpresence status says what to fix)"),
            "{text}"
        );
        let v = json!({"user":"alice@x","resource":"r","source":"default","presence":"away",
            "effective":{"presence":"away","source":"default"},"delivery":"queued"});
        assert!(render_set(&v).ends_with("; contacts see away (source default)"));
    }
}
