//! Message carbons (XEP-0280 v2, `urn:xmpp:carbons:2`): a resource that enabled
//! carbons gets a copy of every chat message its account sends or receives through
//! another resource, wrapped in `<sent/>` or `<received/>`.
//!
//! Copies go to the account's resources bound on this node (all of them live on its
//! home core). Messages marked `<private xmlns='urn:xmpp:carbons:2'/>` or
//! `<no-copy xmlns='urn:xmpp:hints'/>` are not copied.

use starling_wire::stanza::{write_attribute, MessageType, Stanza};

use crate::core::Core;
use crate::sessions::Session;

/// Whether `stanza` is eligible for carbons (XEP-0280 section 6).
pub(crate) fn eligible(stanza: &Stanza<'_>) -> bool {
    let payload = stanza.payload();
    let has = |needle: &[u8]| payload.windows(needle.len()).any(|w| w == needle);
    let kind = stanza.message_type();
    let conversational = kind == MessageType::Chat || (kind == MessageType::Normal && has(b"<body"));
    conversational && !has(b"<private xmlns='urn:xmpp:carbons:2'") && !has(b"<no-copy xmlns='urn:xmpp:hints'")
}

/// Copies a message the session `sender` (a full JID) sent to its other resources.
pub(crate) fn sent(core: &Core, sender: &str, stamped: &[u8]) {
    let bare = sender.split('/').next().unwrap_or(sender);
    copy(core, bare, "sent", stamped, |session| session.jid.as_str() != sender);
}

/// Copies a message delivered to the account `bare` to its resources that enabled
/// carbons, except those `delivered` says got the message itself.
pub(crate) fn received(core: &Core, bare: &str, stanza: &[u8], delivered: impl Fn(&Session) -> bool) {
    copy(core, bare, "received", stanza, |session| !delivered(session));
}

fn copy(core: &Core, bare: &str, direction: &str, stanza: &[u8], wanted: impl Fn(&Session) -> bool) {
    for session in core.sessions.borrow().sessions(bare) {
        if !session.carbons || !session.available || !wanted(session) {
            continue;
        }
        let mut bytes = Vec::with_capacity(stanza.len() + 192);
        bytes.extend_from_slice(b"<message type='chat'");
        write_attribute(&mut bytes, "from", bare);
        write_attribute(&mut bytes, "to", session.jid.as_str());
        bytes.extend_from_slice(format!("><{direction} xmlns='urn:xmpp:carbons:2'>").as_bytes());
        write_forwarded(stanza, None, &mut bytes);
        bytes.extend_from_slice(format!("</{direction}></message>").as_bytes());
        core.push(&session.mailbox, &bytes);
    }
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
