//! Clustering benchmarks against a real node started in this process (SQLite in a
//! temporary directory, one core by default), with a synthetic peer written with
//! `starling-replicate` on plain threads:
//!
//! - `snapshot N`: the synthetic peer connects to the node as an owner and streams a
//!   snapshot of N sessions; reports the time until the node holds all N and the
//!   node's memory per replicated entry (RSS growth / N).
//! - `latency N`: the synthetic peer registers itself in `discovery_nodes`; the node
//!   links to it; N users log in one after the other and the time from each bind
//!   request to the arrival of its session entry at the peer is recorded (p50/p99).
//!
//! `cargo run --release -p starling-server --example cluster_bench -- snapshot 1000000`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use starling_replicate::frame::{Frame, Table};
use starling_replicate::link::{InEvent, InLink, LinkSettings, OutEvent, OutLink};
use starling_server::config::{Cluster, Config};
use starling_server::store::{AccountKeys, Storage};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn start_node(dir: &std::path::Path) -> (starling_server::Running, Config) {
    let mut config = Config::for_tests(dir);
    config.general.node_name = "bench@localhost".into();
    config.general.cores =
        std::num::NonZeroUsize::new(std::env::var("CORES").ok().and_then(|c| c.parse().ok()).unwrap_or(1));
    config.general.log_level = log::LevelFilter::Warn;
    config.limits.framer = starling_wire::limits::FramerLimits::DEFAULT;
    config.limits.pre_auth_timeout = Duration::from_secs(30);
    config.cluster = Some(Cluster {
        cluster_name: "bench".into(),
        secret: "secret".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        address: None,
        discovery_interval: Duration::from_secs(30),
    });
    let listeners = starling_server::bind_listeners(&config).unwrap();
    let running = starling_server::run(config.clone(), listeners).unwrap();
    (running, config)
}

fn peer_settings() -> LinkSettings {
    LinkSettings {
        cluster: "bench".into(),
        node: "synthetic@localhost".into(),
        node_num: 999,
        secret: b"secret".to_vec(),
    }
}

fn replication_address(dir: &std::path::Path) -> SocketAddr {
    let store = starling_server::store::sqlite::Sqlite::open(&dir.join("starling.db")).unwrap();
    let address: String = store
        .connection()
        .query_row("SELECT address FROM discovery_nodes WHERE node_name = 'bench@localhost'", [], |r| r.get(0))
        .unwrap();
    address.parse().unwrap()
}

fn snapshot(count: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = start_node(dir.path());
    let address = replication_address(dir.path());
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_bytes();
    let settings = peer_settings();
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut link = OutLink::new(&settings, 0, 1, [7; 32], Instant::now());
    let mut buffer = vec![0u8; 65536];
    while !link.is_established() {
        let bytes = link.transmit().to_vec();
        stream.write_all(&bytes).unwrap();
        link.transmitted(bytes.len(), Instant::now());
        let n = stream.read(&mut buffer).unwrap();
        if let Some(OutEvent::Established { .. }) = link.handle_input(&settings, &buffer[..n], Instant::now()).unwrap()
        {
            break;
        }
    }
    let started = Instant::now();
    let value = [0u8, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
    // Through the link, as a node sends it (each frame sealed, protocol v4), written
    // a megabyte at a time.
    let mut send = |link: &mut OutLink, frame: &Frame<'_>| {
        let mut flush = |link: &mut OutLink| {
            let bytes = link.transmit().to_vec();
            stream.write_all(&bytes).unwrap();
            link.transmitted(bytes.len(), Instant::now());
        };
        if link.queued_bytes() > 1 << 20 {
            flush(link);
        }
        while link.send(frame).is_err() {
            flush(link);
        }
    };
    send(&mut link, &Frame::SnapshotBegin);
    for i in 0..count {
        let key = format!("user{i}@localhost/res{}", i % 7);
        send(&mut link, &Frame::Put { table: Table::Session, key: key.as_bytes(), value: &value });
    }
    send(&mut link, &Frame::SnapshotEnd { entries: count });
    let rest = link.transmit().to_vec();
    stream.write_all(&rest).unwrap();
    link.transmitted(rest.len(), Instant::now());
    let sent = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while running.node().remote_sessions() < count as usize && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed();
    let held = running.node().remote_sessions();
    let after = rss_bytes();
    println!(
        "snapshot of {count} sessions: held {held} after {:.3} s (written in {:.3} s); node RSS +{:.1} MiB = {:.1} bytes per entry",
        elapsed.as_secs_f64(),
        sent.as_secs_f64(),
        (after.saturating_sub(before)) as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / count as f64
    );
    drop(stream);
    running.shutdown();
}

fn latency(count: usize) {
    let dir = tempfile::tempdir().unwrap();
    // The synthetic peer listens first and is in discovery before the node starts.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_address = listener.local_addr().unwrap();
    {
        let store = starling_server::store::sqlite::Sqlite::open(&dir.path().join("starling.db")).unwrap();
        store
            .connection()
            .execute(
                "INSERT INTO discovery_nodes (node_name, cluster_name, updated_timestamp, node_num, address) VALUES ('synthetic@localhost', 'bench', CAST(strftime('%s','now') AS INTEGER), 999, ?1)",
                [peer_address.to_string()],
            )
            .unwrap();
    }
    let (running, config) = start_node(dir.path());
    let mut store = starling_server::store::sqlite::Sqlite::open(&dir.path().join("starling.db")).unwrap();
    let keys = AccountKeys::from_password("pw", NonZeroU32::new(64).unwrap());
    for i in 0..count {
        store.register(&format!("u{i}@localhost").parse().unwrap(), &keys).unwrap();
    }
    let (arrivals, arrived) = std::sync::mpsc::channel::<(String, Instant)>();
    // Every link the node opens (one per core, and again after a reconnect) is
    // served; a peer that took only the first made the bench fail now and then.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let arrivals = arrivals.clone();
            std::thread::spawn(move || {
                let settings = peer_settings();
                let mut link = InLink::new([3; 32], Instant::now());
                let mut buffer = vec![0u8; 65536];
                loop {
                    let n = match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let now = Instant::now();
                    let _ = link.handle_input(&settings, &buffer[..n], now, &mut |event| {
                        if let InEvent::Put { key, .. } = event {
                            let _ = arrivals.send((String::from_utf8_lossy(key).into_owned(), now));
                        }
                    });
                    let reply = link.transmit().to_vec();
                    let _ = stream.write_all(&reply);
                    link.transmitted(reply.len(), now);
                }
            });
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let c2s = running.c2s_addresses[0];
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream = TcpStream::connect(c2s).unwrap();
        let binding = login(&mut stream, &format!("u{i}"), "pw");
        let jid = format!("u{i}@localhost/r");
        loop {
            let (key, at) = arrived.recv_timeout(Duration::from_secs(5)).expect("the entry arrives at the peer");
            if key == jid {
                samples.push(at.saturating_duration_since(binding).as_micros() as u64);
                break;
            }
        }
        drop(stream);
    }
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "replication latency (bind request sent -> entry at the peer), {count} sessions: p50 {} us, p99 {} us, max {} us",
        pick(0.5),
        pick(0.99),
        samples.last().unwrap()
    );
    let _ = config;
    running.shutdown();
}

/// A PLAIN login with resource `r` over plain TCP; returns when the bind request was
/// sent (the session is registered after that, so the latency measured from here is
/// an upper bound).
fn login(stream: &mut TcpStream, user: &str, password: &str) -> Instant {
    use base64::Engine as _;
    let header = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    stream.write_all(header.as_bytes()).unwrap();
    read_until(stream, "</stream:features>");
    stream
        .write_all(
            format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>").as_bytes(),
        )
        .unwrap();
    read_until(stream, "<success");
    stream.write_all(header.as_bytes()).unwrap();
    read_until(stream, "</stream:features>");
    let binding = Instant::now();
    stream
        .write_all(
            b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>",
        )
        .unwrap();
    read_until(stream, "</iq>");
    binding
}

fn read_until(stream: &mut TcpStream, marker: &str) {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(marker) {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "closed");
        seen.extend_from_slice(&buffer[..n]);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("snapshot") => snapshot(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1_000_000)),
        Some("latency") => latency(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1000)),
        _ => eprintln!("usage: cluster_bench snapshot [N] | latency [N]"),
    }
}
