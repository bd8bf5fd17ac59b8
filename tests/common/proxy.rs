//! A loopback TCP proxy in front of the server's component port, so a test can cut
//! extpresence's XMPP link while the server (and every logged-in contact) stays up, as a network
//! blip or a restart of a load balancer would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy; dropping it stops it and closes every proxied connection.
pub struct LinkProxy {
    /// Port extpresence connects to.
    pub port: u16,
    blocked: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl LinkProxy {
    /// Forward 127.0.0.1:<new port> to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> LinkProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let blocked = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (b, c) = (blocked.clone(), connections.clone());
        let acceptor = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if b.load(Ordering::SeqCst) {
                    drop(inbound); // refused while cut
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        LinkProxy {
            port,
            blocked,
            connections,
            acceptor,
        }
    }

    /// Drop every proxied connection and refuse new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Accept and forward connections again.
    pub fn restore(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

/// A loopback TCP proxy in front of an HTTP port that hands the server's bytes on one at a time,
/// a millisecond apart, so a client reads every multi-byte character split across reads (as a
/// slow or fragmenting network does). Dropping it stops it.
pub struct TrickleProxy {
    /// Port the client connects to.
    pub port: u16,
    acceptor: JoinHandle<()>,
}

impl TrickleProxy {
    /// Forward 127.0.0.1:<new port> to `upstream`, trickling the answers.
    pub async fn start(upstream: std::net::SocketAddr) -> TrickleProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let acceptor = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                inbound.set_nodelay(true).ok();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                    });
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = from_server.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        for byte in &buf[..n] {
                            if to_client.write_all(&[*byte]).await.is_err() {
                                up.abort();
                                return;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        }
                    }
                    up.abort();
                });
            }
        });
        TrickleProxy { port, acceptor }
    }
}

impl Drop for TrickleProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}
