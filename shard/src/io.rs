//! The socket side of a connection: waiting for input, mail or a deadline; TLS; and
//! writing what is queued. No protocol decisions are made here.
//!
//! An idle connection holds no read buffer: glommio waits for readability with an
//! io_uring poll and `recv`s straight into the core's shared buffer, which is borrowed
//! only for the duration of one poll.

use std::future::Future;
use std::io::{Read, Write};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::core::Core;
use crate::mailbox::Mailbox;

/// Why `Io::wait` returned.
#[derive(Debug)]
pub(crate) enum Wake {
    /// `n` bytes are in the core's read buffer.
    Read(usize),
    /// Mail arrived, or the connection was told to close.
    Mail,
    /// The deadline passed.
    Timeout,
    /// The peer closed the connection or the socket failed.
    Closed,
    /// More output is queued than the limit allows: the peer is not reading.
    Overflow,
}

pub(crate) struct Io {
    pub stream: TcpStream,
    pub tls: Option<Box<rustls::ServerConnection>>,
    /// Bytes accepted for sending (ciphertext when TLS is on) the socket has not taken.
    pending: Vec<u8>,
}

impl Io {
    pub fn new(stream: TcpStream, tls: Option<Box<rustls::ServerConnection>>, pending: Vec<u8>) -> Io {
        Io { stream, tls, pending }
    }

    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Queues plaintext for sending (through TLS when it is on).
    pub fn queue(&mut self, plaintext: &[u8]) {
        if plaintext.is_empty() {
            return;
        }
        match &mut self.tls {
            None => self.pending.extend_from_slice(plaintext),
            Some(tls) => {
                // Invariant: writing to rustls' buffer of unlimited size does not fail.
                tls.writer().write_all(plaintext).expect("rustls buffers plaintext");
                Self::collect_tls(tls, &mut self.pending);
            }
        }
    }

    /// Starts TLS on this connection (after `<proceed/>` was flushed).
    pub fn start_tls(&mut self, config: std::sync::Arc<rustls::ServerConfig>) -> Result<(), rustls::Error> {
        self.tls = Some(Box::new(rustls::ServerConnection::new(config)?));
        Ok(())
    }

    /// Feeds received TLS bytes and appends the plaintext to `plain`. Handshake
    /// records to send are queued.
    pub fn decrypt(&mut self, mut ciphertext: &[u8], plain: &mut Vec<u8>) -> Result<(), rustls::Error> {
        let Some(tls) = &mut self.tls else {
            plain.extend_from_slice(ciphertext);
            return Ok(());
        };
        while !ciphertext.is_empty() {
            let read = tls.read_tls(&mut ciphertext).map_err(|e| rustls::Error::General(e.to_string()))?;
            let state = tls.process_new_packets();
            Self::collect_tls(tls, &mut self.pending);
            let state = state?;
            let available = state.plaintext_bytes_to_read();
            if available > 0 {
                let start = plain.len();
                plain.resize(start + available, 0);
                // Invariant: rustls said this many plaintext bytes are ready.
                tls.reader().read_exact(&mut plain[start..]).expect("buffered plaintext");
            }
            if read == 0 {
                break;
            }
        }
        Ok(())
    }

    fn collect_tls(tls: &mut rustls::ServerConnection, pending: &mut Vec<u8>) {
        while tls.wants_write() {
            // Invariant: writing into a Vec does not fail.
            tls.write_tls(pending).expect("write into Vec");
        }
    }

    /// Waits for input, mail or `deadline`, writing pending output meanwhile.
    /// The `timer` is the caller's, kept across waits: one timer per connection, not
    /// one io_uring timeout (and its cancellation) per wait.
    pub async fn wait(
        &mut self,
        core: &Core,
        mailbox: &Mailbox,
        mut timer: Option<&mut glommio::timer::Timer>,
        limit: usize,
    ) -> Wake {
        futures_lite::future::poll_fn(|cx| {
            if mailbox.kicked().is_some() || mailbox.has_mail() {
                return Poll::Ready(Wake::Mail);
            }
            if let Err(wake) = self.poll_flush(cx) {
                return Poll::Ready(wake);
            }
            if self.pending.len() > limit {
                return Poll::Ready(Wake::Overflow);
            }
            {
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

    /// Writes as much pending output as the socket takes without waiting.
    fn poll_flush(&mut self, cx: &mut std::task::Context<'_>) -> Result<(), Wake> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(Wake::Closed),
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Pending => return Ok(()),
            }
        }
        if self.pending.capacity() > 64 * 1024 {
            self.pending = Vec::new();
        }
        Ok(())
    }

    /// Writes all pending output, waiting at most `timeout`. False if it could not.
    pub async fn flush(&mut self, timeout: Duration) -> bool {
        let mut timer = glommio::timer::Timer::new(timeout);
        futures_lite::future::poll_fn(|cx| {
            if self.poll_flush(cx).is_err() {
                return Poll::Ready(false);
            }
            if self.pending.is_empty() {
                return Poll::Ready(true);
            }
            if Pin::new(&mut timer).poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            Poll::Pending
        })
        .await
    }

    /// Sends a TLS close_notify (if TLS is on) and flushes briefly; dropping the
    /// `Io` afterwards closes the socket.
    pub async fn close(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            Self::collect_tls(tls, &mut self.pending);
        }
        self.flush(Duration::from_secs(1)).await;
    }
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
