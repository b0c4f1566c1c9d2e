//! The HTTP side of the client listeners (`[[listen.http]]`), sans-IO: one request
//! head in, what to do and the response bytes out. Heads are parsed by `httparse`.
//!
//! Served: the RFC 6455 upgrade to the RFC 7395 `xmpp` subprotocol at the WebSocket
//! path, XEP-0124 BOSH `POST`s (and their CORS preflight `OPTIONS`) at the BOSH path,
//! and XEP-0156 `/.well-known/host-meta` (XRD) and `host-meta.json` (JRD) naming
//! both endpoints. Anything else is answered `404`, `405`, `411`, `413` or `400` and
//! the connection closed.

use base64::Engine;

/// Largest request head accepted, in bytes (RFC 9112 leaves it to the server;
/// browsers send well under 8 KiB for an upgrade).
pub const HEAD_BYTES_MAX: usize = 8 * 1024;

/// Headers read per request head; more is `431`.
const HEADERS_MAX: usize = 32;

/// RFC 6455 section 1.3: appended to the client's key before hashing.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Where a listener serves what (the listener's configured handlers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routes {
    /// `mod_websockets`' path (RFC 7395), e.g. `/ws-xmpp`; `None`: not served.
    pub websocket: Option<String>,
    /// `mod_bosh`'s path (XEP-0206), e.g. `/http-bind`; `None`: not served.
    pub bosh: Option<String>,
    /// Largest BOSH request body accepted, in bytes (`413` above it).
    pub bosh_body_bytes_max: usize,
    /// Whether the listener is behind TLS (`wss://` in host-meta).
    pub tls: bool,
}

/// What a complete request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// An RFC 6455 upgrade at the WebSocket path; `response` is the `101` to send,
    /// after which the connection speaks WebSocket frames.
    WebSocket { response: Vec<u8> },
    /// Anything answered with one response, after which the connection is closed
    /// (host-meta, errors).
    Respond { response: Vec<u8> },
    /// A BOSH `POST` (XEP-0124 section 7) whose body is the `content_length` bytes
    /// after the head; `keep_alive`: the client did not ask to close after the answer.
    Bosh { content_length: usize, keep_alive: bool },
    /// A CORS preflight at the BOSH path, answered with `response`; the connection
    /// stays open (browsers send it before a cross-origin `POST`).
    Preflight { response: Vec<u8> },
}

/// Reads one request head from `bytes`.
///
/// `Ok(None)`: the head is not complete yet (read more, up to [`HEAD_BYTES_MAX`]).
/// `Ok(Some((request, n)))`: `n` bytes were the head; anything after them is the
/// client's first WebSocket bytes. Errors are answered too: `Request::Respond`
/// carries the `400`/`431` to send.
pub fn read_head(bytes: &[u8], routes: &Routes) -> Option<(Request, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let refuse = |status, reason| Some((Request::Respond { response: respond(status, reason, "") }, bytes.len()));
    let used = match request.parse(bytes) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if bytes.len() < HEAD_BYTES_MAX => return None,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return refuse(431, "Request Header Fields Too Large")
        }
        Err(_) => return refuse(400, "Bad Request"),
    };
    if used > HEAD_BYTES_MAX {
        // Complete, but over the limit (found by a breaker: it was served).
        return refuse(431, "Request Header Fields Too Large");
    }
    if request.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host")).count() > 1 {
        // RFC 9112 section 3.2: more than one Host is a 400 (found by a breaker:
        // host-meta echoed the first, an attacker's).
        return refuse(400, "Bad Request");
    }
    let method = request.method.unwrap_or_default();
    let path = request.path.unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let host = header("host").filter(|h| valid_host(h));
    if routes.websocket.as_deref() == Some(path) {
        return Some((upgrade(method, &header), used));
    }
    if routes.bosh.as_deref() == Some(path) {
        let lengths = request.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")).count();
        if lengths > 1 {
            // RFC 9112 section 6.3: differing lengths are unrecoverable; we refuse
            // any repetition (found by a breaker: the first one won).
            return refuse(400, "Bad Request");
        }
        // HTTP/1.0 closes after the answer unless it asks to keep the connection.
        let http10 = request.version == Some(0);
        return Some((bosh(method, &header, routes, http10), used));
    }
    let answer = match path {
        "/.well-known/host-meta" | "/.well-known/host-meta.json" if method == "GET" || method == "HEAD" => match host {
            Some(host) if routes.websocket.is_some() || routes.bosh.is_some() => {
                let (ws, http) = if routes.tls { ("wss", "https") } else { ("ws", "http") };
                let mut links = Vec::new();
                if let Some(path) = &routes.websocket {
                    links.push(("urn:xmpp:alt-connections:websocket", format!("{ws}://{host}{path}")));
                }
                if let Some(path) = &routes.bosh {
                    links.push(("urn:xmpp:alt-connections:xbosh", format!("{http}://{host}{path}")));
                }
                let (body, kind) = if path.ends_with(".json") {
                    (host_meta_json(&links), "application/json")
                } else {
                    (host_meta_xrd(&links), "application/xrd+xml")
                };
                let body = if method == "HEAD" { String::new() } else { body };
                ok(kind, &body)
            }
            None => respond(400, "Bad Request", "a Host header is needed\n"),
            Some(_) => respond(404, "Not Found", ""),
        },
        "/.well-known/host-meta" | "/.well-known/host-meta.json" => respond(405, "Method Not Allowed", ""),
        _ => respond(404, "Not Found", ""),
    };
    Some((Request::Respond { response: answer }, used))
}

/// XEP-0124 section 7 (and XEP-0206): what a request at the BOSH path is.
fn bosh<'a>(method: &str, header: &impl Fn(&str) -> Option<&'a str>, routes: &Routes, http10: bool) -> Request {
    match method {
        "POST" => {}
        "OPTIONS"
            if header("content-length").is_some_and(|v| v.trim() != "0") || header("transfer-encoding").is_some() =>
        {
            // A preflight has no body; one that claims one would be read as the next
            // request (found by a breaker: a response desync behind a proxy).
            return Request::Respond { response: respond(400, "Bad Request", "") };
        }
        "OPTIONS" => {
            let response =
                format!("HTTP/1.1 200 OK\r\n{CORS}Access-Control-Max-Age: 86400\r\nContent-Length: 0\r\n\r\n");
            return Request::Preflight { response: response.into_bytes() };
        }
        _ => return Request::Respond { response: respond(405, "Method Not Allowed", "use POST (XEP-0124)\n") },
    }
    if header("transfer-encoding").is_some() {
        // Browsers and BOSH libraries send a length; chunked bodies are not read here.
        return Request::Respond { response: respond(411, "Length Required", "") };
    }
    let digits = |v: &str| !v.trim().is_empty() && v.trim().bytes().all(|b| b.is_ascii_digit());
    let Some(length) = header("content-length").filter(|v| digits(v)).and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return Request::Respond { response: respond(411, "Length Required", "") };
    };
    if length > routes.bosh_body_bytes_max {
        return Request::Respond { response: respond(413, "Content Too Large", "") };
    }
    let token =
        |name: &str| header("connection").is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(name)));
    let keep_alive = if http10 { token("keep-alive") } else { !token("close") };
    Request::Bosh { content_length: length, keep_alive }
}

/// CORS headers of BOSH answers: any origin may post (XEP-0124 section 7 leaves
/// cross-domain access to the server; MongooseIM and ejabberd allow any).
const CORS: &str = "Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Methods: POST, OPTIONS\r\n\
                    Access-Control-Allow-Headers: Content-Type\r\n";

/// A `200` carrying a BOSH `<body/>` (XEP-0124 section 8); `keep_alive: false`
/// closes the connection after it.
pub fn bosh_response(body: &[u8], keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\n{CORS}Cache-Control: no-store\r\n\
         Content-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// An error status that closes the connection (for BOSH: XEP-0124 section 17.1's
/// legacy codes, e.g. `404` for an unknown session after a restart).
pub fn error_response(status: u16, reason: &str) -> Vec<u8> {
    respond_with(status, reason, CORS, "")
}

/// RFC 6455 section 4.2: the server's answer to an opening handshake.
fn upgrade<'a>(method: &str, header: &impl Fn(&str) -> Option<&'a str>) -> Request {
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if method != "GET" {
        return Request::Respond { response: respond(405, "Method Not Allowed", "") };
    }
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Request::Respond { response: respond(426, "Upgrade Required", "use WebSocket (RFC 7395)\n") };
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        // RFC 6455 section 4.4: say which version we speak.
        let response = respond_with(426, "Upgrade Required", "Sec-WebSocket-Version: 13\r\n", "");
        return Request::Respond { response };
    }
    let key = header("sec-websocket-key").map(str::trim).unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD.decode(key).unwrap_or_default();
    if decoded.len() != 16 {
        return Request::Respond { response: respond(400, "Bad Request", "bad Sec-WebSocket-Key\n") };
    }
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    // RFC 7395 section 3.1: the server agrees to `xmpp` when offered. A client that
    // offered nothing gets no subprotocol header (a browser would refuse one).
    if has_token("sec-websocket-protocol", crate::websocket::SUBPROTOCOL) {
        response.push_str("Sec-WebSocket-Protocol: xmpp\r\n");
    }
    response.push_str("\r\n");
    Request::WebSocket { response: response.into_bytes() }
}

/// RFC 6455 section 4.2.2: `Sec-WebSocket-Accept` for a client's key.
pub fn accept_key(key: &str) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key.as_bytes());
    context.update(WEBSOCKET_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(context.finish())
}

/// A host name or IP literal with an optional port: what we echo into host-meta.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// XEP-0156 section 3.3: host-meta in XRD; `links` are (rel, href).
fn host_meta_xrd(links: &[(&str, String)]) -> String {
    let mut out = String::from(
        "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n",
    );
    for (rel, href) in links {
        out.push_str(&format!("  <Link rel='{rel}' href='{}'/>\n", crate::xml::escaped(href)));
    }
    out.push_str("</XRD>\n");
    out
}

/// XEP-0156 section 3.3: host-meta in JRD (JSON); `links` are (rel, href).
fn host_meta_json(links: &[(&str, String)]) -> String {
    // `href` holds only host characters, the scheme and the configured path.
    let links: Vec<String> = links
        .iter()
        .map(|(rel, href)| {
            let href = href.replace('\\', "\\\\").replace('"', "\\\"");
            format!("{{\"rel\":\"{rel}\",\"href\":\"{href}\"}}")
        })
        .collect();
    format!("{{\"links\":[{}]}}\n", links.join(","))
}

fn ok(kind: &str, body: &str) -> Vec<u8> {
    // XEP-0156 section 3.2.1: host-meta may be read cross-origin.
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn respond(status: u16, reason: &str, body: &str) -> Vec<u8> {
    respond_with(status, reason, "", body)
}

/// A response that closes the connection; `headers` are extra lines, each ending in CRLF.
fn respond_with(status: u16, reason: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\n{headers}Content-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn routes() -> Routes {
        Routes {
            websocket: Some("/ws-xmpp".into()),
            bosh: Some("/http-bind".into()),
            bosh_body_bytes_max: 1024,
            tls: false,
        }
    }

    fn text(request: &Request) -> String {
        match request {
            Request::WebSocket { response } | Request::Respond { response } | Request::Preflight { response } => {
                String::from_utf8_lossy(response).into()
            }
            Request::Bosh { content_length, keep_alive } => format!("bosh {content_length} {keep_alive}"),
        }
    }

    /// RFC 6455 section 1.3's worked example.
    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn an_upgrade_with_the_xmpp_subprotocol_is_accepted() {
        let head = "GET /ws-xmpp HTTP/1.1\r\nHost: localhost:5280\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\nrest";
        let (request, used) = read_head(head.as_bytes(), &routes()).expect("complete");
        assert_eq!(used, head.len() - 4);
        assert!(matches!(request, Request::WebSocket { .. }));
        let text = text(&request);
        assert!(text.starts_with("HTTP/1.1 101 "));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: xmpp\r\n"));
    }

    #[test]
    fn bad_upgrades_get_their_status() {
        let base =
            "Host: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        let cases = [
            (format!("POST /ws-xmpp HTTP/1.1\r\n{base}Sec-WebSocket-Version: 13\r\n\r\n"), "405"),
            (format!("GET /ws-xmpp HTTP/1.1\r\n{base}Sec-WebSocket-Version: 8\r\n\r\n"), "426"),
            ("GET /ws-xmpp HTTP/1.1\r\nHost: h\r\n\r\n".to_owned(), "426"),
            (
                "GET /ws-xmpp HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
                    .to_owned(),
                "400",
            ),
            ("GET /other HTTP/1.1\r\n\r\n".to_owned(), "404"),
            ("GARBAGE\0\r\n\r\n".to_owned(), "400"),
        ];
        for (head, status) in cases {
            let (request, _) = read_head(head.as_bytes(), &routes()).expect("complete");
            assert!(matches!(request, Request::Respond { .. }), "{head:?}");
            assert!(text(&request).starts_with(&format!("HTTP/1.1 {status} ")), "{head:?}: {}", text(&request));
        }
        let wrong_version =
            read_head(format!("GET /ws-xmpp HTTP/1.1\r\n{base}Sec-WebSocket-Version: 8\r\n\r\n").as_bytes(), &routes());
        assert!(text(&wrong_version.expect("complete").0).contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn host_meta_names_the_websocket_endpoint() {
        let (xrd, _) = read_head(b"GET /.well-known/host-meta HTTP/1.1\r\nHost: chat.example:5280\r\n\r\n", &routes())
            .expect("complete");
        assert!(text(&xrd).contains("href='ws://chat.example:5280/ws-xmpp'"), "{}", text(&xrd));
        let tls = Routes { tls: true, ..routes() };
        let (json, _) =
            read_head(b"GET /.well-known/host-meta.json HTTP/1.1\r\nHost: h\r\n\r\n", &tls).expect("complete");
        let body = text(&json);
        let body = body.split("\r\n\r\n").nth(1).expect("body");
        let parsed: serde_json_probe::Value = serde_json_probe::parse(body);
        assert_eq!(parsed.href, "wss://h/ws-xmpp");
        let (hostile, _) =
            read_head(b"GET /.well-known/host-meta HTTP/1.1\r\nHost: h'><x\r\n\r\n", &routes()).expect("complete");
        assert!(text(&hostile).starts_with("HTTP/1.1 400 "));
    }

    /// A tiny check of the JRD without a JSON dependency in `wire`.
    mod serde_json_probe {
        pub struct Value {
            pub href: String,
        }
        pub fn parse(body: &str) -> Value {
            let start = body.find("\"href\":\"").expect("href") + 8;
            let end = body[start..].find('"').expect("end") + start;
            Value { href: body[start..end].to_owned() }
        }
    }

    /// XEP-0124 over HTTP/1.1: POSTs with a length, a CORS preflight that keeps the
    /// connection, and everything else refused with its status.
    #[test]
    fn bosh_requests() {
        let post =
            b"POST /http-bind HTTP/1.1\r\nHost: h\r\nContent-Type: text/xml\r\nContent-Length: 12\r\n\r\n<body rid=1>";
        let (request, used) = read_head(post, &routes()).expect("complete");
        assert_eq!((request, used), (Request::Bosh { content_length: 12, keep_alive: true }, post.len() - 12));
        let close = b"POST /http-bind HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert_eq!(
            read_head(close, &routes()).map(|r| r.0),
            Some(Request::Bosh { content_length: 0, keep_alive: false })
        );
        let old = b"POST /http-bind HTTP/1.0\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            read_head(old, &routes()).map(|r| r.0),
            Some(Request::Bosh { content_length: 0, keep_alive: false })
        );
        let options = b"OPTIONS /http-bind HTTP/1.1\r\nOrigin: http://a\r\n\r\n";
        let (preflight, _) = read_head(options, &routes()).expect("complete");
        assert!(matches!(preflight, Request::Preflight { .. }));
        assert!(text(&preflight).contains("Access-Control-Allow-Origin: *"), "{}", text(&preflight));
        for (head, status) in [
            (&b"GET /http-bind HTTP/1.1\r\n\r\n"[..], "405"),
            (b"POST /http-bind HTTP/1.1\r\n\r\n", "411"),
            (b"POST /http-bind HTTP/1.1\r\nContent-Length: x\r\n\r\n", "411"),
            (b"POST /http-bind HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "411"),
            (b"POST /http-bind HTTP/1.1\r\nContent-Length: 1025\r\n\r\n", "413"),
            // Found by a breaker: a repeated length, a signed one, a preflight with a body.
            (b"POST /http-bind HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 92\r\n\r\n", "400"),
            (b"POST /http-bind HTTP/1.1\r\nContent-Length: +5\r\n\r\n", "411"),
            (b"OPTIONS /http-bind HTTP/1.1\r\nContent-Length: 92\r\n\r\n", "400"),
        ] {
            let (request, _) = read_head(head, &routes()).expect("complete");
            assert!(text(&request).starts_with(&format!("HTTP/1.1 {status} ")), "{}", text(&request));
        }
        let (xrd, _) =
            read_head(b"GET /.well-known/host-meta HTTP/1.1\r\nHost: h\r\n\r\n", &routes()).expect("complete");
        assert!(
            text(&xrd).contains("rel='urn:xmpp:alt-connections:xbosh' href='http://h/http-bind'"),
            "{}",
            text(&xrd)
        );
        let response = String::from_utf8(bosh_response(b"<body/>", true)).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200 OK\r\n")
                && response.ends_with("Content-Length: 7\r\nConnection: keep-alive\r\n\r\n<body/>"),
            "{response}"
        );
    }

    #[test]
    fn two_hosts_or_a_complete_oversized_head_are_refused() {
        let two = b"GET /.well-known/host-meta HTTP/1.1\r\nHost: evil.example\r\nHost: localhost\r\n\r\n";
        let (request, _) = read_head(two, &routes()).expect("complete");
        assert!(text(&request).starts_with("HTTP/1.1 400 "), "{}", text(&request));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(HEAD_BYTES_MAX));
        let (request, _) = read_head(big.as_bytes(), &routes()).expect("complete");
        assert!(text(&request).starts_with("HTTP/1.1 431 "), "{}", text(&request));
    }

    #[test]
    fn heads_are_bounded() {
        let partial = "GET / HTTP/1.1\r\nX: y\r\n";
        assert!(read_head(partial.as_bytes(), &routes()).is_none());
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "y".repeat(HEAD_BYTES_MAX));
        let (request, _) = read_head(huge.as_bytes(), &routes()).expect("refused");
        assert!(text(&request).starts_with("HTTP/1.1 431 "));
        let many: String = (0..40).map(|i| format!("X{i}: y\r\n")).collect();
        let (request, _) = read_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(), &routes()).expect("refused");
        assert!(text(&request).starts_with("HTTP/1.1 431 "));
    }

    proptest! {
        /// Arbitrary bytes get an answer or a request for more, never a panic.
        #[test]
        fn read_head_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = read_head(&bytes, &routes());
        }
    }
}
