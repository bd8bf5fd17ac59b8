//! Tier: one real server (ejabberd, with real XMPP clients).
//!
//! Self-test of the ejabberd harness (`tests/common/ejabberd.rs`) and of the admin snippet
//! `etc/ejabberd/extpresence.yml` it loads: a real ejabberd 23.01 starts, users register, a real
//! client logs in over plaintext c2s, the project's own component link completes the XEP-0114
//! handshake, receives the XEP-0356 privilege advertisement and may read a user's roster; the
//! server stops and starts again on the same ports and spool; two servers run side by side and
//! leave no processes behind.
//!
//! This file owns only these checks; the harness itself lives in `tests/common/ejabberd.rs`.

mod common;

use std::time::Duration;

use common::ejabberd::Ejabberd;
use common::{subscribe_mutual, TestClient, COMPONENT, DOMAIN, PASSWORD, SECRET};
use extpresence::base::secret::Secret;
use extpresence::xmpp::link::connect;
use extpresence::xmpp::stanzas::{self, NS_PRIVILEGE_1};
use extpresence::xmpp::LinkConfig;
use futures::{SinkExt, StreamExt};
use jid::BareJid;
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_xmpp::xmlstream::{FallibleStreamElement, XmppStream, XmppStreamElement};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::message::Message;
use xmpp_parsers::presence::Presence;
use xmpp_parsers::stanza::Stanza;

const WAIT: Duration = Duration::from_secs(10);

fn link_config(server: &Ejabberd) -> LinkConfig {
    LinkConfig {
        component: BareJid::new(COMPONENT).expect("component jid"),
        server: format!("127.0.0.1:{}", server.component_port),
        secret: Secret::new(SECRET),
        keepalive: Duration::from_secs(60),
        write_timeout: Duration::from_secs(10),
        reconnect_max: Duration::from_secs(5),
        ping_to: BareJid::new(DOMAIN).expect("domain jid").into(),
        metrics: Default::default(),
        health: extpresence::base::health::Health::new([DOMAIN], true),
    }
}

fn is_privilege(message: &Message) -> bool {
    message
        .payloads
        .iter()
        .any(|p| p.is("privilege", NS_PRIVILEGE_1))
}

type ComponentStream = XmppStream<BufStream<TcpStream>>;

/// The next stanza on the component stream within `wait` (`None`: nothing arrived).
async fn next_stanza(stream: &mut ComponentStream, wait: Duration) -> Option<Stanza> {
    let deadline = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(stanza))))) => {
                return Some(stanza)
            }
            Ok(Some(other)) => eprintln!("component stream: {other:?}"),
            Ok(None) => panic!("component stream ended"),
        }
    }
}

/// Connect the component with the project's own link code and wait for the XEP-0356
/// advertisement (ejabberd answers roster gets with `forbidden` until it has sent it). Returns
/// the stream and the stanzas that arrived unprompted within `linger` after the advertisement.
async fn component(server: &Ejabberd, linger: Duration) -> (ComponentStream, Vec<Stanza>) {
    let started = Instant::now();
    let mut stream = match timeout(WAIT, connect(&link_config(server))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => panic!("component handshake failed: {e}\n{}", server.log_tail()),
        Err(_) => panic!("component handshake timed out\n{}", server.log_tail()),
    };
    eprintln!("component handshake done in {:?}", started.elapsed());
    let advert = loop {
        match next_stanza(&mut stream, WAIT).await {
            Some(Stanza::Message(m)) if is_privilege(&m) => break m,
            Some(other) => eprintln!("before advertisement: {}", stanzas::to_xml(&other)),
            None => panic!(
                "no XEP-0356 advertisement within {WAIT:?}\n{}",
                server.log_tail()
            ),
        }
    };
    let xml = stanzas::to_xml(&Stanza::Message(advert));
    eprintln!(
        "privilege advertisement after {:?}: {xml}",
        started.elapsed()
    );
    for perm in [
        "access='roster' type='get'",
        "access='presence' type='managed_entity'",
    ] {
        assert!(xml.contains(perm), "advertisement lacks {perm}: {xml}");
    }
    let mut unprompted = Vec::new();
    let deadline = Instant::now() + linger;
    while let Some(stanza) = next_stanza(&mut stream, deadline - Instant::now()).await {
        eprintln!("after advertisement: {}", stanzas::to_xml(&stanza));
        unprompted.push(stanza);
    }
    (stream, unprompted)
}

/// A privileged roster get for `user`; returns the answer (result or error).
async fn roster(server: &Ejabberd, stream: &mut ComponentStream, user: &str, id: &str) -> Iq {
    let component = BareJid::new(COMPONENT).expect("component jid");
    let owner = BareJid::new(&format!("{user}@{DOMAIN}")).expect("user jid");
    let get = stanzas::roster_get(&component, &owner, id.to_string());
    SinkExt::send(stream, &XmppStreamElement::Stanza(get.into_stanza()))
        .await
        .expect("send roster get");
    loop {
        match next_stanza(stream, WAIT).await {
            Some(Stanza::Iq(iq @ (Iq::Result { .. } | Iq::Error { .. }))) if matches!(&iq, Iq::Result { id: i, .. } | Iq::Error { id: i, .. } if i == id) =>
            {
                eprintln!(
                    "roster answer: {}",
                    stanzas::to_xml(&Stanza::Iq(iq.clone()))
                );
                return iq;
            }
            Some(other) => eprintln!("waiting for roster: {}", stanzas::to_xml(&other)),
            None => panic!("no roster answer within {WAIT:?}\n{}", server.log_tail()),
        }
    }
}

/// Poll alice's roster (through the component) until bob is in it with `both`.
async fn assert_alice_has_bob(server: &Ejabberd, stream: &mut ComponentStream) {
    let deadline = Instant::now() + WAIT;
    for n in 0.. {
        let iq = roster(server, stream, "alice", &format!("roster-{n}")).await;
        let xml = stanzas::to_xml(&Stanza::Iq(iq.clone()));
        assert!(
            matches!(iq, Iq::Result { .. }),
            "privileged roster get not answered with a result: {xml}\n{}",
            server.log_tail()
        );
        if xml.contains(&format!("jid='bob@{DOMAIN}'")) && xml.contains("subscription='both'") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bob never became alice's contact: {xml}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn from(p: &Presence, bare: &str) -> bool {
    p.from
        .as_ref()
        .is_some_and(|f| f.to_bare().as_str() == bare)
}

/// Whether a pid still runs (zombies count as gone).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').expect("stat") + 1..]
                .split_whitespace()
                .next()
                .unwrap_or("X");
            !matches!(state, "Z" | "X")
        }
        Err(_) => false,
    }
}

/// Processes named `name` anywhere on the system.
fn processes_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == name)
                .unwrap_or(false)
        })
        .collect()
}

async fn wait_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| running(p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<u32> = pids.iter().copied().filter(|&p| running(p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_register_login_component_restart() {
    let t0 = Instant::now();
    let mut server = Ejabberd::start(DOMAIN, COMPONENT, SECRET).await;
    eprintln!(
        "ejabberd accepting after {:?} (c2s {}, component {}, node {})",
        t0.elapsed(),
        server.c2s_port,
        server.component_port,
        server.node()
    );
    let t1 = Instant::now();
    server.register(&["alice", "bob", "carol"], PASSWORD).await;
    eprintln!("registered 3 users in {:?}", t1.elapsed());
    let (ok, users) = server.ctl(&["registered_users", DOMAIN]).await;
    assert!(ok, "{users}");
    assert!(users.contains("alice") && users.contains("bob"), "{users}");

    // alice and bob become contacts and stay online (initial presence sent) before the
    // component connects.
    let mut alice = TestClient::connect(server.c2s_port, "alice", true).await;
    let mut bob = TestClient::connect(server.c2s_port, "bob", true).await;
    subscribe_mutual(&mut alice, &mut bob).await;

    let (mut stream, unprompted) = component(&server, Duration::from_millis(1500)).await;
    eprintln!(
        "stanzas the component got unprompted within 1.5 s of connecting while alice and bob \
         were online: {}",
        unprompted.len()
    );
    assert_alice_has_bob(&server, &mut stream).await;

    // A login after the component connected: its initial presence reaches the component
    // (presence: managed_entity).
    let carol = TestClient::connect(server.c2s_port, "carol", true).await;
    let t = Instant::now();
    let forwarded = loop {
        match next_stanza(&mut stream, WAIT).await {
            Some(Stanza::Presence(p)) if from(&p, &format!("carol@{DOMAIN}")) => break p,
            Some(other) => eprintln!("waiting for carol: {}", stanzas::to_xml(&other)),
            None => panic!(
                "carol's initial presence never reached the component\n{}",
                server.log_tail()
            ),
        }
    };
    eprintln!(
        "forwarded presence after {:?}: {}",
        t.elapsed(),
        stanzas::to_xml(&Stanza::Presence(forwarded))
    );
    let _ = timeout(Duration::from_secs(2), stream.shutdown()).await;

    let before = server.processes();
    assert!(before.len() >= 2, "ejabberdctl shell and VM: {before:?}");
    assert!(
        processes_named("epmd").is_empty(),
        "an epmd runs: ERL_DIST_PORT should avoid it"
    );
    let t2 = Instant::now();
    server.stop().await;
    eprintln!("stopped in {:?}", t2.elapsed());
    wait_gone(&before).await;
    assert!(!server.is_running());
    drop((alice, bob, carol));

    let t3 = Instant::now();
    server.start_again().await;
    eprintln!("started again in {:?}", t3.elapsed());
    // Users and rosters survived in the spool; clients and the component get in again.
    let _bob = TestClient::connect(server.c2s_port, "bob", false).await;
    let _alice = TestClient::connect(server.c2s_port, "alice", false).await;
    let (mut stream, _) = component(&server, Duration::ZERO).await;
    assert_alice_has_bob(&server, &mut stream).await;

    let last = server.processes();
    drop(server);
    wait_gone(&last).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_side_by_side() {
    let (a, b) = tokio::join!(
        Ejabberd::start(DOMAIN, COMPONENT, SECRET),
        Ejabberd::start(DOMAIN, COMPONENT, SECRET)
    );
    assert_ne!(a.node(), b.node());
    let ports_a = [a.c2s_port, a.component_port];
    let ports_b = [b.c2s_port, b.component_port];
    assert!(
        ports_a.iter().all(|p| !ports_b.contains(p)),
        "{ports_a:?} {ports_b:?}"
    );
    assert_ne!(a.dir.path(), b.dir.path());
    tokio::join!(
        a.register(&["alice", "bob"], PASSWORD),
        b.register(&["alice", "carol"], PASSWORD)
    );
    // Each ejabberdctl reaches its own node.
    let (_, users_a) = a.ctl(&["registered_users", DOMAIN]).await;
    let (_, users_b) = b.ctl(&["registered_users", DOMAIN]).await;
    assert!(
        users_a.contains("bob") && !users_a.contains("carol"),
        "{users_a}"
    );
    assert!(
        users_b.contains("carol") && !users_b.contains("bob"),
        "{users_b}"
    );
    let _alice_a = TestClient::connect(a.c2s_port, "alice", false).await;
    let _alice_b = TestClient::connect(b.c2s_port, "alice", false).await;
    for server in [&a, &b] {
        let (mut stream, _) = component(server, Duration::ZERO).await;
        let iq = roster(server, &mut stream, "alice", "roster").await;
        assert!(matches!(iq, Iq::Result { .. }), "{iq:?}");
    }

    let pids_a = a.processes();
    drop(a);
    wait_gone(&pids_a).await;
    // The other one is unaffected.
    let _bob_b = TestClient::connect(b.c2s_port, "carol", false).await;
    let pids_b = b.processes();
    drop(b);
    wait_gone(&pids_b).await;
}
