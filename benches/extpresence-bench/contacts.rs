//! Real logged-in contacts that count what they receive.
//!
//! Each contact is a real c2s session on the real server: it logs in with the test harness's own
//! login code (`common::login_stream`: SASL PLAIN, resource binding), sends initial presence, and
//! from then on only scans the raw bytes of its stream for the benchmark's marker `bench:<n>`
//! (the status text of every presence the benchmark causes), instead of parsing every stanza
//! into a typed value as `TestClient` does: at tens of thousands of presences per second the
//! parsing client would measure itself. Each marker counts as one delivered presence; with
//! recording on, (n, arrival time) is kept for latency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::common::login_stream;

/// The status text prefix every benchmark presence carries.
pub const MARK: &[u8] = b"bench:";

/// Finds `bench:<digits>` in a byte stream cut at arbitrary points.
#[derive(Default)]
struct Scanner {
    /// Bytes of [`MARK`] matched so far.
    matched: usize,
    /// Inside the digits after a full mark.
    in_number: bool,
    number: u64,
}

impl Scanner {
    fn feed(&mut self, data: &[u8], mut found: impl FnMut(u64)) {
        for &b in data {
            if self.in_number {
                if b.is_ascii_digit() {
                    self.number = self.number * 10 + u64::from(b - b'0');
                    continue;
                }
                found(self.number);
                self.in_number = false;
                self.number = 0;
            }
            if b == MARK[self.matched] {
                self.matched += 1;
                if self.matched == MARK.len() {
                    self.matched = 0;
                    self.in_number = true;
                }
            } else {
                self.matched = usize::from(b == MARK[0]);
            }
        }
    }
}

/// What every contact task shares.
struct Shared {
    /// Presences counted, all contacts together.
    count: AtomicU64,
    /// Nanoseconds after `base` of the latest arrival.
    last: AtomicU64,
    base: Instant,
    /// Keep (n, arrival) of each presence.
    record: AtomicBool,
    records: Mutex<Vec<(u64, Instant)>>,
}

/// A set of logged-in counting contacts.
pub struct Contacts {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Contacts {
    /// Log in each of `users` on the c2s port and send initial presence; returns once all are
    /// online (bounded by the login code's own timeout).
    pub async fn login(c2s_port: u16, users: &[String]) -> Contacts {
        let shared = Arc::new(Shared {
            count: AtomicU64::new(0),
            last: AtomicU64::new(0),
            base: Instant::now(),
            record: AtomicBool::new(false),
            records: Mutex::new(Vec::new()),
        });
        let mut tasks = Vec::new();
        for user in users {
            let (mut stream, _jid) = login_stream(c2s_port, user).await;
            stream
                .write_all(b"<presence/>")
                .await
                .expect("send initial presence");
            stream.flush().await.expect("flush initial presence");
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let mut scanner = Scanner::default();
                let mut buf = vec![0u8; 64 * 1024];
                let mut local = Vec::new();
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let now = Instant::now();
                    let record = shared.record.load(Ordering::Relaxed);
                    let mut seen = 0;
                    scanner.feed(&buf[..n], |number| {
                        seen += 1;
                        if record {
                            local.push((number, now));
                        }
                    });
                    if seen > 0 {
                        shared.count.fetch_add(seen, Ordering::Relaxed);
                        let at = (now - shared.base).as_nanos() as u64;
                        shared.last.fetch_max(at, Ordering::Relaxed);
                        if !local.is_empty() {
                            shared.records.lock().unwrap().append(&mut local);
                        }
                    }
                }
            }));
        }
        Contacts { shared, tasks }
    }

    /// Presences counted so far (all contacts).
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// Arrival time of the latest counted presence.
    pub fn last_arrival(&self) -> Instant {
        self.shared.base + Duration::from_nanos(self.shared.last.load(Ordering::Relaxed))
    }

    /// Start or stop keeping (n, arrival) of each presence; starting clears what was kept.
    pub fn set_recording(&self, on: bool) {
        if on {
            self.shared.records.lock().unwrap().clear();
        }
        self.shared.record.store(on, Ordering::Relaxed);
    }

    /// What was kept while recording.
    pub fn take_records(&self) -> Vec<(u64, Instant)> {
        std::mem::take(&mut *self.shared.records.lock().unwrap())
    }

    /// Wait until `target` presences have been counted since `from` (a [`count`](Self::count)
    /// taken before), or nothing new arrived for `quiet`, or `max_wait` passed. Returns the number counted since `from`.
    pub async fn wait_for(
        &self,
        from: u64,
        target: u64,
        quiet: Duration,
        max_wait: Duration,
    ) -> u64 {
        let deadline = Instant::now() + max_wait;
        let mut seen = self.count();
        let mut changed = Instant::now();
        loop {
            let now = self.count();
            if now - from >= target || Instant::now() >= deadline {
                return now - from;
            }
            if now != seen {
                seen = now;
                changed = Instant::now();
            } else if changed.elapsed() >= quiet {
                return now - from;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Contacts {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Check the scanner on marks cut at every possible point (run in the smoke check).
pub fn scanner_self_check() {
    let text = b"<presence><status>bench:123</status></presence><x>bbench:7<";
    for cut in 0..text.len() {
        let mut s = Scanner::default();
        let mut got = Vec::new();
        s.feed(&text[..cut], |n| got.push(n));
        s.feed(&text[cut..], |n| got.push(n));
        assert_eq!(got, vec![123, 7], "cut at {cut}");
    }
}
