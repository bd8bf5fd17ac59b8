//! Both ends of a XEP-0114 component connection, reduced to what the benchmark needs.
//!
//! - [`Blaster`]: the physical-limit baseline. It logs in to the real server as a component
//!   (stream header, SHA-1 handshake) and writes pre-serialised directed presences as fast as the
//!   socket takes them; whatever the server sends back is read and discarded.
//! - [`Sink`]: a fake XMPP server for measuring extpresence without one. It completes the
//!   handshake, advertises XEP-0356 privileges (roster get, managed_entity presence), answers
//!   every iq get (roster gets with an empty roster, pings with a result) and discards
//!   everything else. [`Sink::forward`] writes stanzas to the component as the server would
//!   forward them (users' presence, for the read side's phases).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinHandle;

const STREAM_NS: &str = "xmlns='jabber:component:accept' \
                         xmlns:stream='http://etherx.jabber.org/streams'";

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of attribute `name` in the tag text `tag` (either quote style).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let at = tag.find(&key)? + key.len();
    let quote = tag[at..].chars().next()?;
    let rest = &tag[at + 1..];
    Some(&rest[..rest.find(quote)?])
}

/// Read from `stream` into `buf` until `done(buf)` gives a value (bounded by 10 s).
async fn read_until<T>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<T>,
) -> io::Result<T> {
    let work = async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(v) = done(buf) {
                return Ok(v);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("closed; got {}", String::from_utf8_lossy(buf)),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "component handshake timed out"))?
}

/// The opening `<stream:stream …>` tag in `buf`, once complete.
fn stream_header(buf: &[u8]) -> Option<String> {
    let start = find(buf, b"<stream:stream")?;
    let end = find(&buf[start..], b">")?;
    Some(String::from_utf8_lossy(&buf[start..start + end + 1]).into_owned())
}

/// A raw component connection writing pre-serialised stanzas.
pub struct Blaster {
    write: OwnedWriteHalf,
    drain: JoinHandle<()>,
}

impl Blaster {
    /// Connect to the component port and log in as `component` with `secret`.
    pub async fn connect(port: u16, component: &str, secret: &str) -> Blaster {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("blaster: connect to the component port");
        stream.set_nodelay(true).expect("nodelay");
        let header = format!("<?xml version='1.0'?><stream:stream {STREAM_NS} to='{component}'>");
        stream.write_all(header.as_bytes()).await.expect("header");
        let mut buf = Vec::new();
        let id = read_until(&mut stream, &mut buf, |b| {
            stream_header(b).map(|h| attr(&h, "id").map(str::to_string))
        })
        .await
        .expect("blaster: server stream header")
        .expect("blaster: stream id");
        let digest = Sha1::digest(format!("{id}{secret}").as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        stream
            .write_all(format!("<handshake>{hex}</handshake>").as_bytes())
            .await
            .expect("handshake");
        buf.clear();
        read_until(&mut stream, &mut buf, |b| {
            if find(b, b"<handshake").is_some() {
                Some(Ok(()))
            } else if find(b, b"error").is_some() && find(b, b"</stream:error>").is_some() {
                Some(Err(String::from_utf8_lossy(b).into_owned()))
            } else {
                None
            }
        })
        .await
        .expect("blaster: handshake answer")
        .unwrap_or_else(|e| panic!("blaster: handshake refused: {e}"));
        let (mut read, write) = stream.into_split();
        let drain = tokio::spawn(async move {
            let mut chunk = vec![0u8; 64 * 1024];
            while let Ok(n) = read.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
        });
        Blaster { write, drain }
    }

    /// Write `bytes` (whole stanzas) to the stream.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.expect("blaster: write");
    }

    /// Close the stream and wait (bounded) for the server to close its side.
    pub async fn close(mut self) {
        let _ = self.write.write_all(b"</stream:stream>").await;
        let _ = self.write.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.drain).await;
        self.drain.abort();
    }
}

/// A directed presence as the blaster writes it: the same shape and content extpresence sends
/// for a status with show `away`, text `bench:<n>`, priority -1.
pub fn presence(from: &str, to: &str, n: u64) -> String {
    format!(
        "<presence from='{from}' to='{to}'><show>away</show><status>bench:{n}</status>\
         <priority>-1</priority></presence>"
    )
}

/// A presence the server forwards to the component for a user's real session (what the read
/// model keeps): `<show/>`, a status text of 10 to 20 characters and a priority, varied with `n`
/// as real clients vary them.
pub fn session_presence(from: &str, component: &str, n: u64) -> String {
    const SHOWS: [&str; 5] = ["", "away", "xa", "dnd", "chat"];
    const TEXTS: [&str; 8] = [
        "In a meeting",
        "Working from home",
        "Out for lunch",
        "On the phone",
        "Back in 10 minutes",
        "Do not disturb",
        "At the office",
        "Travelling today",
    ];
    let show = match SHOWS[(n % 5) as usize] {
        "" => String::new(),
        s => format!("<show>{s}</show>"),
    };
    format!(
        "<presence from='{from}' to='{component}'>{show}<status>{}</status>\
         <priority>{}</priority></presence>",
        TEXTS[(n % 8) as usize],
        n % 10
    )
}

/// A fake XMPP server's component listener that accepts one component at a time.
pub struct Sink {
    /// Loopback port to point extpresence at.
    pub port: u16,
    /// Roster gets answered so far.
    roster_gets: Arc<AtomicU64>,
    /// When each `unavailable` presence arrived (ms since the Unix epoch).
    unavailable: Arc<std::sync::Mutex<Vec<u64>>>,
    /// The write side of the component connection, once it has logged in (for [`Sink::forward`]).
    link: Link,
    accept: JoinHandle<()>,
}

/// The logged-in component's write side, shared by the connection task (its answers) and
/// [`Sink::forward`].
type Link = Arc<AsyncMutex<Option<OwnedWriteHalf>>>;

impl Sink {
    /// Listen on a free loopback port; `domain` is the user domain the advertisement comes from.
    pub async fn start(domain: &str) -> Sink {
        Sink::start_with_contact(domain, None).await
    }

    /// Like [`start`](Self::start), with `contact` in every roster (so presences are sent).
    pub async fn start_with_contact(domain: &str, contact: Option<&str>) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let port = listener.local_addr().expect("sink addr").port();
        let roster_gets = Arc::new(AtomicU64::new(0));
        let unavailable = Arc::new(std::sync::Mutex::new(Vec::new()));
        let item = contact
            .map(|c| format!("<item jid='{c}' subscription='from'/>"))
            .unwrap_or_default();
        let link: Link = Arc::default();
        let (domain, gets, seen) = (domain.to_string(), roster_gets.clone(), unavailable.clone());
        let current = link.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (domain, gets, seen, item, link) = (
                    domain.clone(),
                    gets.clone(),
                    seen.clone(),
                    item.clone(),
                    current.clone(),
                );
                tokio::spawn(async move {
                    let _ = serve(stream, &domain, &gets, &seen, &item, &link).await;
                });
            }
        });
        Sink {
            port,
            roster_gets,
            unavailable,
            link,
            accept,
        }
    }

    /// Write `bytes` (whole stanzas) to the logged-in component, as the server forwards them,
    /// in pieces of 64 KiB so the connection task can answer in between. Panics if no component
    /// is logged in.
    pub async fn forward(&self, bytes: &[u8]) {
        for piece in bytes.chunks(64 * 1024) {
            let mut link = self.link.lock().await;
            let write = link.as_mut().expect("sink: no component logged in");
            write.write_all(piece).await.expect("sink: forward");
        }
    }

    /// When each `unavailable` presence arrived so far (ms since the Unix epoch).
    pub fn unavailable_sent_at(&self) -> Vec<u64> {
        self.unavailable.lock().unwrap().clone()
    }

    /// Roster gets answered so far.
    pub fn roster_gets(&self) -> u64 {
        self.roster_gets.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    domain: &str,
    roster_gets: &AtomicU64,
    unavailable: &std::sync::Mutex<Vec<u64>>,
    item: &str,
    link: &Link,
) -> io::Result<()> {
    const UNAVAILABLE: &[u8] = b"type='unavailable'";
    let mut scanned = 0usize;
    let mut buf = Vec::new();
    let header = read_until(&mut stream, &mut buf, stream_header).await?;
    let component = attr(&header, "to").unwrap_or("component").to_string();
    stream
        .write_all(
            format!(
                "<?xml version='1.0'?><stream:stream {STREAM_NS} id='sink-stream' \
                 from='{component}'>"
            )
            .as_bytes(),
        )
        .await?;
    read_until(&mut stream, &mut buf, |b| find(b, b"</handshake>")).await?;
    stream
        .write_all(
            format!(
                "<handshake/><message from='{domain}' to='{component}' id='priv'>\
                 <privilege xmlns='urn:xmpp:privilege:2'><perm access='roster' type='get'/>\
                 <perm access='presence' type='managed_entity'/></privilege></message>"
            )
            .as_bytes(),
        )
        .await?;
    let (mut stream, write) = stream.into_split();
    *link.lock().await = Some(write);
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut answers = String::new();
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&chunk[..n]);
        let now = extpresence::base::clock::now_ms();
        while let Some(off) = find(&pending[scanned..], UNAVAILABLE) {
            unavailable.lock().unwrap().push(now);
            scanned += off + UNAVAILABLE.len();
        }
        if find(&pending, b"</stream:stream>").is_some() {
            if let Some(mut write) = link.lock().await.take() {
                let _ = write.write_all(b"</stream:stream>").await;
            }
            return Ok(());
        }
        let mut pos = 0;
        let keep = loop {
            let Some(off) = find(&pending[pos..], b"<iq ") else {
                break pending.len().saturating_sub(3).max(pos);
            };
            let start = pos + off;
            let Some(end) = find(&pending[start..], b">") else {
                break start;
            };
            let tag = String::from_utf8_lossy(&pending[start..start + end]);
            if attr(&tag, "type") == Some("get") {
                let id = attr(&tag, "id").unwrap_or_default();
                let from = attr(&tag, "to").unwrap_or(domain);
                let to = attr(&tag, "from").unwrap_or(&component);
                if id.starts_with("roster-") {
                    roster_gets.fetch_add(1, Ordering::Relaxed);
                    answers.push_str(&format!(
                        "<iq type='result' id='{id}' from='{from}' to='{to}'>\
                         <query xmlns='jabber:iq:roster'>{item}</query></iq>"
                    ));
                } else {
                    answers.push_str(&format!(
                        "<iq type='result' id='{id}' from='{from}' to='{to}'/>"
                    ));
                }
            }
            pos = start + end + 1;
        };
        // Keep the tail where an `unavailable` may have begun (bytes before `scanned` and before
        // the last needle-length hold none).
        let keep = keep.min(scanned.max(pending.len().saturating_sub(UNAVAILABLE.len() - 1)));
        pending.drain(..keep);
        scanned = scanned.saturating_sub(keep);
        if !answers.is_empty() {
            if let Some(write) = link.lock().await.as_mut() {
                write.write_all(answers.as_bytes()).await?;
            }
            answers.clear();
        }
    }
}
