//! Streaming XML framer and well-formedness checker for one XMPP stream (RFC 6120
//! sections 4 and 11).
//!
//! Bytes arrive in any chunking. The framer yields, in order: the stream header (its
//! start tag), then each top-level element as one contiguous slice, then the stream
//! close. It checks well-formedness in the same pass: balanced tags, attribute syntax
//! and uniqueness (also after namespace resolution), declared namespace prefixes and
//! Namespaces in XML's other constraints, ASCII names (a deliberate subset of XML's,
//! see `scan::CLASS`), UTF-8, the five predefined entities and
//! character references only, and no comments, processing instructions or DTDs
//! (RFC 6120 section 11.1). Limits ([`FramerLimits`]) are enforced before more bytes
//! are buffered.
//!
//! ```text
//!  read into a per-core buffer --> Framer::next(&mut input) --> Frame::StreamHeader(&[u8])
//!                                    |  (partial element kept        Frame::Element(&[u8])
//!                                    v   in a private buffer)        Frame::StreamClose
//! ```
//!
//! Zero copy in the common case: while no element is split across reads, frames are
//! slices of the caller's input and the framer holds no buffer at all. Only a partial
//! element is copied into the framer, and the buffer is freed once it is consumed, so
//! an idle connection costs only `size_of::<Framer>()` plus the small tag stack.
//!
//! Drive it with a loop; "need more bytes" is `Ok(None)`:
//! ```
//! # use starling_wire::framer::{Framer, Frame};
//! # use starling_wire::limits::FramerLimits;
//! let mut framer = Framer::new(FramerLimits::DEFAULT);
//! let mut input: &[u8] = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'><a/>";
//! while let Some(frame) = framer.next(&mut input).unwrap() {
//!     match frame {
//!         Frame::StreamHeader(tag) => assert!(tag.starts_with(b"<stream:stream")),
//!         Frame::Element(element) => assert_eq!(element, b"<a/>"),
//!         Frame::StreamClose => {}
//!     }
//! }
//! ```
//!
//! Cost per element (the budget the criterion bench `framer` checks): one pass over
//! the bytes, eight at a time through character data and attribute values and one at a
//! time through names; one `from_utf8` pass; no allocation once the tag stack has grown
//! to the stanza's depth; one copy of the element only when it straddles two reads.

mod lex;
pub(crate) mod scan;
#[cfg(test)]
mod tests;

use crate::limits::FramerLimits;
use lex::{Lex, Scanned};

/// One unit the framer yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The stream header's start tag, from `<` to `>`, without any XML declaration.
    StreamHeader(&'a [u8]),
    /// One complete top-level element (stanza, nonza), from its `<` to its final `>`.
    Element(&'a [u8]),
    /// The stream's end tag. The framer yields nothing after it.
    StreamClose,
}

/// Why the framer refused the stream. Each maps to one RFC 6120 stream error condition
/// (see [`crate::error::StreamErrorCondition::from`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramerError {
    /// The peer sent XML that is not well-formed.
    #[error("XML is not well-formed: {0:?}")]
    Syntax(Syntax),
    /// The peer sent bytes that are not UTF-8, or characters XML does not allow.
    #[error("invalid UTF-8 or a character XML does not allow")]
    Encoding,
    /// The peer used an XML feature XMPP forbids (RFC 6120 section 11.1).
    #[error("XML feature not allowed in XMPP: {0:?}")]
    Restricted(Restricted),
    /// The peer used a namespace prefix it never declared.
    #[error("undeclared namespace prefix")]
    UndeclaredPrefix,
    /// The peer exceeded one of our limits.
    #[error("limit exceeded: {0:?}")]
    Limit(Limit),
    /// The peer opened a second stream inside the stream.
    #[error("stream header inside the stream")]
    NestedStreamHeader,
}

/// The kinds of well-formedness errors, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// A byte that cannot appear where it did.
    UnexpectedByte(u8),
    /// An end tag whose name differs from the open element's.
    MismatchedEndTag,
    /// An element or attribute name that is not a valid XML (namespace) name.
    InvalidName,
    /// The same attribute twice on one element, by name or once prefixes are
    /// resolved (Namespaces in XML 1.0, section 6.3).
    DuplicateAttribute,
    /// A namespace declaration Namespaces in XML 1.0 forbids: `xml` bound elsewhere,
    /// another prefix or the default namespace bound to the `xml` or `xmlns`
    /// namespace, or a prefix bound to the empty name.
    ReservedNamespace,
    /// A namespace name no URI reference could be: a control, a space, `"`, `<`, `>`,
    /// `\`, `^`, a backquote, `{`, `|` or `}` (RFC 3986 section 2).
    NamespaceName,
    /// An entity or character reference that is malformed or not a character.
    InvalidReference,
    /// Non-whitespace text between top-level elements.
    TextAtStreamLevel,
    /// `]]>` in character data.
    CdataEndInText,
    /// The stream header closed itself (`<stream:stream/>`).
    EmptyStreamHeader,
    /// A malformed XML declaration, or one declaring an encoding other than UTF-8.
    InvalidXmlDeclaration,
}

/// XML features RFC 6120 section 11.1 forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restricted {
    Comment,
    ProcessingInstruction,
    Dtd,
    EntityReference,
}

/// Which limit of [`FramerLimits`] (or the fixed [`DECLARATIONS_PER_UNIT_MAX`]) was
/// exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    StanzaBytes,
    Depth,
    AttributesPerElement,
    NameBytes,
    NamespaceDeclarations,
}

/// Namespace declarations (`xmlns`, `xmlns:p`) one top-level element may hold in
/// all. Elements are parsed again by `roxmltree`, which copies every namespace in
/// scope into each element that declares one more: found by a breaker, 1,920
/// declarations in scope and 2,591 children declaring one each (one 64 KB
/// stanza, before authentication) kept a core busy for 13 s. Real stanzas
/// declare a handful.
pub const DECLARATIONS_PER_UNIT_MAX: u16 = 128;

/// Where the stream is, as far as framing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the stream header (optionally preceded by an XML declaration).
    ExpectHeader,
    /// Inside the stream, between or inside top-level elements.
    InStream,
    /// After the stream close; nothing more is read.
    Closed,
}

/// The framer for one direction of one stream. See the module doc.
#[derive(Debug)]
pub struct Framer {
    limits: FramerLimits,
    phase: Phase,
    /// Bytes received but not yet yielded; `buffer[start..]` is live. Empty, with no
    /// capacity, whenever no element is split across reads.
    buffer: Vec<u8>,
    start: usize,
    /// How far the current element has been scanned (relative to its first byte), and
    /// in what lexical state, so a partial element is never scanned twice.
    pos: u32,
    lex: Lex,
    /// Open elements, declared prefixes and the current tag's attribute names, all as
    /// spans relative to the current element's first byte.
    stacks: lex::Stacks,
    /// The prefix of the stream header's name (`stream` in `<stream:stream>`), which
    /// top-level elements such as `<stream:error>` may use undeclared.
    stream_prefix: Box<[u8]>,
    /// Set when the framer yielded a slice of `buffer` that must be dropped from it on
    /// the next call.
    release_pending: bool,
    /// Whether this stream already had its XML declaration.
    declaration_seen: bool,
}

impl Framer {
    pub fn new(limits: FramerLimits) -> Framer {
        Framer {
            limits,
            phase: Phase::ExpectHeader,
            buffer: Vec::new(),
            start: 0,
            pos: 0,
            lex: Lex::Between,
            stacks: lex::Stacks::default(),
            stream_prefix: Box::default(),
            release_pending: false,
            declaration_seen: false,
        }
    }

    /// Yields the next frame, consuming bytes from the front of `input`.
    ///
    /// `Ok(None)` means every byte of `input` was consumed (a partial element is kept
    /// inside the framer) and more are needed. After an error the stream is unusable.
    /// Bytes after a frame stay in `input` until the next call, so the caller may stop
    /// between frames (for example to restart the stream after SASL success).
    pub fn next<'s, 'a: 's>(&'s mut self, input: &mut &'a [u8]) -> Result<Option<Frame<'s>>, FramerError> {
        self.release_yielded();
        if self.phase == Phase::Closed {
            *input = &[];
            return Ok(None);
        }
        loop {
            let step = if self.live().is_empty() { self.step_direct(input)? } else { self.step_buffered(input)? };
            match step {
                Step::Yield(frame) => return Ok(Some(frame.resolve(self, input))),
                Step::Skipped => continue,
                Step::NeedMore => return Ok(None),
            }
        }
    }

    /// Resets the framer for a stream restart (after STARTTLS or SASL success, RFC 6120
    /// sections 5.4.3.3 and 6.4.6): the next frame must be a new stream header. Bytes
    /// already buffered are kept and parsed as the new stream.
    pub fn reset(&mut self) {
        self.release_yielded();
        self.phase = Phase::ExpectHeader;
        self.pos = 0;
        self.lex = Lex::Between;
        self.stacks.clear();
        self.stream_prefix = Box::default();
        self.declaration_seen = false;
    }

    /// Drops buffered bytes that were never yielded (the STARTTLS case: plaintext
    /// after `<starttls/>` must not be read as if it came over TLS).
    pub fn discard_buffered(&mut self) -> usize {
        self.release_yielded();
        let dropped = self.live().len();
        self.buffer = Vec::new();
        self.start = 0;
        self.pos = 0;
        self.lex = Lex::Between;
        self.stacks.clear();
        dropped
    }

    /// Keeps `input` (bytes not yet framed) inside the framer, so the caller can release
    /// its read buffer while it waits for something (a database lookup) before it
    /// reads the next frame. The next call to [`Framer::next`] frames them first.
    pub fn stash(&mut self, input: &[u8]) {
        self.release_yielded();
        if input.is_empty() {
            return;
        }
        if self.live().is_empty() {
            self.buffer.clear();
            self.start = 0;
        }
        self.buffer.extend_from_slice(input);
    }

    /// Bytes held for a partial element (or unscanned after a yield).
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// Frees the tag stacks' spare capacity; call when the connection goes idle.
    pub fn shrink(&mut self) {
        if self.buffered_bytes() == 0 {
            self.buffer = Vec::new();
            self.start = 0;
        }
        self.stacks.shrink();
    }

    fn live(&self) -> &[u8] {
        &self.buffer[self.start..]
    }

    fn release_yielded(&mut self) {
        if self.release_pending {
            self.release_pending = false;
            if self.start == self.buffer.len() {
                self.buffer = Vec::new();
                self.start = 0;
            }
        }
    }

    /// Scans straight out of the caller's input; copies only a trailing partial element.
    fn step_direct(&mut self, input: &mut &[u8]) -> Result<Step, FramerError> {
        if self.lex == Lex::Between {
            let skip = scan::space_run(input);
            *input = &input[skip..];
        }
        if input.is_empty() {
            return Ok(Step::NeedMore);
        }
        match self.scan(input)? {
            Scanned::Complete { end, kind } => Ok(self.complete(kind, Source::Input(end), input)),
            Scanned::Incomplete => {
                // The live region is empty, but consumed bytes may linger before it.
                self.buffer.clear();
                self.buffer.extend_from_slice(input);
                self.start = 0;
                *input = &[];
                Ok(Step::NeedMore)
            }
        }
    }

    /// Continues a partial element held in `buffer`, appending at most what the stanza
    /// limit still allows, so the buffer never exceeds the limit by more than one byte.
    fn step_buffered(&mut self, input: &mut &[u8]) -> Result<Step, FramerError> {
        if self.lex == Lex::Between {
            let skip = scan::space_run(self.live());
            self.start += skip;
            if self.live().is_empty() {
                return Ok(Step::Skipped);
            }
        }
        // Bytes already held and not yet scanned come first; more input is appended
        // only when the held bytes end inside an element.
        if self.pos as usize >= self.live().len() {
            if input.is_empty() {
                return Ok(Step::NeedMore);
            }
            if self.start > 0 {
                self.buffer.drain(..self.start);
                self.start = 0;
            }
            let limit = self.limits.stanza_bytes_max as usize + 1;
            let room = limit.saturating_sub(self.buffer.len());
            // Grow geometrically (at least 256 bytes, at most what is already held) so
            // the partial element completes after copying little beyond it; the rest of
            // the input is then framed in place again.
            let step = self.buffer.len().max(256);
            let take = room.min(input.len()).min(step);
            self.buffer.extend_from_slice(&input[..take]);
            *input = &input[take..];
        }
        let live = std::mem::take(&mut self.buffer);
        let scanned = self.scan(&live[self.start..]);
        self.buffer = live;
        match scanned? {
            Scanned::Complete { end, kind } => Ok(self.complete(kind, Source::Buffer(end), input)),
            // More input remains: append the next slice of it and scan on.
            Scanned::Incomplete if !input.is_empty() => Ok(Step::Skipped),
            Scanned::Incomplete => Ok(Step::NeedMore),
        }
    }

    /// Runs the lexer over `data` (which starts at the current element's first byte),
    /// applying the stanza byte limit.
    fn scan(&mut self, data: &[u8]) -> Result<Scanned, FramerError> {
        let cap = self.limits.stanza_bytes_max as usize;
        let window = &data[..data.len().min(cap)];
        let scanned = lex::run(self, window)?;
        if matches!(scanned, Scanned::Incomplete) && data.len() > cap {
            return Err(FramerError::Limit(Limit::StanzaBytes));
        }
        if let Scanned::Complete { end, .. } = scanned {
            if !scan::check_utf8(&data[..end]) {
                return Err(FramerError::Encoding);
            }
        }
        Ok(scanned)
    }

    fn complete(&mut self, kind: lex::Kind, source: Source, input: &mut &[u8]) -> Step {
        self.pos = 0;
        self.lex = Lex::Between;
        self.stacks.clear();
        match kind {
            lex::Kind::XmlDeclaration => {
                source.consume(self, input);
                Step::Skipped
            }
            lex::Kind::Header => {
                self.phase = Phase::InStream;
                Step::Yield(Pending::Header(source))
            }
            lex::Kind::Element => Step::Yield(Pending::Element(source)),
            lex::Kind::Close => {
                self.phase = Phase::Closed;
                source.consume(self, input);
                Step::Yield(Pending::Close)
            }
        }
    }
}

/// Where a completed unit's bytes are: the first `n` bytes of the caller's input, or
/// the first `n` live bytes of the buffer.
#[derive(Clone, Copy)]
enum Source {
    Input(usize),
    Buffer(usize),
}

impl Source {
    /// Drops the unit's bytes without yielding them.
    fn consume(self, framer: &mut Framer, input: &mut &[u8]) {
        match self {
            Source::Input(end) => *input = &input[end..],
            Source::Buffer(end) => {
                framer.start += end;
                framer.release_pending = true;
            }
        }
    }
}

enum Pending {
    Header(Source),
    Element(Source),
    Close,
}

enum Step {
    Yield(Pending),
    Skipped,
    NeedMore,
}

impl Pending {
    /// Turns a completed unit into the slice to hand out, advancing whichever of
    /// `input` or the buffer it came from.
    fn resolve<'s, 'a: 's>(self, framer: &'s mut Framer, input: &mut &'a [u8]) -> Frame<'s> {
        let take = |source: Source, framer: &'s mut Framer, input: &mut &'a [u8]| -> &'s [u8] {
            match source {
                Source::Input(end) => {
                    let (frame, rest) = input.split_at(end);
                    *input = rest;
                    frame
                }
                Source::Buffer(end) => {
                    let begin = framer.start;
                    framer.start += end;
                    framer.release_pending = true;
                    &framer.buffer[begin..begin + end]
                }
            }
        };
        match self {
            Pending::Header(source) => Frame::StreamHeader(take(source, framer, input)),
            Pending::Element(source) => Frame::Element(take(source, framer, input)),
            Pending::Close => Frame::StreamClose,
        }
    }
}
