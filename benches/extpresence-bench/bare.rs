//! The HTTP baseline: a bare hyper HTTP/1.1 handler that answers every request with a fixed
//! body, run as its own process (this benchmark binary re-executed with [`SERVE_FLAG`]) on a
//! default multi-threaded tokio runtime, as extpresence runs, so both are measured the same way
//! by the same client.

use std::convert::Infallible;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::Stdio;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Argument that makes the benchmark binary serve the bare handler instead of benchmarking.
pub const SERVE_FLAG: &str = "--serve-bare-hyper";

/// The fixed answer: the size and type of extpresence's JSON success response.
const BODY: &str = r#"{"status":{"user":"u0@localhost/tigase-external","available":"true","priority":"-1","show":"away","status":"bench:0","success":true}}"#;

/// Serve until stdin closes (the benchmark went away): print `listening <addr>` first.
pub fn serve() {
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
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    let mut r = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
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
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .arg(SERVE_FLAG)
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
