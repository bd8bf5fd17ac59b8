//! Tier: one real server (Prosody, with real XMPP clients).
//!
//! Nothing acknowledged is lost: 10,000 status updates over 100 users go to the real binary while
//! it is killed with SIGKILL at a random point; after a restart every update that got a 2xx is
//! back with its latest value (or a later one that was in flight) and is re-delivered to a real
//! contact. Then the rest of the updates go through and the contact sees each user's final value.
//!
//! Prints `durability: …` with the counts; fails if one acknowledged update is lost.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ext::{Ext, API_KEY};
use common::{subscribe_one_way, Prosody, TestClient, COMPONENT, DOMAIN, SECRET};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xmpp_parsers::presence::{Presence, Type as PresenceType};

const USERS: usize = 100;
const UPDATES: usize = 10_000;
const WORKERS: usize = 16;

/// Per user: the highest update number sent, and the highest acknowledged.
#[derive(Default, Clone, Copy, Debug)]
struct Progress {
    sent: usize,
    acked: Option<usize>,
}

/// POST one update; `true` only for a 200 with `"success":true`. Never panics: the daemon may be
/// killed under our feet.
async fn post(addr: SocketAddr, user: usize, n: usize) -> bool {
    let body = format!(r#"{{"show": "away", "status": "u{user} #{n}"}}"#);
    let raw = format!(
        "POST /rest/user/u{user}@{DOMAIN}/status?api-key={API_KEY} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(raw.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        Some(text.starts_with("HTTP/1.1 200") && text.contains("\"success\":true"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), attempt).await,
        Ok(Some(true))
    )
}

/// Update number carried by a presence's status text `u<user> #<n>`.
fn number(p: &Presence) -> Option<(usize, usize)> {
    let text = p.statuses.values().next()?;
    let (u, n) = text.strip_prefix('u')?.split_once(" #")?;
    Some((u.parse().ok()?, n.parse().ok()?))
}

/// Send updates `from..UPDATES` (update k belongs to user k % USERS) with WORKERS workers, each
/// owning a fixed set of users so one user's updates are sent in order. Stops a worker at the
/// first failure. `acked_total` counts acknowledgements.
async fn storm(
    addr: SocketAddr,
    progress: Arc<Mutex<Vec<Progress>>>,
    from: usize,
    acked_total: Arc<AtomicUsize>,
) {
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let progress = progress.clone();
        let acked_total = acked_total.clone();
        workers.push(tokio::spawn(async move {
            for k in (from..UPDATES).filter(|k| (k % USERS) % WORKERS == w) {
                let user = k % USERS;
                progress.lock().unwrap()[user].sent = k;
                if !post(addr, user, k).await {
                    return;
                }
                progress.lock().unwrap()[user].acked = Some(k);
                acked_total.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
}

/// Collect presences on `bob` until every user in `want` has shown a value ≥ its wanted number
/// (or `deadline` passes); returns the highest number seen per user.
async fn collect(
    bob: &mut TestClient,
    want: &HashMap<usize, usize>,
    deadline: Duration,
) -> HashMap<usize, usize> {
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let start = Instant::now();
    while start.elapsed() < deadline && want.iter().any(|(u, n)| seen.get(u).is_none_or(|s| s < n))
    {
        for p in bob.presences_within(Duration::from_millis(200)).await {
            if p.type_ != PresenceType::None {
                continue;
            }
            if let Some((u, n)) = number(&p) {
                let e = seen.entry(u).or_insert(n);
                *e = (*e).max(n);
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_updates_survive_sigkill() {
    let prosody = Prosody::start().await;
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    let mut names: Vec<&str> = users.iter().map(String::as_str).collect();
    names.push("bob");
    prosody.register(&names).await;
    // bob follows every user (each user's roster has bob with subscription `from`).
    let mut bob = TestClient::connect(prosody.c2s_port, "bob", true).await;
    for u in &users {
        let mut owner = TestClient::connect(prosody.c2s_port, u, true).await;
        subscribe_one_way(&mut bob, &mut owner).await;
        owner.disconnect().await;
    }
    bob.disconnect().await;

    let mut ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;

    // Phase 1: updates until SIGKILL after a random number of acknowledgements.
    let kill_after = rand::rng().random_range(1_000..9_000);
    let progress = Arc::new(Mutex::new(vec![Progress::default(); USERS]));
    let acked_total = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let storm_task = tokio::spawn(storm(ext.http, progress.clone(), 0, acked_total.clone()));
    while acked_total.load(Ordering::SeqCst) < kill_after {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {} updates acknowledged in 120 s",
            acked_total.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    ext.kill().await;
    let killed_at = started.elapsed();
    storm_task.await.unwrap();
    let before = progress.lock().unwrap().clone();
    let acked_before: usize = acked_total.load(Ordering::SeqCst);
    let sent_before = before.iter().map(|p| p.sent).max().unwrap_or(0);

    // Phase 2: restart; bob logs in and must see, per user, the last acknowledged update or a
    // later one that was in flight (never an older one, never nothing).
    ext.restart().await;
    ext.wait_privileged(1).await;
    let mut bob = TestClient::connect(prosody.c2s_port, "bob", true).await;
    let want: HashMap<usize, usize> = before
        .iter()
        .enumerate()
        .filter_map(|(u, p)| p.acked.map(|a| (u, a)))
        .collect();
    let seen = collect(&mut bob, &want, Duration::from_secs(30)).await;
    let mut lost = Vec::new();
    for (u, &acked) in &want {
        match seen.get(u) {
            Some(&n) if n >= acked && n <= before[*u].sent => {}
            other => lost.push((*u, acked, other.copied())),
        }
    }
    println!(
        "durability: {UPDATES} updates over {USERS} users, SIGKILL after {acked_before} \
         acknowledged ({:.1} s, highest update sent {sent_before}); after restart {} users \
         re-delivered to bob, acknowledged and lost: {}",
        killed_at.as_secs_f64(),
        seen.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged updates lost (user, acked, seen): {lost:?}"
    );

    // Phase 3: the rest of the updates against the restarted daemon, bob online.
    let resume_from = before.iter().map(|p| p.sent).min().unwrap_or(0);
    let acked_after = Arc::new(AtomicUsize::new(0));
    storm(ext.http, progress.clone(), resume_from, acked_after.clone()).await;
    let after = progress.lock().unwrap().clone();
    assert!(
        after
            .iter()
            .enumerate()
            .all(|(u, p)| p.acked == Some(UPDATES - USERS + u)),
        "not every final update was acknowledged: {after:?}"
    );
    let want: HashMap<usize, usize> = (0..USERS).map(|u| (u, UPDATES - USERS + u)).collect();
    let seen = collect(&mut bob, &want, Duration::from_secs(30)).await;
    let missing: Vec<_> = want
        .iter()
        .filter(|(u, n)| seen.get(u) != Some(n))
        .collect();
    println!(
        "durability: resumed at update {resume_from}, {} more acknowledged; bob saw the final \
         value of {}/{USERS} users",
        acked_after.load(Ordering::SeqCst),
        USERS - missing.len()
    );
    assert!(missing.is_empty(), "final values not seen: {missing:?}");
}
