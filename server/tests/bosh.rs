//! XMPP over BOSH (XEP-0124, XEP-0206) on a `[[listen.http]]` listener: a real node
//! on two cores, real sockets, a BOSH client written here over plain HTTP/1.1.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Client, TestNode};
use starling_server::config::{C2sListener, HttpHandlers, TlsMode};
use starling_wire::sasl;

/// A node with the test's plain c2s listener and an HTTP listener serving
/// `/http-bind`; `inactivity` is `mod_bosh`'s, in seconds.
fn node(inactivity: u32) -> (TestNode, SocketAddr) {
    node_with(inactivity, |_| {})
}

fn node_with(inactivity: u32, adjust: impl FnOnce(&mut starling_server::config::Config)) -> (TestNode, SocketAddr) {
    let node = TestNode::start_with(|config| {
        adjust(config);
        config.c2s.push(C2sListener {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: TlsMode::None,
            shaper: None,
            http: Some(HttpHandlers { websockets: None, bosh: Some("/http-bind".into()) }),
        });
        config.modules.bosh.inactivity = inactivity;
    });
    let http = node.running().c2s_addresses[1];
    (node, http)
}

/// POSTs `body` on `stream` (kept alive); returns the status line and the body.
fn post_on(stream: &mut TcpStream, body: &str) -> (String, String) {
    write!(
        stream,
        "POST /http-bind HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_response(stream)
}

fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).expect("a response"), 1, "the server answers");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (head.lines().next().unwrap_or_default().to_owned(), String::from_utf8(body).unwrap())
}

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream
}

/// POSTs `body` on a new connection (which may land on either core).
fn post(address: SocketAddr, body: &str) -> String {
    let (status, body) = post_on(&mut connect(address), body);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

fn attribute(element: &str, name: &str) -> Option<String> {
    let start = element.find(&format!(" {name}='"))? + name.len() + 3;
    let end = element[start..].find('\'')? + start;
    Some(element[start..end].to_owned())
}

/// A logged-in BOSH session.
struct Bosh {
    address: SocketAddr,
    sid: String,
    rid: u64,
}

impl Bosh {
    /// Creates a session, authenticates with PLAIN, restarts and binds `resource`.
    fn login(address: SocketAddr, user: &str, resource: &str) -> Bosh {
        let created = post(
            address,
            "<body rid='1000' xmlns='http://jabber.org/protocol/httpbind' to='localhost' xml:lang='en' wait='3' \
             hold='1' ver='1.6' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'/>",
        );
        let sid = attribute(&created, "sid").unwrap_or_else(|| panic!("a sid: {created}"));
        assert_eq!(attribute(&created, "requests").as_deref(), Some("2"), "{created}");
        assert!(created.contains("xmpp:version='1.0'"), "{created}");
        let mut bosh = Bosh { address, sid, rid: 1000 };
        let features = if created.contains("<stream:features") { created } else { bosh.send("") };
        assert!(features.contains("<mechanism>PLAIN</mechanism>"), "{features}");
        assert!(!features.contains("starttls"), "{features}");
        let payload = sasl::encode_payload(format!("\0{user}\0secret").as_bytes());
        let success =
            bosh.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"));
        assert!(success.contains("<success"), "{success}");
        let rid = bosh.next_rid();
        let restarted = bosh.post(&format!(
            "<body rid='{rid}' sid='{}' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh' \
             xmlns='http://jabber.org/protocol/httpbind' to='localhost'/>",
            bosh.sid
        ));
        assert!(restarted.contains("urn:ietf:params:xml:ns:xmpp-bind"), "{restarted}");
        let bound = bosh.send(&format!(
            "<iq type='set' id='b1' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq>"
        ));
        assert!(bound.contains(&format!("{user}@localhost/{resource}")), "{bound}");
        bosh
    }

    fn next_rid(&mut self) -> u64 {
        self.rid += 1;
        self.rid
    }

    /// The body of a request with `payload`, taking the next rid.
    fn body(&mut self, payload: &str) -> String {
        format!(
            "<body rid='{}' sid='{}' xmlns='http://jabber.org/protocol/httpbind'>{payload}</body>",
            self.next_rid(),
            self.sid
        )
    }

    fn send(&mut self, payload: &str) -> String {
        let body = self.body(payload);
        self.post(&body)
    }

    fn post(&self, body: &str) -> String {
        post(self.address, body)
    }

    /// Polls (empty requests) until an answer contains `needle`, for 10 s at most.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let answer = self.send("");
            if answer.contains(needle) {
                return answer;
            }
        }
        panic!("no {needle} within 10 s");
    }
}

#[test]
fn a_bosh_client_chats_with_a_tcp_client() {
    let (node, http) = node(30);
    let mut alice = Bosh::login(http, "alice", "web");
    let mut bob = Client::login(node.c2s, "bob", "secret", "tcp");
    alice.send("<presence xmlns='jabber:client'/>");
    bob.presence();
    // A held request carries the message the moment it arrives.
    let poll = alice.body("");
    let waiting = std::thread::spawn(move || post(http, &poll));
    std::thread::sleep(Duration::from_millis(300));
    bob.send("<message to='alice@localhost/web' type='chat' id='m1'><body>hi over bosh</body></message>");
    let carried = waiting.join().unwrap();
    let carried = if carried.contains("hi over bosh") { carried } else { alice.expect("hi over bosh") };
    assert!(carried.contains("<message xmlns='jabber:client'"), "stanzas carry their namespace: {carried}");
    assert!(carried.contains("from='bob@localhost/tcp'"), "{carried}");
    alice.send("<message xmlns='jabber:client' to='bob@localhost/tcp' type='chat'><body>and back</body></message>");
    let message = bob.expect("<message");
    assert!(message.contains("from='alice@localhost/web'") && message.contains("and back"), "{message}");
    // Terminate (XEP-0124 section 12): the payload goes first, the session ends.
    let rid = alice.next_rid();
    let end = format!(
        "<body rid='{rid}' sid='{}' type='terminate' xmlns='http://jabber.org/protocol/httpbind'>\
         <presence type='unavailable' xmlns='jabber:client'/></body>",
        alice.sid
    );
    let ended = alice.post(&end);
    assert!(ended.contains("type='terminate'"), "{ended}");
    node.wait_sessions_within(1, Duration::from_secs(5));
    let after = alice.send("");
    assert!(after.contains("condition='item-not-found'"), "{after}");
}

/// Requests out of order are handled in rid order; a retransmitted rid gets the
/// same answer; a rid outside the window ends that session only.
#[test]
fn rids_are_handled_in_order() {
    let (node, http) = node(30);
    let mut alice = Bosh::login(http, "alice", "web");
    let mut bob = Client::login(node.c2s, "bob", "secret", "tcp");
    bob.presence();
    let first = alice.body("<message xmlns='jabber:client' to='bob@localhost/tcp'><body>one</body></message>");
    let second = alice.body("<message xmlns='jabber:client' to='bob@localhost/tcp'><body>two</body></message>");
    // The second arrives first: it waits for the first.
    let later = std::thread::spawn(move || post(http, &second));
    std::thread::sleep(Duration::from_millis(300));
    let answer = post(http, &first);
    later.join().unwrap();
    let one = bob.expect("<message");
    let two = bob.expect("<message");
    assert!(one.contains("one") && two.contains("two"), "{one} {two}");
    // A retransmission of the last rid: the same answer, nothing sent twice.
    let retransmitted = format!(
        "<body rid='{}' sid='{}' xmlns='http://jabber.org/protocol/httpbind'>\
         <message xmlns='jabber:client' to='bob@localhost/tcp'><body>two</body></message></body>",
        alice.rid, alice.sid
    );
    let again = post(http, &retransmitted);
    assert!(again.starts_with("<body"), "{again} / {answer}");
    assert!(bob.next_within(Duration::from_millis(500)).is_none(), "a retransmission is not sent again");
    // Far ahead of the window: item-not-found, and the session is over.
    let outside =
        format!("<body rid='{}' sid='{}' xmlns='http://jabber.org/protocol/httpbind'/>", alice.rid + 10, alice.sid);
    assert!(post(http, &outside).contains("condition='item-not-found'"));
    assert!(alice.send("").contains("condition='item-not-found'"));
    bob.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert!(bob.expect("<iq").contains("type='result'"), "others never notice");
}

/// Bad requests get their HTTP status or BOSH condition; the listener and other
/// sessions keep working.
#[test]
fn bad_requests_end_only_themselves() {
    // The default stanza limit (64 KiB, bodies up to 144 KiB), not the tests' small one.
    let (_node, http) = node_with(30, |config| config.limits.framer = starling_wire::limits::FramerLimits::DEFAULT);
    let mut alice = Bosh::login(http, "alice", "web");
    for (body, condition) in [
        ("not xml", "bad-request"),
        ("<body rid='1' xmlns='http://jabber.org/protocol/httpbind' to='localhost'/>", "bad-request"),
        ("<body rid='1' xmlns='http://jabber.org/protocol/httpbind' to='elsewhere' wait='5'/>", "host-unknown"),
        ("<body rid='1' sid='0-nope' xmlns='http://jabber.org/protocol/httpbind'/>", "item-not-found"),
        ("<body rid='1' sid='99-nope' xmlns='http://jabber.org/protocol/httpbind'/>", "item-not-found"),
        ("<body rid='1' sid='x' xmlns='http://jabber.org/protocol/httpbind'/>", "item-not-found"),
    ] {
        let answer = post(http, body);
        assert!(answer.contains(&format!("condition='{condition}'")), "{body}: {answer}");
    }
    // Regression (found by a breaker): 20,000 nested elements in one body overflowed
    // a core thread's stack inside the XML parser and aborted the node.
    let deep = "<a>".repeat(20_000) + &"</a>".repeat(20_000);
    let nested = format!("<body rid='1' sid='0-x' xmlns='http://jabber.org/protocol/httpbind'>{deep}</body>");
    assert!(post(http, &nested).contains("condition='bad-request'"));
    let mut stream = connect(http);
    let huge = format!("<body rid='1' xmlns='http://jabber.org/protocol/httpbind'>{}</body>", "x".repeat(160_000));
    let (status, _) = post_on(&mut stream, &huge);
    assert!(status.starts_with("HTTP/1.1 413 "), "{status}");
    let mut stream = connect(http);
    stream.write_all(b"GET /http-bind HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    assert!(read_response(&mut stream).0.starts_with("HTTP/1.1 405 "));
    let mut stream = connect(http);
    stream.write_all(b"\x16\x03\x01garbage\r\n\r\n").unwrap();
    assert!(read_response(&mut stream).0.starts_with("HTTP/1.1 400 "));
    // A CORS preflight keeps the connection for the POST after it.
    let mut stream = connect(http);
    stream.write_all(b"OPTIONS /http-bind HTTP/1.1\r\nHost: localhost\r\nOrigin: http://example\r\n\r\n").unwrap();
    let (status, _) = read_response(&mut stream);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let body =
        alice.body("<iq type='get' id='v1' to='localhost' xmlns='jabber:client'><ping xmlns='urn:xmpp:ping'/></iq>");
    let (status, answer) = post_on(&mut stream, &body);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let answer = if answer.contains("id='v1'") { answer } else { alice.expect("id='v1'") };
    assert!(answer.contains("type='result'"), "{answer}");
}

/// A client that stops sending requests loses its session after `inactivity`.
#[test]
fn an_inactive_session_ends() {
    let (node, http) = node(1);
    let mut alice = Bosh::login(http, "alice", "web");
    alice.send("<presence xmlns='jabber:client'/>");
    let mut bob = Client::login(node.c2s, "bob", "secret", "tcp");
    bob.presence();
    bob.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    bob.expect("<iq");
    let started = Instant::now();
    node.wait_sessions(2);
    node.wait_sessions_within(1, Duration::from_secs(10));
    assert!(started.elapsed() >= Duration::from_millis(900), "not before inactivity");
    assert!(alice.send("").contains("condition='item-not-found'"));
}

/// Regression (found by a breaker): a request ahead of a lost one, answered by its
/// `wait`, kept the session alive for good (and its descriptors with it).
#[test]
fn a_session_with_a_lost_request_still_ends() {
    let (node, http) = node(1);
    let alice = Bosh::login(http, "alice", "web");
    node.wait_sessions(1);
    // rid + 1 is "lost"; rid + 2 waits for it, and is answered empty after `wait`.
    let ahead =
        format!("<body rid='{}' sid='{}' xmlns='http://jabber.org/protocol/httpbind'/>", alice.rid + 2, alice.sid);
    assert!(post(http, &ahead).starts_with("<body"));
    node.wait_sessions_within(0, Duration::from_secs(10));
}

/// Regression (found by a breaker): a stream error came in one answer and the
/// terminating body, empty, in the next; XEP-0206 section 7 puts them together.
#[test]
fn a_stream_error_comes_with_the_terminating_body() {
    let (node, http) = node(30);
    let mut alice = Bosh::login(http, "alice", "web");
    let poll = alice.body("");
    let waiting = std::thread::spawn(move || post(http, &poll));
    std::thread::sleep(Duration::from_millis(300));
    // The same full JID bound again: the BOSH session gets `conflict`.
    let _replacement = Client::login(node.c2s, "alice", "secret", "web");
    let answer = waiting.join().unwrap();
    let answer = if answer.contains("type='terminate'") { answer } else { alice.send("") };
    assert!(answer.contains("type='terminate'") && answer.contains("condition='remote-stream-error'"), "{answer}");
    assert!(answer.contains("<stream:error><conflict"), "{answer}");
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|dir| dir.count()).unwrap_or(0)
}

/// Regression (found by a breaker): a session that went quiet with more than
/// 256 KiB waiting for it was never read again after it ended, so its socket pair
/// stayed open for good. (The node runs in this process: its descriptors are ours.)
#[test]
fn a_quiet_session_with_a_full_buffer_releases_its_sockets() {
    let (node, http) = node(1);
    let mut bob = Client::login(node.c2s, "bob", "secret", "tcp");
    bob.presence();
    std::thread::sleep(Duration::from_millis(300));
    let before = open_files();
    let mut alice = Bosh::login(http, "alice", "web");
    alice.send("<presence xmlns='jabber:client'/>");
    // 400 KiB for alice, who never polls again.
    let text = "x".repeat(1000);
    for i in 0..400 {
        bob.send(&format!("<message to='alice@localhost/web' type='chat' id='f{i}'><body>{text}</body></message>"));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_files() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(open_files() <= before, "descriptors held: {} now, {before} before the session", open_files());
}
