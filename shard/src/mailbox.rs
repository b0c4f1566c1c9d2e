//! A connection's inbox on its core: stanzas other tasks route to it, and the order
//! to close. Shared (`Rc`) between the connection task and the session table.
//!
//! Pushing appends plaintext bytes and wakes the connection's task, which writes
//! everything queued in one go (natural batching: many stanzas, one send). A mailbox
//! never refuses: past its limit it is congested, and whoever pushed waits until the
//! connection drains it (`flow.rs`).

use std::cell::{Cell, RefCell};
use std::task::Waker;

use starling_wire::error::StreamErrorCondition;

use crate::flow::Congestion;
use crate::io::OutQueue;

#[derive(Default)]
pub(crate) struct Mailbox {
    queue: RefCell<OutQueue>,
    waker: Cell<Option<Waker>>,
    kick: Cell<Option<StreamErrorCondition>>,
    /// More than the connection's limit waits: whoever pushes waits (`flow.rs`).
    congested: Cell<bool>,
    /// Senders waiting for the queue to drain.
    senders: RefCell<Vec<Waker>>,
    /// Bytes pushed so far, and bytes handed to the connection's write path so far.
    pushed: Cell<u64>,
    drained: Cell<u64>,
    /// Bytes the socket has taken (as far as is known), and who waits for a mark;
    /// boxed and made on first use: most sessions never have a waiter.
    written: RefCell<Option<Box<Written>>>,
}

/// Who waits for output to reach the socket.
#[derive(Default)]
struct Written {
    bytes: u64,
    waiters: Vec<(u64, Waker)>,
}

impl Mailbox {
    /// Queues `bytes`. Nothing is refused: past `limit` queued bytes the mailbox is
    /// congested and the pusher should wait for it (returns true then; see `flow.rs`).
    pub fn push(&self, bytes: &[u8], limit: usize) -> bool {
        if self.kick.get().is_some() {
            // Closing: the stream will not be written again.
            return false;
        }
        let mut queue = self.queue.borrow_mut();
        queue.extend(bytes);
        self.pushed.set(self.pushed.get() + bytes.len() as u64);
        let congested = queue.len() > limit;
        drop(queue);
        self.congested.set(congested);
        self.wake();
        congested
    }

    /// Asks the connection to close with `condition` (the first reason wins). Senders
    /// waiting for this mailbox stop waiting.
    pub fn kick(&self, condition: StreamErrorCondition) {
        if self.kick.get().is_none() {
            self.kick.set(Some(condition));
        }
        self.congested.set(false);
        self.wake_senders();
        self.wake();
    }

    /// The connection is gone: nothing more is queued, and senders waiting for this
    /// mailbox go on.
    pub fn close(&self) {
        self.kick(StreamErrorCondition::Reset);
        *self.queue.borrow_mut() = OutQueue::default();
        if let Some(written) = self.written.borrow_mut().as_mut() {
            for (_, waker) in written.waiters.drain(..) {
                waker.wake();
            }
        }
    }

    pub fn kicked(&self) -> Option<StreamErrorCondition> {
        self.kick.get()
    }

    pub fn has_mail(&self) -> bool {
        !self.queue.borrow().is_empty()
    }

    /// Moves up to `max` queued bytes into `out` (the connection's write path); once
    /// no more than `limit` wait, senders waiting for this mailbox go on.
    pub fn drain_into(&self, out: &mut Vec<u8>, max: usize, limit: usize) {
        let mut queue = self.queue.borrow_mut();
        let n = queue.len().min(max);
        out.extend_from_slice(queue.front(n));
        queue.consume(n);
        self.drained.set(self.drained.get() + n as u64);
        let congested = queue.len() > limit;
        drop(queue);
        if self.congested.get() && !congested {
            self.congested.set(false);
            self.wake_senders();
        }
    }

    /// Everything drained so far has reached the socket (the write path is empty).
    pub fn mark_written(&self) {
        let mut written = self.written.borrow_mut();
        let Some(written) = written.as_mut() else { return };
        written.bytes = self.drained.get();
        if written.waiters.is_empty() {
            return;
        }
        let bytes = written.bytes;
        let (ready, waiting): (Vec<_>, Vec<_>) = written.waiters.drain(..).partition(|(target, _)| *target <= bytes);
        written.waiters = waiting;
        for (_, waker) in ready {
            waker.wake();
        }
    }

    /// Resolves to true once every byte pushed before this call reached the socket,
    /// false if the connection closes first.
    pub fn written(self: &std::rc::Rc<Self>) -> impl std::future::Future<Output = bool> + 'static {
        let target = self.pushed.get();
        let mailbox = self.clone();
        futures_lite::future::poll_fn(move |cx| {
            if mailbox.kick.get().is_some() {
                return std::task::Poll::Ready(false);
            }
            let mut written = mailbox.written.borrow_mut();
            let written = written.get_or_insert_with(Box::default);
            if written.bytes >= target {
                return std::task::Poll::Ready(true);
            }
            written.waiters.push((target, cx.waker().clone()));
            // The connection learns of the waiter at its next poll, which marks what
            // reached the socket.
            mailbox.wake();
            std::task::Poll::Pending
        })
    }

    pub fn set_waker(&self, waker: &Waker) {
        let current = self.waker.take();
        match current {
            Some(current) if current.will_wake(waker) => self.waker.set(Some(current)),
            _ => self.waker.set(Some(waker.clone())),
        }
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn wake_senders(&self) {
        for waker in std::mem::take(&mut *self.senders.borrow_mut()) {
            waker.wake();
        }
    }
}

impl Congestion for Mailbox {
    fn is_congested(&self) -> bool {
        self.congested.get()
    }

    fn register(&self, waker: &Waker) {
        let mut senders = self.senders.borrow_mut();
        if !senders.iter().any(|w| w.will_wake(waker)) {
            senders.push(waker.clone());
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.wake_senders();
    }
}

#[cfg(test)]
mod flow_tests {
    use super::*;

    /// Past the limit the mailbox is congested but keeps everything; draining below
    /// the limit clears it; a kick clears it too (its senders must not wait forever).
    #[test]
    fn congestion_follows_the_queue() {
        let mailbox = Mailbox::default();
        assert!(!mailbox.push(&[b'a'; 60], 100));
        assert!(mailbox.push(&[b'b'; 60], 100));
        assert!(mailbox.is_congested());
        let mut out = Vec::new();
        mailbox.drain_into(&mut out, 10, 100);
        assert!(mailbox.is_congested(), "110 bytes still wait");
        mailbox.drain_into(&mut out, 50, 100);
        assert!(!mailbox.is_congested());
        mailbox.drain_into(&mut out, usize::MAX, 100);
        assert_eq!(out.len(), 120, "nothing was dropped");
        mailbox.push(&[b'c'; 200], 100);
        mailbox.kick(StreamErrorCondition::PolicyViolation);
        assert!(!mailbox.is_congested());
    }
}
