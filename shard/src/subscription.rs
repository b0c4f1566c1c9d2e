//! Presence subscriptions on the wire (RFC 6121 section 3): what the server does when a
//! client sends subscription presence (outbound) and when one reaches an account
//! (inbound). The state machine itself is in `roster.rs`; this module loads the
//! account, applies it, pushes and stores the change, and routes what must go on.
//!
//! Inbound requests for an account with no available resource are kept as pending-in
//! roster state (stored) and shown again at its next initial presence.

use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::{BareJid, JidRef};
use starling_wire::stanza::{write_attribute, PresenceType, Stanza};

use crate::account::{self, Shared};
use crate::core::Core;
use crate::im::{Outcome, Pending};
use crate::limits::ROSTER_ITEMS_MAX;
use crate::roster::{self, Transition};
use crate::session::State;

/// Sends `<presence type=kind from=from_bare to=to_bare/>` on the user's behalf.
pub(crate) fn send(core: &Core, from_bare: &str, to_bare: &str, kind: &str) {
    let mut bytes = Vec::with_capacity(96);
    bytes.extend_from_slice(b"<presence");
    write_attribute(&mut bytes, "type", kind);
    write_attribute(&mut bytes, "from", from_bare);
    write_attribute(&mut bytes, "to", to_bare);
    bytes.extend_from_slice(b"/>");
    crate::router::route(core, to_bare, &bytes);
}

/// The client sent subscription presence `kind` to `to`.
pub(crate) fn outbound(
    core: &Core,
    state: &mut State,
    stanza: &Stanza<'_>,
    to: &JidRef<'_>,
    kind: PresenceType,
) -> Outcome {
    if !core.shared.settings.hosts.iter().any(|host| host == to.domain()) {
        crate::session::reply_here(state, stanza, StanzaErrorCondition::RemoteServerNotFound);
        return Outcome::Done;
    }
    let contact = to.bare_str().to_owned();
    if contact == state.jid.bare_str() {
        return Outcome::Done;
    }
    // RFC 6121 section 3.1.2: the server stamps the user's bare JID.
    let mut forward = Vec::with_capacity(stanza.bytes.len() + 64);
    stanza.write_addressed(state.jid.bare_str(), &contact, &mut forward);
    let core = core.rc();
    let user = state.jid.to_bare();
    Outcome::Wait(Box::pin(async move {
        let account = match account::load(&core, &user).await {
            Ok(account) => account,
            Err(error) => {
                log::warn!("subscription: cannot load {user}: {error}");
                return Vec::new();
            }
        };
        let Some(transition) = apply(&core, &user, &account, &contact, |item| roster::outbound(item, kind)) else {
            return Vec::new();
        };
        if transition.forward {
            crate::router::route(&core, &contact, &forward);
        }
        if transition.send_presence {
            match kind {
                PresenceType::Subscribed => crate::presence::send_current_to(&core, user.as_str(), &contact),
                _ => crate::presence::send_unavailable_to(&core, user.as_str(), &contact),
            }
        }
        Vec::new()
    }) as Pending)
}

/// Subscription presence from another account reached `to` (an account homed here).
pub(crate) fn inbound(core: &Core, stanza: &Stanza<'_>, to: &JidRef<'_>, kind: PresenceType) {
    let Some(from) = stanza.from.and_then(|f| f.value()).and_then(|f| JidRef::parse(f).ok()) else { return };
    let contact = from.bare_str().to_owned();
    let Ok(user) = to.bare_str().parse::<BareJid>() else { return };
    let mut forward = Vec::with_capacity(stanza.bytes.len() + 64);
    stanza.write_addressed(&contact, user.as_str(), &mut forward);
    let core = core.rc();
    crate::contain::spawn(core.clone(), "a subscription request", async move {
        if let Ok(account) = account::load(&core, &user).await {
            if !account::blocks(&account.borrow(), &contact) {
                deliver_inbound(&core, &user, &account, &contact, kind, &forward);
            }
        }
        account::release(&core, user.as_str());
    });
}

fn deliver_inbound(core: &Core, user: &BareJid, account: &Shared, contact: &str, kind: PresenceType, forward: &[u8]) {
    let known = account.borrow().roster.item(contact).is_some();
    if !known && (kind != PresenceType::Subscribe || account.borrow().roster.items.len() >= ROSTER_ITEMS_MAX) {
        // Nothing to change (section 3.1.5), or a flood past the roster limit.
        if kind == PresenceType::Subscribe {
            log::debug!("subscription: {user} has a full roster; dropped a request from {contact}");
        }
        return;
    }
    let Some(transition) = apply(core, user, account, contact, |item| roster::inbound(item, kind)) else { return };
    if transition.auto_reply {
        send(core, user.as_str(), contact, "subscribed");
        crate::presence::send_current_to(core, user.as_str(), contact);
    }
    if transition.forward {
        // RFC 6121 sections 3.1.3 and 3.1.6: a request goes to the available
        // resources, answers and cancellations to the interested ones.
        let wanted =
            |s: &&crate::sessions::Session| if kind == PresenceType::Subscribe { s.available } else { s.interested };
        for session in core.sessions.borrow().sessions(user.as_str()).iter().filter(wanted) {
            let mut bytes = Vec::with_capacity(forward.len() + 64);
            if let Ok(stanza) = Stanza::parse(forward) {
                stanza.write_addressed(contact, session.jid.as_str(), &mut bytes);
                core.push(&session.mailbox, &bytes);
            }
        }
    }
}

/// Runs `step` on the item for `contact` (created hidden when missing), then pushes
/// and stores the change, or drops an item that no longer means anything. `None`
/// when a new item would pass the roster limit.
fn apply(
    core: &Core,
    user: &BareJid,
    account: &Shared,
    contact: &str,
    step: impl FnOnce(&mut roster::RosterItem) -> Transition,
) -> Option<Transition> {
    let mut cached = account.borrow_mut();
    let roster = &mut cached.roster;
    if roster.item(contact).is_none() && roster.items.len() >= ROSTER_ITEMS_MAX {
        return None;
    }
    let transition = step(roster.entry(contact));
    let item = roster.item(contact)?.clone();
    let meaningless = !item.visible && !item.pending_in && !item.ask && !item.approved;
    if meaningless {
        roster.items.retain(|i| i.jid != contact);
    }
    if !transition.changed {
        return Some(transition);
    }
    roster.version += 1;
    let version = roster.version;
    drop(cached);
    if item.visible {
        crate::im::push_roster_item(core, user, &item, false, version);
    }
    // In order with the account's other writes; nobody waits on it.
    let owner = user.clone();
    core.shared.db.submit_for(user.as_str(), "storing a roster change", move |store| {
        if meaningless {
            store.roster_delete(&owner, &item.jid, version)
        } else {
            store.roster_put(&owner, &item, version)
        }
    });
    Some(transition)
}

/// At initial presence: shows the session the subscription requests still pending
/// (RFC 6121 section 3.1.3, an account that was offline when they came).
pub(crate) fn pending_requests(account: &Shared, to: &str, out: &mut Vec<u8>) {
    for item in account.borrow().roster.items.iter().filter(|i| i.pending_in) {
        out.extend_from_slice(b"<presence type='subscribe'");
        write_attribute(out, "from", &item.jid);
        write_attribute(out, "to", to);
        out.extend_from_slice(b"/>");
    }
}
