//! The framer on arbitrary bytes in arbitrary chunks. Invariants: no panic; the
//! buffer never grows past the stanza limit; the frames (or the error) do not depend
//! on how the bytes were split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_wire::framer::{Frame, Framer, FramerError};
use starling_wire::limits::FramerLimits;

fn run(chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, FramerError> {
    let limits = FramerLimits::for_tests();
    let mut framer = Framer::new(limits);
    let mut frames = Vec::new();
    for chunk in chunks {
        let mut input = *chunk;
        while let Some(frame) = framer.next(&mut input)? {
            frames.push(match frame {
                Frame::StreamHeader(bytes) | Frame::Element(bytes) => bytes.to_vec(),
                Frame::StreamClose => b"</>".to_vec(),
            });
        }
        assert!(input.is_empty());
        assert!(framer.buffered_bytes() <= limits.stanza_bytes_max as usize + 1);
    }
    Ok(frames)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else { return };
    let step = (step as usize % 17) + 1;
    let whole = run(&[body]);
    let chunks: Vec<&[u8]> = body.chunks(step).collect();
    assert_eq!(run(&chunks), whole, "chunking by {step} changed the result");
});
