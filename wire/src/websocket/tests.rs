use proptest::prelude::*;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;

use super::*;

/// A client end, to make masked frames and read the server's.
struct Client {
    context: WebSocketContext,
}

impl Client {
    fn new() -> Client {
        Client { context: WebSocketContext::new(Role::Client, None) }
    }

    fn frame(&mut self, message: Message) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut pipe = Pipe { input: &[], output: &mut wire };
        self.context.write(&mut pipe, message).expect("write");
        self.context.flush(&mut pipe).expect("flush");
        wire
    }

    fn text(&mut self, text: &str) -> Vec<u8> {
        self.frame(Message::text(text))
    }

    /// Every message in `wire` (from the server).
    fn read_all(&mut self, wire: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        let mut replies = Vec::new();
        let mut pipe = Pipe { input: wire, output: &mut replies };
        let mut messages = Vec::new();
        while let Ok(message) = self.context.read(&mut pipe) {
            messages.push(message);
        }
        out.extend(messages);
        out
    }

    fn texts(&mut self, wire: &[u8]) -> Vec<String> {
        self.read_all(wire)
            .into_iter()
            .filter_map(|m| match m {
                Message::Text(text) => Some(text.as_str().to_owned()),
                _ => None,
            })
            .collect()
    }
}

fn decode(ws: &mut WebSocket, bytes: &[u8]) -> (Result<(), WsError>, String, Vec<u8>) {
    let mut xml = Vec::new();
    let mut wire = Vec::new();
    let result = ws.decode(bytes, &mut xml, &mut wire);
    (result, String::from_utf8(xml).expect("utf-8"), wire)
}

#[test]
fn open_becomes_a_stream_header_the_framer_accepts() {
    let mut ws = WebSocket::new(65_536);
    let mut client = Client::new();
    let frame =
        client.text("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0' xml:lang='en'/>");
    let (result, xml, _) = decode(&mut ws, &frame);
    assert_eq!(result, Ok(()));
    assert!(xml.starts_with("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"));
    assert!(xml.contains(" to='localhost'") && xml.contains(" version='1.0'") && xml.contains(" xml:lang='en'"));
    let mut framer = crate::framer::Framer::new(crate::limits::FramerLimits::default());
    let mut input = xml.as_bytes();
    assert!(matches!(framer.next(&mut input), Ok(Some(crate::framer::Frame::StreamHeader(_)))));
}

/// Regression (breaker): an XML declaration before `<open/>` made it an empty stream
/// header.
#[test]
fn an_xml_declaration_before_open_is_skipped() {
    let mut ws = WebSocket::new(65_536);
    let frame = Client::new()
        .text("<?xml version='1.0'?><open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>");
    let (result, xml, _) = decode(&mut ws, &frame);
    assert_eq!(result, Ok(()));
    assert!(xml.starts_with("<stream:stream "), "{xml}");
}

#[test]
fn close_becomes_the_stream_end_and_stanzas_pass_through() {
    let mut ws = WebSocket::new(65_536);
    let mut client = Client::new();
    let mut bytes = client.text("<message xmlns='jabber:client' to='a@localhost'><body>hi</body></message>");
    bytes.extend(client.text("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"));
    let (result, xml, _) = decode(&mut ws, &bytes);
    assert_eq!(result, Ok(()));
    assert_eq!(xml, "<message xmlns='jabber:client' to='a@localhost'><body>hi</body></message></stream:stream>");
}

/// An `<open/>` in another namespace is not the framing element: the framer sees it
/// as it is and refuses it.
#[test]
fn open_in_another_namespace_passes_through() {
    let mut ws = WebSocket::new(65_536);
    let frame = Client::new().text("<open xmlns='urn:example' to='localhost'/>");
    let (_, xml, _) = decode(&mut ws, &frame);
    assert_eq!(xml, "<open xmlns='urn:example' to='localhost'/>");
}

#[test]
fn server_output_is_one_message_per_element() {
    let mut ws = WebSocket::new(65_536);
    let mut wire = Vec::new();
    ws.encode(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
          from='localhost' id='abc' version='1.0' xml:lang='en'><stream:features><mechanisms \
          xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>",
        &mut wire,
    );
    ws.encode(b"<message from='a@localhost/r' to='b@localhost'><body>a &lt; b</body></message> ", &mut wire);
    ws.encode(b"<r xmlns='urn:xmpp:sm:3'/></stream:stream>", &mut wire);
    let texts = Client::new().texts(&wire);
    assert_eq!(
        texts,
        [
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' from='localhost' id='abc' version='1.0' xml:lang='en'/>",
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms \
             xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>",
            "<message xmlns='jabber:client' from='a@localhost/r' to='b@localhost'><body>a &lt; b</body></message>",
            "<r xmlns='urn:xmpp:sm:3'/>",
            "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
        ]
    );
    for text in &texts {
        roxmltree::Document::parse(text).expect("each message is a document");
    }
}

/// Attribute values and CDATA that look like markup do not split or fool the splitter.
#[test]
fn markup_inside_values_and_cdata_is_not_structure() {
    let mut ws = WebSocket::new(65_536);
    let mut wire = Vec::new();
    let stanza =
        "<message id='x xmlns=\"y\" />' to='b@localhost'><body><![CDATA[</message><a>]]></body><!-- </x> --></message>";
    ws.encode(stanza.as_bytes(), &mut wire);
    let texts = Client::new().texts(&wire);
    assert_eq!(texts.len(), 1);
    assert!(texts[0].starts_with("<message xmlns='jabber:client' id='x xmlns=\"y\" />'"));
    roxmltree::Document::parse(&texts[0]).expect("a document");
}

#[test]
fn stream_error_declares_its_prefix() {
    let mut ws = WebSocket::new(65_536);
    let mut wire = Vec::new();
    ws.encode(
        b"<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
        &mut wire,
    );
    let texts = Client::new().texts(&wire);
    assert_eq!(texts.len(), 2);
    let doc = roxmltree::Document::parse(&texts[0]).expect("a document");
    assert_eq!(doc.root_element().tag_name().namespace(), Some(NS_STREAMS));
    assert_eq!(texts[1], "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>");
}

#[test]
fn pings_are_answered_and_binary_is_refused() {
    let mut ws = WebSocket::new(65_536);
    let mut client = Client::new();
    let ping = client.frame(Message::Ping(b"hello".to_vec().into()));
    let (result, xml, wire) = decode(&mut ws, &ping);
    assert_eq!(result, Ok(()));
    assert!(xml.is_empty());
    let replies = client.read_all(&wire);
    assert!(matches!(&replies[..], [Message::Pong(data)] if &data[..] == b"hello"), "{replies:?}");
    let binary = client.frame(Message::Binary(b"<presence/>".to_vec().into()));
    assert_eq!(decode(&mut ws, &binary).0, Err(WsError::Binary));
}

/// RFC 6455 section 5.1: a server closes on an unmasked client frame.
#[test]
fn unmasked_frames_are_a_protocol_error() {
    let mut ws = WebSocket::new(65_536);
    let mut wire = Vec::new();
    Frame::message(b"<presence/>".to_vec(), OpCode::Data(Data::Text), true).format(&mut wire).expect("format");
    assert!(matches!(decode(&mut ws, &wire).0, Err(WsError::Protocol(_))));
}

#[test]
fn oversized_messages_are_refused() {
    let mut ws = WebSocket::new(1_000);
    let frame = Client::new().text(&format!("<message><body>{}</body></message>", "x".repeat(2_000)));
    assert_eq!(decode(&mut ws, &frame).0, Err(WsError::TooBig));
    assert_eq!(WsError::TooBig.close_code(), 1009);
}

#[test]
fn a_client_close_frame_ends_the_connection_with_a_reply() {
    let mut ws = WebSocket::new(65_536);
    let mut client = Client::new();
    let close = client.frame(Message::Close(None));
    let (result, _, wire) = decode(&mut ws, &close);
    assert_eq!(result, Err(WsError::Closed));
    assert!(!wire.is_empty(), "the close handshake is answered");
    assert!(ws.is_closed());
}

fn element() -> impl Strategy<Value = String> {
    let text = "[a-z<>&;' \"]{0,12}".prop_map(|t| crate::xml::escaped(&t));
    let leaf = (text.clone(), "[a-z]{1,4}").prop_map(|(t, n)| format!("<{n}>{t}</{n}>"));
    leaf.prop_recursive(3, 16, 4, move |inner| {
        (prop::collection::vec(inner, 0..4), "[a-z]{1,4}", "[a-z<>/ ]{0,6}").prop_map(|(children, name, value)| {
            format!("<{name} a='{}'>{}</{name}>", crate::xml::escaped(&value), children.concat())
        })
    })
}

proptest! {
    /// Arbitrary bytes from a client end the connection or not, but never panic.
    #[test]
    fn decode_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut ws = WebSocket::new(1_000);
        for chunk in chunks {
            let mut xml = Vec::new();
            let mut wire = Vec::new();
            if ws.decode(&chunk, &mut xml, &mut wire).is_err() {
                break;
            }
        }
    }

    /// Arbitrary output bytes never panic the splitter.
    #[test]
    fn encode_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut ws = WebSocket::new(1_000);
        let mut wire = Vec::new();
        for chunk in chunks {
            ws.encode(&chunk, &mut wire);
        }
    }

    /// However our output is split into writes, the client gets the same messages: one
    /// per element, each a document.
    #[test]
    fn splits_do_not_change_messages(elements in prop::collection::vec(element(), 1..6), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let stream = elements.concat();
        let mut whole = Vec::new();
        WebSocket::new(65_536).encode(stream.as_bytes(), &mut whole);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut ws = WebSocket::new(65_536);
        let mut split = Vec::new();
        let mut from = 0;
        for point in points.into_iter().chain([stream.len()]) {
            ws.encode(&stream.as_bytes()[from..point], &mut split);
            from = point;
        }
        let expected = Client::new().texts(&whole);
        prop_assert_eq!(expected.len(), elements.len());
        prop_assert_eq!(Client::new().texts(&split), expected.clone());
        for text in &expected {
            prop_assert!(roxmltree::Document::parse(text).is_ok(), "{}", text);
        }
    }
}
