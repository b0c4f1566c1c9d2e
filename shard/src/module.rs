//! The module interface: where the per-core runtime and the XMPP features meet.
//!
//! One trait, one instance per core per enabled module, state in the module. The
//! hook points are the ones MongooseIM (`mongoose_c2s` hooks + `gen_mod`), ejabberd
//! (hooks + IQ handlers per namespace) and Prosody (module events) converge on:
//!
//! ```text
//!  client --stanza--> session: from-check, stamp
//!     IQ get/set to the server / own account / another account --> handle_iq (by namespace)
//!     anything else --> on_send (in module order; Stop ends it) --> route
//!  route --> recipient's home core (here or a peer core; other nodes: the node of its
//!            sessions) --> delivery::decide (RFC 6121 section 8.5) --> on_deliver
//!            (in order: drop, divert, add copies, record) --> each target:
//!            on_push on the target's own core and node (filter, hold) --> mailbox
//!  bind / end of a session --> on_session_open / on_session_close
//!  other top-level elements (nonzas) --> on_nonza
//!  a Bind 2 request's inline enables (XEP-0386, with SASL2 later) --> on_inline_enable
//!  a module's event for an account, from another node --> on_event
//! ```
//! The order of the modules replaces hook priorities. A stanza that reaches this node
//! from another node passes the same `on_deliver` and `on_push` hooks as a local one.
//! The runtime names no XEP: everything a feature decides is in its module.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use starling_wire::error::{StanzaError, StanzaErrorCondition};
use starling_wire::jid::{FullJid, JidRef};
use starling_wire::stanza::{IqType, Stanza};

use crate::core::Core;
use crate::sessions::SessionId;

/// Work a module could not finish on the core; resolves to bytes for the requester.
pub type Pending = Pin<Box<dyn Future<Output = Vec<u8>>>>;

/// Work with no answer (loading an account, storing something).
pub type Background = Pin<Box<dyn Future<Output = ()>>>;

/// Who an IQ get/set is addressed to (RFC 6120 sections 8.1.1.1 and 10.3, RFC 6121
/// section 8.5.2.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqScope {
    /// The server's domain.
    Server,
    /// The requester's own account: no `to`, or its own bare JID.
    OwnAccount,
    /// Another local account's bare JID: the server answers on the account's behalf.
    OtherAccount,
}

/// An IQ payload a module answers: `(namespace, element name)` in the scopes listed.
#[derive(Clone, Copy, Debug)]
pub struct IqRoute {
    pub namespace: &'static str,
    pub element: &'static str,
    pub scopes: &'static [IqScope],
}

/// An IQ get or set for a module, with its single child element parsed.
pub struct Iq<'a> {
    /// The stamped stanza (its `from` is the requester's full JID).
    pub stanza: &'a Stanza<'a>,
    pub kind: IqType,
    pub scope: IqScope,
    /// The IQ's only child (RFC 6120 section 8.2.3).
    pub child: roxmltree::Node<'a, 'a>,
    /// The stanza as text, for slicing out elements by their range.
    pub text: &'a str,
    /// The requester (full JID).
    pub requester: &'a str,
    /// The account the IQ is about: the requester's (own-account scope) or the
    /// addressee's (other-account scope); the domain for the server scope.
    pub account: &'a str,
    /// The requesting session, when the request comes from one on this core.
    pub session: Option<SessionId>,
}

impl Iq<'_> {
    /// The requester's bare JID.
    pub fn requester_bare(&self) -> &str {
        self.requester.split('/').next().unwrap_or(self.requester)
    }

    /// A handle to answer this IQ later, away from the borrowed stanza.
    pub fn request(&self) -> Request {
        let from = match self.scope {
            // An answer about the user's own account comes from the account (or no
            // `from`, which the client reads as the same).
            IqScope::OwnAccount => "",
            IqScope::Server | IqScope::OtherAccount => self.account,
        };
        Request::new(self.stanza, from, self.requester)
    }

    pub fn result(&self, payload: &[u8]) -> Reply {
        Reply::Now(self.request().result(payload))
    }

    pub fn error(&self, condition: StanzaErrorCondition) -> Reply {
        Reply::Now(self.request().error(condition))
    }
}

/// A module's answer to an IQ.
pub enum Reply {
    /// The answer, ready.
    Now(Vec<u8>),
    /// The answer once storage replied. A session reads nothing more from its client
    /// until it is sent, so one client's requests are answered in order.
    Later(Pending),
}

/// A request kept for an answer written later, away from the borrowed stanza.
pub struct Request {
    bytes: Vec<u8>,
    /// Who answers (empty: the user's own account, no `from`).
    from: String,
    /// The requester's full JID.
    to: String,
}

impl Request {
    pub fn new(stanza: &Stanza<'_>, from: &str, to: &str) -> Request {
        Request { bytes: stanza.bytes.to_vec(), from: from.to_owned(), to: to.to_owned() }
    }

    /// The requester's full JID.
    pub fn requester(&self) -> &str {
        &self.to
    }

    /// The requester's bare JID.
    pub fn requester_bare(&self) -> &str {
        self.to.split('/').next().unwrap_or(&self.to)
    }

    /// `<iq type='result'>` with `payload` (XML, may be empty).
    pub fn result(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + payload.len());
        if let Ok(stanza) = Stanza::parse(&self.bytes) {
            stanza.write_iq_result(&self.from, &self.to, payload, &mut out);
        }
        out
    }

    pub fn error(&self, condition: StanzaErrorCondition) -> Vec<u8> {
        self.error_with(StanzaError::new(condition))
    }

    pub fn error_with(&self, error: StanzaError) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        if let Ok(stanza) = Stanza::parse(&self.bytes) {
            stanza.write_error_reply(&self.from, &self.to, &error, &mut out);
        }
        out
    }
}

/// What a hook decided.
pub enum Flow {
    /// Go on with the next module and then the runtime.
    Continue,
    /// Handled (or dropped): nothing more happens to this stanza.
    Stop,
    /// Handled, once this finishes (its bytes go to the sender's stream): the sender
    /// reads nothing more until then. Only from `on_send`.
    Wait(Pending),
}

/// The session a stanza comes from, in `on_send` and `on_nonza`.
pub struct Sender<'a> {
    pub jid: &'a FullJid,
    pub session: SessionId,
    /// Bytes for this client's own stream (answers, errors).
    pub out: &'a mut Vec<u8>,
}

/// One resource of the recipient account: a session here or on another node.
#[derive(Clone, Debug)]
pub struct Resource {
    /// Its full JID.
    pub full: Box<str>,
    pub available: bool,
    pub priority: i8,
    /// Module flags of the session (replicated with it; see [`SessionFlags`]).
    pub flags: SessionFlags,
    /// On this core (a session here), or the node that holds it.
    pub place: Place,
}

/// Where a resource lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Local(SessionId),
    Remote { node: u16 },
}

/// Bits modules keep on a session that other nodes must see (for example "this
/// resource wants message carbons"), replicated with it. Which bit means what is the
/// feature layer's business; the runtime only stores and replicates them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionFlags(pub u8);

impl SessionFlags {
    /// Flags 0..=6 are for modules; the top bit is the runtime's (available).
    pub const MODULE_BITS: u8 = 0x7f;

    pub fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }
}

/// A stanza at its recipient's home core, with what RFC 6121 section 8.5 decided
/// (`delivery::decide`). `on_deliver` hooks may change `targets` (drop, filter), set
/// `error` (bounce), add `copies`, or take the stanza over (`Flow::Stop`).
pub struct Delivery<'a> {
    /// The stamped stanza.
    pub stanza: &'a Stanza<'a>,
    pub to: &'a JidRef<'a>,
    /// The sender's JID text (empty if none).
    pub from: &'a str,
    pub decision: crate::delivery::Decision,
    /// Every resource of the recipient account, here and on other nodes.
    pub resources: &'a [Resource],
    /// Indexes into `resources` that get the stanza.
    pub targets: Vec<usize>,
    /// Further stanzas to push: (index into `resources`, bytes).
    pub copies: Vec<(usize, Vec<u8>)>,
    /// Answer the sender with this error instead (if the stanza is not an error).
    pub error: Option<StanzaErrorCondition>,
    /// Delivered before, to a session that ended without its client acknowledging it
    /// (XEP-0198), now going to offline storage (`decision` is `Store`): what records
    /// deliveries (the archive) already did.
    pub redelivery: bool,
}

/// What `on_push` decided for one stanza to one session.
pub enum Push {
    Send,
    /// Not for this session (for example an event its client does not want).
    Drop,
    /// The module keeps it and sends it later itself (for example while the client is
    /// inactive).
    Taken,
}

/// A feature. Every hook has a default that does nothing, so a module implements
/// only what it needs. All hooks run on the core that owns the session or account
/// concerned; none may block.
pub trait Module {
    /// The config name (`mod_roster`), for logs and for cluster events.
    fn name(&self) -> &'static str;

    /// XEP-0030 features this module adds to the server's `disco#info`.
    fn server_features(&self) -> &[&'static str] {
        &[]
    }

    /// XEP-0030 features this module adds to an account's `disco#info`.
    fn account_features(&self) -> &[&'static str] {
        &[]
    }

    /// XEP-0030 identities (category, type) this module adds to an account.
    fn account_identities(&self) -> &[(&'static str, &'static str)] {
        &[]
    }

    /// Stream features (raw XML) offered after authentication.
    fn stream_features(&self) -> String {
        String::new()
    }

    /// The IQ payloads this module answers.
    fn iqs(&self) -> &[IqRoute] {
        &[]
    }

    /// Answers an IQ get or set routed here by [`Module::iqs`]. For the other-account
    /// scope the runtime has checked that the account exists.
    fn handle_iq(&self, core: &Core, iq: &Iq<'_>) -> Reply {
        let _ = core;
        iq.error(StanzaErrorCondition::ServiceUnavailable)
    }

    /// A stanza from a client, after the from-check and stamping, before routing.
    /// `to` is `None` for a stanza without `to` (presence broadcast).
    fn on_send(&self, core: &Core, sender: &mut Sender<'_>, stanza: &Stanza<'_>, to: Option<&JidRef<'_>>) -> Flow {
        let _ = (core, sender, stanza, to);
        Flow::Continue
    }

    /// A stanza at its recipient's home core, local and cluster-routed alike.
    fn on_deliver(&self, core: &Core, delivery: &mut Delivery<'_>) -> Flow {
        let _ = (core, delivery);
        Flow::Continue
    }

    /// Whether this module has an `on_push` hook (the runtime skips the call, and the
    /// parse it needs, when no module does).
    fn wants_push(&self) -> bool {
        false
    }

    /// A stanza about to be written to the session `session` (`full`), on its own
    /// core: local deliveries, copies, and pushes from other nodes alike.
    fn on_push(&self, core: &Core, session: SessionId, full: &str, stanza: &Stanza<'_>) -> Push {
        let _ = (core, session, full, stanza);
        Push::Send
    }

    /// A top-level element that is not a stanza (XEP-0352 `<active/>`, ...); true if
    /// this module took it.
    fn on_nonza(&self, core: &Core, sender: &mut Sender<'_>, element: &[u8]) -> bool {
        let _ = (core, sender, element);
        false
    }

    /// XEP-0386 (Bind 2) inline features: the namespaces this module can enable
    /// inside a bind request, listed under `<inline/>` in the Bind 2 stream feature
    /// (ask the core with `Core::inline_features`).
    fn inline_features(&self) -> &[&'static str] {
        &[]
    }

    /// An element of a Bind 2 request in one of [`Module::inline_features`]'
    /// namespaces (e.g. XEP-0280's `<enable/>`, XEP-0352's `<inactive/>`), for the
    /// session just bound: enable it as the standalone request would. Returns what
    /// goes into `<bound/>` for it (often nothing). The runtime routes each element
    /// to the module whose namespace it is (`Core::inline_enable`).
    fn on_inline_enable(&self, core: &Core, sender: &mut Sender<'_>, element: &[u8]) -> Vec<u8> {
        let _ = (core, sender, element);
        Vec::new()
    }

    /// A session was bound. The session reads nothing from its client until the
    /// returned work (if any) is done: load what its stanzas will need.
    fn on_session_open(&self, core: &Core, jid: &FullJid, session: SessionId) -> Option<Background> {
        let _ = (core, jid, session);
        None
    }

    /// A session ended (it is already unbound, and `was_available` tells whether it
    /// had sent available presence).
    fn on_session_close(&self, core: &Core, jid: &FullJid, session: SessionId, was_available: bool) {
        let _ = (core, jid, session, was_available);
    }

    /// The session moves to another node (a client resumed it there, XEP-0198):
    /// return what this module keeps for it, and forget it here. Nothing is told to
    /// anyone: for its contacts the session goes on. What a module holds to deliver
    /// later goes to the session now ([`Core::push_raw`]): it travels with its mail.
    fn export_session(&self, core: &Core, jid: &FullJid, session: SessionId) -> Vec<u8> {
        let _ = (core, jid, session);
        Vec::new()
    }

    /// The session moved here from another node: `state` is what
    /// [`Module::export_session`] returned there (from peer input: parse it
    /// defensively).
    fn import_session(&self, core: &Core, jid: &FullJid, session: SessionId, state: &[u8]) {
        let _ = (core, jid, session, state);
    }

    /// Before a stanza is delivered to an account with no session on this node:
    /// load what `on_deliver` will need. [`Module::release`] follows.
    fn prepare(&self, core: &Core, account: &str) -> Option<Background> {
        let _ = (core, account);
        None
    }

    /// The delivery that [`Module::prepare`] was for is done.
    fn release(&self, core: &Core, account: &str) {
        let _ = (core, account);
    }

    /// An event this module sent for `account` from another node
    /// ([`Core::send_event`]).
    fn on_event(&self, core: &Core, account: &str, payload: &[u8]) {
        let _ = (core, account, payload);
    }
}

/// The modules of one core, in hook order.
pub type Modules = Vec<Rc<dyn Module>>;

/// Builds the modules of one core (called once per core at start, on that core).
pub type ModuleFactory = dyn Fn(&Rc<Core>) -> Modules + Send + Sync;
