//! A connection's inbox on its core: stanzas other tasks route to it, and the order
//! to close. Shared (`Rc`) between the connection task and the session table.
//!
//! Pushing appends plaintext bytes and wakes the connection's task, which writes
//! everything queued in one go (natural batching: many stanzas, one send).

use std::cell::{Cell, RefCell};
use std::task::Waker;

use starling_wire::error::StreamErrorCondition;

#[derive(Default)]
pub(crate) struct Mailbox {
    queue: RefCell<Vec<u8>>,
    waker: Cell<Option<Waker>>,
    kick: Cell<Option<StreamErrorCondition>>,
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
    /// Queues `bytes`; returns false (and queues nothing) past `limit` queued bytes,
    /// in which case the connection is told to close: its client is not reading.
    pub fn push(&self, bytes: &[u8], limit: usize) -> bool {
        let mut queue = self.queue.borrow_mut();
        if queue.len() + bytes.len() > limit {
            drop(queue);
            self.kick(StreamErrorCondition::PolicyViolation);
            return false;
        }
        queue.extend_from_slice(bytes);
        drop(queue);
        self.wake();
        true
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
                return true;
            }
        }
        held.push((sender.map(Into::into), bytes.to_vec()));
        if held.len() < HELD_STANZAS_MAX {
            return true;
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
        held.iter().all(|(_, bytes)| self.push(bytes, limit))
    }

    /// Asks the connection to close with `condition` (the first reason wins).
    pub fn kick(&self, condition: StreamErrorCondition) {
        if self.kick.get().is_none() {
            self.kick.set(Some(condition));
        }
        self.wake();
    }

    pub fn kicked(&self) -> Option<StreamErrorCondition> {
        self.kick.get()
    }

    pub fn has_mail(&self) -> bool {
        !self.queue.borrow().is_empty()
    }

    /// Moves everything queued into `out` (the connection's write path).
    pub fn drain_into(&self, out: &mut Vec<u8>) {
        let mut queue = self.queue.borrow_mut();
        if out.is_empty() {
            std::mem::swap(&mut *queue, out);
        } else {
            out.append(&mut queue);
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
        assert!(mailbox.push_deferrable(Some("a@x/1"), b"<p1/>", 1 << 20));
        assert!(mailbox.push_deferrable(None, b"<typing/>", 1 << 20));
        assert!(mailbox.push_deferrable(Some("a@x/1"), b"<p2/>", 1 << 20));
        assert!(mailbox.push(b"<m/>", 1 << 20));
        let mut out = Vec::new();
        mailbox.drain_into(&mut out);
        assert_eq!(out, b"<m/>");
        mailbox.set_inactive(false, 1 << 20);
        out.clear();
        mailbox.drain_into(&mut out);
        assert_eq!(out, b"<p2/><typing/>");
    }
}
