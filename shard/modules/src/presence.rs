//! Presence (RFC 6121 section 4), always on (MongooseIM's `mod_presence`): initial and
//! unavailable presence shared with the account's other resources and with the
//! contacts subscribed to it, probes to the contacts it is subscribed to, directed
//! presence remembered and withdrawn, probes answered, and the unavailable presence
//! sent for a client that goes away. Subscription presence is `subscription.rs`'s.
//!
//! Per session it keeps, while the session is available, its last available presence
//! (stamped, to replay to siblings and probers) and the JIDs it sent directed
//! presence to (at most [`DIRECTED_PRESENCE_MAX`]).

use std::rc::Rc;

use starling_shard::delivery::Decision;
use starling_shard::module::{Delivery, Flow, Module, Sender};
use starling_shard::{Core, SessionId};
use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::{FullJid, JidRef};
use starling_wire::stanza::{PresenceType, Stanza, StanzaKind};

use crate::Ctx;

/// Recipients of directed presence one session remembers (RFC 6121 section 4.6),
/// told when it goes unavailable. Cost: one boxed JID each.
pub const DIRECTED_PRESENCE_MAX: usize = 1000;

/// What presence keeps for one session (in the core's `Ctx`, so that other modules
/// can ask presence for a user's current presence through this module's functions).
#[derive(Default)]
pub(crate) struct Kept {
    /// The last available presence it broadcast, stamped.
    presence: Option<Box<[u8]>>,
    /// Full or bare JIDs it sent directed available presence to.
    directed: Vec<Box<str>>,
}

/// The presence module of one core.
pub struct Presence {
    ctx: Rc<Ctx>,
}

impl Presence {
    pub fn new(ctx: Rc<Ctx>) -> Presence {
        Presence { ctx }
    }
}

impl Module for Presence {
    fn name(&self) -> &'static str {
        "mod_presence"
    }

    fn on_send(&self, core: &Core, sender: &mut Sender<'_>, stanza: &Stanza<'_>, to: Option<&JidRef<'_>>) -> Flow {
        if stanza.kind != StanzaKind::Presence {
            return Flow::Continue;
        }
        let Some(kind) = stanza.presence_type() else {
            crate::subscription::reply_here(sender, stanza, StanzaErrorCondition::BadRequest);
            return Flow::Stop;
        };
        match (to, kind) {
            (None, PresenceType::Available) => {
                self.available(core, sender, stanza);
                Flow::Continue
            }
            (None, PresenceType::Unavailable) => {
                self.unavailable(core, sender.jid, sender.session, Some(stanza));
                Flow::Continue
            }
            (None, _) => Flow::Stop,
            // Probes are the server's business (RFC 6121 section 4.3).
            (Some(_), PresenceType::Probe) => Flow::Stop,
            (Some(to), PresenceType::Available | PresenceType::Unavailable) => {
                self.track_directed(sender.session, to, kind);
                Flow::Continue
            }
            (Some(_), _) => Flow::Continue,
        }
    }

    fn on_deliver(&self, core: &Core, delivery: &mut Delivery<'_>) -> Flow {
        if delivery.decision != Decision::Probe {
            return Flow::Continue;
        }
        self.answer_probe(core, delivery.to.bare_str(), delivery.from);
        Flow::Stop
    }

    /// Its last presence and directed-presence recipients, as length-prefixed
    /// fields: `[u32 len][presence]` then `[u32 len][jid]` per recipient.
    fn export_session(&self, _core: &Core, _jid: &FullJid, session: SessionId) -> Vec<u8> {
        let kept = self.ctx.presence.borrow_mut().remove(&session).unwrap_or_default();
        let mut out = Vec::new();
        let field = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        field(&mut out, kept.presence.as_deref().unwrap_or_default());
        for jid in &kept.directed {
            field(&mut out, jid.as_bytes());
        }
        out
    }

    fn import_session(&self, _core: &Core, _jid: &FullJid, session: SessionId, state: &[u8]) {
        let mut fields = Vec::new();
        let mut rest = state;
        while let Some((len, after)) = rest.split_first_chunk::<4>() {
            let len = u32::from_be_bytes(*len) as usize;
            let Some((field, after)) = after.split_at_checked(len) else { break };
            fields.push(field);
            rest = after;
        }
        let mut fields = fields.into_iter();
        let presence = fields.next().filter(|p| !p.is_empty() && Stanza::parse(p).is_ok()).map(Box::from);
        let directed: Vec<Box<str>> =
            fields.filter_map(|jid| std::str::from_utf8(jid).ok()).take(DIRECTED_PRESENCE_MAX).map(Box::from).collect();
        if presence.is_some() || !directed.is_empty() {
            self.ctx.presence.borrow_mut().insert(session, Kept { presence, directed });
        }
    }

    fn on_session_close(&self, core: &Core, jid: &FullJid, session: SessionId, was_available: bool) {
        let kept = self.ctx.presence.borrow_mut().remove(&session).unwrap_or_default();
        if was_available {
            share_with_own_resources(core, jid, None);
            tell_subscribers(core, &self.ctx, jid, None);
        }
        tell_directed(core, jid, kept.directed);
    }
}

impl Presence {
    /// Initial (or updated) available presence: remember it, share it with the
    /// account's other available resources and its subscribers; on the first one
    /// show this client its siblings and pending requests, and probe its contacts.
    fn available(&self, core: &Core, sender: &mut Sender<'_>, stanza: &Stanza<'_>) {
        let jid = sender.jid;
        let priority = priority_of(stanza);
        let first = !core.set_availability(jid.as_str(), true, priority);
        self.ctx.presence.borrow_mut().entry(sender.session).or_default().presence = Some(stanza.bytes.into());
        share_with_own_resources(core, jid, Some(stanza));
        // RFC 6121 sections 4.2.2 and 4.4.2: the resource that sent it gets its own
        // presence too (an entity is implicitly subscribed to its own presence).
        stanza.write_addressed(jid.as_str(), jid.as_str(), sender.out);
        tell_subscribers(core, &self.ctx, jid, Some(stanza));
        if !first {
            return;
        }
        // RFC 6121 section 4.2.2: the new resource learns about its siblings here.
        let siblings: Vec<(SessionId, Box<str>)> = core
            .sessions_of(jid.bare_str())
            .iter()
            .filter(|s| s.id() != sender.session && s.available())
            .map(|s| (s.id(), s.jid().as_str().into()))
            .collect();
        let kept = self.ctx.presence.borrow();
        for (id, full) in siblings {
            let presence = kept.get(&id).and_then(|k| k.presence.as_deref()).and_then(|p| Stanza::parse(p).ok());
            if let Some(presence) = presence {
                presence.write_addressed(&full, jid.as_str(), sender.out);
            }
        }
        drop(kept);
        crate::subscription::pending_requests(&self.ctx, jid.bare_str(), jid.as_str(), sender.out);
        // RFC 6121 section 4.2.2: probes go from the bare JID.
        for contact in crate::roster::presence_sources(&self.ctx, jid.bare_str()) {
            crate::subscription::send(core, jid.bare_str(), &contact, "probe");
        }
    }

    fn unavailable(&self, core: &Core, jid: &FullJid, session: SessionId, stanza: Option<&Stanza<'_>>) {
        core.set_availability(jid.as_str(), false, 0);
        let directed = match self.ctx.presence.borrow_mut().get_mut(&session) {
            Some(kept) => {
                kept.presence = None;
                std::mem::take(&mut kept.directed)
            }
            None => Vec::new(),
        };
        share_with_own_resources(core, jid, stanza);
        tell_subscribers(core, &self.ctx, jid, stanza);
        tell_directed(core, jid, directed);
    }

    fn track_directed(&self, session: SessionId, to: &JidRef<'_>, kind: PresenceType) {
        let mut sessions = self.ctx.presence.borrow_mut();
        let kept = sessions.entry(session).or_default();
        let to = to.as_str();
        match kind {
            PresenceType::Available
                if !kept.directed.iter().any(|d| &**d == to) && kept.directed.len() < DIRECTED_PRESENCE_MAX =>
            {
                kept.directed.push(to.into());
            }
            PresenceType::Unavailable => kept.directed.retain(|d| &**d != to),
            _ => {}
        }
    }

    /// A probe reached `user` (homed here) from `prober`: answered with the current
    /// presence when the prober is subscribed (RFC 6121 section 4.3.2).
    fn answer_probe(&self, core: &Core, user: &str, prober: &str) {
        let prober_bare = prober.split('/').next().unwrap_or(prober);
        let subscribed = crate::roster::subscription(&self.ctx, user, prober_bare).is_some_and(|s| s.from());
        if subscribed && !crate::blocking::blocks(&self.ctx, user, prober) {
            send_current_to(core, &self.ctx, user, prober);
        }
    }
}

/// Sends the current presence of every available resource of `user` on this core to
/// `contact` (a bare or full JID): to answer a probe, after a subscription is
/// approved, or when a contact is unblocked.
pub(crate) fn send_current_to(core: &Core, ctx: &Ctx, user: &str, contact: &str) {
    {
        let presences: Vec<Vec<u8>> = {
            let kept = ctx.presence.borrow();
            core.sessions_of(user)
                .iter()
                .filter(|s| s.available())
                .filter_map(|s| {
                    let stanza = Stanza::parse(kept.get(&s.id())?.presence.as_deref()?).ok()?;
                    let mut bytes = Vec::new();
                    stanza.write_addressed(s.jid().as_str(), contact, &mut bytes);
                    Some(bytes)
                })
                .collect()
        };
        for bytes in presences {
            core.route(&bytes);
        }
    }
}

/// Sends unavailable presence from every available resource of `user` to `contact`:
/// after a subscription is cancelled (RFC 6121 section 3.2.2).
pub(crate) fn send_unavailable_to(core: &Core, user: &str, contact: &str) {
    send_unavailable_from(core, user, contact, |_| true);
}

/// Like [`send_unavailable_to`], but only from sessions whose presence `contact` may
/// see: a subscription from it (RFC 6121 section 3) or directed presence (section
/// 4.6). XEP-0191 section 3.3: blocking someone else must not tell them the user is
/// online, and from which resource.
pub(crate) fn send_unavailable_if_allowed(core: &Core, ctx: &Ctx, user: &str, contact: &str) {
    let subscribed = crate::roster::subscription(ctx, user, contact).is_some_and(|s| s.from());
    send_unavailable_from(core, user, contact, |session| subscribed || sent_directed(ctx, session, contact));
}

fn send_unavailable_from(core: &Core, user: &str, contact: &str, allowed: impl Fn(SessionId) -> bool) {
    let resources: Vec<String> = core
        .sessions_of(user)
        .iter()
        .filter(|s| s.available() && allowed(s.id()))
        .map(|s| s.jid().as_str().to_owned())
        .collect();
    for full in resources {
        let mut bytes = Vec::new();
        unavailable(&full, contact, &mut bytes);
        core.route(&bytes);
    }
}

/// Whether the session sent directed available presence to `contact` (its bare JID
/// or one of its full JIDs).
fn sent_directed(ctx: &Ctx, session: SessionId, contact: &str) -> bool {
    let presence = ctx.presence.borrow();
    let Some(kept) = presence.get(&session) else { return false };
    kept.directed.iter().any(|to| &**to == contact || to.split('/').next() == Some(contact))
}

/// Tells the contacts subscribed to the account the session's new presence
/// (`stanza`, or unavailable), from the cached roster, skipping blocked ones.
fn tell_subscribers(core: &Core, ctx: &Ctx, jid: &FullJid, stanza: Option<&Stanza<'_>>) {
    for contact in crate::roster::presence_subscribers(ctx, jid.bare_str()) {
        if crate::blocking::blocks(ctx, jid.bare_str(), &contact) {
            continue;
        }
        let mut bytes = Vec::new();
        match stanza {
            Some(stanza) => stanza.write_addressed(jid.as_str(), &contact, &mut bytes),
            None => unavailable(jid.as_str(), &contact, &mut bytes),
        }
        core.route(&bytes);
    }
}

/// Sends `stanza` (or a bare unavailable presence) from this session to each other
/// available resource of the account, here or on other nodes.
fn share_with_own_resources(core: &Core, jid: &FullJid, stanza: Option<&Stanza<'_>>) {
    for resource in core.resources(jid.bare_str()) {
        if &*resource.full == jid.as_str() || !resource.available {
            continue;
        }
        let mut bytes = Vec::new();
        match stanza {
            Some(stanza) => stanza.write_addressed(jid.as_str(), &resource.full, &mut bytes),
            None => unavailable(jid.as_str(), &resource.full, &mut bytes),
        }
        core.push_to(&resource, &bytes);
    }
}

/// Sends unavailable presence to every directed-presence recipient.
fn tell_directed(core: &Core, jid: &FullJid, directed: Vec<Box<str>>) {
    for recipient in directed {
        let mut bytes = Vec::new();
        unavailable(jid.as_str(), &recipient, &mut bytes);
        core.route(&bytes);
    }
}

fn unavailable(from: &str, to: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<presence type='unavailable'");
    starling_wire::stanza::write_attribute(out, "from", from);
    starling_wire::stanza::write_attribute(out, "to", to);
    out.extend_from_slice(b"/>");
}

/// The `<priority/>` of a presence (RFC 6121 section 4.7.2.3), 0 when absent or invalid.
pub(crate) fn priority_of(stanza: &Stanza<'_>) -> i8 {
    let payload = stanza.payload();
    let Some(start) = crate::find(payload, b"<priority>") else { return 0 };
    let rest = payload.get(start + 10..).unwrap_or_default();
    let end = crate::find(rest, b"</priority>").unwrap_or(0);
    std::str::from_utf8(rest.get(..end).unwrap_or_default()).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Priority comes from the `<priority/>` child; bad or missing values are 0.
    #[test]
    fn reads_priority() {
        let cases: [(&[u8], i8); 4] = [
            (b"<presence><priority>5</priority></presence>", 5),
            (b"<presence><priority> -3 </priority></presence>", -3),
            (b"<presence><priority>500</priority></presence>", 0),
            (b"<presence/>", 0),
        ];
        for (bytes, priority) in cases {
            assert_eq!(priority_of(&Stanza::parse(bytes).unwrap()), priority);
        }
    }
}
