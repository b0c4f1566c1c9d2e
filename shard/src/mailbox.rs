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
    /// XEP-0352: the client is inactive; presence and chat states wait in `held`.
    inactive: Cell<bool>,
    /// Held stanzas in arrival order; a newer presence from the same sender
    /// replaces the older one (only the latest matters).
    held: RefCell<Vec<Held>>,
}

/// A stanza held for an inactive client: (presence sender, bytes).
type Held = (Option<Box<str>>, Vec<u8>);

/// Stanzas held for an inactive client before they are sent anyway: bounds the memory
/// a client can make the server hold by staying inactive.
const HELD_STANZAS_MAX: usize = 512;

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
        let congested = queue.len() > limit;
        drop(queue);
        self.congested.set(congested);
        self.wake();
        congested
    }

    /// Queues a stanza the client need not see at once (presence, keyed by its
    /// sender, or a chat state, unkeyed): held while the client is inactive.
    pub fn push_deferrable(&self, sender: Option<&str>, bytes: &[u8], limit: usize) -> bool {
        if !self.inactive.get() {
            return self.push(bytes, limit);
        }
        let mut held = self.held.borrow_mut();
        if let Some(sender) = sender {
            if let Some(slot) = held.iter_mut().find(|(s, _)| s.as_deref() == Some(sender)) {
                slot.1 = bytes.to_vec();
                return false;
            }
        }
        held.push((sender.map(Into::into), bytes.to_vec()));
        if held.len() < HELD_STANZAS_MAX {
            return false;
        }
        drop(held);
        self.release_held(limit)
    }

    /// XEP-0352 `<inactive/>` (true) or `<active/>` (false); becoming active sends
    /// everything held.
    pub fn set_inactive(&self, inactive: bool, limit: usize) {
        self.inactive.set(inactive);
        if !inactive {
            self.release_held(limit);
        }
    }

    fn release_held(&self, limit: usize) -> bool {
        let held = std::mem::take(&mut *self.held.borrow_mut());
        let mut congested = false;
        for (_, bytes) in held {
            congested |= self.push(&bytes, limit);
        }
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
        let congested = queue.len() > limit;
        drop(queue);
        if self.congested.get() && !congested {
            self.congested.set(false);
            self.wake_senders();
        }
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
mod tests {
    use super::*;

    /// While inactive, presence waits (only the latest per sender) and chat states
    /// wait in order; messages pass; becoming active releases what waited.
    #[test]
    fn inactive_clients_get_presence_later() {
        let mailbox = Mailbox::default();
        mailbox.set_inactive(true, 1 << 20);
        assert!(!mailbox.push_deferrable(Some("a@x/1"), b"<p1/>", 1 << 20));
        assert!(!mailbox.push_deferrable(None, b"<typing/>", 1 << 20));
        assert!(!mailbox.push_deferrable(Some("a@x/1"), b"<p2/>", 1 << 20));
        assert!(!mailbox.push(b"<m/>", 1 << 20));
        let mut out = Vec::new();
        mailbox.drain_into(&mut out, usize::MAX, 1 << 20);
        assert_eq!(out, b"<m/>");
        mailbox.set_inactive(false, 1 << 20);
        out.clear();
        mailbox.drain_into(&mut out, usize::MAX, 1 << 20);
        assert_eq!(out, b"<p2/><typing/>");
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
