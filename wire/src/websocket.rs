//! XMPP over WebSocket (RFC 7395), sans-IO: WebSocket frames <-> the XML stream the
//! framer and the c2s machine already speak.
//!
//! ```text
//!  client frames --decode--> tungstenite (RFC 6455: masking, fragments, ping/pong,
//!                            close, UTF-8) --> one text message = one element
//!                            <open/>  --> <stream:stream ...>   (RFC 7395 section 3.3.2)
//!                            <close/> --> </stream:stream>      (section 3.3.3)
//!                            anything else: passed through to the framer, which checks it
//!  stream bytes --encode--> split into top-level elements (section 3.3.1: one per message)
//!                            <stream:stream ...> --> <open .../>
//!                            </stream:stream>    --> <close/>
//!                            <stream:features>, <stream:error>: prefix declared
//!                            stanzas without a namespace: xmlns='jabber:client'
//!                            --> text frames
//! ```
//! RFC 6455 framing is tungstenite's (`WebSocketContext`, fed from memory), not ours.
//! What is ours is only the element splitter for our own output, which also carries
//! other clients' stanzas (checked by the framer when they came in); it is
//! property-tested against arbitrary bytes.

use std::io::{Read, Write};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Message, Role, WebSocketConfig, WebSocketContext};

use crate::c2s::{NS_CLIENT, NS_STREAMS};
use crate::split::{next_unit, Unit};
use crate::stanza::write_attribute;

/// RFC 7395 section 3.3: the namespace of `<open/>` and `<close/>`.
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// RFC 7395 section 3.1: the WebSocket subprotocol.
pub const SUBPROTOCOL: &str = "xmpp";

/// Why a WebSocket connection cannot go on. The caller sends [`WebSocket::close`]'s
/// frame (when the peer can still read) and closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    /// The client sent a close frame (or the close handshake finished).
    #[error("the client closed the WebSocket")]
    Closed,
    /// RFC 7395 section 3.2: XMPP over WebSocket is text only.
    #[error("binary WebSocket message")]
    Binary,
    /// A frame or message larger than the limit (RFC 6455 close code 1009).
    #[error("WebSocket message over the size limit")]
    TooBig,
    /// Anything RFC 6455 forbids (unmasked frames, bad opcodes, invalid UTF-8, ...).
    #[error("WebSocket protocol error: {0}")]
    Protocol(String),
}

impl WsError {
    /// The RFC 6455 section 7.4.1 close code for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Closed => 1000,
            WsError::Binary => 1003,
            WsError::TooBig => 1009,
            WsError::Protocol(_) => 1002,
        }
    }
}

/// One WebSocket connection's framing state: tungstenite's codec plus the part of our
/// output not yet a whole element. Boxed by its owner; a TCP connection has none.
pub struct WebSocket {
    context: WebSocketContext,
    /// Output bytes that end inside an element (the next `encode` completes them).
    partial: Vec<u8>,
    closed: bool,
}

/// The in-memory "stream" tungstenite reads from and writes to.
struct Pipe<'a> {
    input: &'a [u8],
    output: &'a mut Vec<u8>,
}

impl Read for Pipe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.input.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        let (now, rest) = self.input.split_at(n);
        buf[..n].copy_from_slice(now);
        self.input = rest;
        Ok(n)
    }
}

impl Write for Pipe<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl WebSocket {
    /// A server-side connection after the HTTP upgrade. `message_bytes_max` bounds a
    /// frame and a reassembled message (the listener's stanza limit plus room for the
    /// framing).
    pub fn new(message_bytes_max: usize) -> WebSocket {
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(message_bytes_max))
            .max_frame_size(Some(message_bytes_max));
        WebSocket { context: WebSocketContext::new(Role::Server, Some(config)), partial: Vec::new(), closed: false }
    }

    /// The client side of a connection (a load generator, a test client): frames it
    /// sends are masked (RFC 6455 section 5.3); the XML translation is the same,
    /// since a client also sends a stream header as `<open/>` and reads `<open/>` as
    /// the server's header.
    pub fn client(message_bytes_max: usize) -> WebSocket {
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(message_bytes_max))
            .max_frame_size(Some(message_bytes_max));
        WebSocket { context: WebSocketContext::new(Role::Client, Some(config)), partial: Vec::new(), closed: false }
    }

    /// Feeds bytes from the client. The XML stream they carry is appended to `xml`;
    /// frames to send back (pongs, the close handshake) to `wire`.
    ///
    /// # Errors
    /// [`WsError`] when the connection cannot go on; `xml` holds what came before.
    pub fn decode(&mut self, input: &[u8], xml: &mut Vec<u8>, wire: &mut Vec<u8>) -> Result<(), WsError> {
        if self.closed {
            return Err(WsError::Closed);
        }
        let mut pipe = Pipe { input, output: wire };
        loop {
            match self.context.read(&mut pipe) {
                Ok(Message::Text(text)) => translate_in(text.as_str(), xml),
                Ok(Message::Binary(_)) => return Err(WsError::Binary),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(_)) => {
                    // tungstenite queued the reply; it goes out with the next flush.
                    let _ = self.context.flush(&mut pipe);
                    self.closed = true;
                    return Err(WsError::Closed);
                }
                Err(tungstenite::Error::Io(error)) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    // Pongs queued while reading go out now.
                    let _ = self.context.flush(&mut pipe);
                    return Ok(());
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.closed = true;
                    return Err(WsError::Closed);
                }
                Err(tungstenite::Error::Capacity(_)) => return Err(WsError::TooBig),
                Err(error) => return Err(WsError::Protocol(error.to_string())),
            }
        }
    }

    /// Frames XML stream bytes the server wrote (any split: a partial element waits for
    /// the rest) as one text message per element, appended to `wire`.
    pub fn encode(&mut self, xml: &[u8], wire: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        let mut pipe = Pipe { input: &[], output: wire };
        let mut held = std::mem::take(&mut self.partial);
        let input: &[u8] = if held.is_empty() {
            xml
        } else {
            held.extend_from_slice(xml);
            &held
        };
        let mut rest = input;
        let mut message = Vec::new();
        while let Some((unit, used)) = next_unit(rest) {
            message.clear();
            translate_out(&unit, &rest[..used], &mut message);
            rest = &rest[used..];
            if message.is_empty() {
                continue;
            }
            // Moved, not copied, into the frame (our output is UTF-8; lossy otherwise).
            let text = String::from_utf8(std::mem::take(&mut message))
                .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned());
            if self.context.write(&mut pipe, Message::text(text)).is_err() {
                self.closed = true;
                return;
            }
        }
        let _ = self.context.flush(&mut pipe);
        self.partial = rest.to_vec();
    }

    /// A close frame with `code` (RFC 6455 section 7.4.1), appended to `wire`; nothing
    /// more is sent after it.
    pub fn close(&mut self, code: u16, wire: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut pipe = Pipe { input: &[], output: wire };
        let frame = CloseFrame { code: CloseCode::from(code), reason: "".into() };
        let _ = self.context.close(&mut pipe, Some(frame));
        let _ = self.context.flush(&mut pipe);
    }

    /// True once a close frame was sent or received.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// One client message as the framer expects it (RFC 7395 section 3.3).
fn translate_in(text: &str, xml: &mut Vec<u8>) {
    let mut trimmed = text.trim_start();
    // An XML declaration may come first (found by a breaker: `<?xml ...?><open/>`
    // was refused as an empty stream header).
    if trimmed.starts_with("<?xml") {
        if let Some(end) = trimmed.find("?>") {
            trimmed = trimmed[end + 2..].trim_start();
        }
    }
    // Nested deeper than any `<open/>` could be: the framer refuses it (found by a
    // breaker for BOSH bodies: roxmltree recurses per level).
    let framing = if (trimmed.starts_with("<open") || trimmed.starts_with("<close"))
        && !crate::xml::exceeds(trimmed.as_bytes(), 4, 16)
    {
        roxmltree::Document::parse(trimmed)
            .ok()
            .filter(|doc| doc.root_element().tag_name().namespace() == Some(NS_FRAMING))
    } else {
        None
    };
    let Some(doc) = framing else {
        // A stanza or nonza: the framer checks it like any other.
        xml.extend_from_slice(trimmed.as_bytes());
        return;
    };
    let root = doc.root_element();
    if root.tag_name().name() == "close" {
        xml.extend_from_slice(b"</stream:stream>");
        return;
    }
    if root.tag_name().name() != "open" {
        // Neither <open/> nor <close/>: let the framer refuse it.
        xml.extend_from_slice(text.as_bytes());
        return;
    }
    xml.extend_from_slice(b"<stream:stream");
    write_attribute(xml, "xmlns", NS_CLIENT);
    write_attribute(xml, "xmlns:stream", NS_STREAMS);
    write_stream_attributes(root, xml);
    xml.push(b'>');
}

/// The attributes a stream header and `<open/>` share (RFC 7395 section 3.3.1):
/// `to`, `from`, `id`, `version` and `xml:lang`, escaped.
fn write_stream_attributes(element: roxmltree::Node<'_, '_>, out: &mut Vec<u8>) {
    for attribute in element.attributes() {
        let name = match (attribute.namespace(), attribute.name()) {
            (None, name @ ("to" | "from" | "id" | "version")) => name,
            (Some("http://www.w3.org/XML/1998/namespace"), "lang") => "xml:lang",
            _ => continue,
        };
        write_attribute(out, name, attribute.value());
    }
}

/// One unit of our output as its RFC 7395 message (nothing for [`Unit::Skip`]).
fn translate_out(unit: &Unit, bytes: &[u8], message: &mut Vec<u8>) {
    match *unit {
        Unit::Skip => {}
        Unit::Close => {
            message.extend_from_slice(b"<close");
            write_attribute(message, "xmlns", NS_FRAMING);
            message.extend_from_slice(b"/>");
        }
        Unit::Header => {
            message.extend_from_slice(b"<open");
            write_attribute(message, "xmlns", NS_FRAMING);
            // The header's attributes, read by parsing it as an empty element.
            let mut closed = bytes.strip_suffix(b">").unwrap_or(bytes).to_vec();
            closed.extend_from_slice(b"/>");
            let text = String::from_utf8_lossy(&closed);
            if let Ok(doc) = roxmltree::Document::parse(&text) {
                write_stream_attributes(doc.root_element(), message);
            }
            message.extend_from_slice(b"/>");
        }
        Unit::Element { .. } => unit.write_standalone(bytes, true, message),
    }
}

#[cfg(test)]
mod tests;
