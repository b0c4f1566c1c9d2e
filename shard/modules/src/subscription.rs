//! Presence subscriptions (RFC 6121 section 3), on with `mod_roster`: what the server
//! does when a client sends subscription presence (outbound, `on_send`) and when one
//! reaches an account (inbound, `on_deliver` on the account's home core, for local
//! and cluster-routed stanzas alike). The state machine itself is in
//! `roster/model.rs`; here the account is changed, pushed, stored and announced, and
//! what must go on is routed.
//!
//! Inbound requests for an account with no available resource are kept as pending-in
//! roster state (stored) and shown again at its next initial presence.

use std::rc::Rc;

use starling_shard::delivery::Decision;
use starling_shard::module::{Delivery, Flow, Module, Sender};
use starling_shard::Core;
use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::{BareJid, JidRef};
use starling_wire::stanza::{write_attribute, PresenceType, Stanza, StanzaKind};

use crate::account::{self, Shared};
use crate::roster::{model, Transition, ROSTER_ITEMS_MAX};
use crate::{flags, Ctx};

/// The subscription part of `mod_roster` on one core.
pub struct Subscription {
    ctx: Rc<Ctx>,
}

impl Subscription {
    pub fn new(ctx: Rc<Ctx>) -> Subscription {
        Subscription { ctx }
    }
}

impl Module for Subscription {
    fn name(&self) -> &'static str {
        "mod_roster.subscription"
    }

    fn on_send(&self, core: &Core, sender: &mut Sender<'_>, stanza: &Stanza<'_>, to: Option<&JidRef<'_>>) -> Flow {
        let (StanzaKind::Presence, Some(to)) = (stanza.kind, to) else { return Flow::Continue };
        let Some(kind) = stanza.presence_type().filter(|k| is_subscription(*k)) else { return Flow::Continue };
        if !core.serves(to.domain()) {
            reply_here(sender, stanza, StanzaErrorCondition::RemoteServerNotFound);
            return Flow::Stop;
        }
        let contact = to.bare_str().to_owned();
        let user = sender.jid.to_bare();
        if contact == user.as_str() {
            return Flow::Stop;
        }
        let Some(account) = account::cached(&self.ctx, user.as_str()) else {
            log::warn!("subscription: the account of {user} is not loaded");
            return Flow::Stop;
        };
        let Some(transition) = apply(core, &self.ctx, &user, &account, &contact, |item| model::outbound(item, kind))
        else {
            return Flow::Stop;
        };
        if transition.forward {
            // RFC 6121 section 3.1.2: the server stamps the user's bare JID.
            let mut forward = Vec::with_capacity(stanza.bytes.len() + 64);
            stanza.write_addressed(user.as_str(), &contact, &mut forward);
            core.route(&forward);
        }
        if transition.send_presence {
            match kind {
                PresenceType::Subscribed => crate::presence::send_current_to(core, &self.ctx, user.as_str(), &contact),
                _ => crate::presence::send_unavailable_to(core, user.as_str(), &contact),
            }
        }
        Flow::Stop
    }

    fn on_deliver(&self, core: &Core, delivery: &mut Delivery<'_>) -> Flow {
        if delivery.decision != Decision::Subscription {
            return Flow::Continue;
        }
        let Some(kind) = delivery.stanza.presence_type() else { return Flow::Stop };
        let Ok(from) = JidRef::parse(delivery.from.into()) else { return Flow::Stop };
        let contact = from.bare_str().to_owned();
        let Ok(user) = delivery.to.bare_str().parse::<BareJid>() else { return Flow::Stop };
        // The home core loaded the account before delivering (a session, or `prepare`).
        let Some(account) = account::cached(&self.ctx, user.as_str()) else {
            log::warn!("subscription: {user} is not loaded; dropped a {kind:?} from {contact}");
            return Flow::Stop;
        };
        inbound(core, &self.ctx, &user, &account, &contact, kind, delivery.stanza);
        Flow::Stop
    }
}

fn is_subscription(kind: PresenceType) -> bool {
    matches!(
        kind,
        PresenceType::Subscribe | PresenceType::Subscribed | PresenceType::Unsubscribe | PresenceType::Unsubscribed
    )
}

/// Sends `<presence type=kind from=from_bare to=to_bare/>` on the user's behalf.
pub(crate) fn send(core: &Core, from_bare: &str, to_bare: &str, kind: &str) {
    let mut bytes = Vec::with_capacity(96);
    bytes.extend_from_slice(b"<presence");
    write_attribute(&mut bytes, "type", kind);
    write_attribute(&mut bytes, "from", from_bare);
    write_attribute(&mut bytes, "to", to_bare);
    bytes.extend_from_slice(b"/>");
    core.route(&bytes);
}

/// Subscription presence `kind` from `contact` reached `user`.
fn inbound(
    core: &Core,
    ctx: &Ctx,
    user: &BareJid,
    account: &Shared,
    contact: &str,
    kind: PresenceType,
    stanza: &Stanza<'_>,
) {
    let known = account.borrow().roster.item(contact).is_some();
    if !known && (kind != PresenceType::Subscribe || account.borrow().roster.items.len() >= ROSTER_ITEMS_MAX) {
        // Nothing to change (section 3.1.5), or a flood past the roster limit.
        if kind == PresenceType::Subscribe {
            log::debug!("subscription: {user} has a full roster; dropped a request from {contact}");
        }
        return;
    }
    let Some(transition) = apply(core, ctx, user, account, contact, |item| model::inbound(item, kind)) else { return };
    if transition.auto_reply {
        send(core, user.as_str(), contact, "subscribed");
        crate::presence::send_current_to(core, ctx, user.as_str(), contact);
    }
    if transition.forward {
        // RFC 6121 sections 3.1.3 and 3.1.6: a request goes to the available
        // resources, answers and cancellations to the interested ones.
        for resource in core.resources(user.as_str()) {
            let wanted = match kind {
                PresenceType::Subscribe => resource.available,
                _ => resource.flags.has(flags::ROSTER_INTERESTED),
            };
            if wanted {
                let mut bytes = Vec::with_capacity(stanza.bytes.len() + 64);
                stanza.write_addressed(contact, &resource.full, &mut bytes);
                core.push_to(&resource, &bytes);
            }
        }
    }
}

/// Runs `step` on the item for `contact` (created hidden when missing), then pushes,
/// announces and stores the change, or drops an item that no longer means anything.
/// `None` when a new item would pass the roster limit.
fn apply(
    core: &Core,
    ctx: &Ctx,
    user: &BareJid,
    account: &Shared,
    contact: &str,
    step: impl FnOnce(&mut model::RosterItem) -> Transition,
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
    roster.version = roster.version.saturating_add(1);
    let version = roster.version;
    drop(cached);
    crate::roster::changed(core, user, &item, meaningless, version);
    // In order with the account's other writes; nobody waits on it.
    let owner = user.clone();
    let write = ctx.db.run_for(user.as_str(), move |store| {
        if meaningless {
            store.roster_delete(&owner, &item.jid, version)
        } else {
            store.roster_put(&owner, &item, version)
        }
    });
    let user = user.clone();
    core.spawn("storing a roster change", async move {
        if let Err(error) = write.await {
            log::error!("subscription: storing a roster change of {user} failed: {error}");
        }
    });
    Some(transition)
}

/// At initial presence: the subscription requests still pending for `user`, shown to
/// the session `to` (RFC 6121 section 3.1.3, an account that was offline when they came).
pub(crate) fn pending_requests(ctx: &Ctx, user: &str, to: &str, out: &mut Vec<u8>) {
    let Some(account) = account::cached(ctx, user) else { return };
    for item in account.borrow().roster.items.iter().filter(|i| i.pending_in) {
        out.extend_from_slice(b"<presence type='subscribe'");
        write_attribute(out, "from", &item.jid);
        write_attribute(out, "to", to);
        out.extend_from_slice(b"/>");
    }
}

/// Answers the client's stanza with an error from the server, on its own stream.
pub(crate) fn reply_here(sender: &mut Sender<'_>, stanza: &Stanza<'_>, condition: StanzaErrorCondition) {
    if stanza.is_error() {
        return;
    }
    let from = stanza.to.and_then(|to| to.value()).map(|to| to.into_owned()).unwrap_or_default();
    stanza.write_error_reply(
        &from,
        sender.jid.as_str(),
        &starling_wire::error::StanzaError::new(condition),
        sender.out,
    );
}
