//! SASL decoding on arbitrary bytes: PLAIN messages, SCRAM client-first and
//! client-final. Invariant: no panic, and a client-final that was not computed from
//! the password never succeeds.
#![no_main]

use std::num::NonZeroU32;

use libfuzzer_sys::fuzz_target;
use starling_wire::sasl::scram::{parse_client_first, ChannelBindings, Credentials, Hash};
use starling_wire::sasl::{parse_plain, Mechanism};

fuzz_target!(|data: &[u8]| {
    let _ = parse_plain(data);
    let bindings = ChannelBindings { tls_exporter: Some([3; 32]), tls_server_end_point: None };
    for mechanism in [Mechanism::ScramSha1, Mechanism::ScramSha256Plus] {
        let _ = parse_client_first(mechanism, data, true, &bindings);
    }
    let credentials = Credentials::derive(Hash::Sha256, "pw", b"salt", NonZeroU32::new(1).unwrap());
    let first = parse_client_first(Mechanism::ScramSha256, b"n,,n=u,r=abc", false, &bindings).unwrap();
    let (server, _) = first.challenge(&credentials, "def", Some("aGFzaA=="));
    assert!(server.finish(data).is_err(), "a guessed proof was accepted");
});
