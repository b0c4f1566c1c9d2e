//! The web transport's parsers on arbitrary bytes: an HTTP request head (the upgrade
//! and host-meta), WebSocket frames from a client (decode), and server output split
//! into one message per element (encode). Invariants: no panic; a head longer than
//! its limit is never accepted as a WebSocket upgrade.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_wire::http::{read_head, Request, Routes, HEAD_BYTES_MAX};
use starling_wire::websocket::WebSocket;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let routes = Routes { websocket: Some("/ws-xmpp".into()), tls: selector & 1 == 1 };
    if let Some((Request::WebSocket { .. }, used)) = read_head(rest, &routes) {
        assert!(used <= HEAD_BYTES_MAX);
    }
    // Split the rest into chunks at the selector's pace, through both directions.
    let step = usize::from(selector % 64) + 1;
    let mut client_side = WebSocket::new(4096);
    let mut server_side = WebSocket::new(4096);
    let (mut xml, mut wire) = (Vec::new(), Vec::new());
    for chunk in rest.chunks(step) {
        if client_side.decode(chunk, &mut xml, &mut wire).is_err() {
            break;
        }
    }
    let mut frames = Vec::new();
    for chunk in rest.chunks(step) {
        server_side.encode(chunk, &mut frames);
    }
});
