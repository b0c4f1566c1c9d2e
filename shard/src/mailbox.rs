//! A connection's inbox on its core: stanzas other tasks route to it, and the order
//! to close. Shared (`Rc`) between the connection task and the session table.
//!
//! Pushing appends plaintext bytes and wakes the connection's task, which writes
//! everything queued in one go (natural batching: many stanzas, one send). A mailbox
//! never refuses: past its limit it is congested, and whoever pushed waits until the
//! connection drains it (`flow.rs`).
//!
//! It knows where each queued stanza ends, so when the session ends the stanzas its
//! connection never took go back to routing (`Mailbox::close`) instead of vanishing.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
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
    /// Where each queued stanza ends (a `pushed` offset) and whether it may go back
    /// to routing if the session ends first; empty (no allocation) when idle.
    ends: RefCell<VecDeque<(u64, bool)>>,
    /// The session ended: nothing more is queued.
    closed: Cell<bool>,
    /// Another connection took this session over (stream resumption): the current
    /// connection stops at its next wake (`resume.rs`).
    interrupted: Cell<bool>,
    /// The connection takes no mail for now (its client has the most unacknowledged
    /// stanzas stream management allows): mail waits here, where senders see it.
    held: Cell<bool>,
}

/// Who waits for output to reach the socket.
#[derive(Default)]
struct Written {
    bytes: u64,
    waiters: Vec<(u64, Waker)>,
}

impl Mailbox {
    /// Queues `bytes`, one whole stanza; `reroute`: it goes back to routing if the
    /// session ends before its connection takes it (see [`Mailbox::close`]). Nothing
    /// is refused until the session ended: past `limit` queued bytes the mailbox is
    /// congested and the pusher should wait for it (see `flow.rs`).
    pub fn push(&self, bytes: &[u8], limit: usize, reroute: bool) -> Pushed {
        if self.closed.get() {
            return Pushed::Closed;
        }
        let mut queue = self.queue.borrow_mut();
        queue.extend(bytes);
        self.pushed.set(self.pushed.get() + bytes.len() as u64);
        self.ends.borrow_mut().push_back((self.pushed.get(), reroute));
        // A kicked session writes no more, and its senders must not wait for it.
        let congested = queue.len() > limit && self.kick.get().is_none();
        drop(queue);
        self.congested.set(congested);
        self.wake();
        if congested {
            Pushed::Congested
        } else {
            Pushed::Queued
        }
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
    /// mailbox go on. Returns the stanzas pushed with `reroute` that the connection
    /// never took, in order, for routing again (what it took went to the socket's
    /// buffers: lost with the connection unless stream management says otherwise).
    pub fn close(&self) -> Vec<Vec<u8>> {
        self.close_keeping(false)
    }

    /// [`Mailbox::close`], returning every stanza the connection never took, those
    /// pushed without `reroute` too: for a session that moves to another node.
    pub fn close_all(&self) -> Vec<Vec<u8>> {
        self.close_keeping(true)
    }

    fn close_keeping(&self, all: bool) -> Vec<Vec<u8>> {
        self.kick(StreamErrorCondition::Reset);
        self.closed.set(true);
        let queue = std::mem::take(&mut *self.queue.borrow_mut());
        let ends = std::mem::take(&mut *self.ends.borrow_mut());
        if let Some(written) = self.written.borrow_mut().as_mut() {
            for (_, waker) in written.waiters.drain(..) {
                waker.wake();
            }
        }
        let drained = self.drained.get();
        let bytes = queue.as_slice();
        // Drains take whole stanzas: the queue starts where a stanza starts.
        let mut start = drained;
        let mut undelivered = Vec::new();
        for (end, reroute) in ends {
            if reroute || all {
                let range = (usize::try_from(start - drained).ok(), usize::try_from(end - drained).ok());
                if let (Some(from), Some(to)) = range {
                    if let Some(stanza) = bytes.get(from..to) {
                        undelivered.push(stanza.to_vec());
                    }
                }
            }
            start = end;
        }
        undelivered
    }

    pub fn kicked(&self) -> Option<StreamErrorCondition> {
        self.kick.get()
    }

    /// Tells the session's task that another connection takes it over (it finds the
    /// connection in its resumption slot, `resume.rs`).
    pub fn interrupt(&self) {
        self.interrupted.set(true);
        self.wake();
    }

    /// Whether [`Mailbox::interrupt`] was called since the last [`Mailbox::resume`].
    pub fn interrupted(&self) -> bool {
        self.interrupted.get()
    }

    /// The takeover was handled.
    pub fn resume(&self) {
        self.interrupted.set(false);
    }

    /// Holds mail back from the connection (`true`) or lets it go (`false`).
    pub fn hold(&self, held: bool) {
        self.held.set(held);
    }

    /// Whether mail waits for the connection to take it (none while held).
    pub fn has_mail(&self) -> bool {
        !self.held.get() && !self.queue.borrow().is_empty()
    }

    /// Moves whole stanzas into `out` (the connection's write path): about `max`
    /// bytes, up to the end of the stanza that `max` falls in, so no stanza is ever cut
    /// between the write path and the mailbox (a stream error written after half a
    /// stanza was malformed XML). Once no more than `limit` wait, senders waiting for
    /// this mailbox go on.
    pub fn drain_into(&self, out: &mut Vec<u8>, max: usize, limit: usize) {
        let mut queue = self.queue.borrow_mut();
        let drained = self.drained.get();
        let target = drained + queue.len().min(max) as u64;
        let whole = self.ends.borrow().iter().map(|&(end, _)| end).find(|&end| end >= target);
        let n = whole.map_or(queue.len(), |end| usize::try_from(end - drained).unwrap_or(usize::MAX).min(queue.len()));
        out.extend_from_slice(queue.front(n));
        queue.consume(n);
        self.drained.set(self.drained.get() + n as u64);
        let congested = queue.len() > limit;
        drop(queue);
        let mut ends = self.ends.borrow_mut();
        while let Some(&(end, _)) = ends.front() {
            if end > self.drained.get() {
                break;
            }
            ends.pop_front();
        }
        if ends.is_empty() {
            // An idle session keeps no index (see `budget.rs`).
            *ends = VecDeque::new();
        }
        drop(ends);
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

/// What [`Mailbox::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Queued, and more than the limit waits: the pusher should wait (`flow.rs`).
    Congested,
    /// Not queued: the session ended.
    Closed,
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
        for _ in 0..10 {
            assert_eq!(mailbox.push(&[b'a'; 10], 100, true), Pushed::Queued);
        }
        assert_eq!(mailbox.push(&[b'b'; 10], 100, true), Pushed::Congested);
        assert_eq!(mailbox.push(&[b'b'; 10], 100, true), Pushed::Congested);
        assert!(mailbox.is_congested());
        let mut out = Vec::new();
        mailbox.drain_into(&mut out, 10, 100);
        assert!(mailbox.is_congested(), "110 bytes still wait");
        mailbox.drain_into(&mut out, 50, 100);
        assert!(!mailbox.is_congested());
        mailbox.drain_into(&mut out, usize::MAX, 100);
        assert_eq!(out.len(), 120, "nothing was dropped");
        mailbox.push(&[b'c'; 200], 100, true);
        mailbox.kick(StreamErrorCondition::PolicyViolation);
        assert!(!mailbox.is_congested());
    }

    /// Regression (a breaker's run: a recipient that stopped reading was kicked and
    /// 88 of 100 queued 60 KB messages vanished): closing hands back every stanza the
    /// connection never took, pushed for rerouting, in order; not the ones pushed
    /// without rerouting; draining never cuts a stanza; a kicked session
    /// still queues until it is closed, and a closed one queues nothing.
    #[test]
    fn closing_hands_back_what_was_never_written() {
        let mailbox = Mailbox::default();
        mailbox.push(b"<message id='1'/>", 1 << 20, true);
        mailbox.push(b"<message id='2'/>", 1 << 20, true);
        mailbox.push(b"<message id='raw'/>", 1 << 20, false);
        let mut out = Vec::new();
        mailbox.drain_into(&mut out, 20, 1 << 20); // 1, and 2 whole: never cut
        assert_eq!(out, b"<message id='1'/><message id='2'/>".to_vec());
        mailbox.kick(StreamErrorCondition::ConnectionTimeout);
        assert_eq!(mailbox.push(b"<message id='3'/>", 1 << 20, true), Pushed::Queued);
        let undelivered = mailbox.close();
        assert_eq!(undelivered, vec![b"<message id='3'/>".to_vec()]);
        assert_eq!(mailbox.push(b"<message id='4'/>", 1 << 20, true), Pushed::Closed);

        let mailbox = Mailbox::default();
        for i in 0..5 {
            mailbox.push(format!("<message id='{i}'/>").as_bytes(), 1 << 20, true);
        }
        mailbox.drain_into(&mut Vec::new(), 17, 1 << 20); // exactly the first
        let undelivered = mailbox.close();
        assert_eq!(undelivered.len(), 4);
        assert_eq!(undelivered[0], b"<message id='1'/>".to_vec());
        assert_eq!(undelivered[3], b"<message id='4'/>".to_vec());
    }

    /// Draining everything leaves no index behind (idle memory).
    #[test]
    fn a_drained_mailbox_keeps_no_index() {
        let mailbox = Mailbox::default();
        mailbox.push(b"<message/>", 1 << 20, true);
        mailbox.drain_into(&mut Vec::new(), usize::MAX, 1 << 20);
        assert_eq!(mailbox.ends.borrow().capacity(), 0);
        assert!(mailbox.close().is_empty());
    }
}
