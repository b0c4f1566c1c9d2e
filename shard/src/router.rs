//! Routing and delivery between local accounts: a stamped stanza goes to the core
//! that homes its recipient (zero or one hop), which decides by RFC 6121 section 8.5
//! (`delivery.rs`) where it goes, lets the modules refine that (`on_deliver`), and
//! pushes it to each target (`on_push`, then the session's mailbox, or the node that
//! holds the session).
//!
//! ```text
//!  route(to_bare) --same core--> deliver --------------------------------+
//!                 \--peer core--> outbox --> deliver                     |
//!  deliver: sessions here? ----------------------------------------------> deliver_now
//!           only on another node --> Deliver frame --> that node: deliver_forwarded
//!           nowhere --> look the account up, prepare modules (in arrival order) --^
//!  deliver_now: decide --> on_deliver (modules) --> push targets and copies / error /
//!               IQ answered on the account's behalf
//! ```
//! Cost per routed stanza (the budget `benches/route.rs` measures): one start-tag scan
//! and one JID parse at the sender, one copy into a batch when the recipient is on
//! another core, one start-tag scan and JID parse at the recipient's core, the
//! resource list (one small allocation per resource), and one append to the
//! recipient's mailbox. The write syscall is shared by every stanza queued for that
//! connection before its task runs.

use std::collections::HashMap;
use std::rc::Rc;

use starling_wire::error::{StanzaError, StanzaErrorCondition};
use starling_wire::jid::{FullJid, JidRef};
use starling_wire::stanza::{IqType, Stanza, StanzaKind};

use crate::core::Core;
use crate::delivery::{Address, Candidate, Decision, Kind};
use crate::limits::ON_BEHALF_IN_FLIGHT_MAX;
use crate::module::{Delivery, Flow, Iq, IqScope, Module, Place, Push, Reply, Resource, SessionFlags};

/// Sends a stamped stanza to the account `to_bare` (normalised), wherever it is homed.
pub(crate) fn route(core: &Core, to_bare: &str, stanza: &[u8]) {
    core.stats.stanzas_routed.set(core.stats.stanzas_routed.get() + 1);
    let home = core.home_of(to_bare);
    if home == core.id {
        deliver(core, stanza);
    } else {
        core.send_to_core(home, stanza);
    }
}

/// Delivers a stamped stanza addressed to an account homed on this core.
pub(crate) fn deliver(core: &Core, bytes: &[u8]) {
    deliver_as(core, bytes, false);
}

/// Delivers a stanza another node handed to this one (it holds the account's
/// sessions): never handed on again.
pub(crate) fn deliver_forwarded(core: &Core, bytes: &[u8]) {
    deliver_as(core, bytes, true);
}

fn deliver_as(core: &Core, bytes: &[u8], forwarded: bool) {
    let Ok(stanza) = Stanza::parse(bytes) else {
        log::error!("router: unparsable stanza reached delivery");
        return;
    };
    let Some(to) = stanza.to.and_then(|to| to.value()) else { return };
    let Ok(to) = JidRef::parse(to) else { return };
    let bare = to.bare_str();
    let local = !core.sessions.borrow().sessions(bare).is_empty();
    if !local {
        if !forwarded && hand_to_node(core, &to, bytes) {
            return;
        }
        if !has_remote(core, bare) {
            return wait_for_account(core, bare, bytes);
        }
    }
    deliver_now(core, &stanza, &to, true);
}

/// The account has no session here but has some on another node: that node delivers
/// (it holds the account's state). The node of the addressed resource, or of the
/// highest-priority available one (ties: the lowest node number).
fn hand_to_node(core: &Core, to: &JidRef<'_>, bytes: &[u8]) -> bool {
    let Some(cluster) = &core.cluster else { return false };
    let node = {
        let replica = cluster.replica.borrow();
        let sessions = replica.store.sessions(to.bare_str());
        let reachable = sessions.iter().filter(|s| cluster.reachable(s.owner.node_num));
        let addressed = reachable.clone().find(|s| to.is_full() && &*s.full == to.as_str());
        let best = reachable.max_by_key(|s| (s.entry.available, s.entry.priority, std::cmp::Reverse(s.owner.node_num)));
        addressed.or(best).map(|s| s.owner.node_num)
    };
    match node {
        Some(node) => cluster.deliver(core, node, to.bare_str(), bytes),
        None => false,
    }
}

/// Whether `bare` has a session on another node that can be reached now.
fn has_remote(core: &Core, bare: &str) -> bool {
    core.cluster
        .as_ref()
        .is_some_and(|c| c.replica.borrow().store.sessions(bare).iter().any(|s| c.reachable(s.owner.node_num)))
}

/// The account has no session anywhere: whether it exists and what the modules need
/// (its block list, ...) come from storage first. Stanzas for it wait in arrival
/// order meanwhile, so offline messages keep their order.
fn wait_for_account(core: &Core, bare: &str, bytes: &[u8]) {
    let mut waiting = core.waiting_accounts.borrow_mut();
    if let Some(queue) = waiting.get_mut(bare) {
        queue.push(bytes.to_vec());
        return;
    }
    waiting.insert(bare.into(), vec![bytes.to_vec()]);
    drop(waiting);
    let Ok(account) = bare.parse::<starling_wire::jid::BareJid>() else {
        core.waiting_accounts.borrow_mut().remove(bare);
        return;
    };
    let task_core = core.rc();
    crate::contain::spawn(core.rc(), "a delivery to an account with no session", async move {
        let core = task_core;
        let exists = core.shared.accounts.exists(account.clone()).await.unwrap_or_else(|error| {
            log::warn!("router: cannot look up {account}: {error}");
            // Unknown: deliver as if it exists (stored offline or bounced by the
            // modules, rather than an answer that it does not exist).
            true
        });
        let preparing: Vec<_> = core.module_list().iter().filter_map(|m| m.prepare(&core, account.as_str())).collect();
        for work in preparing {
            work.await;
        }
        let queue = core.waiting_accounts.borrow_mut().remove(account.as_str()).unwrap_or_default();
        for bytes in queue {
            let Ok(stanza) = Stanza::parse(&bytes) else { continue };
            let Some(to) = stanza.to.and_then(|to| to.value()) else { continue };
            let Ok(to) = JidRef::parse(to) else { continue };
            deliver_now(&core, &stanza, &to, exists);
        }
        for module in core.module_list() {
            module.release(&core, account.as_str());
        }
    });
}

/// Every resource of `bare`: sessions here, and replicated ones on other nodes that
/// can be reached now.
pub(crate) fn resources(core: &Core, bare: &str) -> Vec<Resource> {
    let mut all: Vec<Resource> = core
        .sessions
        .borrow()
        .sessions(bare)
        .iter()
        .map(|s| Resource {
            full: s.jid.as_str().into(),
            available: s.available,
            priority: s.priority,
            flags: s.flags,
            place: Place::Local(s.id),
        })
        .collect();
    if let Some(cluster) = &core.cluster {
        let replica = cluster.replica.borrow();
        all.extend(replica.store.sessions(bare).iter().filter(|s| cluster.reachable(s.owner.node_num)).map(|s| {
            Resource {
                full: s.full.clone(),
                available: s.entry.available,
                priority: s.entry.priority,
                flags: SessionFlags(s.entry.flags),
                place: Place::Remote { node: s.owner.node_num },
            }
        }));
    }
    all
}

pub(crate) fn any_available_with_flag(core: &Core, bare: &str, flag: u8) -> bool {
    let here = core.sessions.borrow().sessions(bare).iter().any(|s| s.available && s.flags.has(flag));
    here || core.cluster.as_ref().is_some_and(|cluster| {
        let replica = cluster.replica.borrow();
        replica
            .store
            .sessions(bare)
            .iter()
            .any(|s| s.entry.available && SessionFlags(s.entry.flags).has(flag) && cluster.reachable(s.owner.node_num))
    })
}

/// Decides, runs the modules' `on_deliver` hooks and carries out the result.
fn deliver_now(core: &Core, stanza: &Stanza<'_>, to: &JidRef<'_>, exists: bool) {
    let Some(kind) = kind_of(stanza) else { return };
    core.stats.stanzas_delivered.set(core.stats.stanzas_delivered.get() + 1);
    let resources = resources(core, to.bare_str());
    let candidates: Vec<Candidate> =
        resources.iter().map(|r| Candidate { available: r.available, priority: r.priority }).collect();
    let address = match to.is_full() {
        false => Address::Bare,
        true => Address::Full(resources.iter().position(|r| &*r.full == to.as_str())),
    };
    let decision = crate::delivery::decide(kind, address, exists, &candidates);
    let from = stanza.from.and_then(|f| f.value()).unwrap_or_default();
    let targets = match &decision {
        Decision::Deliver(targets) => targets.clone(),
        _ => Vec::new(),
    };
    let mut delivery = Delivery {
        stanza,
        to,
        from: &from,
        decision,
        resources: &resources,
        targets,
        copies: Vec::new(),
        error: None,
        redelivery: false,
    };
    for module in core.module_list() {
        if let Flow::Stop = module.on_deliver(core, &mut delivery) {
            return;
        }
    }
    carry_out(core, delivery);
}

fn carry_out(core: &Core, delivery: Delivery<'_>) {
    let Delivery { stanza, to, decision, resources, targets, copies, error, .. } = delivery;
    if let Some(condition) = error {
        return reply_error(core, stanza, condition);
    }
    for index in targets {
        if let Some(resource) = resources.get(index) {
            push(core, resource, stanza.bytes, Some(stanza));
        }
    }
    for (index, bytes) in copies {
        if let Some(resource) = resources.get(index) {
            push(core, resource, &bytes, None);
        }
    }
    match decision {
        // No module stored it (XEP-0160 off): section 8.5.2.2.1 allows the error.
        Decision::Store => reply_error(core, stanza, StanzaErrorCondition::ServiceUnavailable),
        Decision::Error(condition) => reply_error(core, stanza, condition),
        Decision::OnBehalf => answer_on_behalf(core, stanza, to.bare_str()),
        Decision::Deliver(_) | Decision::Ignore | Decision::Subscription | Decision::Probe => {}
    }
}

/// What a session with stream management sent and its client never acknowledged,
/// when the session ends for good (XEP-0198 section 4): messages go to the account's
/// offline storage (delivered at its next initial presence), not to its other
/// resources: those may hold unacknowledged copies of their own, and routing copies
/// from session to session multiplied them (found by a breaker: 25 messages became
/// 97 deliveries on one node, 76 became 27,482 in a cluster). IQ requests get
/// `service-unavailable`; presence is state and is not repeated; what the server made
/// for the account (from its bare JID) is not stored again. On the account's home
/// core (the session's).
pub(crate) fn reroute_unacknowledged(core: &Core, full: &FullJid, unacknowledged: Vec<Vec<u8>>) {
    let bare = full.bare_str();
    let Ok(to) = JidRef::parse(std::borrow::Cow::Borrowed(bare)) else { return };
    let stored = carry_on(core, bare, &unacknowledged, |stanza, _| store(core, stanza, &to));
    if !unacknowledged.is_empty() {
        log::info!(
            "c2s: {full} ended with {} stanzas its client did not acknowledge: {stored} messages stored offline",
            unacknowledged.len()
        );
        core.count("sm_messages_stored", stored);
    }
}

/// What happens to the stanzas of a session that ended, but for its messages: IQ
/// requests are answered `service-unavailable`, presence is dropped (state, not
/// repeated), and what the server made for the account (`from` its bare JID) is
/// dropped. Each other message goes to `message`; returns how many did.
fn carry_on(core: &Core, bare: &str, stanzas: &[Vec<u8>], mut message: impl FnMut(&Stanza<'_>, &[u8])) -> u64 {
    let mut messages = 0;
    for bytes in stanzas {
        let Ok(stanza) = Stanza::parse(bytes) else { continue };
        match stanza.kind {
            StanzaKind::Presence => {}
            StanzaKind::Iq => {
                if matches!(stanza.iq_type(), Some(IqType::Get | IqType::Set)) {
                    reply_error(core, &stanza, StanzaErrorCondition::ServiceUnavailable);
                }
            }
            StanzaKind::Message => {
                if stanza.from.and_then(|f| f.value()).is_some_and(|from| from == bare) {
                    continue;
                }
                message(&stanza, bytes);
                messages += 1;
            }
        }
    }
    messages
}

/// Runs the delivery hooks for `stanza` to `to` (an account of this core) with the
/// decision to store it offline, as a redelivery.
fn store(core: &Core, stanza: &Stanza<'_>, to: &JidRef<'_>) {
    let resources = resources(core, to.bare_str());
    let from = stanza.from.and_then(|f| f.value()).unwrap_or_default();
    let mut delivery = Delivery {
        stanza,
        to,
        from: &from,
        decision: Decision::Store,
        resources: &resources,
        targets: Vec::new(),
        copies: Vec::new(),
        error: None,
        redelivery: true,
    };
    for module in core.module_list() {
        if let Flow::Stop = module.on_deliver(core, &mut delivery) {
            return;
        }
    }
    carry_out(core, delivery);
}

/// Routes again what a session's mailbox still held when it ended (never written to
/// its socket; `Mailbox::close`), after the session was unbound, so nothing accepted
/// vanishes with a connection, as MongooseIM and ejabberd re-route a closing
/// session's queue: a message is delivered anew to its full JID, now gone, so RFC
/// 6121 section 8.5.3.2.1 applies (the account's other resources, offline storage,
/// or an error to its sender); an IQ request gets `service-unavailable` (RFC 6120
/// section 8.2.3: every request is answered); presence is state and is not repeated;
/// what the server made for this account (from its bare JID: carbons copies,
/// archive results) is not routed again.
pub(crate) fn reroute_undelivered(core: &Core, full: &FullJid, undelivered: Vec<Vec<u8>>) {
    if undelivered.is_empty() {
        return;
    }
    let bare = full.bare_str();
    let rerouted = carry_on(core, bare, &undelivered, |_, bytes| route(core, bare, bytes));
    log::info!(
        "c2s: {full} ended with {} stanzas its client never got: {rerouted} messages routed again",
        undelivered.len()
    );
    core.count("stanzas_rerouted", rerouted);
}

/// Pushes `bytes` to one resource: on this core through the `on_push` hooks, or to
/// the node that holds it.
pub(crate) fn push(core: &Core, resource: &Resource, bytes: &[u8], parsed: Option<&Stanza<'_>>) {
    match resource.place {
        Place::Local(id) => {
            push_local(core, id, &resource.full, bytes, parsed);
        }
        Place::Remote { node } => {
            let sent = core.cluster.as_ref().is_some_and(|cluster| cluster.route(core, node, &resource.full, bytes));
            if !sent {
                // The link is down or the stanza is too large for a frame: its author
                // is told, it does not vanish.
                if let Ok(stanza) = Stanza::parse(bytes) {
                    if stanza.kind != StanzaKind::Presence {
                        reply_error(core, &stanza, StanzaErrorCondition::ServiceUnavailable);
                    }
                }
            }
        }
    }
}

/// Pushes to a session of this core, after the `on_push` hooks; false if it is gone.
pub(crate) fn push_local(
    core: &Core,
    id: crate::sessions::SessionId,
    full: &str,
    bytes: &[u8],
    parsed: Option<&Stanza<'_>>,
) -> bool {
    let mailbox = core.sessions.borrow().session(full).filter(|s| s.id == id).map(|s| s.mailbox.clone());
    let Some(mailbox) = mailbox else { return false };
    if core.push_hooks.get() {
        let reparsed;
        let stanza = match parsed {
            Some(stanza) => stanza,
            None => match Stanza::parse(bytes) {
                Ok(stanza) => {
                    reparsed = stanza;
                    &reparsed
                }
                Err(_) => return false,
            },
        };
        for module in core.module_list().iter().filter(|m| m.wants_push()) {
            match module.on_push(core, id, full, stanza) {
                Push::Send => {}
                Push::Drop | Push::Taken => return true,
            }
        }
    }
    core.push(&mailbox, bytes, true)
}

/// Delivers a stanza another node routed to the local session `recipient`; if the
/// session is gone meanwhile, the sender gets `service-unavailable`.
pub(crate) fn deliver_local(core: &Core, recipient: &str, bytes: &[u8]) {
    let id = core.sessions.borrow().session(recipient).map(|s| s.id);
    let delivered = id.is_some_and(|id| push_local(core, id, recipient, bytes, None));
    if delivered {
        core.stats.stanzas_delivered.set(core.stats.stanzas_delivered.get() + 1);
    } else if let Ok(stanza) = Stanza::parse(bytes) {
        if stanza.kind != StanzaKind::Presence {
            reply_error(core, &stanza, StanzaErrorCondition::ServiceUnavailable);
        }
    }
}

/// The stanza's kind and type, as delivery sees them (`None`: an undefined presence
/// type, which is dropped).
fn kind_of(stanza: &Stanza<'_>) -> Option<Kind> {
    Some(match stanza.kind {
        StanzaKind::Message => Kind::Message(stanza.message_type()),
        StanzaKind::Presence => Kind::Presence(stanza.presence_type()?),
        StanzaKind::Iq => Kind::Iq(stanza.iq_type()?),
    })
}

/// Answers `stanza` with an error from its recipient to its sender, unless it is an
/// error or a result itself (RFC 6120 section 8.3.1).
pub(crate) fn reply_error(core: &Core, stanza: &Stanza<'_>, condition: StanzaErrorCondition) {
    if stanza.is_error() || stanza.iq_type() == Some(IqType::Result) {
        return;
    }
    let Some(sender) = stanza.from.and_then(|from| from.value()).map(|f| f.into_owned()) else { return };
    let recipient = stanza.to.and_then(|to| to.value()).map(|t| t.into_owned()).unwrap_or_default();
    let mut reply = Vec::with_capacity(256);
    stanza.write_error_reply(&recipient, &sender, &StanzaError::new(condition), &mut reply);
    let bare = sender.split('/').next().unwrap_or(&sender).to_owned();
    route(core, &bare, &reply);
}

/// (namespace, element) -> (module index, its scopes) for each module answering it.
type RouteTable = HashMap<(&'static str, &'static str), Vec<(usize, &'static [IqScope])>>;

/// Which modules answer which IQ payloads, built once per core.
pub(crate) struct IqRoutes {
    routes: RouteTable,
}

impl IqRoutes {
    pub fn new(modules: &[Rc<dyn Module>]) -> IqRoutes {
        let mut routes = RouteTable::new();
        for (index, module) in modules.iter().enumerate() {
            for route in module.iqs() {
                routes.entry((route.namespace, route.element)).or_default().push((index, route.scopes));
            }
        }
        IqRoutes { routes }
    }

    /// The module that answers (namespace, element) in `scope`.
    pub fn find(&self, namespace: &str, element: &str, scope: IqScope) -> Option<usize> {
        self.routes
            .get(&(namespace, element))?
            .iter()
            .find(|(_, scopes)| scopes.contains(&scope))
            .map(|(index, _)| *index)
    }
}

/// Dispatches an IQ get or set to the module that answers its payload in `scope`;
/// `service-unavailable` when none does (RFC 6120 section 8.4), `bad-request` when
/// it does not have exactly one child (section 8.2.3).
pub(crate) fn dispatch_iq(
    core: &Core,
    stanza: &Stanza<'_>,
    scope: IqScope,
    account: &str,
    session: Option<crate::sessions::SessionId>,
) -> Reply {
    let requester = stanza.from.and_then(|f| f.value()).unwrap_or_default();
    let reply_from = if scope == IqScope::OwnAccount { "" } else { account };
    let error = |condition| {
        let mut out = Vec::with_capacity(256);
        stanza.write_error_reply(reply_from, &requester, &StanzaError::new(condition), &mut out);
        Reply::Now(out)
    };
    let Some(kind @ (IqType::Get | IqType::Set)) = stanza.iq_type() else { return Reply::Now(Vec::new()) };
    if stanza.id.is_none() {
        return error(StanzaErrorCondition::BadRequest);
    }
    let Ok(text) = std::str::from_utf8(stanza.bytes) else { return error(StanzaErrorCondition::BadRequest) };
    let Ok(document) = roxmltree::Document::parse(text) else { return error(StanzaErrorCondition::BadRequest) };
    let mut children = document.root_element().children().filter(|c| c.is_element());
    let (Some(child), None) = (children.next(), children.next()) else {
        return error(StanzaErrorCondition::BadRequest);
    };
    let namespace = child.tag_name().namespace().unwrap_or("");
    // RFC 3921 section 3 session establishment, which RFC 6121 dropped: still sent by
    // strophe.js 5 (found with it: its login failed on service-unavailable). A no-op.
    let own_stream = matches!(scope, IqScope::Server | IqScope::OwnAccount);
    if own_stream && kind == IqType::Set && (namespace, child.tag_name().name()) == (NS_SESSION, "session") {
        let mut out = Vec::with_capacity(128);
        stanza.write_iq_result(reply_from, &requester, b"", &mut out);
        return Reply::Now(out);
    }
    let routes = core.iq_routes.get();
    let Some(index) = routes.and_then(|r| r.find(namespace, child.tag_name().name(), scope)) else {
        return error(StanzaErrorCondition::ServiceUnavailable);
    };
    let Some(module) = core.module_list().get(index) else { return error(StanzaErrorCondition::ServiceUnavailable) };
    let iq = Iq { stanza, kind, scope, child, text, requester: &requester, account, session };
    module.handle_iq(core, &iq)
}

const NS_SESSION: &str = starling_wire::c2s::NS_SESSION;

/// RFC 6121 section 8.5.2.1.3: an IQ to an account's bare JID, answered by the server
/// on the account's behalf; the answer is routed back to the requester.
fn answer_on_behalf(core: &Core, stanza: &Stanza<'_>, account: &str) {
    let Some(requester) = stanza.from.and_then(|f| f.value()).map(|f| f.into_owned()) else { return };
    let requester_bare = requester.split('/').next().unwrap_or(&requester).to_owned();
    // Answers that wait for storage run beside their requester's session, which reads
    // on: bounded per core, so a client cannot pile them up.
    if core.on_behalf_in_flight.get() >= ON_BEHALF_IN_FLIGHT_MAX {
        return reply_error(core, stanza, StanzaErrorCondition::ResourceConstraint);
    }
    match dispatch_iq(core, stanza, IqScope::OtherAccount, account, None) {
        Reply::Now(bytes) if bytes.is_empty() => {}
        Reply::Now(bytes) => route(core, &requester_bare, &bytes),
        Reply::Later(work) => {
            let task_core = core.rc();
            core.on_behalf_in_flight.set(core.on_behalf_in_flight.get() + 1);
            crate::contain::spawn(core.rc(), "a request answered for an account", async move {
                let bytes = crate::contain::wait(&task_core, "a request answered for an account", work).await;
                task_core.on_behalf_in_flight.set(task_core.on_behalf_in_flight.get().saturating_sub(1));
                match bytes {
                    Ok(bytes) if !bytes.is_empty() => route(&task_core, &requester_bare, &bytes),
                    _ => {}
                }
            });
        }
    }
}
