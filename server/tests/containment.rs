//! Issue 9: a panic while handling one stanza ends that stream only; the core and
//! every other session carry on, and the panic is counted. Uses the test-only
//! `fault-injection` feature of starling-shard.

mod common;

use common::{Client, TestNode};
use starling_wire::error::StreamErrorCondition;

fn ping(client: &mut Client, id: &str) {
    client.send(&format!("<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"));
    client.expect(&format!("id='{id}'"));
}

/// An injected panic in alice's stanza handler closes alice's stream with
/// `internal-server-error`; bob and carol (one of them on alice's core, with two
/// cores and three users) never notice; the panic shows in the node's counters; alice
/// can log in again on the same core.
#[test]
fn injected_panic_ends_one_session_only() {
    let node = TestNode::start();
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    let mut carol = Client::login(node.c2s, "carol", "secret", "c");
    alice.send("<iq type='get' id='boom'><panic xmlns='urn:starling:fault'/></iq>");
    assert_eq!(alice.expect_stream_error(), StreamErrorCondition::InternalServerError);
    ping(&mut bob, "b1");
    ping(&mut carol, "c1");
    node.wait_sessions(2);
    assert_eq!(node.running().node().stats().panics, 1);
    let mut again = Client::login(node.c2s, "alice", "secret", "a");
    ping(&mut again, "a2");
    bob.send("<message to='alice@localhost/a' id='m'><body>still there?</body></message>");
    again.expect("still there?");
}

/// The same over TLS, and `/metrics` reports the contained panic and every core up.
#[test]
fn injected_panic_over_tls_is_contained_and_counted() {
    let node = TestNode::start_tls();
    let mut alice = node.login_tls("alice", "secret", "a");
    let mut bob = node.login_tls("bob", "secret", "b");
    alice.send("<iq type='get' id='boom'><panic xmlns='urn:starling:fault'/></iq>");
    assert_eq!(alice.expect_stream_error(), StreamErrorCondition::InternalServerError);
    ping(&mut bob, "b1");
    let metrics = common::http_get(node.admin, "/metrics");
    assert!(metrics.contains("starling_panics_contained_total 1"), "{metrics}");
    assert!(metrics.contains("starling_core_up{core=\"0\"} 1"), "{metrics}");
    assert!(metrics.contains("starling_core_up{core=\"1\"} 1"), "{metrics}");
}
