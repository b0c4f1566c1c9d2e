//! The framer's resumable lexer: a byte-level state machine over one top-level unit
//! (XML declaration, stream header, element or stream close).
//!
//! `run` scans `data` (which starts at the unit's first byte) from the saved position
//! and either completes the unit or saves its state at the end of `data`. Nothing is
//! ever scanned twice, so a stanza trickled in one byte per read costs the same as one
//! read in one piece.

use super::scan::{self, find_cdata_stop, find_text_stop, find_value_stop};
use super::{Framer, FramerError, Limit, Phase, Restricted, Syntax};
use crate::limits::{ENTITY_BYTES_MAX, XML_DECLARATION_BYTES_MAX};

/// The lexical state, saved between reads. Offsets are relative to the unit's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lex {
    /// No unit in progress; the next byte must be `<`.
    Between,
    /// After `<`.
    Open,
    /// In an element name that started at `start`.
    StartName { start: u32 },
    /// Inside a start tag; `spaced` once whitespace separates us from the last item.
    InTag { spaced: bool },
    /// In an attribute name that started at `start`.
    AttributeName { start: u32 },
    /// After an attribute name, expecting `=`.
    ExpectEquals,
    /// After `=`, expecting a quote.
    ExpectValue,
    /// Inside an attribute value quoted with `quote`.
    Value { quote: u8 },
    /// After `/` in a start tag, expecting `>`.
    ExpectEmptyClose,
    /// In an end tag's name that started at `start`.
    EndName { start: u32 },
    /// After an end tag's name, expecting `>`.
    ExpectEndClose,
    /// In character data.
    Content,
    /// In a reference that started (at its `&`) at `start`, inside an attribute value
    /// quoted with `quote`, or in character data when `quote` is 0.
    Reference { start: u32, quote: u8 },
    /// After `<!`, having matched `matched` bytes of `[CDATA[`.
    Bang { matched: u8 },
    /// Inside a CDATA section whose content started at `start`.
    Cdata { start: u32 },
    /// After `<?` at the very start of the stream: an XML declaration or a PI.
    Question,
}

/// What `run` found.
pub(super) enum Scanned {
    /// The unit ends at `end` (exclusive).
    Complete { end: usize, kind: Kind },
    /// All of `data` was scanned; the unit goes on.
    Incomplete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    XmlDeclaration,
    Header,
    Element,
    Close,
}

/// A name's position in the unit: offset and length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u16,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        // Invariant: units are at most `stanza_bytes_max` (< 2^31) bytes and names at most
        // `name_bytes_max` (a u16) bytes; both are checked before a span is made.
        Span { start: start as u32, len: (end - start) as u16 }
    }

    fn of<'d>(&self, data: &'d [u8]) -> &'d [u8] {
        &data[self.start as usize..self.start as usize + self.len as usize]
    }
}

#[derive(Clone, Copy, Debug)]
struct OpenTag {
    name: Span,
    /// How many prefixes were declared before this element's own declarations.
    prefixes_before: u32,
}

/// A value's position in the unit (values may be longer than names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ValueSpan {
    start: u32,
    end: u32,
}

impl ValueSpan {
    fn of<'d>(&self, data: &'d [u8]) -> &'d [u8] {
        data.get(self.start as usize..self.end as usize).unwrap_or_default()
    }
}

/// A namespace prefix declaration in scope: the prefix, and the raw namespace name,
/// filled in when its start tag ends.
#[derive(Clone, Copy, Debug)]
struct Binding {
    prefix: Span,
    uri: ValueSpan,
}

/// The namespace name the `xml` prefix is bound to (Namespaces in XML 1.0, section 3).
const XML_NAMESPACE: &[u8] = b"http://www.w3.org/XML/1998/namespace";
/// The namespace name of `xmlns` itself, which nothing may be bound to.
const XMLNS_NAMESPACE: &[u8] = b"http://www.w3.org/2000/xmlns/";

/// Per-unit stacks; empty between units, capacity kept for the next one.
#[derive(Debug, Default)]
pub(super) struct Stacks {
    open: Vec<OpenTag>,
    prefixes: Vec<Binding>,
    attributes: Vec<Span>,
    tag: Option<OpenTag>,
    /// Whether the current tag uses a prefix anywhere (most tags do not, and then the
    /// scope check is skipped).
    prefixed: bool,
    /// Whether the current tag declares a namespace (`xmlns` or `xmlns:p`).
    declares: bool,
    /// How many of the current tag's attributes have a prefix other than `xmlns`; with
    /// two or more, duplicates are also looked for after namespace resolution.
    prefixed_attributes: u16,
    /// Namespace declarations in this unit so far (`DECLARATIONS_PER_UNIT_MAX`).
    declarations: u16,
}

impl Stacks {
    pub(super) fn clear(&mut self) {
        self.prefixed = false;
        self.declares = false;
        self.prefixed_attributes = 0;
        self.declarations = 0;
        self.open.clear();
        self.prefixes.clear();
        self.attributes.clear();
        self.tag = None;
    }

    pub(super) fn shrink(&mut self) {
        self.clear();
        self.open = Vec::new();
        self.prefixes = Vec::new();
        self.attributes = Vec::new();
    }

    fn depth(&self) -> usize {
        self.open.len()
    }
}

/// Scans `data` from `framer.pos`; see the module doc.
pub(super) fn run(framer: &mut Framer, data: &[u8]) -> Result<Scanned, FramerError> {
    let mut at = framer.pos as usize;
    while at < data.len() {
        match step(framer, data, at)? {
            Next::Continue(next) => at = next,
            Next::Complete(end, kind) => return Ok(Scanned::Complete { end, kind }),
        }
    }
    framer.pos = at as u32;
    Ok(Scanned::Incomplete)
}

enum Next {
    Continue(usize),
    Complete(usize, Kind),
}

/// One state transition starting at `data[at]` (which exists).
#[inline(always)]
fn step(framer: &mut Framer, data: &[u8], at: usize) -> Result<Next, FramerError> {
    let byte = data[at];
    let limits = framer.limits;
    match framer.lex {
        Lex::Between => {
            if byte != b'<' {
                return Err(FramerError::Syntax(Syntax::TextAtStreamLevel));
            }
            framer.lex = Lex::Open;
            Ok(Next::Continue(at + 1))
        }
        Lex::Open => open(framer, byte, at),
        Lex::StartName { start } => {
            let end = name_end(data, at, start as usize, limits.name_bytes_max)?;
            if end == data.len() {
                return Ok(Next::Continue(end));
            }
            start_name(framer, data, start as usize, end)?;
            Ok(Next::Continue(end))
        }
        Lex::InTag { spaced } => in_tag(framer, data, at, spaced),
        Lex::AttributeName { start } => {
            let end = name_end(data, at, start as usize, limits.name_bytes_max)?;
            if end == data.len() {
                return Ok(Next::Continue(end));
            }
            attribute_name(framer, data, start as usize, end, None)?;
            framer.lex = Lex::ExpectEquals;
            Ok(Next::Continue(end))
        }
        Lex::ExpectEquals => match byte {
            b'=' => {
                framer.lex = Lex::ExpectValue;
                Ok(Next::Continue(at + 1))
            }
            b if scan::is_space(b) => Ok(Next::Continue(at + scan::space_run(&data[at..]))),
            b => Err(FramerError::Syntax(Syntax::UnexpectedByte(b))),
        },
        Lex::ExpectValue => match byte {
            b'\'' | b'"' => {
                framer.lex = Lex::Value { quote: byte };
                Ok(Next::Continue(at + 1))
            }
            b if scan::is_space(b) => Ok(Next::Continue(at + scan::space_run(&data[at..]))),
            b => Err(FramerError::Syntax(Syntax::UnexpectedByte(b))),
        },
        Lex::Value { quote } => value(framer, data, at, quote),
        Lex::ExpectEmptyClose => {
            if byte != b'>' {
                return Err(FramerError::Syntax(Syntax::UnexpectedByte(byte)));
            }
            end_start_tag(framer, data, at + 1, true)
        }
        Lex::EndName { start } => {
            let end = name_end(data, at, start as usize, limits.name_bytes_max)?;
            if end == data.len() {
                return Ok(Next::Continue(end));
            }
            end_name(framer, data, start as usize, end)?;
            framer.lex = Lex::ExpectEndClose;
            Ok(Next::Continue(end))
        }
        Lex::ExpectEndClose => match byte {
            b'>' => end_tag(framer, at + 1),
            b if scan::is_space(b) => Ok(Next::Continue(at + scan::space_run(&data[at..]))),
            b => Err(FramerError::Syntax(Syntax::UnexpectedByte(b))),
        },
        Lex::Content => content(framer, data, at),
        Lex::Reference { start, quote } => reference(framer, data, at, start as usize, quote),
        Lex::Bang { matched } => bang(framer, byte, at, matched),
        Lex::Cdata { start } => cdata(framer, data, at, start as usize),
        Lex::Question => xml_declaration(framer, data, at),
    }
}

/// After `<`: a start tag, an end tag, `<!` or `<?`.
#[inline(always)]
fn open(framer: &mut Framer, byte: u8, at: usize) -> Result<Next, FramerError> {
    let in_header = framer.phase == Phase::ExpectHeader;
    framer.lex = match byte {
        b'/' if in_header => return Err(FramerError::Syntax(Syntax::UnexpectedByte(byte))),
        b'/' => Lex::EndName { start: at as u32 + 1 },
        b'!' => Lex::Bang { matched: 0 },
        b'?' if in_header && at == 1 && !framer.declaration_seen => Lex::Question,
        b'?' => return Err(FramerError::Restricted(Restricted::ProcessingInstruction)),
        b if scan::is_name_start(b) => {
            framer.lex = Lex::StartName { start: at as u32 };
            return Ok(Next::Continue(at));
        }
        b => return Err(FramerError::Syntax(Syntax::UnexpectedByte(b))),
    };
    Ok(Next::Continue(at + 1))
}

/// Extends a name from `at`; returns where it ends (or `data.len()` if it may go on).
#[inline(always)]
fn name_end(data: &[u8], at: usize, start: usize, max: u16) -> Result<usize, FramerError> {
    let end = at + scan::name_run(&data[at..]);
    if end - start > max as usize {
        return Err(FramerError::Limit(Limit::NameBytes));
    }
    Ok(end)
}

/// Splits a qualified name into (prefix, local); rejects empty parts and extra colons.
#[inline(always)]
fn split_qname(name: &[u8]) -> Result<(Option<&[u8]>, &[u8]), FramerError> {
    let invalid = FramerError::Syntax(Syntax::InvalidName);
    // Names are short: a plain loop beats a vectorised search's setup cost.
    match name.iter().position(|&b| b == b':') {
        None => Ok((None, name)),
        Some(colon) => {
            let (prefix, local) = (&name[..colon], &name[colon + 1..]);
            if prefix.is_empty() || local.is_empty() || local.contains(&b':') {
                return Err(invalid);
            }
            if !scan::is_name_start(local[0]) {
                return Err(invalid);
            }
            Ok((Some(prefix), local))
        }
    }
}

fn is_stream_name(framer: &Framer, name: &[u8]) -> bool {
    let prefix = &framer.stream_prefix[..];
    if prefix.is_empty() {
        return name == b"stream";
    }
    name.len() == prefix.len() + 7 && name.starts_with(prefix) && &name[prefix.len()..] == b":stream"
}

/// An element name is complete: check it and start the tag.
#[inline(always)]
fn start_name(framer: &mut Framer, data: &[u8], start: usize, end: usize) -> Result<(), FramerError> {
    let name = &data[start..end];
    let (prefix, _) = split_qname(name)?;
    framer.stacks.prefixed = prefix.is_some();
    if framer.phase == Phase::InStream && framer.stacks.depth() == 0 && is_stream_name(framer, name) {
        return Err(FramerError::NestedStreamHeader);
    }
    let stacks = &mut framer.stacks;
    stacks.tag = Some(OpenTag { name: Span::new(start, end), prefixes_before: stacks.prefixes.len() as u32 });
    stacks.attributes.clear();
    stacks.declares = false;
    stacks.prefixed_attributes = 0;
    framer.lex = Lex::InTag { spaced: false };
    Ok(())
}

#[inline(always)]
fn in_tag(framer: &mut Framer, data: &[u8], at: usize, spaced: bool) -> Result<Next, FramerError> {
    match data[at] {
        b'>' => end_start_tag(framer, data, at + 1, false),
        b'/' => {
            framer.lex = Lex::ExpectEmptyClose;
            Ok(Next::Continue(at + 1))
        }
        b if scan::is_space(b) => {
            framer.lex = Lex::InTag { spaced: true };
            Ok(Next::Continue(at + scan::space_run(&data[at..])))
        }
        b if scan::is_name_start(b) && spaced => {
            if let Some(next) = whole_attribute(framer, data, at)? {
                return Ok(Next::Continue(next));
            }
            framer.lex = Lex::AttributeName { start: at as u32 };
            Ok(Next::Continue(at))
        }
        b => Err(FramerError::Syntax(Syntax::UnexpectedByte(b))),
    }
}

/// Fast path for the common `name='plain value'` with every byte at hand: one step
/// instead of five state transitions. Returns where the tag goes on, or `None` (and
/// changes nothing) to let the state machine take the attribute byte by byte.
#[inline(always)]
fn whole_attribute(framer: &mut Framer, data: &[u8], start: usize) -> Result<Option<usize>, FramerError> {
    let name_end = start + scan::name_run(&data[start..]);
    if name_end - start > framer.limits.name_bytes_max as usize || data.get(name_end) != Some(&b'=') {
        return Ok(None);
    }
    let quote = match data.get(name_end + 1) {
        Some(&q @ (b'\'' | b'"')) => q,
        _ => return Ok(None),
    };
    let value_start = name_end + 2;
    let Some(offset) = find_value_stop(&data[value_start.min(data.len())..], quote) else { return Ok(None) };
    let stop = value_start + offset;
    if data[stop] != quote {
        return Ok(None);
    }
    let value = ValueSpan { start: value_start as u32, end: stop as u32 };
    attribute_name(framer, data, start, name_end, Some(value))?;
    framer.lex = Lex::InTag { spaced: false };
    Ok(Some(stop + 1))
}

/// An attribute name is complete: check it, count it, reject duplicates, and record
/// namespace prefix declarations.
#[inline(always)]
/// `value` is the attribute's raw value when the fast path has seen it whole; a
/// namespace declaration is then checked at once, else when its tag ends.
fn attribute_name(
    framer: &mut Framer,
    data: &[u8],
    start: usize,
    end: usize,
    value: Option<ValueSpan>,
) -> Result<(), FramerError> {
    let name = &data[start..end];
    let (prefix, local) = split_qname(name)?;
    let stacks = &mut framer.stacks;
    if stacks.attributes.len() >= framer.limits.attributes_per_element_max as usize {
        return Err(FramerError::Limit(Limit::AttributesPerElement));
    }
    if stacks.attributes.iter().any(|seen| seen.of(data) == name) {
        return Err(FramerError::Syntax(Syntax::DuplicateAttribute));
    }
    stacks.attributes.push(Span::new(start, end));
    match prefix {
        None if name == b"xmlns" => declaration(stacks, data, None, value),
        None => Ok(()),
        Some(b"xmlns") => {
            if local == b"xmlns" {
                return Err(FramerError::Syntax(Syntax::InvalidName));
            }
            declaration(stacks, data, Some(Span::new(end - local.len(), end)), value)
        }
        Some(_) => {
            stacks.prefixed = true;
            stacks.prefixed_attributes += 1;
            Ok(())
        }
    }
}

/// A namespace declaration (`xmlns`, or `xmlns:` + `prefix`): records a prefix
/// binding and checks the value now if the fast path saw it; the tag's end checks
/// the rest (see [`check_declarations`]).
/// Kept out of line: the lexer's hot loop only tests for the name.
#[inline(never)]
fn declaration(
    stacks: &mut Stacks,
    data: &[u8],
    prefix: Option<Span>,
    value: Option<ValueSpan>,
) -> Result<(), FramerError> {
    stacks.declarations += 1;
    if stacks.declarations > super::DECLARATIONS_PER_UNIT_MAX {
        return Err(FramerError::Limit(Limit::NamespaceDeclarations));
    }
    if let Some(prefix) = prefix {
        stacks.prefixes.push(Binding { prefix, uri: value.unwrap_or_default() });
    }
    // A value seen whole that passes needs nothing more. Anything else (a value
    // lexed in pieces, or one that fails) is judged when the tag ends, so that the
    // error does not depend on how the input was split into reads.
    let passes = value.is_some_and(|value| check_declaration(prefix.map(|p| p.of(data)), value.of(data)).is_ok());
    stacks.declares |= !passes;
    Ok(())
}

#[inline(always)]
fn value(framer: &mut Framer, data: &[u8], at: usize, quote: u8) -> Result<Next, FramerError> {
    let Some(offset) = find_value_stop(&data[at..], quote) else {
        return Ok(Next::Continue(data.len()));
    };
    let stop = at + offset;
    match data[stop] {
        b'&' => {
            framer.lex = Lex::Reference { start: stop as u32, quote };
            Ok(Next::Continue(stop + 1))
        }
        b'\t' | b'\n' | b'\r' => Ok(Next::Continue(stop + 1)),
        b if b == quote => {
            framer.lex = Lex::InTag { spaced: false };
            Ok(Next::Continue(stop + 1))
        }
        b => Err(FramerError::Syntax(Syntax::UnexpectedByte(b))),
    }
}

/// `>` of a start tag at `end - 1`: check prefixes, then open the element (or finish
/// the header, or the whole unit for an empty top-level element).
fn end_start_tag(framer: &mut Framer, data: &[u8], end: usize, empty: bool) -> Result<Next, FramerError> {
    if framer.stacks.declares {
        check_declarations(framer, data)?;
        framer.stacks.declares = false;
    }
    if framer.stacks.prefixed {
        check_prefixes(framer, data)?;
        framer.stacks.prefixed = false;
    }
    if framer.stacks.prefixed_attributes >= 2 {
        check_expanded_names(framer, data)?;
        framer.stacks.prefixed_attributes = 0;
    }
    // Invariant: `tag` is set by `start_name` before any path reaches here.
    let tag = framer.stacks.tag.take().expect("start tag without a name");
    framer.stacks.attributes.clear();
    if framer.phase == Phase::ExpectHeader {
        if empty {
            return Err(FramerError::Syntax(Syntax::EmptyStreamHeader));
        }
        let (prefix, _) = split_qname(tag.name.of(data))?;
        framer.stream_prefix = prefix.unwrap_or_default().into();
        return Ok(Next::Complete(end, Kind::Header));
    }
    if empty {
        framer.stacks.prefixes.truncate(tag.prefixes_before as usize);
        if framer.stacks.depth() == 0 {
            return Ok(Next::Complete(end, Kind::Element));
        }
    } else {
        if framer.stacks.depth() >= framer.limits.depth_max as usize {
            return Err(FramerError::Limit(Limit::Depth));
        }
        framer.stacks.open.push(tag);
    }
    framer.lex = Lex::Content;
    Ok(Next::Continue(end))
}

/// Every prefix on the tag's name and attributes must be declared in scope, be `xml`,
/// or be the stream's own prefix.
fn check_prefixes(framer: &Framer, data: &[u8]) -> Result<(), FramerError> {
    let stacks = &framer.stacks;
    let declared = |prefix: &[u8]| {
        prefix == b"xml"
            || prefix == &framer.stream_prefix[..]
            || stacks.prefixes.iter().any(|binding| binding.prefix.of(data) == prefix)
    };
    if let Some(tag) = stacks.tag {
        if let (Some(prefix), _) = split_qname(tag.name.of(data))? {
            if !declared(prefix) {
                return Err(FramerError::UndeclaredPrefix);
            }
        }
    }
    for attribute in &stacks.attributes {
        if let (Some(prefix), _) = split_qname(attribute.of(data))? {
            if prefix != b"xmlns" && !declared(prefix) {
                return Err(FramerError::UndeclaredPrefix);
            }
        }
    }
    Ok(())
}

/// The raw value of the attribute whose name ends at `name_end`: after optional
/// spaces, `=`, optional spaces and a quote, up to the matching quote. The lexer has
/// already checked the tag, so `None` only means a bug; it is refused, not trusted.
fn raw_value(data: &[u8], name_end: usize) -> Option<ValueSpan> {
    let mut at = name_end;
    let skip_spaces = |mut at: usize| {
        while data.get(at).is_some_and(|&b| scan::is_space(b)) {
            at += 1;
        }
        at
    };
    at = skip_spaces(at);
    if data.get(at) != Some(&b'=') {
        return None;
    }
    at = skip_spaces(at + 1);
    let quote = *data.get(at).filter(|&&q| q == b'\'' || q == b'"')?;
    let start = at + 1;
    let length = data.get(start..)?.iter().position(|&b| b == quote)?;
    Some(ValueSpan { start: start as u32, end: (start + length) as u32 })
}

/// A namespace name as written, with its references resolved. Bytes that do not
/// decode are compared as they are: the lexer and the UTF-8 check refuse them anyway,
/// with the same error however the input was split into reads.
fn namespace_name(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !raw.contains(&b'&') {
        return std::borrow::Cow::Borrowed(raw);
    }
    match crate::xml::unescape(raw) {
        Some(text) => std::borrow::Cow::Owned(text.into_owned().into_bytes()),
        None => std::borrow::Cow::Borrowed(raw),
    }
}

/// The current tag's namespace declarations (Namespaces in XML 1.0, section 3 and
/// its errata): `xml` may only be bound to its own namespace, no other prefix (and not
/// the default namespace) to it or to the `xmlns` namespace, and a prefix may not be
/// bound to the empty name (undeclaring is XML 1.1 only). Fills in the URIs of the
/// tag's bindings for [`check_expanded_names`]. Parsers such as expat (slixmpp's)
/// reject each of these, so forwarding one would cut the recipient's stream.
fn check_declarations(framer: &mut Framer, data: &[u8]) -> Result<(), FramerError> {
    let reserved = FramerError::Syntax(Syntax::ReservedNamespace);
    let stacks = &mut framer.stacks;
    let mut binding = stacks.tag.map_or(stacks.prefixes.len(), |tag| tag.prefixes_before as usize);
    for attribute in &stacks.attributes {
        let name = attribute.of(data);
        let local = match name.strip_prefix(b"xmlns") {
            Some(b"") => None,
            Some(rest) if rest.first() == Some(&b':') => rest.get(1..),
            _ => continue,
        };
        let span = raw_value(data, attribute.start as usize + attribute.len as usize).ok_or(reserved)?;
        check_declaration(local, span.of(data))?;
        if local.is_some() {
            if let Some(slot) = stacks.prefixes.get_mut(binding) {
                slot.uri = span;
            }
            binding += 1;
        }
    }
    Ok(())
}

/// One namespace declaration: `local` is the declared prefix (`None` for the default
/// namespace), `raw` the value as written. See [`check_declarations`].
fn check_declaration(local: Option<&[u8]>, raw: &[u8]) -> Result<(), FramerError> {
    let reserved = FramerError::Syntax(Syntax::ReservedNamespace);
    // One pass for the common case: no reference and nothing a URI may not hold.
    let uri = if raw.iter().all(|&b| uri_byte(b) && b != b'&') {
        std::borrow::Cow::Borrowed(raw)
    } else {
        let uri = namespace_name(raw);
        if !uri.iter().all(|&b| uri_byte(b)) {
            return Err(FramerError::Syntax(Syntax::NamespaceName));
        }
        uri
    };
    let uri = uri.as_ref();
    match local {
        None if uri == XML_NAMESPACE || uri == XMLNS_NAMESPACE => Err(reserved),
        None => Ok(()),
        Some(b"xml") if uri != XML_NAMESPACE => Err(reserved),
        Some(b"xml") => Ok(()),
        Some(_) if uri.is_empty() || uri == XML_NAMESPACE || uri == XMLNS_NAMESPACE => Err(reserved),
        Some(_) => Ok(()),
    }
}

/// Whether `b` may appear in a namespace name: a URI or IRI reference (RFC 3986
/// section 2, RFC 3987 section 2.2) has no controls, spaces, `"`, `<`, `>`, `\`,
/// `^`, backquotes, `{`, `|` or `}`. Real
/// parsers draw lines here: expat refuses its namespace separator inside a name
/// (`}` for Python's ElementTree, since CVE-2022-25236), and normalises whitespace
/// in values before comparing names; a name with either passed our checks and
/// failed theirs (found by a breaker with slixmpp). UTF-8 bytes (IRIs) are fine.
#[inline(always)]
fn uri_byte(b: u8) -> bool {
    b > b' ' && b != 0x7f && !matches!(b, b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}')
}

/// No two attributes of the current tag may have the same local name and namespace
/// once prefixes are resolved (Namespaces in XML 1.0, section 6.3): `p:a` and `q:a`
/// with `p` and `q` bound to one namespace are the same attribute twice.
fn check_expanded_names(framer: &Framer, data: &[u8]) -> Result<(), FramerError> {
    let stacks = &framer.stacks;
    let resolve = |prefix: &[u8]| -> std::borrow::Cow<'_, [u8]> {
        match stacks.prefixes.iter().rev().find(|binding| binding.prefix.of(data) == prefix) {
            Some(binding) => namespace_name(binding.uri.of(data)),
            None if prefix == b"xml" => XML_NAMESPACE.into(),
            // The stream's own prefix (checked in scope by `check_prefixes`).
            None => b"http://etherx.jabber.org/streams".as_slice().into(),
        }
    };
    let mut expanded = Vec::new();
    for attribute in &stacks.attributes {
        if let (Some(prefix), local) = split_qname(attribute.of(data))? {
            if prefix != b"xmlns" {
                let namespace = resolve(prefix);
                if expanded.iter().any(|(l, n)| *l == local && *n == namespace) {
                    return Err(FramerError::Syntax(Syntax::DuplicateAttribute));
                }
                expanded.push((local, namespace));
            }
        }
    }
    Ok(())
}

/// An end tag's name is complete: it must match the open element, or at stream level
/// be the stream's own name.
#[inline(always)]
fn end_name(framer: &mut Framer, data: &[u8], start: usize, end: usize) -> Result<(), FramerError> {
    let name = &data[start..end];
    let matches = match framer.stacks.open.last() {
        Some(open) => open.name.of(data) == name,
        None => is_stream_name(framer, name),
    };
    if !matches {
        return Err(FramerError::Syntax(Syntax::MismatchedEndTag));
    }
    Ok(())
}

/// `>` of an end tag at `end - 1`.
#[inline(always)]
fn end_tag(framer: &mut Framer, end: usize) -> Result<Next, FramerError> {
    let Some(open) = framer.stacks.open.pop() else {
        return Ok(Next::Complete(end, Kind::Close));
    };
    framer.stacks.prefixes.truncate(open.prefixes_before as usize);
    if framer.stacks.depth() == 0 {
        return Ok(Next::Complete(end, Kind::Element));
    }
    framer.lex = Lex::Content;
    Ok(Next::Continue(end))
}

#[inline(always)]
fn content(framer: &mut Framer, data: &[u8], at: usize) -> Result<Next, FramerError> {
    let Some(offset) = find_text_stop(&data[at..]) else {
        return Ok(Next::Continue(data.len()));
    };
    let stop = at + offset;
    match data[stop] {
        b'<' => {
            framer.lex = Lex::Open;
            Ok(Next::Continue(stop + 1))
        }
        b'&' => {
            framer.lex = Lex::Reference { start: stop as u32, quote: 0 };
            Ok(Next::Continue(stop + 1))
        }
        b'>' if stop >= 2 && &data[stop - 2..stop] == b"]]" => Err(FramerError::Syntax(Syntax::CdataEndInText)),
        b'>' | b'\t' | b'\n' | b'\r' => Ok(Next::Continue(stop + 1)),
        b => Err(FramerError::Syntax(Syntax::UnexpectedByte(b))),
    }
}

/// Extends a reference started at `start` (its `&`); checks it once `;` arrives.
fn reference(framer: &mut Framer, data: &[u8], at: usize, start: usize, quote: u8) -> Result<Next, FramerError> {
    let window_end = data.len().min(start + ENTITY_BYTES_MAX);
    let Some(offset) = memchr::memchr(b';', &data[at..window_end.max(at)]) else {
        if window_end == start + ENTITY_BYTES_MAX {
            return Err(FramerError::Syntax(Syntax::InvalidReference));
        }
        return Ok(Next::Continue(data.len()));
    };
    let semicolon = at + offset;
    check_reference(&data[start + 1..semicolon])?;
    framer.lex = if quote == 0 { Lex::Content } else { Lex::Value { quote } };
    Ok(Next::Continue(semicolon + 1))
}

/// Checks the body of a reference (between `&` and `;`).
fn check_reference(body: &[u8]) -> Result<(), FramerError> {
    let invalid = FramerError::Syntax(Syntax::InvalidReference);
    match body {
        b"lt" | b"gt" | b"amp" | b"quot" | b"apos" => Ok(()),
        [b'#', b'x', hex @ ..] => char_reference(hex, 16),
        [b'#', decimal @ ..] => char_reference(decimal, 10),
        [first, rest @ ..] if scan::is_name_start(*first) && rest.iter().all(|&b| scan::is_name_char(b)) => {
            Err(FramerError::Restricted(Restricted::EntityReference))
        }
        _ => Err(invalid),
    }
}

fn char_reference(digits: &[u8], radix: u32) -> Result<(), FramerError> {
    let invalid = FramerError::Syntax(Syntax::InvalidReference);
    if digits.is_empty() {
        return Err(invalid);
    }
    let mut value: u32 = 0;
    for &digit in digits {
        let d = (digit as char).to_digit(radix).ok_or(invalid)?;
        value = value.checked_mul(radix).and_then(|v| v.checked_add(d)).ok_or(invalid)?;
    }
    if scan::is_xml_char(value) {
        Ok(())
    } else {
        Err(invalid)
    }
}

/// After `<!`: only a CDATA section (inside an element) is allowed.
fn bang(framer: &mut Framer, byte: u8, at: usize, matched: u8) -> Result<Next, FramerError> {
    const OPENER: &[u8; 7] = b"[CDATA[";
    if matched == 0 {
        match byte {
            b'-' => return Err(FramerError::Restricted(Restricted::Comment)),
            b'[' if framer.stacks.depth() == 0 => return Err(FramerError::Syntax(Syntax::TextAtStreamLevel)),
            b'[' => {}
            _ => return Err(FramerError::Restricted(Restricted::Dtd)),
        }
    }
    if byte != OPENER[matched as usize] {
        return Err(FramerError::Syntax(Syntax::UnexpectedByte(byte)));
    }
    framer.lex = if matched as usize + 1 == OPENER.len() {
        Lex::Cdata { start: at as u32 + 1 }
    } else {
        Lex::Bang { matched: matched + 1 }
    };
    Ok(Next::Continue(at + 1))
}

fn cdata(framer: &mut Framer, data: &[u8], at: usize, start: usize) -> Result<Next, FramerError> {
    let Some(offset) = find_cdata_stop(&data[at..]) else {
        return Ok(Next::Continue(data.len()));
    };
    let stop = at + offset;
    match data[stop] {
        b'>' if stop >= start + 2 && &data[stop - 2..stop] == b"]]" => {
            framer.lex = Lex::Content;
            Ok(Next::Continue(stop + 1))
        }
        b'>' | b'\t' | b'\n' | b'\r' => Ok(Next::Continue(stop + 1)),
        b => Err(FramerError::Syntax(Syntax::UnexpectedByte(b))),
    }
}

/// `<?` before the stream header: `<?xml ...?>` with at most an UTF-8 encoding, or a
/// processing instruction (refused).
fn xml_declaration(framer: &mut Framer, data: &[u8], _at: usize) -> Result<Next, FramerError> {
    // The declaration is short, so it is searched from its start each time: a `?>`
    // split across reads is found without extra state.
    let window = &data[..data.len().min(XML_DECLARATION_BYTES_MAX)];
    let Some(close) = memchr::memmem::find(&window[2..], b"?>") else {
        if window.len() == XML_DECLARATION_BYTES_MAX {
            return Err(FramerError::Syntax(Syntax::InvalidXmlDeclaration));
        }
        return Ok(Next::Continue(data.len()));
    };
    let end = 2 + close + 2;
    let body = &data[2..end - 2];
    let is_declaration = body.len() > 3 && body.starts_with(b"xml") && scan::is_space(body[3]);
    if !is_declaration {
        return Err(FramerError::Restricted(Restricted::ProcessingInstruction));
    }
    check_declared_encoding(&body[3..])?;
    framer.declaration_seen = true;
    Ok(Next::Complete(end, Kind::XmlDeclaration))
}

fn check_declared_encoding(pseudo_attributes: &[u8]) -> Result<(), FramerError> {
    let Some(at) = memchr::memmem::find(pseudo_attributes, b"encoding") else {
        return Ok(());
    };
    let rest = &pseudo_attributes[at + 8..];
    let rest = &rest[scan::space_run(rest)..];
    let rest = rest.strip_prefix(b"=").unwrap_or(&[]);
    let rest = &rest[scan::space_run(rest)..];
    let invalid = FramerError::Syntax(Syntax::InvalidXmlDeclaration);
    let (&quote, value) = rest.split_first().ok_or(invalid)?;
    let value_end = memchr::memchr(quote, value).ok_or(invalid)?;
    if value[..value_end].eq_ignore_ascii_case(b"utf-8") {
        Ok(())
    } else {
        Err(invalid)
    }
}
