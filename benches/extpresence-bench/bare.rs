//! The HTTP baseline: a bare hyper HTTP/1.1 handler that answers every request with a fixed
//! body, run as its own process (this benchmark binary re-executed with [`SERVE_FLAG`]) on a
//! default multi-threaded tokio runtime, as extpresence runs, so both are measured the same way
//! by the same client. The body is the size of extpresence's status answer (P3), or the answer
//! extpresence itself gave to the request measured ([`Bare::start_with_body`], P7).
//!
//! [`Bare::start_events`] serves the event-stream baseline of P9 instead: every `GET` is an
//! endless `text/event-stream` answer, and every `PUT` renders one event (the size of
//! extpresence's, carrying the `status` of the PUT's body) once and hands the same bytes to every
//! stream through a `tokio::sync::broadcast` channel: per subscriber only the write is left.

use std::convert::Infallible;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Argument that makes the benchmark binary serve the bare handler instead of benchmarking.
pub const SERVE_FLAG: &str = "--serve-bare-hyper";

/// Environment variable carrying another fixed body to the serving process.
const BODY_ENV: &str = "EXTPRESENCE_BENCH_BARE_BODY";
/// Environment variable that makes the serving process the event-stream baseline; its value is
/// the length of each event's `data:`.
const EVENTS_ENV: &str = "EXTPRESENCE_BENCH_BARE_EVENTS";

/// The fixed answer: the size and type of extpresence's JSON success response.
const BODY: &str = r#"{"status":{"user":"u0@localhost/tigase-external","available":"true","priority":"-1","show":"away","status":"bench:0","success":true}}"#;

/// Serve until stdin closes (the benchmark went away): print `listening <addr>` first.
pub fn serve() {
    let body: &'static str = match std::env::var(BODY_ENV) {
        Ok(b) => Box::leak(b.into_boxed_str()),
        Err(_) => BODY,
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // The parent closes our stdin when it is done (or dies): then exit.
    std::thread::spawn(|| {
        let mut line = String::new();
        while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {
            line.clear();
        }
        std::process::exit(0);
    });
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("listening {}", listener.local_addr().expect("addr"));
        std::io::stdout().flush().expect("flush");
        if let Some(len) = std::env::var(EVENTS_ENV).ok().and_then(|v| v.parse().ok()) {
            return serve_events(listener, len).await;
        }
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(r)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

type EventBody = BoxBody<Bytes, Infallible>;

/// The event-stream baseline (module doc): events with a `data:` of `data_len` bytes.
async fn serve_events(listener: tokio::net::TcpListener, data_len: usize) {
    let (events, _) = tokio::sync::broadcast::channel::<Bytes>(64);
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (events, ids) = (events.clone(), ids.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (events, ids) = (events.clone(), ids.clone());
                async move {
                    if req.method() == hyper::Method::PUT {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let body = String::from_utf8_lossy(body.as_deref().unwrap_or_default())
                            .into_owned();
                        let status = body
                            .split_once(r#""status":""#)
                            .and_then(|(_, rest)| rest.split_once('"'))
                            .map_or("", |(text, _)| text);
                        let mut data = format!(
                            r#"{{"user":"p9@localhost","presence":"away","status":"{status}","pad":""#
                        );
                        data.push_str(&"x".repeat(data_len.saturating_sub(data.len() + 2)));
                        data.push_str(r#""}"#);
                        let id = ids.fetch_add(1, Ordering::Relaxed) + 1;
                        let frame = format!("id: {id}\nevent: presence\ndata: {data}\n\n");
                        // No subscriber is not an error.
                        let _ = events.send(Bytes::from(frame));
                        let ok: EventBody = Full::new(Bytes::from_static(b"{}")).boxed();
                        return Ok::<_, Infallible>(Response::new(ok));
                    }
                    let frames = futures::stream::unfold(events.subscribe(), |mut rx| async {
                        loop {
                            match rx.recv().await {
                                Ok(frame) => return Some((Ok(Frame::data(frame)), rx)),
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                    return None
                                }
                            }
                        }
                    });
                    let mut r = Response::new(StreamBody::new(frames).boxed());
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/event-stream"),
                    );
                    Ok(r)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The bare server as a child process; killed on drop.
pub struct Bare {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process id (for CPU accounting).
    pub pid: u32,
    _child: Child,
}

impl Bare {
    /// Start this binary in serve mode and wait for its address.
    pub async fn start() -> Bare {
        Bare::start_with_body(BODY).await
    }

    /// Like [`start`](Self::start), answering every request with `body` (JSON).
    pub async fn start_with_body(body: &str) -> Bare {
        Bare::spawn(BODY_ENV, body).await
    }

    /// The event-stream baseline (module doc), events with a `data:` of `data_len` bytes.
    pub async fn start_events(data_len: usize) -> Bare {
        Bare::spawn(EVENTS_ENV, &data_len.to_string()).await
    }

    async fn spawn(env: &str, value: &str) -> Bare {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .arg(SERVE_FLAG)
            .env(env, value)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the bare hyper server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
            .await
            .expect("bare server did not start in 10 s")
            .expect("read bare server stdout")
            .expect("bare server exited");
        let addr = line
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected bare server output {line:?}"));
        let pid = child.id().expect("pid");
        Bare {
            addr,
            pid,
            _child: child,
        }
    }
}
