//! The web transport's parsers on arbitrary bytes: an HTTP request head (the upgrade,
//! BOSH posts and host-meta), WebSocket frames from a client (decode), server output
//! split into one message per element (encode), a BOSH request body and server output
//! translated into BOSH payload. Invariants: no panic; a head longer than its limit
//! is never accepted as a WebSocket upgrade; a BOSH body bigger than its limit is
//! never accepted; translation consumes a prefix of its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_wire::http::{read_head, Request, Routes, HEAD_BYTES_MAX};
use starling_wire::websocket::WebSocket;
use starling_wire::bosh;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let routes = Routes {
        websocket: Some("/ws-xmpp".into()),
        bosh: Some("/http-bind".into()),
        bosh_body_bytes_max: 1024,
        tls: selector & 1 == 1,
    };
    match read_head(rest, &routes) {
        Some((Request::WebSocket { .. }, used)) => assert!(used <= HEAD_BYTES_MAX),
        Some((Request::Bosh { content_length, .. }, _)) => assert!(content_length <= 1024),
        _ => {}
    }
    if let Ok(body) = bosh::parse(rest) {
        assert!(body.rid <= bosh::RID_MAX);
    }
    let mut payload = Vec::new();
    let (used, _) = bosh::translate(rest, &mut payload);
    assert!(used <= rest.len());
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
