//! Server-Sent Events subscribers on `GET /v1/events`, reduced to what the benchmark needs.
//!
//! Each subscriber is one raw TCP connection (one tokio task): it sends the GET with the API key,
//! checks the `200` head, then reads the stream line by line. An event is taken at its `id:`
//! line (the time of the read that completed that line), and identified by its `data:` line: the
//! benchmark sets status texts [`MARKER`]`<k>`, so the `k`-th marked change is found in the
//! presence object whatever the event's id is. Arrivals are kept per (subscriber, change) as
//! nanoseconds since [`Subscribers`] was made; the driver waits until every subscriber has a
//! change ([`Subscribers::wait_for`]). Connections are opened a bounded number at a time, and
//! every wait is bounded. The tasks end when the [`Subscribers`] value is dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What a marked status text starts with: the text of change `k` is `evt#<k>`.
pub const MARKER: &str = "evt#";

/// The status text that marks change `k`.
pub fn marked(k: usize) -> String {
    format!("{MARKER}{k}")
}

/// Connections being opened at once.
const OPENING: usize = 128;

/// What all subscriber tasks share.
struct Shared {
    /// Subscribers in all.
    n: usize,
    /// Changes each subscriber may see (markers `0..changes`).
    changes: usize,
    /// Where arrival times count from.
    base: Instant,
    /// Arrival of change `k` at subscriber `s` at `[s * changes + k]`: ns after `base` + 1;
    /// 0 while it has not arrived.
    arrivals: Box<[AtomicU64]>,
    /// Subscribers that have change `k`, at `[k]`.
    counts: Box<[AtomicUsize]>,
    /// Subscribers whose `200` head arrived.
    connected: AtomicUsize,
    /// Subscribers that failed (refused, closed, timed out).
    failed: AtomicUsize,
    /// Length of the first marked event's `data:` (the baseline's events are made as long).
    data_len: AtomicUsize,
    first_error: Mutex<Option<String>>,
    /// Woken when a count or the connected/failed totals reach `n`.
    progress: Notify,
}

impl Shared {
    fn fail(&self, e: String) {
        self.first_error.lock().unwrap().get_or_insert(e);
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.progress.notify_waiters();
    }
}

/// Many subscribers of one event stream.
pub struct Subscribers {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Subscribers {
    /// Open `n` subscriptions `GET /v1/events<query>` at `addr` with API key `key`, each
    /// watching for changes `0..changes`; returns once every one has its `200` head or failed
    /// (bounded by a minute).
    pub async fn connect(
        addr: SocketAddr,
        key: &str,
        query: &str,
        n: usize,
        changes: usize,
    ) -> Subscribers {
        let shared = Arc::new(Shared {
            n,
            changes,
            base: Instant::now(),
            arrivals: (0..n * changes).map(|_| AtomicU64::new(0)).collect(),
            counts: (0..changes).map(|_| AtomicUsize::new(0)).collect(),
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            data_len: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            progress: Notify::new(),
        });
        let request: Arc<[u8]> = format!(
            "GET /v1/events{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nApi-Key: {key}\r\n\
             Accept: text/event-stream\r\n\r\n"
        )
        .into_bytes()
        .into();
        let opening = Arc::new(Semaphore::new(OPENING));
        let tasks = (0..n)
            .map(|s| {
                let (shared, request, opening) = (shared.clone(), request.clone(), opening.clone());
                tokio::spawn(async move {
                    let permit = opening.acquire_owned().await.expect("semaphore");
                    let opened =
                        tokio::time::timeout(Duration::from_secs(30), subscribe(addr, &request))
                            .await;
                    drop(permit);
                    let (stream, rest) = match opened {
                        Ok(Ok(v)) => v,
                        Ok(Err(e)) => return shared.fail(format!("subscribe: {e}")),
                        Err(_) => return shared.fail("no 200 head within 30 s".into()),
                    };
                    let total = shared.connected.fetch_add(1, Ordering::Relaxed) + 1;
                    if total == shared.n {
                        shared.progress.notify_waiters();
                    }
                    if let Err(e) = read_events(&shared, s, stream, rest).await {
                        shared.fail(format!("stream: {e}"));
                    }
                })
            })
            .collect();
        let subscribers = Subscribers { shared, tasks };
        let settled = || {
            let s = &subscribers.shared;
            s.connected.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed) >= s.n
        };
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let woken = subscribers.shared.progress.notified();
                if settled() {
                    return;
                }
                // Also look again now and then: a wake-up may come before `notified` was polled.
                let _ = tokio::time::timeout(Duration::from_millis(50), woken).await;
            }
        })
        .await;
        subscribers
    }

    /// Subscribers whose `200` head arrived.
    pub fn connected(&self) -> usize {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Subscribers that failed so far, and the first failure.
    pub fn failed(&self) -> (usize, Option<String>) {
        (
            self.shared.failed.load(Ordering::Relaxed),
            self.shared.first_error.lock().unwrap().clone(),
        )
    }

    /// Length of the first marked event's `data:` seen (0 before any).
    pub fn data_len(&self) -> usize {
        self.shared.data_len.load(Ordering::Relaxed)
    }

    /// Subscribers that have change `k` now.
    pub fn received(&self, k: usize) -> usize {
        self.shared.counts[k].load(Ordering::Relaxed)
    }

    /// Wait (at most `timeout`) until every connected subscriber has change `k`; returns how
    /// many have it.
    pub async fn wait_for(&self, k: usize, timeout: Duration) -> usize {
        let _ = tokio::time::timeout(timeout, async {
            loop {
                let woken = self.shared.progress.notified();
                if self.received(k) >= self.connected() {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(20), woken).await;
            }
        })
        .await;
        self.received(k)
    }

    /// When change `k` arrived at each subscriber that has it.
    pub fn arrivals(&self, k: usize) -> Vec<Instant> {
        let s = &self.shared;
        (0..s.n)
            .filter_map(
                |sub| match s.arrivals[sub * s.changes + k].load(Ordering::Relaxed) {
                    0 => None,
                    t => Some(s.base + Duration::from_nanos(t - 1)),
                },
            )
            .collect()
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Connect, send the GET, and read the response head; returns the stream and what came after
/// the head.
async fn subscribe(addr: SocketAddr, request: &[u8]) -> io::Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("closed; got {:?}", String::from_utf8_lossy(&buf)),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!(
            "answered {:?}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok((stream, buf.split_off(end)))
}

/// Read subscriber `s`'s stream until it ends, noting each marked change. The body's chunked
/// framing is read as lines too (a size line is neither `id:` nor `data:`): each event is one
/// chunk, so no event line is split by it.
async fn read_events(
    shared: &Shared,
    s: usize,
    mut stream: TcpStream,
    mut pending: Vec<u8>,
) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    let mut event_at: Option<Instant> = None;
    let mut at = Instant::now();
    loop {
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line = &pending[..nl];
            if line.starts_with(b"id:") {
                event_at = Some(at);
            } else if line.starts_with(b"data:") {
                if let Some(k) = marker_in(line) {
                    let len = line.len() - b"data:".len() - usize::from(line.get(5) == Some(&b' '));
                    let _ = shared.data_len.compare_exchange(
                        0,
                        len,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    let when = event_at.take().unwrap_or(at);
                    if k < shared.changes {
                        let slot = &shared.arrivals[s * shared.changes + k];
                        let ns = (when - shared.base).as_nanos() as u64 + 1;
                        if slot
                            .compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                            && shared.counts[k].fetch_add(1, Ordering::Relaxed) + 1 >= shared.n
                        {
                            shared.progress.notify_waiters();
                        }
                    }
                }
            }
            pending.drain(..=nl);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed by the server",
            ));
        }
        at = Instant::now();
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// The `k` of the first [`MARKER`]`<k>` in `line`.
fn marker_in(line: &[u8]) -> Option<usize> {
    let m = MARKER.as_bytes();
    let at = line.windows(m.len()).position(|w| w == m)? + m.len();
    let digits: &[u8] = &line[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Under `cargo test`: the line scanner finds markers where the stream puts them.
pub fn scanner_self_check() {
    assert_eq!(
        marker_in(br#"data: {"user":"p9@localhost","status":"evt#17","resources":[]}"#),
        Some(17)
    );
    assert_eq!(marker_in(b"data: {\"status\":\"In a meeting\"}"), None);
    assert_eq!(marker_in(b"id: 1790000000000000"), None);
}
