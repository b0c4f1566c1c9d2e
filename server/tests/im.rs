//! IM features end to end (RFC 6121, XEP-0237, XEP-0160, XEP-0054, XEP-0049, XEP-0191,
//! XEP-0280, XEP-0313, XEP-0352, XEP-0012): a whole node on 127.0.0.1:0 with a real
//! SQLite file and raw XMPP clients that check the stanzas' contents. The black-box
//! suite (scripts/blackbox) covers the same with slixmpp.

mod common;

use std::time::Duration;

use common::{Client, TestNode};

/// Reads the roster of `client` (a full result, or the empty result for `ver`).
fn roster(client: &mut Client, id: &str) -> String {
    client.send(&format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>"));
    client.expect(&format!("id='{id}'"))
}

/// Roster set, get and push (RFC 6121 section 2) with versioning (XEP-0237): every
/// resource gets the push, an up-to-date version gets an empty result, and bad sets
/// get the section 2.3.3 errors.
#[test]
fn roster_set_push_get_and_versions() {
    let node = TestNode::start();
    let mut phone = Client::login(node.c2s, "alice", "secret", "phone");
    let mut laptop = Client::login(node.c2s, "alice", "secret", "laptop");
    let mut tablet = Client::login(node.c2s, "alice", "secret", "tablet");
    let empty = roster(&mut phone, "r0");
    assert!(empty.contains("<query xmlns='jabber:iq:roster' ver='0'></query>"), "{empty}");
    roster(&mut laptop, "rl");
    phone.send("<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob'><group>Friends</group></item></query></iq>");
    let push = laptop.expect("jabber:iq:roster");
    assert!(
        push.contains("type='set'") && push.contains("name='Bob'") && push.contains("<group>Friends</group>"),
        "{push}"
    );
    assert!(push.contains("ver='1'") && push.contains("subscription='none'"), "{push}");
    assert!(phone.expect("id='s1'").contains("type='result'"));
    let full = roster(&mut laptop, "r1");
    assert!(full.contains("jid='bob@localhost'") && full.contains("ver='1'"), "{full}");
    laptop.send("<iq type='get' id='r2'><query xmlns='jabber:iq:roster' ver='1'/></iq>");
    let current = laptop.expect("id='r2'");
    assert!(current.contains("type='result'") && !current.contains("<item"), "up to date: {current}");
    let bad = [
        ("b1", "<item jid='alice@localhost'/>", "not-allowed"),
        ("b2", "<item jid='x@localhost'><group>g</group><group>g</group></item>", "bad-request"),
        ("b3", "<item jid='nobody@localhost' subscription='remove'/>", "item-not-found"),
        ("b4", "<item jid='a@@b'/>", "jid-malformed"),
    ];
    for (id, item, condition) in bad {
        phone.send(&format!("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'>{item}</query></iq>"));
        let reply = phone.expect(&format!("id='{id}'"));
        assert!(reply.contains("type='error'") && reply.contains(condition), "{id}: {reply}");
    }
    phone.send("<iq type='set' id='s2'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='remove'/></query></iq>");
    assert!(laptop.expect("subscription='remove'").contains("ver='2'"));
    // RFC 6121 section 2.1.6: pushes go to interested resources only.
    assert!(tablet.next_within(Duration::from_millis(300)).is_none_or(|f| !f.contains("jabber:iq:roster")));
}

/// The subscription handshake of RFC 6121 section 3 between two online users, then
/// presence broadcast and probes (section 4): bob sees alice come online, alice's
/// unavailable presence reaches bob, and a request to an offline user waits for them.
#[test]
fn subscriptions_and_presence_broadcast() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    roster(&mut alice, "ra");
    roster(&mut bob, "rb");
    alice.presence();
    bob.presence();
    alice.send("<presence to='bob@localhost' type='subscribe'/>");
    let ask = alice.expect("jabber:iq:roster");
    assert!(ask.contains("ask='subscribe'"), "pending out is pushed: {ask}");
    let request = bob.expect("type='subscribe'");
    assert!(request.contains("from='alice@localhost'"), "bare from: {request}");
    bob.send("<presence to='alice@localhost' type='subscribed'/>");
    assert!(bob.expect("jabber:iq:roster").contains("subscription='from'"));
    let approved = alice.expect("subscription='to'");
    assert!(!approved.contains("ask="), "{approved}");
    // Approval sends bob's current presence to alice.
    alice.expect("from='bob@localhost/b'");
    // Bob subscribes back: now both.
    bob.send("<presence to='alice@localhost' type='subscribe'/>");
    alice.expect("type='subscribe'");
    alice.send("<presence to='bob@localhost' type='subscribed'/>");
    bob.expect("subscription='both'");
    // Presence changes reach the subscribed contact.
    alice.send("<presence><show>away</show></presence>");
    assert!(bob.expect("<show>away</show>").contains("from='alice@localhost/a'"));
    // A new resource of bob probes alice and learns her presence.
    let mut bob2 = Client::login(node.c2s, "bob", "secret", "b2");
    bob2.presence();
    assert!(bob2.expect("from='alice@localhost/a'").contains("<show>away</show>"));
    alice.send("</stream:stream>");
    assert!(bob.expect("type='unavailable'").contains("from='alice@localhost/a'"));
    // A request to an offline user is kept and shown at their next initial presence.
    bob.send("<presence to='carol@localhost' type='subscribe'/>");
    bob.expect("ask='subscribe'");
    std::thread::sleep(Duration::from_millis(200));
    let mut carol = Client::login(node.c2s, "carol", "secret", "c");
    carol.presence();
    assert!(carol.expect("type='subscribe'").contains("from='bob@localhost'"));
}

/// XEP-0160: a message to an offline user is stored, delivered with a `<delay/>` at
/// its next initial presence, and only once; everything stored survives a restart of
/// the node (roster, pending request, offline message, vCard, block list).
#[test]
fn offline_messages_and_persistence_across_restart() {
    let mut node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    alice.send(
        "<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob'/></query></iq>",
    );
    alice.expect("id='s1'");
    alice.send("<presence to='carol@localhost' type='subscribe'/>");
    alice.send("<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice A.</FN></vCard></iq>");
    assert!(alice.expect("id='v1'").contains("type='result'"));
    alice.send("<iq type='set' id='k1'><block xmlns='urn:xmpp:blocking'><item jid='spam@localhost'/></block></iq>");
    assert!(alice.expect("id='k1'").contains("type='result'"));
    alice.send("<message to='bob@localhost' type='chat' id='o1'><body>while you were out</body></message>");
    assert!(alice.next_within(Duration::from_millis(300)).is_none_or(|f| !f.contains("id='o1'")), "no error");
    std::thread::sleep(Duration::from_millis(300));
    drop(alice);
    node.restart();

    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    bob.presence();
    let offline = bob.expect("while you were out");
    assert!(offline.contains("<delay xmlns='urn:xmpp:delay' from='localhost' stamp='20"), "{offline}");
    assert!(offline.contains("from='alice@localhost/a'"), "{offline}");
    drop(bob);
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    bob.presence();
    assert!(bob.next_within(Duration::from_millis(500)).is_none_or(|f| !f.contains("while you were out")), "once");

    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let kept = roster(&mut alice, "r1");
    assert!(kept.contains("jid='bob@localhost' name='Bob'"), "{kept}");
    assert!(kept.contains("jid='carol@localhost'") && kept.contains("ask='subscribe'"), "{kept}");
    alice.send("<iq type='get' id='v2'><vCard xmlns='vcard-temp'/></iq>");
    assert!(alice.expect("id='v2'").contains("<FN>Alice A.</FN>"));
    alice.send("<iq type='get' id='k2'><blocklist xmlns='urn:xmpp:blocking'/></iq>");
    assert!(alice.expect("id='k2'").contains("<item jid='spam@localhost'/>"));
    let mut carol = Client::login(node.c2s, "carol", "secret", "c");
    carol.presence();
    assert!(carol.expect("type='subscribe'").contains("from='alice@localhost'"), "pending in survived");
}

/// vCards (XEP-0054) are read by others, private XML (XEP-0049) only by its owner,
/// and oversized or malformed documents are refused with the documented errors.
#[test]
fn vcards_and_private_storage() {
    let node = TestNode::start_with(|config| config.limits.framer.stanza_bytes_max = 64 * 1024);
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    alice.send("<iq type='set' id='v1'><vCard xmlns='vcard-temp'><NICKNAME>ali</NICKNAME></vCard></iq>");
    alice.expect("id='v1'");
    bob.send("<iq type='get' id='v2' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>");
    let card = bob.expect("id='v2'");
    assert!(card.contains("<NICKNAME>ali</NICKNAME>") && card.contains("from='alice@localhost'"), "{card}");
    // An account without a vCard and one that does not exist answer alike (issue 11:
    // the answers must not tell which accounts exist; RFC 6121 section 8.5.1).
    bob.send("<iq type='get' id='v3' to='carol@localhost'><vCard xmlns='vcard-temp'/></iq>");
    assert!(bob.expect("id='v3'").contains("service-unavailable"), "none stored");
    bob.send("<iq type='get' id='v3b' to='nobody@localhost'><vCard xmlns='vcard-temp'/></iq>");
    assert!(bob.expect("id='v3b'").contains("service-unavailable"), "no such account");
    bob.send("<iq type='get' id='v3c'><vCard xmlns='vcard-temp'/></iq>");
    assert!(bob.expect("id='v3c'").contains("<vCard xmlns='vcard-temp'/>"), "one's own: empty when none");
    let huge =
        format!("<iq type='set' id='v4'><vCard xmlns='vcard-temp'><DESC>{}</DESC></vCard></iq>", "x".repeat(40_000));
    alice.send(&huge);
    assert!(alice.expect("id='v4'").contains("not-acceptable"));

    alice.send("<iq type='set' id='p1'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'><conference jid='room@muc.localhost'/></storage></query></iq>");
    assert!(alice.expect("id='p1'").contains("type='result'"));
    alice.send(
        "<iq type='get' id='p2'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>",
    );
    assert!(alice.expect("id='p2'").contains("room@muc.localhost"));
    alice.send("<iq type='get' id='p3'><query xmlns='jabber:iq:private'><other xmlns='urn:example'/></query></iq>");
    assert!(alice.expect("id='p3'").contains("<other xmlns='urn:example'/>"), "empty child when none");
    alice.send("<iq type='get' id='p4'><query xmlns='jabber:iq:private'><bad/></query></iq>");
    assert!(alice.expect("id='p4'").contains("not-acceptable"));
    bob.send("<iq type='get' id='p5' to='alice@localhost'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>");
    let refused = bob.expect("id='p5'");
    assert!(refused.contains("type='error'") && !refused.contains("room@muc"), "{refused}");
}

/// XEP-0191: a blocked contact's messages bounce and the user cannot message them;
/// the list is pushed to the other resource; unblocking restores delivery.
#[test]
fn blocking_command() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let mut alice2 = Client::login(node.c2s, "alice", "secret", "a2");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    alice.presence();
    alice2.presence();
    bob.presence();
    alice.send("<iq type='set' id='k1'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>");
    alice.expect("id='k1'");
    assert!(alice2.expect("<block xmlns='urn:xmpp:blocking'>").contains("bob@localhost"));
    bob.send("<message to='alice@localhost' id='m1' type='chat'><body>let me in</body></message>");
    assert!(bob.expect("id='m1'").contains("service-unavailable"));
    alice.send("<message to='bob@localhost' id='m2' type='chat'><body>hi</body></message>");
    assert!(alice.expect("id='m2'").contains("not-acceptable"));
    alice.send("<iq type='set' id='k0'><block xmlns='urn:xmpp:blocking'/></iq>");
    assert!(alice.expect("id='k0'").contains("bad-request"));
    alice.send("<iq type='set' id='k2'><unblock xmlns='urn:xmpp:blocking'/></iq>");
    alice.expect("id='k2'");
    bob.send("<message to='alice@localhost/a' id='m3' type='chat'><body>now?</body></message>");
    alice.expect("now?");
}

/// XEP-0280: with carbons on, a resource sees what its sibling sent and received.
#[test]
fn message_carbons() {
    let node = TestNode::start();
    let mut phone = Client::login(node.c2s, "alice", "secret", "phone");
    let mut desk = Client::login(node.c2s, "alice", "secret", "desk");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    for client in [&mut phone, &mut desk, &mut bob] {
        client.presence();
    }
    desk.send("<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>");
    assert!(desk.expect("id='c1'").contains("type='result'"));
    phone.send("<message to='bob@localhost' type='chat'><body>from my phone</body></message>");
    bob.expect("from my phone");
    let sent = desk.expect("from my phone");
    assert!(sent.contains("<sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"), "{sent}");
    bob.send("<message to='alice@localhost/phone' type='chat'><body>to your phone</body></message>");
    phone.expect("to your phone");
    let received = desk.expect("to your phone");
    assert!(received.contains("<received xmlns='urn:xmpp:carbons:2'>") && received.contains("from='alice@localhost'"));
    phone.send(
        "<message to='bob@localhost' type='chat'><body>secret</body><private xmlns='urn:xmpp:carbons:2'/></message>",
    );
    bob.expect("secret");
    assert!(desk.next_within(Duration::from_millis(300)).is_none_or(|f| !f.contains("secret")));
}

/// XEP-0313 with XEP-0059: both sides archive a conversation; pages by `max`,
/// `after` and `before`, filters by `with` and time, and `flip-page`.
#[test]
fn message_archive_queries() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    let mut carol = Client::login(node.c2s, "carol", "secret", "c");
    for client in [&mut alice, &mut bob, &mut carol] {
        client.presence();
    }
    for i in 1..=5 {
        alice.send(&format!("<message to='bob@localhost' type='chat'><body>n{i}</body></message>"));
        bob.expect(&format!("n{i}"));
    }
    carol.send("<message to='alice@localhost/a' type='chat'><body>from carol</body></message>");
    alice.expect("from carol");
    std::thread::sleep(Duration::from_millis(300));
    let query = |client: &mut Client, id: &str, inner: &str| -> (Vec<String>, String) {
        client.send(&format!(
            "<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2' queryid='q{id}'>{inner}</query></iq>"
        ));
        let mut results = Vec::new();
        loop {
            let frame = client.next();
            if frame.contains(&format!("id='{id}'")) {
                return (results, frame);
            }
            if frame.contains(&format!("queryid='q{id}'")) {
                results.push(frame);
            }
        }
    };
    let (all, fin) = query(&mut alice, "m1", "");
    assert_eq!(all.len(), 6, "{all:?}");
    assert!(fin.contains("complete='true'") && fin.contains("<count>6</count>"), "{fin}");
    assert!(all[0].contains("<body>n1</body>") && all[0].contains("<delay xmlns='urn:xmpp:delay' stamp="));
    let set = "<set xmlns='http://jabber.org/protocol/rsm'><max>2</max></set>";
    let (page, fin) = query(&mut alice, "m2", set);
    assert_eq!(page.len(), 2);
    assert!(!fin.contains("complete='true'"), "{fin}");
    let last = fin.split("<last>").nth(1).unwrap().split('<').next().unwrap().to_owned();
    let after = format!("<set xmlns='http://jabber.org/protocol/rsm'><max>2</max><after>{last}</after></set>");
    let (next, _) = query(&mut alice, "m3", &after);
    assert!(next[0].contains("n3") && next[1].contains("n4"), "{next:?}");
    let before = "<set xmlns='http://jabber.org/protocol/rsm'><max>2</max><before/></set>";
    let (tail, _) = query(&mut alice, "m4", before);
    assert!(tail[0].contains("n5") && tail[1].contains("from carol"), "{tail:?}");
    let (flipped, _) = query(&mut alice, "m5", &format!("{before}<flip-page/>"));
    assert!(flipped[0].contains("from carol"), "{flipped:?}");
    let with = "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field>\
                <field var='with'><value>carol@localhost</value></field></x>";
    let (carols, fin) = query(&mut alice, "m6", with);
    assert_eq!(carols.len(), 1);
    assert!(fin.contains("<count>1</count>"));
    let future =
        "<x xmlns='jabber:x:data' type='submit'><field var='start'><value>2100-01-01T00:00:00Z</value></field></x>";
    let (none, fin) = query(&mut alice, "m7", future);
    assert!(none.is_empty() && fin.contains("<count>0</count>"), "{fin}");
    let (bobs, _) = query(&mut bob, "m8", "");
    assert_eq!(bobs.len(), 5, "the recipient archives too");
    alice.send("<iq type='set' id='m9'><query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data'><field var='start'><value>soon</value></field></x></query></iq>");
    assert!(alice.expect("id='m9'").contains("bad-request"));
}

/// XEP-0352: an inactive client gets messages at once but presence only when it is
/// active again (the latest per contact); XEP-0012 answers last activity.
#[test]
fn client_state_indication_and_last_activity() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    alice.presence();
    bob.presence();
    alice.send("<inactive xmlns='urn:xmpp:csi:0'/>");
    std::thread::sleep(Duration::from_millis(100));
    bob.send("<presence to='alice@localhost'><status>one</status></presence>");
    bob.send("<presence to='alice@localhost'><status>two</status></presence>");
    bob.send("<message to='alice@localhost' type='chat'><body>urgent</body></message>");
    let first = alice.expect("urgent");
    assert!(!first.contains("<status>"), "{first}");
    assert!(alice.next_within(Duration::from_millis(300)).is_none_or(|f| !f.contains("<status>")), "held");
    alice.send("<active xmlns='urn:xmpp:csi:0'/>");
    assert!(alice.expect("<status>").contains("<status>two</status>"), "only the latest");

    bob.send("<iq type='get' id='l1' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>");
    assert!(bob.expect("id='l1'").contains("forbidden"), "not subscribed");
    alice.send("<iq type='get' id='l2' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>");
    assert!(alice.expect("id='l2'").contains("seconds='0'"), "online");
}

/// Unknown IQ payloads get service-unavailable, malformed IM payloads bad-request, and
/// the stream stays up; the stream features announce roster versioning and CSI.
#[test]
fn unknown_and_malformed_requests() {
    let node = TestNode::start();
    let mut client = Client::connect(node.c2s);
    client.open();
    client.scram("carol", "secret").unwrap();
    let features = client.open();
    assert!(features.contains("<ver xmlns='urn:xmpp:features:rosterver'/>"), "{features}");
    assert!(features.contains("<csi xmlns='urn:xmpp:csi:0'/>"), "{features}");
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    alice.send("<iq type='get' id='u1'><query xmlns='urn:example:unknown'/></iq>");
    assert!(alice.expect("id='u1'").contains("service-unavailable"));
    alice.send("<iq type='set' id='u2'><query xmlns='jabber:iq:roster'/></iq>");
    assert!(alice.expect("id='u2'").contains("bad-request"));
    alice.send("<iq type='set' id='u3'><query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>lots</max></set></query></iq>");
    assert!(alice.expect("id='u3'").contains("bad-request"));
    alice.send("<iq type='get' id='u4' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert!(alice.expect("id='u4'").contains("type='result'"), "still up");
}

/// Makes `a` and `b` (both available) subscribed to each other.
fn subscribe_both(a: &mut Client, a_bare: &str, b: &mut Client, b_bare: &str) {
    roster(a, "ra");
    roster(b, "rb");
    a.send(&format!("<presence to='{b_bare}' type='subscribe'/>"));
    b.expect("type='subscribe'");
    b.send(&format!("<presence to='{a_bare}' type='subscribed'/><presence to='{a_bare}' type='subscribe'/>"));
    a.expect("type='subscribe'");
    a.send(&format!("<presence to='{b_bare}' type='subscribed'/>"));
    b.expect("subscription='both'");
    a.expect("subscription='both'");
}

/// A client's XEP-0115 presence announcing `+notify` for `node`, and (`answer`) its
/// reply to the server's disco#info query when the server does not know the hash.
fn announce_caps(client: &mut Client, node: &str, answer: bool) {
    use base64::Engine as _;
    let features = ["http://jabber.org/protocol/caps".to_owned(), format!("{node}+notify")];
    let mut sorted = features.to_vec();
    sorted.sort();
    let input = format!("client/pc//Test<{}<", sorted.join("<"));
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, input.as_bytes());
    let ver = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    client.send(&format!(
        "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:test' ver='{ver}'/></presence>"
    ));
    if !answer {
        return;
    }
    let query = client.expect("disco#info");
    let id = query.split("id='").nth(1).unwrap().split('\'').next().unwrap().to_owned();
    let body: String = features.iter().map(|f| format!("<feature var='{f}'/>")).collect();
    client.send(&format!(
        "<iq type='result' to='localhost' id='{id}'><query xmlns='http://jabber.org/protocol/disco#info' node='urn:test#{ver}'>\
         <identity category='client' type='pc' name='Test'/>{body}</query></iq>"
    ));
}

/// XEP-0163 with XEP-0115: a published item reaches a subscribed contact whose caps
/// ask for the node, is readable by that contact but not by a stranger, is sent as
/// the last item to a contact that logs in later, and whitelist nodes stay private.
#[test]
fn personal_eventing_with_notify_filtering() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    alice.presence();
    bob.presence();
    subscribe_both(&mut alice, "alice@localhost", &mut bob, "bob@localhost");
    announce_caps(&mut bob, "urn:xmpp:mood", true);
    std::thread::sleep(Duration::from_millis(200));
    alice.send(
        "<iq type='set' id='p1'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:mood'>\
                <item id='current'><mood xmlns='urn:xmpp:mood'><happy/></mood></item></publish></pubsub></iq>",
    );
    assert!(alice.expect("id='p1'").contains("<item id='current'/>"));
    let event = bob.expect("pubsub#event");
    assert!(event.contains("from='alice@localhost'") && event.contains("<happy/>"), "{event}");
    assert!(alice.next_within(Duration::from_millis(300)).is_none_or(|f| !f.contains("pubsub#event")), "no +notify");

    bob.send("<iq type='get' id='p2' to='alice@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:mood'/></pubsub></iq>");
    assert!(bob.expect("id='p2'").contains("<item id='current'><mood xmlns='urn:xmpp:mood'><happy/></mood></item>"));
    let mut carol = Client::login(node.c2s, "carol", "secret", "c");
    carol.send("<iq type='get' id='p3' to='alice@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:mood'/></pubsub></iq>");
    assert!(carol.expect("id='p3'").contains("not-authorized"));

    let mut bob2 = Client::login(node.c2s, "bob", "secret", "b2");
    announce_caps(&mut bob2, "urn:xmpp:mood", false);
    let last = bob2.expect("pubsub#event");
    assert!(last.contains("<happy/>"), "last item at login, hash known from bob's first resource: {last}");

    alice.send("<iq type='set' id='p4'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:mood'>\
                <item id='current'><mood xmlns='urn:xmpp:mood'><sad/></mood></item></publish><publish-options>\
                <x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>whitelist</value></field></x>\
                </publish-options></pubsub></iq>");
    assert!(alice.expect("id='p4'").contains("conflict"), "options must match the node");
    alice.send("<iq type='set' id='p5'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><delete node='urn:xmpp:mood'/></pubsub></iq>");
    assert!(alice.expect("id='p5'").contains("type='result'"));
    bob.send("<iq type='get' id='p6' to='alice@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:mood'/></pubsub></iq>");
    assert!(bob.expect("id='p6'").contains("item-not-found"));
}

/// Sends an in-band registration for `username` on a fresh stream; returns the answer.
fn register(node: &TestNode, username: &str) -> String {
    let mut client = Client::connect(node.c2s);
    let features = client.open();
    assert!(features.contains("<register xmlns='http://jabber.org/features/iq-register'/>"), "{features}");
    client.send("<iq type='get' id='f1'><query xmlns='jabber:iq:register'/></iq>");
    assert!(client.expect("id='f1'").contains("<username/><password/>"));
    client.send(&format!(
        "<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>{username}</username><password>pw-{username}</password></query></iq>"
    ));
    client.expect("id='r1'")
}

/// XEP-0077: with `[modules.mod_register]` a client creates an account before
/// logging in (and then logs in with it); a taken name is a conflict; a second
/// registration from the same address within the timeout is refused; without the
/// module, nothing is offered.
#[test]
fn in_band_registration() {
    let open = TestNode::start_with(|config| {
        config.registration = Some(starling_server::config::Registration { interval: Duration::ZERO })
    });
    assert!(register(&open, "dave").contains("type='result'"));
    Client::login(open.c2s, "dave", "pw-dave", "r");
    assert!(register(&open, "alice").contains("<conflict"), "taken");

    let limited = TestNode::start_with(|config| {
        config.registration = Some(starling_server::config::Registration { interval: Duration::from_secs(600) })
    });
    assert!(register(&limited, "erin").contains("type='result'"));
    assert!(register(&limited, "frank").contains("<resource-constraint"), "rate limited");

    let closed = TestNode::start();
    let mut client = Client::connect(closed.c2s);
    assert!(!client.open().contains("iq-register"));
}

/// XEP-0313 section 6: preferences are returned as set and applied: with `never`,
/// a conversation is not archived; a JID on the `always` list still is.
#[test]
fn archive_preferences_apply() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    let mut carol = Client::login(node.c2s, "carol", "secret", "c");
    for client in [&mut alice, &mut bob, &mut carol] {
        client.presence();
    }
    alice.send("<iq type='set' id='pr1'><prefs xmlns='urn:xmpp:mam:2' default='never'><always><jid>carol@localhost</jid></always><never/></prefs></iq>");
    let set = alice.expect("id='pr1'");
    assert!(set.contains("default='never'") && set.contains("<jid>carol@localhost</jid>"), "{set}");
    bob.send("<message to='alice@localhost/a' type='chat'><body>off the record</body></message>");
    carol.send("<message to='alice@localhost/a' type='chat'><body>on the record</body></message>");
    alice.expect("off the record");
    alice.expect("on the record");
    std::thread::sleep(Duration::from_millis(300));
    alice.send("<iq type='set' id='q1'><query xmlns='urn:xmpp:mam:2' queryid='x'/></iq>");
    let mut bodies = Vec::new();
    loop {
        let frame = alice.next();
        if frame.contains("id='q1'") {
            break;
        }
        bodies.push(frame);
    }
    assert!(bodies.iter().any(|f| f.contains("on the record")), "{bodies:?}");
    assert!(!bodies.iter().any(|f| f.contains("off the record")), "{bodies:?}");
    alice.send("<iq type='get' id='pr2'><prefs xmlns='urn:xmpp:mam:2'/></iq>");
    assert!(alice.expect("id='pr2'").contains("default='never'"));
    bob.send("<iq type='get' id='q2'><query xmlns='urn:xmpp:mam:2'/></iq>");
    let form = bob.expect("id='q2'");
    assert!(form.contains("var='with'"), "{form}");
}
