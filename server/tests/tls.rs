//! TLS end to end with our own client on rustls: STARTTLS with certificate
//! verification against the generated CA, SCRAM-SHA-256-PLUS bound to the
//! connection with tls-exporter (RFC 9266), and a refused binding.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::TestNode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use starling_server::config::{C2sListener, TlsMode};
use starling_wire::framer::{Frame, Framer};
use starling_wire::limits::FramerLimits;
use starling_wire::sasl::{self, scram};

struct TlsClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    framer: Framer,
    pending: Vec<u8>,
}

fn read_frame(stream: &mut impl Read, framer: &mut Framer, pending: &mut Vec<u8>) -> String {
    for _ in 0..1000 {
        let held = std::mem::take(pending);
        let mut input = &held[..];
        let frame = framer.next(&mut input).unwrap().map(|f| match f {
            Frame::StreamHeader(b) | Frame::Element(b) => String::from_utf8(b.to_vec()).unwrap(),
            Frame::StreamClose => "</stream:stream>".into(),
        });
        *pending = input.to_vec();
        if let Some(frame) = frame {
            return frame;
        }
        let mut buffer = [0u8; 16384];
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "connection closed");
        pending.extend_from_slice(&buffer[..n]);
    }
    panic!("no frame");
}

/// STARTTLS on a plain connection, verifying the server with `ca.pem`.
fn starttls(node: &TestNode) -> TlsClient {
    let mut tcp = TcpStream::connect(node.c2s).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut framer = Framer::new(FramerLimits::DEFAULT);
    let mut pending = Vec::new();
    tcp.write_all(common::HEADER.as_bytes()).unwrap();
    assert!(read_frame(&mut tcp, &mut framer, &mut pending).starts_with("<stream:stream"));
    let features = read_frame(&mut tcp, &mut framer, &mut pending);
    assert!(features.contains("<required/>"), "{features}");
    assert!(!features.contains("mechanism"), "no SASL before TLS: {features}");
    tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").unwrap();
    assert!(read_frame(&mut tcp, &mut framer, &mut pending).starts_with("<proceed"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(node.dir.path().join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connection =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap();
    let stream = rustls::StreamOwned::new(connection, tcp);
    TlsClient { stream, framer: Framer::new(FramerLimits::DEFAULT), pending: Vec::new() }
}

impl TlsClient {
    fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
        self.stream.flush().unwrap();
    }

    fn next(&mut self) -> String {
        read_frame(&mut self.stream, &mut self.framer, &mut self.pending)
    }

    fn open(&mut self) -> String {
        self.framer.reset();
        self.send(common::HEADER);
        assert!(self.next().starts_with("<stream:stream"));
        self.next()
    }

    fn exporter(&self) -> [u8; 32] {
        self.stream.conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", Some(b"")).unwrap()
    }

    /// SCRAM-SHA-256-PLUS bound with `binding`; returns the server's answer.
    fn scram_plus(&mut self, binding: &[u8; 32]) -> String {
        let (client, first) =
            scram::ScramClient::new(scram::Hash::Sha256, "alice", "tlsnonce", Some(("tls-exporter", binding)));
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256-PLUS'>{}</auth>",
            sasl::encode_payload(&first)
        ));
        let challenge = self.next();
        assert!(challenge.starts_with("<challenge"), "{challenge}");
        let server_first = sasl::decode_payload(common::text_of(&challenge).as_bytes()).unwrap();
        let (_, last) = client
            .respond(&server_first, |salt, i| scram::salted_password(scram::Hash::Sha256, "secret", salt, i))
            .unwrap();
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            sasl::encode_payload(&last)
        ));
        self.next()
    }
}

fn tls_node() -> TestNode {
    TestNode::start_with(|config| {
        config.c2s = vec![C2sListener {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: TlsMode::StartTlsRequired,
            shaper: None,
            http: None,
        }];
    })
}

/// After STARTTLS the server offers -PLUS and tls-exporter; a login bound to this
/// connection's exporter succeeds and binds a resource.
#[test]
fn scram_plus_with_tls_exporter() {
    let node = tls_node();
    let mut client = starttls(&node);
    let features = client.open();
    assert!(features.contains("<mechanism>SCRAM-SHA-256-PLUS</mechanism>"), "{features}");
    assert!(features.contains("<channel-binding type='tls-exporter'/>"), "{features}");
    let binding = client.exporter();
    let answer = client.scram_plus(&binding);
    assert!(answer.starts_with("<success"), "{answer}");
    let features = client.open();
    assert!(features.contains("urn:ietf:params:xml:ns:xmpp-bind"));
    client.send(
        "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>tls</resource></bind></iq>",
    );
    assert!(client.next().contains("<jid>alice@localhost/tls</jid>"));
}

/// A binding from another connection (a man in the middle's) is refused.
#[test]
fn wrong_channel_binding_is_refused() {
    let node = tls_node();
    let mut client = starttls(&node);
    client.open();
    let mut binding = client.exporter();
    binding[0] ^= 1;
    let answer = client.scram_plus(&binding);
    assert_eq!(answer, "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>");
}
