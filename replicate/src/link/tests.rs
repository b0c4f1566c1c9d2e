use std::time::{Duration, Instant};

use super::*;
use crate::frame::Table;
use crate::limits::TAG_BYTES;

fn settings(node: &str, num: u16, secret: &[u8]) -> LinkSettings {
    LinkSettings { cluster: "c".into(), node: node.into(), node_num: num, secret: secret.to_vec() }
}

/// Moves bytes both ways until neither side has anything to send; collects events.
fn pump(
    owner: &mut OutLink,
    owner_settings: &LinkSettings,
    peer: &mut InLink,
    peer_settings: &LinkSettings,
    now: Instant,
) -> (Vec<OutEvent>, Vec<String>, Result<(), LinkError>) {
    let mut out_events = Vec::new();
    let mut in_events = Vec::new();
    for _ in 0..10 {
        let bytes = owner.transmit().to_vec();
        owner.transmitted(bytes.len(), now);
        if let Err(e) = peer.handle_input(peer_settings, &bytes, now, &mut |event| in_events.push(format!("{event:?}")))
        {
            return (out_events, in_events, Err(e));
        }
        let bytes = peer.transmit().to_vec();
        peer.transmitted(bytes.len(), now);
        match owner.handle_input(owner_settings, &bytes, now) {
            Ok(Some(event)) => out_events.push(event),
            Ok(None) => {}
            Err(e) => return (out_events, in_events, Err(e)),
        }
        if owner.transmit().is_empty() && peer.transmit().is_empty() {
            break;
        }
    }
    (out_events, in_events, Ok(()))
}

/// With the same secret and cluster the handshake completes and data flows in order.
#[test]
fn handshake_then_ordered_data() {
    let now = Instant::now();
    let (a, b) = (settings("a", 1, b"s"), settings("b", 2, b"s"));
    let mut owner = OutLink::new(&a, 3, 7, [1; 32], now);
    let mut peer = InLink::new([2; 32], now);
    let (out, ins, result) = pump(&mut owner, &a, &mut peer, &b, now);
    result.unwrap();
    assert_eq!(out, vec![OutEvent::Established { peer: "b".into() }]);
    assert_eq!(ins, vec![r#"Owner { node: "a", node_num: 1, core: 3, epoch: 7 }"#]);
    owner.send(&Frame::SnapshotBegin).unwrap();
    owner.send(&Frame::Put { table: Table::Session, key: b"k", value: b"v" }).unwrap();
    owner.send(&Frame::SnapshotEnd { entries: 1 }).unwrap();
    owner.send(&Frame::Route { recipient: "x@y/z", stanza: b"<message/>" }).unwrap();
    let (_, ins, result) = pump(&mut owner, &a, &mut peer, &b, now);
    result.unwrap();
    assert_eq!(ins.len(), 4);
    assert!(ins[1].starts_with("Put"));
    assert!(ins[3].starts_with("Route"));
}

/// A wrong secret is refused by whichever side checks first, never accepted.
#[test]
fn wrong_secret_is_refused() {
    let now = Instant::now();
    let (a, b) = (settings("a", 1, b"right"), settings("b", 2, b"wrong"));
    let mut owner = OutLink::new(&a, 0, 1, [1; 32], now);
    let mut peer = InLink::new([2; 32], now);
    let (out, ins, result) = pump(&mut owner, &a, &mut peer, &b, now);
    assert_eq!(result, Err(LinkError::BadProof), "the owner sees the peer cannot prove the secret");
    assert!(out.is_empty() && ins.is_empty());
    // And an owner with the wrong secret is refused by the peer.
    let mut owner = OutLink::new(&b, 0, 1, [1; 32], now);
    let mut peer = InLink::new([2; 32], now);
    let bytes = owner.transmit().to_vec();
    peer.handle_input(&a, &bytes, now, &mut |_| {}).unwrap();
    let challenge = peer.transmit().to_vec();
    assert_eq!(owner.handle_input(&b, &challenge, now), Err(LinkError::BadProof));
}

/// A peer of another cluster or protocol version is refused with a reason.
#[test]
fn other_cluster_is_refused() {
    let now = Instant::now();
    let a = settings("a", 1, b"s");
    let mut other = settings("b", 2, b"s");
    other.cluster = "elsewhere".into();
    let mut owner = OutLink::new(&a, 0, 1, [1; 32], now);
    let mut peer = InLink::new([2; 32], now);
    let bytes = owner.transmit().to_vec();
    assert_eq!(peer.handle_input(&other, &bytes, now, &mut |_| {}), Err(LinkError::Refusing(Refusal::Cluster)));
    let refusal = peer.transmit().to_vec();
    assert_eq!(owner.handle_input(&a, &refusal, now), Err(LinkError::Refused(Refusal::Cluster)));
}

/// Garbage and data before the handshake close the link with an error.
#[test]
fn garbage_and_early_data_are_errors() {
    let now = Instant::now();
    let b = settings("b", 2, b"s");
    let mut peer = InLink::new([2; 32], now);
    assert!(matches!(peer.handle_input(&b, b"\x00\x00\x00\x01\xff", now, &mut |_| {}), Err(LinkError::Frame(_))));
    let mut peer = InLink::new([2; 32], now);
    let mut early = Vec::new();
    Frame::Put { table: Table::Session, key: b"k", value: b"v" }.encode(&mut early);
    assert_eq!(peer.handle_input(&b, &early, now, &mut |_| {}), Err(LinkError::Unexpected("await hello")));
}

/// Silence kills a link; heartbeats keep it alive.
#[test]
fn heartbeats_and_silence() {
    let now = Instant::now();
    let (a, b) = (settings("a", 1, b"s"), settings("b", 2, b"s"));
    let mut owner = OutLink::new(&a, 0, 1, [1; 32], now);
    let mut peer = InLink::new([2; 32], now);
    pump(&mut owner, &a, &mut peer, &b, now).2.unwrap();
    let later = now + Duration::from_millis(1500);
    owner.handle_timeout(later).unwrap();
    assert!(!owner.transmit().is_empty(), "a heartbeat is due");
    let bytes = owner.transmit().to_vec();
    owner.transmitted(bytes.len(), later);
    peer.handle_input(&b, &bytes, later, &mut |_| {}).unwrap();
    assert_eq!(owner.handle_timeout(now + Duration::from_secs(10)), Err(LinkError::Silent));
    assert_eq!(peer.handle_timeout(later + Duration::from_secs(4)), Err(LinkError::Silent));
}

/// The send queue is bounded.
#[test]
fn send_queue_is_bounded() {
    let now = Instant::now();
    let (a, b) = (settings("a", 1, b"s"), settings("b", 2, b"s"));
    let mut owner = OutLink::new(&a, 0, 1, [1; 32], now);
    let mut peer = InLink::new([2; 32], now);
    pump(&mut owner, &a, &mut peer, &b, now).2.unwrap();
    let value = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while owner.send(&Frame::Put { table: Table::Session, key: b"k", value: &value }).is_ok() {
        sent += 1;
        assert!(sent < 1000);
    }
    assert!(owner.queued_bytes() <= crate::limits::LINK_QUEUE_BYTES_MAX + value.len() + 32);
}

/// Frames split into single bytes arrive whole and in order.
#[test]
fn byte_by_byte_input() {
    let now = Instant::now();
    let (a, b) = (settings("a", 1, b"s"), settings("b", 2, b"s"));
    let mut owner = OutLink::new(&a, 0, 1, [1; 32], now);
    let mut peer = InLink::new([2; 32], now);
    pump(&mut owner, &a, &mut peer, &b, now).2.unwrap();
    for i in 0..5u8 {
        owner.send(&Frame::Put { table: Table::Session, key: &[i], value: &[i; 3] }).unwrap();
    }
    let bytes = owner.transmit().to_vec();
    let mut keys = Vec::new();
    for byte in bytes {
        peer.handle_input(&b, &[byte], now, &mut |event| {
            if let InEvent::Put { key, .. } = event {
                keys.push(key[0]);
            }
        })
        .unwrap();
    }
    assert_eq!(keys, vec![0, 1, 2, 3, 4]);
}

/// An established link: owner `a` (core 0, epoch 1) to peer `b`.
fn linked(now: Instant) -> (OutLink, InLink, LinkSettings, LinkSettings) {
    let (a, b) = (settings("a", 1, b"s"), settings("b", 2, b"s"));
    let mut owner = OutLink::new(&a, 0, 1, [1; 32], now);
    let mut peer = InLink::new([2; 32], now);
    pump(&mut owner, &a, &mut peer, &b, now).2.unwrap();
    (owner, peer, a, b)
}

/// Sends one Route frame and returns the bytes written for it (the peer has not
/// read them yet).
fn written_route(owner: &mut OutLink, now: Instant) -> Vec<u8> {
    owner.send(&Frame::Route { recipient: "x@y/z", stanza: b"<message/>" }).unwrap();
    let bytes = owner.transmit().to_vec();
    owner.transmitted(bytes.len(), now);
    bytes
}

/// The peer acknowledges the Route and Deliver frames it took, cumulatively, once per
/// read; the owner reports each acknowledged stanza once. Other frames are not counted.
#[test]
fn stanzas_are_acknowledged() {
    let now = Instant::now();
    let (mut owner, mut peer, a, b) = linked(now);
    owner.send(&Frame::SnapshotBegin).unwrap();
    owner.send(&Frame::Route { recipient: "x@y/z", stanza: b"<message/>" }).unwrap();
    owner.send(&Frame::Deliver { account: "x@y", stanza: b"<message/>" }).unwrap();
    owner.send(&Frame::Put { table: Table::Session, key: b"k", value: b"v" }).unwrap();
    assert_eq!(owner.unacked(), 2);
    // Nothing reached the peer yet: nothing is acknowledged.
    assert_eq!(owner.take_acked(), 0);
    pump(&mut owner, &a, &mut peer, &b, now).2.unwrap();
    assert_eq!((owner.take_acked(), owner.unacked()), (2, 0));
    assert_eq!(owner.take_acked(), 0);
    owner.send(&Frame::Route { recipient: "x@y/z", stanza: b"<iq/>" }).unwrap();
    pump(&mut owner, &a, &mut peer, &b, now).2.unwrap();
    assert_eq!((owner.take_acked(), owner.unacked()), (1, 0));
}

/// A stanza the peer never read stays unacknowledged (the shell routes it again when
/// the link ends); an ack for more than was sent, or going backwards, ends the link.
#[test]
fn unread_stanzas_stay_unacknowledged_and_false_acks_are_errors() {
    let now = Instant::now();
    // An ack as the peer would send it (sealed with its key).
    let ack = |peer: &mut InLink, stanzas| {
        peer.pipe.push(&Frame::Ack { stanzas });
        let bytes = peer.transmit().to_vec();
        peer.transmitted(bytes.len(), now);
        bytes
    };
    let (mut owner, mut hung, a, _) = linked(now);
    written_route(&mut owner, now);
    // The peer hangs: the bytes are on the wire, no ack comes.
    assert_eq!((owner.take_acked(), owner.unacked()), (0, 1));
    let false_ack = ack(&mut hung, 2);
    assert!(matches!(owner.handle_input(&a, &false_ack, now), Err(LinkError::Unexpected(_))));

    let (mut owner, mut peer, a, b) = linked(now);
    owner.send(&Frame::Route { recipient: "x@y/z", stanza: b"<message/>" }).unwrap();
    pump(&mut owner, &a, &mut peer, &b, now).2.unwrap();
    assert_eq!(owner.take_acked(), 1);
    let backwards = ack(&mut peer, 0);
    assert!(matches!(owner.handle_input(&a, &backwards, now), Err(LinkError::Unexpected(_))));
}

/// Regression (found by a breaker): a peer frozen past the owner's patience woke up,
/// read the stanzas waiting in its socket and delivered them, after the owner had
/// already routed them again (every message of the freeze arrived twice, an IQ was
/// both refused and run). A peer that has heard nothing for `LINK_DEAD_AFTER` ends
/// the link without taking what was waiting.
#[test]
fn a_peer_that_was_silent_too_long_takes_nothing_more() {
    let now = Instant::now();
    let (mut owner, mut peer, _, b) = linked(now);
    let bytes = written_route(&mut owner, now);
    let later = now + LINK_DEAD_AFTER + Duration::from_millis(1);
    let mut taken = 0;
    let result = peer.handle_input(&b, &bytes, later, &mut |_| taken += 1);
    assert_eq!(result, Err(LinkError::Silent));
    assert_eq!((taken, owner.unacked()), (0, 1));
    // Within the limit the same bytes are taken.
    let (mut owner, mut peer, _, b) = linked(now);
    let bytes = written_route(&mut owner, now);
    let soon = now + LINK_DEAD_AFTER - Duration::from_millis(1);
    peer.handle_input(&b, &bytes, soon, &mut |_| taken += 1).unwrap();
    assert_eq!(taken, 1);
}

/// Regression (issue 10, found by a hostile-input probe): before the handshake the
/// link's next deadline was a heartbeat time already passed, which it never acted
/// on, so a connection that sent nothing spun its core for 2 s of every 3. Neither
/// side may report a deadline in the past after handling it, whatever the state.
#[test]
fn no_deadline_is_already_due_after_handling_it() {
    let start = Instant::now();
    let mut peer = InLink::new([2; 32], start);
    let a = settings("a", 1, b"s");
    let mut owner = OutLink::new(&a, 0, 1, [1; 32], start);
    for ms in [0u64, 500, 1000, 1500, 2500, 2999] {
        let now = start + Duration::from_millis(ms);
        peer.handle_timeout(now).unwrap();
        assert!(peer.next_timeout() > now, "idle unauthenticated in-link due at {ms} ms");
        owner.handle_timeout(now).unwrap();
        assert!(owner.next_timeout() > now, "unanswered out-link due at {ms} ms");
    }
    assert!(peer.next_timeout() <= start + LINK_DEAD_AFTER, "a silent stranger is closed");
    assert_eq!(peer.handle_timeout(start + LINK_DEAD_AFTER), Err(LinkError::Silent));

    // Established, with bytes the peer does not read: the heartbeat waits behind them.
    let (mut owner, _peer, _, _) = linked(start);
    owner.send(&Frame::SnapshotBegin).unwrap();
    for ms in [0u64, 1000, 1500, 2000] {
        let now = start + Duration::from_millis(ms);
        owner.handle_timeout(now).unwrap();
        assert!(owner.next_timeout() > now, "established out-link with unsent bytes due at {ms} ms");
    }
}

/// A stranger cannot make an unauthenticated link buffer a large frame: a length
/// over the handshake limit ends the link as soon as the header arrives.
#[test]
fn a_large_frame_before_the_handshake_ends_the_link_at_once() {
    let now = Instant::now();
    let b = settings("b", 2, b"s");
    let mut peer = InLink::new([2; 32], now);
    let header = (crate::limits::HANDSHAKE_FRAME_BYTES_MAX + 1).to_be_bytes();
    let result = peer.handle_input(&b, &header, now, &mut |_| {});
    assert!(matches!(result, Err(LinkError::Frame(FrameError::TooLarge(_)))), "{result:?}");
    // Once established, frames up to the full limit are read.
    let (mut owner, mut peer, a, b) = linked(now);
    let value = vec![7u8; 64 * 1024];
    owner.send(&Frame::Put { table: Table::Session, key: b"k", value: &value }).unwrap();
    let (_, ins, result) = pump(&mut owner, &a, &mut peer, &b, now);
    result.unwrap();
    assert_eq!(ins.len(), 1);
}

/// Frames after the handshake carry a tag: an altered, replayed, reordered or
/// injected frame ends the link, and the peer takes nothing from it.
#[test]
fn frames_after_the_handshake_are_integrity_checked() {
    let now = Instant::now();
    let take = |peer: &mut InLink, b: &LinkSettings, bytes: &[u8]| {
        let mut taken = 0;
        let result = peer.handle_input(b, bytes, now, &mut |_| taken += 1);
        (taken, result)
    };
    // Altered: one byte of the stanza flipped.
    let (mut owner, mut peer, _, b) = linked(now);
    let mut bytes = written_route(&mut owner, now);
    let at = bytes.len() - TAG_BYTES - 3;
    bytes[at] ^= 1;
    assert_eq!(take(&mut peer, &b, &bytes), (0, Err(LinkError::BadTag)));
    // Replayed: the same sealed frame twice.
    let (mut owner, mut peer, _, b) = linked(now);
    let bytes = written_route(&mut owner, now);
    assert_eq!(take(&mut peer, &b, &bytes), (1, Ok(())));
    assert_eq!(take(&mut peer, &b, &bytes), (0, Err(LinkError::BadTag)));
    // Reordered: the second frame first.
    let (mut owner, mut peer, _, b) = linked(now);
    let first = written_route(&mut owner, now);
    let second = written_route(&mut owner, now);
    assert_eq!(take(&mut peer, &b, &second), (0, Err(LinkError::BadTag)));
    drop(first);
    // Injected: a frame encoded without the key, tag guessed.
    let (_, mut peer, _, b) = linked(now);
    let mut injected = Vec::new();
    Frame::Route { recipient: "x@y/z", stanza: b"<message/>" }.encode(&mut injected);
    injected.extend_from_slice(&[0u8; TAG_BYTES]);
    assert_eq!(take(&mut peer, &b, &injected), (0, Err(LinkError::BadTag)));
    // Links with another secret derive other keys: the handshake already fails.
    let (a, c) = (settings("a", 1, b"s"), settings("c", 3, b"other"));
    let mut owner = OutLink::new(&a, 0, 1, [1; 32], now);
    let mut stranger = InLink::new([2; 32], now);
    assert!(pump(&mut owner, &a, &mut stranger, &c, now).2.is_err());
}
