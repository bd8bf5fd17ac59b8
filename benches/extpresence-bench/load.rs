//! The HTTP load client: a fixed number of keep-alive HTTP/1.1 connections on loopback, each
//! sending one request at a time (closed loop), optionally paced to a fixed overall rate.
//!
//! Hand-written on tokio so every target (extpresence, the bare hyper handler, ejabberd's
//! `/api`) is driven by the very same code: requests are pre-built bytes from a closure of the
//! request number, responses are parsed just enough to be checked (status line, Content-Length
//! or chunked body, `Connection: close`). Every run is bounded by a request count and a deadline.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Builds the raw bytes of request number `i`.
pub type MakeRequest = Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>;

/// What to run.
pub struct Plan {
    /// Server address.
    pub addr: SocketAddr,
    /// Keep-alive connections, each with one request in flight.
    pub connections: usize,
    /// Stop after this many requests.
    pub total: u64,
    /// Stop taking new requests after this long (whatever `total` says).
    pub max_time: Duration,
    /// Overall requests per second, spread evenly; `None` = as fast as the server answers.
    pub rate: Option<f64>,
    /// Record when each request's response arrived.
    pub record: bool,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Non-2xx responses and connection failures.
    pub failed: u64,
    /// First failure, for the report.
    pub first_error: Option<String>,
    /// From the first request to the last response.
    pub elapsed: Duration,
    /// When the run started.
    pub started: Option<Instant>,
    /// (request number, response time) when recording.
    pub responses: Vec<(u64, Instant)>,
}

impl Outcome {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Run `plan` with requests from `make`.
pub async fn run(plan: Plan, make: MakeRequest) -> Outcome {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + plan.max_time;
    let shared = Arc::new(Mutex::new(Outcome::default()));
    let mut tasks = Vec::new();
    for _ in 0..plan.connections {
        let (next, make, shared) = (next.clone(), make.clone(), shared.clone());
        let (addr, total, rate, record) = (plan.addr, plan.total, plan.rate, plan.record);
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<Conn> = None;
            let mut ok = 0u64;
            let mut failed = 0u64;
            let mut first_error = None;
            let mut responses = Vec::new();
            let mut last = started;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                if let Some(rate) = rate {
                    tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate))
                        .await;
                }
                let request = make(i);
                let result = async {
                    if conn.is_none() {
                        conn = Some(Conn::open(addr).await?);
                    }
                    let c = conn.as_mut().expect("just opened");
                    c.stream.write_all(&request).await?;
                    c.read_response(None).await
                };
                match tokio::time::timeout(Duration::from_secs(30), result).await {
                    Ok(Ok((status, close))) => {
                        last = Instant::now();
                        if (200..300).contains(&status) {
                            ok += 1;
                            if record {
                                responses.push((i, last));
                            }
                        } else {
                            failed += 1;
                            first_error.get_or_insert_with(|| format!("HTTP status {status}"));
                        }
                        if close {
                            conn = None;
                        }
                    }
                    Ok(Err(e)) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                        conn = None;
                    }
                    Err(_) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| "no response within 30 s".into());
                        conn = None;
                    }
                }
            }
            let mut s = shared.lock().unwrap();
            s.ok += ok;
            s.failed += failed;
            if s.first_error.is_none() {
                s.first_error = first_error;
            }
            s.elapsed = s.elapsed.max(last - started);
            s.responses.extend(responses);
        }));
    }
    for t in tasks {
        t.await.expect("load connection task");
    }
    let mut out = std::mem::take(&mut *shared.lock().unwrap());
    out.started = Some(started);
    out
}

/// One keep-alive connection with its read buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` holding data.
    filled: usize,
}

impl Conn {
    async fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: vec![0; 16 * 1024],
            filled: 0,
        })
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.filled..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        self.filled += n;
        Ok(())
    }

    /// Read one response; returns (status, whether the server closes the connection), and
    /// appends the body to `body` when given.
    async fn read_response(&mut self, mut body: Option<&mut Vec<u8>>) -> io::Result<(u16, bool)> {
        let head_end = loop {
            if let Some(p) = find(&self.buf[..self.filled], b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "non-UTF-8 response head"))?;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status"))?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        for line in head.split("\r\n").skip(1) {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.eq_ignore_ascii_case("close");
            }
        }
        let mut end = head_end;
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(p) = find(&self.buf[end..self.filled], b"\r\n") {
                        break end + p;
                    }
                    self.fill().await?;
                };
                let size = std::str::from_utf8(&self.buf[end..line_end])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                    .ok_or_else(|| bad("bad chunk size"))?;
                let chunk_end = line_end + 2 + size + 2;
                while self.filled < chunk_end {
                    self.fill().await?;
                }
                if let Some(b) = body.as_deref_mut() {
                    b.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                }
                end = chunk_end;
                if size == 0 {
                    break;
                }
            }
        } else {
            let length = length.unwrap_or(0);
            while self.filled < head_end + length {
                self.fill().await?;
            }
            end = head_end + length;
            if let Some(b) = body {
                b.extend_from_slice(&self.buf[head_end..end]);
            }
        }
        self.buf.copy_within(end..self.filled, 0);
        self.filled -= end;
        Ok((status, close))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A POST request with a body, as raw bytes.
pub fn post(path: &str, content_type: &str, body: &str) -> Vec<u8> {
    with_body("POST", path, content_type, body)
}

/// A request with a body (`method` POST, PUT, …), as raw bytes.
pub fn with_body(method: &str, path: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A GET request, as raw bytes.
pub fn get(path: &str) -> Vec<u8> {
    get_with(path, &[])
}

/// A GET request with extra header fields (`("Api-Key", key)`), as raw bytes.
pub fn get_with(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// One request on a fresh connection (setup calls, readiness probes): (status, body).
pub async fn once(addr: SocketAddr, request: &[u8]) -> io::Result<(u16, String)> {
    let attempt = async {
        let mut c = Conn::open(addr).await?;
        c.stream.write_all(request).await?;
        let mut body = Vec::new();
        let (status, _) = c.read_response(Some(&mut body)).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response within 30 s"))?
}
