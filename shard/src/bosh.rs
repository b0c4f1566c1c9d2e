//! BOSH sessions (XEP-0124 carrying XEP-0206): each one is an ordinary c2s stream
//! underneath. The session holds one end of a socket pair; the other end is served
//! by `connection::serve_stream` like any accepted connection, so negotiation,
//! the move to the home core, stream management, modules and clustering are the
//! ones every session has. This module only carries bytes between HTTP requests and
//! that stream, in `rid` order, holding requests until there is something to say
//! (`hold`, `wait`), and ends the stream when the client terminates or goes quiet
//! (`inactivity`, `pause`).
//!
//! A session lives on the core that created it; its `sid` starts with that core's
//! number, and `web.rs` moves a request for it there. Backpressure: the stream is
//! not read while [`READY_BYTES_MAX`] of its output waits for a request to carry
//! it, so a client that stops polling slows its session down (and, like a TCP
//! client that stops reading, ends it after the send timeout).
//!
//! Decided against: sessions shared across cluster nodes (MongooseIM keeps a
//! cluster-wide `bosh_session` table). A BOSH client's requests must reach the
//! node that created its session (a load balancer keyed on the `sid`, or on the
//! client's address); a request for an unknown `sid` gets `item-not-found`, and
//! the client logs in again, resuming with stream management if it enabled it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, Future};
use glommio::net::TcpStream;
use starling_wire::bosh::{self, Body, Condition, Created, Ending, Kind, Order, Rids};
use starling_wire::c2s::Entropy;

use crate::core::Core;
use crate::io::{Io, Moving};
use crate::settings::ListenerTls;

/// Requests held at once at most (the client's `hold`, capped); `requests` is one
/// more (XEP-0124 section 7.2).
const HOLD_MAX: u32 = 2;
/// Shortest interval between polls we announce (XEP-0124 `polling`), in seconds.
const POLLING: u32 = 2;
/// Stream output waiting for a request to carry it; the stream is not read above it.
pub(crate) const READY_BYTES_MAX: usize = 256 * 1024;

/// What a BOSH request gets.
pub(crate) enum Handled {
    /// A `<body/>`, sent with `200 OK`.
    Answer(Rc<[u8]>),
    /// The session is on this other core: move the connection there.
    Elsewhere(usize),
}

/// One session's state, shared by the HTTP requests and the task that pumps its
/// stream (all on this core).
pub(crate) struct BoshSession {
    state: RefCell<State>,
    /// The pump task, woken when there is something to write or a deadline moved.
    pump: Cell<Option<Waker>>,
}

/// Where one held request waits for its answer.
#[derive(Default)]
struct Slot {
    answer: RefCell<Option<Rc<[u8]>>>,
    waker: Cell<Option<Waker>>,
}

impl Slot {
    fn fill(&self, answer: Rc<[u8]>) {
        *self.answer.borrow_mut() = Some(answer);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shut {
    No,
    /// Shut the stream's write side once `to_stream` is written.
    Pending,
    Done,
}

struct State {
    sid: Box<str>,
    rids: Rids,
    /// The creation response, until the first answer carries it.
    created: Option<Created>,
    /// Requests handled and waiting for their answer, in `rid` order.
    held: VecDeque<(u64, Rc<Slot>)>,
    /// Requests ahead of the next `rid`, handled when the gap fills (the slot is
    /// gone once answered by its `wait`).
    ahead: BTreeMap<u64, (Body, Option<Rc<Slot>>)>,
    /// The last answers sent, for retransmitted requests (XEP-0124 section 14.3).
    sent: VecDeque<(u64, Rc<[u8]>)>,
    /// Request payload not yet written into the stream.
    to_stream: Vec<u8>,
    /// Stream output not yet translated (an incomplete element).
    from_stream: Vec<u8>,
    /// Translated output waiting for a request to carry it.
    ready: Vec<u8>,
    /// The session ends, with this condition in its last answer (`None`: normally).
    ending: Option<Option<Condition>>,
    /// The terminating answer went out.
    told_ending: bool,
    /// The stream gave end of file.
    eof: bool,
    shut: Shut,
    /// When the last held request was answered (or a request came).
    last_seen: Instant,
    /// How long without requests ends the session: `inactivity`, or a pause.
    quiet_for: Duration,
    hold: usize,
    requests: usize,
    wait: Duration,
    /// `inactivity`: what `quiet_for` returns to on the request after a pause.
    inactivity: Duration,
    max_pause: u32,
    domain: String,
    lang: Option<String>,
}

/// Handles one BOSH request body on this core; the answer may wait up to the
/// session's `wait`.
pub(crate) async fn handle(core: &Rc<Core>, bytes: &[u8], address: Option<IpAddr>, listener: usize) -> Handled {
    let body = match bosh::parse(bytes) {
        Ok(body) => body,
        Err(condition) => return Handled::Answer(terminate(condition)),
    };
    let (session, slot) = if let Kind::Create(_) = &body.kind {
        match create(core, body, address, listener) {
            Ok(created) => created,
            Err(answer) => return Handled::Answer(answer),
        }
    } else {
        let sid = body.sid.as_deref().unwrap_or_default();
        match core_of(sid, core.count) {
            Some(home) if home != core.id => return Handled::Elsewhere(home),
            Some(_) => {}
            None => return Handled::Answer(terminate(Condition::ItemNotFound)),
        }
        let session = core.bosh.borrow().get(sid).cloned();
        let Some(session) = session else { return Handled::Answer(terminate(Condition::ItemNotFound)) };
        match session.request(core, body) {
            Ok(slot) => (session, slot),
            Err(answer) => return Handled::Answer(answer),
        }
    };
    Handled::Answer(answer_of(&session, &slot).await)
}

/// The core a `sid` was created on (`None`: not one of ours).
fn core_of(sid: &str, cores: usize) -> Option<usize> {
    let (core, _) = sid.split_once('-')?;
    core.parse::<usize>().ok().filter(|core| *core < cores)
}

fn terminate(condition: Condition) -> Rc<[u8]> {
    let mut out = Vec::new();
    bosh::write_terminate(Some(condition), b"", &mut out);
    out.into()
}

/// A new session and the slot of its creation request.
type Started = (Rc<BoshSession>, Rc<Slot>);

/// Starts a session: its stream, its pump, and the creation request held.
fn create(core: &Rc<Core>, body: Body, address: Option<IpAddr>, listener: usize) -> Result<Started, Rc<[u8]>> {
    let Kind::Create(create) = &body.kind else { return Err(terminate(Condition::BadRequest)) };
    let settings = &core.shared.settings;
    if !settings.hosts.contains(&create.to) {
        return Err(terminate(Condition::HostUnknown));
    }
    // A session counts against its address like a connection.
    let admitted = match address {
        Some(address) => match core.shared.guard.admit(address, Instant::now()) {
            Ok(admitted) => Some(admitted),
            Err(_) => return Err(terminate(Condition::PolicyViolation)),
        },
        None => None,
    };
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().map_err(|error| {
        log::warn!("bosh: cannot make a socket pair: {error}");
        terminate(Condition::UndefinedCondition)
    })?;
    let mut id = [0u8; 16];
    core.entropy.borrow_mut().fill(&mut id);
    let sid: String = format!("{}-{}", core.id, id.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let options = settings.bosh;
    let hold = create.hold.min(HOLD_MAX);
    let wait = create.wait.min(options.max_wait);
    let created = Created {
        sid: sid.clone(),
        wait,
        hold,
        requests: hold + 1,
        inactivity: options.inactivity,
        maxpause: options.max_pause,
        polling: POLLING,
        from: create.to.clone(),
    };
    let mut to_stream = Vec::new();
    bosh::write_stream_header(&create.to, create.lang.as_deref(), &mut to_stream);
    to_stream.extend_from_slice(&body.payload);
    let slot = Rc::new(Slot::default());
    let state = State {
        sid: sid.clone().into(),
        rids: Rids::new(body.rid, hold + 1),
        created: Some(created),
        held: VecDeque::from([(body.rid, slot.clone())]),
        ahead: BTreeMap::new(),
        sent: VecDeque::new(),
        to_stream,
        from_stream: Vec::new(),
        ready: Vec::new(),
        ending: None,
        told_ending: false,
        eof: false,
        shut: Shut::No,
        last_seen: Instant::now(),
        quiet_for: Duration::from_secs(options.inactivity.into()),
        inactivity: Duration::from_secs(options.inactivity.into()),
        hold: hold as usize,
        requests: hold as usize + 1,
        wait: Duration::from_secs(wait.into()),
        max_pause: options.max_pause,
        domain: create.to.clone(),
        lang: create.lang.clone(),
    };
    let session = Rc::new(BoshSession { state: RefCell::new(state), pump: Cell::new(None) });
    core.bosh.borrow_mut().insert(sid.into(), session.clone());
    core.count("bosh_sessions_created", 1);
    let mine = TcpStream::from(socket2::Socket::from(mine));
    crate::contain::spawn(core.clone(), "a BOSH session", pump(core.clone(), session.clone(), mine));
    let mut moving = Moving::default();
    moving.admitted = admitted;
    let io = Io::new(TcpStream::from(socket2::Socket::from(theirs)), moving);
    let secured = settings.listeners[listener].tls == ListenerTls::Direct;
    let stream = crate::connection::serve_stream(core.clone(), io, listener, address, secured, &[]);
    crate::contain::spawn(core.clone(), "a BOSH stream", stream);
    Ok((session, slot))
}

/// Waits for `slot`'s answer, at most the session's `wait`.
async fn answer_of(session: &BoshSession, slot: &Rc<Slot>) -> Rc<[u8]> {
    let wait = session.state.borrow().wait;
    let mut timer = glommio::timer::Timer::new(wait);
    futures_lite::future::poll_fn(|cx| {
        if let Some(answer) = slot.answer.borrow().as_ref() {
            return Poll::Ready(answer.clone());
        }
        if Pin::new(&mut timer).poll(cx).is_ready() {
            session.expire(slot);
            let answer = slot.answer.borrow().clone();
            return Poll::Ready(answer.unwrap_or_else(|| {
                let mut out = Vec::new();
                bosh::write_body(b"", &mut out);
                out.into()
            }));
        }
        slot.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    })
    .await
}

impl BoshSession {
    /// A request for this session: `Ok` its slot, or `Err` an answer now.
    fn request(&self, core: &Core, body: Body) -> Result<Rc<Slot>, Rc<[u8]>> {
        let mut state = self.state.borrow_mut();
        state.last_seen = Instant::now();
        if state.ending.is_some() && state.held.is_empty() && state.eof {
            // The stream ended while no request was out: this one says so.
            let condition = state.ending.flatten();
            state.told_ending = true;
            core.bosh.borrow_mut().remove(&state.sid);
            self.wake();
            let mut out = Vec::new();
            bosh::write_terminate(condition, &std::mem::take(&mut state.ready), &mut out);
            return Err(out.into());
        }
        let slot = Rc::new(Slot::default());
        match state.rids.order(body.rid) {
            Order::Outside => {
                // XEP-0124 section 14.3: a terminal error; the stream is cut.
                log::debug!("bosh: {} sent rid {} outside its window", state.sid, body.rid);
                state.end(Some(Condition::ItemNotFound));
                state.told_ending = true;
                core.bosh.borrow_mut().remove(&state.sid);
                self.wake();
                return Err(terminate(Condition::ItemNotFound));
            }
            Order::Repeat => {
                if let Some((_, answer)) = state.sent.iter().find(|(rid, _)| *rid == body.rid) {
                    return Err(answer.clone());
                }
                if let Some(held) = state.held.iter_mut().find(|(rid, _)| *rid == body.rid) {
                    // Retransmitted while the first is still held (its connection
                    // broke): this one waits instead.
                    held.1 = slot.clone();
                    return Ok(slot);
                }
                return Err(terminate(Condition::ItemNotFound));
            }
            Order::Ahead => {
                if let Some((_, answer)) = state.sent.iter().find(|(rid, _)| *rid == body.rid) {
                    // Answered by its wait already: the same answer again.
                    return Err(answer.clone());
                }
                state.ahead.insert(body.rid, (body, Some(slot.clone())));
            }
            Order::Next => {
                let mut processed = state.process(body, Some(slot.clone()));
                while processed.is_ok() {
                    let next_rid = state.rids.next();
                    let Some(next) = state.ahead.remove(&next_rid) else { break };
                    processed = state.process(next.0, next.1);
                }
                if let Err(answer) = processed {
                    state.told_ending = true;
                    core.bosh.borrow_mut().remove(&state.sid);
                    drop(state);
                    self.wake();
                    return Err(answer);
                }
                state.deliver();
            }
        }
        drop(state);
        self.wake();
        Ok(slot)
    }

    /// A held request's `wait` ran out: it is answered with what there is.
    fn expire(&self, slot: &Rc<Slot>) {
        let mut state = self.state.borrow_mut();
        if let Some(at) = state.held.iter().position(|(_, held)| Rc::ptr_eq(held, slot)) {
            state.answer_at(at);
        } else if let Some((rid, entry)) =
            state.ahead.iter_mut().find(|(_, (_, held))| held.as_ref().is_some_and(|h| Rc::ptr_eq(h, slot)))
        {
            // Answered empty now, its payload handled when the gap fills; the answer
            // is kept for a retransmission like any other (found by a breaker: the
            // retransmission got item-not-found).
            let rid = *rid;
            entry.1 = None;
            let mut out = Vec::new();
            bosh::write_body(b"", &mut out);
            let answer: Rc<[u8]> = out.into();
            slot.fill(answer.clone());
            state.remember(rid, answer);
            // Inactivity counts from our last answer (XEP-0124 section 10).
            state.last_seen = Instant::now();
        }
        drop(state);
        self.wake();
    }

    fn wake(&self) {
        if let Some(waker) = self.pump.take() {
            waker.wake();
        }
    }
}

impl State {
    /// Handles the next request in `rid` order; `Err`: an answer that ends the
    /// session.
    fn process(&mut self, body: Body, slot: Option<Rc<Slot>>) -> Result<(), Rc<[u8]>> {
        self.rids.advance();
        // XEP-0124 section 10: a pause lasts until the client's next request (found
        // by a breaker: it never ended); a retransmission is not a next request
        // (found by the next breaker: it cancelled the pause).
        self.quiet_for = self.inactivity;
        match body.kind {
            Kind::Restart => {
                self.to_stream.extend_from_slice(&body.payload);
                bosh::write_stream_header(&self.domain, self.lang.as_deref(), &mut self.to_stream);
            }
            Kind::Terminate => {
                self.to_stream.extend_from_slice(&body.payload);
                self.to_stream.extend_from_slice(b"</stream:stream>");
                self.shut = Shut::Pending;
            }
            Kind::Pause(seconds) if seconds > self.max_pause => {
                self.end(Some(Condition::PolicyViolation));
                return Err(terminate(Condition::PolicyViolation));
            }
            Kind::Pause(seconds) => {
                // XEP-0124 section 10: answer everything held, then wait that long.
                self.quiet_for = Duration::from_secs(seconds.into());
                if let Some(slot) = slot {
                    self.held.push_back((body.rid, slot));
                }
                while !self.held.is_empty() {
                    self.answer_at(0);
                }
                return Ok(());
            }
            Kind::Create(_) | Kind::Plain => self.to_stream.extend_from_slice(&body.payload),
        }
        if let Some(slot) = slot {
            self.held.push_back((body.rid, slot));
        } else {
            // Its wait ran out while it was ahead; it was answered then.
        }
        Ok(())
    }

    /// Answers held requests while there is something to say or more are held
    /// than the client allowed.
    fn deliver(&mut self) {
        while !self.held.is_empty() {
            // Once the stream is ending, its last words (a <stream:error/>) wait for
            // the end of file, to go with the terminating answer (XEP-0206 section 7;
            // found by a breaker: they came in two answers).
            let something = match self.ending {
                None => !self.ready.is_empty(),
                Some(_) => self.eof,
            };
            if !something && self.held.len() <= self.hold {
                break;
            }
            self.answer_at(0);
        }
    }

    /// Answers the held request at `at` with everything ready.
    fn answer_at(&mut self, at: usize) {
        let Some((rid, slot)) = self.held.remove(at) else { return };
        let payload = std::mem::take(&mut self.ready);
        let mut out = Vec::new();
        if let Some(created) = self.created.take() {
            bosh::write_created(&created, &payload, &mut out);
        } else if let (Some(condition), true) = (self.ending, self.eof) {
            bosh::write_terminate(condition, &payload, &mut out);
            self.told_ending = true;
        } else {
            bosh::write_body(&payload, &mut out);
        }
        let answer: Rc<[u8]> = out.into();
        self.remember(rid, answer.clone());
        slot.fill(answer);
        if self.held.is_empty() {
            self.last_seen = Instant::now();
        }
    }

    /// Keeps an answer for a retransmission of its request (the last `requests`).
    fn remember(&mut self, rid: u64, answer: Rc<[u8]>) {
        // Once per rid: a second answer to the same rid must not push out another
        // rid's (found by a breaker).
        if let Some(kept) = self.sent.iter_mut().find(|(kept, _)| *kept == rid) {
            kept.1 = answer;
            return;
        }
        self.sent.push_back((rid, answer));
        while self.sent.len() > self.requests {
            self.sent.pop_front();
        }
    }

    /// Whether a request is out: held, or ahead and not yet answered. Ahead requests
    /// answered by their `wait` do not keep the session alive (found by a breaker:
    /// one lost request left a session that never ended, holding its descriptors).
    fn waiting(&self) -> bool {
        !self.held.is_empty() || self.ahead.values().any(|(_, slot)| slot.is_some())
    }

    /// Ends the session: the stream is cut (no `</stream:stream>` unless the
    /// client sent one).
    fn end(&mut self, condition: Option<Condition>) {
        if self.ending.is_none() {
            self.ending = Some(condition);
        }
        if self.shut == Shut::No {
            self.shut = Shut::Pending;
        }
    }

    /// Takes stream output: translated into `ready`, and whether the stream ended.
    fn take_output(&mut self, bytes: &[u8]) {
        // Translated from the read itself when no partial element is held; only an
        // incomplete element's bytes are kept.
        let ending = if self.from_stream.is_empty() {
            let (used, ending) = bosh::translate(bytes, &mut self.ready);
            self.from_stream.extend_from_slice(bytes.get(used..).unwrap_or_default());
            ending
        } else {
            self.from_stream.extend_from_slice(bytes);
            let (used, ending) = bosh::translate(&self.from_stream, &mut self.ready);
            self.from_stream.drain(..used.min(self.from_stream.len()));
            ending
        };
        match ending {
            Ending::Open => {}
            Ending::Closed => self.end(None),
            Ending::Failed => self.end(Some(Condition::RemoteStreamError)),
        }
    }
}

/// Carries bytes between the session and its stream, and ends the session when
/// it is over: the stream closed and the client was told, or the client went quiet.
async fn pump(core: Rc<Core>, session: Rc<BoshSession>, mut stream: TcpStream) {
    let mut quiet: Option<(Instant, glommio::timer::Timer)> = None;
    futures_lite::future::poll_fn(|cx| loop {
        let mut state = session.state.borrow_mut();
        let state = &mut *state;
        while !state.to_stream.is_empty() && state.shut != Shut::Done {
            match Pin::new(&mut stream).poll_write(cx, &state.to_stream) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    state.to_stream.drain(..n.min(state.to_stream.len()));
                }
                Poll::Ready(_) => {
                    // The stream is gone; what it said is read below.
                    state.to_stream.clear();
                    state.end(None);
                }
                Poll::Pending => break,
            }
        }
        if state.shut == Shut::Pending && state.to_stream.is_empty() {
            let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
            state.shut = Shut::Done;
        }
        // Once the session is over (removed, or its stream ending), the stream is read
        // to its end whatever waits: found by a breaker, a session that went quiet
        // with 256 KiB waiting was never read again, so its end of file never came
        // and its socket pair stayed open for good.
        let removed = !core.bosh.borrow().contains_key(&state.sid);
        let over = removed || state.ending.is_some();
        if !state.eof && (state.ready.len() < READY_BYTES_MAX || over) {
            let mut buffer = core.read_buffer.borrow_mut();
            match Pin::new(&mut stream).poll_read(cx, &mut buffer[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    drop(buffer);
                    state.eof = true;
                    // Cut without a close: the connection failed underneath.
                    state.end(Some(Condition::RemoteConnectionFailed));
                    state.deliver();
                    continue;
                }
                Poll::Ready(Ok(n)) => {
                    if over && state.ready.len() >= READY_BYTES_MAX {
                        // Nobody will take more: dropped, as a dead TCP peer's would be.
                        continue;
                    }
                    state.take_output(buffer.get(..n).unwrap_or_default());
                    drop(buffer);
                    state.deliver();
                    continue;
                }
                Poll::Pending => {}
            }
        }
        if state.eof && (state.told_ending || removed) {
            core.bosh.borrow_mut().remove(&state.sid);
            return Poll::Ready(());
        }
        // Quiet: nothing held or waiting for longer than allowed.
        if !state.waiting() && !removed {
            let deadline = state.last_seen + state.quiet_for;
            if Instant::now() >= deadline {
                log::debug!("bosh: {} inactive", state.sid);
                core.bosh.borrow_mut().remove(&state.sid);
                state.end(Some(Condition::ItemNotFound));
                continue;
            }
            if quiet.as_ref().is_none_or(|(at, _)| *at != deadline) {
                quiet = Some((deadline, glommio::timer::Timer::new(deadline - Instant::now())));
            }
            if let Some((_, timer)) = &mut quiet {
                if Pin::new(timer).poll(cx).is_ready() {
                    quiet = None;
                    continue;
                }
            }
        }
        session.pump.set(Some(cx.waker().clone()));
        return Poll::Pending;
    })
    .await;
}
