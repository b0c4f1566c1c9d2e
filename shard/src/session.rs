//! A bound session on its home core: reads stanzas from its client, stamps and routes
//! them (or lets the server answer), and writes what others route to it.
//!
//! Bad input from this client closes this client's stream with the RFC 6120 error and
//! touches nothing else.

use std::rc::Rc;

use starling_wire::error::{StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition};
use starling_wire::framer::{Frame, Framer};
use starling_wire::jid::{FullJid, Jid, JidRef};
use starling_wire::stanza::{IqType, Stanza, StanzaKind, StanzaParseError};

use crate::core::Core;
use crate::flow::Congestion;
use crate::im::{Outcome, Pending};
use crate::io::{Io, Wake, WIRE_BYTES_HIGH};
use crate::limits::READS_PER_WAKEUP_MAX;
use crate::mailbox::Mailbox;
use crate::sessions::SessionId;

/// How a session ended.
enum End {
    /// The client closed its stream; we close ours.
    ClientClosed,
    /// The socket closed or failed.
    Gone,
    /// We close the stream with this error.
    Error(StreamError),
}

/// The per-session state the stanza handlers use.
pub(crate) struct State {
    pub jid: FullJid,
    pub id: SessionId,
    /// Replies for this client produced while handling its stanzas.
    pub out: Vec<u8>,
    /// Full or bare JIDs this session sent directed available presence to
    /// (RFC 6121 section 4.6), told when it goes unavailable.
    pub directed: Vec<Box<str>>,
}

/// Serves a bound session until it ends. Written as a plain function returning an
/// `async move` block so the arguments are stored once in the task (an `async fn`
/// keeps its arguments and their moved-to locals side by side), which keeps an idle
/// session small (see `budget.rs`).
pub(crate) fn run(
    core: Rc<Core>,
    io: Io,
    framer: Framer,
    jid: FullJid,
    id: SessionId,
    mailbox: Rc<Mailbox>,
) -> impl std::future::Future<Output = ()> {
    let state = State { jid, id, out: Vec::new(), directed: Vec::new() };
    let mut task = Task { core, io, framer, state, mailbox, ended: false };
    async move { task.run().await }
}

/// What a session task owns. Dropping it (normally, or while a panic unwinds the
/// task) leaves nothing behind: the session is unbound, its senders released, and
/// the connection unregistered.
struct Task {
    core: Rc<Core>,
    io: Io,
    framer: Framer,
    state: State,
    mailbox: Rc<Mailbox>,
    /// The normal end ran (`presence::session_ended`).
    ended: bool,
}

impl Task {
    async fn run(&mut self) {
        // The roster and block list, for presence and blocking decisions; a failure
        // here is retried by the first request that needs them.
        // Boxed: the loading future must not make every idle session's task bigger.
        if let Err(error) = Box::pin(crate::account::load(&self.core, &self.state.jid.to_bare())).await {
            log::warn!("c2s: cannot load the account of {}: {error}", self.state.jid);
        }
        let end = serve(&self.core, &mut self.io, &mut self.framer, &mut self.state, &self.mailbox).await;
        self.mailbox.close();
        crate::presence::session_ended(&self.core, &mut self.state);
        self.ended = true;
        match end {
            End::Gone => return,
            End::ClientClosed => self.io.queue(b"</stream:stream>"),
            End::Error(error) => {
                log::debug!("c2s: closing {} with {:?}", self.state.jid, error.condition);
                let mut bytes = Vec::new();
                error.write_closing(&mut bytes);
                self.io.queue(&bytes);
            }
        }
        self.io.close().await;
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.mailbox.close();
        if !self.ended {
            let (core, state) = (&self.core, &mut self.state);
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::presence::session_ended(core, state);
            }));
            if ended.is_err() {
                // Whatever else failed, the session must not stay bound.
                if let Ok(mut sessions) = core.sessions.try_borrow_mut() {
                    sessions.unbind(&state.jid, state.id);
                }
                if let Some(cluster) = &core.cluster {
                    cluster.publish(state.jid.as_str(), None);
                }
            }
        }
        self.core.unregister_live(self.state.id.0);
    }
}

async fn serve(core: &Core, io: &mut Io, framer: &mut Framer, state: &mut State, mailbox: &Mailbox) -> End {
    // Locals here live in every idle session's task: kept few and small (`budget.rs`).
    let mut reads: u8 = 0;
    // Queues this session filled past their mark: it reads nothing until they drain.
    let mut paused: Vec<Rc<dyn Congestion>> = Vec::new();
    loop {
        if !state.out.is_empty() {
            io.queue(&state.out);
            state.out.clear();
        }
        let limit = core.limits().queued_bytes_per_connection_max;
        let handled = match io.wait(core, mailbox, None, limit, &mut paused).await {
            Wake::Read(n) => {
                reads = reads.saturating_add(1);
                core.take_congestion();
                pump_read(core, io, framer, state, n)
            }
            // Input stashed when this session had to wait is handled now.
            Wake::Resumed => pump(core, framer, state, &[]),
            Wake::Mail => {
                if let Some(condition) = mailbox.kicked() {
                    return End::Error(StreamError::new(condition));
                }
                let mut mail = Vec::new();
                mailbox.drain_into(&mut mail, WIRE_BYTES_HIGH, core.limits().queued_bytes_per_connection_max);
                io.queue(&mail);
                continue;
            }
            Wake::Closed => return End::Gone,
            // RFC 6120 section 4.9.3.4: the client took nothing for `send_timeout`.
            Wake::Stalled => {
                return End::Error(StreamError::with_text(StreamErrorCondition::ConnectionTimeout, "not reading"))
            }
            Wake::Timeout => continue,
        };
        match handled {
            Ok(Next::Read | Next::Congested) => {}
            // Boxed: the idle session's task must not carry room for this (`budget.rs`).
            Ok(Next::Wait(work)) => {
                if let Err(end) = Box::pin(finish(core, io, framer, state, work)).await {
                    return end;
                }
            }
            Err(end) => return end,
        }
        paused.extend(core.take_congestion());
        if usize::from(reads) >= READS_PER_WAKEUP_MAX {
            reads = 0;
            glommio::yield_if_needed().await;
        }
    }
}

/// Completes what handling input started: a stanza that waits for the store is
/// answered before the next one is read, so this client's stanzas are handled in
/// order; then the rest of the input goes on until more is needed or a queue this
/// session filled is over its mark.
async fn finish(core: &Core, io: &mut Io, framer: &mut Framer, state: &mut State, work: Pending) -> Result<(), End> {
    let mut handled = Next::Wait(work);
    while let Next::Wait(work) = handled {
        if !state.out.is_empty() {
            io.queue(&state.out);
            state.out.clear();
        }
        let Ok(reply) = crate::contain::wait(core, "a request waiting for storage", work).await else {
            return Err(internal_error());
        };
        state.out.extend_from_slice(&reply);
        handled = pump(core, framer, state, &[])?;
    }
    Ok(())
}

/// What handling input came to.
pub(crate) enum Next {
    /// All input handled; read more.
    Read,
    /// A stanza waits for the store (the rest of the input is stashed).
    Wait(Pending),
    /// A queue this session filled is over its mark (the rest is stashed).
    Congested,
}

type Handled = Result<Next, End>;

fn pump_read(core: &Core, io: &mut Io, framer: &mut Framer, state: &mut State, n: usize) -> Handled {
    let read = core.read_buffer.borrow();
    if io.tls().is_none() {
        return pump(core, framer, state, &read[..n]);
    }
    let mut plain = core.plain_buffer.borrow_mut();
    plain.clear();
    if io.decrypt(&read[..n], &mut plain).is_err() {
        return Err(End::Gone);
    }
    drop(read);
    pump(core, framer, state, &plain)
}

/// Frames and handles `input` (after anything stashed) until more input is needed, a
/// stanza waits for the store, or a queue is congested (then the rest is stashed; call
/// again with no input).
fn pump(core: &Core, framer: &mut Framer, state: &mut State, input: &[u8]) -> Handled {
    let mut input = input;
    loop {
        match framer.next(&mut input) {
            Ok(Some(Frame::Element(bytes))) => {
                let handled = crate::contain::call(core, &|| crate::contain::describe(bytes), || {
                    handle_element(core, state, bytes)
                });
                let Ok(handled) = handled else { return Err(internal_error()) };
                if let Some(pending) = handled.map_err(End::Error)? {
                    framer.stash(input);
                    return Ok(Next::Wait(pending));
                }
                if core.is_congested() {
                    framer.stash(input);
                    return Ok(Next::Congested);
                }
            }
            Ok(Some(Frame::StreamClose)) => return Err(End::ClientClosed),
            Ok(Some(Frame::StreamHeader(_))) => {
                return Err(End::Error(StreamError::new(StreamErrorCondition::InternalServerError)))
            }
            Ok(None) => return Ok(Next::Read),
            Err(error) => return Err(End::Error(error.into())),
        }
    }
}

/// A bug of ours ended this stream (RFC 6120 section 4.9.3.8).
fn internal_error() -> End {
    End::Error(StreamError::new(StreamErrorCondition::InternalServerError))
}

/// Handles one top-level element from the client; `Some` when it waits for the store.
pub(crate) fn handle_element(core: &Core, state: &mut State, bytes: &[u8]) -> Result<Option<Pending>, StreamError> {
    #[cfg(feature = "fault-injection")]
    crate::contain::inject(core, bytes);
    if let Some(inactive) = client_state(bytes) {
        let limit = core.limits().queued_bytes_per_connection_max;
        let mailbox = core.sessions.borrow().session(state.jid.as_str()).map(|s| s.mailbox.clone());
        if let Some(mailbox) = mailbox {
            mailbox.set_inactive(inactive, limit);
        }
        return Ok(None);
    }
    let stanza = match Stanza::parse(bytes) {
        Ok(stanza) => stanza,
        Err(StanzaParseError::NotAStanza) => return Err(StreamError::new(StreamErrorCondition::UnsupportedStanzaType)),
        Err(StanzaParseError::Malformed) => return Err(StreamError::new(StreamErrorCondition::NotWellFormed)),
    };
    check_from(&stanza, &state.jid)?;
    let to = match stanza.to.map(|to| to.value().ok_or(()).and_then(|text| JidRef::parse(text).map_err(|_| ()))) {
        None => None,
        Some(Ok(to)) => Some(to),
        Some(Err(())) => {
            reply_here(state, &stanza, StanzaErrorCondition::JidMalformed);
            return Ok(None);
        }
    };
    // The core's stamping buffer: routing copies out of it, so it is free again after.
    let mut stamped = core.stamp_buffer.take();
    stamped.clear();
    stanza.write_stamped(state.jid.as_str(), &mut stamped);
    let pending = route_stamped(core, state, &stanza, to, &stamped);
    core.stamp_buffer.replace(stamped);
    Ok(pending)
}

/// XEP-0352 `<active/>`/`<inactive/>` nonzas: `Some(inactive)`.
fn client_state(bytes: &[u8]) -> Option<bool> {
    let inactive = if bytes.starts_with(b"<inactive") {
        true
    } else if bytes.starts_with(b"<active") {
        false
    } else {
        return None;
    };
    let namespace = starling_wire::xml::attribute(bytes, b"xmlns")?.value()?;
    (namespace == "urn:xmpp:csi:0").then_some(inactive)
}

fn route_stamped(
    core: &Core,
    state: &mut State,
    stanza: &Stanza<'_>,
    to: Option<JidRef<'_>>,
    stamped: &[u8],
) -> Option<Pending> {
    let own = to.as_ref().is_none_or(|to| !to.is_full() && to.bare_str() == state.jid.bare_str());
    let to_server = to.as_ref().is_none_or(|to| to.local().is_none() && !to.is_full());
    if stanza.kind == StanzaKind::Iq
        && to_server
        && stanza.iq_type().is_some_and(|t| matches!(t, IqType::Result | IqType::Error))
    {
        // The answer to a capability query we sent this client (XEP-0115).
        if crate::pep::caps_result(core, state, stanza) {
            send_last_items(core, state);
        }
        return None;
    }
    let outcome = match stanza.kind {
        StanzaKind::Presence => crate::presence::outbound(core, state, stanza, to.as_ref(), stamped),
        StanzaKind::Iq if own => crate::im::from_client(core, state, stanza),
        _ => Outcome::NotMine,
    };
    match outcome {
        Outcome::Done => return None,
        Outcome::Wait(pending) => return Some(pending),
        Outcome::NotMine => {}
    }
    let Some(to) = to else {
        if stanza.kind == StanzaKind::Iq {
            crate::iq::answer_for_server(core, stanza, state.jid.as_str(), None, &mut state.out);
        }
        return None;
    };
    if !core.shared.settings.hosts.iter().any(|host| host == to.domain()) {
        // No server-to-server connections: other domains are unreachable.
        reply_here(state, stanza, StanzaErrorCondition::RemoteServerNotFound);
        return None;
    }
    let server = to.local().is_none() && !to.is_full();
    match stanza.kind {
        StanzaKind::Iq if server => {
            crate::iq::answer_for_server(core, stanza, state.jid.as_str(), Some(to.as_str()), &mut state.out)
        }
        _ if server => {}
        StanzaKind::Message => send_message(core, state, stanza, &to, stamped),
        _ => crate::router::route(core, to.bare_str(), stamped),
    }
    None
}

/// Once a session's notify list is known: the last PEP items it wants (XEP-0163).
pub(crate) fn send_last_items(core: &Core, state: &State) {
    let notify = core.sessions.borrow().session(state.jid.as_str()).and_then(|s| s.notify.clone());
    let Some(notify) = notify.filter(|n| !n.is_empty()) else { return };
    let sources = crate::account::cached(core, state.jid.bare_str())
        .map(|account| account.borrow().roster.presence_sources().map(str::to_owned).collect())
        .unwrap_or_default();
    crate::pep::send_last_items(core, state.jid.as_str(), &state.jid.to_bare(), sources, notify);
}

/// A message from the client: refused if the user blocks the recipient (XEP-0191
/// section 3.6), else copied to the user's other resources (XEP-0280), archived in
/// the user's archive (XEP-0313) and routed.
fn send_message(core: &Core, state: &mut State, stanza: &Stanza<'_>, to: &JidRef<'_>, stamped: &[u8]) {
    let own_bare = state.jid.bare_str();
    if crate::account::blocks_sender(core, own_bare, to.as_str()) {
        let blocked = StanzaError::with_text(StanzaErrorCondition::NotAcceptable, "you have blocked this contact");
        let from = to.as_str().to_owned();
        stanza.write_error_reply(&from, state.jid.as_str(), &blocked, &mut state.out);
        return;
    }
    let Ok(message) = Stanza::parse(stamped) else { return };
    if crate::carbons::eligible(&message) {
        crate::carbons::sent(core, state.jid.as_str(), stamped);
    }
    if to.bare_str() != own_bare {
        crate::archive::archive(core, &message, own_bare, to.bare_str());
    }
    crate::router::route(core, to.bare_str(), stamped);
}

/// RFC 6120 section 8.1.2.1: a client's `from`, if present, must be its own full or
/// bare JID. Anything else is a forgery, and the stream is closed with `invalid-from`.
fn check_from(stanza: &Stanza<'_>, jid: &FullJid) -> Result<(), StreamError> {
    let Some(from) = stanza.from else { return Ok(()) };
    let own = from.value().and_then(|text| Jid::parse(&text).ok()).is_some_and(|from| match from {
        Jid::Full(full) => full == *jid,
        Jid::Bare(bare) => bare.as_str() == jid.bare_str(),
    });
    if own {
        Ok(())
    } else {
        Err(StreamError::with_text(StreamErrorCondition::InvalidFrom, "'from' is not this session's address"))
    }
}

/// Answers the client's stanza with an error from the server, on this stream.
pub(crate) fn reply_here(state: &mut State, stanza: &Stanza<'_>, condition: StanzaErrorCondition) {
    if stanza.is_error() {
        return;
    }
    let from = stanza.to.and_then(|to| to.value()).map(|to| to.into_owned()).unwrap_or_default();
    stanza.write_error_reply(&from, state.jid.as_str(), &StanzaError::new(condition), &mut state.out);
}
