//! A node in-process on 127.0.0.1:0, and a small blocking XMPP client for tests.
#![allow(dead_code)]

pub mod proxy;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use starling_server::config::{C2sListener, Config, TlsMode};
use starling_server::store::{sqlite::Sqlite, AccountKeys, Storage};
use starling_wire::error::StreamErrorCondition;
use starling_wire::framer::{Frame, Framer};
use starling_wire::limits::FramerLimits;
use starling_wire::sasl::{self, scram};

pub struct TestNode {
    running: Option<starling_server::Running>,
    pub dir: tempfile::TempDir,
    pub c2s: SocketAddr,
    /// The first direct-TLS listener, if the config has one.
    pub c2s_tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub config: Config,
}

impl TestNode {
    /// A node with accounts alice, bob and carol (password "secret").
    pub fn start() -> TestNode {
        TestNode::start_with(|_| {})
    }

    pub fn start_with(adjust: impl FnOnce(&mut Config)) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(dir.path());
        adjust(&mut config);
        {
            let mut store = Sqlite::open(&dir.path().join("starling.db")).unwrap();
            for user in ["alice", "bob", "carol"] {
                let keys = AccountKeys::from_password("secret", config.auth.scram_iterations);
                store.register(&format!("{user}@localhost").parse().unwrap(), &keys).unwrap();
            }
        }
        let listeners = starling_server::bind_listeners(&config).unwrap();
        let running = starling_server::run(config.clone(), listeners).unwrap();
        let c2s = running.c2s_addresses[0];
        let c2s_tls = tls_listener(&config, &running);
        let admin = running.admin_address.unwrap();
        TestNode { running: Some(running), dir, c2s, c2s_tls, admin, config }
    }

    /// A node with a plain listener (`c2s`) and a direct-TLS one (`c2s_tls`, the
    /// generated certificate for `localhost`, trusted through `ca.pem`).
    pub fn start_tls() -> TestNode {
        TestNode::start_tls_with(|_| {})
    }

    pub fn start_tls_with(adjust: impl FnOnce(&mut Config)) -> TestNode {
        TestNode::start_with(|config| {
            config.c2s = vec![
                C2sListener { address: "127.0.0.1:0".parse().unwrap(), tls: TlsMode::None, shaper: None, http: None },
                C2sListener { address: "127.0.0.1:0".parse().unwrap(), tls: TlsMode::Direct, shaper: None, http: None },
            ];
            adjust(config);
        })
    }

    /// Runs SQL on the node's SQLite file (for setting up data in bulk).
    pub fn sql(&self, statements: &str) {
        let store = Sqlite::open(&self.dir.path().join("starling.db")).unwrap();
        store.connection().execute_batch(statements).unwrap();
    }

    /// A client connected over direct TLS, verifying the node's certificate.
    pub fn connect_tls(&self) -> Client {
        let address = self.c2s_tls.expect("a node started with start_tls");
        Client::connect_tls(address, &self.dir.path().join("ca.pem"))
    }

    /// Logs in over direct TLS.
    pub fn login_tls(&self, user: &str, password: &str, resource: &str) -> Client {
        let mut client = self.connect_tls();
        client.login_here(user, password, resource);
        client
    }

    /// Stops the node and starts it again on the same data directory (new ports).
    pub fn restart(&mut self) {
        self.shutdown();
        let listeners = starling_server::bind_listeners(&self.config).unwrap();
        let running = starling_server::run(self.config.clone(), listeners).unwrap();
        self.c2s = running.c2s_addresses[0];
        self.c2s_tls = tls_listener(&self.config, &running);
        self.admin = running.admin_address.unwrap();
        self.running = Some(running);
    }

    pub fn running(&self) -> &starling_server::Running {
        self.running.as_ref().unwrap()
    }

    pub fn shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown();
        }
    }

    /// Waits until the node reports `sessions` bound sessions.
    pub fn wait_sessions(&self, sessions: usize) {
        self.wait_sessions_within(sessions, Duration::from_secs(5));
    }

    /// Waits at most `limit` until the node reports `sessions` bound sessions.
    pub fn wait_sessions_within(&self, sessions: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.running().node().stats().sessions != sessions {
            assert!(
                Instant::now() < deadline,
                "expected {sessions} sessions, have {:?}",
                self.running().node().stats()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub const HEADER: &str =
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

fn tls_listener(config: &Config, running: &starling_server::Running) -> Option<SocketAddr> {
    config.c2s.iter().position(|l| l.tls == TlsMode::Direct).map(|i| running.c2s_addresses[i])
}

/// The client's connection: plain TCP or TLS over it.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Transport {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.read(buffer),
            Transport::Tls(tls) => tls.read(buffer),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.write(bytes),
            Transport::Tls(tls) => tls.write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.flush(),
            Transport::Tls(tls) => tls.flush(),
        }
    }
}

/// What the test client accepts from the server: larger stanzas than a server takes
/// from clients (a roster of 2,000 items is one stanza of ~150 KB).
const CLIENT_LIMITS: FramerLimits = FramerLimits { stanza_bytes_max: 16 * 1024 * 1024, ..FramerLimits::DEFAULT };

/// A blocking client that reads the server's stream with our own framer.
pub struct Client {
    pub stream: Transport,
    framer: Framer,
    pending: Vec<u8>,
    pub jid: String,
}

impl Client {
    pub fn connect(address: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(address).unwrap())
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        stream.set_nodelay(true).unwrap();
        Client::over(Transport::Plain(stream))
    }

    fn over(stream: Transport) -> Client {
        Client { stream, framer: Framer::new(CLIENT_LIMITS), pending: Vec::new(), jid: String::new() }
    }

    /// Connects with direct TLS (XEP-0368) to `address`, trusting the CA in `ca_file`.
    pub fn connect_tls(address: SocketAddr, ca_file: &std::path::Path) -> Client {
        Client::tls_on(TcpStream::connect(address).unwrap(), ca_file)
    }

    /// Direct TLS on an already connected socket.
    pub fn tls_on(mut tcp: TcpStream, ca_file: &std::path::Path) -> Client {
        use rustls::pki_types::pem::PemObject;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_file).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"xmpp-client".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        // Handshake first, so later reads with a short timeout only ever wait for data.
        while connection.is_handshaking() {
            connection.complete_io(&mut tcp).unwrap();
        }
        tcp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Client::over(Transport::Tls(Box::new(rustls::StreamOwned::new(connection, tcp))))
    }

    pub fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
        self.stream.flush().unwrap();
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
        let _ = self.stream.flush();
    }

    /// The next frame from the server as text (`</stream:stream>` for the close);
    /// `None` when the connection closed or nothing came within `timeout`.
    pub fn next_within(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut input: &[u8] = &[];
            let pending = std::mem::take(&mut self.pending);
            input = if pending.is_empty() { input } else { &pending[..] };
            let mut rest = input;
            let frame =
                self.framer.next(&mut rest).expect("the server sends well-formed XML").map(|frame| match frame {
                    Frame::StreamHeader(bytes) | Frame::Element(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
                    Frame::StreamClose => "</stream:stream>".to_owned(),
                });
            self.pending = rest.to_vec();
            if let Some(frame) = frame {
                return Some(frame);
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut buffer = [0u8; 65536];
            match self.stream.read(&mut buffer) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend_from_slice(&buffer[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
    }

    pub fn next(&mut self) -> String {
        self.next_within(Duration::from_secs(5)).expect("a frame from the server")
    }

    /// Skips frames until one contains `needle`.
    pub fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(frame) = self.next_within(Duration::from_millis(200)) {
                if frame.contains(needle) {
                    return frame;
                }
            }
        }
        panic!("no frame containing {needle:?}");
    }

    /// Reads until the stream error; returns its condition (and checks the close).
    pub fn expect_stream_error(&mut self) -> StreamErrorCondition {
        let frame = self.expect("<stream:error>");
        let condition = frame
            .split('<')
            .filter_map(|tag| tag.split([' ', '/', '>']).next())
            .find_map(StreamErrorCondition::from_name)
            .expect("a condition");
        assert_eq!(self.next_within(Duration::from_secs(2)).as_deref(), Some("</stream:stream>"));
        condition
    }

    /// Asserts the server closes the TCP connection soon (bytes before the close are
    /// skipped).
    pub fn expect_closed(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buffer = [0u8; 65536];
        while Instant::now() < deadline {
            match self.stream.read(&mut buffer) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
        panic!("connection not closed");
    }

    /// Opens the stream and waits for the features.
    pub fn open(&mut self) -> String {
        // A (re)started stream: the server's next bytes are a new header.
        self.framer.reset();
        self.send(HEADER);
        assert!(self.next().starts_with("<stream:stream"));
        self.expect("<stream:features")
    }

    /// A second handle to the TCP connection (plain TCP only), for writing from
    /// another thread.
    #[allow(dead_code)]
    pub fn stream_clone(&self) -> TcpStream {
        self.stream.tcp().try_clone().unwrap()
    }

    /// Logs in with SCRAM-SHA-256 and binds `resource`.
    pub fn login(address: SocketAddr, user: &str, password: &str, resource: &str) -> Client {
        Client::login_on(TcpStream::connect(address).unwrap(), user, password, resource)
    }

    /// Logs in on an already connected stream.
    pub fn login_on(stream: TcpStream, user: &str, password: &str, resource: &str) -> Client {
        let mut client = Client::from_stream(stream);
        client.login_here(user, password, resource);
        client
    }

    /// Logs in with SCRAM-SHA-256 on this connection and binds `resource`.
    pub fn login_here(&mut self, user: &str, password: &str, resource: &str) {
        self.open();
        self.scram(user, password).expect("login succeeds");
        self.open();
        self.send(&format!(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ));
        let bound = self.expect("<jid>");
        self.jid = bound.split("<jid>").nth(1).unwrap().split("</jid>").next().unwrap().to_owned();
    }

    /// Runs SCRAM-SHA-256; `Err` with the failure element on failure.
    pub fn scram(&mut self, user: &str, password: &str) -> Result<(), String> {
        let (client, first) = scram::ScramClient::new(scram::Hash::Sha256, user, "testnonce", None);
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            sasl::encode_payload(&first)
        ));
        let challenge = self.next();
        if !challenge.starts_with("<challenge") {
            return Err(challenge);
        }
        let server_first = sasl::decode_payload(text_of(&challenge).as_bytes()).unwrap();
        let (expect, final_message) = client
            .respond(&server_first, |salt, i| scram::salted_password(scram::Hash::Sha256, password, salt, i))
            .unwrap();
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            sasl::encode_payload(&final_message)
        ));
        let outcome = self.next();
        if !outcome.starts_with("<success") {
            return Err(outcome);
        }
        assert!(expect.verify(&sasl::decode_payload(text_of(&outcome).as_bytes()).unwrap()), "server proved itself");
        Ok(())
    }

    /// Sends PLAIN; returns the server's answer element.
    pub fn plain(&mut self, user: &str, password: &str) -> String {
        let message = format!("\0{user}\0{password}");
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            sasl::encode_payload(message.as_bytes())
        ));
        self.next()
    }

    pub fn presence(&mut self) {
        self.send("<presence/>");
    }
}

/// The text between the first `>` and the next `<`.
pub fn text_of(element: &str) -> String {
    element.split('>').nth(1).unwrap_or("").split('<').next().unwrap_or("").to_owned()
}

/// GET `path` from an HTTP server; returns the body.
pub fn http_get(address: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// Free loopback TCP ports (bound and released; good enough on a test machine).
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> =
        (0..count).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}
