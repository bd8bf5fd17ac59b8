//! The live status page against a running extpresence with a real Prosody: sign-in and its
//! cookie, the security headers, what the JSON and the event stream behind the page say, and a
//! real headless Chromium (Debian's, driven over the DevTools protocol by
//! tests/python/browser.py) that signs in, sees a status set over HTTP appear live within 2 s,
//! renders `<script>alert(1)</script>` as text, and saves a screenshot under target/.

#[macro_use]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::ext::{request, Ext, API_KEY};
use common::server::Kind;
use common::{mint_token, DOMAIN};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CSP: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn sign_in(ext: &Ext, key: &str) -> reqwest::Response {
    client()
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
    let (code, text) = request(
        ext.http,
        "PUT",
        &format!("/v1/users/{user}/status"),
        &[("Api-Key", API_KEY), ("Content-Type", "application/json")],
        json!({"presence": presence, "status": status, "source": "pbx"})
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

/// Headless Chromium: sign in, see a status set over HTTP appear within 2 s, user text as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser() {
    let w = common::world(Kind::Prosody, &["alice", "bob"]).await;
    let ext = &w.ext;
    let alice = format!("alice@{DOMAIN}");
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/browser.py");
    assert!(
        std::path::Path::new(python).exists(),
        "{python} is missing: run scripts/install-deps.sh (the test command does)"
    );
    let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/status-page.png");
    let _ = std::fs::remove_file(shot);
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
