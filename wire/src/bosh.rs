//! XEP-0124 (BOSH) carrying XEP-0206 (XMPP over BOSH), sans-IO: a request's
//! `<body/>` in, the stream bytes it carries and what it asks; the server's stream
//! output in, the payload of its `<body/>` answers out; the order of requests.
//!
//! A BOSH session is an ordinary c2s stream underneath: the shell writes the
//! request payloads (and a stream header at creation and restart) into it and puts
//! what the stream writes into the answers. Bodies are parsed with `roxmltree` (no
//! DTDs), the stream output split with [`crate::split`]; both are property-tested
//! here and fuzzed (`wire/fuzz`, target `web`).

use crate::split::{next_unit, Unit};
use crate::stanza::write_attribute;

/// XEP-0124's namespace (`<body xmlns=...>`).
pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// XEP-0206's attribute namespace (`xmpp:version`, `xmpp:restart`).
pub const NS_XBOSH: &str = "urn:xmpp:xbosh";
const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";
const NS_STREAMS: &str = "http://etherx.jabber.org/streams";

/// XEP-0124 section 7.1: the highest `rid` a client may start from is 2^53 - 1
/// (rids must stay exact in a JavaScript number).
pub const RID_MAX: u64 = (1 << 53) - 1;

/// Deepest nesting a body may have, `<body/>` included (stanzas inside are held
/// to the framer's `depth_max`, 32 by default, when they reach the stream). Deeper
/// bodies are refused before `roxmltree`, which recurses per level, sees them.
pub const BODY_DEPTH_MAX: usize = 64;

/// Attributes one element of a body may have (the framer's default for stanzas);
/// roxmltree compares each with every earlier one.
pub const BODY_ATTRIBUTES_MAX: usize = 64;

/// Namespace declarations (`xmlns` and `xmlns:*`) a body may hold in all. roxmltree
/// copies every namespace in scope into each element that declares one more, so
/// unbounded declarations cost the product of the two (found by a breaker: 5,000
/// on `<body/>` and one on each of 3,000 children kept a core busy for 85 s).
pub const BODY_NAMESPACES_MAX: usize = 1024;

/// XEP-0124 section 17.2: terminal binding conditions (`<body type='terminate'
/// condition=.../>`), the ones this server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The body is not XML, or not a `<body/>`, or lacks what it needs.
    BadRequest,
    /// The `to` of a creation request is not served here.
    HostUnknown,
    /// Unknown `sid`, or a `rid` outside the window (section 14.3).
    ItemNotFound,
    /// Over a limit: too many requests at once, a pause too long, too many sessions.
    PolicyViolation,
    /// The stream underneath failed; its `<stream:error/>` is in the body
    /// (XEP-0206 section 7).
    RemoteStreamError,
    /// The stream underneath ended without a close.
    RemoteConnectionFailed,
    /// The server is shutting down.
    SystemShutdown,
    /// Anything else (the server could not start the session).
    UndefinedCondition,
}

impl Condition {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::BadRequest => "bad-request",
            Condition::HostUnknown => "host-unknown",
            Condition::ItemNotFound => "item-not-found",
            Condition::PolicyViolation => "policy-violation",
            Condition::RemoteStreamError => "remote-stream-error",
            Condition::RemoteConnectionFailed => "remote-connection-failed",
            Condition::SystemShutdown => "system-shutdown",
            Condition::UndefinedCondition => "undefined-condition",
        }
    }
}

/// A session creation request's attributes (XEP-0124 section 7.1, XEP-0206
/// section 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Create {
    /// The domain asked for.
    pub to: String,
    /// `xml:lang`, if given.
    pub lang: Option<String>,
    /// Longest time, in seconds, the client lets a request wait for data.
    pub wait: u32,
    /// How many requests the client lets the server hold at once.
    pub hold: u32,
}

/// What a request asks beyond carrying its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No `sid`: create a session (XEP-0124 section 7.1).
    Create(Create),
    /// `xmpp:restart='true'`: restart the stream after SASL (XEP-0206 section 5).
    Restart,
    /// `type='terminate'`: send the payload, then end the session (section 12).
    Terminate,
    /// `pause`: the client is away for this many seconds (section 10).
    Pause(u32),
    /// Payload only (none: a poll).
    Plain,
}

/// One parsed request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    /// The request id (at most [`RID_MAX`]).
    pub rid: u64,
    /// The session, absent in a creation request.
    pub sid: Option<String>,
    pub kind: Kind,
    /// The child elements, byte for byte, to write into the stream.
    pub payload: Vec<u8>,
}

/// Parses a request body (the HTTP request's content).
///
/// Errors: `BadRequest` for anything that is not one `<body/>` in XEP-0124's
/// namespace with a `rid`, and for a creation request without `to`.
pub fn parse(bytes: &[u8]) -> Result<Body, Condition> {
    if crate::xml::exceeds(bytes, BODY_DEPTH_MAX, BODY_ATTRIBUTES_MAX)
        || memchr::memmem::find_iter(bytes, b"xmlns").nth(BODY_NAMESPACES_MAX).is_some()
    {
        return Err(Condition::BadRequest);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Condition::BadRequest)?;
    let doc = roxmltree::Document::parse(text).map_err(|_| Condition::BadRequest)?;
    let root = doc.root_element();
    if root.tag_name().name() != "body" || root.tag_name().namespace() != Some(NS_HTTPBIND) {
        return Err(Condition::BadRequest);
    }
    let rid = root
        .attribute("rid")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|rid| *rid <= RID_MAX)
        .ok_or(Condition::BadRequest)?;
    let sid = root.attribute("sid").map(str::to_owned);
    let number = |name: &str| root.attribute(name).and_then(|v| v.trim().parse::<u32>().ok());
    let kind = if sid.is_none() {
        let to = root.attribute("to").filter(|to| !to.is_empty()).ok_or(Condition::BadRequest)?;
        Kind::Create(Create {
            to: to.to_owned(),
            lang: root.attribute((NS_XML, "lang")).map(str::to_owned),
            wait: number("wait").ok_or(Condition::BadRequest)?,
            hold: number("hold").unwrap_or(1),
        })
    } else if root.attribute("type") == Some("terminate") {
        Kind::Terminate
    } else if root.attribute((NS_XBOSH, "restart")) == Some("true") {
        Kind::Restart
    } else if let Some(pause) = root.attribute("pause") {
        Kind::Pause(pause.trim().parse().map_err(|_| Condition::BadRequest)?)
    } else {
        Kind::Plain
    };
    let mut payload = Vec::new();
    for child in root.children() {
        if child.is_element() {
            let range = child.range();
            payload.extend_from_slice(text.get(range).ok_or(Condition::BadRequest)?.as_bytes());
        } else if child.is_text() && !child.text().unwrap_or_default().trim().is_empty() {
            return Err(Condition::BadRequest);
        }
    }
    Ok(Body { rid, sid, kind, payload })
}

/// Where a request's `rid` falls (XEP-0124 section 14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The next one: handle it now.
    Next,
    /// Ahead of the next by less than the window: keep it until the gap fills.
    Ahead,
    /// Already handled: a retransmission (answer it with the same response).
    Repeat,
    /// Too far ahead or too far back: `item-not-found`, end the session.
    Outside,
}

/// The request ids of one session: which one is next, and the window
/// (`requests`) of ids that may be outstanding at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rids {
    next: u64,
    window: u64,
}

impl Rids {
    /// After the creation request `created`; `window` is the `requests` attribute
    /// the server announced.
    pub fn new(created: u64, window: u32) -> Rids {
        Rids { next: created.saturating_add(1), window: u64::from(window.max(1)) }
    }

    /// The id expected next.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Where `rid` falls.
    pub fn order(&self, rid: u64) -> Order {
        if rid == self.next {
            Order::Next
        } else if rid > self.next && rid - self.next < self.window {
            Order::Ahead
        } else if rid < self.next && self.next - rid <= self.window {
            Order::Repeat
        } else {
            Order::Outside
        }
    }

    /// The next request was handled.
    pub fn advance(&mut self) {
        self.next = self.next.saturating_add(1);
    }
}

/// The creation response's attributes (XEP-0124 section 7.2, XEP-0206 section 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    pub sid: String,
    /// Seconds a request is held at most (the client's `wait`, capped).
    pub wait: u32,
    pub hold: u32,
    /// Requests the client may have outstanding at once.
    pub requests: u32,
    /// Seconds without a request after which the session ends.
    pub inactivity: u32,
    /// Longest `pause`, in seconds.
    pub maxpause: u32,
    /// Shortest interval, in seconds, between polls (`hold='0'`).
    pub polling: u32,
    /// The domain.
    pub from: String,
}

/// Appends the creation response carrying `payload`.
pub fn write_created(created: &Created, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"<body");
    write_namespaces(out);
    write_attribute(out, "sid", &created.sid);
    for (name, value) in [
        ("wait", created.wait),
        ("hold", created.hold),
        ("requests", created.requests),
        ("inactivity", created.inactivity),
        ("maxpause", created.maxpause),
        ("polling", created.polling),
    ] {
        write_attribute(out, name, &value.to_string());
    }
    write_attribute(out, "ver", "1.11");
    write_attribute(out, "from", &created.from);
    write_attribute(out, "xmpp:version", "1.0");
    write_attribute(out, "xmpp:restartlogic", "true");
    out.push(b'>');
    out.extend_from_slice(payload);
    out.extend_from_slice(b"</body>");
}

/// Appends an ordinary response carrying `payload`.
pub fn write_body(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"<body");
    write_namespaces(out);
    if payload.is_empty() {
        out.extend_from_slice(b"/>");
    } else {
        out.push(b'>');
        out.extend_from_slice(payload);
        out.extend_from_slice(b"</body>");
    }
}

/// Appends a terminating response (`condition` `None`: the session ended
/// normally) carrying `payload`.
pub fn write_terminate(condition: Option<Condition>, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"<body");
    write_namespaces(out);
    write_attribute(out, "type", "terminate");
    if let Some(condition) = condition {
        write_attribute(out, "condition", condition.as_str());
    }
    out.push(b'>');
    out.extend_from_slice(payload);
    out.extend_from_slice(b"</body>");
}

fn write_namespaces(out: &mut Vec<u8>) {
    write_attribute(out, "xmlns", NS_HTTPBIND);
    write_attribute(out, "xmlns:xmpp", NS_XBOSH);
    write_attribute(out, "xmlns:stream", NS_STREAMS);
}

/// The stream header the shell writes into the stream at creation and restart.
pub fn write_stream_header(to: &str, lang: Option<&str>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<stream:stream");
    write_attribute(out, "xmlns", "jabber:client");
    write_attribute(out, "xmlns:stream", NS_STREAMS);
    write_attribute(out, "to", to);
    if let Some(lang) = lang {
        write_attribute(out, "xml:lang", lang);
    }
    write_attribute(out, "version", "1.0");
    out.push(b'>');
}

/// How the stream ended, as far as its output says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Not yet.
    Open,
    /// `</stream:stream>` after what was translated.
    Closed,
    /// A `<stream:error/>` (in the payload), then the close.
    Failed,
}

/// Translates the stream's output `xml` (any split) into response payload: whole
/// elements, each in the stream's namespace (`xmlns='jabber:client'` added where
/// the stream implied it); headers and whitespace dropped. Returns the bytes
/// consumed (the rest is an incomplete element: call again with more) and whether
/// the stream ended.
pub fn translate(xml: &[u8], payload: &mut Vec<u8>) -> (usize, Ending) {
    let mut used = 0;
    let mut ending = Ending::Open;
    while let Some((unit, n)) = xml.get(used..).and_then(next_unit) {
        let bytes = xml.get(used..used + n).unwrap_or_default();
        used += n;
        match unit {
            Unit::Skip | Unit::Header => {}
            Unit::Close => {
                if ending == Ending::Open {
                    ending = Ending::Closed;
                }
                break;
            }
            Unit::Element { name_end, stream_prefix, .. } => {
                if stream_prefix && bytes.get(1..name_end) == Some(b"stream:error") {
                    ending = Ending::Failed;
                }
                // The `stream:` prefix is declared on the `<body/>` itself.
                unit.write_standalone(bytes, false, payload);
            }
        }
    }
    (used, ending)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Strophe's creation request, as converse.js sends it.
    #[test]
    fn a_creation_request_is_read() {
        let body = parse(
            b"<body rid='2837290' xmlns='http://jabber.org/protocol/httpbind' to='localhost' xml:lang='en' \
              wait='60' hold='1' content='text/xml; charset=utf-8' ver='1.6' xmpp:version='1.0' \
              xmlns:xmpp='urn:xmpp:xbosh'/>",
        )
        .expect("valid");
        assert_eq!(body.rid, 2837290);
        assert_eq!(body.sid, None);
        assert_eq!(
            body.kind,
            Kind::Create(Create { to: "localhost".into(), lang: Some("en".into()), wait: 60, hold: 1 })
        );
        assert!(body.payload.is_empty());
    }

    #[test]
    fn payload_restart_and_terminate_are_read() {
        let auth = parse(
            b"<body rid='5' sid='ab' xmlns='http://jabber.org/protocol/httpbind'>\
              <auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth> \
              <iq type='get' id='x&amp;y'/></body>",
        )
        .expect("valid");
        assert_eq!((auth.rid, auth.sid.as_deref(), &auth.kind), (5, Some("ab"), &Kind::Plain));
        assert_eq!(
            std::str::from_utf8(&auth.payload).unwrap(),
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth><iq type='get' id='x&amp;y'/>"
        );
        let restart = parse(
            b"<body rid='6' sid='ab' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh' \
              xmlns='http://jabber.org/protocol/httpbind'/>",
        )
        .expect("valid");
        assert_eq!(restart.kind, Kind::Restart);
        let end = parse(
            b"<body rid='7' sid='ab' type='terminate' xmlns='http://jabber.org/protocol/httpbind'>\
              <presence type='unavailable' xmlns='jabber:client'/></body>",
        )
        .expect("valid");
        assert_eq!(end.kind, Kind::Terminate);
        assert!(!end.payload.is_empty());
        let pause = parse(b"<body rid='8' sid='ab' pause='60' xmlns='http://jabber.org/protocol/httpbind'/>");
        assert_eq!(pause.map(|b| b.kind), Ok(Kind::Pause(60)));
    }

    #[test]
    fn bad_bodies_are_bad_requests() {
        for bad in [
            &b"not xml"[..],
            b"<body rid='1' to='a' wait='1'/>",
            b"<body xmlns='http://jabber.org/protocol/httpbind' sid='a'/>",
            b"<body xmlns='http://jabber.org/protocol/httpbind' rid='9007199254740992' sid='a'/>",
            b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1' wait='5'/>",
            b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1' sid='a'>text</body>",
            b"<!DOCTYPE body [<!ENTITY a 'b'>]><body xmlns='http://jabber.org/protocol/httpbind' rid='1' sid='a'/>",
            b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1' sid='a' pause='x'/>",
            b"\xff",
        ] {
            assert_eq!(parse(bad), Err(Condition::BadRequest), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn rids_keep_order_within_the_window() {
        let mut rids = Rids::new(100, 2);
        assert_eq!(rids.order(101), Order::Next);
        assert_eq!(rids.order(102), Order::Ahead);
        assert_eq!(rids.order(103), Order::Outside);
        assert_eq!(rids.order(100), Order::Repeat);
        assert_eq!(rids.order(98), Order::Outside);
        rids.advance();
        assert_eq!((rids.next(), rids.order(102), rids.order(101)), (102, Order::Next, Order::Repeat));
        let last = Rids::new(RID_MAX, 2);
        assert_eq!(last.order(RID_MAX + 1), Order::Next);
    }

    #[test]
    fn stream_output_becomes_payload() {
        let mut payload = Vec::new();
        let output = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='1' version='1.0'>\
                       <stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></stream:features><message to='a'><bo";
        let (used, ending) = translate(output, &mut payload);
        assert_eq!(ending, Ending::Open);
        assert_eq!(&output[used..], b"<message to='a'><bo");
        assert_eq!(
            std::str::from_utf8(&payload).unwrap(),
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></stream:features>"
        );
        payload.clear();
        let rest = b"<message to='a'><body>x</body></message></stream:stream>";
        assert_eq!(translate(rest, &mut payload), (rest.len(), Ending::Closed));
        assert_eq!(
            std::str::from_utf8(&payload).unwrap(),
            "<message xmlns='jabber:client' to='a'><body>x</body></message>"
        );
        payload.clear();
        let error =
            b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>";
        assert_eq!(translate(error, &mut payload), (error.len(), Ending::Failed));
    }

    #[test]
    fn responses_are_xml() {
        let created = Created {
            sid: "s'1".into(),
            wait: 60,
            hold: 1,
            requests: 2,
            inactivity: 30,
            maxpause: 120,
            polling: 2,
            from: "localhost".into(),
        };
        let mut out = Vec::new();
        write_created(&created, b"<stream:features/>", &mut out);
        let text = String::from_utf8(out).unwrap();
        let doc = roxmltree::Document::parse(&text).expect("xml");
        assert_eq!(doc.root_element().attribute("sid"), Some("s'1"));
        assert_eq!(doc.root_element().attribute((NS_XBOSH, "version")), Some("1.0"));
        let mut out = Vec::new();
        write_terminate(Some(Condition::ItemNotFound), b"", &mut out);
        let text = String::from_utf8(out).unwrap();
        let doc = roxmltree::Document::parse(&text).expect("xml");
        assert_eq!(doc.root_element().attribute("condition"), Some("item-not-found"));
    }

    /// `parse` on a 128 KiB stack: a recursion per level would overflow it.
    fn parse_on_a_small_stack(body: String) -> Result<Body, Condition> {
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || parse(body.as_bytes()))
            .expect("thread")
            .join()
            .expect("no stack overflow")
    }

    /// Regression (found by a breaker): 100,000 nested elements in one body
    /// overflowed a core thread's stack inside roxmltree and aborted the node. They
    /// are refused before parsing; the parse runs here on a small stack to show it.
    #[test]
    fn a_deeply_nested_body_is_refused_before_parsing() {
        let payload = "<a>".repeat(100_000) + &"</a>".repeat(100_000);
        let body = format!("<body rid='1' sid='0-00' xmlns='http://jabber.org/protocol/httpbind'>{payload}</body>");
        assert_eq!(parse_on_a_small_stack(body), Err(Condition::BadRequest));
        let nested = "<a>".repeat(BODY_DEPTH_MAX - 1) + &"</a>".repeat(BODY_DEPTH_MAX - 1);
        let fits = format!("<body rid='1' sid='0-00' xmlns='http://jabber.org/protocol/httpbind'>{nested}</body>");
        assert!(parse(fits.as_bytes()).is_ok(), "depth {BODY_DEPTH_MAX} is accepted");
    }

    /// Regressions (found by a second breaker): `<!-->` opens a comment (the scan
    /// took it as a whole one and undercounted), and attributes are bounded.
    #[test]
    fn comment_tricks_and_attribute_floods_are_refused() {
        let chunk = "<a>".repeat(60) + "<!-->" + &"</a>".repeat(60) + "-->";
        let payload = chunk.repeat(200) + &"</a>".repeat(12_000);
        let body = format!("<body rid='1' sid='0-00' xmlns='http://jabber.org/protocol/httpbind'>{payload}</body>");
        assert_eq!(parse_on_a_small_stack(body), Err(Condition::BadRequest));
        let attributes: String = (0..5000).map(|i| format!(" p:a{i}=''")).collect();
        let body = format!(
            "<body rid='1' sid='s' xmlns='http://jabber.org/protocol/httpbind'><x xmlns:p='u'{attributes}/></body>"
        );
        assert_eq!(parse(body.as_bytes()), Err(Condition::BadRequest));
    }

    /// Regression (found by a breaker): namespace declarations are bounded before
    /// roxmltree multiplies them.
    #[test]
    fn namespace_declarations_are_bounded() {
        let declarations: String = (0..2000).map(|i| format!(" xmlns:n{i}='u{i}'")).collect();
        let body = format!("<body rid='1' sid='s' xmlns='http://jabber.org/protocol/httpbind'{declarations}/>");
        assert_eq!(parse(body.as_bytes()), Err(Condition::BadRequest));
        let stanzas = "<message xmlns='jabber:client'><body>x</body></message>".repeat(500);
        let busy = format!("<body rid='1' sid='s' xmlns='http://jabber.org/protocol/httpbind'>{stanzas}</body>");
        assert!(parse(busy.as_bytes()).is_ok(), "500 stanzas with their namespace are fine");
    }

    proptest! {
        /// Arbitrary bytes are a body or a bad request, never a panic; a parsed
        /// body's payload re-parses as the children of a body.
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(body) = parse(&bytes) {
                prop_assert!(body.rid <= RID_MAX);
                let mut wrapped = b"<body xmlns='http://jabber.org/protocol/httpbind'>".to_vec();
                wrapped.extend_from_slice(&body.payload);
                wrapped.extend_from_slice(b"</body>");
                prop_assert!(std::str::from_utf8(&wrapped).is_ok());
            }
        }

        /// Bodies built from arbitrary children keep their payload byte for byte.
        #[test]
        fn payload_is_kept(children in prop::collection::vec("[a-z]{1,8}", 0..6), rid in 0..RID_MAX) {
            let inner: String = children.iter().map(|c| format!("<{c} a='{c}'/>")).collect();
            let text = format!("<body xmlns='http://jabber.org/protocol/httpbind' rid='{rid}' sid='s'>{inner}</body>");
            let body = parse(text.as_bytes()).expect("valid");
            prop_assert_eq!(body.payload, inner.into_bytes());
        }

        /// Arbitrary stream output translates without a panic, consuming a prefix.
        #[test]
        fn translate_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut payload = Vec::new();
            let (used, _) = translate(&bytes, &mut payload);
            prop_assert!(used <= bytes.len());
        }
    }
}
