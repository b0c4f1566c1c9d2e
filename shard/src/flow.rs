//! Backpressure: a full queue slows whoever fills it; nothing is dropped.
//!
//! ```text
//!   session A handles a stanza --push--> queue over its mark (mailbox, outbox, link,
//!        ^                                 storage writer) --core.note_congestion(queue)
//!        |                                              |
//!        +-- stops reading its socket until every noted queue is below its mark
//! ```
//! Everything a core does for one stanza is synchronous, so a queue that crosses its
//! mark while a session handles a stanza was filled by that session: the session takes
//! the noted queues ([`crate::Core`]'s `take_congestion`) and reads nothing more from
//! its client until they drain. Tasks that move stanzas between cores or nodes do the
//! same with their input channel. The client whose queue is full is disconnected only
//! if it stops reading altogether (`send_timeout`), never because it is slower than
//! the sender.

use std::cell::{Cell, RefCell};
use std::task::Waker;

/// A queue a sender may have to wait for.
pub trait Congestion {
    /// Over its mark: senders that filled it wait.
    fn is_congested(&self) -> bool;
    /// Wakes `waker` once the queue is no longer congested (or is gone).
    fn register(&self, waker: &Waker);
}

/// A congestion flag with its waiters, for queues that are not mailboxes.
#[derive(Default)]
pub struct Valve {
    congested: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Valve {
    /// Marks the queue congested or not; clearing wakes every waiter.
    pub fn set(&self, congested: bool) {
        self.congested.set(congested);
        if !congested {
            self.wake_all();
        }
    }

    pub fn wake_all(&self) {
        for waker in std::mem::take(&mut *self.waiters.borrow_mut()) {
            waker.wake();
        }
    }
}

impl Congestion for Valve {
    fn is_congested(&self) -> bool {
        self.congested.get()
    }

    fn register(&self, waker: &Waker) {
        let mut waiters = self.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }
}

/// Waits until every queue in `congested` is below its mark.
pub async fn drained(congested: Vec<std::rc::Rc<dyn Congestion>>) {
    let mut congested = congested;
    futures_lite::future::poll_fn(|cx| {
        congested.retain(|c| c.is_congested());
        match congested.first() {
            None => std::task::Poll::Ready(()),
            Some(c) => {
                c.register(cx.waker());
                std::task::Poll::Pending
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::rc::Rc;

    /// A waiter on a congested valve finishes once the valve clears.
    #[test]
    fn waiters_wake_when_the_valve_clears() {
        let valve = Rc::new(Valve::default());
        valve.set(true);
        let mut wait = Box::pin(drained(vec![valve.clone() as Rc<dyn Congestion>]));
        let waker = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
            std::task::Poll::Ready(cx.waker().clone())
        }));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        valve.set(false);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }
}
