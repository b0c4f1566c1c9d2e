//! XEP-0198 stream management elements, sans-IO: what a client sends (`<enable/>`,
//! `<r/>`, `<a/>`, `<resume/>`) parsed, what the server sends written, and the
//! counter arithmetic (section 4: counts are modulo 2^32).

use crate::stanza::write_attribute;

/// XEP-0198's namespace (version 3).
pub const NS_SM: &str = "urn:xmpp:sm:3";

/// The stream feature advertised after authentication (XEP-0198 section 2).
pub const FEATURE: &str = "<sm xmlns='urn:xmpp:sm:3'/>";

/// A stream management element from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `<enable/>` (section 3); `max`: the client's preferred resumption time, seconds.
    Enable { resume: bool, max: Option<u32> },
    /// `<r/>`: answer with `<a h=.../>` (section 4).
    AckRequest,
    /// `<a h=.../>`: the client handled `h` stanzas of ours (section 4).
    Ack { h: u32 },
    /// `<resume/>` (section 5): take over the session `previd`; the client handled
    /// `h` of its stanzas.
    Resume { previd: String, h: u32 },
}

/// Why an element in the stream management namespace was not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SmError {
    #[error("malformed stream management element")]
    Malformed,
    #[error("unknown stream management element")]
    Unknown,
}

/// Parses one top-level element. `None`: not in the stream management namespace.
pub fn parse(element: &[u8]) -> Option<Result<Request, SmError>> {
    // Cheap refusal first: most elements are stanzas.
    memchr::memmem::find(element, NS_SM.as_bytes())?;
    let text = std::str::from_utf8(element).ok()?;
    let doc = roxmltree::Document::parse(text).ok()?;
    let root = doc.root_element();
    if root.tag_name().namespace() != Some(NS_SM) {
        return None;
    }
    let h = || root.attribute("h").and_then(|h| h.parse::<u32>().ok()).ok_or(SmError::Malformed);
    Some(match root.tag_name().name() {
        "enable" => {
            let resume = matches!(root.attribute("resume"), Some("true" | "1"));
            let max = match root.attribute("max") {
                None => None,
                Some(max) => match max.parse::<u32>() {
                    Ok(max) => Some(max),
                    Err(_) => return Some(Err(SmError::Malformed)),
                },
            };
            Ok(Request::Enable { resume, max })
        }
        "r" => Ok(Request::AckRequest),
        "a" => h().map(|h| Request::Ack { h }),
        "resume" => {
            let previd = root.attribute("previd").filter(|p| !p.is_empty() && p.len() <= 256);
            match (previd, h()) {
                (Some(previd), Ok(h)) => Ok(Request::Resume { previd: previd.to_owned(), h }),
                _ => Err(SmError::Malformed),
            }
        }
        _ => Err(SmError::Unknown),
    })
}

/// `<enabled/>` (section 3): `id` when the session can be resumed, with `max`, the
/// resumption time the server allows in seconds.
pub fn write_enabled(id: Option<&str>, max: Option<u32>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<enabled");
    write_attribute(out, "xmlns", NS_SM);
    if let Some(id) = id {
        write_attribute(out, "id", id);
        write_attribute(out, "resume", "true");
    }
    if let Some(max) = max {
        write_attribute(out, "max", &max.to_string());
    }
    out.extend_from_slice(b"/>");
}

/// `<failed/>` with a stanza error condition (`unexpected-request`, `item-not-found`,
/// `bad-request`, `feature-not-implemented`) and, on a failed resumption, the
/// server's `h` when known (section 5).
pub fn write_failed(condition: &str, h: Option<u32>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<failed");
    write_attribute(out, "xmlns", NS_SM);
    if let Some(h) = h {
        write_attribute(out, "h", &h.to_string());
    }
    out.extend_from_slice(b"><");
    out.extend_from_slice(condition.as_bytes());
    out.extend_from_slice(b" xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>");
}

/// `<resumed/>` (section 5): `h` is how many of the client's stanzas the server handled.
pub fn write_resumed(previd: &str, h: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<resumed");
    write_attribute(out, "xmlns", NS_SM);
    write_attribute(out, "previd", previd);
    write_attribute(out, "h", &h.to_string());
    out.extend_from_slice(b"/>");
}

/// `<a h=.../>`.
pub fn write_ack(h: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<a xmlns='urn:xmpp:sm:3' h='");
    out.extend_from_slice(h.to_string().as_bytes());
    out.extend_from_slice(b"'/>");
}

/// `<r/>`.
pub const ACK_REQUEST: &[u8] = b"<r xmlns='urn:xmpp:sm:3'/>";

/// How many stanzas an `<a h=.../>` newly acknowledges, given the last `h` and how
/// many stanzas are unacknowledged (modulo 2^32, section 4): `Some(0)` for an `h`
/// behind the last one (within half the counter's range: a stale or repeated
/// acknowledgement, nothing new); `None` when it claims more than was sent (the
/// `handled-count-too-high` case).
pub fn newly_acked(h: u32, last_h: u32, unacked: usize) -> Option<usize> {
    let delta = h.wrapping_sub(last_h);
    if delta > u32::MAX / 2 {
        return Some(0);
    }
    let delta = delta as usize;
    (delta <= unacked).then_some(delta)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn client_elements_parse() {
        let cases: [(&str, Option<Result<Request, SmError>>); 9] = [
            ("<enable xmlns='urn:xmpp:sm:3'/>", Some(Ok(Request::Enable { resume: false, max: None }))),
            (
                "<enable xmlns='urn:xmpp:sm:3' resume='true' max='60'/>",
                Some(Ok(Request::Enable { resume: true, max: Some(60) })),
            ),
            ("<enable xmlns='urn:xmpp:sm:3' max='x'/>", Some(Err(SmError::Malformed))),
            ("<r xmlns='urn:xmpp:sm:3'/>", Some(Ok(Request::AckRequest))),
            ("<a xmlns='urn:xmpp:sm:3' h='4294967295'/>", Some(Ok(Request::Ack { h: u32::MAX }))),
            ("<a xmlns='urn:xmpp:sm:3' h='-1'/>", Some(Err(SmError::Malformed))),
            (
                "<resume xmlns='urn:xmpp:sm:3' previd='abc' h='3'/>",
                Some(Ok(Request::Resume { previd: "abc".into(), h: 3 })),
            ),
            ("<resume xmlns='urn:xmpp:sm:3' h='3'/>", Some(Err(SmError::Malformed))),
            ("<message xmlns='jabber:client'><body>urn:xmpp:sm:3</body></message>", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text.as_bytes()), expected, "{text}");
        }
    }

    #[test]
    fn server_elements_are_well_formed() {
        let mut out = Vec::new();
        write_enabled(Some("id&1"), Some(300), &mut out);
        write_failed("item-not-found", Some(7), &mut out);
        write_resumed("id&1", 5, &mut out);
        write_ack(9, &mut out);
        out.extend_from_slice(ACK_REQUEST);
        let text = format!("<x>{}</x>", String::from_utf8(out).unwrap());
        let doc = roxmltree::Document::parse(&text).expect("well-formed");
        let names: Vec<_> = doc.root_element().children().map(|c| c.tag_name().name().to_owned()).collect();
        assert_eq!(names, ["enabled", "failed", "resumed", "a", "r"]);
        assert!(text.contains("previd='id&amp;1' h='5'"));
    }

    /// Section 4: counters wrap at 2^32.
    #[test]
    fn acks_count_modulo_2_to_the_32() {
        assert_eq!(newly_acked(2, u32::MAX - 1, 10), Some(4));
        assert_eq!(newly_acked(5, 5, 0), Some(0));
        assert_eq!(newly_acked(6, 5, 0), None);
        // Regression (breaker): an h behind the last one was "too high" and ended the
        // session; it acknowledges nothing new.
        assert_eq!(newly_acked(4, 5, 3), Some(0));
        assert_eq!(newly_acked(0, 4, 2), Some(0));
        assert_eq!(newly_acked(u32::MAX, 0, 10), Some(0));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut element = b"<a xmlns='urn:xmpp:sm:3' ".to_vec();
            element.extend(bytes);
            let _ = parse(&element);
        }
    }
}
