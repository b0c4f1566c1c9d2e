//! The socket side of a connection: waiting for input, mail or a deadline; TLS; and
//! writing what is queued. No protocol decisions are made here.
//!
//! ```text
//!   queue(plaintext) --> plain (TLS only) --fill: <= 16 KiB at a time while the
//!                                            socket keeps up--> rustls --> wire
//!   queue(plaintext) --> wire (plain TCP) ------------------------------------^
//!   wire --poll_write as the socket drains--> kernel
//! ```
//! Output of any size is accepted and leaves as fast as the peer reads: plaintext is
//! handed to rustls in pieces only while less than [`WIRE_BYTES_HIGH`] ciphertext
//! waits, so rustls' own buffer limit is never hit and no write is ever partial from
//! the caller's point of view. A peer that takes nothing for `send_timeout` while
//! output waits is reported as [`Wake::Stalled`]; one that reads slowly is not.
//!
//! An idle connection holds no read buffer: glommio waits for readability with an
//! io_uring poll and `recv`s straight into the core's shared buffer, which is borrowed
//! only for the duration of one poll.

use std::future::Future;
use std::io::{Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use starling_wire::websocket::{WebSocket, WsError};

use crate::core::Core;
use crate::flow::Congestion;
use crate::mailbox::Mailbox;

/// Ciphertext (or plain TCP bytes) waiting for the socket above which no more
/// plaintext is encrypted: bounds what a TLS connection holds beyond its plaintext.
pub(crate) const WIRE_BYTES_HIGH: usize = 64 * 1024;

/// Plaintext handed to rustls per call: one TLS record's worth.
const TLS_CHUNK_BYTES: usize = 16 * 1024;

/// Why `Io::wait` returned.
#[derive(Debug)]
pub(crate) enum Wake {
    /// `n` bytes are in the core's read buffer.
    Read(usize),
    /// Mail arrived (and there is room to take it), or the connection was told to close.
    Mail,
    /// The deadline passed.
    Timeout,
    /// The peer closed the connection or the socket failed.
    Closed,
    /// Output has waited `send_timeout` without the peer taking a byte.
    Stalled,
    /// Every queue the caller waited for drained: handle any input it stashed.
    Resumed,
}

/// Why input could not be unwrapped into the XML stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unwrapped {
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    #[error("{0}")]
    WebSocket(WsError),
}

/// Bytes waiting to leave, consumed from the front without moving the rest each time.
#[derive(Default)]
pub(crate) struct OutQueue {
    bytes: Vec<u8>,
    start: usize,
}

impl OutQueue {
    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// The first `n` bytes (all of them if fewer wait).
    pub fn front(&self, n: usize) -> &[u8] {
        let slice = self.as_slice();
        &slice[..n.min(slice.len())]
    }

    pub fn extend(&mut self, more: &[u8]) {
        if self.start > 0 && self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
        }
        self.bytes.extend_from_slice(more);
    }

    /// Drops `n` bytes from the front (`n` at most `len()`).
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.bytes.len());
        if self.start == self.bytes.len() {
            // Freed, not cleared: an idle connection keeps no output buffer. Keeping
            // the capacity left every session holding what its login wrote (~0.9 KB,
            // found with heaptrack on the connect profile); a busy one pays one
            // allocation per burst instead (see `budget.rs`).
            self.bytes = Vec::new();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.bytes.len() {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
    }
}

/// TLS on a connection: rustls' state and the plaintext not yet given to it. Boxed,
/// so a plain-TCP connection pays one pointer for it.
pub(crate) struct Tls {
    connection: rustls::ServerConnection,
    /// Plaintext accepted for sending, not yet encrypted.
    plain: OutQueue,
}

/// Output that waits for a peer that takes nothing: when it started waiting, and a
/// timer to check for a stall. Boxed: an idle connection has none.
struct Blocked {
    since: Instant,
    timer: glommio::timer::Timer,
}

/// What travels with a connection moved to another core: its TLS and WebSocket state
/// and every byte still queued for it.
#[derive(Default)]
pub(crate) struct Moving {
    tls: Option<Box<Tls>>,
    websocket: Option<Box<WebSocket>>,
    wire: OutQueue,
    /// The connection's place in its source address's count (`guard.rs`).
    pub admitted: Option<crate::guard::Admitted>,
}

impl Moving {
    /// A direct-TLS connection (XEP-0368), TLS from the first byte.
    pub fn tls(connection: rustls::ServerConnection) -> Moving {
        Moving {
            tls: Some(Box::new(Tls { connection, plain: OutQueue::default() })),
            websocket: None,
            wire: OutQueue::default(),
            admitted: None,
        }
    }
}

pub(crate) struct Io {
    pub stream: TcpStream,
    tls: Option<Box<Tls>>,
    /// RFC 7395 framing, on a WebSocket connection after the upgrade: what is queued
    /// is XML and leaves as text frames; what is read is frames and comes out as XML.
    websocket: Option<Box<WebSocket>>,
    /// Bytes for the socket (ciphertext when TLS is on).
    wire: OutQueue,
    /// Set while output waits for the socket.
    blocked: Option<Box<Blocked>>,
    /// Counted against its source address until dropped with the connection.
    admitted: Option<crate::guard::Admitted>,
}

impl Io {
    pub fn new(stream: TcpStream, moving: Moving) -> Io {
        Io {
            stream,
            tls: moving.tls,
            websocket: moving.websocket,
            wire: moving.wire,
            blocked: None,
            admitted: moving.admitted,
        }
    }

    /// The TLS and WebSocket state and queued output, for a connection that moves to
    /// another core.
    pub fn take_moving(&mut self) -> Moving {
        Moving {
            tls: self.tls.take(),
            websocket: self.websocket.take(),
            wire: std::mem::take(&mut self.wire),
            admitted: self.admitted.take(),
        }
    }

    /// From now on, queued XML leaves as RFC 7395 WebSocket messages and input is
    /// read as WebSocket frames (after the `101` was queued).
    pub fn start_websocket(&mut self, websocket: WebSocket) {
        self.websocket = Some(Box::new(websocket));
    }

    /// True when input bytes are the XML stream itself: no TLS, no WebSocket.
    pub fn is_plain(&self) -> bool {
        self.tls.is_none() && self.websocket.is_none()
    }

    /// Turns bytes read from the socket into the XML stream: decrypts them (TLS) and
    /// unframes them (WebSocket), appending to `xml`. Handshake records, pongs and
    /// the close handshake are queued.
    ///
    /// # Errors
    /// The connection cannot go on (a TLS alert, a WebSocket protocol error or close);
    /// what the peer should still get (a WebSocket close frame) is queued.
    pub fn unwrap_input(&mut self, read: &[u8], xml: &mut Vec<u8>) -> Result<(), Unwrapped> {
        if self.websocket.is_none() {
            return self.decrypt(read, xml).map_err(Unwrapped::Tls);
        }
        let mut frames = Vec::new();
        let input: &[u8] = if self.tls.is_some() {
            self.decrypt(read, &mut frames).map_err(Unwrapped::Tls)?;
            &frames
        } else {
            read
        };
        self.unframe(input, xml)
    }

    /// Unframes WebSocket bytes already decrypted (those that came with the upgrade
    /// request); see [`Io::unwrap_input`]. Without a WebSocket they are the XML.
    pub fn unframe(&mut self, input: &[u8], xml: &mut Vec<u8>) -> Result<(), Unwrapped> {
        let Some(websocket) = &mut self.websocket else {
            xml.extend_from_slice(input);
            return Ok(());
        };
        let mut replies = Vec::new();
        let result = websocket.decode(input, xml, &mut replies);
        if let Err(error) = &result {
            if *error != WsError::Closed {
                websocket.close(error.close_code(), &mut replies);
            }
        }
        self.queue_transport(&replies);
        result.map_err(Unwrapped::WebSocket)
    }

    /// The TLS connection, when TLS is on.
    pub fn tls(&self) -> Option<&rustls::ServerConnection> {
        self.tls.as_ref().map(|tls| &tls.connection)
    }

    /// Bytes accepted for sending that the socket has not taken yet.
    pub fn queued(&self) -> usize {
        self.tls.as_ref().map_or(0, |tls| tls.plain.len()) + self.wire.len()
    }

    /// Queues XML for sending (in WebSocket frames on a WebSocket, through TLS when
    /// it is on). Never fails: the bytes leave as the peer reads them.
    pub fn queue(&mut self, plaintext: &[u8]) {
        if plaintext.is_empty() {
            return;
        }
        if let Some(websocket) = &mut self.websocket {
            let mut frames = Vec::new();
            websocket.encode(plaintext, &mut frames);
            self.queue_transport(&frames);
            return;
        }
        self.queue_transport(plaintext);
    }

    /// Queues bytes below the XML stream: through TLS when it is on.
    fn queue_transport(&mut self, plaintext: &[u8]) {
        if plaintext.is_empty() {
            return;
        }
        match &mut self.tls {
            None => self.wire.extend(plaintext),
            Some(tls) => {
                tls.plain.extend(plaintext);
                self.fill();
            }
        }
    }

    /// Encrypts queued plaintext while less than [`WIRE_BYTES_HIGH`] waits for the
    /// socket.
    fn fill(&mut self) {
        let Some(tls) = &mut self.tls else { return };
        while !tls.plain.is_empty() && self.wire.len() < WIRE_BYTES_HIGH {
            let chunk = tls.plain.front(TLS_CHUNK_BYTES);
            let accepted = tls.connection.writer().write(chunk).unwrap_or(0);
            collect_tls(&mut tls.connection, &mut self.wire);
            if accepted == 0 {
                // rustls is still handshaking or its buffer is full: try after a write.
                break;
            }
            tls.plain.consume(accepted);
        }
    }

    /// Starts TLS on this connection (after `<proceed/>` was flushed).
    pub fn start_tls(&mut self, config: std::sync::Arc<rustls::ServerConfig>) -> Result<(), rustls::Error> {
        let connection = rustls::ServerConnection::new(config)?;
        self.tls = Some(Box::new(Tls { connection, plain: OutQueue::default() }));
        Ok(())
    }

    /// Feeds received TLS bytes and appends the plaintext to `plain`. Handshake
    /// records to send are queued.
    pub fn decrypt(&mut self, mut ciphertext: &[u8], plain: &mut Vec<u8>) -> Result<(), rustls::Error> {
        let Some(tls) = &mut self.tls else {
            plain.extend_from_slice(ciphertext);
            return Ok(());
        };
        let tls = &mut tls.connection;
        while !ciphertext.is_empty() {
            let read = tls.read_tls(&mut ciphertext).map_err(|e| rustls::Error::General(e.to_string()))?;
            let state = tls.process_new_packets();
            collect_tls(tls, &mut self.wire);
            let state = state?;
            let available = state.plaintext_bytes_to_read();
            if available > 0 {
                let start = plain.len();
                plain.resize(start + available, 0);
                if let Err(error) = tls.reader().read_exact(&mut plain[start..]) {
                    plain.truncate(start);
                    return Err(rustls::Error::General(error.to_string()));
                }
            }
            if read == 0 {
                break;
            }
        }
        // Handshake done meanwhile: plaintext queued before it can go now.
        self.fill();
        Ok(())
    }

    /// Waits for input, mail or `deadline`, writing pending output meanwhile.
    ///
    /// Input is read only while less than `read_while_queued_below` bytes of this
    /// connection's own output wait (a client that does not read its answers is not
    /// read either) and no `paused` congestion persists (a sender whose recipients are
    /// behind waits for them). Mail is taken only while there is room for it, so it
    /// waits in the mailbox, where senders see it. `timer` is the caller's, kept
    /// across waits: one timer per connection, not one io_uring timeout per wait.
    pub async fn wait(
        &mut self,
        core: &Core,
        mailbox: &Mailbox,
        mut timer: Option<&mut glommio::timer::Timer>,
        read_while_queued_below: usize,
        paused: &mut Vec<Rc<dyn Congestion>>,
    ) -> Wake {
        let send_timeout = core.limits().send_timeout;
        let was_paused = !paused.is_empty();
        futures_lite::future::poll_fn(|cx| {
            if mailbox.kicked().is_some() || mailbox.interrupted() {
                return Poll::Ready(Wake::Mail);
            }
            if self.poll_flush(cx).is_err() {
                return Poll::Ready(Wake::Closed);
            }
            if self.queued() == 0 {
                mailbox.mark_written();
            }
            if self.queued() < WIRE_BYTES_HIGH && mailbox.has_mail() {
                return Poll::Ready(Wake::Mail);
            }
            if self.queued() > 0 && self.poll_stalled(cx, send_timeout) {
                return Poll::Ready(Wake::Stalled);
            }
            paused.retain(|congestion| congestion.is_congested());
            if let Some(congestion) = paused.first() {
                congestion.register(cx.waker());
            } else if was_paused {
                return Poll::Ready(Wake::Resumed);
            } else if self.queued() < read_while_queued_below {
                let mut buffer = core.read_buffer.borrow_mut();
                match Pin::new(&mut self.stream).poll_read(cx, &mut buffer[..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Wake::Closed),
                    Poll::Ready(Ok(n)) => return Poll::Ready(Wake::Read(n)),
                    Poll::Pending => {}
                }
            }
            if let Some(timer) = timer.as_deref_mut() {
                if Pin::new(timer).poll(cx).is_ready() {
                    return Poll::Ready(Wake::Timeout);
                }
            }
            mailbox.set_waker(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Writes as much pending output as the socket takes without waiting, encrypting
    /// more as ciphertext leaves.
    fn poll_flush(&mut self, cx: &mut std::task::Context<'_>) -> Result<(), ()> {
        loop {
            if self.wire.is_empty() {
                self.fill();
                if self.wire.is_empty() {
                    self.blocked = None;
                    return Ok(());
                }
            }
            match Pin::new(&mut self.stream).poll_write(cx, self.wire.as_slice()) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
                Poll::Ready(Ok(n)) => {
                    self.wire.consume(n);
                    self.blocked = None;
                    if self.wire.len() < WIRE_BYTES_HIGH / 2 {
                        self.fill();
                    }
                }
                Poll::Pending => return Ok(()),
            }
        }
    }

    /// True once output has waited `send_timeout` since the socket last took a byte.
    fn poll_stalled(&mut self, cx: &mut std::task::Context<'_>, send_timeout: Duration) -> bool {
        let blocked = self.blocked.get_or_insert_with(|| {
            Box::new(Blocked { since: Instant::now(), timer: glommio::timer::Timer::new(send_timeout) })
        });
        loop {
            let waited = blocked.since.elapsed();
            if waited >= send_timeout {
                return true;
            }
            if Pin::new(&mut blocked.timer).poll(cx).is_pending() {
                return false;
            }
            blocked.timer = glommio::timer::Timer::new(send_timeout - waited);
        }
    }

    /// Writes all pending output, waiting at most `timeout`. False if it could not.
    pub async fn flush(&mut self, timeout: Duration) -> bool {
        let mut timer = glommio::timer::Timer::new(timeout);
        futures_lite::future::poll_fn(|cx| {
            if self.poll_flush(cx).is_err() {
                return Poll::Ready(false);
            }
            if self.queued() == 0 {
                return Poll::Ready(true);
            }
            if Pin::new(&mut timer).poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            Poll::Pending
        })
        .await
    }

    /// Sends what is queued and a TLS close_notify (if TLS is on), waiting briefly;
    /// dropping the `Io` afterwards closes the socket.
    pub async fn close(&mut self) {
        if let Some(websocket) = &mut self.websocket {
            // RFC 7395 section 3.6: the server ends the WebSocket after <close/>.
            let mut frame = Vec::new();
            websocket.close(1000, &mut frame);
            self.queue_transport(&frame);
        }
        self.flush(Duration::from_secs(1)).await;
        if let Some(tls) = &mut self.tls {
            tls.connection.send_close_notify();
            collect_tls(&mut tls.connection, &mut self.wire);
        }
        self.flush(Duration::from_millis(200)).await;
    }
}

/// Moves every TLS record rustls has ready into `wire`.
fn collect_tls(tls: &mut rustls::ServerConnection, wire: &mut OutQueue) {
    let mut records = Vec::new();
    while tls.wants_write() {
        match tls.write_tls(&mut records) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    wire.extend(&records);
}

/// Writes all of `bytes` to a plain stream (used to flush a refusal before closing).
pub(crate) async fn write_all_plain(stream: &mut TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = futures_lite::future::poll_fn(|cx| Pin::new(&mut *stream).poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue hands out what was added, in order, across partial consumption and
    /// compaction, and frees a large buffer once empty.
    #[test]
    fn out_queue_keeps_order() {
        let mut queue = OutQueue::default();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        queue.extend(&data);
        let mut seen = Vec::new();
        while !queue.is_empty() {
            let n = queue.len().min(7_777);
            seen.extend_from_slice(&queue.as_slice()[..n]);
            queue.consume(n);
            if seen.len() == 100_000 - 100_000 % 7_777 {
                queue.extend(b"tail");
            }
        }
        let mut expected = data.clone();
        expected.extend_from_slice(b"tail");
        // "tail" was appended after the first ~100 KB were consumed: still at the end.
        assert_eq!(seen.len(), expected.len());
        assert_eq!(&seen[seen.len() - 4..], b"tail");
        assert_eq!(queue.bytes.capacity(), 0);
    }

    /// Regression (heaptrack, connect profile): a session kept the ~0.9 KB buffer its
    /// login wrote for as long as it lived. A drained queue holds no buffer at all.
    #[test]
    fn a_drained_queue_keeps_no_buffer() {
        let mut queue = OutQueue::default();
        queue.extend(&[b'x'; 900]);
        queue.consume(400);
        assert!(queue.bytes.capacity() >= 900);
        queue.consume(500);
        assert!(queue.is_empty());
        assert_eq!(queue.bytes.capacity(), 0);
    }
}
