//! Acknowledged, resumable sessions (XEP-0198 stream management): the session side.
//!
//! Stream management is connection state, like TLS, so it lives with the session's
//! connection, not in a feature module: `mod_stream_management` switches it on,
//! configures it and advertises it; the XML is `starling_wire::sm`'s.
//!
//! ```text
//!  client stanza handled ------------------------------> inbound += 1   (<a h=inbound/>)
//!  stanza written to the client --> copy kept in `unacked`, outbound += 1, <r/> every
//!                                   `ack_every` stanzas
//!  <a h/> from the client -------> the first (h - acked) copies dropped
//!  connection lost, resumable ---> parked: still bound, mail waits in the mailbox,
//!                                  until `<resume previd h/>` hands over a new connection
//!                                  (<resumed/>, copies after h sent again) or the
//!                                  timeout (everything unacknowledged routed again:
//!                                  other resources or offline storage)
//! ```
//! A session that never enables stream management pays one pointer (`State::acks`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use starling_wire::framer::Framer;
use starling_wire::split::next_unit;

use crate::core::Core;
use crate::flow::Congestion;
use crate::io::Io;
use crate::mailbox::Mailbox;

/// `[modules.mod_stream_management]`, with MongooseIM's option names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamManagement {
    /// `buffer_max`: unacknowledged stanzas a session may have; one more closes the
    /// stream with `resource-constraint` (nothing is dropped: they are routed again).
    pub buffer_max: usize,
    /// `ack_freq`: the server asks for an acknowledgement (`<r/>`) after this many
    /// stanzas (at most once per write).
    pub ack_freq: u32,
    /// `resume_timeout`: how long a session whose connection was lost waits for its
    /// client to resume it; zero: sessions are not resumable.
    pub resume_timeout: Duration,
}

/// One session's acknowledgement state (boxed in the session's state once enabled).
pub(crate) struct Acks {
    /// Client stanzas handled since enabling (the `h` we report), modulo 2^32.
    pub inbound: u32,
    /// The last `h` the client reported.
    pub acked: u32,
    /// Copies of the stanzas sent and not yet acknowledged, oldest first.
    pub unacked: VecDeque<Box<[u8]>>,
    /// The resumption id, when the session is resumable.
    pub id: Option<Box<str>>,
    /// How long the session waits for its client to resume it, in seconds (the
    /// `max` of `<enabled/>`).
    pub resume_seconds: u32,
    /// Stanzas sent since the last `<r/>`.
    since_request: u32,
    /// Stanzas written in the same batch before `<enabled/>` are not counted.
    before_enabled: bool,
}

impl Acks {
    pub fn new(id: Option<Box<str>>, resume_seconds: u32) -> Acks {
        Acks {
            inbound: 0,
            acked: 0,
            unacked: VecDeque::new(),
            id,
            resume_seconds,
            since_request: 0,
            before_enabled: true,
        }
    }

    /// Records what is about to be written: a copy of each stanza in `bytes` (whole
    /// elements). Returns whether an `<r/>` is due after it.
    pub fn record(&mut self, bytes: &[u8], ack_freq: u32) -> bool {
        let mut rest = bytes;
        let mut counted = 0u32;
        while let Some((unit, used)) = next_unit(rest) {
            let (element, after) = rest.split_at(used);
            rest = after;
            if self.before_enabled {
                self.before_enabled = !element.starts_with(b"<enabled");
                continue;
            }
            if unit.is_stanza(element) {
                self.unacked.push_back(element.into());
                counted += 1;
            }
        }
        self.since_request = self.since_request.saturating_add(counted);
        if counted > 0 && self.since_request >= ack_freq.max(1) {
            self.since_request = 0;
            return true;
        }
        false
    }

    /// The client reported `h`; `Err` when it acknowledges more than was sent
    /// (XEP-0198 section 4, `handled-count-too-high`).
    pub fn ack(&mut self, h: u32) -> Result<(), ()> {
        let newly = starling_wire::sm::newly_acked(h, self.acked, self.unacked.len()).ok_or(())?;
        self.unacked.drain(..newly);
        if self.unacked.is_empty() {
            // An idle session keeps no buffer.
            self.unacked = VecDeque::new();
        }
        self.acked = h;
        Ok(())
    }

    /// Stanzas sent so far (modulo 2^32).
    pub fn sent(&self) -> u32 {
        self.acked.wrapping_add(self.unacked.len() as u32)
    }
}

/// A resumable session's entry in its core's table (`Core::resumable`): who may
/// resume it, and the slot a resuming connection is put in.
pub(crate) struct Resumable {
    /// The bare JID the session belongs to: only its own account resumes it.
    pub user: Box<str>,
    pub mailbox: Rc<Mailbox>,
    pub taken: RefCell<Option<Box<Resumption>>>,
}

/// A connection that resumes a session: its socket and framer, and the client's `h`.
pub(crate) struct Resumption {
    pub io: Io,
    pub framer: Framer,
    pub h: u32,
    pub listener: u16,
}

/// Hands `resumption` to `user`'s session `previd` on this core; `Err` gives it back
/// when there is no such session (unknown, ended, or another account's).
pub(crate) fn hand_over(
    core: &Core,
    user: &str,
    previd: &str,
    resumption: Box<Resumption>,
) -> Result<(), Box<Resumption>> {
    let entry = core.resumable.borrow().get(previd).cloned();
    let Some(entry) = entry.filter(|entry| &*entry.user == user) else { return Err(resumption) };
    // A newer resumption replaces one not yet taken (its connection is dropped).
    *entry.taken.borrow_mut() = Some(resumption);
    entry.mailbox.interrupt();
    Ok(())
}

/// A new resumption id: 16 random bytes, URL-safe base64.
pub(crate) fn new_id(core: &Core) -> Box<str> {
    use base64::Engine;
    use starling_wire::c2s::Entropy;
    let mut bytes = [0u8; 16];
    core.entropy.borrow_mut().fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes).into()
}

/// Waits, with the session parked, for a connection to resume it (`Some`), or for
/// the end: the timeout, a kick (a new session took its resource), or a mailbox so
/// full that senders would wait for it (`None`).
pub(crate) async fn park(
    core: &Core,
    mailbox: &Mailbox,
    entry: &Resumable,
    timeout: Duration,
) -> Option<Box<Resumption>> {
    let mut timer = glommio::timer::Timer::new(timeout);
    core.count("sm_parked", 1);
    futures_lite::future::poll_fn(|cx| {
        if let Some(taken) = entry.taken.borrow_mut().take() {
            mailbox.resume();
            return Poll::Ready(Some(taken));
        }
        if mailbox.kicked().is_some() || mailbox.is_congested() {
            return Poll::Ready(None);
        }
        if std::pin::Pin::new(&mut timer).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        mailbox.set_waker(cx.waker());
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_are_counted_and_acked() {
        let mut acks = Acks::new(None, 0);
        // A reply written with <enabled/> in the same batch came before it.
        assert!(!acks.record(b"<iq type='result' id='x'/><enabled xmlns='urn:xmpp:sm:3'/>", 1));
        assert_eq!(acks.sent(), 0);
        assert!(acks.record(b"<message id='1'/><a xmlns='urn:xmpp:sm:3' h='0'/><presence/>", 1));
        assert_eq!(acks.sent(), 2);
        assert!(!acks.record(b"<r xmlns='urn:xmpp:sm:3'/>", 1), "nonzas are not counted");
        acks.ack(1).unwrap();
        assert_eq!(acks.unacked.iter().map(|s| &s[..]).collect::<Vec<_>>(), [&b"<presence/>"[..]]);
        assert_eq!(acks.ack(3), Err(()), "more than was sent");
        acks.ack(2).unwrap();
        assert!(acks.unacked.is_empty());
        assert_eq!(acks.unacked.capacity(), 0);
    }

    #[test]
    fn ack_requests_follow_ack_freq() {
        let mut acks = Acks::new(None, 0);
        acks.record(b"<enabled xmlns='urn:xmpp:sm:3'/>", 3);
        assert!(!acks.record(b"<message/>", 3));
        assert!(!acks.record(b"<message/>", 3));
        assert!(acks.record(b"<message/><message/>", 3));
        assert!(!acks.record(b"<message/>", 3));
    }
}
