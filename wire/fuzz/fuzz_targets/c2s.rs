//! The whole client-to-server negotiation on arbitrary client bytes: stream headers,
//! STARTTLS, SASL (PLAIN, SCRAM with and without channel binding), SASL2 with Bind 2
//! and FAST tokens, XEP-0198 resumption in place of a bind, XEP-0077 in-band
//! registration forms and submissions, resource binding. The shell's answers are
//! played the way a server plays them. Invariants: no panic; after an error or the
//! end, what the machine wrote is well-formed (our framer takes it back).
#![no_main]

use std::num::NonZeroU32;

use libfuzzer_sys::fuzz_target;
use starling_wire::c2s::{Action, C2s, C2sSettings, Context, Entropy, FastSettings};
use starling_wire::framer::{Frame, Framer};
use starling_wire::limits::FramerLimits;
use starling_wire::sasl::scram::{ChannelBindings, Credentials};

struct Counter(u8);

impl Entropy for Counter {
    fn fill(&mut self, bytes: &mut [u8]) {
        for byte in bytes {
            *byte = self.0;
            self.0 = self.0.wrapping_add(1);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut settings = C2sSettings::for_tests();
    settings.registration = true;
    settings.resumption = true;
    settings.bind2_inline = vec!["urn:xmpp:carbons:2".into()];
    settings.fast = Some(FastSettings {
        validity: std::time::Duration::from_secs(60),
        rotate_before: std::time::Duration::from_secs(30),
        secret: b"s".to_vec(),
    });
    let secured = data.first().is_some_and(|b| b & 1 == 1);
    let mut c2s = C2s::new(secured);
    if secured {
        c2s.handle_tls_established(ChannelBindings { tls_exporter: Some([3; 32]), tls_server_end_point: None });
    }
    let mut framer = Framer::new(FramerLimits::for_tests());
    let mut entropy = Counter(0);
    let mut out = Vec::new();
    let mut input = data.get(1..).unwrap_or_default();
    loop {
        let frame = match framer.next(&mut input) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(error) => {
                let mut context = Context { settings: &settings, entropy: &mut entropy };
                c2s.fail(&mut context, error.into(), &mut out);
                break;
            }
        };
        let mut context = Context { settings: &settings, entropy: &mut entropy };
        let mut action = match c2s.handle_frame(&mut context, frame, &mut out) {
            Ok(action) => action,
            Err(_) => break,
        };
        // Play the shell until the machine waits for the next frame.
        loop {
            let mut context = Context { settings: &settings, entropy: &mut entropy };
            action = match action {
                Action::FetchCredentials { user, hash } => {
                    let known = user.local() == Some("alice");
                    let credentials = known.then(|| Credentials::derive(hash, "secret", b"salt", NonZeroU32::new(1).unwrap()));
                    c2s.handle_credentials(&mut context, credentials, &mut out);
                    Action::Continue
                }
                Action::VerifyPassword { password, .. } => {
                    match c2s.handle_password_verdict(&mut context, password == "secret", &mut out) {
                        Ok(next) => next,
                        Err(_) => return,
                    }
                }
                Action::Register { user, .. } => {
                    let outcome = if user.local() == Some("taken") {
                        Err(starling_wire::error::StanzaErrorCondition::Conflict)
                    } else {
                        Ok(())
                    };
                    c2s.handle_registered(outcome, &mut out);
                    Action::Continue
                }
                Action::Bind { user, resource } => {
                    let resource = resource.unwrap_or_else(|| "generated".into());
                    match user.with_resource(&resource) {
                        Ok(jid) => c2s.handle_bound(&jid, b"", &mut out),
                        Err(_) => return,
                    }
                    return;
                }
                Action::Bind2 { user, resource, .. } => {
                    match user.with_resource(&resource) {
                        Ok(jid) => c2s.handle_bound(&jid, b"<enabled xmlns='urn:xmpp:sm:3'/>", &mut out),
                        Err(_) => return,
                    }
                    return;
                }
                Action::FetchFastTokens { .. } => {
                    match c2s.handle_fast_tokens(&mut context, &[("token".to_owned(), data.len() % 2 == 0)], &mut out) {
                        Ok(next) => next,
                        Err(_) => return,
                    }
                }
                Action::IssueFastToken { .. } => {
                    c2s.handle_fast_token(&mut context, Some(("token".into(), "2026-12-01T00:00:00Z".into())), &mut out)
                }
                Action::Resume { previd, .. } => {
                    if previd == "known" {
                        c2s.handle_resumed();
                        return;
                    }
                    c2s.handle_resume_failed(&mut out);
                    Action::Continue
                }
                Action::Authenticated { .. } | Action::StartTls => {
                    framer.reset();
                    Action::Continue
                }
                Action::Closed => return,
                Action::Continue => break,
            };
        }
    }
    // What the machine wrote is well-formed: each stream (a header, then elements)
    // parses whole; a restarted stream starts with a new header.
    let mut rest = &out[..];
    while !rest.is_empty() {
        let mut reader = Framer::new(FramerLimits::DEFAULT);
        loop {
            match reader.next(&mut rest) {
                Ok(Some(Frame::StreamClose)) => break,
                Ok(Some(_)) => {}
                Ok(None) => {
                    assert!(rest.is_empty() || reader.buffered_bytes() == 0, "an unfinished element");
                    return;
                }
                Err(error) => {
                    let restart = rest.starts_with(b"<?xml") || rest.starts_with(b"<stream:stream");
                    assert!(restart, "malformed output ({error}): {:?}", String::from_utf8_lossy(rest));
                    break;
                }
            }
        }
    }
});
