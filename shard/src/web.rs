//! Connections to an HTTP listener (`[[listen.http]]`): request heads are read and
//! answered by `starling_wire::http`; a WebSocket upgrade turns the connection into
//! an ordinary XML stream (`connection::serve_stream`), BOSH requests are handed to
//! their session (`bosh.rs`) one after another on a kept-alive connection.
//!
//! A BOSH session lives on the core that created it (its `sid` says which): a
//! request for it that arrives on another core moves the connection there first,
//! the way a c2s connection moves to its home core.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpStream;
use starling_wire::http::{read_head, Request, Routes};

use crate::core::Core;
use crate::io::{Io, Moving, Wake};
use crate::mailbox::Mailbox;
use crate::settings::ListenerTls;

/// A kept-alive HTTP connection with a request for a BOSH session on another core.
pub(crate) struct HttpTransfer {
    pub fd: OwnedFd,
    pub moving: Moving,
    pub listener: usize,
    pub address: Option<IpAddr>,
    /// Bytes read and not yet handled: the request that caused the move, and any
    /// after it.
    pub buffered: Vec<u8>,
}

/// Serves an HTTP connection from `buffered` (bytes already read) on.
pub(crate) async fn serve(core: Rc<Core>, mut io: Io, listener: usize, address: Option<IpAddr>, mut buffered: Vec<u8>) {
    let Some(routes) = core.shared.settings.listeners[listener].http.clone() else { return };
    let mailbox = Rc::new(Mailbox::default());
    let live = core.register_live_guarded(core.next_id(), mailbox.clone());
    // Each request (and each body) must arrive within this; a kept-alive connection
    // idle for longer is closed.
    let idle = core.limits().pre_auth_timeout;
    loop {
        let Some((request, used)) = read_request(&core, &mut io, &mailbox, &routes, &mut buffered, idle).await else {
            io.close().await;
            return;
        };
        match request {
            Request::Respond { response } => {
                io.queue(&response);
                io.close().await;
                return;
            }
            Request::Preflight { response } => {
                io.queue(&response);
                buffered.drain(..used.min(buffered.len()));
            }
            Request::WebSocket { response } => {
                io.queue(&response);
                let message_bytes_max = core.shared.settings.framer.stanza_bytes_max as usize + 1024;
                io.start_websocket(starling_wire::websocket::WebSocket::new(message_bytes_max));
                drop(live);
                let secured = core.shared.settings.listeners[listener].tls == ListenerTls::Direct;
                let rest = buffered.get(used..).unwrap_or_default().to_vec();
                let mut initial = Vec::new();
                if io.unframe(&rest, &mut initial).is_err() {
                    io.close().await;
                    return;
                }
                crate::connection::serve_stream(core, io, listener, address, secured, &initial).await;
                return;
            }
            Request::Bosh { content_length, keep_alive } => {
                let end = used.saturating_add(content_length);
                if !read_body(&core, &mut io, &mailbox, &mut buffered, end, idle).await {
                    io.close().await;
                    return;
                }
                let body = buffered.get(used..end).unwrap_or_default();
                match crate::bosh::handle(&core, body, address, listener).await {
                    crate::bosh::Handled::Answer(answer) => {
                        io.queue(&starling_wire::http::bosh_response(&answer, keep_alive));
                        buffered.drain(..end);
                        if !keep_alive {
                            io.close().await;
                            return;
                        }
                        // Out now: a pipelined request already read would otherwise
                        // keep it queued while that one is held (found by a breaker).
                        if !io.flush(core.limits().send_timeout).await {
                            io.close().await;
                            return;
                        }
                    }
                    crate::bosh::Handled::Elsewhere(peer) => {
                        drop(live);
                        move_to(&core, peer, io, listener, address, buffered).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Reads until a request head is complete. `None`: the client left, sent nothing
/// for `idle`, or the connection failed.
async fn read_request(
    core: &Core,
    io: &mut Io,
    mailbox: &Mailbox,
    routes: &Routes,
    buffered: &mut Vec<u8>,
    idle: Duration,
) -> Option<(Request, usize)> {
    let mut timer = glommio::timer::Timer::new(idle);
    loop {
        // Regression (xmpp.js over wss://): a head not complete in one read (here:
        // the TLS handshake's reads, which carry none of it) is read on, not refused.
        if !buffered.is_empty() {
            if let Some(request) = read_head(buffered, routes) {
                return Some(request);
            }
        }
        if !read_more(core, io, mailbox, &mut timer, buffered).await {
            return None;
        }
    }
}

/// Reads until `buffered` holds `end` bytes (a request's body). False as for
/// [`read_request`].
async fn read_body(
    core: &Core,
    io: &mut Io,
    mailbox: &Mailbox,
    buffered: &mut Vec<u8>,
    end: usize,
    idle: Duration,
) -> bool {
    let mut timer = glommio::timer::Timer::new(idle);
    while buffered.len() < end {
        if !read_more(core, io, mailbox, &mut timer, buffered).await {
            return false;
        }
    }
    true
}

/// One read (decrypted) appended to `buffered`; false when the connection ends.
async fn read_more(
    core: &Core,
    io: &mut Io,
    mailbox: &Mailbox,
    timer: &mut glommio::timer::Timer,
    buffered: &mut Vec<u8>,
) -> bool {
    let limit = core.limits().queued_bytes_per_connection_max;
    let mut paused = Vec::new();
    loop {
        match io.wait(core, mailbox, Some(timer), limit, &mut paused).await {
            Wake::Read(n) => {
                let read = core.read_buffer.borrow();
                let unwrapped = io.unwrap_input(&read[..n], buffered);
                drop(read);
                if let Err(error) = unwrapped {
                    log::debug!("http: {error}");
                    return false;
                }
                return true;
            }
            Wake::Mail if mailbox.kicked().is_none() => continue,
            Wake::Resumed => continue,
            Wake::Mail | Wake::Timeout | Wake::Closed | Wake::Stalled => return false,
        }
    }
}

/// Hands the connection to core `peer`, where the BOSH session of its request is.
async fn move_to(core: &Core, peer: usize, mut io: Io, listener: usize, address: Option<IpAddr>, buffered: Vec<u8>) {
    // Earlier answers go out first: the moved connection starts with nothing queued.
    if !io.flush(core.limits().send_timeout).await {
        io.close().await;
        return;
    }
    // SAFETY: the fd is open: `io.stream` owns it for the duration of this borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(io.stream.as_raw_fd()) };
    let fd = match borrowed.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(error) => {
            log::warn!("http: cannot duplicate a socket to move it: {error}");
            return;
        }
    };
    let transfer = HttpTransfer { fd, moving: io.take_moving(), listener, address, buffered };
    core.adopt_on(peer, crate::core::Adoption::Http(Box::new(transfer)));
}

/// Serves an HTTP connection another core moved here.
pub(crate) async fn adopt(core: Rc<Core>, transfer: Box<HttpTransfer>) {
    let HttpTransfer { fd, moving, listener, address, buffered } = *transfer;
    // SAFETY: `fd` is an open socket we own; ownership passes to the socket.
    let socket = unsafe { socket2::Socket::from_raw_fd(fd.into_raw_fd()) };
    let io = Io::new(TcpStream::from(socket), moving);
    core.stats.moved_in.set(core.stats.moved_in.get() + 1);
    serve(core, io, listener, address, buffered).await;
}
