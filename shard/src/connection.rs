//! A client connection from accept to a bound resource: drives the `wire` negotiation
//! machine, runs its database lookups off the core, moves the connection to its home
//! core, and binds the session there.
//!
//! The shell only reads, hands frames to `C2s`, performs the actions it asks for and
//! writes what it produced: every protocol decision is in `starling_wire::c2s`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;
use starling_wire::c2s::{Action, C2s, Context};
use starling_wire::error::{StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition};
use starling_wire::framer::{Frame, Framer};
use starling_wire::jid::{BareJid, FullJid};
use starling_wire::sasl::scram::ChannelBindings;

use crate::core::{Core, Transfer};
use crate::db::Registered;
use crate::io::{Io, Moving, Wake};
use crate::mailbox::Mailbox;
use crate::sessions::{Bound, Session, SessionId};
use crate::settings::ListenerTls;

/// What a negotiated connection asks of its home core.
pub(crate) enum Request {
    /// Bind a resource (`None`: the server picks one); `inline`: a Bind 2 request's
    /// elements to enable (XEP-0386), answered in SASL2's `<success/>`.
    Bind { resource: Option<String>, inline: Option<Vec<Vec<u8>>> },
    /// Resume the session `previd`, whose client handled `h` of its stanzas
    /// (XEP-0198 section 5, `resume.rs`).
    Resume { previd: String, h: u32 },
}

/// A failed resumption answered `item-not-found` is followed by a bind or another
/// resumption; after this many the client is refused.
const RESUMPTIONS_MAX: usize = 3;

/// A connection still negotiating.
struct Negotiating {
    io: Io,
    framer: Framer,
    c2s: C2s,
    /// Plaintext the negotiation produced, not yet handed to `io`.
    out: Vec<u8>,
    listener: usize,
    tls_reported: bool,
    /// The client's address, and the SASL failures of this stream already counted
    /// against it (`guard.rs`).
    address: Option<std::net::IpAddr>,
    failures_counted: u8,
}

/// Serves a freshly accepted connection.
pub(crate) async fn serve(core: Rc<Core>, stream: TcpStream, listener: usize, admitted: crate::guard::Admitted) {
    let _ = stream.set_nodelay(true);
    let settings = &core.shared.settings;
    let direct = settings.listeners[listener].tls == ListenerTls::Direct;
    let address = stream.peer_addr().ok().map(|a| a.ip());
    let http = settings.listeners[listener].http.is_some();
    let tls = if http { &settings.tls_http } else { &settings.tls_direct };
    let mut moving = match (direct, tls) {
        (false, _) => Moving::default(),
        (true, Some(config)) => match rustls::ServerConnection::new(config.clone()) {
            Ok(tls) => Moving::tls(tls),
            Err(error) => {
                log::error!("c2s: cannot start TLS: {error}");
                return;
            }
        },
        (true, None) => return,
    };
    moving.admitted = Some(admitted);
    let io = Io::new(stream, moving);
    if http {
        // An HTTP listener's client asks for the WebSocket upgrade or posts BOSH.
        crate::web::serve(core, io, listener, address, Vec::new()).await;
        return;
    }
    serve_stream(core, io, listener, address, direct, &[]).await;
}

/// Serves an XML stream from its header on: a c2s connection, a WebSocket after its
/// upgrade (`initial`: bytes that came with it) or a BOSH session's stream.
/// `secured`: the transport is encrypted already.
pub(crate) async fn serve_stream(
    core: Rc<Core>,
    io: Io,
    listener: usize,
    address: Option<std::net::IpAddr>,
    secured: bool,
    initial: &[u8],
) {
    let settings = &core.shared.settings;
    let mut conn = Negotiating {
        io,
        framer: Framer::new(settings.framer),
        c2s: C2s::new(secured),
        out: Vec::new(),
        listener,
        tls_reported: false,
        address,
        failures_counted: 0,
    };
    conn.report_tls(&core);
    let id = core.next_id();
    let mailbox = Rc::new(Mailbox::default());
    let live = core.register_live_guarded(id, mailbox.clone());
    let deadline = Instant::now() + core.limits().pre_auth_timeout;
    let negotiated = negotiate(&core, &mut conn, &mailbox, deadline, initial).await;
    // The attempt that ended the stream counts too.
    let _ = conn.count_failures(&core);
    drop(live);
    let Some((user, request)) = negotiated else {
        core.stats.login_failures.set(core.stats.login_failures.get() + 1);
        conn.io.queue(&conn.out);
        conn.io.close().await;
        return;
    };
    let home = core.home_of(user.as_str());
    if home == core.id {
        let bound =
            Negotiated { io: conn.io, framer: conn.framer, c2s: conn.c2s, out: conn.out, listener: conn.listener };
        establish(core, bound, user, request).await;
        return;
    }
    move_to(&core, home, conn, user, request);
}

/// Hands the connection to its home core. The socket is duplicated so this core's
/// handle can be dropped without closing the connection.
fn move_to(core: &Core, home: usize, mut conn: Negotiating, user: BareJid, request: Request) {
    // SAFETY: the fd is open: `conn.io.stream` owns it for the duration of this borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(conn.io.stream.as_raw_fd()) };
    let fd = match borrowed.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(error) => {
            log::warn!("c2s: cannot duplicate a socket to move it: {error}");
            return;
        }
    };
    conn.io.queue(&conn.out);
    let transfer = Transfer {
        fd,
        moving: conn.io.take_moving(),
        framer: conn.framer,
        c2s: conn.c2s,
        listener: conn.listener,
        user,
        request,
    };
    core.adopt_on(home, crate::core::Adoption::C2s(Box::new(transfer)));
}

/// Serves a connection another core moved here.
pub(crate) async fn adopt(core: Rc<Core>, transfer: Box<Transfer>) {
    let Transfer { fd, moving, framer, c2s, listener, user, request } = *transfer;
    // SAFETY: `fd` is an open socket we own; ownership passes to the socket.
    let socket = unsafe { socket2::Socket::from_raw_fd(fd.into_raw_fd()) };
    let io = Io::new(TcpStream::from(socket), moving);
    core.stats.moved_in.set(core.stats.moved_in.get() + 1);
    establish(core, Negotiated { io, framer, c2s, out: Vec::new(), listener }, user, request).await;
}

/// The parts of a connection that survive negotiation.
struct Negotiated {
    io: Io,
    framer: Framer,
    c2s: C2s,
    out: Vec<u8>,
    listener: usize,
}

/// On the user's home core (this one): binds a new session, or hands the connection
/// to the session it resumes. After a failed resumption (`item-not-found`) the
/// negotiation goes on here until the client binds, resumes or leaves.
async fn establish(core: Rc<Core>, mut connection: Negotiated, user: BareJid, mut request: Request) {
    debug_assert_eq!(core.home_of(user.as_str()), core.id);
    for _ in 0..RESUMPTIONS_MAX {
        let (previd, h) = match request {
            Request::Bind { resource, inline } => return bind_session(core, connection, user, resource, inline).await,
            Request::Resume { previd, h } => (previd, h),
        };
        let Negotiated { io, framer, mut c2s, mut out, listener } = connection;
        // The new connection's answers so far go out before <resumed/>.
        let mut io = io;
        io.queue(&out);
        out.clear();
        let listener16 = u16::try_from(listener).unwrap_or(u16::MAX);
        let resumption = Box::new(crate::resume::Resumption { io, framer, h, listener: listener16 });
        let back = match crate::resume::hand_over(&core, user.as_str(), &previd, resumption) {
            Ok(()) => {
                c2s.handle_resumed();
                log::debug!("c2s: {user} resumes {previd}");
                return;
            }
            Err(back) => back,
        };
        // Not on this node: the session may be parked on another one.
        let back = match crate::resume::take_from_peers(&core, user.as_str(), &previd, h).await {
            Some(handed) => match adopt_handed(&core, back, &user, &previd, *handed) {
                Ok(()) => {
                    c2s.handle_resumed();
                    log::debug!("c2s: {user} resumes {previd}, moved here from another node");
                    return;
                }
                Err(back) => back,
            },
            None => back,
        };
        c2s.handle_resume_failed(&mut out);
        let address = back.io.stream.peer_addr().ok().map(|a| a.ip());
        let mut conn = Negotiating {
            io: back.io,
            framer: back.framer,
            c2s,
            out,
            listener,
            tls_reported: true,
            address,
            failures_counted: 0,
        };
        let mailbox = Rc::new(Mailbox::default());
        let id = core.next_id();
        let live = core.register_live_guarded(id, mailbox.clone());
        let deadline = Instant::now() + core.limits().pre_auth_timeout;
        let negotiated = negotiate(&core, &mut conn, &mailbox, deadline, &[]).await;
        drop(live);
        let Some((_, next)) = negotiated else {
            conn.io.queue(&conn.out);
            conn.io.close().await;
            return;
        };
        connection = Negotiated { io: conn.io, framer: conn.framer, c2s: conn.c2s, out: conn.out, listener };
        request = next;
    }
    let Negotiated { mut io, .. } = connection;
    let mut out = Vec::new();
    StreamError::with_text(StreamErrorCondition::PolicyViolation, "too many resumption attempts")
        .write_closing(&mut out);
    io.queue(&out);
    io.close().await;
}

/// A session moved here from another node for the connection in `back` (XEP-0198
/// resumption there, `resume.rs`): binds it with its state, answers `<resumed/>`,
/// queues its stanzas, and serves it. `Err` gives the connection back when it
/// cannot be bound; the stanzas are routed again then.
fn adopt_handed(
    core: &Rc<Core>,
    back: Box<crate::resume::Resumption>,
    user: &BareJid,
    previd: &str,
    handed: crate::resume::Handed,
) -> Result<(), Box<crate::resume::Resumption>> {
    let Ok(full) = handed.jid.parse::<FullJid>() else { return Err(back) };
    if full.bare_str() != user.as_str() {
        return Err(back);
    }
    let id = core.next_id();
    let mailbox = Rc::new(Mailbox::default());
    let jid = match bind(core, user, Some(full.resource().to_owned()), SessionId(id), mailbox.clone()) {
        Ok(jid) => jid,
        Err(_) => {
            crate::router::reroute_undelivered(core, &full, handed.stanzas);
            return Err(back);
        }
    };
    if handed.available {
        core.set_availability(jid.as_str(), true, handed.priority);
    }
    core.set_session_flag(jid.as_str(), handed.flags, true);
    for (name, state) in &handed.exports {
        if let Some(module) = core.module_list().iter().find(|m| m.name() == name) {
            module.import_session(core, &jid, SessionId(id), state);
        }
    }
    let crate::resume::Resumption { mut io, framer, listener, .. } = *back;
    let mut acks = crate::resume::Acks::new(Some(previd.into()), handed.resume_seconds);
    acks.resumed_from(handed.inbound, handed.acked);
    let entry = crate::resume::Resumable {
        user: user.as_str().into(),
        mailbox: mailbox.clone(),
        taken: std::cell::RefCell::new(None),
    };
    core.resumable.borrow_mut().insert(previd.into(), Rc::new(entry));
    let mut resumed = Vec::new();
    starling_wire::sm::write_resumed(previd, handed.inbound, &mut resumed);
    io.queue(&resumed);
    // Sent (and counted) from the client's h on, like any new stanza.
    let limit = usize::MAX / 2;
    for stanza in &handed.stanzas {
        mailbox.push(stanza, limit, true);
    }
    core.stats.logins.set(core.stats.logins.get() + 1);
    core.count("sm_resumed", 1);
    core.register_live(id, mailbox.clone());
    let state = crate::session::State::new(jid, SessionId(id), listener, Some(Box::new(acks)));
    let session = crate::session::run(core.clone(), io, framer, state, mailbox);
    crate::contain::spawn(core.clone(), "a session", session);
    Ok(())
}

/// Binds the session on its home core (this one) and starts its own task, so an
/// established session's task holds only what the session needs (see `budget.rs`).
async fn bind_session(
    core: Rc<Core>,
    connection: Negotiated,
    user: BareJid,
    resource: Option<String>,
    inline: Option<Vec<Vec<u8>>>,
) {
    let Negotiated { mut io, framer, mut c2s, mut out, listener } = connection;
    let id = core.next_id();
    let mailbox = Rc::new(Mailbox::default());
    let jid = match bind(&core, &user, resource, SessionId(id), mailbox.clone()) {
        Ok(jid) => jid,
        Err(error) => {
            c2s.handle_bind_refused(user, error, &mut out);
            let settings = core.shared.settings.listeners[listener].c2s.clone();
            {
                let mut entropy = core.entropy.borrow_mut();
                let mut context = Context { settings: &settings, entropy: &mut *entropy };
                let refusal = StreamError::with_text(StreamErrorCondition::PolicyViolation, "too many sessions");
                c2s.fail(&mut context, refusal, &mut out);
            }
            io.queue(&out);
            io.close().await;
            return;
        }
    };
    // XEP-0386: what a Bind 2 request enables, answered inside <bound/>.
    let mut bound = Vec::new();
    let mut replies = Vec::new();
    let mut acks = None;
    for element in inline.iter().flatten() {
        let sm = core.shared.settings.stream_management.and_then(|_| starling_wire::sm::parse(element));
        match sm {
            Some(Ok(starling_wire::sm::Request::Enable { resume, max })) if acks.is_none() => {
                acks = Some(crate::session::enable_acks(&core, &jid, Some(mailbox.clone()), resume, max, &mut bound));
            }
            Some(_) => {}
            None => {
                let mut sender = crate::module::Sender { jid: &jid, session: SessionId(id), out: &mut replies };
                if let Some(answer) = core.inline_enable(&mut sender, element) {
                    bound.extend_from_slice(&answer);
                }
            }
        }
    }
    if let Some(acks) = acks.as_mut() {
        // <enabled/> went out inside <success/>: count from the next stanza.
        acks.resumed_from(0, 0);
    }
    c2s.handle_bound(&jid, &bound, &mut out);
    out.extend_from_slice(&replies);
    drop(c2s);
    io.queue(&out);
    core.stats.logins.set(core.stats.logins.get() + 1);
    // The session task unregisters it when it ends (`session::Task`).
    core.register_live(id, mailbox.clone());
    log::debug!("c2s: {jid} bound on core {}", core.id);
    let listener = u16::try_from(listener).unwrap_or(u16::MAX);
    let state = crate::session::State::new(jid, SessionId(id), listener, acks);
    let session = crate::session::run(core.clone(), io, framer, state, mailbox);
    crate::contain::spawn(core.clone(), "a session", session);
}

/// Registers the session; replaces (with `conflict`) a session of the same full JID.
fn bind(
    core: &Core,
    user: &BareJid,
    resource: Option<String>,
    id: SessionId,
    mailbox: Rc<Mailbox>,
) -> Result<FullJid, StanzaError> {
    let mut sessions = core.sessions.borrow_mut();
    let existing = sessions.sessions(user.as_str());
    let resource = resource.unwrap_or_else(|| random_resource(core));
    let replaces = existing.iter().any(|s| s.jid.resource() == resource);
    if !replaces && existing.len() >= core.limits().sessions_per_user_max {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::ResourceConstraint,
            "too many sessions for this account",
        ));
    }
    let jid = user.with_resource(&resource).map_err(|_| StanzaError::new(StanzaErrorCondition::BadRequest))?;
    let created_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let session =
        Session { id, jid: jid.clone(), mailbox, available: false, priority: 0, created_ms, flags: Default::default() };
    let entry = session.entry();
    if let Bound::Replaced(old) = sessions.bind(session) {
        old.kick(StreamErrorCondition::Conflict);
    }
    drop(sessions);
    if let Some(cluster) = &core.cluster {
        cluster.publish(jid.as_str(), Some(entry));
    }
    Ok(jid)
}

fn random_resource(core: &Core) -> String {
    use starling_wire::c2s::Entropy;
    let mut bytes = [0u8; 8];
    core.entropy.borrow_mut().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the negotiation until a resource is requested (`Some`) or the stream ends
/// (`None`; the closing bytes are in `conn.out`). `initial` is XML that arrived with
/// the WebSocket upgrade, handled before anything is read.
async fn negotiate(
    core: &Core,
    conn: &mut Negotiating,
    mailbox: &Mailbox,
    deadline: Instant,
    initial: &[u8],
) -> Option<(BareJid, Request)> {
    let limit = core.limits().queued_bytes_per_connection_max;
    let mut timer = glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now()));
    // A negotiating stream sends nothing to anyone else, so it never waits for others.
    let mut paused = Vec::new();
    let mut initial = Some(initial).filter(|bytes| !bytes.is_empty());
    loop {
        conn.io.queue(&conn.out);
        conn.out.clear();
        if let Some(bytes) = initial.take() {
            let mut next = conn.pump(core, bytes).ok()?;
            while let Some(action) = next {
                next = match action {
                    Action::Bind { user, resource } => return Some((user, Request::Bind { resource, inline: None })),
                    Action::Bind2 { user, resource, inline } => {
                        return Some((user, Request::Bind { resource: Some(resource), inline: Some(inline) }))
                    }
                    Action::Resume { user, previd, h } => return Some((user, Request::Resume { previd, h })),
                    other => conn.perform(core, other).await.ok()?,
                };
            }
            continue;
        }
        let mut next = match conn.io.wait(core, mailbox, Some(&mut timer), limit, &mut paused).await {
            Wake::Read(n) => conn.pump_read(core, n).ok()?,
            Wake::Mail => match mailbox.kicked() {
                Some(condition) => {
                    conn.fail(core, StreamError::new(condition));
                    return None;
                }
                None => None,
            },
            Wake::Timeout => {
                // RFC 6120 section 4.6.3: closing for a local timeout policy.
                conn.fail(
                    core,
                    StreamError::with_text(StreamErrorCondition::PolicyViolation, "authentication timeout"),
                );
                return None;
            }
            Wake::Stalled => {
                conn.fail(core, StreamError::with_text(StreamErrorCondition::ConnectionTimeout, "not reading"));
                return None;
            }
            Wake::Resumed => None,
            Wake::Closed => return None,
        };
        conn.count_failures(core)?;
        while let Some(action) = next {
            next = match action {
                Action::Bind { user, resource } => return Some((user, Request::Bind { resource, inline: None })),
                Action::Bind2 { user, resource, inline } => {
                    return Some((user, Request::Bind { resource: Some(resource), inline: Some(inline) }))
                }
                Action::Resume { user, previd, h } => return Some((user, Request::Resume { previd, h })),
                other => conn.perform(core, other).await.ok()?,
            };
            conn.count_failures(core)?;
        }
    }
}

impl Negotiating {
    fn settings(&self, core: &Core) -> std::sync::Arc<starling_wire::c2s::C2sSettings> {
        core.shared.settings.listeners[self.listener].c2s.clone()
    }

    /// Counts new SASL failures against the client's address (mod_fail2ban); `None`
    /// (the stream closed with `policy-violation`) when that banned the address.
    fn count_failures(&mut self, core: &Core) -> Option<()> {
        let failures = self.c2s.sasl_failures();
        let Some(address) = self.address else { return Some(()) };
        let mut banned = false;
        while self.failures_counted < failures {
            self.failures_counted += 1;
            banned |= core.shared.guard.auth_failed(address, Instant::now());
        }
        if banned {
            // Counted even when this failure also ended the stream (the third of
            // three, say): the second breaker's counter stayed at 0 for that.
            core.count("c2s_auth_bans", 1);
            log::warn!("c2s: {address} banned after too many failed authentications");
            if !self.c2s.is_closed() {
                self.fail(core, banned_error());
            }
            return None;
        }
        Some(())
    }

    /// Closes the stream with `error` (the bytes go to `out`).
    fn fail(&mut self, core: &Core, error: StreamError) {
        let settings = self.settings(core);
        let mut entropy = core.entropy.borrow_mut();
        let mut context = Context { settings: &settings, entropy: &mut *entropy };
        log::debug!("c2s: closing a negotiating stream: {:?}", error.condition);
        self.c2s.fail(&mut context, error, &mut self.out);
    }

    /// Handles `n` bytes from the read buffer: decrypts and unframes them if TLS or
    /// WebSocket is on, then frames and negotiates. `Ok(Some)` is an action needing async work.
    fn pump_read(&mut self, core: &Core, n: usize) -> Result<Option<Action>, ()> {
        let read = core.read_buffer.borrow();
        if self.io.is_plain() {
            return self.pump(core, &read[..n]);
        }
        let mut plain = core.plain_buffer.borrow_mut();
        plain.clear();
        if let Err(error) = self.io.unwrap_input(&read[..n], &mut plain) {
            log::debug!("c2s: {error}");
            return Err(());
        }
        drop(read);
        self.report_tls(core);
        self.pump(core, &plain)
    }

    /// Once the handshake is done, tells the negotiation what SCRAM can bind to.
    fn report_tls(&mut self, core: &Core) {
        let Some(tls) = self.io.tls() else { return };
        if self.tls_reported || tls.is_handshaking() {
            return;
        }
        self.tls_reported = true;
        let tls_exporter = (tls.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3))
            .then(|| tls.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", Some(b"")).ok())
            .flatten();
        let bindings =
            ChannelBindings { tls_exporter, tls_server_end_point: core.shared.settings.tls_server_end_point.clone() };
        self.c2s.handle_tls_established(bindings);
    }

    /// Frames `input` (after anything stashed) and negotiates until more input is
    /// needed or an action needs async work; the unread rest is stashed.
    fn pump(&mut self, core: &Core, input: &[u8]) -> Result<Option<Action>, ()> {
        let settings = self.settings(core);
        let mut input = input;
        loop {
            let frame = match self.framer.next(&mut input) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(None),
                Err(error) => {
                    log::debug!("c2s: refusing a stream: {error}");
                    let mut entropy = core.entropy.borrow_mut();
                    let mut context = Context { settings: &settings, entropy: &mut *entropy };
                    self.c2s.fail(&mut context, error.into(), &mut self.out);
                    return Err(());
                }
            };
            // Regressions (breakers): connections opened before a ban each had a
            // password checked after it (920 guesses from one address), and so did
            // SCRAM exchanges that had their challenge before it (500; a right proof
            // succeeded). Nothing of a banned address's negotiation is handled.
            let banned = self.address.is_some_and(|address| core.shared.guard.is_banned(address, Instant::now()));
            if banned && matches!(frame, Frame::Element(_)) {
                let mut entropy = core.entropy.borrow_mut();
                let mut context = Context { settings: &settings, entropy: &mut *entropy };
                self.c2s.fail(&mut context, banned_error(), &mut self.out);
                return Err(());
            }
            let mut entropy = core.entropy.borrow_mut();
            let mut context = Context { settings: &settings, entropy: &mut *entropy };
            match self.c2s.handle_frame(&mut context, frame, &mut self.out) {
                Ok(Action::Continue) => {}
                Ok(Action::Authenticated { .. }) => self.framer.reset(),
                Ok(Action::StartTls) => return Ok(Some(Action::StartTls)),
                Ok(Action::Closed) | Err(_) => return Err(()),
                Ok(other) => {
                    self.framer.stash(input);
                    return Ok(Some(other));
                }
            }
        }
    }

    /// Performs `action` (STARTTLS, a credential lookup, a password check), feeds the
    /// answer back, and continues with any stashed frames.
    async fn perform(&mut self, core: &Core, action: Action) -> Result<Option<Action>, ()> {
        let settings = self.settings(core);
        match action {
            Action::StartTls => {
                self.io.queue(&self.out);
                self.out.clear();
                if !self.io.flush(Duration::from_secs(5)).await {
                    return Err(());
                }
                // Plaintext sent after <starttls/> must not be read as if it came over TLS.
                self.framer.discard_buffered();
                self.framer.reset();
                let config = core.shared.settings.tls_starttls.clone().ok_or(())?;
                self.io.start_tls(config).map_err(|_| ())?;
                return Ok(None);
            }
            Action::FetchCredentials { user, hash } => {
                let result = core.shared.accounts.credentials(user, hash).await;
                let mut entropy = core.entropy.borrow_mut();
                let mut context = Context { settings: &settings, entropy: &mut *entropy };
                match result {
                    Ok(credentials) => self.c2s.handle_credentials(&mut context, credentials, &mut self.out),
                    Err(error) => {
                        log::warn!("c2s: credential lookup failed: {error}");
                        self.c2s.handle_store_failure(&mut self.out);
                    }
                }
            }
            Action::VerifyPassword { user, password } => {
                // An unknown user costs the same PBKDF2 as a real one.
                let secret = settings.decoy_secret.clone();
                let result =
                    core.shared.accounts.verify_password(user, password, secret, settings.scram_iterations).await;
                let mut entropy = core.entropy.borrow_mut();
                let mut context = Context { settings: &settings, entropy: &mut *entropy };
                match result {
                    Ok(correct) => match self.c2s.handle_password_verdict(&mut context, correct, &mut self.out) {
                        Ok(Action::Authenticated { .. }) => self.framer.reset(),
                        // SASL2: bind now (Bind 2, no stream restart), or issue a token
                        // first (regression: a PLAIN login asking for a FAST token hung).
                        Ok(next @ (Action::Bind2 { .. } | Action::IssueFastToken { .. })) => return Ok(Some(next)),
                        Ok(_) => {}
                        Err(_) => return Err(()),
                    },
                    Err(error) => {
                        log::warn!("c2s: password check failed: {error}");
                        self.c2s.handle_store_failure(&mut self.out);
                    }
                }
            }
            Action::FetchFastTokens { user, user_agent } => {
                let Some(fast) = settings.fast.clone() else { return Err(()) };
                let now = unix_seconds();
                let records = core.shared.accounts.fast_tokens(user.clone(), user_agent.clone(), now).await;
                let mut entropy = core.entropy.borrow_mut();
                let mut context = Context { settings: &settings, entropy: &mut *entropy };
                match records {
                    Ok(records) => {
                        // Records come newest first: a login with an older one, or with one
                        // near its expiry, gets a new token (rotation).
                        let tokens: Vec<(String, bool)> = records
                            .iter()
                            .enumerate()
                            .map(|(index, record)| {
                                let token = fast_token(&fast.secret, &user, &user_agent, &record.id, record.expires);
                                let rotate = index > 0 || record.expires <= now + fast.rotate_before.as_secs();
                                (token, rotate)
                            })
                            .collect();
                        let verdict = self.c2s.handle_fast_tokens(&mut context, &tokens, &mut self.out);
                        if matches!(verdict, Ok(Action::Bind2 { .. } | Action::IssueFastToken { .. })) {
                            core.count("c2s_fast_logins", 1);
                        }
                        match verdict {
                            Ok(bind @ Action::Bind2 { .. }) => return Ok(Some(bind)),
                            Ok(issue @ Action::IssueFastToken { .. }) => return Ok(Some(issue)),
                            Ok(_) => {}
                            Err(_) => return Err(()),
                        }
                    }
                    Err(error) => {
                        log::warn!("c2s: FAST token lookup failed: {error}");
                        self.c2s.handle_store_failure(&mut self.out);
                    }
                }
            }
            Action::IssueFastToken { user, user_agent } => {
                let Some(fast) = settings.fast.clone() else { return Err(()) };
                let mut id = [0u8; 16];
                {
                    use starling_wire::c2s::Entropy;
                    core.entropy.borrow_mut().fill(&mut id);
                }
                let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
                let expires = unix_seconds() + fast.validity.as_secs();
                let record = crate::db::FastToken { id: id.clone(), expires };
                let stored = core.shared.accounts.issue_fast_token(user.clone(), user_agent.clone(), record).await;
                let issued = match stored {
                    Ok(()) => {
                        let expiry = time::OffsetDateTime::from_unix_timestamp(expires as i64)
                            .ok()
                            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
                        expiry.map(|expiry| (fast_token(&fast.secret, &user, &user_agent, &id, expires), expiry))
                    }
                    Err(error) => {
                        log::warn!("c2s: a FAST token could not be stored: {error}");
                        None
                    }
                };
                let mut entropy = core.entropy.borrow_mut();
                let mut context = Context { settings: &settings, entropy: &mut *entropy };
                let next = self.c2s.handle_fast_token(&mut context, issued, &mut self.out);
                if let bind @ Action::Bind2 { .. } = next {
                    return Ok(Some(bind));
                }
            }
            Action::Register { user, password } => {
                let outcome = register(core, &self.io, user, password, settings.scram_iterations).await;
                self.c2s.handle_registered(outcome, &mut self.out);
            }
            other => {
                log::error!("c2s: unexpected action {other:?}");
                return Err(());
            }
        }
        self.pump(core, &[])
    }
}

/// Seconds since the UNIX epoch.
fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// XEP-0484: the token with record id `id` of `user` for `user_agent`, expiring at
/// `expires`: derived with the node's secret, so the stored record alone is no token.
fn fast_token(secret: &[u8], user: &BareJid, user_agent: &str, id: &str, expires: u64) -> String {
    use base64::Engine;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    for part in [b"starling fast token".as_slice(), user.as_str().as_bytes(), user_agent.as_bytes(), id.as_bytes()] {
        context.update(part);
        context.update(b"\0");
    }
    context.update(&expires.to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(context.sign().as_ref())
}

/// What a banned address's streams are closed with (RFC 6120 section 4.9.3.14).
fn banned_error() -> StreamError {
    let text = "too many failed authentications from this address; try again later";
    StreamError::with_text(StreamErrorCondition::PolicyViolation, text)
}

/// XEP-0077: creates `user` unless this client's address registered an account less
/// than `registration_interval` ago (MongooseIM's `registration_timeout`); the store
/// keeps the addresses, so the limit holds across cores, nodes and restarts.
async fn register(
    core: &Core,
    io: &Io,
    user: BareJid,
    password: String,
    iterations: std::num::NonZeroU32,
) -> Result<(), StanzaErrorCondition> {
    let interval = core.limits().registration_interval;
    let address = io.stream.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    let limit = (!interval.is_zero()).then_some((address, interval));
    let created = core.shared.accounts.register(user, password, iterations, limit).await;
    match created {
        Ok(Registered::Created) => Ok(()),
        Ok(Registered::Exists) => Err(StanzaErrorCondition::Conflict),
        Ok(Registered::TooSoon) => Err(StanzaErrorCondition::ResourceConstraint),
        Err(error) => {
            log::warn!("c2s: in-band registration failed: {error}");
            Err(StanzaErrorCondition::InternalServerError)
        }
    }
}
