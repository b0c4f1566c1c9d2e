//! Stream features (RFC 6120 section 4.3.2) at each step of the negotiation.

use super::{C2sSettings, TlsPolicy};
use crate::sasl::scram::ChannelBindings;
use crate::sasl::Mechanism;

/// Which feature set a stream header is answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Features {
    /// Only STARTTLS, required (RFC 6120 section 5.3.1: nothing else before TLS).
    StartTlsRequired,
    /// SASL mechanisms, with optional STARTTLS.
    Sasl { starttls: bool },
    /// After authentication: resource binding, session, and the shell's extras.
    Bind,
}

impl Features {
    pub fn write(self, settings: &C2sSettings, secured: bool, bindings: &ChannelBindings, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<stream:features>");
        match self {
            Features::StartTlsRequired => {
                out.extend_from_slice(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>");
            }
            Features::Sasl { starttls } => {
                if starttls {
                    out.extend_from_slice(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
                }
                out.extend_from_slice(b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
                for mechanism in offered_mechanisms(settings, secured, bindings) {
                    out.extend_from_slice(b"<mechanism>");
                    out.extend_from_slice(mechanism.name().as_bytes());
                    out.extend_from_slice(b"</mechanism>");
                }
                out.extend_from_slice(b"</mechanisms>");
                if settings.sasl2 {
                    write_sasl2(settings, secured, bindings, out);
                }
                write_channel_binding_types(secured, bindings, out);
                if settings.registration {
                    out.extend_from_slice(b"<register xmlns='http://jabber.org/features/iq-register'/>");
                }
                write_limits(settings, out);
            }
            Features::Bind => {
                out.extend_from_slice(b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>");
                out.extend_from_slice(b"<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>");
                write_limits(settings, out);
                out.extend_from_slice(&settings.bind_features_extra);
            }
        }
        out.extend_from_slice(b"</stream:features>");
    }
}

/// The mechanisms offered on this stream: `-PLUS` only with channel-binding data, and
/// PLAIN only over TLS unless TLS is disabled on this listener altogether.
pub fn offered_mechanisms(settings: &C2sSettings, secured: bool, bindings: &ChannelBindings) -> Vec<Mechanism> {
    settings
        .mechanisms
        .iter()
        .copied()
        .filter(|m| !m.is_plus() || (secured && bindings.any()))
        .filter(|m| *m != Mechanism::Plain || secured || settings.tls == TlsPolicy::Disabled)
        .collect()
}

/// XEP-0388 section 2.1 and XEP-0386 section 2: SASL2 with its mechanisms and what
/// may come inline: Bind 2 and the features it can enable.
fn write_sasl2(settings: &C2sSettings, secured: bool, bindings: &ChannelBindings, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<authentication xmlns='urn:xmpp:sasl:2'>");
    for mechanism in offered_mechanisms(settings, secured, bindings) {
        out.extend_from_slice(b"<mechanism>");
        out.extend_from_slice(mechanism.name().as_bytes());
        out.extend_from_slice(b"</mechanism>");
    }
    if settings.bind2 || settings.fast.is_some() {
        out.extend_from_slice(b"<inline>");
        if settings.bind2 {
            out.extend_from_slice(b"<bind xmlns='urn:xmpp:bind:0'><inline>");
            for feature in &settings.bind2_inline {
                out.extend_from_slice(b"<feature");
                crate::stanza::write_attribute(out, "var", feature);
                out.extend_from_slice(b"/>");
            }
            out.extend_from_slice(b"</inline></bind>");
        }
        if settings.fast.is_some() {
            // XEP-0484 section 3.1.
            out.extend_from_slice(b"<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-NONE</mechanism></fast>");
        }
        out.extend_from_slice(b"</inline>");
    }
    out.extend_from_slice(b"</authentication>");
}

/// XEP-0440: the channel-binding types this connection advertises (none: the
/// element is not sent).
pub fn channel_binding_types(secured: bool, bindings: &ChannelBindings) -> Vec<&'static str> {
    let mut types = Vec::new();
    if secured && bindings.tls_exporter.is_some() {
        types.push("tls-exporter");
    }
    if secured && bindings.tls_server_end_point.is_some() {
        types.push("tls-server-end-point");
    }
    types
}

/// XEP-0440: which channel-binding types this connection supports.
fn write_channel_binding_types(secured: bool, bindings: &ChannelBindings, out: &mut Vec<u8>) {
    let types = channel_binding_types(secured, bindings);
    if types.is_empty() {
        return;
    }
    out.extend_from_slice(b"<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>");
    for kind in types {
        out.extend_from_slice(b"<channel-binding");
        crate::stanza::write_attribute(out, "type", kind);
        out.extend_from_slice(b"/>");
    }
    out.extend_from_slice(b"</sasl-channel-binding>");
}

/// XEP-0478: the stanza size we accept.
fn write_limits(settings: &C2sSettings, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>");
    out.extend_from_slice(settings.stanza_bytes_max.to_string().as_bytes());
    out.extend_from_slice(b"</max-bytes></limits>");
}
