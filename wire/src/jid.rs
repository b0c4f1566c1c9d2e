//! XMPP addresses (RFC 7622): bare and full JIDs, normalised once when parsed.
//!
//! - localpart: PRECIS UsernameCaseMapped (RFC 8265 section 3.3), minus the eight
//!   characters RFC 7622 section 3.3.1 forbids, so `Alice@LocalHost` and
//!   `alice@localhost` are the same account;
//! - domainpart: lowercased and NFC-normalised, one trailing dot removed
//!   (RFC 7622 section 3.2);
//! - resourcepart: PRECIS OpaqueString (RFC 7622 section 3.4), kept as given otherwise.
//!
//! Each part is 1 to 1023 bytes ([`JID_PART_BYTES_MAX`]). ASCII input, the common case,
//! takes a fast path that allocates only the result.
//!
//! A JID is one heap string plus two offsets: 24 bytes inline.

use std::borrow::Cow;
use std::fmt;

use precis_profiles::precis_core::profile::PrecisFastInvocation;
use precis_profiles::{OpaqueString, UsernameCaseMapped};

use crate::limits::JID_PART_BYTES_MAX;

/// Why a string is not a valid JID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    #[error("empty domainpart")]
    EmptyDomain,
    #[error("empty localpart before '@'")]
    EmptyLocal,
    #[error("empty resourcepart after '/'")]
    EmptyResource,
    #[error("a JID part is longer than 1023 bytes")]
    TooLong,
    #[error("invalid localpart")]
    InvalidLocal,
    #[error("invalid domainpart")]
    InvalidDomain,
    #[error("invalid resourcepart")]
    InvalidResource,
    #[error("a full JID (with a resource) was required")]
    ResourceRequired,
    #[error("a bare JID (without a resource) was required")]
    ResourceNotAllowed,
}

/// `localpart@domainpart` or `domainpart`: an account or a server.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BareJid {
    /// Normalised text.
    text: Box<str>,
    /// Index of the `@`, or 0 when there is no localpart.
    at: u16,
}

/// `bare/resource`: one session of an account.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FullJid {
    text: Box<str>,
    at: u16,
    /// Index of the `/` that starts the resource.
    slash: u16,
}

/// Any JID, as found in a `to` or `from` attribute.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Jid {
    Bare(BareJid),
    Full(FullJid),
}

impl BareJid {
    /// Builds a bare JID from its parts, normalising both.
    pub fn new(local: Option<&str>, domain: &str) -> Result<BareJid, JidError> {
        let domain = normalise_domain(domain)?;
        match local {
            None => Ok(BareJid { text: domain.into(), at: 0 }),
            Some(local) => {
                let local = normalise_local(local)?;
                let at = local.len();
                Ok(BareJid { text: format!("{local}@{domain}").into(), at: at as u16 })
            }
        }
    }

    /// A server or service address.
    pub fn domain_only(domain: &str) -> Result<BareJid, JidError> {
        BareJid::new(None, domain)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn local(&self) -> Option<&str> {
        (self.at > 0).then(|| &self.text[..self.at as usize])
    }

    pub fn domain(&self) -> &str {
        if self.at > 0 {
            &self.text[self.at as usize + 1..]
        } else {
            &self.text
        }
    }

    /// This account's session with `resource` (normalised).
    pub fn with_resource(&self, resource: &str) -> Result<FullJid, JidError> {
        let resource = normalise_resource(resource)?;
        let slash = self.text.len();
        Ok(FullJid { text: format!("{}/{resource}", self.text).into(), at: self.at, slash: slash as u16 })
    }

    /// Bytes of heap this JID owns.
    pub fn heap_bytes(&self) -> usize {
        self.text.len()
    }
}

impl FullJid {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The bare part as text, without allocating.
    pub fn bare_str(&self) -> &str {
        &self.text[..self.slash as usize]
    }

    pub fn to_bare(&self) -> BareJid {
        BareJid { text: self.bare_str().into(), at: self.at }
    }

    pub fn local(&self) -> Option<&str> {
        (self.at > 0).then(|| &self.text[..self.at as usize])
    }

    pub fn domain(&self) -> &str {
        let start = if self.at > 0 { self.at as usize + 1 } else { 0 };
        &self.text[start..self.slash as usize]
    }

    pub fn resource(&self) -> &str {
        &self.text[self.slash as usize + 1..]
    }

    pub fn heap_bytes(&self) -> usize {
        self.text.len()
    }
}

/// Splits a JID's text into (localpart, domain, resource) per RFC 7622 section 3.2:
/// the resource starts at the first `/`, the localpart ends at the first `@` before it.
fn split(text: &str) -> (Option<&str>, &str, Option<&str>) {
    let (bare, resource) = match text.split_once('/') {
        Some((bare, resource)) => (bare, Some(resource)),
        None => (text, None),
    };
    match bare.split_once('@') {
        Some((local, domain)) => (Some(local), domain, resource),
        None => (None, bare, resource),
    }
}

impl Jid {
    /// Parses and normalises any JID (RFC 7622 section 3.2: the resource starts at the
    /// first `/`, the localpart ends at the first `@` before it).
    pub fn parse(text: &str) -> Result<Jid, JidError> {
        let (local, domain, resource) = split(text);
        let bare = BareJid::new(local, domain)?;
        match resource {
            None => Ok(Jid::Bare(bare)),
            Some(resource) => Ok(Jid::Full(bare.with_resource(resource)?)),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Jid::Bare(bare) => bare.as_str(),
            Jid::Full(full) => full.as_str(),
        }
    }

    /// The bare part as text.
    pub fn bare_str(&self) -> &str {
        match self {
            Jid::Bare(bare) => bare.as_str(),
            Jid::Full(full) => full.bare_str(),
        }
    }

    pub fn to_bare(&self) -> BareJid {
        match self {
            Jid::Bare(bare) => bare.clone(),
            Jid::Full(full) => full.to_bare(),
        }
    }

    pub fn local(&self) -> Option<&str> {
        match self {
            Jid::Bare(bare) => bare.local(),
            Jid::Full(full) => full.local(),
        }
    }

    pub fn domain(&self) -> &str {
        match self {
            Jid::Bare(bare) => bare.domain(),
            Jid::Full(full) => full.domain(),
        }
    }

    pub fn resource(&self) -> Option<&str> {
        match self {
            Jid::Bare(_) => None,
            Jid::Full(full) => Some(full.resource()),
        }
    }
}

/// A JID for routing: normalised, but borrowed from the input when the input already
/// was normalised (the common case), so looking a recipient up does not allocate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JidRef<'a> {
    text: Cow<'a, str>,
    /// Index of the `@`, if there is a localpart.
    at: Option<usize>,
    /// Index of the `/`, if there is a resource.
    slash: Option<usize>,
}

impl<'a> JidRef<'a> {
    /// Parses and normalises `text` (same rules as [`Jid::parse`]).
    pub fn parse(text: Cow<'a, str>) -> Result<JidRef<'a>, JidError> {
        let normal = match &text {
            Cow::Borrowed(borrowed) => Self::normalise(borrowed)?,
            Cow::Owned(owned) => Cow::Owned(Self::normalise(owned)?.into_owned()),
        };
        let normal = match (normal, text) {
            (Cow::Borrowed(_), text) => text,
            (Cow::Owned(owned), _) => Cow::Owned(owned),
        };
        let slash = normal.find('/');
        let bare_end = slash.unwrap_or(normal.len());
        let at = normal[..bare_end].find('@');
        Ok(JidRef { text: normal, at, slash })
    }

    /// The normalised text: borrowed from `text` when nothing changed.
    fn normalise(text: &str) -> Result<Cow<'_, str>, JidError> {
        let (local, domain, resource) = split(text);
        let local = local.map(normalise_local).transpose()?;
        let domain_normal = normalise_domain(domain)?;
        let resource = resource.map(normalise_resource).transpose()?;
        let unchanged = matches!(local, None | Some(Cow::Borrowed(_)))
            && matches!(&domain_normal, Cow::Borrowed(d) if d.len() == domain.len())
            && matches!(resource, None | Some(Cow::Borrowed(_)));
        if unchanged {
            return Ok(Cow::Borrowed(text));
        }
        let mut out = String::with_capacity(text.len());
        if let Some(local) = &local {
            out.push_str(local);
            out.push('@');
        }
        out.push_str(&domain_normal);
        if let Some(resource) = &resource {
            out.push('/');
            out.push_str(resource);
        }
        Ok(Cow::Owned(out))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn bare_str(&self) -> &str {
        &self.text[..self.slash.unwrap_or(self.text.len())]
    }

    pub fn local(&self) -> Option<&str> {
        self.at.map(|at| &self.text[..at])
    }

    pub fn domain(&self) -> &str {
        let start = self.at.map(|at| at + 1).unwrap_or(0);
        &self.text[start..self.slash.unwrap_or(self.text.len())]
    }

    pub fn resource(&self) -> Option<&str> {
        self.slash.map(|slash| &self.text[slash + 1..])
    }

    pub fn is_full(&self) -> bool {
        self.slash.is_some()
    }
}

impl std::str::FromStr for BareJid {
    type Err = JidError;
    fn from_str(text: &str) -> Result<BareJid, JidError> {
        match Jid::parse(text)? {
            Jid::Bare(bare) => Ok(bare),
            Jid::Full(_) => Err(JidError::ResourceNotAllowed),
        }
    }
}

impl std::str::FromStr for FullJid {
    type Err = JidError;
    fn from_str(text: &str) -> Result<FullJid, JidError> {
        match Jid::parse(text)? {
            Jid::Full(full) => Ok(full),
            Jid::Bare(_) => Err(JidError::ResourceRequired),
        }
    }
}

impl std::str::FromStr for Jid {
    type Err = JidError;
    fn from_str(text: &str) -> Result<Jid, JidError> {
        Jid::parse(text)
    }
}

macro_rules! text_traits {
    ($($kind:ty),*) => {$(
        impl fmt::Display for $kind {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $kind {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.as_str())
            }
        }
    )*};
}
text_traits!(BareJid, FullJid);

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 7622 section 3.3.1: characters a localpart may not contain.
const LOCAL_FORBIDDEN: &[u8] = b"\"&'/:<>@";

/// Normalises a localpart (UsernameCaseMapped) and checks the JID rules.
pub fn normalise_local(local: &str) -> Result<Cow<'_, str>, JidError> {
    if local.is_empty() {
        return Err(JidError::EmptyLocal);
    }
    let ascii_ok = local.bytes().all(|b| (0x21..=0x7E).contains(&b) && !LOCAL_FORBIDDEN.contains(&b));
    let normal = if ascii_ok {
        if local.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(local.to_ascii_lowercase())
        } else {
            Cow::Borrowed(local)
        }
    } else {
        let enforced = UsernameCaseMapped::enforce(local).map_err(|_| JidError::InvalidLocal)?.into_owned();
        if enforced.bytes().any(|b| LOCAL_FORBIDDEN.contains(&b)) || !stable(&enforced, UsernameCaseMapped::enforce) {
            return Err(JidError::InvalidLocal);
        }
        Cow::Owned(enforced)
    };
    check_length(&normal)?;
    Ok(normal)
}

/// Normalises a domainpart: lowercase, NFC, no trailing dot; letters, digits, `-`, `.`
/// and non-ASCII characters, or an IP literal in brackets.
pub fn normalise_domain(domain: &str) -> Result<Cow<'_, str>, JidError> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return Err(JidError::EmptyDomain);
    }
    let literal = domain.starts_with('[') && domain.ends_with(']');
    let valid_byte = |b: u8| {
        b.is_ascii_alphanumeric()
            || b == b'-'
            || b == b'.'
            || b >= 0x80
            || (literal && (b == b':' || b == b'[' || b == b']'))
    };
    if !domain.bytes().all(valid_byte) || domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
        return Err(JidError::InvalidDomain);
    }
    // A label neither starts nor ends with a hyphen (RFC 5891 section 4.2.3.1, RFC
    // 1123 section 2.1), and an ASCII label is at most 63 octets (RFC 1035 section
    // 2.3.4).
    let bad_label =
        |label: &str| label.starts_with('-') || label.ends_with('-') || (label.is_ascii() && label.len() > 63);
    if !literal && domain.split('.').any(bad_label) {
        return Err(JidError::InvalidDomain);
    }
    let normal = if domain.is_ascii() {
        if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(domain.to_ascii_lowercase())
        } else {
            Cow::Borrowed(domain)
        }
    } else {
        // RFC 7622 section 3.2 wants IDNA2008 labels: letters and digits of any
        // script, no controls, spaces, symbols or punctuation. Each label passes
        // PRECIS IdentifierClass (UsernameCaseMapped: case-folded, NFC), which
        // draws the same line without an IDNA table of its own.
        let mut labels = Vec::new();
        for label in domain.split('.') {
            let enforced = UsernameCaseMapped::enforce(label).map_err(|_| JidError::InvalidDomain)?;
            if !stable(&enforced, UsernameCaseMapped::enforce) {
                return Err(JidError::InvalidDomain);
            }
            labels.push(enforced.into_owned());
        }
        Cow::Owned(labels.join("."))
    };
    check_length(&normal)?;
    Ok(normal)
}

/// Normalises a resourcepart (OpaqueString).
pub fn normalise_resource(resource: &str) -> Result<Cow<'_, str>, JidError> {
    if resource.is_empty() {
        return Err(JidError::EmptyResource);
    }
    let normal = if resource.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
        Cow::Borrowed(resource)
    } else {
        let enforced = OpaqueString::enforce(resource).map_err(|_| JidError::InvalidResource)?.into_owned();
        if !stable(&enforced, OpaqueString::enforce) {
            return Err(JidError::InvalidResource);
        }
        Cow::Owned(enforced)
    };
    check_length(&normal)?;
    Ok(normal)
}

/// Whether enforcing `normal` again gives it back. PRECIS enforcement is not always
/// idempotent (U+0387 GREEK ANO TELEIA normalises to U+00B7 MIDDLE DOT, which the
/// context rules then refuse): a part that would not parse again is refused now, so
/// every JID the server hands out parses to itself.
fn stable<'a, E>(normal: &'a str, enforce: impl Fn(&'a str) -> Result<Cow<'a, str>, E>) -> bool {
    enforce(normal).is_ok_and(|again| again == normal)
}

fn check_length(part: &str) -> Result<(), JidError> {
    if part.len() > JID_PART_BYTES_MAX {
        Err(JidError::TooLong)
    } else {
        Ok(())
    }
}

const _: () = assert!(3 * JID_PART_BYTES_MAX + 2 < u16::MAX as usize);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Localpart and domainpart are case-folded, so both spellings are one account.
    #[test]
    fn case_folds_local_and_domain_but_not_resource() {
        let a = Jid::parse("Alice@LocalHost/Phone").unwrap();
        assert_eq!(a.as_str(), "alice@localhost/Phone");
        assert_eq!(a.bare_str(), "alice@localhost");
        assert_eq!(a.local(), Some("alice"));
        assert_eq!(a.domain(), "localhost");
        assert_eq!(a.resource(), Some("Phone"));
        let b: BareJid = "alice@localhost".parse().unwrap();
        assert_eq!(a.to_bare(), b);
    }

    /// Non-ASCII localparts go through PRECIS: width and case mapping, NFC.
    #[test]
    fn non_ascii_localpart_is_precis_mapped() {
        let jid = Jid::parse("ÄLICE@Example.COM.").unwrap();
        assert_eq!(jid.as_str(), "älice@example.com");
        let resource = Jid::parse("a@b/\u{00C5}ngstr\u{00F6}m").unwrap();
        assert_eq!(resource.resource(), Some("Ångström"));
    }

    /// Every rule of RFC 7622 that can reject input does.
    #[test]
    fn rejects_invalid_jids() {
        let cases = [
            ("", JidError::EmptyDomain),
            ("@localhost", JidError::EmptyLocal),
            ("a@", JidError::EmptyDomain),
            ("a@b/", JidError::EmptyResource),
            ("a b@c", JidError::InvalidLocal),
            ("a\"b@c", JidError::InvalidLocal),
            ("a@b c", JidError::InvalidDomain),
            ("a@b..c", JidError::InvalidDomain),
            // Regression (found by the idempotence property): only one trailing dot goes.
            ("a@a..", JidError::InvalidDomain),
            // Regression (found by a breaker): a control character in a domain was
            // taken as a remote domain; symbols and bidi controls are no label either.
            ("a@\u{85}", JidError::InvalidDomain),
            ("a@example\u{85}.com", JidError::InvalidDomain),
            ("a@\u{202e}evil.com", JidError::InvalidDomain),
            ("a@\u{2603}.com", JidError::InvalidDomain),
            // A label may not start or end with a hyphen (a breaker got
            // remote-server-not-found for bob@-localhost), nor pass 63 octets.
            ("bob@-localhost", JidError::InvalidDomain),
            ("bob@example-.com", JidError::InvalidDomain),
            ("bob@b\u{fc}cher-.example", JidError::InvalidDomain),
        ];
        for (text, error) in cases {
            assert_eq!(Jid::parse(text), Err(error), "{text:?}");
        }
        let long = format!("{}@b", "a".repeat(1024));
        assert_eq!(Jid::parse(&long), Err(JidError::TooLong));
        assert_eq!("a@b".parse::<FullJid>(), Err(JidError::ResourceRequired));
        assert_eq!("a@b/c".parse::<BareJid>(), Err(JidError::ResourceNotAllowed));
    }

    /// Internationalised domains (letters of any script) parse, case-folded; ASCII
    /// labels are at most 63 octets.
    #[test]
    fn unicode_domains_parse() {
        let long = format!("a@{}.example", "x".repeat(64));
        assert_eq!(Jid::parse(&long), Err(JidError::InvalidDomain));
        assert!(Jid::parse(&format!("a@{}.example", "x".repeat(63))).is_ok());
        assert!(Jid::parse("a@xn--bcher-kva.example").is_ok());
        assert_eq!(Jid::parse("a@B\u{fc}cher.example").unwrap().domain(), "b\u{fc}cher.example");
        assert_eq!(Jid::parse("a@\u{4f8b}\u{3048}.jp").unwrap().domain(), "\u{4f8b}\u{3048}.jp");
    }

    /// The resource starts at the first '/', so '@' in a resource is fine.
    #[test]
    fn resource_may_contain_at_and_slash() {
        let jid = Jid::parse("a@b/c@d/e").unwrap();
        assert_eq!(jid.bare_str(), "a@b");
        assert_eq!(jid.resource(), Some("c@d/e"));
        let domain_only = Jid::parse("b/c@d").unwrap();
        assert_eq!(domain_only.local(), None);
        assert_eq!(domain_only.domain(), "b");
    }

    /// The borrowed form normalises exactly like the owned one, and borrows when the
    /// input was already normal.
    #[test]
    fn jid_ref_matches_jid() {
        for text in ["alice@localhost/phone", "Alice@LocalHost/Phone", "localhost", "a@b.", "ÄLICE@x/r", "a@b/c@d/e"] {
            let owned = Jid::parse(text).unwrap();
            let borrowed = JidRef::parse(Cow::Borrowed(text)).unwrap();
            assert_eq!(borrowed.as_str(), owned.as_str(), "{text}");
            assert_eq!(borrowed.bare_str(), owned.bare_str());
            assert_eq!(borrowed.domain(), owned.domain());
            assert_eq!(borrowed.local(), owned.local());
            assert_eq!(borrowed.resource(), owned.resource());
        }
        assert!(matches!(JidRef::parse(Cow::Borrowed("alice@localhost")).unwrap().text, Cow::Borrowed(_)));
        assert!(JidRef::parse(Cow::Borrowed("a@b..")).is_err());
    }

    /// Regression (found by the `normalisation_is_idempotent` property in CI's suite
    /// run): a resource with U+0387 was accepted, normalised to U+00B7, and the result
    /// no longer parsed. Parts that do not survive a second enforcement are refused.
    #[test]
    fn non_idempotent_precis_parts_are_refused() {
        assert_eq!(Jid::parse("\u{10d69}/@0/\u{387}").unwrap_err(), JidError::InvalidDomain); // unassigned: no label
        assert_eq!(Jid::parse("b/@0/\u{387}").unwrap_err(), JidError::InvalidResource);
        assert!(Jid::parse("a@b/caf\u{e9}").is_ok());
    }

    /// Memory budget: a JID is a boxed string plus offsets.
    #[test]
    fn jid_size_budget() {
        assert_eq!(std::mem::size_of::<BareJid>(), 24);
        assert_eq!(std::mem::size_of::<FullJid>(), 24);
    }

    proptest! {
        /// Normalisation is idempotent: parsing a normalised JID gives it back unchanged.
        #[test]
        fn normalisation_is_idempotent(local in "\\PC{1,12}", domain in "[a-zA-Z0-9.-]{1,12}|\\PC{1,6}", resource in "\\PC{1,12}") {
            if let Ok(jid) = Jid::parse(&format!("{local}@{domain}/{resource}")) {
                let again = Jid::parse(jid.as_str()).unwrap();
                prop_assert_eq!(again.as_str(), jid.as_str());
            }
        }
    }
}
