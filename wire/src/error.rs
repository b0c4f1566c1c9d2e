//! Stream errors (RFC 6120 section 4.9) and stanza errors (section 8.3) as typed values,
//! with their XML.
//!
//! Every error the wire layer can raise maps to exactly one stream error condition
//! through one exhaustive `match` ([`StreamErrorCondition::from`] for framer errors);
//! tests match on conditions, never on strings.

use crate::framer::FramerError;
use crate::xml::escape;

/// RFC 6120 section 4.9.3 stream error conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamErrorCondition {
    BadFormat,
    BadNamespacePrefix,
    Conflict,
    ConnectionTimeout,
    HostGone,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    InvalidXml,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    RemoteConnectionFailed,
    Reset,
    ResourceConstraint,
    RestrictedXml,
    SeeOtherHost,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedEncoding,
    UnsupportedFeature,
    UnsupportedStanzaType,
    UnsupportedVersion,
}

impl StreamErrorCondition {
    pub fn name(self) -> &'static str {
        use StreamErrorCondition::*;
        match self {
            BadFormat => "bad-format",
            BadNamespacePrefix => "bad-namespace-prefix",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            HostGone => "host-gone",
            HostUnknown => "host-unknown",
            ImproperAddressing => "improper-addressing",
            InternalServerError => "internal-server-error",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            InvalidXml => "invalid-xml",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            RemoteConnectionFailed => "remote-connection-failed",
            Reset => "reset",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SeeOtherHost => "see-other-host",
            SystemShutdown => "system-shutdown",
            UndefinedCondition => "undefined-condition",
            UnsupportedEncoding => "unsupported-encoding",
            UnsupportedFeature => "unsupported-feature",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
        }
    }

    /// Parses a condition element name (for clients reading a server's error).
    pub fn from_name(name: &str) -> Option<StreamErrorCondition> {
        use StreamErrorCondition::*;
        const ALL: [StreamErrorCondition; 25] = [
            BadFormat,
            BadNamespacePrefix,
            Conflict,
            ConnectionTimeout,
            HostGone,
            HostUnknown,
            ImproperAddressing,
            InternalServerError,
            InvalidFrom,
            InvalidNamespace,
            InvalidXml,
            NotAuthorized,
            NotWellFormed,
            PolicyViolation,
            RemoteConnectionFailed,
            Reset,
            ResourceConstraint,
            RestrictedXml,
            SeeOtherHost,
            SystemShutdown,
            UndefinedCondition,
            UnsupportedEncoding,
            UnsupportedFeature,
            UnsupportedStanzaType,
            UnsupportedVersion,
        ];
        if name == "xml-not-well-formed" {
            return Some(NotWellFormed);
        }
        ALL.into_iter().find(|c| c.name() == name)
    }
}

impl From<FramerError> for StreamErrorCondition {
    fn from(error: FramerError) -> StreamErrorCondition {
        match error {
            FramerError::Syntax(_) => StreamErrorCondition::NotWellFormed,
            FramerError::Encoding => StreamErrorCondition::UnsupportedEncoding,
            FramerError::Restricted(_) => StreamErrorCondition::RestrictedXml,
            // RFC 6120 section 11.2 example: an undeclared prefix is a well-formedness
            // (namespace well-formedness) error.
            FramerError::UndeclaredPrefix => StreamErrorCondition::NotWellFormed,
            FramerError::Limit(_) => StreamErrorCondition::PolicyViolation,
            // A stream inside a stream is not a first-level element we support.
            FramerError::NestedStreamHeader => StreamErrorCondition::UnsupportedStanzaType,
        }
    }
}

/// A stream error ready to send: condition plus optional human-readable text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamError {
    pub condition: StreamErrorCondition,
    pub text: Option<String>,
}

impl StreamError {
    pub fn new(condition: StreamErrorCondition) -> StreamError {
        StreamError { condition, text: None }
    }

    pub fn with_text(condition: StreamErrorCondition, text: impl Into<String>) -> StreamError {
        StreamError { condition, text: Some(text.into()) }
    }

    /// Writes `<stream:error>...</stream:error></stream:stream>`.
    pub fn write_closing(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<stream:error><");
        out.extend_from_slice(self.condition.name().as_bytes());
        out.extend_from_slice(b" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>");
        if let Some(text) = &self.text {
            out.extend_from_slice(b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>");
            escape(text, out);
            out.extend_from_slice(b"</text>");
        }
        out.extend_from_slice(b"</stream:error></stream:stream>");
    }
}

impl From<FramerError> for StreamError {
    fn from(error: FramerError) -> StreamError {
        StreamError::with_text(error.into(), error.to_string())
    }
}

/// RFC 6120 section 8.3.2 error types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    pub fn name(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

/// RFC 6120 section 8.3.3 stanza error conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StanzaErrorCondition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    Gone,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    Redirect,
    RegistrationRequired,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    SubscriptionRequired,
    UndefinedCondition,
    UnexpectedRequest,
}

impl StanzaErrorCondition {
    pub fn name(self) -> &'static str {
        use StanzaErrorCondition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            Gone => "gone",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            Redirect => "redirect",
            RegistrationRequired => "registration-required",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            SubscriptionRequired => "subscription-required",
            UndefinedCondition => "undefined-condition",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// The error type RFC 6120 section 8.3.3 gives for each condition.
    pub fn default_type(self) -> ErrorType {
        use StanzaErrorCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect => ErrorType::Modify,
            NotAuthorized | Forbidden | RegistrationRequired | SubscriptionRequired => ErrorType::Auth,
            RecipientUnavailable | RemoteServerTimeout | ResourceConstraint | UnexpectedRequest => ErrorType::Wait,
            Conflict
            | FeatureNotImplemented
            | Gone
            | InternalServerError
            | ItemNotFound
            | NotAllowed
            | RemoteServerNotFound
            | ServiceUnavailable
            | UndefinedCondition => ErrorType::Cancel,
        }
    }

    pub fn from_name(name: &str) -> Option<StanzaErrorCondition> {
        use StanzaErrorCondition::*;
        const ALL: [StanzaErrorCondition; 22] = [
            BadRequest,
            Conflict,
            FeatureNotImplemented,
            Forbidden,
            Gone,
            InternalServerError,
            ItemNotFound,
            JidMalformed,
            NotAcceptable,
            NotAllowed,
            NotAuthorized,
            PolicyViolation,
            RecipientUnavailable,
            Redirect,
            RegistrationRequired,
            RemoteServerNotFound,
            RemoteServerTimeout,
            ResourceConstraint,
            ServiceUnavailable,
            SubscriptionRequired,
            UndefinedCondition,
            UnexpectedRequest,
        ];
        ALL.into_iter().find(|c| c.name() == name)
    }
}

/// A stanza error: the `<error/>` child of an error reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StanzaError {
    pub condition: StanzaErrorCondition,
    pub kind: ErrorType,
    pub text: Option<String>,
    /// An application-specific condition element (RFC 6120 section 8.3.4), as XML,
    /// for example XEP-0191's `<blocked xmlns='urn:xmpp:blocking:errors'/>`.
    pub extra: Option<String>,
}

impl StanzaError {
    pub fn new(condition: StanzaErrorCondition) -> StanzaError {
        StanzaError { condition, kind: condition.default_type(), text: None, extra: None }
    }

    pub fn with_text(condition: StanzaErrorCondition, text: impl Into<String>) -> StanzaError {
        StanzaError { condition, kind: condition.default_type(), text: Some(text.into()), extra: None }
    }

    /// Writes `<error type='..'><condition xmlns='...'/>[<text/>]</error>`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<error type='");
        out.extend_from_slice(self.kind.name().as_bytes());
        out.extend_from_slice(b"'><");
        out.extend_from_slice(self.condition.name().as_bytes());
        out.extend_from_slice(b" xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>");
        if let Some(text) = &self.text {
            out.extend_from_slice(b"<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>");
            escape(text, out);
            out.extend_from_slice(b"</text>");
        }
        if let Some(extra) = &self.extra {
            out.extend_from_slice(extra.as_bytes());
        }
        out.extend_from_slice(b"</error>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden: the stream error XML of RFC 6120 section 4.9.2.
    #[test]
    fn stream_error_xml() {
        let mut out = Vec::new();
        StreamError::with_text(StreamErrorCondition::PolicyViolation, "a < b").write_closing(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>a &lt; b</text></stream:error></stream:stream>"
        );
    }

    /// Golden: a stanza error with its RFC-given type.
    #[test]
    fn stanza_error_xml() {
        let mut out = Vec::new();
        StanzaError::new(StanzaErrorCondition::ServiceUnavailable).write(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
        );
        assert_eq!(StanzaErrorCondition::BadRequest.default_type(), ErrorType::Modify);
    }

    /// Names round-trip, including RFC 3920's old name for not-well-formed.
    #[test]
    fn condition_names_round_trip() {
        for name in ["bad-format", "system-shutdown", "unsupported-version"] {
            assert_eq!(StreamErrorCondition::from_name(name).unwrap().name(), name);
        }
        assert_eq!(StreamErrorCondition::from_name("xml-not-well-formed"), Some(StreamErrorCondition::NotWellFormed));
        assert_eq!(StanzaErrorCondition::from_name("item-not-found"), Some(StanzaErrorCondition::ItemNotFound));
    }
}
