//! Small XML helpers for bytes the framer already checked: escaping, unescaping,
//! and walking the attributes of a start tag without building a tree.
//!
//! These functions never panic on any input (fuzzed through the stanza decoder); on
//! bytes the framer would have refused they return `None`/errors instead.

use std::borrow::Cow;

/// Whether the elements of `bytes` nest deeper than `depth_max`, or one start tag
/// holds more than `attributes_max` attributes, by a scan that never undercounts:
/// comments, CDATA sections and processing instructions are skipped whole (their
/// end searched after their opening), quotes are honoured inside tags, and anything
/// unexpected counts as an opening. Run before handing unframed input (a BOSH body,
/// a WebSocket `<open/>`) to `roxmltree`, whose parser recurses per level and
/// checks attributes for duplicates pairwise: found by breakers, a body of 20,000
/// nested elements overflowed a core thread's stack, `<!-->` hid closing tags from
/// an earlier version of this scan, and thousands of attributes on one element
/// kept a core busy.
pub fn exceeds(bytes: &[u8], depth_max: usize, attributes_max: usize) -> bool {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(offset) = bytes.get(at..).and_then(|rest| memchr::memchr(b'<', rest)) {
        at += offset;
        let rest = bytes.get(at..).unwrap_or_default();
        // The end of a construct opened by `open`, searched after the opening.
        let skip = |open: &[u8], end: &[u8]| {
            let body = rest.get(open.len()..).unwrap_or_default();
            memchr::memmem::find(body, end).map(|i| at + open.len() + i + end.len())
        };
        let next = if rest.starts_with(b"<!--") {
            skip(b"<!--", b"-->")
        } else if rest.starts_with(b"<![CDATA[") {
            skip(b"<![CDATA[", b"]]>")
        } else if rest.starts_with(b"<?") {
            skip(b"<?", b"?>")
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            memchr::memchr(b'>', rest).map(|i| at + i + 1)
        } else {
            // A start tag (or a declaration: counted as one, which only overcounts).
            depth += 1;
            if depth > depth_max {
                return true;
            }
            let mut quote = None;
            let mut attributes = 0usize;
            let mut end = None;
            for (i, &b) in rest.iter().enumerate().skip(1) {
                match (quote, b) {
                    (Some(q), _) if b == q => quote = None,
                    (Some(_), _) => {}
                    (None, b'\'' | b'"') => quote = Some(b),
                    (None, b'=') => {
                        attributes += 1;
                        if attributes > attributes_max {
                            return true;
                        }
                    }
                    (None, b'>') => {
                        if rest.get(i.wrapping_sub(1)) == Some(&b'/') {
                            depth -= 1;
                        }
                        end = Some(at + i + 1);
                        break;
                    }
                    (None, _) => {}
                }
            }
            end
        };
        match next {
            Some(next) => at = next,
            None => return false,
        }
    }
    false
}

/// Appends `text` escaped for both character data and attribute values (either quote).
pub fn escape(text: &str, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    let mut last = 0;
    for (at, &b) in bytes.iter().enumerate() {
        let replacement: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\'' => b"&apos;",
            b'"' => b"&quot;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[last..at]);
        out.extend_from_slice(replacement);
        last = at + 1;
    }
    out.extend_from_slice(&bytes[last..]);
}

/// `escape` into a new `String`.
pub fn escaped(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    escape(text, &mut out);
    // Invariant: escaping replaces ASCII bytes with ASCII, so UTF-8 stays UTF-8.
    String::from_utf8(out).expect("escaping keeps UTF-8")
}

/// Resolves the five predefined entities and character references in `raw`.
/// Returns `None` for anything else, or for bytes that are not UTF-8.
pub fn unescape(raw: &[u8]) -> Option<Cow<'_, str>> {
    let text = std::str::from_utf8(raw).ok()?;
    if !text.contains('&') {
        return Some(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semicolon = after.find(';')?;
        let entity = &after[..semicolon];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "apos" => '\'',
            "quot" => '"',
            _ => {
                let (digits, radix) = match entity.strip_prefix("#x") {
                    Some(hex) => (hex, 16),
                    None => (entity.strip_prefix('#')?, 10),
                };
                char::from_u32(u32::from_str_radix(digits, radix).ok()?)?
            }
        };
        out.push(c);
        rest = &after[semicolon + 1..];
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

/// One attribute of a start tag: its name, raw (still escaped) value, and the byte
/// range of the whole `name='value'` in the tag (for removing or replacing it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub name: &'a [u8],
    pub raw_value: &'a [u8],
    pub start: usize,
    pub end: usize,
}

impl<'a> Attribute<'a> {
    /// The unescaped value (borrowed when it has no references).
    pub fn value(&self) -> Option<Cow<'a, str>> {
        unescape(self.raw_value)
    }
}

/// The parts of a start tag: the element name, where its attributes begin, where the
/// tag ends (index after `>`), and whether it is self-closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartTag<'a> {
    pub name: &'a [u8],
    pub attributes_start: usize,
    pub end: usize,
    pub empty: bool,
}

/// Reads the start tag at the beginning of `element`.
pub fn start_tag(element: &[u8]) -> Option<StartTag<'_>> {
    start_tag_with(element, |_| {})
}

/// Reads the start tag at the beginning of `element`, handing each attribute to
/// `visit` on the way (one pass for both).
pub fn start_tag_with<'a>(element: &'a [u8], mut visit: impl FnMut(Attribute<'a>)) -> Option<StartTag<'a>> {
    if element.first() != Some(&b'<') {
        return None;
    }
    let name_len = element[1..].iter().position(|&b| b == b'>' || b == b'/' || is_space(b))?;
    let name = &element[1..1 + name_len];
    if name.is_empty() {
        return None;
    }
    let attributes_start = 1 + name_len;
    let mut at = attributes_start;
    for attribute in Attributes::new(element, at) {
        at = attribute.end;
        visit(attribute);
    }
    at += element.get(at..)?.iter().take_while(|&&b| is_space(b)).count();
    match element.get(at..)? {
        [b'/', b'>', ..] => Some(StartTag { name, attributes_start, end: at + 2, empty: true }),
        [b'>', ..] => Some(StartTag { name, attributes_start, end: at + 1, empty: false }),
        _ => None,
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Iterates over the attributes of a start tag, starting at `at` (just after the name).
/// Stops at the end of the tag or at the first malformed byte.
pub struct Attributes<'a> {
    tag: &'a [u8],
    at: usize,
}

impl<'a> Attributes<'a> {
    pub fn new(tag: &'a [u8], at: usize) -> Attributes<'a> {
        Attributes { tag, at }
    }

    /// The attributes of the start tag at the beginning of `element`.
    pub fn of(element: &'a [u8]) -> Attributes<'a> {
        let at = element.iter().position(|&b| b == b'>' || b == b'/' || is_space(b)).unwrap_or(element.len());
        Attributes { tag: element, at }
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;

    fn next(&mut self) -> Option<Attribute<'a>> {
        let tag = self.tag;
        let mut at = self.at;
        while at < tag.len() && is_space(tag[at]) {
            at += 1;
        }
        let start = at;
        while at < tag.len() && !is_space(tag[at]) && !matches!(tag[at], b'=' | b'>' | b'/') {
            at += 1;
        }
        let name = &tag[start..at];
        if name.is_empty() {
            return None;
        }
        while at < tag.len() && is_space(tag[at]) {
            at += 1;
        }
        if tag.get(at) != Some(&b'=') {
            return None;
        }
        at += 1;
        while at < tag.len() && is_space(tag[at]) {
            at += 1;
        }
        let quote = *tag.get(at).filter(|&&q| q == b'\'' || q == b'"')?;
        let value_start = at + 1;
        // Values are short: a plain loop beats a vectorised search's setup cost.
        let value_len = tag.get(value_start..)?.iter().position(|&b| b == quote)?;
        let end = value_start + value_len + 1;
        self.at = end;
        Some(Attribute { name, raw_value: &tag[value_start..value_start + value_len], start, end })
    }
}

/// The value of attribute `name` on the start tag at the beginning of `element`.
pub fn attribute<'a>(element: &'a [u8], name: &[u8]) -> Option<Attribute<'a>> {
    Attributes::of(element).find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A never-undercounting scan: wherever roxmltree finds depth D, the scan says
    /// every max below D is exceeded (comments, CDATA, PIs and quoted `>`/`/>` included).
    #[test]
    fn depth_scan_never_undercounts() {
        use proptest::prelude::*;
        let tokens = prop::sample::select(vec![
            "<a>",
            "</a>",
            "<a/>",
            "<a x='/>'>",
            "<a x=\"'>\">",
            "<!--<a>-->",
            "<!--</a></a>-->",
            "<![CDATA[</a></a><a>]]>",
            "t>",
            "<?pi </a>?>",
            "<b y='&gt;'/>",
        ]);
        proptest!(|(doc in prop::collection::vec(tokens, 0..40))| {
            let text = format!("<r>{}</r>", doc.concat());
            if let Ok(parsed) = roxmltree::Document::parse(&text) {
                let depth = parsed.descendants().filter(|n| n.is_element()).map(|n| n.ancestors().filter(|a| a.is_element()).count()).max().unwrap_or(0);
                for max in 0..depth {
                    prop_assert!(exceeds(text.as_bytes(), max, usize::MAX), "depth {} not seen over {}: {}", depth, max, text);
                }
                prop_assert!(!exceeds(text.as_bytes(), depth + 8, usize::MAX), "overcounted: {}", text);
            }
        });
    }

    /// Escaping and unescaping are inverse for any text.
    #[test]
    fn escape_round_trips() {
        for text in ["plain", "a<b>&'\"c", "☃ &amp; literal", ""] {
            let mut out = Vec::new();
            escape(text, &mut out);
            assert_eq!(unescape(&out).unwrap(), text);
        }
        assert_eq!(unescape(b"&#x263A;&#65;").unwrap(), "☺A");
        assert_eq!(unescape(b"&bogus;"), None);
        assert_eq!(unescape(b"&#xD800;"), None);
    }

    /// Attributes come out with their spans, in either quote style.
    #[test]
    fn walks_attributes() {
        let tag = b"<message to='a@b' from=\"c&amp;d\" type = 'chat'><body/></message>";
        let names: Vec<&[u8]> = Attributes::of(tag).map(|a| a.name).collect();
        assert_eq!(names, vec![&b"to"[..], b"from", b"type"]);
        let from = attribute(tag, b"from").unwrap();
        assert_eq!(from.value().unwrap(), "c&d");
        assert_eq!(&tag[from.start..from.end], b"from=\"c&amp;d\"");
        let start = start_tag(tag).unwrap();
        assert_eq!(start.name, b"message");
        assert_eq!(&tag[..start.end], b"<message to='a@b' from=\"c&amp;d\" type = 'chat'>");
        assert!(!start.empty);
        let empty = start_tag(b"<presence type='unavailable'/>").unwrap();
        assert!(empty.empty);
        assert_eq!(empty.end, 30);
    }

    /// Malformed tags give `None`, not a panic.
    #[test]
    fn malformed_tags_are_none() {
        assert_eq!(start_tag(b""), None);
        assert_eq!(start_tag(b"<"), None);
        assert_eq!(start_tag(b"<a b='x"), None);
        assert_eq!(start_tag(b"<a b=x>"), None);
    }
}
