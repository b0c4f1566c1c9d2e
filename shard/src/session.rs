//! A bound session on its home core: reads stanzas from its client, stamps and routes
//! them (or lets the server answer), and writes what others route to it.
//!
//! Bad input from this client closes this client's stream with the RFC 6120 error and
//! touches nothing else.

use std::rc::Rc;
use std::time::Instant;

use starling_wire::error::{StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition};
use starling_wire::framer::{Frame, Framer};
use starling_wire::jid::{FullJid, Jid, JidRef};
use starling_wire::stanza::{IqType, Stanza, StanzaKind, StanzaParseError};

use crate::core::Core;
use crate::flow::Congestion;
use crate::guard::Shaper;
use crate::io::{Io, Wake, WIRE_BYTES_HIGH};
use crate::limits::READS_PER_WAKEUP_MAX;
use crate::mailbox::Mailbox;
use crate::module::{Flow, IqScope, Pending, Reply, Sender};
use crate::resume::{Acks, Resumable, Takeover};
use crate::sessions::SessionId;

/// The session is gone: unbind it, tell the other nodes, then the modules (presence
/// tells the contacts, ...).
fn session_ended(core: &Core, state: &State) {
    let session = core.sessions.borrow_mut().unbind(&state.jid, state.id);
    if core.sessions.borrow().sessions(state.jid.bare_str()).is_empty() {
        core.account_shapers.borrow_mut().remove(state.jid.bare_str());
    }
    // Replaced by a newer session with the same full JID: that one speaks now.
    let Some(session) = session else { return };
    if let Some(cluster) = &core.cluster {
        cluster.publish(state.jid.as_str(), None);
    }
    for module in core.module_list() {
        module.on_session_close(core, &state.jid, state.id, session.available);
    }
}

/// How a session ended.
enum End {
    /// The client closed its stream; we close ours.
    ClientClosed,
    /// The socket closed or failed.
    Gone,
    /// The WebSocket closed or failed under the stream: what is queued (a close
    /// frame) is sent before the connection closes.
    Unframed,
    /// We close the stream with this error.
    Error(StreamError),
    /// Another connection resumed this session (XEP-0198 section 5).
    TakenOver,
    /// The session moved to another node, whose client resumed it there: it ended
    /// here already, quietly.
    Moved,
}

impl End {
    /// The connection was lost rather than closed: a resumable session parks.
    fn lost(&self) -> bool {
        match self {
            End::Gone | End::Unframed | End::TakenOver => true,
            End::Error(error) => error.condition == StreamErrorCondition::ConnectionTimeout,
            End::ClientClosed | End::Moved => false,
        }
    }
}

/// The per-session state the stanza handlers use.
pub(crate) struct State {
    pub jid: FullJid,
    pub id: SessionId,
    /// Replies for this client produced while handling its stanzas.
    pub out: Vec<u8>,
    /// The listener the client came in on (its traffic shaper is in the settings).
    pub listener: u16,
    /// The shaper's bucket (`guard.rs`), in µs since the core started: 8 bytes, not
    /// an `Instant`'s 16, in every idle session (`budget.rs`).
    pub shaper_tat_us: u64,
    /// XEP-0198 state once the client enabled stream management (`resume.rs`).
    pub acks: Option<Box<Acks>>,
}

impl State {
    /// A bound session's state: `acks` when it resumed one moved from another node.
    pub fn new(jid: FullJid, id: SessionId, listener: u16, acks: Option<Box<Acks>>) -> State {
        State { jid, id, out: Vec::new(), listener, shaper_tat_us: 0, acks }
    }
}

/// µs since the core started (the session's compact clock).
fn micros(core: &Core, at: Instant) -> u64 {
    at.saturating_duration_since(core.started).as_micros() as u64
}

fn instant(core: &Core, us: u64) -> Instant {
    core.started + std::time::Duration::from_micros(us)
}

/// Charges `n` bytes read to the listener's shaper; `Some` (µs) when the session must
/// read nothing more before then.
fn charge_bytes(core: &Core, state: &mut State, n: usize) -> Option<u64> {
    let shaper: Shaper = core.shared.settings.listeners.get(usize::from(state.listener))?.shaper?;
    let now = Instant::now();
    let mut tat = instant(core, state.shaper_tat_us);
    let until = shaper.charge(&mut tat, n as u64, now);
    state.shaper_tat_us = micros(core, tat);
    until.map(|until| micros(core, until))
}

/// Serves a bound session until it ends. Written as a plain function returning an
/// `async move` block so the arguments are stored once in the task (an `async fn`
/// keeps its arguments and their moved-to locals side by side), which keeps an idle
/// session small (see `budget.rs`).
pub(crate) fn run(
    core: Rc<Core>,
    io: Io,
    framer: Framer,
    state: State,
    mailbox: Rc<Mailbox>,
) -> impl std::future::Future<Output = ()> {
    let mut task = Task { core, io: Some(io), framer, state, mailbox, ended: false };
    async move { task.run().await }
}

/// What a session task owns. Dropping it (normally, or while a panic unwinds the
/// task) leaves nothing behind: the session is unbound, its senders released, and
/// the connection unregistered.
struct Task {
    core: Rc<Core>,
    /// `None` while the session is parked (its connection lost, `resume.rs`).
    io: Option<Io>,
    framer: Framer,
    state: State,
    mailbox: Rc<Mailbox>,
    /// The normal end ran (`presence::session_ended`).
    ended: bool,
}

impl Task {
    async fn run(&mut self) {
        // What the modules need before this session's first stanza (its account's
        // roster and block list, ...). Boxed: not part of every idle session's task.
        let opening: Vec<_> = self
            .core
            .module_list()
            .iter()
            .filter_map(|m| m.on_session_open(&self.core, &self.state.jid, self.state.id))
            .collect();
        for work in opening {
            Box::pin(work).await;
        }
        let end = match self.io.as_mut() {
            Some(io) => serve(&self.core, io, &mut self.framer, &mut self.state, &self.mailbox).await,
            None => End::Gone,
        };
        // Boxed: an idle session's task carries room for neither parking nor closing
        // (`budget.rs`).
        self.end(end).await;
    }

    /// After the connection ended: parks a resumable session whose connection was
    /// lost (and serves the one that resumes it), then ends the session and closes.
    fn end(&mut self, end: End) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        Box::pin(async move {
            let end = if end.lost() { self.after_loss(end).await } else { end };
            if let End::Moved = end {
                // Already ended (`hand_to_node`); an old connection still open closes.
                if let Some(io) = self.io.as_mut() {
                    io.close().await;
                }
                return;
            }
            let undelivered = self.undelivered();
            session_ended(&self.core, &self.state);
            self.ended = true;
            reroute(&self.core, &self.state, undelivered);
            let Some(io) = self.io.as_mut() else { return };
            match end {
                End::Gone | End::TakenOver | End::Moved => return,
                End::Unframed => {}
                End::ClientClosed => io.queue(b"</stream:stream>"),
                End::Error(error) => {
                    log::debug!("c2s: closing {} with {:?}", self.state.jid, error.condition);
                    let mut bytes = Vec::new();
                    error.write_closing(&mut bytes);
                    io.queue(&bytes);
                }
            }
            io.close().await;
        })
    }

    /// The connection was lost: a resumable session parks and goes on with the
    /// connection that resumes it, as often as that happens.
    async fn after_loss(&mut self, mut end: End) -> End {
        while end.lost() {
            end = match self.wait_for_resumption(&end).await {
                None => return end,
                Some(Takeover::Local(resumption)) => match self.resume(resumption) {
                    Ok(()) => self.serve().await,
                    Err(error) => End::Error(error),
                },
                Some(Takeover::Remote { node, token, h }) => return self.hand_to_node(node, token, h),
            };
        }
        end
    }

    /// A client resumed this session on node `node` (waiting under `token`; it
    /// handled `h` of our stanzas): its state, unacknowledged stanzas and mail go
    /// there, and the session ends here without a word to its contacts.
    fn hand_to_node(&mut self, node: u16, token: u64, h: u32) -> End {
        let core = self.core.clone();
        let (jid, id) = (self.state.jid.clone(), self.state.id);
        let Some(acks) = self.state.acks.as_mut() else { return End::Gone };
        let sent = acks.sent();
        if acks.ack(h).is_err() {
            return End::Error(handled_count_too_high(h, sent));
        }
        let (inbound, resume_seconds) = (acks.inbound, acks.resume_seconds);
        // Modules first: what they hold for the session goes to its mailbox.
        let exports: Vec<(String, Vec<u8>)> = core
            .module_list()
            .iter()
            .map(|module| (module.name().to_owned(), module.export_session(&core, &jid, id)))
            .filter(|(_, state)| !state.is_empty())
            .collect();
        let stanzas = self.take_undelivered(true);
        let session = core.sessions.borrow_mut().unbind(&jid, id);
        if core.sessions.borrow().sessions(jid.bare_str()).is_empty() {
            core.account_shapers.borrow_mut().remove(jid.bare_str());
        }
        if let Some(cluster) = &core.cluster {
            cluster.publish(jid.as_str(), None);
        }
        self.ended = true;
        let (available, priority, flags) = session.map_or((false, 0, 0), |s| (s.available, s.priority, s.flags.0));
        let me = core.cluster.as_ref().map_or(0, |c| c.node_num());
        let handed = crate::resume::Handed {
            from: me,
            to: node,
            token,
            jid: jid.as_str().to_owned(),
            inbound,
            acked: h,
            resume_seconds,
            available,
            priority,
            flags,
            exports,
            stanzas: Vec::new(),
        };
        log::debug!("c2s: {jid} resumed on node {node}: handed over with {} stanzas", stanzas.len());
        crate::resume::hand_to(&core, jid.bare_str(), handed, stanzas);
        core.count("sm_handed_over", 1);
        End::Moved
    }

    async fn serve(&mut self) -> End {
        let Some(io) = self.io.as_mut() else { return End::Gone };
        serve(&self.core, io, &mut self.framer, &mut self.state, &self.mailbox).await
    }

    /// The session's entry in the core's resumable table, when it has one.
    fn resumable(&self) -> Option<Rc<Resumable>> {
        let id = self.state.acks.as_ref()?.id.as_ref()?;
        self.core.resumable.borrow().get(id).cloned()
    }

    /// After a lost connection: the connection that took the session over, or one
    /// that resumes it while it is parked (`None`: not resumable, or it timed out).
    async fn wait_for_resumption(&mut self, end: &End) -> Option<Takeover> {
        let entry = self.resumable()?;
        if let End::TakenOver = end {
            self.mailbox.resume();
            if let Some(taken) = entry.taken.borrow_mut().take() {
                return Some(taken);
            }
        }
        // Parked: the lost connection is closed now; mail waits in the mailbox.
        self.io = None;
        let seconds = self.state.acks.as_ref().map_or(0, |acks| acks.resume_seconds);
        let timeout = std::time::Duration::from_secs(u64::from(seconds));
        crate::resume::park(&self.core, &self.mailbox, &entry, timeout).await
    }

    /// Takes over `resumption`'s connection: `<resumed/>`, then every stanza the
    /// client did not acknowledge, again (XEP-0198 section 5).
    fn resume(&mut self, resumption: Box<crate::resume::Resumption>) -> Result<(), StreamError> {
        let crate::resume::Resumption { io, framer, h, listener } = *resumption;
        if let Some(old) = self.io.replace(io) {
            // The connection taken over, still open: it gets `conflict`.
            crate::resume::close_replaced(&self.core, old);
        }
        self.framer = framer;
        self.state.listener = listener;
        let Some(acks) = self.state.acks.as_mut() else {
            return Err(StreamError::new(StreamErrorCondition::InternalServerError));
        };
        let sent = acks.sent();
        if acks.ack(h).is_err() {
            return Err(handled_count_too_high(h, sent));
        }
        let mut out = Vec::new();
        starling_wire::sm::write_resumed(acks.id.as_deref().unwrap_or_default(), acks.inbound, &mut out);
        for stanza in &acks.unacked {
            out.extend_from_slice(stanza);
        }
        if !acks.unacked.is_empty() {
            out.extend_from_slice(starling_wire::sm::ACK_REQUEST);
        }
        if let Some(io) = self.io.as_mut() {
            io.queue(&out);
        }
        self.core.count("sm_resumed", 1);
        log::debug!("c2s: {} resumed with {} stanzas sent again", self.state.jid, acks.unacked.len());
        Ok(())
    }

    /// Everything this session was given and its client did not take: stanzas it did
    /// not acknowledge, then what waits in the mailbox. The session's resumption entry
    /// goes with it.
    fn undelivered(&mut self) -> Vec<Vec<u8>> {
        self.take_undelivered(false)
    }

    /// [`Task::undelivered`]; with `all`, what modules pushed raw too (a session that
    /// moves takes everything with it).
    fn take_undelivered(&mut self, all: bool) -> Vec<Vec<u8>> {
        let mut undelivered = Vec::new();
        if let Some(acks) = self.state.acks.as_mut() {
            if let Some(id) = &acks.id {
                self.core.resumable.borrow_mut().remove(id);
            }
            undelivered.extend(acks.unacked.drain(..).map(Vec::from));
        }
        undelivered.extend(if all { self.mailbox.close_all() } else { self.mailbox.close() });
        undelivered
    }
}

/// What an ended session's client did not take goes on: with stream management, to
/// offline storage (`router::reroute_unacknowledged`: its unacknowledged stanzas may
/// have reached the client, and other resources would keep copies of their own);
/// without, to the account's other resources or offline storage.
fn reroute(core: &Core, state: &State, undelivered: Vec<Vec<u8>>) {
    if state.acks.is_some() {
        crate::router::reroute_unacknowledged(core, &state.jid, undelivered);
    } else {
        crate::router::reroute_undelivered(core, &state.jid, undelivered);
    }
}

/// XEP-0198 section 4: the client acknowledged more stanzas than were sent.
fn handled_count_too_high(h: u32, sent: u32) -> StreamError {
    StreamError::with_text(
        StreamErrorCondition::UndefinedCondition,
        format!("handled-count-too-high: h {h} acknowledges more than the {sent} stanzas sent"),
    )
}

impl Drop for Task {
    fn drop(&mut self) {
        let undelivered = if self.ended {
            self.mailbox.close()
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.undelivered())).unwrap_or_default()
        };
        if !self.ended {
            let (core, state) = (&self.core, &self.state);
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                session_ended(core, state);
                reroute(core, state, undelivered);
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
    // Set while a shaper holds this session: nothing is read before then (µs since
    // the core started; 0: not held).
    let mut shaped: u64 = 0;
    // Stanzas that came in the same read as the bind or the resumption wait in the
    // framer: handled before waiting for more input (found by a breaker: a ping
    // pipelined after the bind IQ went unanswered until the client sent again).
    let mut stashed = framer.buffered_bytes() > 0;
    loop {
        if let Err(end) = flush_out(core, io, state) {
            return end;
        }
        let mut limit = core.limits().queued_bytes_per_connection_max;
        // The clock is read only while a shaper holds the session.
        let pause = (shaped > 0).then(|| instant(core, shaped).saturating_duration_since(Instant::now()));
        let mut shaper_timer = match pause.filter(|pause| !pause.is_zero()) {
            Some(pause) => {
                // Reading nothing (a limit of 0) until the shaper allows it; mail and
                // output go on meanwhile.
                limit = 0;
                Some(glommio::timer::Timer::new(pause))
            }
            None => None,
        };
        if state.acks.is_some() {
            // Boxed in `Acks`, and only with stream management on.
            match window(core, state, mailbox, io) {
                Err(end) => return end,
                Ok(Some(deadline)) if shaper_timer.is_none() => {
                    shaper_timer = Some(glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now())));
                }
                Ok(_) => {}
            }
        }
        let handled = if std::mem::take(&mut stashed) {
            pump(core, framer, state, &[])
        } else {
            match io.wait(core, mailbox, shaper_timer.as_mut(), limit, &mut paused).await {
                Wake::Read(n) => {
                    reads = reads.saturating_add(1);
                    core.take_congestion();
                    shaped = charge_bytes(core, state, n).unwrap_or(0);
                    pump_read(core, io, framer, state, n)
                }
                // Input stashed when this session had to wait is handled now.
                Wake::Resumed => pump(core, framer, state, &[]),
                Wake::Mail => {
                    if mailbox.interrupted() {
                        return End::TakenOver;
                    }
                    if let Some(condition) = mailbox.kicked() {
                        return End::Error(StreamError::new(condition));
                    }
                    let mut mail = Vec::new();
                    mailbox.drain_into(&mut mail, WIRE_BYTES_HIGH, core.limits().queued_bytes_per_connection_max);
                    if let Err(end) = send(core, io, state, &mail) {
                        return end;
                    }
                    continue;
                }
                Wake::Closed => return End::Gone,
                // RFC 6120 section 4.9.3.4: the client took nothing for `send_timeout`.
                Wake::Stalled => {
                    return End::Error(StreamError::with_text(StreamErrorCondition::ConnectionTimeout, "not reading"))
                }
                // A shaper's pause ended (input stashed when it began is handled now), or
                // the acknowledgement wait did (checked at the top of the loop).
                Wake::Timeout => {
                    shaped = 0;
                    pump(core, framer, state, &[])
                }
            }
        };
        match handled {
            Ok(Next::Read | Next::Congested) => {}
            Ok(Next::Shaped(until)) => shaped = shaped.max(micros(core, until)),
            // Boxed: the idle session's task must not carry room for this (`budget.rs`).
            Ok(Next::Wait(work)) => match Box::pin(finish(core, io, framer, state, work)).await {
                Err(end) => return end,
                Ok(until) => shaped = shaped.max(until.map_or(0, |until| micros(core, until))),
            },
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
async fn finish(
    core: &Core,
    io: &mut Io,
    framer: &mut Framer,
    state: &mut State,
    work: Pending,
) -> Result<Option<Instant>, End> {
    let mut handled = Next::Wait(work);
    while let Next::Wait(work) = handled {
        flush_out(core, io, state)?;
        let Ok(reply) = crate::contain::wait(core, "a request waiting for storage", work).await else {
            return Err(internal_error());
        };
        state.out.extend_from_slice(&reply);
        handled = pump(core, framer, state, &[])?;
    }
    Ok(match handled {
        Next::Shaped(until) => Some(until),
        _ => None,
    })
}

/// Writes the replies handling input produced.
fn flush_out(core: &Core, io: &mut Io, state: &mut State) -> Result<(), End> {
    if state.out.is_empty() {
        return Ok(());
    }
    // Taken, not cleared: an idle session keeps no reply buffer (`budget.rs`).
    let out = std::mem::take(&mut state.out);
    send(core, io, state, &out)
}

/// Writes whole elements to the client; with stream management on, keeps a copy of
/// each stanza until the client acknowledges it, and asks it to (`resume.rs`).
fn send(core: &Core, io: &mut Io, state: &mut State, bytes: &[u8]) -> Result<(), End> {
    io.queue(bytes);
    let (Some(acks), Some(sm)) = (state.acks.as_mut(), core.shared.settings.stream_management) else { return Ok(()) };
    if acks.record(bytes, sm.ack_freq) {
        io.queue(starling_wire::sm::ACK_REQUEST);
    }
    Ok(())
}

/// XEP-0198 flow control: while the client has `buffer_max` stanzas unacknowledged,
/// its mail is held (senders wait, as for a slow reader) and an `<r/>` is out;
/// without an acknowledgement for `send_timeout` the connection counts as lost (a
/// resumable session parks). `Some` deadline while held.
fn window(core: &Core, state: &mut State, mailbox: &Mailbox, io: &mut Io) -> Result<Option<Instant>, End> {
    let (Some(acks), Some(sm)) = (state.acks.as_mut(), core.shared.settings.stream_management) else {
        return Ok(None);
    };
    let full = acks.unacked.len() >= sm.buffer_max;
    mailbox.hold(full);
    if !full {
        acks.full_since = None;
        return Ok(None);
    }
    let now = Instant::now();
    let since = *acks.full_since.get_or_insert_with(|| {
        io.queue(starling_wire::sm::ACK_REQUEST);
        now
    });
    let deadline = since + core.limits().send_timeout;
    if now >= deadline {
        let text = "no acknowledgement of the stanzas sent";
        return Err(End::Error(StreamError::with_text(StreamErrorCondition::ConnectionTimeout, text)));
    }
    Ok(Some(deadline))
}

/// What handling input came to.
pub(crate) enum Next {
    /// All input handled; read more.
    Read,
    /// A stanza waits for the store (the rest of the input is stashed).
    Wait(Pending),
    /// A queue this session filled is over its mark (the rest is stashed).
    Congested,
    /// The account sent more stanzas than its shaper allows: nothing more is read
    /// or handled before this time (the rest is stashed).
    Shaped(Instant),
}

type Handled = Result<Next, End>;

fn pump_read(core: &Core, io: &mut Io, framer: &mut Framer, state: &mut State, n: usize) -> Handled {
    let read = core.read_buffer.borrow();
    if io.is_plain() {
        return pump(core, framer, state, &read[..n]);
    }
    let mut plain = core.plain_buffer.borrow_mut();
    plain.clear();
    match io.unwrap_input(&read[..n], &mut plain) {
        Ok(()) => {}
        Err(crate::io::Unwrapped::Tls(_)) => return Err(End::Gone),
        // The close frame for the client is queued.
        Err(crate::io::Unwrapped::WebSocket(_)) => return Err(End::Unframed),
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
                if let Some(until) = charge_account(core, state) {
                    framer.stash(input);
                    return Ok(Next::Shaped(until));
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

/// Charges one stanza to the account's stanza shaper (`[limits]
/// account_stanza_shaper`); `Some` when the account must pause until then.
fn charge_account(core: &Core, state: &State) -> Option<Instant> {
    let shaper = core.limits().account_stanza_shaper?;
    let now = Instant::now();
    let mut shapers = core.account_shapers.borrow_mut();
    let bare = state.jid.bare_str();
    let until = match shapers.get_mut(bare) {
        Some(tat) => shaper.charge(tat, 1, now),
        None => {
            let mut tat = now;
            let until = shaper.charge(&mut tat, 1, now);
            shapers.insert(bare.into(), tat);
            until
        }
    };
    if until.is_some() {
        core.count("c2s_stanzas_shaped", 1);
    }
    until
}

/// A bug of ours ended this stream (RFC 6120 section 4.9.3.8).
fn internal_error() -> End {
    End::Error(StreamError::new(StreamErrorCondition::InternalServerError))
}

/// Handles one top-level element from the client; `Some` when it waits for the store.
pub(crate) fn handle_element(core: &Core, state: &mut State, bytes: &[u8]) -> Result<Option<Pending>, StreamError> {
    #[cfg(feature = "fault-injection")]
    crate::contain::inject(core, bytes);
    let stanza = match Stanza::parse(bytes) {
        Ok(stanza) => stanza,
        Err(StanzaParseError::NotAStanza) => return nonza(core, state, bytes).map(|()| None),
        Err(StanzaParseError::Malformed) => return Err(StreamError::new(StreamErrorCondition::NotWellFormed)),
    };
    check_from(&stanza, &state.jid)?;
    if let Some(acks) = state.acks.as_mut() {
        // XEP-0198 section 4: every stanza from the client counts as handled.
        acks.inbound = acks.inbound.wrapping_add(1);
    }
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
    let pending = match Stanza::parse(&stamped) {
        Ok(stamped_stanza) => dispatch(core, state, &stamped_stanza, to.as_ref()),
        Err(_) => None,
    };
    core.stamp_buffer.replace(stamped);
    Ok(pending)
}

/// A top-level element that is not a stanza: a module's (XEP-0352 `<active/>`, ...),
/// or `unsupported-stanza-type`.
fn nonza(core: &Core, state: &mut State, bytes: &[u8]) -> Result<(), StreamError> {
    if core.shared.settings.stream_management.is_some() {
        if let Some(request) = starling_wire::sm::parse(bytes) {
            return stream_management(core, state, request);
        }
    }
    let mut sender = Sender { jid: &state.jid, session: state.id, out: &mut state.out };
    for module in core.module_list() {
        if module.on_nonza(core, &mut sender, bytes) {
            return Ok(());
        }
    }
    Err(StreamError::new(StreamErrorCondition::UnsupportedStanzaType))
}

/// XEP-0198 section 3: stream management enabled for the session `jid`:
/// `<enabled/>` goes to `out`; resumable (registered for `<resume/>`) when asked
/// for, allowed, and the session's mailbox is given.
pub(crate) fn enable_acks(
    core: &Core,
    jid: &FullJid,
    mailbox: Option<Rc<Mailbox>>,
    resume: bool,
    max: Option<u32>,
    out: &mut Vec<u8>,
) -> Box<Acks> {
    let allowed = core
        .shared
        .settings
        .stream_management
        .map_or(0, |sm| u32::try_from(sm.resume_timeout.as_secs()).unwrap_or(u32::MAX));
    let resumable = resume && allowed > 0;
    let seconds = if resumable { max.map_or(allowed, |max| max.clamp(1, allowed)) } else { 0 };
    let registered = match (resumable, mailbox) {
        (true, Some(mailbox)) => {
            let id = crate::resume::new_id(core);
            let entry = Resumable { user: jid.bare_str().into(), mailbox, taken: std::cell::RefCell::new(None) };
            core.resumable.borrow_mut().insert(id.clone(), Rc::new(entry));
            Some(id)
        }
        _ => None,
    };
    starling_wire::sm::write_enabled(registered.as_deref(), registered.is_some().then_some(seconds), out);
    Box::new(Acks::new(registered, seconds))
}

/// XEP-0198 elements from a bound client.
fn stream_management(
    core: &Core,
    state: &mut State,
    request: Result<starling_wire::sm::Request, starling_wire::sm::SmError>,
) -> Result<(), StreamError> {
    use starling_wire::sm::{self, Request};
    let out = &mut state.out;
    match (request, state.acks.as_mut()) {
        (Ok(Request::Enable { resume, max }), None) => {
            let mailbox = core.live.borrow().get(&state.id.0).cloned();
            state.acks = Some(enable_acks(core, &state.jid, mailbox, resume, max, out));
        }
        // Section 3: enabling twice, or resuming from a bound stream.
        (Ok(Request::Enable { .. } | Request::Resume { .. }), _) => sm::write_failed("unexpected-request", None, out),
        (Ok(Request::AckRequest), Some(acks)) => sm::write_ack(acks.inbound, out),
        (Ok(Request::Ack { h }), Some(acks)) => {
            let sent = acks.sent();
            acks.ack(h).map_err(|()| handled_count_too_high(h, sent))?;
        }
        // Before enabling, <r/> and <a/> mean nothing: refused like any unknown element.
        (Ok(Request::AckRequest | Request::Ack { .. }), None) => {
            return Err(StreamError::new(StreamErrorCondition::UnsupportedStanzaType))
        }
        (Err(_), _) => sm::write_failed("bad-request", None, out),
    }
    Ok(())
}

/// Where a client's stamped stanza goes: an IQ request for the server or the
/// client's own account to the module that answers it; anything else through the
/// modules' `on_send` hooks, then to its recipient.
fn dispatch(core: &Core, state: &mut State, stanza: &Stanza<'_>, to: Option<&JidRef<'_>>) -> Option<Pending> {
    // RFC 6120 section 8.2.3: an IQ must say what it is (get, set, result or error);
    // one that does not is refused here, wherever it was going.
    if stanza.kind == StanzaKind::Iq && stanza.iq_type().is_none() {
        reply_here(state, stanza, StanzaErrorCondition::BadRequest);
        return None;
    }
    let own_bare = state.jid.bare_str();
    // RFC 6120 section 10.3: no `to` means the sender's own account (for presence:
    // a broadcast, handled by the modules).
    let own = to.is_none_or(|to| !to.is_full() && to.bare_str() == own_bare);
    let server = to.is_some_and(|to| to.local().is_none() && !to.is_full() && core.serves(to.domain()));
    if stanza.kind == StanzaKind::Iq && (own || server) {
        if let Some(IqType::Get | IqType::Set) = stanza.iq_type() {
            let (scope, account) = match server {
                true => (IqScope::Server, to.map(|t| t.domain()).unwrap_or_default()),
                false => (IqScope::OwnAccount, own_bare),
            };
            return match crate::router::dispatch_iq(core, stanza, scope, account, Some(state.id)) {
                Reply::Now(bytes) => {
                    state.out.extend_from_slice(&bytes);
                    None
                }
                Reply::Later(pending) => Some(pending),
            };
        }
    }
    let mut sender = Sender { jid: &state.jid, session: state.id, out: &mut state.out };
    for module in core.module_list() {
        match module.on_send(core, &mut sender, stanza, to) {
            Flow::Continue => {}
            Flow::Stop => return None,
            Flow::Wait(pending) => return Some(pending),
        }
    }
    match to {
        // An IQ answer to the server or a presence broadcast no module took.
        None if stanza.kind != StanzaKind::Message => None,
        None => {
            crate::router::route(core, own_bare, stanza.bytes);
            None
        }
        Some(to) if !core.serves(to.domain()) => {
            // No server-to-server connections: other domains are unreachable.
            reply_here(state, stanza, StanzaErrorCondition::RemoteServerNotFound);
            None
        }
        // A message or presence to the server itself, or an IQ answer to it.
        Some(_) if server => None,
        Some(to) => {
            crate::router::route(core, to.bare_str(), stanza.bytes);
            None
        }
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
