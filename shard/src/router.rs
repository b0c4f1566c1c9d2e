//! Routing between local accounts (RFC 6121 section 8.5): a stamped stanza goes to the
//! core that homes its recipient (zero or one hop), which delivers it by the RFC's
//! rules for full and bare JIDs, or answers with the right error.
//!
//! Cost per routed stanza (the budget `benches/route.rs` measures): one start-tag scan
//! and one JID parse at the sender, one copy into a batch when the recipient is on
//! another core, one start-tag scan and JID parse at the recipient's core, and one
//! append to the recipient's mailbox. The write syscall is shared by every stanza
//! queued for that connection before its task runs.

use starling_wire::error::{StanzaError, StanzaErrorCondition};
use starling_wire::jid::JidRef;
use starling_wire::stanza::{IqType, MessageType, PresenceType, Stanza, StanzaKind};

use std::rc::Rc;

use crate::core::Core;
use crate::mailbox::Mailbox;

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
    let Ok(stanza) = Stanza::parse(bytes) else {
        log::error!("router: unparsable stanza reached delivery");
        return;
    };
    let Some(to) = stanza.to.and_then(|to| to.value().and_then(|text| JidRef::parse(text).ok())) else {
        return;
    };
    core.stats.stanzas_delivered.set(core.stats.stanzas_delivered.get() + 1);
    match stanza.kind {
        StanzaKind::Message => deliver_message(core, &stanza, &to),
        StanzaKind::Presence => deliver_presence(core, &stanza, &to),
        StanzaKind::Iq => deliver_iq(core, &stanza, &to),
    }
}

/// Where one resource of an account is: here, or on another node.
enum Target {
    Local(Rc<Mailbox>),
    Remote { node: u16, full: Box<str> },
}

struct Resource {
    available: bool,
    priority: i8,
    target: Target,
    /// XEP-0163 notify list of a local session (unknown for remote ones).
    notify: Option<crate::pep::Notify>,
}

/// Every resource of `bare`: local sessions, and replicated ones on other nodes.
fn resources(core: &Core, bare: &str) -> Vec<Resource> {
    let mut all: Vec<Resource> = core
        .sessions
        .borrow()
        .sessions(bare)
        .iter()
        .map(|s| Resource {
            available: s.available,
            priority: s.priority,
            target: Target::Local(s.mailbox.clone()),
            notify: s.notify.clone(),
        })
        .collect();
    if let Some(cluster) = &core.cluster {
        let replica = cluster.replica.borrow();
        all.extend(replica.store.sessions(bare).iter().map(|s| Resource {
            available: s.entry.available,
            priority: s.entry.priority,
            target: Target::Remote { node: s.owner.node_num, full: s.full.clone() },
            notify: None,
        }));
    }
    all
}

fn send(core: &Core, target: &Target, bytes: &[u8]) {
    match target {
        Target::Local(mailbox) => {
            core.push(mailbox, bytes);
        }
        Target::Remote { node, full } => {
            if let Some(cluster) = &core.cluster {
                cluster.route(core, *node, full, bytes);
            }
        }
    }
}

/// The sender's JID text (empty when the stanza has none).
fn sender<'a>(stanza: &Stanza<'a>) -> std::borrow::Cow<'a, str> {
    stanza.from.and_then(|f| f.value()).unwrap_or_default()
}

fn deliver_message(core: &Core, stanza: &Stanza<'_>, to: &JidRef<'_>) {
    let kind = stanza.message_type();
    let from = sender(stanza);
    if crate::account::blocks_sender(core, to.bare_str(), &from) {
        // XEP-0191 section 3.5: the blocked sender learns nothing but unavailability.
        return reply_error(core, stanza, StanzaErrorCondition::ServiceUnavailable);
    }
    let conversational = crate::carbons::eligible(stanza);
    if to.is_full() {
        if push_to_full(core, to.as_str(), stanza.bytes) {
            crate::archive::archive(core, stanza, to.bare_str(), &from);
            if conversational {
                crate::carbons::received(core, to.bare_str(), stanza.bytes, |s| s.jid.as_str() == to.as_str());
            }
            return;
        }
        // RFC 6121 section 8.5.3.2.1: no such resource.
        match kind {
            MessageType::Groupchat => return reply_error(core, stanza, StanzaErrorCondition::ServiceUnavailable),
            MessageType::Error => return,
            _ => {}
        }
    }
    let candidates: Vec<Resource> =
        resources(core, to.bare_str()).into_iter().filter(|r| r.available && r.priority >= 0).collect();
    // RFC 6121 section 8.5.2.
    let targets: Vec<Resource> = match kind {
        MessageType::Error => return,
        MessageType::Groupchat => Vec::new(),
        // XEP-0163 section 4.3: PEP events only to resources whose caps ask for them.
        MessageType::Headline => match crate::pep::event_node(stanza) {
            Some(node) => candidates.into_iter().filter(|r| crate::pep::wants(r.notify.as_ref(), &node)).collect(),
            None => candidates,
        },
        MessageType::Normal | MessageType::Chat => {
            let top = candidates.iter().map(|r| r.priority).max();
            candidates.into_iter().filter(|r| Some(r.priority) == top).collect()
        }
    };
    if targets.is_empty() {
        // XEP-0160: kept for the next login, or (no body) dropped quietly.
        if kind != MessageType::Headline && crate::offline::storable(stanza) {
            crate::offline::store(core, stanza, to.bare_str());
        }
        return;
    }
    for resource in &targets {
        send(core, &resource.target, stanza.bytes);
    }
    crate::archive::archive(core, stanza, to.bare_str(), &from);
    if conversational {
        let delivered: Vec<*const Mailbox> = targets
            .iter()
            .filter_map(|r| match &r.target {
                Target::Local(mailbox) => Some(Rc::as_ptr(mailbox)),
                Target::Remote { .. } => None,
            })
            .collect();
        crate::carbons::received(core, to.bare_str(), stanza.bytes, |s| delivered.contains(&Rc::as_ptr(&s.mailbox)));
    }
}

fn deliver_presence(core: &Core, stanza: &Stanza<'_>, to: &JidRef<'_>) {
    let Some(kind) = stanza.presence_type() else { return };
    let from = sender(stanza);
    match kind {
        // RFC 6121 section 3: subscription presence is handled for the bare JID.
        PresenceType::Subscribe | PresenceType::Subscribed | PresenceType::Unsubscribe | PresenceType::Unsubscribed => {
            return crate::subscription::inbound(core, stanza, to, kind)
        }
        PresenceType::Probe => return crate::presence::answer_probe(core, to, &from),
        PresenceType::Error if !to.is_full() => return,
        // XEP-0191 section 3.5: presence from a blocked contact is dropped.
        _ if crate::account::blocks_sender(core, to.bare_str(), &from) => return,
        _ => {}
    }
    if to.is_full() {
        let mailbox = core.sessions.borrow().session(to.as_str()).map(|s| s.mailbox.clone());
        match mailbox {
            Some(mailbox) => {
                core.push_deferrable(&mailbox, Some(&from), stanza.bytes);
            }
            None => {
                push_to_full(core, to.as_str(), stanza.bytes);
            }
        }
        return;
    }
    for resource in resources(core, to.bare_str()).iter().filter(|r| r.available) {
        match &resource.target {
            Target::Local(mailbox) => {
                core.push_deferrable(mailbox, Some(&from), stanza.bytes);
            }
            remote => send(core, remote, stanza.bytes),
        }
    }
}

fn deliver_iq(core: &Core, stanza: &Stanza<'_>, to: &JidRef<'_>) {
    let request = matches!(stanza.iq_type(), Some(IqType::Get | IqType::Set));
    if request && crate::account::blocks_sender(core, to.bare_str(), &sender(stanza)) {
        return reply_error(core, stanza, StanzaErrorCondition::ServiceUnavailable);
    }
    if to.is_full() {
        if !push_to_full(core, to.as_str(), stanza.bytes) && request {
            reply_error(core, stanza, StanzaErrorCondition::ServiceUnavailable);
        }
    } else if request {
        // RFC 6121 section 8.5.2.1.3: the server answers on the account's behalf.
        crate::iq::answer_for_account(core, stanza, to.bare_str());
    }
}

/// Pushes to the session `full`, here or on another node; false if there is none.
fn push_to_full(core: &Core, full: &str, bytes: &[u8]) -> bool {
    let mailbox = core.sessions.borrow().session(full).map(|s| s.mailbox.clone());
    if let Some(mailbox) = mailbox {
        core.push(&mailbox, bytes);
        return true;
    }
    let Some(cluster) = &core.cluster else { return false };
    let remote = cluster.replica.borrow().store.session(full).map(|s| s.owner.node_num);
    match remote {
        Some(node) => cluster.route(core, node, full, bytes),
        None => false,
    }
}

/// Delivers a stanza another node routed to the local session `recipient`; if the
/// session is gone meanwhile, the sender gets `service-unavailable`.
pub(crate) fn deliver_local(core: &Core, recipient: &str, bytes: &[u8]) {
    let mailbox = core.sessions.borrow().session(recipient).map(|s| s.mailbox.clone());
    match mailbox {
        Some(mailbox) => {
            core.stats.stanzas_delivered.set(core.stats.stanzas_delivered.get() + 1);
            core.push(&mailbox, bytes);
        }
        None => {
            if let Ok(stanza) = Stanza::parse(bytes) {
                if stanza.kind != StanzaKind::Presence {
                    reply_error(core, &stanza, StanzaErrorCondition::ServiceUnavailable);
                }
            }
        }
    }
}

/// Answers `stanza` with an error from its recipient to its sender, unless it is an
/// error itself (RFC 6120 section 8.3.1).
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
