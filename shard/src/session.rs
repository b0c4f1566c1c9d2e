//! A bound session on its home core: reads stanzas from its client, stamps and routes
//! them (or lets the server answer), and writes what others route to it.
//!
//! Bad input from this client closes this client's stream with the RFC 6120 error and
//! touches nothing else.

use std::rc::Rc;

use starling_wire::error::{StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition};
use starling_wire::framer::{Frame, Framer};
use starling_wire::jid::{FullJid, Jid, JidRef};
use starling_wire::stanza::{Stanza, StanzaKind, StanzaParseError};

use crate::core::Core;
use crate::io::{Io, Wake};
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
    let mut session = (io, framer, State { jid, id, out: Vec::new(), directed: Vec::new() });
    async move {
        let (io, framer, state) = &mut session;
        let end = serve(&core, io, framer, state, &mailbox).await;
        crate::presence::session_ended(&core, state);
        let closing = match end {
            End::Gone => return,
            End::ClientClosed => b"</stream:stream>".to_vec(),
            End::Error(error) => {
                log::debug!("c2s: closing {} with {:?}", state.jid, error.condition);
                let mut bytes = Vec::new();
                error.write_closing(&mut bytes);
                bytes
            }
        };
        io.queue(&closing);
        io.close().await;
    }
}

async fn serve(core: &Core, io: &mut Io, framer: &mut Framer, state: &mut State, mailbox: &Mailbox) -> End {
    let limit = core.limits().queued_bytes_per_connection_max;
    let mut reads = 0;
    loop {
        if !state.out.is_empty() {
            io.queue(&state.out);
            state.out.clear();
        }
        match io.wait(core, mailbox, None, limit).await {
            Wake::Read(n) => {
                if let Err(end) = pump_read(core, io, framer, state, n) {
                    return end;
                }
                reads += 1;
            }
            Wake::Mail => {
                if let Some(condition) = mailbox.kicked() {
                    return End::Error(StreamError::new(condition));
                }
                let mut mail = Vec::new();
                mailbox.drain_into(&mut mail);
                io.queue(&mail);
            }
            Wake::Closed => return End::Gone,
            Wake::Overflow => {
                return End::Error(StreamError::with_text(StreamErrorCondition::PolicyViolation, "not reading"))
            }
            Wake::Timeout => {}
        }
        if reads >= READS_PER_WAKEUP_MAX {
            reads = 0;
            glommio::yield_if_needed().await;
        }
    }
}

fn pump_read(core: &Core, io: &mut Io, framer: &mut Framer, state: &mut State, n: usize) -> Result<(), End> {
    let read = core.read_buffer.borrow();
    if io.tls.is_none() {
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

fn pump(core: &Core, framer: &mut Framer, state: &mut State, input: &[u8]) -> Result<(), End> {
    let mut input = input;
    loop {
        match framer.next(&mut input) {
            Ok(Some(Frame::Element(bytes))) => handle_element(core, state, bytes).map_err(End::Error)?,
            Ok(Some(Frame::StreamClose)) => return Err(End::ClientClosed),
            Ok(Some(Frame::StreamHeader(_))) => {
                return Err(End::Error(StreamError::new(StreamErrorCondition::InternalServerError)))
            }
            Ok(None) => return Ok(()),
            Err(error) => return Err(End::Error(error.into())),
        }
    }
}

/// Handles one top-level element from the client.
pub(crate) fn handle_element(core: &Core, state: &mut State, bytes: &[u8]) -> Result<(), StreamError> {
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
            return Ok(());
        }
    };
    // The core's stamping buffer: routing copies out of it, so it is free again after.
    let mut stamped = core.stamp_buffer.take();
    stamped.clear();
    stanza.write_stamped(state.jid.as_str(), &mut stamped);
    route_stamped(core, state, &stanza, to, &stamped);
    core.stamp_buffer.replace(stamped);
    Ok(())
}

fn route_stamped(core: &Core, state: &mut State, stanza: &Stanza<'_>, to: Option<JidRef<'_>>, stamped: &[u8]) {
    if stanza.kind == StanzaKind::Presence {
        crate::presence::outbound(core, state, stanza, to.as_ref(), stamped);
        return;
    }
    let Some(to) = to else {
        if stanza.kind == StanzaKind::Iq {
            crate::iq::answer_for_server(stanza, state.jid.as_str(), None, &mut state.out);
        }
        return;
    };
    if !core.shared.settings.hosts.iter().any(|host| host == to.domain()) {
        // No server-to-server connections: other domains are unreachable.
        reply_here(state, stanza, StanzaErrorCondition::RemoteServerNotFound);
        return;
    }
    let server = to.local().is_none() && !to.is_full();
    match stanza.kind {
        StanzaKind::Iq if server => {
            crate::iq::answer_for_server(stanza, state.jid.as_str(), Some(to.as_str()), &mut state.out)
        }
        _ if server => {}
        _ => crate::router::route(core, to.bare_str(), stamped),
    }
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
