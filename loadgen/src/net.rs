//! Client sockets: bound to a chosen 127.x.y.z source address without reserving a
//! port (`IP_BIND_ADDRESS_NO_PORT`), so the kernel picks the port per 4-tuple at
//! connect time and one source address never runs out of ports for many targets.
//!
//! Reads go into one buffer per worker thread, borrowed only while a read runs: an
//! idle session holds no read buffer.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::Poll;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// Opens a TCP connection from `source` (any port) to `target`. The connection is
/// usable at once; the first write waits for the handshake to finish.
pub fn connect(source: Option<IpAddr>, target: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(source) = source {
        let yes: libc::c_int = 1;
        // SAFETY: setsockopt reads an int we own, on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &yes as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(error) => return Err(error),
    }
    Ok(TcpStream::from(socket))
}

/// A client connection: plain TCP, or TLS over it (rustls, `--tls`), optionally
/// carrying RFC 7395 WebSocket (`--transport websocket`).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
    /// XMPP over WebSocket on a plain or TLS stream: what is written is XML and
    /// leaves as text frames; what is read comes back as XML (`starling_wire::websocket`).
    Ws(Box<WsStream>),
    /// No socket (while one is being upgraded to TLS).
    Closed,
}

/// WebSocket framing over a plain or TLS stream.
pub struct WsStream {
    inner: Stream,
    ws: starling_wire::websocket::WebSocket,
}

impl Stream {
    /// RFC 6455 opening handshake for the `xmpp` subprotocol at `path`, then frames.
    pub async fn upgrade_websocket(mut self, host: &str, path: &str) -> io::Result<Stream> {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: c3RhcmxpbmctbG9hZGdlbg==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n"
        );
        write_all(&mut self, head.as_bytes()).await?;
        let mut answer = Vec::new();
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            if answer.len() > 8192 || read_with(&mut self, |bytes| answer.extend_from_slice(bytes)).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        if !answer.starts_with(b"HTTP/1.1 101") {
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "no WebSocket upgrade"));
        }
        Ok(Stream::Ws(Box::new(WsStream { inner: self, ws: starling_wire::websocket::WebSocket::client(1 << 20) })))
    }
}

/// TLS on a client socket: rustls' state and the ciphertext not yet written.
pub struct TlsStream {
    tcp: TcpStream,
    tls: rustls::ClientConnection,
    wire: Vec<u8>,
}

impl Stream {
    /// Starts TLS on this connection (direct TLS at connect, or after STARTTLS's
    /// `<proceed/>`) and completes the handshake.
    pub async fn start_tls(self, config: std::sync::Arc<rustls::ClientConfig>, domain: &str) -> io::Result<Stream> {
        let tcp = match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => return Ok(Stream::Tls(tls)),
            // TLS goes under WebSocket, never inside it.
            Stream::Ws(_) | Stream::Closed => return Err(io::ErrorKind::NotConnected.into()),
        };
        let name = rustls::pki_types::ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut stream = TlsStream { tcp, tls, wire: Vec::new() };
        while stream.tls.is_handshaking() {
            stream.flush().await?;
            if !stream.tls.is_handshaking() {
                break;
            }
            let n = futures_lite::future::poll_fn(|cx| poll_read_tls(&mut stream, cx, &mut |_: &[u8]| {})).await?;
            if n == 0 && stream.tls.is_handshaking() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        stream.flush().await?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

impl TlsStream {
    /// Writes every TLS record rustls has ready.
    async fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.wire)?;
        }
        let wire = std::mem::take(&mut self.wire);
        write_all_tcp(&mut self.tcp, &wire).await
    }
}

/// Writes all of `bytes` (waits while the socket is full or still connecting).
pub async fn write_all(stream: &mut Stream, bytes: &[u8]) -> io::Result<()> {
    let mut frames = Vec::new();
    let (stream, bytes) = match stream {
        Stream::Ws(ws) => {
            ws.ws.encode(bytes, &mut frames);
            (&mut ws.inner, &frames[..])
        }
        other => (other, bytes),
    };
    match stream {
        Stream::Plain(tcp) => write_all_tcp(tcp, bytes).await,
        Stream::Tls(tls) => {
            std::io::Write::write_all(&mut tls.tls.writer(), bytes)?;
            tls.flush().await
        }
        Stream::Ws(_) | Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
    }
}

/// Writes all of `bytes` to a plain socket.
pub async fn write_all_tcp(stream: &mut TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let written = futures_lite::future::poll_fn(|cx| Pin::new(&mut *stream).poll_write(cx, bytes)).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[written..];
    }
    Ok(())
}

/// Waits for input and hands it to `take` (borrowed from the thread's buffer;
/// plaintext when TLS is on). Returns the number of bytes read from the socket, 0
/// when the peer closed.
pub async fn read_with(stream: &mut Stream, mut take: impl FnMut(&[u8])) -> io::Result<usize> {
    futures_lite::future::poll_fn(|cx| poll_read_with(stream, cx, &mut take)).await
}

/// One poll of a read into the thread's buffer; `take` sees the bytes read
/// (decrypted when TLS is on; handshake records get no call).
pub fn poll_read_with(
    stream: &mut Stream,
    cx: &mut std::task::Context<'_>,
    take: &mut impl FnMut(&[u8]),
) -> Poll<io::Result<usize>> {
    match stream {
        Stream::Plain(tcp) => poll_read_tcp(tcp, cx, take),
        Stream::Tls(tls) => poll_read_tls(tls, cx, take),
        Stream::Ws(ws) => {
            let WsStream { inner, ws } = &mut **ws;
            let mut xml = Vec::new();
            let mut failed = false;
            let mut unframe = |bytes: &[u8]| {
                let mut replies = Vec::new();
                failed |= ws.decode(bytes, &mut xml, &mut replies).is_err();
            };
            let polled = match inner {
                Stream::Plain(tcp) => poll_read_tcp(tcp, cx, &mut unframe),
                Stream::Tls(tls) => poll_read_tls(tls, cx, &mut unframe),
                Stream::Ws(_) | Stream::Closed => Poll::Ready(Ok(0)),
            };
            match polled {
                Poll::Ready(Ok(_)) if failed && xml.is_empty() => Poll::Ready(Ok(0)),
                Poll::Ready(Ok(n)) => {
                    take(&xml);
                    Poll::Ready(Ok(n))
                }
                other => other,
            }
        }
        Stream::Closed => Poll::Ready(Ok(0)),
    }
}

fn poll_read_tls(
    stream: &mut TlsStream,
    cx: &mut std::task::Context<'_>,
    take: &mut impl FnMut(&[u8]),
) -> Poll<io::Result<usize>> {
    let TlsStream { tcp, tls, wire } = stream;
    let mut ciphertext = Vec::new();
    let polled = poll_read_tcp(tcp, cx, &mut |bytes: &[u8]| ciphertext.extend_from_slice(bytes));
    let n = match polled {
        Poll::Ready(Ok(n)) => n,
        other => return other,
    };
    let mut input = &ciphertext[..];
    while !input.is_empty() {
        tls.read_tls(&mut input)?;
        let state = tls.process_new_packets().map_err(io::Error::other)?;
        let available = state.plaintext_bytes_to_read();
        if available > 0 {
            let mut plain = vec![0; available];
            std::io::Read::read_exact(&mut tls.reader(), &mut plain)?;
            take(&plain);
        }
    }
    // Records to answer (key updates, the handshake's last flight) go on the next write.
    while tls.wants_write() {
        tls.write_tls(wire)?;
    }
    Poll::Ready(Ok(n))
}

/// [`poll_read_with`] on a plain socket.
pub fn poll_read_tcp(
    stream: &mut TcpStream,
    cx: &mut std::task::Context<'_>,
    take: &mut impl FnMut(&[u8]),
) -> Poll<io::Result<usize>> {
    READ_BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        match Pin::new(&mut *stream).poll_read(cx, &mut buffer[..]) {
            Poll::Ready(Ok(n)) => {
                take(&buffer[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    })
}

thread_local! {
    static TLS_CONFIG: std::sync::Arc<rustls::ClientConfig> = tls_config();
}

/// This thread's TLS client config (made once: its session cache is shared).
pub fn client_tls() -> std::sync::Arc<rustls::ClientConfig> {
    TLS_CONFIG.with(|config| config.clone())
}

/// A TLS client config for `--tls`: a load generator that only targets 127.0.0.0/8
/// and measures servers with self-signed certificates accepts any certificate.
fn tls_config() -> std::sync::Arc<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        // Invariant: ring supports the default protocol versions.
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// Accepts any server certificate (loopback benchmarks only), checking signatures.
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The `index`-th source address of a range starting at `base` (skipping .0 and .255
/// in the last octet).
pub fn source_address(base: std::net::Ipv4Addr, index: u32) -> IpAddr {
    let start = u32::from(base);
    let hosts_per_block = 254;
    let block = index / hosts_per_block;
    let host = index % hosts_per_block + 1;
    IpAddr::V4(std::net::Ipv4Addr::from((start & 0xFFFF_FF00).wrapping_add(block << 8) | host))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Source addresses walk through 127.x.y.1-254.
    #[test]
    fn source_addresses_skip_network_and_broadcast() {
        let base = "127.1.0.0".parse().unwrap();
        assert_eq!(source_address(base, 0).to_string(), "127.1.0.1");
        assert_eq!(source_address(base, 253).to_string(), "127.1.0.254");
        assert_eq!(source_address(base, 254).to_string(), "127.1.1.1");
    }
}
