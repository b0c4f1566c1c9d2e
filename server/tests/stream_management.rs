//! XEP-0198 stream management against a real node: acknowledgements, a session
//! resumed after its socket was killed (nothing lost, nothing twice, in order),
//! resumption refused for the wrong account, after the timeout, and with a bad `h`.

mod common;

use std::net::Shutdown;
use std::time::Duration;

use common::{Client, TestNode};
use starling_wire::error::StreamErrorCondition;

fn attribute(element: &str, name: &str) -> String {
    let start =
        element.find(&format!(" {name}='")).unwrap_or_else(|| panic!("no {name} in {element}")) + name.len() + 3;
    element[start..].split('\'').next().unwrap().to_owned()
}

/// Enables resumable stream management; returns the resumption id.
fn enable(client: &mut Client) -> String {
    client.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
    let enabled = client.expect("<enabled");
    assert_eq!(attribute(&enabled, "resume"), "true", "{enabled}");
    attribute(&enabled, "id")
}

fn message(to: &str, body: &str) -> String {
    format!("<message to='{to}' type='chat'><body>{body}</body></message>")
}

/// Kills the connection without `</stream:stream>`, as a phone losing its network.
fn kill(client: Client) {
    let _ = client.stream.tcp().shutdown(Shutdown::Both);
}

/// Logs in again and sends `<resume/>` instead of binding; returns the answer.
fn resume(node: &TestNode, user: &str, previd: &str, h: u32) -> (Client, String) {
    let mut client = Client::connect(node.c2s);
    client.open();
    client.scram(user, "secret").expect("login");
    let features = client.open();
    assert!(features.contains("<sm xmlns='urn:xmpp:sm:3'/>"), "{features}");
    client.send(&format!("<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='{h}'/>"));
    let answer = client.expect("xmlns='urn:xmpp:sm:3'");
    (client, answer)
}

/// The bodies of the next messages, until `count` arrived.
fn bodies(client: &mut Client, count: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    while bodies.len() < count {
        let frame = client.expect("<message");
        bodies.push(frame.split("<body>").nth(1).unwrap().split("</body>").next().unwrap().to_owned());
    }
    bodies
}

#[test]
fn acks_count_stanzas_both_ways() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "phone");
    enable(&mut alice);
    let mut bob = Client::login(node.c2s, "bob", "secret", "pc");
    for i in 1..=3 {
        bob.send(&message("alice@localhost/phone", &format!("m{i}")));
    }
    assert_eq!(bodies(&mut alice, 3), ["m1", "m2", "m3"]);
    // The server asks for acknowledgements (ack_freq 1).
    alice.expect("<r xmlns='urn:xmpp:sm:3'/>");
    // Alice's stanzas are counted: two pings, then <r/>.
    alice.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>");
    alice.send("<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>");
    alice.send("<r xmlns='urn:xmpp:sm:3'/>");
    let a = alice.expect("<a xmlns='urn:xmpp:sm:3'");
    assert_eq!(attribute(&a, "h"), "2", "{a}");
    // Acknowledging what was sent is fine; more than that ends the stream.
    alice.send("<a xmlns='urn:xmpp:sm:3' h='5'/>");
    alice.send("<a xmlns='urn:xmpp:sm:3' h='6'/>");
    assert_eq!(alice.expect_stream_error(), StreamErrorCondition::UndefinedCondition);
}

/// Regression target of the issue: a phone's socket dies; messages sent meanwhile
/// and those it never acknowledged arrive once, in order, after it resumes.
#[test]
fn a_killed_socket_resumes_with_nothing_lost_or_repeated() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "phone");
    let previd = enable(&mut alice);
    let mut bob = Client::login(node.c2s, "bob", "secret", "pc");
    for i in 1..=3 {
        bob.send(&message("alice@localhost/phone", &format!("m{i}")));
    }
    assert_eq!(bodies(&mut alice, 3), ["m1", "m2", "m3"]);
    // Alice handled only the first two when her network went.
    alice.send("<a xmlns='urn:xmpp:sm:3' h='1'/>");
    alice.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>");
    alice.expect("id='p1'");
    kill(alice);
    std::thread::sleep(Duration::from_millis(200));
    for i in 4..=5 {
        bob.send(&message("alice@localhost/phone", &format!("m{i}")));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (mut alice, resumed) = resume(&node, "alice", &previd, 2);
    assert!(resumed.starts_with("<resumed"), "{resumed}");
    assert_eq!(attribute(&resumed, "previd"), previd);
    assert_eq!(attribute(&resumed, "h"), "1", "the server handled alice's one ping: {resumed}");
    // h=2 covers m1 and m2: m3 and the pong are sent again, then m4 and m5.
    let got = bodies(&mut alice, 3);
    assert_eq!(got, ["m3", "m4", "m5"]);
    assert!(alice.next_within(Duration::from_millis(500)).is_none_or(|f| !f.contains("<message")));
    // The session is the same one: still alice@localhost/phone, reachable.
    bob.send(&message("alice@localhost/phone", "m6"));
    assert_eq!(bodies(&mut alice, 1), ["m6"]);
}

/// A resumption while the old connection still looks alive takes the session over
/// (the client noticed the loss before the server did).
#[test]
fn a_resumption_takes_over_a_live_connection() {
    let node = TestNode::start();
    let mut old = Client::login(node.c2s, "alice", "secret", "phone");
    let previd = enable(&mut old);
    let mut bob = Client::login(node.c2s, "bob", "secret", "pc");
    bob.send(&message("alice@localhost/phone", "m1"));
    assert_eq!(bodies(&mut old, 1), ["m1"]);
    let (mut alice, resumed) = resume(&node, "alice", &previd, 0);
    assert!(resumed.starts_with("<resumed"), "{resumed}");
    assert_eq!(bodies(&mut alice, 1), ["m1"], "unacknowledged: sent again");
    // Regression (breaker): the connection taken over got a bare EOF.
    assert_eq!(old.expect_stream_error(), StreamErrorCondition::Conflict);
    bob.send(&message("alice@localhost/phone", "m2"));
    assert_eq!(bodies(&mut alice, 1), ["m2"]);
}

/// Another account's previd, an unknown one, or one past the timeout: item-not-found,
/// and the client may bind a fresh session; what the timed-out session never got
/// was kept as offline messages.
#[test]
fn resumption_is_refused_for_the_wrong_account_and_after_the_timeout() {
    let node = TestNode::start_with(|config| {
        if let Some(sm) = config.modules.stream_management.as_mut() {
            sm.resume_timeout = Duration::from_secs(1);
        }
    });
    let mut alice = Client::login(node.c2s, "alice", "secret", "phone");
    let previd = enable(&mut alice);
    let (_, refused) = resume(&node, "bob", &previd, 0);
    assert!(refused.contains("<failed") && refused.contains("item-not-found"), "{refused}");
    let (_, unknown) = resume(&node, "alice", "nonsense", 0);
    assert!(unknown.contains("item-not-found"), "{unknown}");
    // Alice's session did not notice.
    alice.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>");
    alice.expect("id='p1'");

    let mut bob = Client::login(node.c2s, "bob", "secret", "pc");
    bob.send(&message("alice@localhost/phone", "kept"));
    assert_eq!(bodies(&mut alice, 1), ["kept"]);
    kill(alice);
    std::thread::sleep(Duration::from_millis(2_500));
    let (mut again, late) = resume(&node, "alice", &previd, 0);
    assert!(late.contains("item-not-found"), "{late}");
    // After <failed/>, binding works on the same stream, and the unacknowledged
    // message is waiting offline.
    again.send(
        "<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>new</resource></bind></iq>",
    );
    again.expect("<jid>alice@localhost/new</jid>");
    again.presence();
    assert_eq!(bodies(&mut again, 1), ["kept"]);
}

/// XEP-0388 + XEP-0386 in one round trip: SASL2 with a Bind 2 request that enables
/// resumable stream management and carbons inline; the `<success/>` carries the
/// full JID and `<enabled/>`; the session resumes after a killed socket from a
/// SASL2 login without Bind 2 (no stream restart, then `<resume/>`).
#[test]
fn sasl2_and_bind2_enable_stream_management_inline() {
    let node = TestNode::start();
    let login = |bind: &str| {
        let mut client = Client::connect(node.c2s);
        let features = client.open();
        assert!(features.contains("<authentication xmlns='urn:xmpp:sasl:2'>"), "{features}");
        assert!(features.contains("<feature var='urn:xmpp:sm:3'/>"), "{features}");
        let payload = starling_wire::sasl::encode_payload(b"\0alice\0secret");
        client.send(&format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>{payload}</initial-response>\
             <user-agent id='3f1a2b7c-0000-4000-8000-000000000001'/>{bind}</authenticate>"
        ));
        let success = client.expect("<success");
        (client, success)
    };
    let (mut alice, success) = login(
        "<bind xmlns='urn:xmpp:bind:0'><tag>phone</tag><enable xmlns='urn:xmpp:sm:3' resume='true'/>\
         <enable xmlns='urn:xmpp:carbons:2'/></bind>",
    );
    assert!(success.starts_with("<success xmlns='urn:xmpp:sasl:2'>"), "{success}");
    let full = success.split("<authorization-identifier>").nth(1).unwrap().split('<').next().unwrap().to_owned();
    assert!(full.starts_with("alice@localhost/phone."), "{success}");
    let enabled = success.split("<enabled").nth(1).expect("<enabled/> inside <bound/>");
    let previd = attribute(&format!("<enabled{enabled}"), "id");
    // The session works at once, without a stream restart.
    let mut bob = Client::login(node.c2s, "bob", "secret", "pc");
    bob.send(&message(&full, "m1"));
    assert_eq!(bodies(&mut alice, 1), ["m1"]);
    kill(alice);
    std::thread::sleep(Duration::from_millis(200));
    bob.send(&message(&full, "m2"));
    std::thread::sleep(Duration::from_millis(200));
    let (mut again, success) = login("");
    assert!(success.contains("<authorization-identifier>alice@localhost</authorization-identifier>"), "{success}");
    again.send(&format!("<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='1'/>"));
    assert!(again.expect("xmlns='urn:xmpp:sm:3'").starts_with("<resumed"));
    assert_eq!(bodies(&mut again, 1), ["m2"]);
}

/// Reads messages, answering every `<r/>` with the count so far, until `count`
/// bodies arrived; fails on a stream error.
fn bodies_acking(client: &mut Client, count: usize, handled: &mut u32) -> Vec<String> {
    let mut bodies = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bodies.len() < count && std::time::Instant::now() < deadline {
        let Some(frame) = client.next_within(Duration::from_millis(200)) else { continue };
        assert!(!frame.starts_with("<stream:error"), "{frame}");
        if frame.starts_with("<message") || frame.starts_with("<presence") || frame.starts_with("<iq") {
            *handled += 1;
        }
        if frame.starts_with("<r ") || frame.starts_with("<r/") {
            client.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{handled}'/>"));
        }
        if let Some(body) = frame.split("<body>").nth(1) {
            bodies.push(body.split("</body>").next().unwrap().to_owned());
        }
    }
    bodies
}

fn small_window() -> TestNode {
    TestNode::start_with(|config| {
        if let Some(sm) = config.modules.stream_management.as_mut() {
            sm.buffer_max = 20;
        }
    })
}

/// Regression (breaker, F2/F3): a burst of more than `buffer_max` stanzas closed a
/// well-behaved client's stream with resource-constraint, and a session that
/// collected more than that while parked could never be resumed. The window now
/// holds the rest back until the client acknowledges.
#[test]
fn more_than_buffer_max_waits_for_acknowledgements() {
    let node = small_window();
    let mut alice = Client::login(node.c2s, "alice", "secret", "phone");
    let previd = enable(&mut alice);
    let mut bob = Client::login(node.c2s, "bob", "secret", "pc");
    let burst: String = (0..25).map(|i| message("alice@localhost/phone", &format!("b{i}"))).collect();
    bob.send(&burst);
    let mut handled = 0;
    let got = bodies_acking(&mut alice, 25, &mut handled);
    assert_eq!(got, (0..25).map(|i| format!("b{i}")).collect::<Vec<_>>());
    // 30 more while parked, then a resumption: all arrive as the client acknowledges.
    kill(alice);
    std::thread::sleep(Duration::from_millis(200));
    let burst: String = (0..30).map(|i| message("alice@localhost/phone", &format!("p{i}"))).collect();
    bob.send(&burst);
    std::thread::sleep(Duration::from_millis(300));
    let (mut again, resumed) = resume(&node, "alice", &previd, handled);
    assert!(resumed.starts_with("<resumed"), "{resumed}");
    let got = bodies_acking(&mut again, 30, &mut handled);
    assert_eq!(got, (0..30).map(|i| format!("p{i}")).collect::<Vec<_>>());
}

/// Regression (breaker, F1): a session's unacknowledged stanzas were routed to the
/// account's other resources, whose stream management kept copies of their own;
/// session after session the copies multiplied (25 messages, 97 deliveries; 76,
/// 27,482 in a cluster). They now go to offline storage, once.
#[test]
fn unacknowledged_stanzas_go_to_offline_storage_once() {
    let node = TestNode::start();
    let mut s0 = Client::login(node.c2s, "alice", "secret", "s0");
    enable(&mut s0);
    let mut s1 = Client::login(node.c2s, "alice", "secret", "s1");
    enable(&mut s1);
    let mut bob = Client::login(node.c2s, "bob", "secret", "pc");
    for i in 0..5 {
        bob.send(&message("alice@localhost/s0", &format!("u{i}")));
    }
    assert_eq!(bodies(&mut s0, 5).len(), 5);
    // s0 never acknowledges; it ends its stream.
    s0.send("</stream:stream>");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        s1.next_within(Duration::from_millis(500)).is_none_or(|f| !f.contains("<body>u")),
        "the other resource got copies"
    );
    drop(s1);
    let mut later = Client::login(node.c2s, "alice", "secret", "later");
    later.presence();
    let mut offline = Vec::new();
    while let Some(frame) = later.next_within(Duration::from_millis(700)) {
        if let Some(body) = frame.split("<body>").nth(1) {
            offline.push(body.split("</body>").next().unwrap().to_owned());
        }
    }
    assert_eq!(offline, ["u0", "u1", "u2", "u3", "u4"], "each once, in order");
}

/// Regression (breaker, F6): an `h` behind the last one was called "too high" and
/// ended the session; it acknowledges nothing new and the stream goes on.
#[test]
fn an_h_behind_the_last_one_is_ignored() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "phone");
    enable(&mut alice);
    let mut bob = Client::login(node.c2s, "bob", "secret", "pc");
    for i in 0..3 {
        bob.send(&message("alice@localhost/phone", &format!("m{i}")));
    }
    assert_eq!(bodies(&mut alice, 3).len(), 3);
    alice.send("<a xmlns='urn:xmpp:sm:3' h='3'/>");
    alice.send("<a xmlns='urn:xmpp:sm:3' h='1'/>");
    alice.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>");
    let pong = alice.expect("id='p1'");
    assert!(pong.contains("type='result'"), "{pong}");
}
