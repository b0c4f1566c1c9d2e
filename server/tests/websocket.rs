//! XMPP over WebSocket (RFC 7395) on a `[[listen.http]]` listener: a real node, real
//! sockets, a WebSocket client end made with tungstenite.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{text_of, Client, TestNode};
use starling_server::config::{C2sListener, HttpHandlers, TlsMode};
use starling_wire::sasl;
use tungstenite::protocol::{Message, Role, WebSocket};

/// A node with the test's plain c2s listener and an HTTP listener serving
/// `/ws-xmpp`; returns it and the HTTP address.
fn node() -> (TestNode, SocketAddr) {
    let node = TestNode::start_with(|config| {
        config.c2s.push(C2sListener {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: TlsMode::None,
            shaper: None,
            http: Some(HttpHandlers { websockets: Some("/ws-xmpp".into()), bosh: None }),
        });
    });
    let http = node.running().c2s_addresses[1];
    (node, http)
}

/// A WebSocket client with the `xmpp` subprotocol.
struct WsClient {
    socket: WebSocket<TcpStream>,
}

impl WsClient {
    fn connect(address: SocketAddr) -> WsClient {
        WsClient::connect_split(address, false)
    }

    /// Connects; with `split`, the request head goes in two writes 50 ms apart.
    fn connect_split(address: SocketAddr, split: bool) -> WsClient {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.set_nodelay(true).unwrap();
        let head = "GET /ws-xmpp HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n";
        if split {
            stream.write_all(&head.as_bytes()[..30]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            stream.write_all(&head.as_bytes()[30..]).unwrap();
        } else {
            stream.write_all(head.as_bytes()).unwrap();
        }
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).unwrap(), 1, "the server answers the upgrade");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
        assert!(head.contains("Sec-WebSocket-Protocol: xmpp\r\n"), "{head}");
        WsClient { socket: WebSocket::from_raw_socket(stream, Role::Client, None) }
    }

    fn send(&mut self, text: &str) {
        self.socket.send(Message::text(text)).unwrap();
    }

    /// The next text message; panics on anything else.
    fn next(&mut self) -> String {
        match self.socket.read().expect("a message") {
            Message::Text(text) => text.as_str().to_owned(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let message = self.next();
            // RFC 7395 section 3.3.1: every message is one whole XML document.
            roxmltree::Document::parse(&message).unwrap_or_else(|e| panic!("{message}: {e}"));
            if message.starts_with(prefix) {
                return message;
            }
        }
        panic!("no {prefix}");
    }

    fn open(&mut self) -> String {
        self.send("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>");
        let open = self.expect("<open");
        assert!(open.contains("xmlns='urn:ietf:params:xml:ns:xmpp-framing'") && open.contains("from='localhost'"));
        self.expect("<stream:features")
    }

    fn login(address: SocketAddr, user: &str, resource: &str) -> WsClient {
        let mut client = WsClient::connect(address);
        let features = client.open();
        assert!(!features.contains("starttls"), "no STARTTLS over WebSocket (RFC 7395 section 3.7)");
        let payload = sasl::encode_payload(format!("\0{user}\0secret").as_bytes());
        client.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"));
        client.expect("<success");
        client.open();
        client.send(&format!(
            "<iq type='set' id='b1' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq>"
        ));
        let bound = client.expect("<iq");
        assert!(bound.contains(&format!("{user}@localhost/{resource}")), "{bound}");
        client
    }

    /// Waits for the server's close frame (or the connection's end).
    fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.socket.read() {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

#[test]
fn a_websocket_client_chats_with_a_tcp_client() {
    let (node, http) = node();
    let mut alice = WsClient::login(http, "alice", "web");
    let mut bob = Client::login(node.c2s, "bob", "secret", "tcp");
    alice.send("<presence xmlns='jabber:client'/>");
    bob.presence();
    bob.send("<message to='alice@localhost/web' type='chat' id='m1'><body>hi over ws</body></message>");
    let message = alice.expect("<message");
    // Stanzas carry their namespace in each message (RFC 7395 section 3.3.3).
    assert!(message.starts_with("<message xmlns='jabber:client'"), "{message}");
    assert!(message.contains("from='bob@localhost/tcp'") && message.contains("hi over ws"), "{message}");
    alice.send("<message xmlns='jabber:client' to='bob@localhost/tcp' type='chat'><body>and back</body></message>");
    let reply = bob.expect("and back");
    assert!(reply.contains("from='alice@localhost/web'"), "{reply}");
    // <close/> ends the stream: the server answers <close/> and closes the WebSocket.
    alice.send("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>");
    alice.expect("<close");
    assert_eq!(alice.expect_close(), Some(1000));
}

/// Regression (xmpp.js over wss:// got no answer): a request head that arrives in
/// more than one read is read to its end, not refused.
#[test]
fn a_head_in_two_reads_is_upgraded() {
    let (_node, http) = node();
    let mut client = WsClient::connect_split(http, true);
    client.open();
}

#[test]
fn host_meta_names_the_websocket_url() {
    let (_node, http) = node();
    let xrd = common::http_get(http, "/.well-known/host-meta");
    assert!(xrd.contains("href='ws://localhost/ws-xmpp'"), "{xrd}");
    let json = common::http_get(http, "/.well-known/host-meta.json");
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["links"][0]["href"], "ws://localhost/ws-xmpp");
    assert_eq!(parsed["links"][0]["rel"], "urn:xmpp:alt-connections:websocket");
}

/// Garbage on the HTTP port, an unmasked frame, a binary message and an oversized
/// message each end that connection only, with their RFC 6455 close code; a session
/// on the same listener never notices.
#[test]
fn bad_input_ends_only_its_own_connection() {
    let (_node, http) = node();
    let mut alice = WsClient::login(http, "alice", "web");

    let mut garbage = TcpStream::connect(http).unwrap();
    garbage.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    garbage.write_all(b"\x16\x03\x01\x00\xff garbage\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = garbage.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

    let mut unmasked = WsClient::connect(http);
    // An unmasked text frame: FIN + text opcode, length 5, no mask bit.
    unmasked.socket.get_mut().write_all(b"\x81\x05<a/> ").unwrap();
    assert_eq!(unmasked.expect_close(), Some(1002));

    let mut binary = WsClient::connect(http);
    binary.socket.send(Message::Binary(b"<open/>".to_vec().into())).unwrap();
    assert_eq!(binary.expect_close(), Some(1003));

    let mut big = WsClient::connect(http);
    big.open();
    big.send(&format!("<message xmlns='jabber:client'><body>{}</body></message>", "x".repeat(200_000)));
    assert_eq!(big.expect_close(), Some(1009));

    let mut not_found = TcpStream::connect(http).unwrap();
    not_found.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    not_found.write_all(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = not_found.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");

    // Alice's session is untouched.
    alice.send("<iq xmlns='jabber:client' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>");
    let pong = alice.expect("<iq");
    assert!(pong.contains("type='result'") && pong.contains("id='p1'"), "{pong}");
}

/// A wrong password over WebSocket gets the SASL failure, as over TCP.
#[test]
fn a_wrong_password_is_a_sasl_failure() {
    let (_node, http) = node();
    let mut client = WsClient::connect(http);
    client.open();
    let payload = sasl::encode_payload(b"\0alice\0wrong");
    client.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"));
    let failure = client.expect("<failure");
    assert!(failure.contains("not-authorized"), "{failure}");
    let _ = text_of(&failure);
}
