//! The admin port's HTTP/1.1 server: one accept thread and a fixed pool of worker
//! threads, whatever the number of connections.
//!
//! ```text
//!  accept thread: accept + read requests with poll(2), ARRIVING_MAX connections
//!        |  (the oldest dropped when full; each has REQUEST_TIMEOUT to send)
//!        +--complete requests (bounded queue, QUEUED_REQUESTS_MAX)--> WORKERS threads
//!        \-- queue full: "503 Service Unavailable", closed at once
//! ```
//! Requests are parsed with `httparse` (hyper's parser; sans-IO). Each connection
//! carries one request (`Connection: close`). Slow or idle clients never hold a
//! worker: a breaker's 70 connections sending a byte a second had kept the CLI out
//! while workers read them. tiny_http, used before, started a thread per connection
//! and offered no way to bound them (2,000 idle connections held 1,965 threads).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Worker threads: GraphQL requests are short (storage calls of milliseconds), so a
/// few serve an operator, the CLI and a Prometheus scraper at once.
pub const WORKERS: usize = 4;

/// Complete requests waiting for a worker; past it new ones get 503.
pub const QUEUED_REQUESTS_MAX: usize = 64;

/// Connections whose request is still arriving; a new one past it drops the oldest.
pub const ARRIVING_MAX: usize = 256;

/// Time a client has to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a worker spends writing one response at most.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request head (request line and headers).
pub const HEAD_BYTES_MAX: usize = 16 * 1024;

/// Largest request body.
pub const BODY_BYTES_MAX: usize = 1024 * 1024;

/// Headers per request.
const HEADERS_MAX: usize = 64;

/// One parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub query: Option<String>,
    /// Header names lowercased, values as text (invalid UTF-8 replaced).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: Option<SocketAddr>,
}

impl Request {
    /// The first header called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One response; always `Connection: close`.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response { status, content_type, body }
    }

    fn head(&self) -> String {
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        )
    }

    /// Writes the response within `WRITE_TIMEOUT` in all: a client that does not read
    /// holds a worker no longer (the second breaker's four non-reading clients had
    /// kept the CLI waiting 25 s).
    fn write_to(&self, stream: &mut TcpStream) -> std::io::Result<()> {
        let head = self.head();
        let deadline = Instant::now() + WRITE_TIMEOUT;
        for part in [head.as_bytes(), &self.body] {
            let mut rest = part;
            while !rest.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                stream.set_write_timeout(Some(left))?;
                match stream.write(rest) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => rest = rest.get(n..).unwrap_or_default(),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Why a request could not be read; each maps to the status sent back.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The connection closed or timed out; nothing is sent.
    Gone,
    Malformed,
    HeadTooLarge,
    BodyTooLarge,
    /// Chunked or other transfer encodings are not accepted.
    LengthRequired,
}

impl ReadError {
    fn response(&self) -> Option<Response> {
        let (status, text) = match self {
            ReadError::Gone => return None,
            ReadError::Malformed => (400, "Malformed HTTP request"),
            ReadError::HeadTooLarge => (431, "Request head too large"),
            ReadError::BodyTooLarge => (413, "Request body too large"),
            ReadError::LengthRequired => (411, "Content-Length required"),
        };
        let body = serde_json::json!({"errors": [{"message": text}]}).to_string().into_bytes();
        Some(Response::new(status, "application/json", body))
    }
}

/// Parses a request head; `Ok(None)` when more bytes are needed. Pure: the property
/// tests and the fuzz-style test feed it arbitrary bytes.
pub fn parse_head(bytes: &[u8]) -> Result<Option<(usize, Request)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    let used = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::HeadTooLarge),
        Err(_) => return Err(ReadError::Malformed),
    };
    let method = parsed.method.ok_or(ReadError::Malformed)?.to_owned();
    let target = parsed.path.ok_or(ReadError::Malformed)?;
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target.to_owned(), None),
    };
    let headers = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).trim().to_owned()))
        .collect();
    Ok(Some((used, Request { method, path, query, headers, body: Vec::new(), peer: None })))
}

/// The body length a request head announces (none: 0).
pub fn content_length(request: &Request) -> Result<usize, ReadError> {
    if request.header("transfer-encoding").is_some() {
        return Err(ReadError::LengthRequired);
    }
    let mut lengths = request.headers.iter().filter(|(n, _)| n == "content-length");
    let length = match lengths.next() {
        None => 0,
        Some((_, value)) => value.parse::<usize>().map_err(|_| ReadError::Malformed)?,
    };
    if lengths.next().is_some() {
        // Two lengths: a request-smuggling attempt or a broken client.
        return Err(ReadError::Malformed);
    }
    if length > BODY_BYTES_MAX {
        return Err(ReadError::BodyTooLarge);
    }
    Ok(length)
}

/// A connection whose request is still arriving.
struct Arriving {
    stream: TcpStream,
    bytes: Vec<u8>,
    deadline: Instant,
}

/// What the bytes received so far make.
enum Progress {
    More,
    Done(Request),
    Failed(ReadError),
}

fn progress(bytes: &[u8]) -> Progress {
    let (used, mut request) = match parse_head(bytes) {
        // A head that arrived whole is held to the limit too (the second breaker sent
        // an 809 KB request line in one write).
        Ok(Some((used, _))) if used > HEAD_BYTES_MAX => return Progress::Failed(ReadError::HeadTooLarge),
        Ok(Some(parsed)) => parsed,
        Ok(None) if bytes.len() > HEAD_BYTES_MAX => return Progress::Failed(ReadError::HeadTooLarge),
        Ok(None) => return Progress::More,
        Err(error) => return Progress::Failed(error),
    };
    let length = match content_length(&request) {
        Ok(length) => length,
        Err(error) => return Progress::Failed(error),
    };
    match bytes.get(used..used + length) {
        Some(body) => {
            request.body = body.to_vec();
            Progress::Done(request)
        }
        None => Progress::More,
    }
}

/// Reads what `arriving` has without blocking; `Some` when it is finished with.
fn read_some(arriving: &mut Arriving) -> Option<Progress> {
    let mut chunk = [0u8; 4096];
    loop {
        match arriving.stream.read(&mut chunk) {
            // The client closed its side: answer what it sent, if it is whole (an
            // HTTP/1.0-style client such as `nc -N` does this).
            Ok(0) => {
                return Some(match progress(&arriving.bytes) {
                    Progress::More => Progress::Failed(ReadError::Gone),
                    done => done,
                })
            }
            Ok(n) => arriving.bytes.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Some(Progress::Failed(ReadError::Gone)),
        }
        if arriving.bytes.len() > HEAD_BYTES_MAX + BODY_BYTES_MAX {
            return Some(Progress::Failed(ReadError::BodyTooLarge));
        }
    }
    match progress(&arriving.bytes) {
        Progress::More => None,
        done => Some(done),
    }
}

/// Sends a small `response` from the accept thread without blocking it (what does not
/// fit the socket buffer is dropped with the connection).
fn answer_now(mut stream: TcpStream, response: &Response) {
    // One attempt, never blocking the accept thread: a small answer fits the socket.
    let _ = stream.set_nonblocking(true);
    let mut bytes = response.head().into_bytes();
    bytes.extend_from_slice(&response.body);
    let _ = stream.write(&bytes);
}

/// The accept thread: takes connections and reads their requests with `poll(2)`, so
/// a slow or idle client holds one slot of `ARRIVING_MAX` (the oldest is dropped when
/// they are full) and never a worker; complete requests go to the workers.
fn receive(listener: TcpListener, stopping: &AtomicBool, workers: &crossbeam_channel::Sender<(TcpStream, Request)>) {
    if listener.set_nonblocking(true).is_err() {
        log::error!("admin: cannot make the listener non-blocking");
        return;
    }
    let mut arriving: std::collections::VecDeque<Arriving> = std::collections::VecDeque::new();
    let mut busy_logged: Option<Instant> = None;
    while !stopping.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Drop what ran out of time.
        arriving.retain(|a| a.deadline > now);
        let wait = arriving
            .iter()
            .map(|a| a.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
            .chain(arriving.iter().map(|a| a.stream.as_raw_fd()))
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait.as_millis() as i32) };
        if ready <= 0 {
            continue;
        }
        // Requests first (indexes shift once connections are added or removed).
        let mut finished = Vec::new();
        for (index, fd) in fds.iter().enumerate().skip(1) {
            if fd.revents == 0 {
                continue;
            }
            if let Some(slot) = arriving.get_mut(index - 1) {
                if let Some(done) = read_some(slot) {
                    finished.push((index - 1, done));
                }
            }
        }
        for (index, done) in finished.into_iter().rev() {
            let Some(slot) = arriving.remove(index) else { continue };
            match done {
                Progress::Done(mut request) => {
                    request.peer = slot.stream.peer_addr().ok();
                    let _ = slot.stream.set_nonblocking(false);
                    if let Err(crossbeam_channel::TrySendError::Full((stream, _))) =
                        workers.try_send((slot.stream, request))
                    {
                        let body = br#"{"errors":[{"message":"The admin port is busy; try again"}]}"#.to_vec();
                        answer_now(stream, &Response::new(503, "application/json", body));
                        if busy_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                            busy_logged = Some(Instant::now());
                            log::warn!("admin: {QUEUED_REQUESTS_MAX} requests waiting; answering 503");
                        }
                    }
                }
                Progress::Failed(error) => {
                    if let Some(response) = error.response() {
                        answer_now(slot.stream, &response);
                    }
                }
                Progress::More => {}
            }
        }
        if fds.first().is_some_and(|fd| fd.revents != 0) {
            // Every connection waiting in the backlog.
            for _ in 0..ARRIVING_MAX {
                let Ok((stream, _)) = listener.accept() else { break };
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if arriving.len() >= ARRIVING_MAX {
                    // The oldest is the likeliest to be idle or slow on purpose.
                    arriving.pop_front();
                }
                arriving.push_back(Arriving { stream, bytes: Vec::new(), deadline: Instant::now() + REQUEST_TIMEOUT });
            }
        }
    }
}

/// A running server; `stop` ends its threads.
pub struct Server {
    address: SocketAddr,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Serves `listener` with `handler` on `WORKERS` threads named `name`.
    pub fn start(
        listener: TcpListener,
        name: &str,
        handler: Arc<dyn Fn(&Request) -> Response + Send + Sync>,
    ) -> std::io::Result<Server> {
        let address = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (sender, receiver) = crossbeam_channel::bounded::<(TcpStream, Request)>(QUEUED_REQUESTS_MAX);
        let mut threads = Vec::with_capacity(WORKERS + 1);
        for i in 0..WORKERS {
            let receiver = receiver.clone();
            let handler = handler.clone();
            threads.push(std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                for (mut stream, request) in receiver {
                    let response = handler(&request);
                    let _ = response.write_to(&mut stream);
                }
            })?);
        }
        let receiving = stopping.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("{name}-accept"))
                .spawn(move || receive(listener, &receiving, &sender))?,
        );
        Ok(Server { address, stopping, threads })
    }

    /// Stops accepting, lets queued requests finish, and joins every thread.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Relaxed);
        // Wake the accept thread from poll(2).
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_request_head() {
        let bytes = b"POST /api/graphql?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}";
        let (used, request) = parse_head(bytes).unwrap().unwrap();
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/api/graphql"));
        assert_eq!(request.query.as_deref(), Some("x=1"));
        assert_eq!(request.header("host"), Some("127.0.0.1"));
        assert_eq!(content_length(&request), Ok(2));
        assert_eq!(&bytes[used..], b"{}");
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none(), "partial");
    }

    #[test]
    fn refuses_smuggling_and_oversize() {
        let (_, chunked) = parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap().unwrap();
        assert_eq!(content_length(&chunked), Err(ReadError::LengthRequired));
        let (_, two) =
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").unwrap().unwrap();
        assert_eq!(content_length(&two), Err(ReadError::Malformed));
        let (_, big) = parse_head(b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n").unwrap().unwrap();
        assert_eq!(content_length(&big), Err(ReadError::BodyTooLarge));
        assert_eq!(parse_head(b"\x00\x01garbage\r\n\r\n").unwrap_err(), ReadError::Malformed);
    }

    proptest! {
        /// Any bytes: a request, "more needed" or an error; never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(Some((used, request))) = parse_head(&bytes) {
                prop_assert!(used <= bytes.len());
                let _ = content_length(&request);
            }
        }
    }
}
