//! SASL for XMPP (RFC 6120 section 6): mechanism names, the `<failure/>` conditions,
//! PLAIN (RFC 4616), and SCRAM-SHA-1/SHA-256 with optional channel binding
//! (RFC 5802, RFC 7677, RFC 9266) in [`scram`].
//!
//! Nothing here performs I/O or reads a clock: SCRAM nonces come from the caller, and
//! PBKDF2 (the slow part) is a plain function the caller runs wherever it wants (the
//! server runs it on a blocking thread, never on a core).

pub mod scram;

use base64::Engine as _;

pub const NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

/// XEP-0388 Extensible SASL Profile.
pub const NS2: &str = "urn:xmpp:sasl:2";

/// The mechanisms we implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    ScramSha1,
    ScramSha1Plus,
    ScramSha256,
    ScramSha256Plus,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
        }
    }

    pub fn from_name(name: &[u8]) -> Option<Mechanism> {
        Some(match name {
            b"PLAIN" => Mechanism::Plain,
            b"SCRAM-SHA-1" => Mechanism::ScramSha1,
            b"SCRAM-SHA-1-PLUS" => Mechanism::ScramSha1Plus,
            b"SCRAM-SHA-256" => Mechanism::ScramSha256,
            b"SCRAM-SHA-256-PLUS" => Mechanism::ScramSha256Plus,
            _ => return None,
        })
    }

    /// The SCRAM hash, or `None` for PLAIN.
    pub fn scram_hash(self) -> Option<scram::Hash> {
        match self {
            Mechanism::Plain => None,
            Mechanism::ScramSha1 | Mechanism::ScramSha1Plus => Some(scram::Hash::Sha1),
            Mechanism::ScramSha256 | Mechanism::ScramSha256Plus => Some(scram::Hash::Sha256),
        }
    }

    pub fn is_plus(self) -> bool {
        matches!(self, Mechanism::ScramSha1Plus | Mechanism::ScramSha256Plus)
    }
}

/// RFC 6120 section 6.5 SASL failure conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslFailure {
    Aborted,
    AccountDisabled,
    CredentialsExpired,
    EncryptionRequired,
    IncorrectEncoding,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    MechanismTooWeak,
    NotAuthorized,
    TemporaryAuthFailure,
}

impl SaslFailure {
    pub fn name(self) -> &'static str {
        match self {
            SaslFailure::Aborted => "aborted",
            SaslFailure::AccountDisabled => "account-disabled",
            SaslFailure::CredentialsExpired => "credentials-expired",
            SaslFailure::EncryptionRequired => "encryption-required",
            SaslFailure::IncorrectEncoding => "incorrect-encoding",
            SaslFailure::InvalidAuthzid => "invalid-authzid",
            SaslFailure::InvalidMechanism => "invalid-mechanism",
            SaslFailure::MalformedRequest => "malformed-request",
            SaslFailure::MechanismTooWeak => "mechanism-too-weak",
            SaslFailure::NotAuthorized => "not-authorized",
            SaslFailure::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }

    pub fn write(self, out: &mut Vec<u8>) {
        self.write_with_text(None, out);
    }

    /// Writes the `<failure/>` with an optional human-readable `<text/>` (RFC 6120
    /// section 6.4.5).
    pub fn write_with_text(self, text: Option<&str>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><");
        out.extend_from_slice(self.name().as_bytes());
        out.extend_from_slice(b"/>");
        self.write_rest(text, out);
    }

    /// XEP-0388 section 2.6.4: the same condition, in a SASL2 `<failure/>`.
    pub fn write2(self, text: Option<&str>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<failure xmlns='urn:xmpp:sasl:2'><");
        out.extend_from_slice(self.name().as_bytes());
        out.extend_from_slice(b" xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        self.write_rest(text, out);
    }

    fn write_rest(self, text: Option<&str>, out: &mut Vec<u8>) {
        if let Some(text) = text {
            out.extend_from_slice(b"<text>");
            crate::xml::escape(text, out);
            out.extend_from_slice(b"</text>");
        }
        out.extend_from_slice(b"</failure>");
    }
}

/// Decodes the base64 text of `<auth/>` or `<response/>`; `=` means "empty", and an
/// absent text means "no initial response".
pub fn decode_payload(text: &[u8]) -> Result<Vec<u8>, SaslFailure> {
    let trimmed = text.trim_ascii();
    if trimmed == b"=" || trimmed.is_empty() {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(trimmed).map_err(|_| SaslFailure::IncorrectEncoding)
}

pub fn encode_payload(data: &[u8]) -> String {
    if data.is_empty() {
        return "=".to_owned();
    }
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Writes `<name xmlns='..sasl'>base64</name>` (challenge, success, response, auth).
pub fn write_element(name: &str, data: Option<&[u8]>, out: &mut Vec<u8>) {
    write_element_in(NS, name, data, out);
}

/// [`write_element`] in namespace `ns` (XEP-0388's `<challenge/>` is SASL's, in
/// [`NS2`]).
pub fn write_element_in(ns: &str, name: &str, data: Option<&[u8]>, out: &mut Vec<u8>) {
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b" xmlns='");
    out.extend_from_slice(ns.as_bytes());
    out.push(b'\'');
    match data {
        None => out.extend_from_slice(b"/>"),
        Some(data) => {
            out.push(b'>');
            out.extend_from_slice(encode_payload(data).as_bytes());
            out.extend_from_slice(b"</");
            out.extend_from_slice(name.as_bytes());
            out.push(b'>');
        }
    }
}

/// A decoded PLAIN message (RFC 4616): `[authzid] NUL authcid NUL passwd`.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainMessage {
    pub authzid: Option<String>,
    pub authcid: String,
    pub password: String,
}

pub fn parse_plain(message: &[u8]) -> Result<PlainMessage, SaslFailure> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslFailure::MalformedRequest);
    };
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| SaslFailure::MalformedRequest);
    let authcid = text(authcid)?;
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslFailure::MalformedRequest);
    }
    Ok(PlainMessage {
        authzid: if authzid.is_empty() { None } else { Some(text(authzid)?) },
        authcid,
        password: text(password)?,
    })
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PLAIN messages split on NUL; missing parts are malformed.
    #[test]
    fn parses_plain() {
        let message = parse_plain(b"\0alice\0secret").unwrap();
        assert_eq!(message, PlainMessage { authzid: None, authcid: "alice".into(), password: "secret".into() });
        let with_authzid = parse_plain(b"alice@x\0alice\0s").unwrap();
        assert_eq!(with_authzid.authzid.as_deref(), Some("alice@x"));
        for bad in [&b"alice\0secret"[..], b"\0\0secret", b"\0alice\0", b"\0a\0b\0c", b"\0\xff\0x"] {
            assert_eq!(parse_plain(bad), Err(SaslFailure::MalformedRequest), "{bad:?}");
        }
    }

    /// Golden: the failure element and payload coding.
    #[test]
    fn failure_and_payload_xml() {
        let mut out = Vec::new();
        SaslFailure::NotAuthorized.write(&mut out);
        assert_eq!(out, b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>");
        assert_eq!(decode_payload(b"=").unwrap(), b"");
        assert_eq!(decode_payload(b" AGFsaWNlAHM= ").unwrap(), b"\0alice\0s");
        assert_eq!(decode_payload(b"!!"), Err(SaslFailure::IncorrectEncoding));
        let mut out = Vec::new();
        write_element("success", Some(b""), &mut out);
        assert_eq!(out, b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</success>");
    }

    #[test]
    /// Equal and unequal inputs compare as expected.
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
