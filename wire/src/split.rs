//! Top-level elements of XML the server wrote (its own output, which also carries
//! other clients' stanzas, checked by the framer when they came in): where each ends,
//! and its name. WebSocket framing sends one element per message (RFC 7395), and
//! stream management counts the stanzas among them (XEP-0198). Property-tested
//! against arbitrary bytes through both users.

use crate::c2s::{NS_CLIENT, NS_STREAMS};
use crate::stanza::write_attribute;

/// A top-level piece of our output.
#[derive(Debug, PartialEq, Eq)]
pub enum Unit {
    /// Whitespace, an XML declaration or stray text: nothing to send.
    Skip,
    /// `<stream:stream ...>`.
    Header,
    /// `</stream:stream>`.
    Close,
    /// A whole element; `name_end` is where its name ends in the start tag;
    /// `has_xmlns`: it declares the namespace of its prefix (none, or `stream:`).
    Element { name_end: usize, has_xmlns: bool, stream_prefix: bool },
}

impl Unit {
    /// Whether this is a stanza (RFC 6120 section 8: `message`, `presence` or
    /// `iq` in the stream's default namespace); `bytes` is the unit's.
    pub fn is_stanza(&self, bytes: &[u8]) -> bool {
        match *self {
            Unit::Element { name_end, stream_prefix: false, .. } => {
                matches!(bytes.get(1..name_end), Some(b"message" | b"presence" | b"iq"))
            }
            _ => false,
        }
    }

    /// Appends an element unit's `bytes` standing alone outside the stream (one
    /// WebSocket message, or a child of a BOSH `<body/>`): the namespace the stream
    /// header implied is declared on it (`xmlns='jabber:client'`, and with
    /// `declare_stream` the `stream:` prefix). Other units append nothing.
    pub fn write_standalone(&self, bytes: &[u8], declare_stream: bool, out: &mut Vec<u8>) {
        let Unit::Element { name_end, has_xmlns, stream_prefix } = *self else { return };
        let (head, tail) = bytes.split_at(name_end.min(bytes.len()));
        out.extend_from_slice(head);
        match (stream_prefix, has_xmlns) {
            (_, true) => {}
            (true, false) if declare_stream => write_attribute(out, "xmlns:stream", NS_STREAMS),
            (true, false) => {}
            (false, false) => write_attribute(out, "xmlns", NS_CLIENT),
        }
        out.extend_from_slice(tail);
    }
}

/// The next top-level unit of `bytes` and its length, or `None` when `bytes` ends
/// inside one (or is empty).
pub fn next_unit(bytes: &[u8]) -> Option<(Unit, usize)> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    if start > 0 {
        return Some((Unit::Skip, start));
    }
    let first = *bytes.first()?;
    if first != b'<' {
        let end = memchr::memchr(b'<', bytes).unwrap_or(bytes.len());
        return Some((Unit::Skip, end));
    }
    if bytes.starts_with(b"</stream:stream") {
        let end = memchr::memchr(b'>', bytes)?;
        return Some((Unit::Close, end + 1));
    }
    let tag = scan_tag(bytes, 0)?;
    match tag.kind {
        TagKind::Other => return Some((Unit::Skip, tag.end)),
        // A stray end tag at the top level: not ours to send.
        TagKind::End => return Some((Unit::Skip, tag.end)),
        _ => {}
    }
    let name_end = bytes.get(1..tag.end)?.iter().position(|b| b.is_ascii_whitespace() || *b == b'/' || *b == b'>')? + 1;
    let name = bytes.get(1..name_end)?;
    if name == b"stream:stream" {
        return Some((Unit::Header, tag.end));
    }
    let attributes = bytes.get(name_end..tag.end)?;
    let stream_prefix = name.starts_with(b"stream:");
    let has_xmlns = declares(attributes, if stream_prefix { b"xmlns:stream" } else { b"xmlns" });
    let unit = Unit::Element { name_end, has_xmlns, stream_prefix };
    if tag.kind == TagKind::Empty {
        return Some((unit, tag.end));
    }
    let mut depth = 1usize;
    let mut at = tag.end;
    while depth > 0 {
        at += memchr::memchr(b'<', bytes.get(at..)?)?;
        let inner = scan_tag(bytes, at)?;
        match inner.kind {
            TagKind::Start => depth += 1,
            TagKind::End => depth -= 1,
            TagKind::Empty | TagKind::Other => {}
        }
        at = inner.end;
    }
    Some((unit, at))
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum TagKind {
    Start,
    End,
    Empty,
    /// A comment, CDATA section or processing instruction.
    Other,
}

struct Tag {
    kind: TagKind,
    /// Index just past the tag's `>`.
    end: usize,
}

/// The markup starting at `bytes[at] == b'<'`; `None` when it is not complete.
fn scan_tag(bytes: &[u8], at: usize) -> Option<Tag> {
    let rest = bytes.get(at..)?;
    let special: [(&[u8], &[u8]); 3] = [(b"<!--", b"-->"), (b"<![CDATA[", b"]]>"), (b"<?", b"?>")];
    for (open, close) in special {
        if rest.starts_with(open) {
            let body = &rest[open.len()..];
            let end = memchr::memmem::find(body, close)?;
            return Some(Tag { kind: TagKind::Other, end: at + open.len() + end + close.len() });
        }
    }
    let mut quote: Option<u8> = None;
    for (i, &b) in rest.iter().enumerate().skip(1) {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => {
                let kind = if rest.get(1) == Some(&b'/') {
                    TagKind::End
                } else if rest.get(i - 1) == Some(&b'/') {
                    TagKind::Empty
                } else {
                    TagKind::Start
                };
                return Some(Tag { kind, end: at + i + 1 });
            }
            None => {}
        }
    }
    None
}

/// Whether a start tag's attribute part has an attribute called `name` (`xmlns`,
/// say), looking only outside quoted values.
fn declares(attributes: &[u8], name: &[u8]) -> bool {
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < attributes.len() {
        let b = attributes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b.is_ascii_whitespace() => {
                let rest = attributes.get(i + 1..).unwrap_or_default();
                let after = rest.strip_prefix(name).and_then(|after| after.iter().find(|b| !b.is_ascii_whitespace()));
                if after == Some(&b'=') {
                    return true;
                }
            }
            None => {}
        }
        i += 1;
    }
    false
}
