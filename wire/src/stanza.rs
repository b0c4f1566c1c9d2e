//! Stanzas for routing without a tree (RFC 6120 section 8): the kind, the `to`, `from`,
//! `type` and `id` attributes as slices of the received bytes, and start-tag rewriting
//! to stamp the sender's `from`.
//!
//! A routed stanza costs one scan of its start tag ([`Stanza::parse`]) and one copy into
//! the outgoing buffer ([`Stanza::write_stamped`]); the body is never parsed.

use crate::error::StanzaError;
use crate::xml::{self, Attribute, StartTag};

/// The three stanza kinds (RFC 6120 section 8.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
}

impl StanzaKind {
    pub fn name(self) -> &'static str {
        match self {
            StanzaKind::Message => "message",
            StanzaKind::Presence => "presence",
            StanzaKind::Iq => "iq",
        }
    }
}

/// Why a top-level element is not a usable stanza.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StanzaParseError {
    /// Not `message`, `presence` or `iq` in `jabber:client`.
    #[error("not a stanza")]
    NotAStanza,
    /// The start tag could not be read (only for bytes the framer did not check).
    #[error("malformed start tag")]
    Malformed,
}

/// RFC 6121 section 5.2.2 message types; unknown values count as `Normal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Normal,
    Chat,
    Groupchat,
    Headline,
    Error,
}

/// RFC 6121 section 4.7.1 presence types; absent means available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceType {
    Available,
    Unavailable,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Probe,
    Error,
}

/// RFC 6120 section 8.2.3 IQ types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqType {
    Get,
    Set,
    Result,
    Error,
}

/// A received stanza: its bytes and the routing attributes found in its start tag.
#[derive(Clone, Copy, Debug)]
pub struct Stanza<'a> {
    pub bytes: &'a [u8],
    pub kind: StanzaKind,
    pub tag: StartTag<'a>,
    pub to: Option<Attribute<'a>>,
    pub from: Option<Attribute<'a>>,
    pub id: Option<Attribute<'a>>,
    pub type_raw: Option<&'a [u8]>,
}

impl<'a> Stanza<'a> {
    /// Reads the start tag of a top-level element the framer yielded.
    pub fn parse(bytes: &'a [u8]) -> Result<Stanza<'a>, StanzaParseError> {
        let kind = match bytes.get(1..3) {
            Some(b"me") => StanzaKind::Message,
            Some(b"pr") => StanzaKind::Presence,
            Some(b"iq") => StanzaKind::Iq,
            _ => return Err(StanzaParseError::NotAStanza),
        };
        let (mut to, mut from, mut id, mut type_raw, mut foreign) = (None, None, None, None, false);
        // A repeated routing attribute is refused here too, not only by the framer:
        // stamping replaces one `from`, and a second one left behind would be the
        // one read after a re-parse (found by the stanza fuzz target).
        let mut repeated = false;
        let tag = xml::start_tag_with(bytes, |attribute| {
            let slot_taken = match attribute.name {
                b"to" => to.replace(attribute).is_some(),
                b"from" => from.replace(attribute).is_some(),
                b"id" => id.replace(attribute).is_some(),
                b"type" => type_raw.replace(attribute.raw_value).is_some(),
                b"xmlns" => {
                    foreign |= attribute.raw_value != b"jabber:client";
                    false
                }
                _ => false,
            };
            repeated |= slot_taken;
        })
        .ok_or(StanzaParseError::Malformed)?;
        if repeated {
            return Err(StanzaParseError::Malformed);
        }
        if tag.name != kind.name().as_bytes() || foreign {
            return Err(StanzaParseError::NotAStanza);
        }
        Ok(Stanza { bytes, kind, tag, to, from, id, type_raw })
    }

    pub fn message_type(&self) -> MessageType {
        match self.type_raw {
            Some(b"chat") => MessageType::Chat,
            Some(b"groupchat") => MessageType::Groupchat,
            Some(b"headline") => MessageType::Headline,
            Some(b"error") => MessageType::Error,
            _ => MessageType::Normal,
        }
    }

    /// `None` for a type RFC 6121 does not define (answered with `bad-request`).
    pub fn presence_type(&self) -> Option<PresenceType> {
        Some(match self.type_raw {
            None => PresenceType::Available,
            Some(b"unavailable") => PresenceType::Unavailable,
            Some(b"subscribe") => PresenceType::Subscribe,
            Some(b"subscribed") => PresenceType::Subscribed,
            Some(b"unsubscribe") => PresenceType::Unsubscribe,
            Some(b"unsubscribed") => PresenceType::Unsubscribed,
            Some(b"probe") => PresenceType::Probe,
            Some(b"error") => PresenceType::Error,
            Some(_) => return None,
        })
    }

    /// `None` for a missing or unknown type (answered with `bad-request`).
    pub fn iq_type(&self) -> Option<IqType> {
        match self.type_raw? {
            b"get" => Some(IqType::Get),
            b"set" => Some(IqType::Set),
            b"result" => Some(IqType::Result),
            b"error" => Some(IqType::Error),
            _ => None,
        }
    }

    /// Whether this stanza is itself an error (never answered with an error,
    /// RFC 6120 section 8.3.1).
    pub fn is_error(&self) -> bool {
        self.type_raw == Some(b"error")
    }

    /// The raw bytes between the start tag and the end tag (empty for `<x/>`).
    pub fn payload(&self) -> &'a [u8] {
        if self.tag.empty {
            return &[];
        }
        let close = self.kind.name().len() + 3;
        let end = self.bytes.len().saturating_sub(close).max(self.tag.end);
        &self.bytes[self.tag.end..end]
    }

    /// Appends this stanza to `out` with `from` set to `from` (RFC 6120 section
    /// 8.1.2.1: the server stamps the sender's full JID, replacing any value the client
    /// gave). The rest of the bytes are copied as they are.
    pub fn write_stamped(&self, from: &str, out: &mut Vec<u8>) {
        let name_end = 1 + self.tag.name.len();
        out.reserve(self.bytes.len() + from.len() + 16);
        out.extend_from_slice(&self.bytes[..name_end]);
        out.extend_from_slice(b" from='");
        xml::escape(from, out);
        out.push(b'\'');
        match self.from {
            Some(old) => {
                // Drop the whitespace before the old attribute along with it.
                let before = &self.bytes[name_end..old.start];
                let kept = before.len() - before.iter().rev().take_while(|b| b.is_ascii_whitespace()).count();
                out.extend_from_slice(&before[..kept]);
                out.extend_from_slice(&self.bytes[old.end..]);
            }
            None => out.extend_from_slice(&self.bytes[name_end..]),
        }
    }

    /// Appends this stanza with `from` and `to` both set (replacing any given): for
    /// presence the server broadcasts on a user's behalf to each recipient.
    pub fn write_addressed(&self, from: &str, to: &str, out: &mut Vec<u8>) {
        let name_end = 1 + self.tag.name.len();
        out.reserve(self.bytes.len() + from.len() + to.len() + 24);
        out.extend_from_slice(&self.bytes[..name_end]);
        write_attribute(out, "from", from);
        write_attribute(out, "to", to);
        let mut skip: Vec<(usize, usize)> = [self.from, self.to].iter().flatten().map(|a| (a.start, a.end)).collect();
        skip.sort_unstable();
        let mut at = name_end;
        for (start, end) in skip {
            let before = &self.bytes[at..start];
            let kept = before.len() - before.iter().rev().take_while(|b| b.is_ascii_whitespace()).count();
            out.extend_from_slice(&before[..kept]);
            at = end;
        }
        out.extend_from_slice(&self.bytes[at..]);
    }

    /// Appends the error reply to this stanza: same kind and id, `to` and `from`
    /// swapped (`from` is the entity that could not handle it; empty means the user's
    /// own server, and is left out), `type='error'`.
    pub fn write_error_reply(&self, from: &str, to: &str, error: &StanzaError, out: &mut Vec<u8>) {
        let name = self.kind.name().as_bytes();
        out.push(b'<');
        out.extend_from_slice(name);
        if !from.is_empty() {
            write_attribute(out, "from", from);
        }
        write_attribute(out, "to", to);
        out.extend_from_slice(b" type='error'");
        if let Some(id) = self.id {
            write_raw_attribute(out, "id", id.raw_value);
        }
        out.push(b'>');
        error.write(out);
        out.extend_from_slice(b"</");
        out.extend_from_slice(name);
        out.push(b'>');
    }

    /// Appends `<iq type='result' id=.. from=.. to=..>payload</iq>` answering this IQ.
    pub fn write_iq_result(&self, from: &str, to: &str, payload: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(b"<iq type='result'");
        if let Some(id) = self.id {
            write_raw_attribute(out, "id", id.raw_value);
        }
        if !from.is_empty() {
            write_attribute(out, "from", from);
        }
        write_attribute(out, "to", to);
        if payload.is_empty() {
            out.extend_from_slice(b"/>");
        } else {
            out.push(b'>');
            out.extend_from_slice(payload);
            out.extend_from_slice(b"</iq>");
        }
    }
}

/// Appends ` name='escaped value'`.
/// Appends ` name='raw'` for an attribute value copied from a received start tag (its
/// entities stay as they were). A value that was in double quotes may hold `'`, which
/// would end our single-quoted one: it is written as `&apos;`.
fn write_raw_attribute(out: &mut Vec<u8>, name: &str, raw: &[u8]) {
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"='");
    for &byte in raw {
        if byte == b'\'' {
            out.extend_from_slice(b"&apos;");
        } else {
            out.push(byte);
        }
    }
    out.push(b'\'');
}

pub fn write_attribute(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"='");
    xml::escape(value, out);
    out.push(b'\'');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StanzaErrorCondition;

    /// Regression (issue 9 review, found reading the code for peer-input hazards): an
    /// `id` in double quotes holding `'` was copied raw into a single-quoted attribute
    /// of the error reply, so `id="x' to='victim' from='boss"` made the bounce a new
    /// stanza to the victim "from boss". The reply keeps the id as one attribute.
    #[test]
    fn an_id_cannot_inject_attributes_into_replies() {
        let forged = br#"<message id="x' type='chat' to='victim@host' from='boss@host" to='ghost@host'><body>hi</body></message>"#;
        let stanza = Stanza::parse(forged).unwrap();
        let mut reply = Vec::new();
        stanza.write_error_reply(
            "ghost@host",
            "mallory@host/r",
            &crate::error::StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
            &mut reply,
        );
        let parsed = Stanza::parse(&reply).unwrap();
        assert_eq!(parsed.to.and_then(|t| t.value()).as_deref(), Some("mallory@host/r"));
        assert_eq!(parsed.from.and_then(|f| f.value()).as_deref(), Some("ghost@host"));
        assert!(parsed.is_error());
        assert_eq!(
            parsed.id.and_then(|i| i.value()).as_deref(),
            Some("x' type='chat' to='victim@host' from='boss@host")
        );
        let document = roxmltree::Document::parse(std::str::from_utf8(&reply).unwrap()).unwrap();
        assert_eq!(document.root_element().attributes().filter(|a| a.name() == "to").count(), 1);
        let iq = Stanza::parse(br#"<iq type="get" id="a'b"><ping xmlns='urn:xmpp:ping'/></iq>"#).unwrap();
        let mut result = Vec::new();
        iq.write_iq_result("", "me@host/r", b"", &mut result);
        assert_eq!(Stanza::parse(&result).unwrap().id.and_then(|i| i.value()).as_deref(), Some("a'b"));
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    /// The routing attributes are found without a tree.
    #[test]
    fn parses_routing_attributes() {
        let bytes = b"<message to='bob@x' id='a1' type='chat'><body>hi</body></message>";
        let stanza = Stanza::parse(bytes).unwrap();
        assert_eq!(stanza.kind, StanzaKind::Message);
        assert_eq!(stanza.to.unwrap().value().unwrap(), "bob@x");
        assert_eq!(stanza.message_type(), MessageType::Chat);
        assert_eq!(stanza.payload(), b"<body>hi</body>");
        assert!(stanza.from.is_none());
        assert_eq!(
            Stanza::parse(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").unwrap_err(),
            StanzaParseError::NotAStanza
        );
        assert_eq!(Stanza::parse(b"<iq xmlns='jabber:server'/>").unwrap_err(), StanzaParseError::NotAStanza);
    }

    /// Stamping adds `from` and drops a forged one; the rest is byte for byte the same.
    #[test]
    fn stamps_from_replacing_a_forged_one() {
        let forged = b"<message from='evil@x/y' to='bob@x'><body>hi</body></message>";
        let mut out = Vec::new();
        Stanza::parse(forged).unwrap().write_stamped("alice@x/phone", &mut out);
        assert_eq!(text(out), "<message from='alice@x/phone' to='bob@x'><body>hi</body></message>");
        let mut out = Vec::new();
        Stanza::parse(b"<presence/>").unwrap().write_stamped("a'b@x/r", &mut out);
        assert_eq!(text(out), "<presence from='a&apos;b@x/r'/>");
    }

    /// Addressing replaces both `from` and `to`, wherever they were.
    #[test]
    fn addresses_from_and_to() {
        let stanza = Stanza::parse(b"<presence to='x@y' id='1' from='a@b'><show>away</show></presence>").unwrap();
        let mut out = Vec::new();
        stanza.write_addressed("me@x/r", "you@x/s", &mut out);
        assert_eq!(text(out), "<presence from='me@x/r' to='you@x/s' id='1'><show>away</show></presence>");
        let mut out = Vec::new();
        Stanza::parse(b"<presence/>").unwrap().write_addressed("a@x/r", "b@x", &mut out);
        assert_eq!(text(out), "<presence from='a@x/r' to='b@x'/>");
    }

    /// Regression (found by the stanza fuzz target in CI): with two `from`
    /// attributes, stamping replaced the last and the first was read back after a
    /// re-parse. A repeated routing attribute is no stanza.
    #[test]
    fn repeated_routing_attributes_are_malformed() {
        for text in [
            "<message from='a@b' from='c@d'/>",
            "<message to='a@b' to='c@d'/>",
            "<iq id='1' type='get' id='2'/>",
            "<presence type='probe' type='subscribe'/>",
        ] {
            assert_eq!(Stanza::parse(text.as_bytes()).unwrap_err(), StanzaParseError::Malformed, "{text}");
        }
        assert!(Stanza::parse(b"<message from='a@b' xml:lang='en' to='c@d'/>").is_ok());
    }

    /// Golden: an error reply keeps the id and swaps the addresses.
    #[test]
    fn writes_error_reply() {
        let stanza = Stanza::parse(b"<iq type='get' id='q&amp;1' to='nobody@x'><query/></iq>").unwrap();
        let mut out = Vec::new();
        stanza.write_error_reply(
            "nobody@x",
            "alice@x/r",
            &StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
            &mut out,
        );
        assert_eq!(
            text(out),
            "<iq from='nobody@x' to='alice@x/r' type='error' id='q&amp;1'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
        assert_eq!(stanza.iq_type(), Some(IqType::Get));
    }

    /// Types: unknown message types are normal; unknown presence and IQ types are refused.
    #[test]
    fn reads_types() {
        assert_eq!(Stanza::parse(b"<message type='x'/>").unwrap().message_type(), MessageType::Normal);
        assert_eq!(Stanza::parse(b"<presence type='x'/>").unwrap().presence_type(), None);
        assert_eq!(Stanza::parse(b"<presence/>").unwrap().presence_type(), Some(PresenceType::Available));
        assert_eq!(Stanza::parse(b"<iq/>").unwrap().iq_type(), None);
    }
}
