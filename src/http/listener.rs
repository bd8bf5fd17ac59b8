//! The HTTP accept loop: it owns accepting HTTP/1.1 connections, the per-connection time limits,
//! the cap on concurrent connections (and the eviction of idle ones to make room), and draining
//! the open connections at shutdown.
//!
//! Why not `axum::serve`: it has no header timeout, no idle timeout and no connection cap, so
//! slow-header ("slowloris") clients and idle keep-alive connections were kept forever, and once
//! they held every file descriptor the process had, requests timed out and the XMPP link could
//! not reconnect ("Too many open files").
//!
//! # Limits
//! - [`HttpLimits::header_timeout`]: hyper's `header_read_timeout`. Its clock starts whenever
//!   hyper waits for a request head — at the connection's start and again after each response —
//!   so it bounds both a slow head and an idle keep-alive connection. On expiry hyper closes the
//!   socket without an answer.
//! - [`HttpLimits::max_connections`]: a semaphore; a connection holds a permit for its lifetime.
//!   A new connection that finds none asks an idle connection to close — the oldest that never
//!   sent a request, else the oldest idle keep-alive one; never one with a request in flight, and
//!   a request is in flight until its answer's body is sent, so an open event stream is never
//!   evicted — waits up to `PERMIT_WAIT` (1 s) for a permit and is dropped if none frees. The
//!   accept loop waits with it, so at most one socket above the cap is ever open.
//!
//! - [`HttpLimits::write_stall`]: a connection whose writes make no progress for this long (the
//!   client stopped reading: a stuck event-stream subscriber, a slow-read attack) is closed, so it
//!   does not keep its socket buffers and its slot for ever ([`StallGuard`]).
//!
//! # Closing a connection (eviction, shutdown)
//! hyper's `graceful_shutdown` closes a connection at once when it is idle between requests or
//! has received nothing yet, and lets an in-flight request finish (its answer then carries
//! `connection: close`). A connection in the middle of its *first* request head is only told not
//! to keep alive: hyper would wait for the head (up to the header timeout). Such a connection is
//! therefore dropped outright if it has not finished within `CLOSE_GRACE` (250 ms) and still has no
//! request in flight.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

/// Descriptors kept free for everything that is not an HTTP connection (XMPP link, store, stdio,
/// runtime, DNS).
pub const RESERVED_FDS: usize = 64;

/// How long a new connection that found the cap reached waits for a permit before it is dropped.
const PERMIT_WAIT: Duration = Duration::from_secs(1);
/// How long a connection asked to close may take before it is dropped, if no request is in flight
/// (a connection stuck in its first request head ignores `graceful_shutdown`). Shorter than
/// [`PERMIT_WAIT`], so that evicting such a connection frees a permit in time.
const CLOSE_GRACE: Duration = Duration::from_millis(250);
/// At most one ERROR line of each kind (cap reached, accept failure) per this period.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (EMFILE and the like), so a persistent error does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The limits the listener enforces.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Concurrent connections at most (already clamped by the caller to what the open-file limit
    /// allows, see [`connection_cap`]).
    pub max_connections: usize,
    /// Time a client has to send a complete request head, counted from the connection's start or
    /// from the end of the previous response — so it is also how long an idle keep-alive
    /// connection is kept.
    pub header_timeout: Duration,
    /// Longest time a write may wait for the client to read before the connection is closed.
    pub write_stall: Duration,
}

/// A socket whose writes fail with `TimedOut` once they have waited for the client for longer
/// than the stall limit in a row. hyper retries a pending write when its task is woken, and the
/// timer wakes it, so the limit holds even when the client never reads again.
struct StallGuard {
    io: TcpStream,
    limit: Duration,
    /// Armed while a write is pending.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl StallGuard {
    fn new(io: TcpStream, limit: Duration) -> StallGuard {
        StallGuard {
            io,
            limit,
            timer: None,
        }
    }

    /// After a write or flush returned `result`: disarm on progress, arm (or check) on pending.
    fn watch<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        result: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        match result {
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the client read nothing for {limit:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.timer = None;
                ready
            }
        }
    }
}

impl tokio::io::AsyncRead for StallGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for StallGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counters the listener keeps (relaxed atomics), rendered by `metrics.rs`.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections open now (sockets accepted and not yet closed, including one waiting for a
    /// permit).
    pub open: AtomicU64,
    /// Connections accepted in total (including those later refused).
    pub accepted: AtomicU64,
    /// Times a new connection found the cap reached.
    pub cap_hits: AtomicU64,
    /// Idle connections (never asked anything first, then idle keep-alive) asked to close to
    /// make room for a new one.
    pub evicted: AtomicU64,
    /// New connections dropped because no permit freed in time.
    pub refused: AtomicU64,
}

/// The soft `RLIMIT_NOFILE` of this process, read from `/proc/self/limits` ("Max open files");
/// `None` if unreadable or unlimited.
pub fn open_file_limit() -> Option<u64> {
    parse_open_file_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// The soft limit in the "Max open files" line of a `/proc/<pid>/limits` text.
fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let rest = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    // "unlimited" does not parse: no limit.
    rest.split_whitespace().next()?.parse().ok()
}

/// The effective cap on HTTP connections: `min(configured, limit - RESERVED_FDS)`, at least 1.
pub fn connection_cap(configured: usize, open_file_limit: Option<u64>) -> usize {
    let allowed = match open_file_limit {
        Some(limit) => usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(RESERVED_FDS),
        None => usize::MAX,
    };
    configured.min(allowed).max(1)
}

/// Serve `router` on `listener` until `shutdown` is cancelled; then stop accepting, ask every
/// connection to finish (hyper `graceful_shutdown`: idle ones close at once, in-flight requests
/// complete), and return once all are closed or `drain` has passed (the rest are then dropped).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    stats: Arc<ConnStats>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let cap = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(cap));
    let registry = Arc::new(Registry::default());
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut tasks = JoinSet::new();
    let mut next_id: u64 = 0;
    let mut cap_report = CapReport::new(&stats);
    let mut accept_errors = AcceptErrors::default();

    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined {
                    if e.is_panic() {
                        error!(error = %e, "an HTTP connection task panicked");
                    }
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_errors.report(&e);
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        stats.accepted.fetch_add(1, Relaxed);
        let open = OpenGauge::new(&stats);
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "set_nodelay failed");
        }

        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                stats.cap_hits.fetch_add(1, Relaxed);
                if let Some(id) = registry.evict_one_idle() {
                    stats.evicted.fetch_add(1, Relaxed);
                    debug!(conn = id, "evicting an idle HTTP connection to make room");
                }
                let waited = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    waited = tokio::time::timeout(PERMIT_WAIT, permits.clone().acquire_owned()) => waited,
                };
                let permit = match waited {
                    Ok(Ok(permit)) => Some(permit),
                    _ => {
                        stats.refused.fetch_add(1, Relaxed);
                        debug!(%peer, "HTTP connection refused: no slot freed in {PERMIT_WAIT:?}");
                        None
                    }
                };
                cap_report.report(cap, &stats);
                match permit {
                    Some(permit) => permit,
                    // Dropping the stream closes it (and `open` counts it down).
                    None => continue,
                }
            }
        };

        next_id += 1;
        let id = next_id;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let asked = Arc::new(AtomicBool::new(false));
        // A child of `shutdown`: cancelled by eviction or by shutdown.
        let close = shutdown.child_token();
        let registered = registry.insert(id, in_flight.clone(), asked.clone(), close.clone());
        let service = Counted {
            inner: TowerToHyperService::new(router.clone()),
            in_flight: in_flight.clone(),
            peer,
            asked,
        };
        let io = StallGuard::new(stream, limits.write_stall);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        let slot = Slot {
            _open: open,
            _registered: registered,
            _permit: permit,
        };
        tasks.spawn(
            async move {
                drive(conn, close, &in_flight).await;
                // The socket is closed by now; give back the gauge, the registry entry and the
                // permit, in that order.
                drop(slot);
            }
            .instrument(tracing::debug_span!("http_conn", conn = id, %peer)),
        );
    }

    drop(listener);
    info!(
        open = tasks.len(),
        "HTTP: no longer accepting connections; draining"
    );
    let drained = tokio::time::timeout(drain, async {
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined {
                if e.is_panic() {
                    error!(error = %e, "an HTTP connection task panicked");
                }
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            left = tasks.len(),
            "HTTP connections did not finish in {drain:?}; dropped"
        );
        tasks.shutdown().await;
    }
}

/// Run one connection to its end, or until `close` is cancelled (eviction, shutdown): then shut
/// it down gracefully, dropping it after [`CLOSE_GRACE`] if no request is in flight.
async fn drive(
    conn: http1::Connection<TokioIo<StallGuard>, Counted>,
    close: CancellationToken,
    in_flight: &AtomicUsize,
) {
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = close.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) if in_flight.load(Relaxed) == 0 => {
                    debug!("dropping a connection that did not close when asked (mid request head)");
                    return;
                }
                // A request is in flight: it completes, then the connection closes.
                Err(_) => conn.as_mut().await,
            }
        }
    };
    if let Err(e) = result {
        // Header timeouts, resets, malformed requests: routine, and one per connection.
        debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// What a connection task holds until it ends.
struct Slot {
    /// Counts the connection in [`ConnStats::open`].
    _open: OpenGauge,
    /// Lists the connection as an eviction candidate.
    _registered: Registered,
    /// The connection's share of [`HttpLimits::max_connections`]; released last, so that the
    /// connection that waits for it sees the gauge and the registry already updated.
    _permit: OwnedSemaphorePermit,
}

/// The router as a hyper service that counts the requests in flight on its connection.
#[derive(Clone)]
struct Counted {
    /// The axum router, adapted to hyper's `Service` trait.
    inner: TowerToHyperService<Router>,
    /// Requests of this connection being handled or answered now (shared with the registry
    /// entry).
    in_flight: Arc<AtomicUsize>,
    /// The peer's address, given to each request as `ConnectInfo` (the failed-authentication
    /// limit is per client address: `http/auth.rs`).
    peer: std::net::SocketAddr,
    /// Set at the connection's first request (shared with the registry entry).
    asked: Arc<AtomicBool>,
}

impl hyper::service::Service<Request<Incoming>> for Counted {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        self.asked.store(true, Relaxed);
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let guard = InFlight::enter(&self.in_flight);
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            // In flight until the answer's body is sent (or dropped): an event stream's whole
            // life.
            Ok(response.map(|body| {
                axum::body::Body::new(Answering {
                    body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// An answer's body, keeping its request counted as in flight until it is sent or dropped.
struct Answering {
    /// The body, passed through unchanged (frames, end, size).
    body: axum::body::Body,
    /// Counts the request while this lives.
    _guard: InFlight,
}

impl hyper::body::Body for Answering {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// One request in flight, counted while this lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Relaxed);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// One open connection, counted in [`ConnStats::open`] while this lives.
struct OpenGauge(Arc<ConnStats>);

impl OpenGauge {
    fn new(stats: &Arc<ConnStats>) -> Self {
        stats.open.fetch_add(1, Relaxed);
        OpenGauge(stats.clone())
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// The open connections, by id (ids grow in accept order, so the first is the oldest).
#[derive(Default)]
struct Registry {
    /// Never held across an `.await`.
    conns: Mutex<BTreeMap<u64, Entry>>,
}

/// What eviction needs to know about a connection.
struct Entry {
    /// Requests being handled or answered now; a connection with any is never evicted.
    in_flight: Arc<AtomicUsize>,
    /// It has sent a request (else it is evicted before any idle keep-alive connection).
    asked: Arc<AtomicBool>,
    /// Cancelled to ask the connection to close.
    close: CancellationToken,
    /// Already asked to close: not picked again while it closes.
    closing: bool,
}

impl Registry {
    /// List a connection; it is removed when the returned guard drops.
    fn insert(
        self: &Arc<Self>,
        id: u64,
        in_flight: Arc<AtomicUsize>,
        asked: Arc<AtomicBool>,
        close: CancellationToken,
    ) -> Registered {
        self.lock().insert(
            id,
            Entry {
                in_flight,
                asked,
                close,
                closing: false,
            },
        );
        Registered {
            registry: self.clone(),
            id,
        }
    }

    /// Ask an idle connection (not already closing) to close: the oldest that never sent a
    /// request, else the oldest with no request in flight; its id, or `None` when every
    /// connection is busy.
    fn evict_one_idle(&self) -> Option<u64> {
        let mut conns = self.lock();
        let idle = |e: &Entry| !e.closing && e.in_flight.load(Relaxed) == 0;
        let id = conns
            .iter()
            .find(|(_, e)| idle(e) && !e.asked.load(Relaxed))
            .or_else(|| conns.iter().find(|(_, e)| idle(e)))
            .map(|(id, _)| *id)?;
        let entry = conns.get_mut(&id)?;
        entry.closing = true;
        entry.close.cancel();
        Some(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        // The map stays consistent even if a holder panicked: every update is one call.
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection's place in the [`Registry`], removed on drop.
struct Registered {
    /// The registry the connection is listed in.
    registry: Arc<Registry>,
    /// The connection's id there.
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// Allows one log line per [`LOG_EVERY`].
#[derive(Default)]
struct Throttle {
    /// When the last line was allowed.
    last: Option<Instant>,
}

impl Throttle {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// The rate-limited ERROR line "connection cap reached".
struct CapReport {
    /// One line per [`LOG_EVERY`] at most.
    throttle: Throttle,
    /// `cap_hits`, `evicted`, `refused` at the last line, to report what happened since.
    at_last: [u64; 3],
}

impl CapReport {
    fn new(stats: &ConnStats) -> Self {
        CapReport {
            throttle: Throttle::default(),
            at_last: Self::counts(stats),
        }
    }

    fn counts(stats: &ConnStats) -> [u64; 3] {
        [
            stats.cap_hits.load(Relaxed),
            stats.evicted.load(Relaxed),
            stats.refused.load(Relaxed),
        ]
    }

    fn report(&mut self, cap: usize, stats: &ConnStats) {
        if !self.throttle.allow() {
            return;
        }
        let now = Self::counts(stats);
        let [cap_hits, evicted, refused] =
            [0, 1, 2].map(|i| now[i].saturating_sub(self.at_last[i]));
        self.at_last = now;
        error!(
            cap,
            cap_hits,
            evicted,
            refused,
            "HTTP connection cap of {cap} reached: {cap_hits} cap hits, {evicted} idle \
             connections evicted, {refused} new connections refused since the last report"
        );
    }
}

/// The rate-limited ERROR line "accept failed".
#[derive(Default)]
struct AcceptErrors {
    /// One line per [`LOG_EVERY`] at most.
    throttle: Throttle,
    /// Failures not logged since the last line.
    suppressed: u64,
}

impl AcceptErrors {
    fn report(&mut self, e: &std::io::Error) {
        if self.throttle.allow() {
            error!(
                error = %e,
                suppressed = self.suppressed,
                "accepting an HTTP connection failed ({} more failures since the last report); \
                 retrying",
                self.suppressed
            );
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Path, State};
    use axum::routing::get;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    /// Long enough never to matter in a test that is not about it.
    const LONG: Duration = Duration::from_secs(30);

    /// `serve` on 127.0.0.1:0 with a tiny router: `/ok` → "ok", `/sleep/{ms}` → sleeps (and
    /// reports on `entered` when it starts).
    struct TestServer {
        addr: SocketAddr,
        stats: Arc<ConnStats>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
        entered: mpsc::UnboundedReceiver<()>,
    }

    async fn sleep_handler(
        State(entered): State<mpsc::UnboundedSender<()>>,
        Path(ms): Path<u64>,
    ) -> &'static str {
        let _ = entered.send(());
        tokio::time::sleep(Duration::from_millis(ms)).await;
        "slept"
    }

    async fn start(
        max_connections: usize,
        header_timeout: Duration,
        drain: Duration,
    ) -> TestServer {
        start_stalling(max_connections, header_timeout, drain, LONG).await
    }

    /// An endless response body: 64 KiB chunks for ever.
    async fn endless() -> axum::body::Body {
        let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
        axum::body::Body::from_stream(futures::stream::repeat_with(move || {
            Ok::<_, std::io::Error>(chunk.clone())
        }))
    }

    /// An endless, slow response body: a line every 50 ms (an event stream's shape).
    async fn trickle() -> axum::body::Body {
        axum::body::Body::from_stream(futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((
                Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"x\n")),
                (),
            ))
        }))
    }

    async fn start_stalling(
        max_connections: usize,
        header_timeout: Duration,
        drain: Duration,
        write_stall: Duration,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, entered) = mpsc::unbounded_channel();
        let router = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route("/sleep/{ms}", get(sleep_handler))
            .route("/endless", get(endless))
            .route("/trickle", get(trickle))
            .with_state(tx);
        let stats = Arc::new(ConnStats::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            router,
            HttpLimits {
                max_connections,
                header_timeout,
                write_stall,
            },
            stats.clone(),
            shutdown.clone(),
            drain,
        ));
        TestServer {
            addr,
            stats,
            shutdown,
            task,
            entered,
        }
    }

    impl TestServer {
        async fn connect(&self) -> TcpStream {
            TcpStream::connect(self.addr).await.unwrap()
        }

        /// Wait until `n` sleeping handlers have started.
        async fn handlers_entered(&mut self, n: usize) {
            for _ in 0..n {
                timeout(Duration::from_secs(5), self.entered.recv())
                    .await
                    .expect("handler did not start")
                    .unwrap();
            }
        }
    }

    fn stat(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }

    async fn send_get(s: &mut TcpStream, path: &str) {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await
            .unwrap();
    }

    /// Read one response (head + Content-Length body); its status code.
    async fn read_response(s: &mut TcpStream) -> u16 {
        let read = async {
            let mut buf = Vec::new();
            loop {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.expect("read");
                assert!(n > 0, "connection closed before a complete response");
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = std::str::from_utf8(&buf[..end])
                    .unwrap()
                    .to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + len {
                    return head[9..12].parse().unwrap();
                }
            }
        };
        timeout(Duration::from_secs(10), read)
            .await
            .expect("no response in time")
    }

    async fn request(s: &mut TcpStream, path: &str) -> u16 {
        send_get(s, path).await;
        read_response(s).await
    }

    /// Wait until the server closes `s` (EOF or reset, with no data); how long that took.
    async fn closed(s: &mut TcpStream, within: Duration) -> Duration {
        let started = Instant::now();
        let mut chunk = [0u8; 256];
        match timeout(within, s.read(&mut chunk)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => panic!(
                "unexpected data: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Err(_) => panic!("connection not closed within {within:?}"),
        }
        started.elapsed()
    }

    #[test]
    fn cap_arithmetic() {
        assert_eq!(connection_cap(1000, None), 1000);
        assert_eq!(connection_cap(1000, Some(1024)), 1024 - RESERVED_FDS);
        assert_eq!(connection_cap(500, Some(1024)), 500);
        assert_eq!(connection_cap(1000, Some(RESERVED_FDS as u64 + 1)), 1);
        assert_eq!(connection_cap(1000, Some(10)), 1);
        assert_eq!(connection_cap(0, None), 1);
        assert_eq!(
            connection_cap(usize::MAX, Some(u64::MAX)),
            usize::MAX - RESERVED_FDS
        );
    }

    #[test]
    fn parses_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63429                63429                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_file_limit(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_file_limit(unlimited), None);
        assert_eq!(parse_open_file_limit(""), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_own_open_file_limit() {
        let limit = open_file_limit().expect("Max open files in /proc/self/limits");
        assert!(limit > 0);
    }

    #[tokio::test]
    async fn header_timeout_closes_slow_heads_and_idle_keep_alive() {
        let timeout = Duration::from_millis(300);
        let srv = start(8, timeout, LONG).await;

        let mut slow = srv.connect().await;
        slow.write_all(b"GET /ok HTTP/1.1\r\nHost: te")
            .await
            .unwrap();
        let took = closed(&mut slow, Duration::from_secs(3)).await;
        assert!(took >= Duration::from_millis(200), "closed after {took:?}");

        let mut idle = srv.connect().await;
        assert_eq!(request(&mut idle, "/ok").await, 200);
        let took = closed(&mut idle, Duration::from_secs(3)).await;
        assert!(took >= Duration::from_millis(200), "closed after {took:?}");

        // A connection that keeps asking is not cut by the timer: each head restarts it.
        let mut busy = srv.connect().await;
        for _ in 0..3 {
            assert_eq!(request(&mut busy, "/sleep/150").await, 200);
        }
        assert_eq!(stat(&srv.stats.cap_hits), 0);
    }

    #[tokio::test]
    async fn cap_reached_evicts_the_oldest_idle_connection() {
        let srv = start(4, LONG, LONG).await;
        let mut conns = Vec::new();
        for _ in 0..4 {
            let mut c = srv.connect().await;
            assert_eq!(request(&mut c, "/ok").await, 200);
            conns.push(c);
        }
        assert_eq!(stat(&srv.stats.open), 4);

        let mut fifth = srv.connect().await;
        assert_eq!(request(&mut fifth, "/ok").await, 200);
        assert_eq!(stat(&srv.stats.cap_hits), 1);
        assert_eq!(stat(&srv.stats.evicted), 1);
        assert_eq!(stat(&srv.stats.refused), 0);
        assert_eq!(stat(&srv.stats.accepted), 5);
        // The oldest went; the others still work.
        closed(&mut conns[0], Duration::from_secs(2)).await;
        assert_eq!(request(&mut conns[1], "/ok").await, 200);
        assert_eq!(request(&mut conns[3], "/ok").await, 200);
        assert_eq!(stat(&srv.stats.open), 4);
    }

    /// Read from `s` until `n` more bytes came (or panic after 5 s).
    async fn receives(s: &mut TcpStream, n: usize) {
        let mut got = 0;
        let mut chunk = [0u8; 1024];
        timeout(Duration::from_secs(5), async {
            while got < n {
                let k = s.read(&mut chunk).await.expect("read");
                assert!(k > 0, "closed after {got} bytes");
                got += k;
            }
        })
        .await
        .expect("nothing more arrived");
    }

    #[tokio::test]
    async fn silent_sockets_go_first_and_a_streamed_answer_never() {
        let srv = start(3, LONG, LONG).await;
        // The oldest: a keep-alive connection, idle after one request.
        let mut keep = srv.connect().await;
        assert_eq!(request(&mut keep, "/ok").await, 200);
        // A streamed answer (an event stream): its handler has returned, its body goes on.
        let mut streaming = srv.connect().await;
        send_get(&mut streaming, "/trickle").await;
        receives(&mut streaming, 200).await;
        // A socket that never sends anything.
        let mut silent = srv.connect().await;
        while stat(&srv.stats.open) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut next = srv.connect().await;
        assert_eq!(request(&mut next, "/ok").await, 200);
        closed(&mut silent, Duration::from_secs(2)).await;
        assert_eq!(
            request(&mut keep, "/ok").await,
            200,
            "the idle keep-alive went first"
        );
        // Then the oldest idle keep-alive connection; never the stream.
        let mut another = srv.connect().await;
        assert_eq!(request(&mut another, "/ok").await, 200);
        closed(&mut keep, Duration::from_secs(2)).await;
        let mut third = srv.connect().await;
        assert_eq!(request(&mut third, "/ok").await, 200);
        closed(&mut next, Duration::from_secs(2)).await;
        receives(&mut streaming, 200).await;
        assert_eq!(stat(&srv.stats.evicted), 3);
        assert_eq!(stat(&srv.stats.refused), 0);
    }

    #[tokio::test]
    async fn evicts_a_connection_stuck_in_its_first_head() {
        // graceful_shutdown alone does not close it; the CLOSE_GRACE fallback does.
        let srv = start(1, LONG, LONG).await;
        let mut slow = srv.connect().await;
        slow.write_all(b"GET /ok HTTP/1.1\r\nHo").await.unwrap();
        let mut next = srv.connect().await;
        assert_eq!(request(&mut next, "/ok").await, 200);
        assert_eq!(stat(&srv.stats.evicted), 1);
        assert_eq!(stat(&srv.stats.refused), 0);
        closed(&mut slow, Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn cap_reached_with_all_busy_refuses_the_new_connection() {
        let mut srv = start(2, LONG, LONG).await;
        let mut a = srv.connect().await;
        let mut b = srv.connect().await;
        send_get(&mut a, "/sleep/3000").await;
        send_get(&mut b, "/sleep/3000").await;
        srv.handlers_entered(2).await;

        let mut c = srv.connect().await;
        send_get(&mut c, "/ok").await;
        let took = closed(&mut c, Duration::from_secs(3)).await;
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_millis(1800),
            "refused after {took:?}"
        );
        assert_eq!(stat(&srv.stats.cap_hits), 1);
        assert_eq!(stat(&srv.stats.evicted), 0);
        assert_eq!(stat(&srv.stats.refused), 1);

        assert_eq!(read_response(&mut a).await, 200);
        assert_eq!(read_response(&mut b).await, 200);
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_at_once() {
        let srv = start(8, LONG, Duration::from_secs(10)).await;
        let mut idle = srv.connect().await;
        assert_eq!(request(&mut idle, "/ok").await, 200);
        let started = Instant::now();
        srv.shutdown.cancel();
        timeout(Duration::from_secs(2), srv.task)
            .await
            .expect("serve did not return")
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        closed(&mut idle, Duration::from_secs(1)).await;
        assert_eq!(stat(&srv.stats.open), 0);
        // No longer listening.
        assert!(TcpStream::connect(srv.addr).await.is_err());
    }

    #[tokio::test]
    async fn shutdown_lets_in_flight_requests_finish() {
        let mut srv = start(8, LONG, Duration::from_secs(10)).await;
        let mut busy = srv.connect().await;
        send_get(&mut busy, "/sleep/400").await;
        srv.handlers_entered(1).await;
        srv.shutdown.cancel();
        assert_eq!(read_response(&mut busy).await, 200);
        timeout(Duration::from_secs(2), srv.task)
            .await
            .expect("serve did not return")
            .unwrap();
        closed(&mut busy, Duration::from_secs(1)).await;
        assert_eq!(stat(&srv.stats.open), 0);
    }

    #[tokio::test]
    async fn shutdown_gives_up_after_drain() {
        let mut srv = start(8, LONG, Duration::from_millis(300)).await;
        let mut busy = srv.connect().await;
        send_get(&mut busy, "/sleep/20000").await;
        srv.handlers_entered(1).await;
        let started = Instant::now();
        srv.shutdown.cancel();
        timeout(Duration::from_secs(2), srv.task)
            .await
            .expect("serve did not return")
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
        closed(&mut busy, Duration::from_secs(1)).await;
        assert_eq!(stat(&srv.stats.open), 0);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_disconnected() {
        let srv = start_stalling(8, LONG, LONG, Duration::from_millis(300)).await;
        let mut stuck = srv.connect().await;
        send_get(&mut stuck, "/endless").await;
        // Read nothing while the socket buffers fill and the stall limit passes.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The body is endless: only the server closing the connection ends it.
        let mut chunk = vec![0u8; 1 << 16];
        let drained = timeout(Duration::from_secs(10), async {
            loop {
                match stuck.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(drained.is_ok(), "the stalled connection was not closed");
        assert_eq!(stat(&srv.stats.open), 0);
        // A reading client is not affected.
        let mut ok = srv.connect().await;
        assert_eq!(request(&mut ok, "/ok").await, 200);
    }
}
