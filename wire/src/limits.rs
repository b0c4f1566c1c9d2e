//! Named limits of the wire layer: every resource a peer can make us spend has one.
//!
//! Each value lists its default, the reason for it and what it costs. The shell turns the
//! operator's `limits` config section into a [`FramerLimits`]; tests use
//! [`FramerLimits::for_tests`] so the limit paths run in every test.

/// Bounds on what one peer may make the framer buffer or track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramerLimits {
    /// Largest top-level element (stanza, or stream header) in bytes.
    ///
    /// Default 65,536: the stanza size MongooseIM and ejabberd default to
    /// (`max_stanza_size`). Cost: at most this many bytes of buffer per connection, held
    /// only while a partial element is in flight.
    pub stanza_bytes_max: u32,
    /// Deepest element nesting inside a top-level element (the top-level element is 1).
    ///
    /// Default 32: real stanzas (PubSub items, MAM results with forwarded messages) stay
    /// below 12. Cost: 8 bytes of tag stack per level while a stanza is being scanned.
    pub depth_max: u16,
    /// Most attributes (namespace declarations included) on one element.
    ///
    /// Default 64. Duplicate detection is quadratic in this number, so it bounds CPU too.
    pub attributes_per_element_max: u16,
    /// Longest element or attribute name, prefix included, in bytes.
    ///
    /// Default 256: no XMPP name comes close; it stops names from being used to hide
    /// quadratic work in duplicate detection.
    pub name_bytes_max: u16,
}

impl FramerLimits {
    /// The production defaults documented on each field.
    pub const DEFAULT: FramerLimits =
        FramerLimits { stanza_bytes_max: 65_536, depth_max: 32, attributes_per_element_max: 64, name_bytes_max: 256 };

    /// Small limits so that tests reach every limit path with small inputs.
    pub const fn for_tests() -> FramerLimits {
        FramerLimits { stanza_bytes_max: 4_096, depth_max: 8, attributes_per_element_max: 8, name_bytes_max: 32 }
    }
}

impl Default for FramerLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The largest entity or character reference we accept (`&#x10FFFF;` is 10 bytes).
pub const ENTITY_BYTES_MAX: usize = 12;

/// The longest XML declaration we accept before the stream header.
pub const XML_DECLARATION_BYTES_MAX: usize = 128;

/// Offsets inside an element are stored as `u32`, so no element may reach 4 GiB.
const _: () = assert!(FramerLimits::DEFAULT.stanza_bytes_max < u32::MAX / 2);
/// A name must fit in an element, and the XML declaration must fit in the smallest
/// stanza limit we would accept.
const _: () = assert!((FramerLimits::DEFAULT.name_bytes_max as u32) < FramerLimits::DEFAULT.stanza_bytes_max);
const _: () = assert!(XML_DECLARATION_BYTES_MAX < 1024);

/// Largest JID part in bytes (RFC 7622 section 3.1: each part at most 1023 octets).
pub const JID_PART_BYTES_MAX: usize = 1023;
