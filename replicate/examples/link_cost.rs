//! What a link costs per frame, sans-IO (no sockets): an established `OutLink` sends
//! frames that an `InLink` decodes and hands to a sink, in batches as a shell would.
//! Measures the 1M-entry snapshot shape (`Put` of a session entry) and routed stanzas
//! (`Route`, 300-byte message). Used to price the integrity tags of protocol v4:
//! `cargo run --release -p starling-replicate --example link_cost`.

use std::time::Instant;

use starling_replicate::frame::{Frame, Table};
use starling_replicate::link::{InLink, LinkSettings, OutLink};

fn settings(node: &str, num: u16) -> LinkSettings {
    LinkSettings { cluster: "c".into(), node: node.into(), node_num: num, secret: b"secret".to_vec() }
}

/// Moves bytes both ways until neither side has anything to send.
fn pump(owner: &mut OutLink, a: &LinkSettings, peer: &mut InLink, b: &LinkSettings, sink: &mut u64) {
    let now = Instant::now();
    for _ in 0..10 {
        let bytes = owner.transmit().to_vec();
        owner.transmitted(bytes.len(), now);
        peer.handle_input(b, &bytes, now, &mut |_| *sink += 1).expect("peer input");
        let bytes = peer.transmit().to_vec();
        peer.transmitted(bytes.len(), now);
        owner.handle_input(a, &bytes, now).expect("owner input");
        owner.take_acked();
        if owner.transmit().is_empty() && peer.transmit().is_empty() {
            break;
        }
    }
}

fn run(name: &str, count: u64, frame: &Frame<'_>) {
    let (a, b) = (settings("a", 1), settings("b", 2));
    let now = Instant::now();
    let mut owner = OutLink::new(&a, 0, 1, [1; 32], now);
    let mut peer = InLink::new([2; 32], now);
    let mut taken = 0u64;
    pump(&mut owner, &a, &mut peer, &b, &mut taken);
    taken = 0;
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        // Batches of 256 frames per "read", as a busy link carries them.
        for _ in 0..256 {
            owner.send(frame).expect("room");
            sent += 1;
        }
        pump(&mut owner, &a, &mut peer, &b, &mut taken);
    }
    let elapsed = started.elapsed();
    assert_eq!(taken, sent);
    println!(
        "{name}: {count} frames in {:.3} s, {:.0} ns per frame",
        elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / count as f64
    );
}

fn main() {
    let key = b"user1234567@localhost/abcdef0123456789".to_vec();
    let value = [7u8; 32];
    run(
        "snapshot Put (1M session entries)",
        1_000_000,
        &Frame::Put { table: Table::Session, key: &key, value: &value },
    );
    let stanza = format!(
        "<message to='bob@localhost/b' from='alice@localhost/a' type='chat'><body>{}</body></message>",
        "x".repeat(200)
    );
    run(
        "Route (300-byte stanza)",
        1_000_000,
        &Frame::Route { recipient: "bob@localhost/b", stanza: stanza.as_bytes() },
    );
}
