//! Issue 10, abuse resistance, against an in-process node over real sockets: traffic
//! and stanza shapers, the authentication throttle (mod_fail2ban), connections per
//! address, and the admin port's cross-site refusals and bounded threads.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Client, TestNode};
use starling_shard::guard::{Fail2Ban, Shaper};
use starling_wire::error::StreamErrorCondition;

/// A TCP connection to `to` from the loopback address `from` (127.x.y.z).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    socket.into()
}

/// Counts the stanzas containing `needle` that arrive within `window`.
fn count_arriving(client: &mut Client, needle: &str, window: Duration) -> usize {
    let deadline = Instant::now() + window;
    let mut count = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match client.next_within(left.min(Duration::from_millis(200))) {
            Some(frame) if frame.contains(needle) => count += 1,
            _ => {}
        }
    }
    count
}

/// Regression (issue 10: one account sent 60 KB messages for 15 s and the node took
/// 1.5 GB): a session that floods is read no faster than its listener's shaper. The
/// bytes that get through in T seconds stay within burst + rate x T (plus one read),
/// and the session is slowed, not cut off.
#[test]
fn a_flood_is_shaped_to_the_listeners_rate() {
    let shaper = Shaper { max_rate: 20_000, burst_size: 20_000 };
    let node = TestNode::start_with(|config| config.c2s[0].shaper = Some(shaper));
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    let alice = Client::login(node.c2s, "alice", "secret", "a");
    let body = "x".repeat(4000);
    let stanza = format!("<message to='bob@localhost/b' type='chat'><body>{body}</body></message>");
    // A writer thread floods for 3 s (the kernel's buffers take what the node leaves).
    let mut writer = alice.stream_clone();
    // Writes time out, so the flood stops on time (a blocked write would wait for the
    // shaped reader to open the TCP window: a minute).
    writer.set_write_timeout(Some(Duration::from_millis(100))).unwrap();
    let flood = std::thread::spawn(move || {
        let started = Instant::now();
        let mut sent = 0usize;
        while started.elapsed() < Duration::from_secs(3) {
            match writer.write(stanza.as_bytes()) {
                Ok(n) => sent += n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        sent
    });
    let started = Instant::now();
    let arrived = count_arriving(&mut bob, "xxxx", Duration::from_secs(3));
    let elapsed = started.elapsed().as_secs_f64();
    let sent = flood.join().unwrap();
    let accepted = arrived * (body.len() + 100);
    let ceiling = 20_000.0 + 20_000.0 * elapsed + 64.0 * 1024.0;
    eprintln!("flood: sent {sent} bytes, {accepted} bytes ({arrived} messages) got through in {elapsed:.1} s");
    assert!(sent > 2 * accepted, "the flood was larger than what got through ({sent} sent)");
    assert!((accepted as f64) <= ceiling, "{accepted} bytes got through in {elapsed:.1} s (ceiling {ceiling})");
    assert!(arrived >= 5, "the sender is slowed, not stopped: {arrived} messages");
    // The session is still up: after the flood drains it is served again.
    drop(alice);
}

/// One account's stanzas are shaped across its sessions (`account_stanza_shaper`):
/// 200 tiny messages from two resources at once arrive at the account's rate, none
/// is lost, and the sessions stay open.
#[test]
fn an_accounts_stanzas_are_shaped_across_its_sessions() {
    let node = TestNode::start_with(|config| {
        config.limits.account_stanza_shaper = Some(Shaper { max_rate: 20, burst_size: 20 });
    });
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    let mut one = Client::login(node.c2s, "alice", "secret", "one");
    let mut two = Client::login(node.c2s, "alice", "secret", "two");
    // The shaper's clock runs from the first stanza: measured from before the sends
    // (regression: timed from after them, the bound missed the refill during the
    // sends, 63 against 62 once in a full run).
    let started = Instant::now();
    for i in 0..100 {
        one.send(&format!("<message to='bob@localhost/b' type='chat'><body>m{i}</body></message>"));
        two.send(&format!("<message to='bob@localhost/b' type='chat'><body>m{i}</body></message>"));
    }
    let first = count_arriving(&mut bob, "<body>m", Duration::from_secs(2));
    let elapsed = started.elapsed().as_secs_f64();
    assert!((first as f64) <= 20.0 + 20.0 * elapsed + 2.0, "{first} stanzas in {elapsed:.1} s");
    assert!(first >= 20, "the burst passes at once: {first}");
    // Nothing is dropped: the rest arrives at the shaper's pace.
    let rest = count_arriving(&mut bob, "<body>m", Duration::from_secs(10));
    assert_eq!(first + rest, 200, "every stanza arrives");
    one.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>");
    one.expect("id='p1'");
}

/// Regression (issue 10: 770 wrong passwords per second against one account from one
/// address, never slowed): past `c2s_max_auth_failures` the address is banned: its
/// next connections get `policy-violation` at once, while another address logs in.
#[test]
fn brute_force_bans_the_address_and_spares_others() {
    let fail2ban = Fail2Ban { max_auth_failures: 6, ban_lifetime: Duration::from_secs(60) };
    let node = TestNode::start_with(|config| config.fail2ban = Some(fail2ban));
    let attacker = "127.0.0.66";
    let started = Instant::now();
    let mut banned_after = None;
    'connections: for connection in 0..10 {
        let mut client = Client::from_stream(connect_from(attacker, node.c2s));
        client.send(common::HEADER);
        assert!(client.next().starts_with("<stream:stream"));
        if !client.next().starts_with("<stream:features") {
            banned_after = Some(connection);
            break;
        }
        // Wrong passwords until the stream closes (3 per stream, or the ban).
        for _ in 0..3 {
            assert!(client.scram("alice", "wrong").is_err(), "a wrong password was accepted");
            if let Some(frame) = client.next_within(Duration::from_millis(300)) {
                if frame.contains("from this address") {
                    banned_after = Some(connection);
                    break 'connections;
                }
                if frame.contains("stream:error") {
                    break;
                }
            }
        }
    }
    let banned_after = banned_after.expect("the attacking address is banned");
    eprintln!("fail2ban: banned after {banned_after} connections in {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(banned_after, 2, "the 7th failure (the third connection's first) bans");
    // Banned: refused at once with a stream error, before any authentication.
    let mut refused = Client::from_stream(connect_from(attacker, node.c2s));
    assert!(refused.next().starts_with("<stream:stream"));
    assert_eq!(refused.expect_stream_error(), StreamErrorCondition::PolicyViolation);
    // Another address is not affected, even for the attacked account.
    let mut alice = Client::login_on(connect_from("127.0.0.67", node.c2s), "alice", "secret", "a");
    alice.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>");
    alice.expect("id='p1'");
    let metrics = common::http_get(node.admin, "/metrics");
    assert!(metrics.contains("starling_c2s_auth_bans_total 1"), "{metrics}");
}

/// `connections_per_address_max`: the next connection from a full address gets
/// `policy-violation` at once; other addresses connect; a closed one frees its place.
#[test]
fn connections_per_address_are_limited() {
    let node = TestNode::start_with(|config| config.limits.connections_per_address_max = 5);
    let mut held: Vec<Client> = (0..5)
        .map(|_| {
            let mut client = Client::from_stream(connect_from("127.0.0.70", node.c2s));
            client.open();
            client
        })
        .collect();
    let mut sixth = Client::from_stream(connect_from("127.0.0.70", node.c2s));
    assert!(sixth.next().starts_with("<stream:stream"));
    assert_eq!(sixth.expect_stream_error(), StreamErrorCondition::PolicyViolation);
    Client::login_on(connect_from("127.0.0.71", node.c2s), "bob", "secret", "b");
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(300));
    Client::login_on(connect_from("127.0.0.70", node.c2s), "alice", "secret", "a");
    let metrics = common::http_get(node.admin, "/metrics");
    assert!(metrics.contains("starling_c2s_connections_refused_total 1"), "{metrics}");
}

/// Sends raw HTTP to the admin port; returns (status, body).
fn http(node: &TestNode, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(node.admin).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), body.to_owned())
}

fn post(headers: &str, body: &str) -> String {
    format!("POST /api/graphql HTTP/1.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

const REGISTER: &str = r#"{"query":"mutation { account { registerUser(username: \"mallory\", domain: \"localhost\", password: \"x\") { jid } } }"}"#;

fn mallory_exists(node: &TestNode) -> bool {
    let query = r#"{"query":"{ account { checkUser(user: \"mallory@localhost\") { exist } } }"}"#;
    let (_, body) = http(node, &post("Host: 127.0.0.1\r\nContent-Type: application/json\r\n", query));
    body.contains("\"exist\":true")
}

/// Regression (issue 10: a mutation sent by GET, or by a text/plain POST with a
/// foreign Origin and Host, created accounts): what a browser sends for a foreign
/// page is refused, and nothing runs; the CLI's requests still work.
#[test]
fn the_admin_port_refuses_cross_site_requests() {
    let node = TestNode::start();
    let mutation = "mutation%20%7B%20account%20%7B%20registerUser(username%3A%20%22mallory%22%2C%20domain%3A%20%22localhost%22%2C%20password%3A%20%22x%22)%20%7B%20jid%20%7D%20%7D%20%7D";
    let (status, _) = http(
        &node,
        &format!("GET /api/graphql?query={mutation} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 405, "GET never runs a mutation");
    let (status, _) = http(&node, &post("Host: 127.0.0.1\r\nContent-Type: text/plain\r\n", REGISTER));
    assert_eq!(status, 415, "a CORS-simple text/plain POST is refused");
    let foreign = "Host: 127.0.0.1:5551\r\nOrigin: http://evil.example\r\nContent-Type: application/json\r\n";
    assert_eq!(http(&node, &post(foreign, REGISTER)).0, 403, "a foreign Origin is refused");
    let rebound = "Host: evil.example:5551\r\nContent-Type: application/json\r\n";
    assert_eq!(http(&node, &post(rebound, REGISTER)).0, 403, "a DNS-rebound Host is refused");
    assert!(!mallory_exists(&node), "none of them ran");
    // Queries by GET still work, and so does a same-origin JSON POST.
    let query = "%7B%20server%20%7B%20status%20%7B%20statusCode%20%7D%20%7D%20%7D";
    let (status, body) = http(
        &node,
        &format!("GET /api/graphql?query={query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    let own =
        format!("Host: {0}\r\nOrigin: http://{0}\r\nContent-Type: application/json; charset=utf-8\r\n", node.admin);
    assert_eq!(http(&node, &post(&own, REGISTER)).0, 200);
    assert!(mallory_exists(&node));
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Regression (issue 10: 2,000 connections to the admin port made 1,965 threads):
/// the admin port serves from a fixed pool; past its queue it answers 503 at once;
/// when the idle connections go, it answers again.
#[test]
fn the_admin_port_has_a_bounded_pool_of_threads() {
    let node = TestNode::start();
    let before = threads();
    let idle: Vec<TcpStream> = (0..500).map(|_| TcpStream::connect(node.admin).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = threads();
    assert!(during <= before + 2, "500 idle connections: {before} threads before, {during} during");
    // The queue is full of idle connections: a new request is refused at once, not held.
    let started = Instant::now();
    let (status, _) = http(&node, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert!(status == 503 || status == 200, "status {status}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered in {:?}", started.elapsed());
    drop(idle);
    // Once the idle connections are gone (closed), the pool serves again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(&node, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        if status == 200 {
            assert!(body.contains("starling_sessions"));
            break;
        }
        assert!(Instant::now() < deadline, "the admin port did not recover: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With credentials set, `/metrics` needs them too; `[listen.metrics]` serves it
/// alone without them (for Prometheus), and nothing else there.
#[test]
fn metrics_need_the_credentials_unless_served_apart() {
    let port = common::free_ports(1)[0];
    let node = TestNode::start_with(|config| {
        if let Some(admin) = &mut config.admin {
            admin.credentials = Some(("admin".into(), "s3cret".into()));
        }
        config.metrics = Some(format!("127.0.0.1:{port}").parse().unwrap());
    });
    let (status, _) = http(&node, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 401);
    let separate: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let body = common::http_get(separate, "/metrics");
    assert!(body.contains("starling_sessions"), "{body}");
    let api = common::http_get(separate, "/api/graphql");
    assert!(!api.contains("GraphiQL") && api.contains("Not found"), "{api}");
}

/// The archive quota (`max_user_archived_messages`): an account that sends 60
/// messages with a quota of 20 keeps at most 22 (the quota plus the tenth it may run
/// over), the newest; its partner's archive the same; the purge is counted.
#[test]
fn the_archive_quota_purges_the_oldest_messages() {
    let node = TestNode::start_with(|config| {
        let mam = config.modules.mam.as_mut().expect("mod_mam on by default");
        mam.max_user_archived_messages = 20;
        mam.batch_size = 7;
    });
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    for i in 1..=60 {
        alice.send(&format!("<message to='bob@localhost/b' type='chat'><body>q{i}</body></message>"));
        bob.expect(&format!("<body>q{i}</body>"));
    }
    std::thread::sleep(Duration::from_millis(500));
    for (client, who) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        client.send("<iq type='set' id='mq'><query xmlns='urn:xmpp:mam:2' queryid='qq'><set xmlns='http://jabber.org/protocol/rsm'><max>100</max></set></query></iq>");
        let mut bodies = Vec::new();
        let fin = loop {
            let frame = client.next();
            if frame.contains("id='mq'") {
                break frame;
            }
            if let Some(body) = frame.split("<body>").nth(1).and_then(|b| b.split('<').next()) {
                bodies.push(body.to_owned());
            }
        };
        assert!((20..=22).contains(&bodies.len()), "{who} keeps {} messages: {bodies:?} {fin}", bodies.len());
        assert_eq!(bodies.last().map(String::as_str), Some("q60"), "{who}: the newest is kept");
        assert!(!bodies.contains(&"q1".to_owned()), "{who}: the oldest went");
    }
    let metrics = common::http_get(node.admin, "/metrics");
    assert!(metrics.contains("starling_mam_rows_purged_total"), "{metrics}");
}

/// Regression (breaker): the ban was checked only when a connection opened, so
/// connections opened before it each got a password check: 920 guesses from one
/// address, and a right password still succeeded after the ban. Now a banned
/// address gets no password check on any connection.
#[test]
fn a_ban_holds_on_connections_opened_before_it() {
    let fail2ban = Fail2Ban { max_auth_failures: 3, ban_lifetime: Duration::from_secs(60) };
    let node = TestNode::start_with(|config| config.fail2ban = Some(fail2ban));
    let attacker = "127.0.0.80";
    let mut opened: Vec<Client> = (0..4)
        .map(|_| {
            let mut client = Client::from_stream(connect_from(attacker, node.c2s));
            client.open();
            client
        })
        .collect();
    // Four failures on two of them: the fourth bans.
    for client in opened.iter_mut().take(2) {
        for _ in 0..2 {
            assert!(client.scram("alice", "wrong").is_err());
        }
    }
    let mut late = opened.pop().unwrap();
    let refused = late.scram("alice", "secret").expect_err("no password check for a banned address");
    assert!(refused.contains("policy-violation") || refused.contains("stream:error"), "{refused}");
    let metrics = common::http_get(node.admin, "/metrics");
    assert!(metrics.contains("starling_c2s_auth_bans_total 1\n"), "one ban, counted once: {metrics}");
}

/// Regression (breaker): 70 connections sending a byte a second held the admin
/// port's workers, and the CLI failed for 10 to 15 s at a time. Slow requests are now
/// read by the accept thread; the workers only answer complete ones.
#[test]
fn slow_clients_do_not_keep_the_admin_port_from_answering() {
    let node = TestNode::start();
    let mut slow: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(node.admin).unwrap()).collect();
    for second in 0..3 {
        for stream in &mut slow {
            let _ = stream.write_all(if second == 0 { b"P" } else { b"O" });
        }
        let started = Instant::now();
        let (status, body) = http(&node, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        assert_eq!(status, 200, "{body}");
        assert!(started.elapsed() < Duration::from_secs(2), "answered in {:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(700));
    }
}

/// Regression (second breaker): a SCRAM exchange that had its challenge before the
/// ban had its proof checked after it (500 guesses from one address; a right proof
/// succeeded). And the ban is counted when the banning failure is also the stream's
/// last allowed one (the counter had stayed at 0 for three failures per stream).
#[test]
fn a_ban_stops_scram_exchanges_already_under_way() {
    use starling_wire::sasl::{self, scram};
    let fail2ban = Fail2Ban { max_auth_failures: 2, ban_lifetime: Duration::from_secs(60) };
    let node = TestNode::start_with(|config| config.fail2ban = Some(fail2ban));
    let attacker = "127.0.0.90";
    // An exchange under way: the client-first sent, the challenge received.
    let mut pending = Client::from_stream(connect_from(attacker, node.c2s));
    pending.open();
    let (client, first) = scram::ScramClient::new(scram::Hash::Sha256, "alice", "testnonce", None);
    pending.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
        sasl::encode_payload(&first)
    ));
    let challenge = pending.next();
    assert!(challenge.starts_with("<challenge"), "{challenge}");
    // Three failures on one stream (its limit): the third bans the address.
    let mut other = Client::from_stream(connect_from(attacker, node.c2s));
    other.open();
    for _ in 0..3 {
        assert!(other.scram("alice", "wrong").is_err());
    }
    // The right proof on the exchange under way is not checked.
    let server_first = sasl::decode_payload(common::text_of(&challenge).as_bytes()).unwrap();
    let (_, last) = client
        .respond(&server_first, |salt, i| scram::salted_password(scram::Hash::Sha256, "secret", salt, i))
        .unwrap();
    pending.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        sasl::encode_payload(&last)
    ));
    assert_eq!(pending.expect_stream_error(), StreamErrorCondition::PolicyViolation);
    let metrics = common::http_get(node.admin, "/metrics");
    assert!(metrics.contains("starling_c2s_auth_bans_total 1\n"), "{metrics}");
}

/// Regressions (second breaker) on the admin port: a 1 MB query of 11,494 aliased
/// introspections took 36 s and 2.1 GB (refused now, before running, by its
/// complexity); a request head sent whole was not held to its 16 KiB limit; a client
/// that closes its side after a whole request got no answer.
#[test]
fn the_admin_port_refuses_costly_queries_and_long_heads() {
    let node = TestNode::start();
    let aliases: String = (0..3000).map(|i| format!("a{i}: __schema {{ types {{ name }} }} ")).collect();
    let query = serde_json::json!({ "query": format!("{{ {aliases} }}") }).to_string();
    let started = Instant::now();
    let (status, body) = http(&node, &post("Host: 127.0.0.1\r\nContent-Type: application/json\r\n", &query));
    assert_eq!(status, 400, "{}", &body[..body.len().min(300)]);
    assert!(body.len() < 10_000 && body.contains("too complex"), "{}", &body[..body.len().min(300)]);
    assert!(started.elapsed() < Duration::from_secs(2), "refused in {:?}", started.elapsed());
    let long = format!("GET /metrics?{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "x".repeat(20_000));
    assert_eq!(http(&node, &long).0, 431);
    let mut half = TcpStream::connect(node.admin).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    half.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = half.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
