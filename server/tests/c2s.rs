//! In-process integration tests: a whole node on 127.0.0.1:0 (real SQLite file, real
//! sockets, two cores) and raw XMPP clients, for login, routing, and every kind of bad
//! input. Each bad-input test also checks that another session is unaffected.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestNode, HEADER};
use starling_wire::error::StreamErrorCondition;

/// Alice and bob log in with SCRAM-SHA-256, exchange messages both ways, see each
/// other's directed presence, and ping the server.
#[test]
fn two_clients_chat_and_ping() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "phone");
    let mut bob = Client::login(node.c2s, "bob", "secret", "laptop");
    assert_eq!(alice.jid, "alice@localhost/phone");
    alice.presence();
    bob.presence();
    alice.send("<message to='bob@localhost' type='chat' id='m1'><body>hi bob</body></message>");
    let got = bob.expect("hi bob");
    assert!(got.contains("from='alice@localhost/phone'"), "{got}");
    bob.send("<message to='alice@localhost/phone' type='chat'><body>hi alice</body></message>");
    assert!(alice.expect("hi alice").contains("from='bob@localhost/laptop'"));
    alice.send("<presence to='bob@localhost'><status>here</status></presence>");
    assert!(bob.expect("<status>here</status>").contains("from='alice@localhost/phone'"));
    alice.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    let pong = alice.expect("id='p1'");
    assert!(pong.contains("type='result'"), "{pong}");
    // Directed presence is withdrawn when alice leaves.
    alice.send("</stream:stream>");
    assert!(bob.expect("type='unavailable'").contains("from='alice@localhost/phone'"));
}

/// Messages to an account that does not exist, and IQs to a missing resource, get
/// service-unavailable; other domains get remote-server-not-found; disco works.
#[test]
fn delivery_errors_and_disco() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "r");
    alice.presence();
    alice.send("<message to='nobody@localhost' type='chat' id='x1'><body>?</body></message>");
    assert!(alice.expect("id='x1'").contains("<service-unavailable"));
    alice.send("<iq to='bob@localhost/none' type='get' id='x2'><query xmlns='jabber:iq:version'/></iq>");
    assert!(alice.expect("id='x2'").contains("<service-unavailable"));
    alice.send("<message to='someone@elsewhere.example' id='x3'><body>?</body></message>");
    assert!(alice.expect("id='x3'").contains("<remote-server-not-found"));
    alice.send("<iq type='get' id='x4' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    let info = alice.expect("id='x4'");
    assert!(info.contains("category='server'") && info.contains("urn:xmpp:ping"), "{info}");
    alice.send("<iq type='get' id='x5'><unknown xmlns='urn:example:nothing'/></iq>");
    assert!(alice.expect("id='x5'").contains("<service-unavailable"));
    alice.send("<iq type='get' id='x6' to='bob@localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert!(alice.expect("id='x6'").contains("type='result'"));
}

/// A message to a bare JID goes to the highest-priority available resource.
#[test]
fn bare_jid_messages_go_to_the_highest_priority() {
    let node = TestNode::start();
    let mut low = Client::login(node.c2s, "bob", "secret", "low");
    let mut high = Client::login(node.c2s, "bob", "secret", "high");
    low.send("<presence><priority>1</priority></presence>");
    high.send("<presence><priority>5</priority></presence>");
    // Each resource learns of the other.
    high.expect("from='bob@localhost/low'");
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    alice.presence();
    std::thread::sleep(Duration::from_millis(100));
    alice.send("<message to='bob@localhost' type='chat'><body>to the top</body></message>");
    high.expect("to the top");
    assert!(low.next_within(Duration::from_millis(300)).is_none_or(|f| !f.contains("to the top")));
}

/// Binding a full JID that is already bound replaces the old session, which gets the
/// conflict stream error (RFC 6120 section 7.7.2.2).
#[test]
fn same_resource_twice_replaces_the_old_session() {
    let node = TestNode::start();
    let mut first = Client::login(node.c2s, "alice", "secret", "same");
    let mut second = Client::login(node.c2s, "alice", "secret", "same");
    assert_eq!(first.expect_stream_error(), StreamErrorCondition::Conflict);
    second.send("<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>");
    second.expect("id='alive'");
    node.wait_sessions(1);
}

/// Without a resource, the server picks one.
#[test]
fn server_generates_a_resource() {
    let node = TestNode::start();
    let mut client = Client::connect(node.c2s);
    client.open();
    client.scram("alice", "secret").unwrap();
    client.open();
    client.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
    let bound = client.expect("<jid>");
    assert!(bound.contains("<jid>alice@localhost/"), "{bound}");
}

/// Runs `attack` on one connection while bob stays logged in, and checks the offender
/// gets `condition` and bob still gets messages afterwards.
fn offender_only(node: &TestNode, attack: impl FnOnce(&mut Client), condition: StreamErrorCondition) {
    let mut bob = Client::login(node.c2s, "bob", "secret", "watch");
    bob.presence();
    let mut offender = Client::connect(node.c2s);
    attack(&mut offender);
    assert_eq!(offender.expect_stream_error(), condition);
    offender.expect_closed();
    let mut alice = Client::login(node.c2s, "alice", "secret", "ok");
    alice.send("<message to='bob@localhost/watch'><body>still here</body></message>");
    bob.expect("still here");
}

fn logged_in(node: &TestNode) -> impl FnOnce(&mut Client) + '_ {
    move |client: &mut Client| {
        *client = Client::login(node.c2s, "carol", "secret", "bad");
    }
}

/// Malformed XML closes only the offender, with not-well-formed.
#[test]
fn malformed_xml_is_not_well_formed() {
    let node = TestNode::start();
    offender_only(
        &node,
        |c| {
            logged_in(&node)(c);
            c.send("<message><body>x</bogus></message>");
        },
        StreamErrorCondition::NotWellFormed,
    );
}

/// Invalid UTF-8 is unsupported-encoding.
#[test]
fn invalid_utf8_is_unsupported_encoding() {
    let node = TestNode::start();
    offender_only(
        &node,
        |c| {
            logged_in(&node)(c);
            c.send_bytes(b"<message><body>\xff\xfe</body></message>");
        },
        StreamErrorCondition::UnsupportedEncoding,
    );
}

/// An oversized stanza is a policy violation, refused before it is all buffered.
#[test]
fn oversized_stanza_is_a_policy_violation() {
    let node = TestNode::start();
    offender_only(
        &node,
        |c| {
            logged_in(&node)(c);
            let big = format!("<message to='bob@localhost'><body>{}</body></message>", "x".repeat(100_000));
            c.send_bytes(big.as_bytes());
        },
        StreamErrorCondition::PolicyViolation,
    );
}

/// Too-deep nesting is a policy violation.
#[test]
fn deep_nesting_is_a_policy_violation() {
    let node = TestNode::start();
    offender_only(
        &node,
        |c| {
            logged_in(&node)(c);
            c.send(&format!("<message>{}", "<a>".repeat(100)));
        },
        StreamErrorCondition::PolicyViolation,
    );
}

/// Entity references and DTDs are restricted XML, before or after login.
#[test]
fn entities_and_dtds_are_restricted_xml() {
    let node = TestNode::start();
    offender_only(
        &node,
        |c| {
            logged_in(&node)(c);
            c.send("<message><body>&xxe;</body></message>");
        },
        StreamErrorCondition::RestrictedXml,
    );
    offender_only(
        &node,
        |c| c.send("<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><stream:stream>"),
        StreamErrorCondition::RestrictedXml,
    );
}

/// A second stream header inside an open stream is refused.
#[test]
fn nested_stream_header_is_refused() {
    let node = TestNode::start();
    offender_only(
        &node,
        |c| {
            logged_in(&node)(c);
            c.send(HEADER);
        },
        StreamErrorCondition::UnsupportedStanzaType,
    );
}

/// A stanza before authentication is not-authorized.
#[test]
fn stanza_before_auth_is_not_authorized() {
    let node = TestNode::start();
    offender_only(
        &node,
        |c| {
            c.open();
            c.send("<message to='bob@localhost/watch'><body>sneaky</body></message>");
        },
        StreamErrorCondition::NotAuthorized,
    );
}

/// A forged `from` is invalid-from, and the forged stanza is not delivered.
#[test]
fn forged_from_is_invalid_from() {
    refused_and_not_delivered(
        "<message from='alice@localhost/phone' to='bob@localhost/watch'><body>forged</body></message>",
        StreamErrorCondition::InvalidFrom,
    );
}

/// carol sends `stanza` (meant for bob@localhost/watch) and gets `condition`; bob
/// receives nothing of it: the next body he gets is alice's genuine one.
fn refused_and_not_delivered(stanza: &str, condition: StreamErrorCondition) {
    let node = TestNode::start();
    let mut bob = Client::login(node.c2s, "bob", "secret", "watch");
    bob.presence();
    let mut carol = Client::login(node.c2s, "carol", "secret", "bad");
    carol.send(stanza);
    assert_eq!(carol.expect_stream_error(), condition);
    let mut alice = Client::login(node.c2s, "alice", "secret", "ok");
    alice.send("<message to='bob@localhost/watch'><body>genuine</body></message>");
    let got = bob.expect("<body>");
    assert!(got.contains("genuine"), "carol's stanza must not arrive: {got}");
}

/// A repeated `from` (a second one hoping to survive stamping) is not-well-formed, and
/// nothing of it is delivered.
#[test]
fn repeated_from_is_not_well_formed() {
    refused_and_not_delivered(
        "<message from='carol@localhost/bad' from='alice@localhost/phone' to='bob@localhost/watch'>\
         <body>forged</body></message>",
        StreamErrorCondition::NotWellFormed,
    );
}

/// Regression (found by a breaker): a payload that breaks a namespace constraint
/// (here `p:a` and `q:a` with `p` and `q` bound to one namespace) was forwarded and
/// archived, and cut the recipient's slixmpp stream live, at login from offline
/// storage and at every archive query. The sender now gets not-well-formed and the
/// recipient nothing.
#[test]
fn a_namespace_duplicate_attribute_is_not_well_formed() {
    refused_and_not_delivered(
        "<message to='bob@localhost/watch' type='chat' id='nd'><body>nsdup</body>\
         <x xmlns:p='u' xmlns:q='u' p:a='1' q:a='2'/></message>",
        StreamErrorCondition::NotWellFormed,
    );
}

/// A `to` that is no JID (RFC 7622: a control character, a symbol or a bidi override
/// in the domain) gets jid-malformed and the stream stays; a breaker once got
/// remote-server-not-found for `a@\u{85}`.
#[test]
fn a_to_that_is_no_jid_is_jid_malformed() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "r");
    for (n, to) in ["a@\u{85}", "a@\u{202e}evil.com", "a@\u{2603}.com", "a@b..c", "bob@-localhost"].iter().enumerate() {
        alice.send(&format!("<message to='{to}' id='j{n}'><body>?</body></message>"));
        let reply = alice.expect(&format!("id='j{n}'"));
        assert!(reply.contains("<jid-malformed"), "{to:?}: {reply}");
    }
    alice.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert!(alice.expect("id='p'").contains("type='result'"));
}

/// Wrong passwords fail with not-authorized; the third failure closes the stream.
#[test]
fn three_wrong_passwords_close_the_stream() {
    let node = TestNode::start();
    offender_only(
        &node,
        |c| {
            c.open();
            for _ in 0..2 {
                assert!(c.scram("alice", "wrong").unwrap_err().contains("<not-authorized/>"));
            }
            assert!(c.plain("nobody", "wrong").contains("<not-authorized/>"));
        },
        StreamErrorCondition::PolicyViolation,
    );
}

/// An unknown user costs the same PBKDF2 as a wrong password (PLAIN), so timing does
/// not tell whether an account exists. With 50,000 iterations PBKDF2 dominates; if
/// the unknown-user path skipped it, it would be many times faster.
#[test]
fn unknown_users_take_as_long_as_wrong_passwords() {
    let node = TestNode::start_with(|config| {
        config.auth.scram_iterations = std::num::NonZeroU32::new(50_000).unwrap();
        config.auth.sasl_attempts_max = 10;
    });
    let mut client = Client::connect(node.c2s);
    client.open();
    let mut time = |user: &str| {
        let start = Instant::now();
        for _ in 0..3 {
            assert!(client.plain(user, "wrong").contains("<not-authorized/>"));
        }
        start.elapsed()
    };
    // alice's keys were made with the test iteration count; re-key her at 50,000.
    let mut store = starling_server::store::sqlite::Sqlite::open(&node.dir.path().join("starling.db")).unwrap();
    use starling_server::store::Storage;
    let keys = starling_server::store::AccountKeys::from_password("secret", std::num::NonZeroU32::new(50_000).unwrap());
    store.set_keys(&"alice@localhost".parse().unwrap(), &keys).unwrap();
    let known = time("alice");
    let unknown = time("nobody");
    let ratio = unknown.as_secs_f64() / known.as_secs_f64();
    assert!(ratio > 0.5 && ratio < 2.0, "known {known:?}, unknown {unknown:?}");
}

/// A client that connects and sends nothing is closed after the pre-auth timeout.
#[test]
fn silent_client_is_closed_after_the_timeout() {
    let node = TestNode::start();
    let mut silent = Client::connect(node.c2s);
    let start = Instant::now();
    silent.expect_closed();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5), "{waited:?}");
    // A client that opened its stream but never authenticates gets the stream error.
    let mut idle = Client::connect(node.c2s);
    idle.open();
    assert_eq!(idle.expect_stream_error(), StreamErrorCondition::PolicyViolation);
}

/// A client that stops reading is disconnected once its queue is full; the sender and
/// everyone else carry on.
#[test]
fn client_that_stops_reading_is_disconnected() {
    let node = TestNode::start();
    let mut sleeper = Client::login(node.c2s, "bob", "secret", "sleepy");
    sleeper.presence();
    let mut alice = Client::login(node.c2s, "alice", "secret", "flood");
    alice.presence();
    let body = "y".repeat(4000);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while node.running().node().stats().sessions == 2 && Instant::now() < deadline {
        for _ in 0..100 {
            alice.send(&format!("<message to='bob@localhost/sleepy'><body>{body}</body></message>"));
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    node.wait_sessions(1);
    assert!(sent < 200_000, "disconnected after {sent} messages");
    alice.send("<iq type='get' id='still'><ping xmlns='urn:xmpp:ping'/></iq>");
    alice.expect("id='still'");
    let mut carol = Client::login(node.c2s, "carol", "secret", "c");
    carol.send("<iq type='get' id='fine'><ping xmlns='urn:xmpp:ping'/></iq>");
    carol.expect("id='fine'");
}

/// Shutdown closes every stream with system-shutdown.
#[test]
fn shutdown_closes_streams_with_system_shutdown() {
    let mut node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "r");
    let mut pending = Client::connect(node.c2s);
    pending.open();
    let stopper = std::thread::spawn(move || {
        node.shutdown();
        node
    });
    assert_eq!(alice.expect_stream_error(), StreamErrorCondition::SystemShutdown);
    assert_eq!(pending.expect_stream_error(), StreamErrorCondition::SystemShutdown);
    stopper.join().unwrap();
}

/// Messages between many users on both cores all arrive, in order per sender.
#[test]
fn many_users_across_cores_in_order() {
    let node = TestNode::start_with(|config| {
        config.general.cores = std::num::NonZeroUsize::new(2);
    });
    let mut store = starling_server::store::sqlite::Sqlite::open(&node.dir.path().join("starling.db")).unwrap();
    use starling_server::store::Storage;
    let users: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
    for user in &users {
        let keys = starling_server::store::AccountKeys::from_password("secret", node.config.auth.scram_iterations);
        store.register(&format!("{user}@localhost").parse().unwrap(), &keys).unwrap();
    }
    let mut clients: Vec<Client> = users.iter().map(|u| Client::login(node.c2s, u, "secret", "r")).collect();
    for client in &mut clients {
        client.presence();
    }
    std::thread::sleep(Duration::from_millis(200));
    for (i, client) in clients.iter_mut().enumerate() {
        let to = format!("user{}@localhost", (i + 1) % users.len());
        for n in 0..50 {
            client.send(&format!("<message to='{to}' type='chat'><body>{i}:{n}</body></message>"));
        }
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let from = (i + users.len() - 1) % users.len();
        for n in 0..50 {
            let got = client.expect("<body>");
            assert!(got.contains(&format!("<body>{from}:{n}</body>")), "user{i} expected {from}:{n}, got {got}");
        }
    }
    let stats = node.running().node().stats();
    assert!(stats.moved_in > 0, "some connections moved to their home core: {stats:?}");
}

/// Regression (strophe.js 5 over WebSocket could not log in): RFC 3921's session
/// request after binding, which RFC 6121 made optional, is answered with a result.
#[test]
fn legacy_session_request_is_a_no_op() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "r");
    alice.send("<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>");
    let answer = alice.expect("id='s1'");
    assert!(answer.contains("type='result'"), "{answer}");
}

/// Regression (found by a breaker): a stanza that came in the same read as the bind
/// IQ waited in the framer until the client sent something else.
#[test]
fn a_stanza_pipelined_after_bind_is_handled_at_once() {
    let node = TestNode::start();
    let mut client = Client::connect(node.c2s);
    client.open();
    client.scram("alice", "secret").expect("login succeeds");
    client.open();
    client.send(
        "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>\
         <iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    assert!(client.expect("id='b1'").contains("<jid>alice@localhost/r</jid>"));
    let pong = client.next_within(Duration::from_secs(3)).expect("the pipelined ping is answered without more input");
    assert!(pong.contains("id='p1'") && pong.contains("type='result'"), "{pong}");
}
