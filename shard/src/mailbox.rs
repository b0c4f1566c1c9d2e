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
}

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
