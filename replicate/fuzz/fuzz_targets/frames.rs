//! The frame decoder and an in-link on arbitrary bytes. Invariants: no panic; a
//! decoded frame re-encodes to exactly the bytes it came from (one encoding per
//! frame, nothing skipped); an in-link fed the same bytes in arbitrary chunks ends
//! in the same place (error or not) and never queues more than its bound.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use starling_replicate::frame::Frame;
use starling_replicate::limits::LINK_QUEUE_BYTES_MAX;
use starling_replicate::link::{InLink, LinkSettings};

fn decode_all(mut input: &[u8]) {
    while let Ok(Some((frame, used))) = Frame::decode(input) {
        assert!(used > 0 && used <= input.len());
        let mut again = Vec::new();
        frame.encode(&mut again);
        assert_eq!(again, &input[..used], "{frame:?} re-encodes differently");
        input = &input[used..];
    }
}

fn in_link(chunks: &[&[u8]]) -> (bool, usize) {
    let settings = LinkSettings { cluster: "c".into(), node: "n".into(), node_num: 1, secret: b"s".to_vec() };
    let now = Instant::now();
    let mut link = InLink::new([7; 32], now);
    let mut events = 0;
    for chunk in chunks {
        let result = link.handle_input(&settings, chunk, now, &mut |_| events += 1);
        assert!(link.transmit().len() <= LINK_QUEUE_BYTES_MAX);
        if result.is_err() {
            return (true, events);
        }
    }
    (false, events)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else { return };
    decode_all(body);
    let whole = in_link(&[body]);
    let step = (step as usize % 13) + 1;
    let chunks: Vec<&[u8]> = body.chunks(step).collect();
    assert_eq!(in_link(&chunks), whole, "split every {step} bytes");
});
