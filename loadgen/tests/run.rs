//! The load generator end to end: accounts imported into an in-process Starling through
//! the admin API (`importUsers` with precomputed SCRAM keys), then a tiny run of the
//! real `starling-loadgen` binary (two worker processes), whose counts must add up
//! with what the server saw.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;

use starling_server::config::{Config, TlsMode};

const USERS: u64 = 200;

struct Node {
    running: starling_server::Running,
    dir: tempfile::TempDir,
}

fn start_node() -> Node {
    start_node_with(TlsMode::None)
}

fn start_node_with(tls: TlsMode) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.c2s[0].tls = tls;
    let listeners = starling_server::bind_listeners(&config).unwrap();
    let running = starling_server::run(config, listeners).unwrap();
    Node { running, dir }
}

/// POSTs a GraphQL query to the admin port and returns the JSON answer.
fn graphql(admin: SocketAddr, query: &str) -> serde_json::Value {
    let body = serde_json::json!({ "query": query }).to_string();
    let mut stream = TcpStream::connect(admin).unwrap();
    write!(
        stream,
        "POST /api/graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap()
}

fn loadgen(args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_starling-loadgen")).args(args).output().unwrap();
    assert!(output.status.success(), "starling-loadgen {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn import_accounts(node: &Node, dir: &Path) {
    let csv = dir.join("users.csv");
    loadgen(&["accounts", "--users", &USERS.to_string(), "--iterations", "64", "--out", csv.to_str().unwrap()]);
    let admin = node.running.admin_address.unwrap();
    let query = format!(r#"mutation {{ account {{ importUsers(filename: "{}") {{ created }} }} }}"#, csv.display());
    let answer = graphql(admin, &query);
    let created = answer["data"]["account"]["importUsers"]["created"].as_array().map(Vec::len);
    assert_eq!(created, Some(USERS as usize), "{answer}");
}

/// A closed-loop throughput run of a few seconds: every user logs in with cached
/// SCRAM keys, every message sent is delivered (none lost or bounced), the server
/// routed at least as many stanzas as were delivered, and the report is written.
#[test]
fn tiny_throughput_run_adds_up() {
    let node = start_node();
    let work = tempfile::tempdir().unwrap();
    import_accounts(&node, work.path());
    let out = work.path().join("report");
    let target = node.running.c2s_addresses[0].to_string();
    let output = loadgen(&[
        "run",
        "--profile",
        "throughput",
        "--users",
        &USERS.to_string(),
        "--target",
        &target,
        "--duration",
        "7",
        "--rate",
        "400",
        "--in-flight",
        "2",
        "--iterations",
        "64",
        "--sessions-per-worker",
        "100",
        "--out",
        out.to_str().unwrap(),
    ]);
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    let summary = &result["summary"];
    let totals = &result["totals"];
    let context = format!(
        "{summary}\n{totals}\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(result["workers"], 2, "{context}");
    assert_eq!(summary["peak_sessions"], USERS, "{context}");
    assert_eq!(totals["logins"], USERS, "{context}");
    assert_eq!(totals["login_failures"], 0, "{context}");
    assert_eq!(totals["cold_logins"], 0, "cached client keys must match the imported ones: {context}");
    assert_eq!(totals["stream_errors"], 0, "{context}");
    let sent = summary["sent"].as_u64().unwrap();
    let delivered = summary["delivered"].as_u64().unwrap();
    assert!(delivered > 1000, "a healthy server delivers thousands in seconds: {context}");
    assert_eq!(summary["lost"], 0, "{context}");
    assert_eq!(summary["bounced"], 0, "{context}");
    assert_eq!(sent, delivered, "{context}");
    let stats = node.running.node().stats();
    assert!(
        stats.stanzas_delivered >= delivered,
        "server delivered {} < client received {delivered}",
        stats.stanzas_delivered
    );
    assert!(result["delivery_latency_us"].is_object(), "{context}");
    for file in ["README.md", "result.json"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let charts =
        std::fs::read_dir(&out).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "svg"));
    assert!(charts.count() >= 2, "plots missing");
}

/// A hostile server: of every three connections it closes one at once, stalls one
/// (reads, never answers) and answers one with a stream error. The run still ends on
/// time, succeeds, counts the failures and writes its report.
#[test]
fn misbehaving_server_is_counted_not_fatal() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut stalled = Vec::new();
        for (index, stream) in listener.incoming().enumerate().take(10_000) {
            let Ok(mut stream) = stream else { continue };
            match index % 3 {
                0 => drop(stream),
                1 => stalled.push(stream),
                _ => {
                    let mut buffer = [0u8; 1024];
                    let _ = stream.read(&mut buffer);
                    let _ = stream.write_all(
                        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='x' version='1.0'>\
                          <stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
                    );
                }
            }
        }
    });
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("report");
    let started = std::time::Instant::now();
    loadgen(&[
        "run",
        "--profile",
        "connect",
        "--users",
        "30",
        "--target",
        &target,
        "--duration",
        "3",
        "--rate",
        "100",
        "--auth",
        "plain",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "the run must end on time");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    let totals = &result["totals"];
    assert_eq!(totals["logins"], 0, "{totals}");
    assert!(totals["connect_attempts"].as_u64().unwrap() >= 30, "{totals}");
    assert!(totals["login_failures"].as_u64().unwrap() >= 10, "{totals}");
    assert!(totals["stream_errors"].as_u64().unwrap() >= 5, "{totals}");
    assert!(out.join("README.md").is_file());
}

/// Rosters through XMPP, then presence at login: `roster-setup` makes every user's
/// 6 neighbours mutual contacts (all 200 rosters complete), and a login storm with
/// those rosters receives presence from the contacts that are online (with a spread
/// of 2, half of them): the server broadcasts and answers probes.
#[test]
fn roster_setup_then_presence_storm() {
    let node = start_node();
    let work = tempfile::tempdir().unwrap();
    import_accounts(&node, work.path());
    let target = node.running.c2s_addresses[0].to_string();
    let run = |profile: &str, users: u64, spread: &str, out: &Path| {
        loadgen(&[
            "run",
            "--profile",
            profile,
            "--users",
            &users.to_string(),
            "--roster",
            "6",
            "--roster-spread",
            spread,
            "--target",
            &target,
            "--duration",
            "6",
            "--rate",
            "200",
            "--iterations",
            "64",
            "--out",
            out.to_str().unwrap(),
        ]);
        let text = std::fs::read_to_string(out.join("result.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let setup = run("roster-setup", USERS, "1", &work.path().join("setup"));
    assert_eq!(setup["summary"]["rosters_complete"], USERS, "{}", setup["summary"]);
    let storm = run("ejabberd-2m", USERS / 2, "2", &work.path().join("storm"));
    let summary = &storm["summary"];
    assert_eq!(storm["totals"]["logins"], USERS / 2, "{summary}");
    // Each of the 100 users (odd accounts) has 2 online contacts (accounts 2 away):
    // 100 online pairs, and each side of a pair learns the other's presence, by
    // broadcast or by the answer to its probe.
    let presences = summary["presences"].as_u64().unwrap();
    assert!(presences >= 200, "{summary}");
}

/// The throughput profile over STARTTLS (the default listener), archive on: every
/// message sent is delivered, and once the archive writer caught up the archive
/// holds exactly two rows (both sides) per delivered message (issue 9: before, 77%
/// of archive writes were dropped under load).
#[test]
fn throughput_over_starttls_archives_every_message() {
    let node = start_node_with(TlsMode::StartTlsRequired);
    let work = tempfile::tempdir().unwrap();
    import_accounts(&node, work.path());
    let out = work.path().join("report");
    let target = node.running.c2s_addresses[0].to_string();
    let output = loadgen(&[
        "run",
        "--profile",
        "throughput",
        "--users",
        &USERS.to_string(),
        "--target",
        &target,
        "--duration",
        "6",
        "--rate",
        "400",
        "--in-flight",
        "2",
        "--iterations",
        "64",
        "--sessions-per-worker",
        "100",
        "--tls",
        "starttls",
        "--out",
        out.to_str().unwrap(),
    ]);
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    let summary = &result["summary"];
    let context = format!("{summary}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(result["totals"]["logins"], USERS, "{context}");
    let delivered = summary["delivered"].as_u64().unwrap();
    assert!(delivered > 500, "{context}");
    assert_eq!(summary["sent"].as_u64().unwrap(), delivered, "{context}");
    let database = node.dir.path().join("starling.db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let rows = loop {
        let connection = rusqlite::Connection::open(&database).unwrap();
        let rows: u64 = connection.query_row("SELECT COUNT(*) FROM mam_message", [], |row| row.get(0)).unwrap();
        if rows >= 2 * delivered || std::time::Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(rows, 2 * delivered, "both sides of every delivered message: {context}");
}

/// `--login sasl2`, `--login fast` and `--sm` against a real node: a churn run
/// (every user logs in several times) with stream management on, every login
/// succeeds, and with `fast` the later logins of each user use its token (the
/// server counts FAST logins as logins; a refused token would be a login failure).
#[test]
fn sasl2_and_fast_logins_with_stream_management() {
    let node = start_node();
    let work = tempfile::tempdir().unwrap();
    import_accounts(&node, work.path());
    let target = node.running.c2s_addresses[0].to_string();
    for login in ["sasl2", "fast"] {
        let out = work.path().join(login);
        let output = loadgen(&[
            "run",
            "--profile",
            "churn",
            "--users",
            "40",
            "--target",
            &target,
            "--duration",
            "6",
            "--rate",
            "40",
            "--session-seconds",
            "1",
            "--iterations",
            "64",
            "--sessions-per-worker",
            "20",
            "--login",
            login,
            "--sm",
            "--out",
            out.to_str().unwrap(),
        ]);
        let result: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
        let totals = &result["totals"];
        let context = format!("{login}: {totals}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(totals["logins"].as_u64().unwrap() > 40, "users logged in more than once: {context}");
        assert_eq!(totals["login_failures"], 0, "{context}");
        assert_eq!(totals["stream_errors"], 0, "{context}");
        let fast = node.running.node().stats().counters.get("c2s_fast_logins").copied().unwrap_or(0);
        match login {
            "sasl2" => assert_eq!(fast, 0, "{context}"),
            _ => assert!(fast + 40 >= totals["logins"].as_u64().unwrap(), "{fast} FAST logins: {context}"),
        }
    }
}

/// `--transport websocket`: a closed-loop throughput run over RFC 7395 WebSocket
/// (an `[[listen.http]]` listener), with SASL2 and stream management: every message
/// sent is delivered.
#[test]
fn throughput_over_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.c2s.push(starling_server::config::C2sListener {
        address: "127.0.0.1:0".parse().unwrap(),
        tls: TlsMode::None,
        shaper: None,
        http: Some(starling_server::config::HttpHandlers { websockets: Some("/ws-xmpp".into()), bosh: None }),
    });
    let listeners = starling_server::bind_listeners(&config).unwrap();
    let running = starling_server::run(config, listeners).unwrap();
    let node = Node { running, dir };
    let work = tempfile::tempdir().unwrap();
    import_accounts(&node, work.path());
    let out = work.path().join("ws");
    let target = node.running.c2s_addresses[1].to_string();
    let output = loadgen(&[
        "run",
        "--profile",
        "throughput",
        "--users",
        "40",
        "--target",
        &target,
        "--duration",
        "5",
        "--rate",
        "200",
        "--in-flight",
        "2",
        "--iterations",
        "64",
        "--sessions-per-worker",
        "20",
        "--transport",
        "websocket",
        "--login",
        "sasl2",
        "--sm",
        "--out",
        out.to_str().unwrap(),
    ]);
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    let (summary, totals) = (&result["summary"], &result["totals"]);
    let context = format!("{summary}\n{totals}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(totals["logins"], 40, "{context}");
    assert_eq!(totals["login_failures"], 0, "{context}");
    assert_eq!(totals["stream_errors"], 0, "{context}");
    assert!(summary["delivered"].as_u64().unwrap() > 200, "{context}");
    assert_eq!(summary["lost"], 0, "{context}");
    assert_eq!(summary["sent"], summary["delivered"], "{context}");
}
