//! Stanza head decoding on arbitrary bytes. Invariants: no panic; a stamped stanza
//! decodes again with the new `from` and the same kind and `to`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_wire::stanza::Stanza;

fuzz_target!(|data: &[u8]| {
    let Ok(stanza) = Stanza::parse(data) else { return };
    let _ = (stanza.message_type(), stanza.presence_type(), stanza.iq_type(), stanza.payload());
    let mut stamped = Vec::new();
    stanza.write_stamped("fuzz@example/r", &mut stamped);
    let again = Stanza::parse(&stamped).expect("a stamped stanza decodes");
    assert_eq!(again.kind, stanza.kind);
    assert_eq!(again.from.and_then(|f| f.value()).as_deref(), Some("fuzz@example/r"));
    assert_eq!(again.to.map(|t| t.raw_value), stanza.to.map(|t| t.raw_value));
});
