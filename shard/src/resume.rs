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
//!
//! Resumption on another node of the cluster (the resumption id names no node):
//! ```text
//!  node B (new connection)                     node A (the parked session)
//!  id not on this core --Take{token,h,id}--> every peer (an event to the account's
//!                                            home core); A: found, same account
//!                    <--Handed{state, stanzas}-- the session: acknowledged copies
//!                                            dropped, the rest and its mail packed,
//!                                            module state exported, unbound quietly
//!                                            (no presence: for contacts it goes on)
//!  bound here with that state, <resumed/>, the stanzas sent (counted from h)
//!                    --Received{token}--> A forgets its copy (without it, A routes
//!                                            the copy again after 10 s: to B's new
//!                                            session or offline storage)
//!  peers without it answer Refused; all refused or 3 s: item-not-found
//! ```

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
    /// Since when the client has had `buffer_max` stanzas unacknowledged (mail is
    /// held meanwhile); none while under it.
    pub full_since: Option<std::time::Instant>,
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
            full_since: None,
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

    /// A session resumed here from another node: the client's stanzas handled there
    /// (`inbound`) and its `h`; the stanzas it gets next are counted from there.
    pub fn resumed_from(&mut self, inbound: u32, acked: u32) {
        self.inbound = inbound;
        self.acked = acked;
        self.before_enabled = false;
    }

    /// The client reported `h`; `Err` when it acknowledges more than was sent
    /// (XEP-0198 section 4, `handled-count-too-high`).
    pub fn ack(&mut self, h: u32) -> Result<(), ()> {
        let newly = starling_wire::sm::newly_acked(h, self.acked, self.unacked.len()).ok_or(())?;
        if newly == 0 {
            // The same h again, or one behind what was acknowledged: nothing new (the
            // counter never goes back).
            return Ok(());
        }
        self.unacked.drain(..newly);
        if self.unacked.is_empty() {
            // An idle session keeps no buffer.
            self.unacked = VecDeque::new();
        }
        self.acked = h;
        self.full_since = None;
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
    pub taken: RefCell<Option<Takeover>>,
}

/// Who takes a session over.
pub(crate) enum Takeover {
    /// A connection on this core.
    Local(Box<Resumption>),
    /// A connection on node `node`, waiting under `token`; its client handled `h`.
    Remote { node: u16, token: u64, h: u32 },
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
    // A newer resumption replaces one not yet taken: that connection is told.
    let replaced = entry.taken.borrow_mut().replace(Takeover::Local(resumption));
    if let Some(Takeover::Local(older)) = replaced {
        close_replaced(core, older.io);
    }
    entry.mailbox.interrupt();
    Ok(())
}

/// Closes a connection whose session another connection took over with
/// `conflict` (RFC 6120 section 4.9.3.3), so its client does not reconnect in a loop
/// (found by a breaker: it got a bare EOF).
pub(crate) fn close_replaced(core: &Core, mut io: Io) {
    let mut bytes = Vec::new();
    starling_wire::error::StreamError::with_text(
        starling_wire::error::StreamErrorCondition::Conflict,
        "the session was resumed on another connection",
    )
    .write_closing(&mut bytes);
    io.queue(&bytes);
    crate::contain::spawn(core.rc(), "closing a replaced connection", async move { io.close().await });
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
pub(crate) async fn park(core: &Core, mailbox: &Mailbox, entry: &Resumable, timeout: Duration) -> Option<Takeover> {
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

/// The event name resumption between nodes uses (the runtime's, not a module's).
pub(crate) const RESUME_EVENT: &str = "runtime:resume";

/// How long a node keeps the stanzas of a session it handed to another node, waiting
/// for `Received`; after that it routes them again.
const HANDED_KEPT: Duration = Duration::from_secs(10);

/// How long a resumption waits for the other nodes to answer.
const REMOTE_WAIT: Duration = Duration::from_secs(3);

/// Bytes of stanzas one `Handed` carries (a replication frame is at most 1 MiB);
/// the rest is routed again at once, to the account's sessions or offline storage.
const HANDED_STANZA_BYTES_MAX: usize = 768 * 1024;

/// A session's state handed to the node where its client resumed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Handed {
    /// The node that handed it, and the node it is for.
    pub from: u16,
    pub to: u16,
    pub token: u64,
    pub jid: String,
    pub inbound: u32,
    /// The client's `h`: what it handled of ours.
    pub acked: u32,
    pub resume_seconds: u32,
    pub available: bool,
    pub priority: i8,
    pub flags: u8,
    /// What each module kept for the session (`Module::export_session`).
    pub exports: Vec<(String, Vec<u8>)>,
    /// What the client did not acknowledge, then its mail, in order.
    pub stanzas: Vec<Vec<u8>>,
}

/// What nodes tell each other about resumptions (an event's payload).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Take { from: u16, token: u64, h: u32, previd: String },
    Refused { to: u16, token: u64 },
    Handed(Box<Handed>),
    Received { to: u16, token: u64 },
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let bytes = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        };
        match self {
            Message::Take { from, token, h, previd } => {
                out.push(1);
                out.extend_from_slice(&from.to_be_bytes());
                out.extend_from_slice(&token.to_be_bytes());
                out.extend_from_slice(&h.to_be_bytes());
                bytes(&mut out, previd.as_bytes());
            }
            Message::Refused { to, token } | Message::Received { to, token } => {
                out.push(if matches!(self, Message::Refused { .. }) { 2 } else { 4 });
                out.extend_from_slice(&to.to_be_bytes());
                out.extend_from_slice(&token.to_be_bytes());
            }
            Message::Handed(handed) => {
                out.push(3);
                out.extend_from_slice(&handed.from.to_be_bytes());
                out.extend_from_slice(&handed.to.to_be_bytes());
                out.extend_from_slice(&handed.token.to_be_bytes());
                bytes(&mut out, handed.jid.as_bytes());
                for n in [handed.inbound, handed.acked, handed.resume_seconds] {
                    out.extend_from_slice(&n.to_be_bytes());
                }
                out.extend_from_slice(&[u8::from(handed.available), handed.priority as u8, handed.flags]);
                out.extend_from_slice(&(handed.exports.len() as u32).to_be_bytes());
                for (module, state) in &handed.exports {
                    bytes(&mut out, module.as_bytes());
                    bytes(&mut out, state);
                }
                out.extend_from_slice(&(handed.stanzas.len() as u32).to_be_bytes());
                for stanza in &handed.stanzas {
                    bytes(&mut out, stanza);
                }
            }
        }
        out
    }

    /// Parses a payload from a peer; `None` for anything malformed.
    pub fn decode(payload: &[u8]) -> Option<Message> {
        let mut r = Reader(payload);
        let message = match r.u8()? {
            1 => Message::Take { from: r.u16()?, token: r.u64()?, h: r.u32()?, previd: r.text()? },
            2 => Message::Refused { to: r.u16()?, token: r.u64()? },
            4 => Message::Received { to: r.u16()?, token: r.u64()? },
            3 => {
                let mut handed = Handed {
                    from: r.u16()?,
                    to: r.u16()?,
                    token: r.u64()?,
                    jid: r.text()?,
                    inbound: r.u32()?,
                    acked: r.u32()?,
                    resume_seconds: r.u32()?,
                    available: r.u8()? != 0,
                    priority: r.u8()? as i8,
                    flags: r.u8()?,
                    ..Handed::default()
                };
                for _ in 0..r.u32()? {
                    handed.exports.push((r.text()?, r.bytes()?.to_vec()));
                }
                for _ in 0..r.u32()? {
                    handed.stanzas.push(r.bytes()?.to_vec());
                }
                Message::Handed(Box::new(handed))
            }
            _ => return None,
        };
        r.0.is_empty().then_some(message)
    }
}

/// Reads big-endian fields off the front of a payload; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        let (field, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(field)
    }
    fn text(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(str::to_owned)
    }
}

/// A resumption waiting for the other nodes (`Core::handovers`).
pub(crate) struct Pending {
    /// Nodes that have not answered yet.
    remaining: usize,
    answer: Option<futures_channel::oneshot::Sender<Option<Box<Handed>>>>,
}

/// Sends `message` about `account` to node `node` (`None`: every peer).
fn send(core: &Core, node: Option<u16>, account: &str, message: &Message) -> bool {
    let Some(cluster) = &core.cluster else { return false };
    match node {
        Some(node) => cluster.event_to(node, RESUME_EVENT, account, message.encode()),
        None => {
            cluster.broadcast_event(RESUME_EVENT, account, message.encode());
            true
        }
    }
}

/// Asks the other nodes for `user`'s session `previd`; its state if one had it.
pub(crate) async fn take_from_peers(core: &Core, user: &str, previd: &str, h: u32) -> Option<Box<Handed>> {
    let cluster = core.cluster.as_ref()?;
    let peers = cluster.reachable_peers();
    if peers == 0 {
        return None;
    }
    let token = {
        let mut bytes = [0u8; 8];
        use starling_wire::c2s::Entropy;
        core.entropy.borrow_mut().fill(&mut bytes);
        u64::from_be_bytes(bytes)
    };
    let (answer, answered) = futures_channel::oneshot::channel();
    core.handovers.borrow_mut().insert(token, Pending { remaining: peers, answer: Some(answer) });
    let take = Message::Take { from: cluster.node_num(), token, h, previd: previd.to_owned() };
    send(core, None, user, &take);
    let timeout = async {
        glommio::timer::sleep(REMOTE_WAIT).await;
        None
    };
    let handed = futures_lite::future::or(async { answered.await.ok().flatten() }, timeout).await;
    core.handovers.borrow_mut().remove(&token);
    handed
}

/// A resumption event from another node, on the account's home core.
pub(crate) fn on_event(core: &Core, account: &str, payload: &[u8]) {
    let Some(me) = core.cluster.as_ref().map(|c| c.node_num()) else { return };
    let Some(message) = Message::decode(payload) else {
        log::warn!("cluster: a malformed resumption event for {account}");
        return;
    };
    match message {
        Message::Take { from, token, h, previd } => {
            let entry = core.resumable.borrow().get(previd.as_str()).cloned();
            match entry.filter(|entry| &*entry.user == account) {
                Some(entry) => {
                    *entry.taken.borrow_mut() = Some(Takeover::Remote { node: from, token, h });
                    entry.mailbox.interrupt();
                }
                None => {
                    send(core, Some(from), account, &Message::Refused { to: from, token });
                }
            }
        }
        Message::Refused { to, token } if to == me => {
            let mut handovers = core.handovers.borrow_mut();
            if let Some(pending) = handovers.get_mut(&token) {
                pending.remaining = pending.remaining.saturating_sub(1);
                if pending.remaining == 0 {
                    if let Some(answer) = pending.answer.take() {
                        let _ = answer.send(None);
                    }
                }
            }
        }
        Message::Handed(handed) if handed.to == me => {
            send(core, Some(handed.from), account, &Message::Received { to: handed.from, token: handed.token });
            let pending = core.handovers.borrow_mut().get_mut(&handed.token).and_then(|p| p.answer.take());
            let undelivered = match pending {
                Some(answer) => match answer.send(Some(handed)) {
                    Ok(()) => return,
                    Err(handed) => handed,
                },
                None => Some(handed),
            };
            // The resuming connection gave up meanwhile: its stanzas go on as if
            // the session had ended here.
            if let Some(handed) = undelivered {
                if let Ok(jid) = handed.jid.parse::<starling_wire::jid::FullJid>() {
                    crate::router::reroute_undelivered(core, &jid, handed.stanzas);
                }
            }
        }
        Message::Received { to, token } if to == me => {
            core.handed_out.borrow_mut().remove(&token);
        }
        _ => {}
    }
}

/// Hands `handed` (without its stanzas yet) and `stanzas` to node `to`: what does not
/// fit one frame, or everything if the link is down, is routed again here. The
/// stanzas sent are kept until `Received`, or routed again after [`HANDED_KEPT`].
pub(crate) fn hand_to(core: &Rc<Core>, account: &str, mut handed: Handed, stanzas: Vec<Vec<u8>>) {
    let jid: Option<starling_wire::jid::FullJid> = handed.jid.parse().ok();
    let mut bytes = 0usize;
    let mut overflow = Vec::new();
    for stanza in stanzas {
        bytes += stanza.len() + 4;
        if bytes <= HANDED_STANZA_BYTES_MAX && overflow.is_empty() {
            handed.stanzas.push(stanza);
        } else {
            overflow.push(stanza);
        }
    }
    let token = handed.token;
    let to = handed.to;
    let kept = handed.stanzas.clone();
    let sent = send(core, Some(to), account, &Message::Handed(Box::new(handed)));
    let Some(jid) = jid else { return };
    if !sent {
        log::warn!("c2s: the link to node {to} is down: {jid}'s stanzas are routed again here");
        crate::router::reroute_undelivered(core, &jid, kept);
        crate::router::reroute_undelivered(core, &jid, overflow);
        return;
    }
    crate::router::reroute_undelivered(core, &jid, overflow);
    if kept.is_empty() {
        return;
    }
    core.handed_out.borrow_mut().insert(token, kept);
    let watch = core.clone();
    crate::contain::spawn(core.clone(), "a handed-over session's stanzas", async move {
        glommio::timer::sleep(HANDED_KEPT).await;
        let unconfirmed = watch.handed_out.borrow_mut().remove(&token);
        if let Some(stanzas) = unconfirmed {
            log::warn!("c2s: node {to} did not confirm {jid}'s stanzas: routed again");
            crate::router::reroute_undelivered(&watch, &jid, stanzas);
        }
    });
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
    fn messages_round_trip() {
        let handed = Handed {
            from: 1,
            to: 2,
            token: 7,
            jid: "a@localhost/r".into(),
            inbound: 3,
            acked: u32::MAX,
            resume_seconds: 600,
            available: true,
            priority: -5,
            flags: 3,
            exports: vec![("mod_presence".into(), b"\0\0\0\0".to_vec())],
            stanzas: vec![b"<message/>".to_vec(), Vec::new()],
        };
        for message in [
            Message::Take { from: 1, token: 9, h: 4, previd: "abc".into() },
            Message::Refused { to: 1, token: 9 },
            Message::Received { to: 2, token: 9 },
            Message::Handed(Box::new(handed)),
        ] {
            let bytes = message.encode();
            assert_eq!(Message::decode(&bytes), Some(message));
            assert_eq!(Message::decode(&bytes[..bytes.len() - 1]), None, "truncated");
        }
    }

    proptest::proptest! {
        /// A peer's payload, whatever it is, parses or not, but never panics.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = Message::decode(&bytes);
        }
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
