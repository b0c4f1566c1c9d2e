//! Stanza head decoding on arbitrary bytes. Invariants: no panic; a stamped stanza
//! decodes again with the new `from` and the same kind and `to`; an error reply and
//! an IQ result decode again with exactly the addresses the server gave them and the
//! request's id, whatever the request's id held (an id once smuggled a second `to`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_wire::error::{StanzaError, StanzaErrorCondition};
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

    let id = stanza.id.and_then(|id| id.value());
    let mut error = Vec::new();
    let condition = StanzaError::new(StanzaErrorCondition::ServiceUnavailable);
    stanza.write_error_reply("server.example", "sender@example/r", &condition, &mut error);
    let reply = Stanza::parse(&error).expect("an error reply decodes");
    assert_eq!(reply.kind, stanza.kind);
    assert_eq!(reply.to.and_then(|t| t.value()).as_deref(), Some("sender@example/r"));
    assert_eq!(reply.from.and_then(|f| f.value()).as_deref(), Some("server.example"));
    assert_eq!(reply.id.and_then(|i| i.value()), id);

    let mut result = Vec::new();
    stanza.write_iq_result("", "sender@example/r", b"", &mut result);
    let reply = Stanza::parse(&result).expect("an IQ result decodes");
    assert_eq!(reply.to.and_then(|t| t.value()).as_deref(), Some("sender@example/r"));
    assert!(reply.from.is_none());
    assert_eq!(reply.id.and_then(|i| i.value()), id);
});
