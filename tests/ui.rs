//! Tier: several real things (Prosody, XMPP clients, Debian's Chromium).
//!
//! The live status page against a running extpresence with a real Prosody: sign-in and its
//! cookie, the security headers, what the JSON and the event stream behind the page say, and a
//! real headless Chromium (Debian's, driven over the DevTools protocol by
//! tests/python/browser.py) that signs in, sees a status set over HTTP appear live within 2 s (in
//! its row from the event alone, with status.json held unanswered), reads status.json a bounded
//! number of times during a burst of events, renders `<script>alert(1)</script>` as text, and
//! saves a screenshot under target/.

#[macro_use]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::ext::{request, Ext, API_KEY};
use common::server::{Kind, Server};
use common::{mint_token, COMPONENT, DOMAIN, SECRET};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CSP: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A client whose connections come from `source` (127.0.0.2 is another address on lo: Linux
/// routes all of 127/8 there).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn sign_in(ext: &Ext, key: &str) -> reqwest::Response {
    sign_in_with(&client(), ext, key).await
}

async fn sign_in_with(client: &reqwest::Client, ext: &Ext, key: &str) -> reqwest::Response {
    client
        .post(format!("http://{}/login", ext.http))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!(
            "key={}",
            form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>()
        ))
        .send()
        .await
        .unwrap()
}

async fn set(ext: &Ext, user: &str, presence: &str, status: &str) {
    set_from(ext, user, presence, status, "pbx").await
}

/// Set `user`'s status as `source`.
async fn set_from(ext: &Ext, user: &str, presence: &str, status: &str, source: &str) {
    let (code, text) = request(
        ext.http,
        "PUT",
        &format!("/v1/users/{user}/status"),
        &[("Api-Key", API_KEY), ("Content-Type", "application/json")],
        json!({"presence": presence, "status": status, "source": source})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(code, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_cookie_headers_and_data() {
    let w = common::world(Kind::Prosody, &["alice", "bob"]).await;
    let ext = &w.ext;
    let alice = format!("alice@{DOMAIN}");
    let base = format!("http://{}", ext.http);

    // Signed out: the login form, with the headers; no key in URLs is taken.
    let r = client()
        .get(format!("{base}/?api-key={API_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-security-policy"], CSP);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let body = r.text().await.unwrap();
    assert!(
        body.contains("<form method=\"post\" action=\"/login\">"),
        "{body}"
    );
    assert!(
        !body.contains("<script"),
        "no script on the login page: {body}"
    );
    let r = client()
        .get(format!("{base}/ui/status.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("{base}/ui/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Wrong key, a user's token, another site's form: refused; the admin key: a session cookie.
    assert_eq!(sign_in(ext, "wrong").await.status(), 401);
    let r = client()
        .post(format!("{base}/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Origin", "https://evil.example")
        .body(format!("key={API_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());
    let token = mint_token(ext, &alice, "read-write").await;
    assert_eq!(sign_in(ext, &token).await.status(), 403);
    let r = sign_in(ext, API_KEY).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(
        !cookie.contains(API_KEY),
        "the key is not the cookie: {cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();

    // The page: external script and style only.
    let r = client()
        .get(format!("{base}/"))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-security-policy"], CSP);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("<script src=\"/ui/app.js\" defer></script>"),
        "{page}"
    );
    assert!(!page.contains("<script>"), "no inline script: {page}");
    assert!(!page.contains("style="), "no inline style: {page}");
    for (path, ty) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(ty));
    }

    // The data: the link, the server, held statuses (searchable), counters.
    set(ext, &alice, "away", "On the phone").await;
    let status = |q: &'static str| {
        let session = session.clone();
        let base = base.clone();
        async move {
            let r = client()
                .get(format!("{base}/ui/status.json{q}"))
                .header("Cookie", session)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap()
        }
    };
    let v = status("").await;
    assert_eq!(v["link"]["state"], "up", "{v}");
    assert!(
        v["link"]["since"].as_str().unwrap().starts_with("20"),
        "{v}"
    );
    assert_eq!(v["component"], common::COMPONENT, "{v}");
    assert_eq!(v["held_total"], 1, "{v}");
    assert_eq!(v["held"][0]["user"], alice.as_str(), "{v}");
    assert_eq!(v["held"][0]["status"], "On the phone", "{v}");
    assert_eq!(v["counters"]["updates set"], 1, "{v}");
    assert_eq!(status("?user=bob").await["held"], json!([]));
    assert_eq!(
        status("?user=ALI").await["held"].as_array().unwrap().len(),
        1
    );

    // Health: the conditions of /readyz, the version and the uptime.
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
    assert!(v["uptime_secs"].is_u64(), "{v}");
    assert!(v["started_at"].as_str().unwrap().starts_with("20"), "{v}");
    assert_eq!(v["health"]["ready"], true, "{v}");
    let names: Vec<&str> = v["health"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "link",
            &format!("privileges:{DOMAIN}"),
            "store",
            "webhook_outbox"
        ],
        "{v}"
    );
    assert_eq!(v["health"]["privileges"][DOMAIN]["state"], "granted", "{v}");
    assert_eq!(v["health"]["link"]["up"], true, "{v}");

    // Every source of a resource, the winning one first and marked; counts follow the filter.
    set_from(ext, &alice, "dnd", "In a meeting", "calendar").await;
    let bob = format!("bob@{DOMAIN}");
    set(ext, &bob, "xa", "Gone fishing").await;
    let v = status("").await;
    let rows: Vec<(String, String, bool)> = v["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["user"].as_str().unwrap().to_string(),
                h["source"].as_str().unwrap().to_string(),
                h["winning"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (alice.clone(), "calendar".into(), true),
            (alice.clone(), "pbx".into(), false),
            (bob.clone(), "pbx".into(), true),
        ],
        "{v}"
    );
    assert_eq!(
        v["held"][1]["status"], "On the phone",
        "the losing source's own status: {v}"
    );
    assert_eq!(
        (v["held_total"].as_u64(), v["held_matching"].as_u64()),
        (Some(2), Some(2))
    );
    let f = status("?user=bob").await;
    assert_eq!(
        (f["held_total"].as_u64(), f["held_matching"].as_u64()),
        (Some(2), Some(1)),
        "{f}"
    );
    assert_eq!(f["held"].as_array().unwrap().len(), 1, "{f}");

    // Observed sessions: listed and searchable.
    let phone =
        common::TestClient::connect_as(w.server.c2s_port(), "bob", Some("phone"), true).await;
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = status("?user=phone").await;
        if listed["observed_matching"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed["observed"][0]["user"], bob.as_str(), "{listed}");
    assert_eq!(listed["observed"][0]["resource"], "phone", "{listed}");
    assert_eq!(listed["observed"][0]["presence"], "online", "{listed}");
    assert!(listed["observed"][0]["since"]
        .as_str()
        .unwrap()
        .starts_with("20"));
    assert_eq!(
        listed["held_matching"], 0,
        "the filter applies to both: {listed}"
    );
    let none = status("?user=nobody-here").await;
    assert_eq!(
        (
            none["observed_matching"].as_u64(),
            none["observed"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
    assert!(none["observed_sessions"].as_u64().unwrap() >= 1, "{none}");

    // The last events of the resume buffer, and where the live stream resumes.
    let events = v["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["user"] == alice.as_str() && e["status"] == "In a meeting"),
        "{v}"
    );
    assert_eq!(v["last_event_id"], events.last().unwrap()["id"], "{v}");

    // Rates per minute and the updates/s sparkline (sampled once per second).
    let mut rated = Value::Null;
    for _ in 0..50 {
        rated = status("").await;
        let spark: f64 = rated["updates_per_sec"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        if rated["rates_per_minute"]["updates set"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
            && spark > 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        rated["rates_per_minute"]["updates set"].as_f64().unwrap() > 0.0,
        "{rated}"
    );

    // One user: resources with every source, sessions, contacts, recent events.
    let user = |jid: String| {
        let session = session.clone();
        let base = base.clone();
        async move {
            let r = client()
                .get(format!("{base}/ui/user.json?jid={jid}"))
                .header("Cookie", session)
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            (
                code,
                serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap(),
            )
        }
    };
    let (code, u) = user(bob.clone()).await;
    assert_eq!(code, 200, "{u}");
    assert_eq!(u["held"][0]["status"], "Gone fishing", "{u}");
    assert_eq!(u["sessions"][0]["resource"], "phone", "{u}");
    let contacts = u["contacts"].as_array().unwrap();
    assert!(
        contacts.iter().any(|c| c["jid"] == alice.as_str()
            && c["subscription"] == "both"
            && c["presence"]["presence"] == "dnd"),
        "{u}"
    );
    assert_eq!(u["contacts_error"], Value::Null, "{u}");
    assert!(
        u["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["user"] == bob.as_str())
            && !u["events"].as_array().unwrap().is_empty(),
        "{u}"
    );
    let (code, u) = user(alice.clone()).await;
    assert_eq!((code, u["held"].as_array().unwrap().len()), (200, 2), "{u}");
    assert_eq!(user("not a jid".into()).await.0, 400);
    assert_eq!(user("carol@elsewhere.example".into()).await.0, 403);
    phone.disconnect().await;

    // Sign out: the session is gone.
    let r = client()
        .post(format!("{base}/logout"))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let r = client()
        .get(format!("{base}/ui/status.json"))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// The next line browser.py prints.
async fn next(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("browser.py answers within 60 s")
        .unwrap()
        .expect("browser.py ended early (its error is above)")
}

/// Send browser.py `command`; its answer.
async fn ask(
    stdin: &mut tokio::process::ChildStdin,
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    command: &str,
) -> Value {
    stdin
        .write_all(format!("{command}\n").as_bytes())
        .await
        .unwrap();
    let line = next(lines).await;
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{command}: {e}: {line}"))
}

/// The layout at `width` × `height`: no horizontal overflow of the page; every table fits its
/// container, or (`may_scroll`) scrolls inside it. The screenshot goes to `path`.
async fn check_layout(
    stdin: &mut tokio::process::ChildStdin,
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    width: u32,
    height: u32,
    path: &str,
    may_scroll: bool,
) {
    let _ = std::fs::remove_file(path);
    let m = ask(stdin, lines, &format!("layout {width} {height} {path}")).await;
    assert_eq!(m["inner_width"], width, "{m}");
    assert!(
        m["scroll_width"].as_u64().unwrap() <= m["inner_width"].as_u64().unwrap(),
        "the page overflows sideways at {width} px: {m}"
    );
    let tables = m["tables"].as_array().unwrap();
    assert!(tables.len() >= 5, "every table is measured: {m}");
    for t in tables {
        let fits = t["fits"] == true && t["width"].as_u64() <= t["box"].as_u64();
        assert!(
            fits || (may_scroll && t["scrolls"] == true),
            "table {} is cut off at {width} px: {t}",
            t["id"]
        );
    }
    assert!(std::fs::metadata(path)
        .map(|m| m.len() > 1000)
        .unwrap_or(false));
    println!("screenshot at {width} px: {path}");
    eprintln!("screenshot at {width} px: {path}");
}

/// Headless Chromium: sign in, see a status set over HTTP appear within 2 s, user text as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser() {
    let w = common::world(Kind::Prosody, &["alice", "bob"]).await;
    let ext = &w.ext;
    let alice = format!("alice@{DOMAIN}");
    let bob = format!("bob@{DOMAIN}");
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/browser.py");
    assert!(
        std::path::Path::new(python).exists(),
        "{python} is missing: run scripts/install-deps.sh (the test command does)"
    );
    let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/status-page.png");
    let _ = std::fs::remove_file(shot);
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/target/screenshots");
    std::fs::create_dir_all(shots).unwrap();
    // Set before the page loads: shown from the resume buffer.
    set(ext, &bob, "away", "Before the page").await;
    let mut child = tokio::process::Command::new(python)
        .args([script, &format!("http://{}", ext.http), API_KEY, shot])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run browser.py");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(next(&mut lines).await, "ready");
    let shown = ask(&mut stdin, &mut lines, "events").await;
    assert!(
        shown["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("Before the page")),
        "the last events show at load: {shown}"
    );

    // A status set over HTTP shows up live.
    let xss = "<script>alert(1)</script> On the phone";
    stdin
        .write_all(format!("expect {xss}\n").as_bytes())
        .await
        .unwrap();
    set(ext, &alice, "dnd", xss).await;
    let seen: Value = serde_json::from_str(&next(&mut lines).await).unwrap();
    let ms = seen["seen_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("never shown: {seen}"));
    assert!(ms <= 2000, "shown after {ms} ms");
    eprintln!("the status set over HTTP showed on the page after {ms} ms");

    stdin
        .write_all(format!("row {alice} {xss}\n").as_bytes())
        .await
        .unwrap();
    let seen: Value = serde_json::from_str(&next(&mut lines).await).unwrap();
    assert!(seen["seen_ms"].is_u64(), "alice's row: {seen}");
    // The row of a held status changes from the event itself: with every read of status.json
    // held unanswered, a new status still shows in alice's row.
    stdin.write_all(b"hold\n").await.unwrap();
    assert_eq!(next(&mut lines).await, r#"{"held": true}"#);
    stdin
        .write_all(format!("row {alice} From the event\n").as_bytes())
        .await
        .unwrap();
    set(ext, &alice, "away", "From the event").await;
    let seen: Value = serde_json::from_str(&next(&mut lines).await).unwrap();
    let ms = seen["seen_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("the row did not change from the event: {seen}"));
    assert!(ms <= 2000, "the row changed after {ms} ms");
    stdin.write_all(b"release\n").await.unwrap();
    next(&mut lines).await;

    // A burst of events costs a bounded number of reads of status.json (at most one per 5 s),
    // and the page still ends showing the last status.
    stdin.write_all(b"count\n").await.unwrap();
    let before: Value = serde_json::from_str(&next(&mut lines).await).unwrap();
    let started = std::time::Instant::now();
    const BURST: usize = 200;
    for i in 0..BURST {
        let user = if i % 2 == 0 { &alice } else { &bob };
        set(ext, user, "dnd", &format!("Burst {i}")).await;
    }
    stdin
        .write_all(format!("row {bob} Burst {}\n", BURST - 1).as_bytes())
        .await
        .unwrap();
    let seen: Value = serde_json::from_str(&next(&mut lines).await).unwrap();
    assert!(seen["seen_ms"].is_u64(), "the last event shows: {seen}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    stdin.write_all(b"count\n").await.unwrap();
    let after: Value = serde_json::from_str(&next(&mut lines).await).unwrap();
    let window = started.elapsed().as_secs_f64();
    let reads =
        after["status_fetches"].as_u64().unwrap() - before["status_fetches"].as_u64().unwrap();
    let bound = (window / 5.0).floor() as u64 + 1;
    eprintln!("{BURST} events in {window:.1} s: {reads} reads of status.json (bound {bound})");
    assert!(
        reads <= bound,
        "{reads} reads of status.json for {BURST} events in {window:.1} s (at most {bound})"
    );

    // User text once more, for the checks of how it rendered.
    stdin
        .write_all(format!("row {alice} {xss}\n").as_bytes())
        .await
        .unwrap();
    set(ext, &alice, "dnd", xss).await;
    let seen: Value = serde_json::from_str(&next(&mut lines).await).unwrap();
    assert!(seen["seen_ms"].is_u64(), "{seen}");

    // Two sources of one resource: the winning one is marked.
    set_from(ext, &alice, "xa", "Calendar: on leave", "calendar").await;
    let seen = ask(&mut stdin, &mut lines, "expect Calendar: on leave").await;
    assert!(seen["seen_ms"].is_u64(), "{seen}");
    let seen = ask(&mut stdin, &mut lines, "expect ✓ wins").await;
    assert!(
        seen["seen_ms"].is_u64(),
        "the winning source is marked: {seen}"
    );

    // Times in the browser's local time (Asia/Kolkata, UTC+05:30), the UTC time on hover.
    let t = ask(&mut stdin, &mut lines, "times").await;
    assert_eq!(t["offset"], -330, "{t}");
    let times = t["times"].as_array().unwrap();
    assert!(!times.is_empty(), "{t}");
    for time in times {
        let title = time["title"].as_str().unwrap();
        let utc = time["datetime"].as_str().unwrap();
        assert!(title.ends_with("Z (UTC)"), "{time}");
        // HH:MM:SS of the UTC time, moved by 5:30, as en-US shows it (h:mm:ss AM/PM).
        let hms: Vec<u32> = title[11..19]
            .split(':')
            .map(|x| x.parse().unwrap())
            .collect();
        let minutes = (hms[0] * 60 + hms[1] + 330) % 1440;
        let (h, m) = (minutes / 60, minutes % 60);
        let h12 = if h % 12 == 0 { 12 } else { h % 12 };
        let local = format!(
            "{h12}:{m:02}:{:02} {}",
            hms[2],
            if h < 12 { "AM" } else { "PM" }
        );
        let text = time["text"].as_str().unwrap();
        assert!(
            text.contains(&local),
            "{utc} shows as {text:?}, not {local}"
        );
    }

    // One user: held resources with their sources, sessions, contacts, events.
    let u = ask(&mut stdin, &mut lines, &format!("open {alice}")).await;
    assert_eq!(u["contacts_error"], "", "{u}");
    assert!(
        u["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c[0] == bob.as_str() && c[2] == "both"),
        "alice's contacts: {u}"
    );
    let held = u["held"].as_array().unwrap();
    assert_eq!(held.len(), 2, "both sources: {u}");
    assert!(held[0][4].as_str().unwrap().contains("wins"), "{u}");
    assert!(!u["events"].as_array().unwrap().is_empty(), "{u}");

    // The layout fits a 1280 px screen (every table whole) and a phone (tables scroll inside
    // their own box), with screenshots.
    check_layout(
        &mut stdin,
        &mut lines,
        1280,
        900,
        &format!("{shots}/status-1280.png"),
        false,
    )
    .await;
    check_layout(
        &mut stdin,
        &mut lines,
        390,
        844,
        &format!("{shots}/status-390.png"),
        true,
    )
    .await;
    ask(&mut stdin, &mut lines, "layout 1400 1000 /dev/null").await;

    stdin.write_all(b"end\n").await.unwrap();
    let end: Value = serde_json::from_str(&next(&mut lines).await).unwrap();
    assert_eq!(end["dialogs"], json!([]), "no alert ran: {end}");
    assert_eq!(
        end["scripts"],
        json!(["/ui/app.js"]),
        "no script from user text: {end}"
    );
    assert!(
        end["text"]
            .as_str()
            .unwrap()
            .contains("<script>alert(1)</script>"),
        "the text shows as text: {end}"
    );
    assert!(std::fs::metadata(shot)
        .map(|m| m.len() > 1000)
        .unwrap_or(false));
    println!("screenshot of the status page: {shot}");
    eprintln!("screenshot of the status page: {shot}");
    let _ = child.wait().await;
}

/// The session cookie (`name=value`) of a sign-in's answer.
fn session_of(r: &reqwest::Response) -> String {
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

/// `GET /ui/status.json` with `session`: the status code and the answer.
async fn status_of(ext: &Ext, session: &str) -> (u16, Value) {
    let r = client()
        .get(format!("http://{}/ui/status.json", ext.http))
        .header("Cookie", session)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (
        code,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

/// Wrong keys in the sign-in form count toward the failed-authentication limit of their address:
/// after the bound that address gets 429 with Retry-After (also with the right key), while the
/// admin signing in from another address is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_failures_are_limited_per_address() {
    let w = common::world(Kind::Prosody, &["alice", "bob"]).await;
    let ext = &w.ext;
    let flood = client_from("127.0.0.1");
    for i in 0..10 {
        let r = sign_in_with(&flood, ext, &format!("guess-{i}")).await;
        assert_eq!(r.status(), 401, "guess {i}");
    }
    let r = sign_in_with(&flood, ext, "guess-10").await;
    assert_eq!(r.status(), 429);
    let wait = common::retry_after(&r);
    assert!((1..=6).contains(&wait), "Retry-After {wait}");
    assert!(r.headers().get("set-cookie").is_none());
    assert_eq!(
        sign_in_with(&flood, ext, API_KEY).await.status(),
        429,
        "no more guesses from that address, right or wrong"
    );
    let r = sign_in_with(&client_from("127.0.0.2"), ext, API_KEY).await;
    assert_eq!(r.status(), 303, "the admin from another address signs in");
    assert_eq!(status_of(ext, &session_of(&r)).await.0, 200);
}

const DOMAIN_KEY: &str = "domain-reader-0123456789";
const OTHER: &str = "other.localhost";
const WHSEC: &str = "whsec_dGVzdC1zZWNyZXQtb2YtMzItYnl0ZXMtZm9yLWhvb2s=";

/// Prosody with alice and bob, and extpresence with `tweak` applied to its configuration.
async fn world_with(tweak: impl FnOnce(String) -> String) -> (Server, Ext) {
    let server = Server::start(Kind::Prosody).await;
    server.register(&["alice", "bob"]).await;
    common::alice_and_bob_mutual(&server).await;
    let mut ext = Ext::start_with(server.component_port(), DOMAIN, COMPONENT, SECRET, tweak).await;
    ext.wait_privileged(1).await;
    (server, ext)
}

/// Sessions are capped per credential (a domain key signing in over and over drops its own
/// oldest sessions, never the admin's); sign-out from another origin is refused and keeps the
/// cookie; a domain key's page shows its own domains only (no global counters, only the webhook
/// endpoints within its domains).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_capped_logout_same_origin_and_domain_scope() {
    let (_server, ext) = world_with(|c| {
        c.replace(
            &format!("domains = [\"{DOMAIN}\"]"),
            &format!("domains = [\"{DOMAIN}\", \"{OTHER}\"]"),
        )
        .replace(
            "[http]\n",
            &format!(
                "[[http.keys]]\nkey = \"{DOMAIN_KEY}\"\nscope = {{ domains = [\"{DOMAIN}\"] }}\n\
                 access = \"read\"\nname = \"team-reader\"\n\n[http]\n"
            ),
        ) + &format!(
            "\n[[webhooks]]\nname = \"mine\"\nurl = \"http://127.0.0.1:9/mine\"\nsecret = \"{WHSEC}\"\n\
             domains = [\"{DOMAIN}\"]\n\
             \n[[webhooks]]\nname = \"mine-alice\"\nurl = \"http://127.0.0.1:9/alice\"\nsecret = \"{WHSEC}\"\n\
             users = [\"alice@{DOMAIN}\"]\n\
             \n[[webhooks]]\nname = \"everyone\"\nurl = \"http://127.0.0.1:9/all\"\nsecret = \"{WHSEC}\"\n\
             \n[[webhooks]]\nname = \"theirs\"\nurl = \"http://127.0.0.1:9/theirs\"\nsecret = \"{WHSEC}\"\n\
             domains = [\"{DOMAIN}\", \"{OTHER}\"]\n"
        )
    })
    .await;
    let r = sign_in(&ext, API_KEY).await;
    assert_eq!(r.status(), 303);
    let admin = session_of(&r);

    // 1,001 sign-ins with the domain key: only its 16 newest sessions live; the admin's does.
    let mut mine = Vec::new();
    let c = client();
    for _ in 0..1001 {
        let r = sign_in_with(&c, &ext, DOMAIN_KEY).await;
        assert_eq!(r.status(), 303);
        mine.push(session_of(&r));
    }
    assert_eq!(
        status_of(&ext, &admin).await.0,
        200,
        "the admin's session survives"
    );
    assert_eq!(status_of(&ext, &mine[0]).await.0, 401);
    assert_eq!(status_of(&ext, &mine[1001 - 17]).await.0, 401);
    for s in &mine[1001 - 16..] {
        assert_eq!(status_of(&ext, s).await.0, 200);
    }

    // Sign-out posted from another origin: refused, the cookie and the session stay.
    let r = client()
        .post(format!("http://{}/logout", ext.http))
        .header("Cookie", &admin)
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());
    assert_eq!(status_of(&ext, &admin).await.0, 200);

    // Scope: the admin sees every endpoint and the counters; the domain key its own only.
    let names = |v: &Value| -> Vec<String> {
        v["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, a) = status_of(&ext, &admin).await;
    assert_eq!(
        names(&a),
        ["mine", "mine-alice", "everyone", "theirs"],
        "{a}"
    );
    assert!(a["counters"]["stanzas sent"].is_number(), "{a}");
    let (_, d) = status_of(&ext, mine.last().unwrap()).await;
    assert_eq!(names(&d), ["mine", "mine-alice"], "{d}");
    assert_eq!(d["counters"], json!({}), "no global counter: {d}");
    assert_eq!(d["rates_per_minute"], json!({}), "no global rate: {d}");
    assert_eq!(d["updates_per_sec"], json!([]), "no global sparkline: {d}");
    assert_eq!(d["admin"], false, "{d}");

    // Health: the privilege conditions of the key's own domains only.
    let conditions = |v: &Value| -> Vec<String> {
        v["health"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    let other = format!("privileges:{OTHER}");
    assert!(conditions(&a).contains(&other), "{a}");
    assert!(!conditions(&d).contains(&other), "{d}");
    assert!(d["health"]["privileges"].get(OTHER).is_none(), "{d}");
    // The server does not serve OTHER: the admin's page says which condition fails and why.
    let failing = a["health"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == other.as_str())
        .unwrap();
    assert_eq!(failing["ok"], false, "{a}");
    assert!(!failing["reason"].as_str().unwrap().is_empty(), "{a}");
    assert_eq!(a["health"]["ready"], false, "{a}");

    // Events and users of another domain: not shown to the domain key.
    let theirs = format!("alice@{OTHER}");
    set(&ext, &theirs, "away", "Elsewhere").await;
    set(&ext, &format!("alice@{DOMAIN}"), "away", "Here").await;
    let (_, a) = status_of(&ext, &admin).await;
    let (_, d) = status_of(&ext, mine.last().unwrap()).await;
    let users = |v: &Value| -> Vec<String> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["user"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(users(&a).contains(&theirs), "{a}");
    assert!(!users(&d).contains(&theirs), "{d}");
    assert!(users(&d).contains(&format!("alice@{DOMAIN}")), "{d}");
    let user_json = |session: String, jid: String| {
        let url = format!("http://{}/ui/user.json?jid={jid}", ext.http);
        async move {
            let r = client()
                .get(url)
                .header("Cookie", session)
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            (
                code,
                serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap(),
            )
        }
    };
    let (code, _) = user_json(mine.last().unwrap().clone(), theirs.clone()).await;
    assert_eq!(code, 403, "a domain key cannot open another domain's user");
    // The server cannot give the roster of a domain it does not serve: the view says so, and
    // shows the rest.
    let (code, u) = user_json(admin.clone(), theirs.clone()).await;
    assert_eq!(code, 200, "{u}");
    assert!(
        u["contacts_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{u}"
    );
    assert_eq!(u["held"][0]["status"], "Elsewhere", "{u}");
}

/// `[ui] public_origin`: a request naming another host is refused (421), sign-in must come from
/// that origin; `[http] trusted_proxies`: only those may say the page is served over HTTPS (then
/// the cookie is `Secure`) and which host was asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_origin_trusted_proxy_and_secure_cookie() {
    let (_server, ext) = world_with(|c| {
        c.replace(
            "[http]\n",
            "[ui]\npublic_origin = \"http://presence.example.com\"\n\n[http]\n\
             trusted_proxies = [\"127.0.0.2\"]\n",
        )
    })
    .await;
    let base = format!("http://{}", ext.http);
    let direct = client_from("127.0.0.1");
    let proxy = client_from("127.0.0.2");
    const HOST: &str = "presence.example.com";

    // Another host: refused, for the page and its parts.
    for path in ["/", "/ui/app.js", "/ui/status.json"] {
        let r = direct.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 421, "{path}");
    }
    let r = direct
        .get(format!("{base}/"))
        .header("Host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // An untrusted peer cannot name the host through X-Forwarded-Host; the trusted proxy can.
    let forwarded = |c: &reqwest::Client| {
        c.get(format!("{base}/"))
            .header("X-Forwarded-Host", HOST)
            .send()
    };
    assert_eq!(forwarded(&direct).await.unwrap().status(), 421);
    assert_eq!(forwarded(&proxy).await.unwrap().status(), 200);

    let login = |c: &reqwest::Client, origin: &str, proto: Option<&str>| {
        let mut r = c
            .post(format!("{base}/login"))
            .header("Host", HOST)
            .header("Origin", origin)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!("key={API_KEY}"));
        if let Some(p) = proto {
            r = r.header("X-Forwarded-Proto", p);
        }
        r.send()
    };
    // The Origin must be the public origin.
    let r = login(&direct, "http://evil.example", None).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = login(&direct, "https://presence.example.com", None)
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "another scheme is another origin");
    // Secure only when a trusted proxy says HTTPS.
    let r = login(&direct, "http://presence.example.com", Some("https"))
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(!cookie.contains("Secure"), "{cookie}");
    let r = login(&proxy, "http://presence.example.com", Some("https"))
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Sign-out keeps the attribute.
    let r = proxy
        .post(format!("{base}/logout"))
        .header("Host", HOST)
        .header("Origin", "http://presence.example.com")
        .header("X-Forwarded-Proto", "https")
        .header("Cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cleared = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.contains("Max-Age=0") && cleared.contains("Secure"),
        "{cleared}"
    );
}

/// Whether the stream `r` ends (its body completes) within `within`, reading what it sends.
async fn stream_ends(mut r: reqwest::Response, within: Duration) -> bool {
    tokio::time::timeout(within, async { while let Ok(Some(_)) = r.chunk().await {} })
        .await
        .is_ok()
}

/// `/ui/events` of a session ends when the session does: at sign-out, and when a newer session
/// of the same key evicts it (the issue: revocation and expiry end every open stream of a
/// credential, the status page's too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_its_event_streams() {
    let (_server, ext) = world_with(|c| c).await;
    let open = |session: String| {
        let url = format!("http://{}/ui/events", ext.http);
        async move {
            let r = client()
                .get(url)
                .header("Cookie", session)
                .header("Accept", "text/event-stream")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r
        }
    };
    // Sign-out.
    let session = session_of(&sign_in(&ext, API_KEY).await);
    let stream = open(session.clone()).await;
    let kept = open(session_of(&sign_in(&ext, API_KEY).await)).await;
    let r = client()
        .post(format!("http://{}/logout", ext.http))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        stream_ends(stream, Duration::from_secs(3)).await,
        "the stream of a signed-out session ends"
    );
    assert!(
        !stream_ends(kept, Duration::from_millis(500)).await,
        "another session's stream stays open"
    );
    // Evicted by a newer session of the same key (16 at most per key).
    let first = session_of(&sign_in(&ext, API_KEY).await);
    let stream = open(first).await;
    for _ in 0..16 {
        assert_eq!(sign_in(&ext, API_KEY).await.status(), 303);
    }
    assert!(
        stream_ends(stream, Duration::from_secs(3)).await,
        "the stream of an evicted session ends"
    );
}
