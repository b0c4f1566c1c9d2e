//! Message carbons (XEP-0280 v2, `urn:xmpp:carbons:2`): a resource that enabled
//! carbons gets a copy of every chat message its account sends or receives through
//! another resource, wrapped in `<sent/>` or `<received/>`.
//!
//! Copies go to every resource of the account that enabled carbons, on any node (the
//! flag is replicated with the session). Messages marked
//! `<private xmlns='urn:xmpp:carbons:2'/>` or `<no-copy xmlns='urn:xmpp:hints'/>`
//! are not copied.

use starling_shard::delivery::Decision;
use starling_shard::module::{Delivery, Flow, Iq, IqRoute, IqScope, Module, Reply, Resource, Sender};
use starling_shard::Core;
use starling_wire::jid::JidRef;
use starling_wire::stanza::{write_attribute, MessageType, Stanza, StanzaKind};

use crate::flags;

pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";

pub(crate) const SERVER_FEATURES: &[&str] = &[NS_CARBONS];

const IQS: &[IqRoute] = &[
    IqRoute { namespace: NS_CARBONS, element: "enable", scopes: &[IqScope::OwnAccount] },
    IqRoute { namespace: NS_CARBONS, element: "disable", scopes: &[IqScope::OwnAccount] },
];

/// `mod_carbons`: its state is one flag on each session (replicated, so copies reach
/// resources on every node).
pub struct Carbons;

impl Module for Carbons {
    fn name(&self) -> &'static str {
        "mod_carbons"
    }

    fn server_features(&self) -> &[&'static str] {
        SERVER_FEATURES
    }

    fn iqs(&self) -> &[IqRoute] {
        IQS
    }

    fn handle_iq(&self, core: &Core, iq: &Iq<'_>) -> Reply {
        if iq.kind != starling_wire::stanza::IqType::Set {
            return iq.error(starling_wire::error::StanzaErrorCondition::BadRequest);
        }
        core.set_session_flag(iq.requester, flags::CARBONS, iq.child.tag_name().name() == "enable");
        iq.result(b"")
    }

    fn inline_features(&self) -> &[&'static str] {
        &[NS_CARBONS]
    }

    /// XEP-0280 section 4 inside a Bind 2 request (XEP-0386): `<enable/>` as the IQ
    /// would (`<disable/>` is not an inline request).
    fn on_inline_enable(&self, core: &Core, sender: &mut Sender<'_>, element: &[u8]) -> Vec<u8> {
        if element.starts_with(b"<enable") {
            core.set_session_flag(sender.jid.as_str(), flags::CARBONS, true);
        }
        Vec::new()
    }

    /// XEP-0280 section 6: a message the user sends is copied to its other resources.
    fn on_send(&self, core: &Core, sender: &mut Sender<'_>, stanza: &Stanza<'_>, to: Option<&JidRef<'_>>) -> Flow {
        if stanza.kind != StanzaKind::Message || to.is_none() {
            return Flow::Continue;
        }
        let sender = sender.jid.as_str();
        let bare = sender.split('/').next().unwrap_or(sender);
        // Most accounts have no resource with carbons on: ask that first, without
        // building the resource list or scanning the payload.
        if core.any_available_with_flag(bare, flags::CARBONS) && eligible(stanza) {
            for resource in core.resources(bare) {
                if &*resource.full != sender && wants(&resource) {
                    core.push_to(&resource, &copy(bare, &resource.full, "sent", stanza.bytes));
                }
            }
        }
        Flow::Continue
    }

    /// XEP-0280 section 6: a message delivered to some of the account's resources is
    /// copied to the others that enabled carbons.
    fn on_deliver(&self, _core: &Core, delivery: &mut Delivery<'_>) -> Flow {
        let delivered = matches!(delivery.decision, Decision::Deliver(_)) && !delivery.targets.is_empty();
        if delivery.stanza.kind != StanzaKind::Message || !delivered || !delivery.resources.iter().any(wants) {
            return Flow::Continue;
        }
        if !eligible(delivery.stanza) {
            return Flow::Continue;
        }
        let bare = delivery.to.bare_str();
        for (index, resource) in delivery.resources.iter().enumerate() {
            if wants(resource) && !delivery.targets.contains(&index) {
                let bytes = copy(bare, &resource.full, "received", delivery.stanza.bytes);
                delivery.copies.push((index, bytes));
            }
        }
        Flow::Continue
    }
}

fn wants(resource: &Resource) -> bool {
    resource.flags.has(flags::CARBONS) && resource.available
}

/// Whether `stanza` is eligible for carbons (XEP-0280 section 6).
pub(crate) fn eligible(stanza: &Stanza<'_>) -> bool {
    let payload = stanza.payload();
    let has = |needle: &[u8]| crate::contains(payload, needle);
    let kind = stanza.message_type();
    let conversational = kind == MessageType::Chat || (kind == MessageType::Normal && has(b"<body"));
    conversational && !has(b"<private xmlns='urn:xmpp:carbons:2'") && !has(b"<no-copy xmlns='urn:xmpp:hints'")
}

/// A `<sent/>` or `<received/>` copy of `stanza` for the resource `to` of `bare`.
fn copy(bare: &str, to: &str, direction: &str, stanza: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(stanza.len() + 192);
    bytes.extend_from_slice(b"<message type='chat'");
    write_attribute(&mut bytes, "from", bare);
    write_attribute(&mut bytes, "to", to);
    bytes.extend_from_slice(format!("><{direction} xmlns='urn:xmpp:carbons:2'>").as_bytes());
    write_forwarded(stanza, None, &mut bytes);
    bytes.extend_from_slice(format!("</{direction}></message>").as_bytes());
    bytes
}

/// Appends `<forwarded xmlns='urn:xmpp:forward:0'>` (XEP-0297) around `stanza`, with
/// a `<delay/>` stamp when given. The stanza gets `xmlns='jabber:client'`: inside
/// `<forwarded/>` the default namespace would otherwise be the forward namespace.
pub(crate) fn write_forwarded(stanza: &[u8], stamp_us: Option<u64>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<forwarded xmlns='urn:xmpp:forward:0'>");
    if let Some(us) = stamp_us {
        out.extend_from_slice(b"<delay xmlns='urn:xmpp:delay'");
        write_attribute(out, "stamp", &crate::delay::format_utc(us));
        out.extend_from_slice(b"/>");
    }
    let name_end = stanza.iter().position(|&b| matches!(b, b' ' | b'/' | b'>' | b'\t' | b'\n' | b'\r'));
    match name_end {
        Some(end) if starling_wire::xml::attribute(stanza, b"xmlns").is_none() => {
            out.extend_from_slice(&stanza[..end]);
            out.extend_from_slice(b" xmlns='jabber:client'");
            out.extend_from_slice(&stanza[end..]);
        }
        _ => out.extend_from_slice(stanza),
    }
    out.extend_from_slice(b"</forwarded>");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chat messages are copied; private, no-copy, groupchat and bodiless normal ones are not.
    #[test]
    fn eligibility() {
        let cases: [(&[u8], bool); 5] = [
            (b"<message type='chat'><body>hi</body></message>", true),
            (b"<message><body>hi</body></message>", true),
            (b"<message type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>", false),
            (b"<message type='groupchat'><body>x</body></message>", false),
            (b"<message type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>", false),
        ];
        for (bytes, expected) in cases {
            assert_eq!(eligible(&Stanza::parse(bytes).unwrap()), expected);
        }
    }

    /// The forwarded stanza is put back in the client namespace.
    #[test]
    fn forwarded_stanzas_keep_the_client_namespace() {
        let mut out = Vec::new();
        write_forwarded(b"<message to='a@x'><body>hi</body></message>", None, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' to='a@x'><body>hi</body></message></forwarded>"
        );
        let mut out = Vec::new();
        write_forwarded(b"<message xmlns='jabber:client'/>", Some(0), &mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("stamp='1970-01-01T00:00:00.000000Z'/><message xmlns='jabber:client'/>"));
    }
}
