//! Issue 11: the delivery rules (RFC 6121 section 8.5, RFC 6120 section 10.3) and
//! blocking (XEP-0191) on a whole node, one test per input that went wrong before the
//! module interface (each fails on the commit before it). The rules themselves are
//! walked branch by branch in `starling_shard::delivery`'s table test.

mod common;

use std::time::Duration;

use common::{Client, TestNode};

/// Nothing matching `needle` arrives at `client` within a short wait.
fn nothing(client: &mut Client, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_millis(400);
    while std::time::Instant::now() < deadline {
        if let Some(frame) = client.next_within(Duration::from_millis(100)) {
            assert!(!frame.contains(needle), "unexpected: {frame}");
        }
    }
}

/// Makes `a` and `b` (both available) subscribed to each other.
fn subscribe_both(a: &mut Client, a_bare: &str, b: &mut Client, b_bare: &str) {
    for (client, id) in [(&mut *a, "ra"), (&mut *b, "rb")] {
        client.send(&format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>"));
        client.expect(&format!("id='{id}'"));
    }
    a.send(&format!("<presence to='{b_bare}' type='subscribe'/>"));
    b.expect("type='subscribe'");
    b.send(&format!("<presence to='{a_bare}' type='subscribed'/><presence to='{a_bare}' type='subscribe'/>"));
    a.expect("type='subscribe'");
    a.send(&format!("<presence to='{b_bare}' type='subscribed'/>"));
    b.expect("subscription='both'");
    a.expect("subscription='both'");
}

/// Regression (issue 11): with two available resources, a normal, an untyped and a
/// headline message to `bob@localhost/gone` reached both resources. RFC 6121 section
/// 8.5.3.2.1: normal (and untyped) get `service-unavailable`, headline is ignored; a
/// chat message still goes to the other resources.
#[test]
fn messages_to_a_missing_resource() {
    let node = TestNode::start();
    let mut phone = Client::login(node.c2s, "bob", "secret", "phone");
    let mut laptop = Client::login(node.c2s, "bob", "secret", "laptop");
    phone.presence();
    laptop.presence();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    for (id, kind) in [("n", " type='normal'"), ("u", ""), ("h", " type='headline'")] {
        alice.send(&format!("<message to='bob@localhost/gone'{kind} id='{id}'><body>{id}</body></message>"));
    }
    assert!(alice.expect("id='n'").contains("service-unavailable"));
    assert!(alice.expect("id='u'").contains("service-unavailable"));
    nothing(&mut phone, "<body>");
    nothing(&mut laptop, "<body>");
    nothing(&mut alice, "id='h'");
    alice.send("<message to='bob@localhost/gone' type='chat' id='c'><body>chat</body></message>");
    phone.expect("<body>chat</body>");
    laptop.expect("<body>chat</body>");
}

/// Regression (issue 11): a groupchat message to an offline account was stored and
/// delivered at its next login, with no error. RFC 6121 section 8.5.2.2.1: an error.
#[test]
fn groupchat_to_an_offline_account_is_refused() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    alice.send("<message to='bob@localhost' type='groupchat' id='g'><body>room talk</body></message>");
    assert!(alice.expect("id='g'").contains("service-unavailable"));
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    bob.presence();
    nothing(&mut bob, "room talk");
}

/// Regression (issue 11): ping, disco#info and vCard IQs to an account that does not
/// exist got results (disco#info even claimed PEP and MAM). RFC 6121 section 8.5.1:
/// `service-unavailable`, the same answer as for an existing account without a vCard.
#[test]
fn iqs_to_no_such_account() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let payloads = [
        ("p", "<ping xmlns='urn:xmpp:ping'/>"),
        ("d", "<query xmlns='http://jabber.org/protocol/disco#info'/>"),
        ("v", "<vCard xmlns='vcard-temp'/>"),
    ];
    for (id, payload) in payloads {
        alice.send(&format!("<iq type='get' id='{id}' to='nobody@localhost'>{payload}</iq>"));
        let answer = alice.expect(&format!("id='{id}'"));
        assert!(answer.contains("type='error'") && answer.contains("service-unavailable"), "{answer}");
    }
    // An existing account: ping and disco are answered on its behalf.
    alice.send("<iq type='get' id='p2' to='bob@localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert!(alice.expect("id='p2'").contains("type='result'"));
    alice.send("<iq type='get' id='v2' to='bob@localhost'><vCard xmlns='vcard-temp'/></iq>");
    assert!(alice.expect("id='v2'").contains("service-unavailable"), "no vCard answers like no account");
}

/// Regression (issue 11): an IQ without `to` was answered as the server, so a
/// client's disco#info without `to` said its account had no PEP. RFC 6120 section
/// 10.3.3: no `to` is the sender's own account.
#[test]
fn an_iq_without_to_is_for_the_own_account() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    alice.send("<iq type='get' id='d'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    let info = alice.expect("id='d'");
    assert!(info.contains("category='account'") && info.contains("category='pubsub' type='pep'"), "{info}");
    assert!(info.contains("urn:xmpp:mam:2") && !info.contains("category='server'"), "{info}");
    alice.send("<iq type='get' id='s' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    assert!(alice.expect("id='s'").contains("category='server'"), "the server answers for its domain");
}

/// Regression (issue 11): bob blocked alice (she got his unavailable presence), then
/// unblocked her, and she never got his current presence. XEP-0191 section 3.4.
#[test]
fn unblocking_sends_current_presence() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    alice.presence();
    bob.presence();
    subscribe_both(&mut alice, "alice@localhost", &mut bob, "bob@localhost");
    bob.send("<presence><status>here</status></presence>");
    alice.expect("<status>here</status>");
    bob.send("<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block></iq>");
    bob.expect("id='b1'");
    assert!(alice.expect("from='bob@localhost/b'").contains("type='unavailable'"));
    bob.send("<iq type='set' id='b2'><unblock xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></unblock></iq>");
    bob.expect("id='b2'");
    let back = alice.expect("<status>here</status>");
    assert!(back.contains("from='bob@localhost/b'") && !back.contains("unavailable"), "{back}");
}

/// Regression (found by a breaker): an IQ without `type` (or with an unknown one)
/// got no answer at all; RFC 6120 section 8.2.3 makes the type required, so it is a
/// `bad-request`, to the server, the own account or another user alike.
#[test]
fn an_iq_without_a_type_is_a_bad_request() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    for (id, to) in [("t1", " to='localhost'"), ("t2", ""), ("t3", " to='bob@localhost/x'")] {
        alice.send(&format!("<iq id='{id}'{to}><ping xmlns='urn:xmpp:ping'/></iq>"));
        let answer = alice.expect(&format!("id='{id}'"));
        assert!(answer.contains("type='error'") && answer.contains("bad-request"), "{answer}");
    }
    alice.send("<iq type='fetch' id='t4' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert!(alice.expect("id='t4'").contains("bad-request"));
}

/// Regression (found by a breaker): alice blocked bob, a stranger with no
/// subscription; bob received alice's unavailable presence, which told him she was
/// online and from which resource. XEP-0191 section 3.3: only a contact allowed to
/// see her presence is told; one she sent directed presence to is.
#[test]
fn blocking_a_stranger_reveals_nothing() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    let mut carol = Client::login(node.c2s, "carol", "secret", "c");
    alice.presence();
    bob.presence();
    carol.presence();
    alice.send("<presence to='carol@localhost'/>");
    carol.expect("from='alice@localhost/a'");
    alice.send(
        "<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/>\
         <item jid='carol@localhost'/></block></iq>",
    );
    alice.expect("id='b1'");
    assert!(carol.expect("from='alice@localhost/a'").contains("type='unavailable'"));
    nothing(&mut bob, "alice@localhost");
}

/// Regression (issue 11): bob blocked alice and went offline; alice could then read
/// his vCard and last activity. Blocking does not depend on bob being online.
#[test]
fn blocking_holds_while_offline() {
    let node = TestNode::start();
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    bob.send("<iq type='set' id='v'><vCard xmlns='vcard-temp'><FN>Bob</FN></vCard></iq>");
    bob.expect("id='v'");
    bob.send("<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block></iq>");
    bob.expect("id='b'");
    drop(bob);
    node.wait_sessions(0);
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    alice.send("<iq type='get' id='v2' to='bob@localhost'><vCard xmlns='vcard-temp'/></iq>");
    let card = alice.expect("id='v2'");
    assert!(card.contains("service-unavailable") && !card.contains("<FN>"), "{card}");
    alice.send("<iq type='get' id='l' to='bob@localhost'><query xmlns='jabber:iq:last'/></iq>");
    assert!(alice.expect("id='l'").contains("service-unavailable"));
    alice.send("<message to='bob@localhost' type='chat' id='m'><body>hi</body></message>");
    assert!(alice.expect("id='m'").contains("service-unavailable"), "no offline storage for a blocked sender");
    // carol is not blocked: she reads the vCard.
    let mut carol = Client::login(node.c2s, "carol", "secret", "c");
    carol.send("<iq type='get' id='v3' to='bob@localhost'><vCard xmlns='vcard-temp'/></iq>");
    assert!(carol.expect("id='v3'").contains("<FN>Bob</FN>"));
}

/// XEP-0352 as documented: while inactive, presence (the latest per contact) and
/// chat-state-only messages wait and come in order on `<active/>`; messages with a
/// body arrive at once.
#[test]
fn csi_holds_presence_and_chat_states() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    alice.presence();
    alice.send("<inactive xmlns='urn:xmpp:csi:0'/>");
    std::thread::sleep(Duration::from_millis(100));
    bob.send("<presence to='alice@localhost'><status>one</status></presence>");
    bob.send("<message to='alice@localhost' type='chat' id='cs'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>");
    bob.send("<presence to='alice@localhost'><status>two</status></presence>");
    bob.send("<message to='alice@localhost' type='chat' id='m'><body>urgent</body></message>");
    let first = alice.expect("urgent");
    assert!(!first.contains("composing"));
    nothing(&mut alice, "composing");
    alice.send("<active xmlns='urn:xmpp:csi:0'/>");
    let released: Vec<String> = (0..2).map(|_| alice.next()).collect();
    assert!(released[0].contains("<status>two</status>"), "collapsed to the latest: {released:?}");
    assert!(released[1].contains("composing"), "{released:?}");
}
